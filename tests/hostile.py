"""Hostile audio files, written at test time (never committed): what a bad-input run puts among good files.

:func:`write_hostile_files` writes every case into a folder and returns, per file name, the words the one-line
reason must contain. Each case is a file that cannot give a single usable window, so training, evaluation and
the live loop must all skip or refuse it with that reason, never hang, crash or score it.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import soundfile as sf

RATE = 16000


def tone(seconds: float = 1.5, rate: int = RATE, amp: float = 0.3, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _pcm16(path: Path, x: np.ndarray, rate: int = RATE) -> bytes:
    sf.write(path, x, rate, subtype="PCM_16")
    return path.read_bytes()


def _patched(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    out = bytearray(data)
    out[offset : offset + struct.calcsize(fmt)] = struct.pack(fmt, value)
    return bytes(out)


def write_hostile_files(folder: Path, special: bool = True) -> dict[str, tuple[str, ...]]:
    """Write the hostile cases into ``folder``; returns {file name: words its reason must contain}.

    ``special`` adds the entries that are not regular files (a named pipe, a link to /dev/zero, a link loop,
    a dangling link, a folder named like a WAV file).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cases: dict[str, tuple[str, ...]] = {}
    x = tone()

    def add(name: str, words: tuple[str, ...], data: bytes | None = None) -> Path:
        path = folder / name
        if data is not None:
            path.write_bytes(data)
        cases[name] = words
        return path

    good = _pcm16(folder / ".template.wav", x)
    (folder / ".template.wav").unlink()
    add("empty.wav", ("empty file",), b"")
    add("text.wav", ("not a readable audio file",), b"this is a text file renamed to .wav\n" * 20)
    add("cut_header.wav", ("not a readable audio file",), good[:30])
    add("header_only.wav", ("no audio samples",), good[:44])
    add(
        "too_short.wav",
        ("too short", "0.97494 s", "15599 samples", "15600 samples"),
        _pcm16(folder / "t.wav", x[:15599]),
    )
    add("rate_1hz.wav", ("implausible sample rate 1 Hz",), _patched(good, 24, "<I", 1))  # 1.5 s claimed 24000 s
    add("rate_0hz.wav", ("implausible sample rate 0 Hz",), _patched(good, 24, "<I", 0))
    add("channels_65535.wav", ("implausible channel count 65535",), _patched(good, 22, "<H", 65535))

    def float_wav(name: str, samples: np.ndarray, words: tuple[str, ...], channels: int = 1) -> None:
        data = samples if channels == 1 else samples.reshape(-1, channels)
        sf.write(folder / name, data, RATE, subtype="FLOAT")
        cases[name] = words

    nan = x.copy()
    nan[1234] = np.nan
    float_wav("one_nan.wav", nan, ("NaN or infinite",))
    float_wav("all_nan.wav", np.full_like(x, np.nan), ("NaN or infinite",))
    inf = x.copy()
    inf[99] = np.inf
    float_wav("inf.wav", inf, ("NaN or infinite",))
    float_wav("huge_1e18.wav", x * np.float32(1e18), ("far outside",))
    float_wav("integer_scale.wav", x * np.float32(32768), ("far outside",))
    float_wav("all_zero.wav", np.zeros_like(x), ("digital silence",))
    float_wav("constant.wav", np.full_like(x, 0.25), ("same value", "constant"))
    float_wav("cancelling.wav", np.stack([x, -x], axis=1).reshape(-1), ("cancel out",), channels=2)
    (folder / "t.wav").unlink()
    if special:
        fifo = folder / "pipe.wav"
        os.mkfifo(fifo)
        cases[fifo.name] = ("not a regular file", "named pipe")
        (folder / "zero.wav").symlink_to("/dev/zero")
        cases["zero.wav"] = ("not a regular file", "device")
        (folder / "loop.wav").symlink_to("loop.wav")
        cases["loop.wav"] = ("symbolic link loop",)
        (folder / "dangling.wav").symlink_to("gone.wav")
        cases["dangling.wav"] = ("broken symbolic link",)
        (folder / "folder.wav").mkdir()
        cases["folder.wav"] = ("not a regular file", "a folder")
    return cases
