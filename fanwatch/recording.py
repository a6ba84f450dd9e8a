"""Record labelled training clips from the microphone the Pi will listen with.

``python inference.py --record data/ --label on_state --seconds 60 --clip-seconds 10`` captures from the
same device, through the same capture code (:class:`fanwatch.live.sources.SoundDeviceSource`) and with the
same channel rule as the live loop (every input channel up to ``MAX_MEAN_CHANNELS``, or ``--channels N``;
channels that are pure digital padding are left out), at the device's native rate, and writes 16-bit PCM
WAV clips into ``data/<label>/``: the folder-per-class layout ``train.py`` reads. A level meter and a
countdown show while it records; a silent or clipping input is refused with one line (checked after the
first second and for every clip before it is written). The first 0.3 s after the device opens are not
kept (start-up clicks of USB microphones, stale driver buffers). Each session appends what it did and with which
settings to ``data/<label>/recordings.jsonl``.

This is the only place fanwatch ever writes audio, and only when asked to.

Runtime module: numpy, the standard library, and sounddevice through :mod:`fanwatch.live.sources`.
"""

from __future__ import annotations

import json
import math
import queue
import re
import sys
import time
import wave
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from . import config
from .errors import FanwatchError

SILENT_DBFS = -70.0  # an input whose RMS stays below this is not a working microphone near a machine
CLIP_LEVEL = 0.999  # |sample| at or above this counts as clipped
CLIP_FRACTION = 0.001  # more than this fraction of clipped samples: the gain is too high
CHECK_SECONDS = 1.0
SETTLE_SECONDS = 0.3  # audio right after the device opens is not recorded (start-up clicks, stale buffers)
LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
LOG_NAME = "recordings.jsonl"


@dataclass
class RecordSettings:
    out: Path
    label: str
    seconds: float = 60.0
    clip_seconds: float = 10.0
    device: str | int | None = None
    rate: float | None = None
    channels: int | None = None
    block_seconds: float = 0.1

    def validate(self) -> None:
        if not LABEL_RE.match(self.label or ""):
            raise FanwatchError(
                f"--label {self.label!r}: use letters, digits, '_', '-', '.' or '+' (it becomes a "
                "folder name, e.g. on_state or fault_bearing)"
            )
        if not (math.isfinite(self.clip_seconds) and self.clip_seconds >= 1.0):
            raise FanwatchError(
                f"--clip-seconds must be at least 1 (a model window is {config.WINDOW_SECONDS:g} s), "
                f"got {self.clip_seconds:g}"
            )
        if not (math.isfinite(self.seconds) and self.seconds >= self.clip_seconds):
            raise FanwatchError(
                f"--seconds must be at least --clip-seconds ({self.clip_seconds:g}), got {self.seconds:g}"
            )
        if self.channels is not None and self.channels < 1:
            raise FanwatchError(f"--channels must be at least 1, got {self.channels}")


def level_dbfs(x: np.ndarray) -> float:
    ms = float(np.mean(np.square(x, dtype=np.float64))) if x.size else 0.0
    return 10.0 * math.log10(ms) if ms > 1e-12 else -120.0


def check_input(x: np.ndarray, what: str) -> None:
    """One line when ``x`` ([frames, channels]) is silent or clipping."""
    level = level_dbfs(x)
    if level < SILENT_DBFS:
        raise FanwatchError(
            f"the input is silent ({what}: {level:.0f} dBFS RMS, below {SILENT_DBFS:.0f}): check "
            "that the microphone is connected, unmuted and its gain up (alsamixer); nothing "
            "was written for it"
        )
    clipped = float(np.mean(np.abs(x) >= CLIP_LEVEL)) if x.size else 0.0
    if clipped > CLIP_FRACTION:
        raise FanwatchError(
            f"the input is clipping ({what}: {clipped:.1%} of the samples at full scale): lower "
            "the microphone gain (alsamixer) or move it away from the machine; nothing was "
            "written for it"
        )


def to_pcm16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(np.asarray(x, dtype=np.float64) * 32768.0), -32768, 32767).astype("<i2")


def write_wav(path: Path, x: np.ndarray, rate: int) -> None:
    """16-bit PCM WAV; never overwrites a file."""
    pcm = to_pcm16(x if x.ndim == 2 else x[:, None])
    with open(path, "xb") as handle, wave.open(handle, "wb") as w:
        w.setnchannels(pcm.shape[1])
        w.setsampwidth(2)
        w.setframerate(int(rate))
        w.writeframes(pcm.tobytes())


def _meter(level: float, peak: float, left: float, clip: int, clips: int, width: int = 24) -> str:
    filled = int(round(width * min(max((level + 60.0) / 60.0, 0.0), 1.0)))
    bar = "#" * filled + "." * (width - filled)
    return (
        f"[{bar}] {level:6.1f} dBFS (peak {peak:6.1f})  clip {clip}/{clips}  "
        f"{int(left) // 60}:{int(left) % 60:02d} left"
    )


