"""A small RIFF/WAVE reader for the runtime: standard library and numpy only.

The Raspberry Pi image has no libsndfile, so ``inference.py --wav`` decodes WAV files with this module when
``soundfile`` cannot be imported. It reads what microphones, recorders and the MIMII / DCASE sets write:

* PCM with 8 (unsigned), 16, 24 or 32 bits per sample, IEEE float with 32 or 64 bits,
* plain ``WAVEFORMAT`` / ``WAVEFORMATEX`` headers and ``WAVE_FORMAT_EXTENSIBLE`` (sub-format GUID),
* any number of channels; unknown chunks (LIST, fact, bext, ...) are skipped,
* a data chunk that is cut short or whose size field is a placeholder (streaming writers) is read up to the
  end of the file; a trailing partial frame is ignored.

Samples come out as float32 scaled like libsndfile does (integer / 2**(bits-1), 8-bit centred on 128), so
the two decoders agree. Anything else raises :class:`~fanwatch.errors.BadAudioError` naming the file and the
problem. Files are read block by block (:class:`WavReader`), so a long recording never has to fit in memory.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fanwatch.audio import check_file, check_format
from fanwatch.errors import BadAudioError

WAVE_FORMAT_PCM = 0x0001
WAVE_FORMAT_IEEE_FLOAT = 0x0003
WAVE_FORMAT_EXTENSIBLE = 0xFFFE
# KSDATAFORMAT_SUBTYPE_* GUIDs: the format tag in the first two bytes, then this fixed tail
_GUID_TAIL = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
_FORMAT_NAMES = {0x0002: "MS ADPCM", 0x0006: "A-law", 0x0007: "mu-law", 0x0011: "IMA ADPCM", 0x0055: "MP3"}
_WITHOUT_SOUNDFILE = (
    "this runtime reads only 8/16/24/32-bit PCM and 32/64-bit float RIFF WAV without the "
    "soundfile package, which training uses: pip install soundfile, or convert the file "
    "(e.g. sox IN -b 16 -e signed-integer OUT.wav)"
)
_MAX_HEADER_SCAN = 64 << 20  # never walk more than this many bytes of chunks looking for fmt/data


@dataclass(frozen=True)
class WavInfo:
    """What the header says; ``frames`` counts whole frames actually present in the file."""

    rate: int
    channels: int
    frames: int
    bits: int
    encoding: str  # "pcm" or "float"
    data_offset: int
    block_align: int

    @property
    def duration(self) -> float:
        return self.frames / float(self.rate)


def _fail(path, reason: str):
    raise BadAudioError(path, reason)


def _parse_fmt(path, body: bytes) -> tuple[str, int, int, int, int]:
    """(encoding, channels, rate, bits, block_align) from a fmt chunk body."""
    if len(body) < 16:
        _fail(path, "not a readable WAV file (fmt chunk too short)")
    tag, channels, rate, _byte_rate, block_align, bits = struct.unpack("<HHIIHH", body[:16])
    if tag == WAVE_FORMAT_EXTENSIBLE:
        if len(body) < 40:
            _fail(path, "not a readable WAV file (WAVE_FORMAT_EXTENSIBLE header too short)")
        sub = body[24:40]
        if sub[2:] != _GUID_TAIL:
            _fail(path, f"unsupported WAV encoding (unknown WAVE_FORMAT_EXTENSIBLE sub-format); {_WITHOUT_SOUNDFILE}")
        tag = struct.unpack("<H", sub[:2])[0]
    if tag == WAVE_FORMAT_PCM:
        encoding = "pcm"
        if bits not in (8, 16, 24, 32):
            _fail(path, f"unsupported WAV encoding ({bits}-bit PCM); {_WITHOUT_SOUNDFILE}")
    elif tag == WAVE_FORMAT_IEEE_FLOAT:
        encoding = "float"
        if bits not in (32, 64):
            _fail(path, f"unsupported WAV encoding ({bits}-bit float); {_WITHOUT_SOUNDFILE}")
    else:
        name = _FORMAT_NAMES.get(tag, f"format tag 0x{tag:04X}")
        _fail(path, f"unsupported WAV encoding ({name}); {_WITHOUT_SOUNDFILE}")
    check_format(path, rate, channels)
    if block_align != channels * bits // 8:
        # some writers get block_align wrong; the sample layout is what counts
        block_align = channels * bits // 8
    return encoding, channels, rate, bits, block_align


def read_info(path: str | os.PathLike) -> WavInfo:
    """Parse the header of a WAV file (no samples decoded)."""
    path = Path(path)
    size = check_file(path)
    try:
        with open(path, "rb") as handle:
            head = handle.read(12)
            if len(head) < 12 or head[8:12] != b"WAVE" or head[:4] not in (b"RIFF", b"RIFX", b"RF64"):
                _fail(path, "not a WAV file (no RIFF/WAVE header)")
            if head[:4] != b"RIFF":
                _fail(path, f"unsupported WAV variant ({head[:4].decode('ascii')}); {_WITHOUT_SOUNDFILE}")
            fmt = None
            pos = 12
            while pos + 8 <= size and pos < _MAX_HEADER_SCAN:
                handle.seek(pos)
                chunk_id, chunk_size = struct.unpack("<4sI", handle.read(8))
                body_at = pos + 8
                if chunk_id == b"fmt ":
                    fmt = _parse_fmt(path, handle.read(min(chunk_size, 1024)))
                elif chunk_id == b"data":
                    if fmt is None:
                        _fail(path, "not a readable WAV file (data chunk before fmt chunk)")
                    encoding, channels, rate, bits, block_align = fmt
                    available = size - body_at
                    n_bytes = available if chunk_size in (0, 0xFFFFFFFF) else min(chunk_size, available)
                    frames = n_bytes // block_align
                    if frames <= 0:
                        _fail(path, "contains no audio samples")
                    return WavInfo(rate, channels, frames, bits, encoding, body_at, block_align)
                pos = body_at + chunk_size + (chunk_size & 1)
            if fmt is None:
                _fail(path, "not a readable WAV file (no fmt chunk)")
            _fail(path, "not a readable WAV file (no data chunk)")
    except OSError as exc:
        _fail(path, f"cannot read file ({exc.strerror or exc})")
    raise AssertionError("unreachable")


def _decode(raw: bytes, info: WavInfo) -> np.ndarray:
    bits = info.bits
    if info.encoding == "float":
        out = np.frombuffer(raw, dtype="<f4" if bits == 32 else "<f8").astype(np.float32)
    elif bits == 8:
        out = (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) * np.float32(1.0 / 128.0)
    elif bits == 16:
        out = np.frombuffer(raw, dtype="<i2").astype(np.float32) * np.float32(1.0 / 32768.0)
    elif bits == 24:
        b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        value = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        value = (value << 8) >> 8  # sign-extend from 24 bits
        out = value.astype(np.float32) * np.float32(1.0 / 8388608.0)
    else:  # 32-bit PCM
        out = (np.frombuffer(raw, dtype="<i4").astype(np.float64) * (1.0 / 2147483648.0)).astype(np.float32)
    return out.reshape(-1, info.channels)


class WavReader:
    """Read a WAV file block by block: ``with WavReader(p) as r: block = r.read(4096)`` -> float32 [n, channels]."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.info = read_info(self.path)
        self.rate = self.info.rate
        self.channels = self.info.channels
        self.frames = self.info.frames
        self._handle = open(self.path, "rb")  # noqa: SIM115 - a reader object; close() / __exit__ close it
        self._handle.seek(self.info.data_offset)
        self._left = self.info.frames

    def read(self, frames: int = -1) -> np.ndarray:
        """The next ``frames`` frames (all that are left if negative); an empty array at the end."""
        n = self._left if frames < 0 else min(int(frames), self._left)
        if n <= 0:
            return np.zeros((0, self.channels), dtype=np.float32)
        raw = self._handle.read(n * self.info.block_align)
        n = len(raw) // self.info.block_align
        self._left = 0 if n == 0 else self._left - n
        return _decode(raw[: n * self.info.block_align], self.info)

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> WavReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_wav(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """The whole file: (float32 samples [frames, channels], sample rate)."""
    with WavReader(path) as reader:
        return reader.read(), reader.rate
