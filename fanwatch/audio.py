"""Reading audio files and bringing them to fanwatch's one signal format.

Every signal fanwatch analyses is mono float32 at ``config.SAMPLE_RATE`` (16 kHz), cut into windows of
``config.WINDOW_SAMPLES`` every ``config.HOP_SAMPLES``. This module does the three steps that get there:

* :func:`load_audio` decodes a file with libsndfile (through ``soundfile``): WAV with 16/24/32-bit PCM or
  float samples, WAVE_FORMAT_EXTENSIBLE (e.g. the 8-channel MIMII clips), FLAC and OGG, any channel count,
  any sample rate. It mixes or picks a channel, resamples, and rejects files that cannot give even one
  window, each with a :class:`~fanwatch.errors.BadAudioError` naming the file and the problem.
* :func:`resample` / :class:`StreamResampler` are *the* resampling path of the project (soxr, "HQ").
  The streaming version used by the live loop gives the same samples as the one-shot version.
* :func:`frame_windows` cuts a signal into overlapping windows.

Runtime-safe: imports numpy and soxr only; ``soundfile`` is imported when a file is actually read.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import numpy as np
import soxr

from fanwatch.config import HOP_SAMPLES, SAMPLE_RATE, WINDOW_SAMPLES, WINDOW_SECONDS
from fanwatch.errors import BadAudioError, FanwatchError

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")
"""File name endings treated as audio (matched case-insensitively by :func:`is_audio_file`)."""

CHANNEL_HELP = '"mean" (average all channels) or a 0-based channel index'

_READ_BLOCK = 1 << 16  # frames per read: long multichannel files are mixed down block by block
_SOXR_QUALITY = "HQ"

MIN_RATE = 4000
"""Hz: lower sample rates are refused. Below 4 kHz the sound ends under 2 kHz, most of YAMNet's 125-7500 Hz
mel bands are empty, and a damaged header (a "1 Hz" file) would be resampled to 16000 times its length."""
MAX_RATE = 768000
"""Hz: the highest rate audio interfaces offer; anything above is a damaged header."""
MAX_CHANNELS = 64
"""Microphone arrays have up to 64 channels (MIMII's has 8); more is a damaged header."""
MAX_ABS_SAMPLE = 16.0
"""Samples are scaled to +-1. Samples beyond +-16 (24 dB over full scale) are refused: huge values (1e18)
overflow the log-mel front end into NaN, and a float WAV written in integer scale (+-32768) is a mistake."""


def is_audio_file(path: str | os.PathLike) -> bool:
    """True if the name ends in one of :data:`AUDIO_EXTENSIONS` (any case) and is not a hidden file."""
    name = Path(path).name
    return not name.startswith(".") and name.lower().endswith(AUDIO_EXTENSIONS)


def parse_channel(value) -> str | int:
    """Normalise a channel setting: ``"mean"`` or a non-negative int (``"3"`` is accepted for CLIs)."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "mean":
            return "mean"
        if text.isdigit():
            return int(text)
    elif isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 0:
        return int(value)
    raise FanwatchError(f"invalid channel setting {value!r}: use {CHANNEL_HELP}")


# --------------------------------------------------------------------------------------------------
# decoding


def _soundfile():
    import soundfile  # lazy: only needed when a file is read

    return soundfile


def _decode_reason(exc: Exception) -> str:
    """A short reason from a soundfile/libsndfile exception (without the repeated file name)."""
    text = getattr(exc, "error_string", None) or str(exc) or type(exc).__name__
    text = " ".join(str(text).split())
    if text.startswith("Error opening"):  # "Error opening '<path>': Format not recognised."
        _, _, rest = text.partition(": ")
        text = rest or text
    return f"not a readable audio file ({text.rstrip('.')})"


def check_file(path) -> int:
    """The size of ``path`` if it is a readable, non-empty regular file (symbolic links followed).

    Checked before anything opens or hashes the file: a named pipe or a device (``/dev/zero``) would block
    or never end. BadAudioError with one reason otherwise: file not found, broken symbolic link, symbolic
    link loop, not a regular file (a folder, a named pipe, a device), empty, permission denied.
    """
    path = Path(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise BadAudioError(path, f"broken symbolic link (its target {os.readlink(path)} does not exist)") from None
        raise BadAudioError(path, "file not found") from None
    except PermissionError:
        raise BadAudioError(path, "permission denied (this user may not open a folder on its path)") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise BadAudioError(path, "symbolic link loop (the link leads back to itself)") from None
        raise BadAudioError(path, f"cannot read file ({exc.strerror or exc})") from None
    mode = info.st_mode
    if not stat.S_ISREG(mode):
        kind = (
            "a folder"
            if stat.S_ISDIR(mode)
            else "a named pipe"
            if stat.S_ISFIFO(mode)
            else "a device"
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "a socket"
            if stat.S_ISSOCK(mode)
            else "not a file"
        )
        raise BadAudioError(path, f"not a regular file ({kind})")
    if info.st_size == 0:
        raise BadAudioError(path, "empty file (0 bytes)")
    try:
        with open(path, "rb"):
            pass
    except PermissionError:
        raise BadAudioError(path, "permission denied (this user may not read the file)") from None
    except OSError as exc:
        raise BadAudioError(path, f"cannot read file ({exc.strerror or exc})") from None
    return int(info.st_size)


_check_file = check_file  # the live loop's name for it


def check_format(path, rate, channels) -> None:
    """BadAudioError for a sample rate or channel count no real recording has (a damaged header)."""
    if not MIN_RATE <= rate <= MAX_RATE:
        raise BadAudioError(
            path, f"implausible sample rate {rate} Hz in the header (accepted: {MIN_RATE} to {MAX_RATE} Hz)"
        )
    if not 1 <= channels <= MAX_CHANNELS:
        raise BadAudioError(path, f"implausible channel count {channels} in the header (accepted: 1 to {MAX_CHANNELS})")


def signal_problem(samples: np.ndarray) -> str | None:
    """Why a block of samples (any shape) cannot be analysed, or None: NaN/inf, or samples far outside +-1."""
    samples = np.asarray(samples)
    if samples.size == 0:
        return None
    if not np.isfinite(samples).all():
        return "contains NaN or infinite samples"
    peak = float(np.max(np.abs(samples)))
    if peak > MAX_ABS_SAMPLE:
        return (
            f"samples far outside +-1 (peak {peak:.3g}; audio is expected scaled to +-1, "
            f"at most +-{MAX_ABS_SAMPLE:g} is accepted)"
        )
    return None


def _wav_format(path: Path) -> tuple[int, int] | None:
    """(sample rate, channels) from a RIFF/WAVE file's fmt chunk, or None if there is none to read."""
    import struct

    try:
        with open(path, "rb") as handle:
            head = handle.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            for _ in range(64):  # a few chunks (LIST, bext, ...) may come before fmt
                chunk = handle.read(8)
                if len(chunk) < 8:
                    return None
                chunk_id, size = struct.unpack("<4sI", chunk)
                if chunk_id == b"fmt ":
                    body = handle.read(8)
                    if len(body) < 8:
                        return None
                    _tag, channels, rate = struct.unpack("<HHI", body)
                    return rate, channels
                handle.seek(size + (size & 1), os.SEEK_CUR)
    except OSError:
        return None
    return None


def _failure_reason(path: Path, exc: Exception) -> str:
    """Why libsndfile refused a file. For a WAV header with an impossible rate or channel count (its words
    for a 0 Hz rate are "Internal error : SF_INFO struct incomplete") the header's own fault is named."""
    header = _wav_format(path)
    if header is not None:
        try:
            check_format(path, *header)
        except BadAudioError as bad:
            return bad.reason
    return _decode_reason(exc)


def audio_info(path: str | os.PathLike) -> dict:
    """Header facts of an audio file without decoding it.

    Returns ``{"rate", "channels", "frames", "duration", "subtype", "format"}``. Raises BadAudioError when the
    file is missing, empty, cannot be opened as audio, or holds no samples (the content checks of
    :func:`load_audio` -- NaN, silence, length after resampling -- need decoding and are not done here).
    """
    path = Path(path)
    check_file(path)
    sf = _soundfile()
    try:
        info = sf.info(str(path))
    except (RuntimeError, ValueError, TypeError, OSError, EOFError) as exc:
        raise BadAudioError(path, _failure_reason(path, exc)) from None
    check_format(path, info.samplerate, info.channels)
    if info.frames <= 0:
        raise BadAudioError(path, "contains no audio samples")
    return {
        "rate": int(info.samplerate),
        "channels": int(info.channels),
        "frames": int(info.frames),
        "duration": float(info.frames) / float(info.samplerate),
        "subtype": str(info.subtype),
        "format": str(info.format),
    }


def load_audio(path: str | os.PathLike, channel: str | int = "mean") -> np.ndarray:
    """Decode ``path`` into a mono float32 signal at ``config.SAMPLE_RATE``.

    ``channel`` decides how multichannel files become mono: ``"mean"`` averages all channels (the default),
    an int picks that 0-based channel (a BadAudioError if the file has fewer channels). Mono files ignore
    the difference between ``"mean"`` and ``0``.

    Raises BadAudioError(path, reason) when the file is missing, empty, not decodable audio, has no samples,
    has NaN/inf samples, is digital silence (all zero), or is shorter than one window after resampling.
    A WAV whose data chunk is cut short is accepted as long as what remains is long enough.
    """
    path = Path(path)
    channel = parse_channel(channel)
    check_file(path)
    sf = _soundfile()
    try:
        with sf.SoundFile(str(path)) as handle:
            rate = int(handle.samplerate)
            n_channels = int(handle.channels)
            check_format(path, rate, n_channels)
            if isinstance(channel, int) and channel >= n_channels:
                raise BadAudioError(
                    path,
                    f"channel {channel} requested but the file has {n_channels} channel(s) "
                    f'(valid: 0..{n_channels - 1} or "mean")',
                )
            pieces = []
            nonzero_channels = False
            while True:
                block = handle.read(_READ_BLOCK, dtype="float32", always_2d=True)
                if block.shape[0] == 0:
                    break
                problem = signal_problem(block)
                if problem is not None:
                    raise BadAudioError(path, problem)
                if channel == "mean":
                    if not nonzero_channels and n_channels > 1:
                        nonzero_channels = bool(np.any(block))
                    mono = block[:, 0].copy() if n_channels == 1 else block.mean(axis=1, dtype=np.float32)
                else:
                    mono = block[:, channel].copy()
                pieces.append(mono)
    except BadAudioError:
        raise
    except (RuntimeError, ValueError, TypeError, OSError, EOFError) as exc:
        raise BadAudioError(path, _failure_reason(path, exc)) from None

    if not pieces:
        raise BadAudioError(path, "contains no audio samples")
    signal = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
    if not np.any(signal):
        if channel == "mean" and nonzero_channels:
            raise BadAudioError(path, 'channels cancel out when averaged; pick one channel instead of "mean"')
        where = "" if channel == "mean" or n_channels == 1 else f" in channel {channel}"
        raise BadAudioError(path, f"all samples are zero{where} (digital silence)")
    if np.ptp(signal) == 0:
        raise BadAudioError(path, f"every sample has the same value ({float(signal[0]):.3g}): a constant, no sound")
    signal = resample(signal, rate, SAMPLE_RATE)
    if signal.shape[0] < WINDOW_SAMPLES:
        raise BadAudioError(path, too_short_reason(signal.shape[0]))
    return np.ascontiguousarray(signal, dtype=np.float32)


def too_short_reason(n_samples: int) -> str:
    """'too short: ...' for a signal of ``n_samples`` at 16 kHz, with enough digits to show the difference."""
    seconds = n_samples / SAMPLE_RATE
    text = f"{seconds:.3f}"
    if text == f"{WINDOW_SECONDS:.3f}":
        text = f"{seconds:.5f}"
    return (
        f"too short: {text} s ({n_samples} samples at {SAMPLE_RATE // 1000} kHz), need at least "
        f"{WINDOW_SECONDS:.3f} s ({WINDOW_SAMPLES} samples, one analysis window)"
    )


# --------------------------------------------------------------------------------------------------
# resampling


def _check_rate(rate, name: str) -> float:
    try:
        value = float(rate)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number of Hz, got {rate!r}") from None
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number of Hz, got {rate!r}")
    return value


def resample(x, rate_in, rate_out=SAMPLE_RATE) -> np.ndarray:
    """Resample a mono signal from ``rate_in`` to ``rate_out`` Hz (soxr, quality "HQ"); float32 out.

    When the rates are equal the input is returned as is (no copy; converted only if it was not float32).
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"resample expects a 1-D mono signal, got shape {x.shape}")
    r_in = _check_rate(rate_in, "rate_in")
    r_out = _check_rate(rate_out, "rate_out")
    if r_in == r_out:
        return x
    if x.shape[0] == 0:
        return np.zeros(0, dtype=np.float32)
    out = soxr.resample(x, r_in, r_out, quality=_SOXR_QUALITY)
    return np.asarray(out, dtype=np.float32)


class StreamResampler:
    """Block-by-block resampling for the live loop, sample-identical to :func:`resample`.

    Feed consecutive mono blocks of any size to :meth:`process`; pass ``last=True`` with the final block
    (it may be empty) to flush soxr's internal delay. The concatenated outputs equal
    ``resample(whole_signal, rate_in, rate_out)``. Equal rates pass blocks through untouched.
    """

    def __init__(self, rate_in, rate_out=SAMPLE_RATE):
        self.rate_in = _check_rate(rate_in, "rate_in")
        self.rate_out = _check_rate(rate_out, "rate_out")
        self.passthrough = self.rate_in == self.rate_out
        self._stream = None
        if not self.passthrough:
            self._stream = soxr.ResampleStream(self.rate_in, self.rate_out, 1, dtype="float32", quality=_SOXR_QUALITY)

    def process(self, block, last: bool = False) -> np.ndarray:
        """Resample the next block (1-D, or 2-D with one column); returns 1-D float32 (may be empty)."""
        block = np.asarray(block, dtype=np.float32)
        if block.ndim == 2 and block.shape[1] == 1:
            block = block[:, 0]
        if block.ndim != 1:
            raise ValueError(f"StreamResampler expects mono blocks, got shape {block.shape}")
        if self.passthrough:
            return block
        out = self._stream.resample_chunk(np.ascontiguousarray(block), last=last)
        return np.asarray(out, dtype=np.float32).reshape(-1)

    def reset(self) -> None:
        """Forget buffered samples (start of a new, unrelated stream)."""
        if self._stream is not None:
            self._stream.clear()


# --------------------------------------------------------------------------------------------------
# framing


def n_windows(n_samples: int, window: int = WINDOW_SAMPLES, hop: int = HOP_SAMPLES) -> int:
    """How many full windows :func:`frame_windows` cuts from ``n_samples`` (0 if shorter than one)."""
    if n_samples < window:
        return 0
    return 1 + (n_samples - window) // hop


def frame_windows(x, window: int = WINDOW_SAMPLES, hop: int = HOP_SAMPLES) -> np.ndarray:
    """Cut a 1-D signal into ``[n, window]`` float32 windows starting every ``hop`` samples.

    ``n = 1 + (len(x) - window) // hop``; trailing samples that do not fill a window are dropped.
    The result is a **read-only strided view** of ``x`` (no copy when ``x`` is already float32): windows
    overlap in memory, so call ``.copy()`` before modifying it. Raises ValueError if ``x`` is shorter than
    one window.
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"frame_windows expects a 1-D signal, got shape {x.shape}")
    window = int(window)
    hop = int(hop)
    if window <= 0 or hop <= 0:
        raise ValueError(f"window and hop must be positive, got window={window}, hop={hop}")
    if x.shape[0] < window:
        raise ValueError(f"signal of {x.shape[0]} samples is shorter than one window ({window} samples)")
    # sliding_window_view is read-only by construction
    return np.lib.stride_tricks.sliding_window_view(x, window)[::hop]