def record(s: RecordSettings, out=None, err=None, source=None) -> dict:
    """Record ``s.seconds`` of audio into clips under ``s.out / s.label``; returns what was done."""
    from .live.analyzer import live_channels
    from .live.blocks import BlockQueue
    from .live.sources import DeviceError, SoundDeviceSource
    from .live.stats import LoopStats

    out, err = out or sys.stdout, err or sys.stderr
    s.validate()
    folder = Path(s.out) / s.label
    source = source or SoundDeviceSource(s.device, "mean", s.rate, s.channels, s.block_seconds, stall_seconds=5.0)
    bq = BlockQueue(max(50, int(60.0 / s.block_seconds)), LoopStats())
    try:
        info = source.open(bq, 1)
    except DeviceError as exc:
        raise FanwatchError(str(exc)) from None
    rate = float(info["rate"])
    if abs(rate - round(rate)) > 1e-6:
        source.close()
        raise FanwatchError(f"the device runs at {rate} Hz, which a WAV file cannot store; pass --rate")
    rate_i = int(round(rate))
    clip_frames = int(round(s.clip_seconds * rate_i))
    total_frames = int(round(s.seconds * rate_i))
    targets = [clip_frames] * (total_frames // clip_frames)
    if total_frames % clip_frames >= rate_i:  # a last, shorter clip of at least a second
        targets.append(total_frames % clip_frames)
    goal = sum(targets)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    tty = hasattr(err, "isatty") and err.isatty()
    written: list[dict] = []
    keep: np.ndarray | None = None  # columns that carry signal (padding channels of plug devices left out)
    pending: list[np.ndarray] = []
    pending_frames = 0
    last_meter = 0.0
    peak_recent = 0.0
    gaps = 0
    settle = int(round(SETTLE_SECONDS * rate_i))
    print(
        f"recording {s.label}: {goal / rate_i:g} s from {info['device']} at {rate_i} Hz ({info['channels']} "
        f"channel(s) opened) into {folder}/ as {len(targets)} clip(s)",
        file=err,
        flush=True,
    )

    def finish_clip(frames: np.ndarray, index: int) -> None:
        check_input(frames, f"clip {index}")
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{s.label}_{stamp}_{index:03d}.wav"
        write_wav(path, frames, rate_i)
        written.append(
            {"file": path.name, "seconds": round(len(frames) / rate_i, 3), "level_dbfs": round(level_dbfs(frames), 1)}
        )
        if not tty:
            print(f"wrote {path} ({len(frames) / rate_i:.1f} s, {level_dbfs(frames):.1f} dBFS)", file=err, flush=True)

    try:
        while len(written) < len(targets):
            lost = source.health()
            if lost:
                raise FanwatchError(f"recording stopped: {lost}")
            try:
                block = bq.get(timeout=0.2)
            except queue.Empty:
                continue
            data = np.asarray(block.data, dtype=np.float32)
            if settle > 0:
                skip, settle = min(settle, len(data)), settle - min(settle, len(data))
                data = data[skip:]
                if not len(data):
                    continue
            if block.gap and pending:  # audio was lost: the clip in progress would splice across the gap
                gaps += 1
                pending, pending_frames = [], 0
                print(
                    "\nnote: audio was lost (driver overflow or a full queue); the clip in progress starts again",
                    file=err,
                    flush=True,
                )
            pending.append(data)
            pending_frames += len(data)
            peak_recent = max(peak_recent, float(np.max(np.abs(data))) if data.size else 0.0)
            if keep is None and pending_frames >= CHECK_SECONDS * rate_i:
                first = np.concatenate(pending)
                alive = live_channels(first)  # the same rule as the live loop's mean
                keep = alive if alive is not None else np.arange(first.shape[1])
                check_input(first[:, keep], "first second")
            target = targets[len(written)]
            if keep is not None and pending_frames >= target:
                frames = np.concatenate(pending)
                finish_clip(frames[:target, keep], len(written) + 1)
                rest = frames[target:]
                pending, pending_frames = ([rest], len(rest)) if len(rest) else ([], 0)
            now = time.monotonic()
            if tty and now - last_meter >= 0.25:
                recent = np.concatenate(pending[-3:]) if pending else data
                recent = recent[:, keep] if keep is not None else recent
                done = sum(round(w["seconds"] * rate_i) for w in written) + pending_frames
                line = _meter(
                    level_dbfs(recent),
                    20 * math.log10(max(peak_recent, 1e-6)),
                    max(0.0, (goal - done) / rate_i),
                    min(len(written) + 1, len(targets)),
                    len(targets),
                )
                print("\r" + line, end="", file=err, flush=True)
                last_meter, peak_recent = now, 0.0
    finally:
        source.close()
        if tty:
            print(file=err)
        if written:
            entry = {
                "time": stamp,
                "label": s.label,
                "device": info.get("device"),
                "rate": rate_i,
                "channels": int(len(keep)) if keep is not None else info.get("channels"),
                "device_channels_opened": info.get("channels"),
                "files": written,
                "gaps": gaps,
                "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(s).items()},
            }
            with open(folder / LOG_NAME, "a", encoding="utf-8") as log:
                log.write(json.dumps(entry) + "\n")
    seconds = sum(w["seconds"] for w in written)
    print(
        f"wrote {len(written)} clip(s), {seconds:.1f} s at {rate_i} Hz, "
        f"{len(keep) if keep is not None else '?'} channel(s), to {folder}/",
        file=out,
        flush=True,
    )
    return {"folder": str(folder), "rate": rate_i, "files": written}
