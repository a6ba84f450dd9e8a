"""The numbers every part of fanwatch shares, decided once, here.

YAMNet looks at one patch of 96 log-mel frames (25 ms frames, 10 ms hop) at 16 kHz: 15600 samples,
0.975 s. fanwatch's *window* is exactly one such patch, so a window gives one embedding and nothing
is padded (the official YAMNet padding would turn a 16000-sample window into a second, mostly-zero
patch). Training, evaluation and the real-time loop all cut windows with these constants.

This module is imported by the runtime: standard library only.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

SAMPLE_RATE = 16000
"""Hz: every signal is resampled to this rate before framing."""

STFT_WINDOW = 400  # 25 ms
STFT_HOP = 160  # 10 ms
FFT_LENGTH = 512
MEL_BANDS = 64
MEL_FMIN = 125.0
MEL_FMAX = 7500.0
LOG_OFFSET = 0.001
PATCH_FRAMES = 96

WINDOW_SAMPLES = STFT_WINDOW + (PATCH_FRAMES - 1) * STFT_HOP  # 15600 samples = 0.975 s
HOP_SAMPLES = 8000  # 0.5 s between window starts, in training, evaluation and the live loop
EMBEDDING_DIM = 1024

WINDOW_SECONDS = WINDOW_SAMPLES / SAMPLE_RATE
HOP_SECONDS = HOP_SAMPLES / SAMPLE_RATE

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_YAMNET = PROJECT_ROOT / "models" / "yamnet.tflite"
YAMNET_ENV = "FANWATCH_YAMNET"
DEFAULT_CACHE = PROJECT_ROOT / "artifacts" / "cache"
CACHE_ENV = "FANWATCH_CACHE"

YAMNET_HELP = (
    "YAMNet weights: the published yamnet.tflite (search TF Hub or Kaggle for 'yamnet tflite'); "
    f"pass --yamnet PATH, set {YAMNET_ENV}, or put it at models/yamnet.tflite"
)


def resolve_yamnet_path(cli_value: str | os.PathLike | None = None) -> Path:
    """--yamnet PATH, else $FANWATCH_YAMNET, else models/yamnet.tflite (not checked here)."""
    if cli_value:
        return Path(cli_value).expanduser()
    env = os.environ.get(YAMNET_ENV)
    if env:
        return Path(env).expanduser()
    return DEFAULT_YAMNET


def resolve_cache_dir(cli_value: str | os.PathLike | None = None) -> Path:
    """--cache DIR, else $FANWATCH_CACHE, else artifacts/cache."""
    if cli_value:
        return Path(cli_value).expanduser()
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else DEFAULT_CACHE


def ensure_writable_folder(path: str | os.PathLike, option: str) -> Path:
    """Create ``path`` (and its parents) if needed and check that files can be written in it.

    FanwatchError in one line when it is a file, cannot be created, or is not writable, so a run fails before
    its work rather than after it.
    """
    from .errors import FanwatchError

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FanwatchError(f"{option} {path}: is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".fanwatch-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise FanwatchError(f"{option} {path}: cannot write there ({exc.strerror or exc})") from None
    return path


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while True:
            block = handle.read(chunk)
            if not block:
                break
            digest.update(block)
    return digest.hexdigest()
