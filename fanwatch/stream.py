"""The real-time loop: microphone (or a replayed WAV file) in, debounced state and anomaly decisions out.

Three parts, decoupled by one bounded queue so that a slow model can never stall the audio driver:

* a **source** puts blocks of audio at the capture device's native rate into the queue. The live source is a
  ``sounddevice.InputStream`` whose callback only copies the block and calls ``put_nowait``; a block that
  does not fit is dropped and counted, and PortAudio's overflow flags are counted too -- nothing is lost
  silently, and the first block after lost audio carries a ``gap`` flag. :class:`WavSource` replays a file
  through the very same queue (real-time pace, or ``fast``: as fast as the worker goes, blocking on a full
  queue instead of dropping).
* a **worker** thread (:class:`Worker` around :class:`Analyzer`) mixes the block to mono the way the model
  was trained (the model card's channel setting unless ``--channel`` says otherwise), resamples it to
  16 kHz with :class:`fanwatch.audio.StreamResampler` (the soxr path used in training), keeps a rolling
  window of ``config.WINDOW_SAMPLES`` samples and runs the model every hop. A gap in the audio (dropped
  blocks, a driver overflow) or a reopened device restarts the resampler and the rolling window, so that
  no window is ever cut from audio that was not continuous. Per window: label, confidence, anomaly score
  as a ratio to the threshold, inference time, end-to-end latency, queue depth, drops. Decisions are
  debounced (:class:`StateDebouncer`, :class:`AlertDebouncer`): a state change is reported once after K
  agreeing windows; an alert is raised after N of the last M windows reach the threshold (score >=
  threshold, as in training and evaluation) and cleared with hysteresis.
* the **supervisor** (:func:`run`, in the main thread) opens the source, watches it, reports a vanished
  device (a USB microphone unplugged: PortAudio error, stream finished or aborted, or no audio for a while)
  and reopens it with capped exponential backoff. A configuration that cannot work (no such device, a
  channel or rate it does not have) ends the run with one line instead when the very first open fails.
  SIGINT / SIGTERM set a stop event and end the loop with a summary.

Output goes through :class:`Reporter`: a readable line per window or JSON Lines, events as their own
lines, and an optional rotating event log file. Audio never leaves the process: nothing is written to disk
or sent anywhere; only the decisions are printed.

Runtime module: numpy, soxr (through ``audio``), a TFLite runtime (through ``runtime``) and the standard
library. ``sounddevice`` is imported only when a live device is used; ``soundfile`` only if installed
(otherwise :mod:`fanwatch.wavfile` decodes WAV files).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import logging.handlers
import math
import os
import queue
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

from fanwatch import audio, bands, config, runtime, wavfile
from fanwatch.errors import BadAudioError, FanwatchError

try:
    import resource
except ImportError:  # not on Windows; only used for the peak-memory figure
    resource = None

DEFAULT_MODEL = Path("artifacts") / runtime.MODEL_NAME
DEFAULT_BLOCK_SECONDS = 0.1
DEFAULT_QUEUE_BLOCKS = 50
MAX_MEAN_CHANNELS = 8
"""channel="mean" on a live device opens every input channel it offers, up to this many (``--channels N``
opens N). Microphones and mic arrays have 1 to 8; ALSA plugin devices (default, pulse, pipewire, plug)
advertise 32 to 128 virtual channels, copies or digital silence, that would only cost CPU time."""
STUCK_STREAMS = 0  # capture streams whose close did not finish (a hung driver); see SoundDeviceSource.close


class DeviceError(FanwatchError):
    """The capture device could not be opened or was lost; the supervisor retries."""


class DeviceConfigError(DeviceError):
    """The capture configuration cannot work (no such device, a channel, channel count or rate the device
    does not have). Ends the run when the very first open fails; retried like any DeviceError once the
    device has been opened (a re-plugged device may come back different)."""


# PortAudio error codes that mean "these parameters can never work", not "the device is busy or gone"
_PA_CONFIG_ERRORS = {
    -9998: "invalid channel count",
    -9997: "invalid sample rate",
    -9996: "invalid device",
    -9994: "sample format not supported",
    -9993: "bad input/output device combination",
    -9991: "buffer too big",
    -9990: "buffer too small",
}


# --------------------------------------------------------------------------------------------------
# settings and statistics


@dataclass
class LoopSettings:
    """Everything the loop needs; ``inference.py`` fills it from the command line."""

    model: Path = DEFAULT_MODEL
    device: str | int | None = None  # None: PortAudio's default input device
    wav: Path | None = None  # replay this file instead of a device
    fast: bool = False  # with wav: as fast as the worker goes
    hop: float = config.HOP_SECONDS  # seconds between windows
    threads: int = 1
    runtime: str | None = None
    machine: str | None = None
    channel: str | int | None = None  # "mean" or a 0-based index; None: the model card's training setting
    channels: int | None = None  # device channels to open (default for "mean": all, see MAX_MEAN_CHANNELS)
    rate: float | None = None  # device sample rate (default: the device's default rate)
    block_seconds: float = DEFAULT_BLOCK_SECONDS
    queue_blocks: int = DEFAULT_QUEUE_BLOCKS
    alert_n: int = 3
    alert_m: int = 4
    clear_n: int = 0
    clear_ratio: float = 1.0
    threshold_scale: float = 1.0  # multiplies the model card's anomaly thresholds
    state_k: int = 3
    json_lines: bool = False
    quiet: bool = False  # events and summary only, no line per window
    event_log: Path | None = None
    event_log_bytes: int = 1_000_000
    event_log_backups: int = 5
    backoff_initial: float = 1.0
    backoff_max: float = 30.0
    stall_seconds: float = 5.0
    drop_report_seconds: float = 10.0
    duration: float | None = None  # stop after this many seconds
    simulate_slow_ms: float = 0.0  # testing aid: extra delay after each inference

    def validate(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise FanwatchError(message)

        need(self.hop > 0 and math.isfinite(self.hop), f"--hop must be a positive number of seconds, got {self.hop}")
        need(round(self.hop * config.SAMPLE_RATE) >= 1, f"--hop {self.hop} is shorter than one sample")
        need(self.threads >= 1, f"--threads must be at least 1, got {self.threads}")
        need(1 <= self.alert_n <= self.alert_m, f"--alert-n must be between 1 and --alert-m ({self.alert_m}), "
                                                f"got {self.alert_n}")
        need(0 <= self.clear_n < self.alert_n, f"--clear-n must be between 0 and --alert-n - 1, got {self.clear_n}")
        need(0 < self.clear_ratio <= 1.0, f"--clear-ratio must be in (0, 1], got {self.clear_ratio}")
        need(self.threshold_scale > 0 and math.isfinite(self.threshold_scale),
             f"--threshold-scale must be a positive number, got {self.threshold_scale}")
        need(self.state_k >= 1, f"--state-k must be at least 1, got {self.state_k}")
        need(0 < self.block_seconds <= 2.0, f"--block-ms must be between 1 and 2000, got {self.block_seconds * 1000:g}")
        need(self.queue_blocks >= 1, f"--queue-blocks must be at least 1, got {self.queue_blocks}")
        need(self.rate is None or self.rate > 0, f"--rate must be positive, got {self.rate}")
        need(self.channels is None or self.channels >= 1, f"--channels must be at least 1, got {self.channels}")
        need(self.fast is False or self.wav is not None, "--fast only applies to --wav replays")
        need(0 < self.backoff_initial <= self.backoff_max, "--backoff-max must be at least the initial backoff")
        need(self.stall_seconds > 0, "--stall-seconds must be positive")
        need(self.duration is None or self.duration > 0, "--duration must be positive")
        need(self.simulate_slow_ms >= 0, "--simulate-slow-ms must not be negative")
        need(self.event_log_bytes >= 1024, "--event-log-bytes must be at least 1024")
        need(self.event_log_backups >= 0, "--event-log-backups must not be negative")
        if self.channel is not None:
            self.channel = audio.parse_channel(self.channel)


class Histogram:
    """Constant-memory distribution of positive values (log-spaced bins, ~1 % resolution) for percentiles.

    The loop runs for months; keeping every inference time would grow without bound.
    """

    LOW = 1e-3
    STEP = math.log(1.01)
    BINS = 2400  # 1e-3 * 1.01**2400 ~ 2.3e7

    def __init__(self):
        self.counts = np.zeros(self.BINS, dtype=np.int64)
        self.n = 0
        self.total = 0.0
        self.max = 0.0

    def add(self, value: float) -> None:
        value = max(float(value), 0.0)
        i = 0 if value <= self.LOW else min(int(math.log(value / self.LOW) / self.STEP) + 1, self.BINS - 1)
        self.counts[i] += 1
        self.n += 1
        self.total += value
        self.max = max(self.max, value)

    def quantile(self, q: float) -> float | None:
        if self.n == 0:
            return None
        rank = q * (self.n - 1)
        i = int(np.searchsorted(np.cumsum(self.counts), rank, side="right"))
        i = min(i, self.BINS - 1)
        if i == 0:
            return self.LOW
        lo = self.LOW * math.exp((i - 1) * self.STEP)
        return min(lo * math.exp(0.5 * self.STEP), self.max)  # bin centre, never above the maximum


@dataclass
class LoopStats:
    """Counters shared by the source (callback thread), the worker and the supervisor."""

    blocks: int = 0
    frames: int = 0
    dropped_blocks: int = 0
    dropped_frames: int = 0
    dropped_seconds: float = 0.0
    overflows: int = 0
    gap_restarts: int = 0  # the analysis restarted after lost audio (drops, overflows)
    windows: int = 0
    alerts: int = 0
    state_changes: int = 0
    device_losses: int = 0
    device_errors: int = 0
    max_queue_depth: int = 0
    started: float = field(default_factory=time.monotonic)
    cpu_started: float = field(default_factory=time.process_time)
    first_decision: float | None = None  # monotonic time of the first window's decision
    last_decision: float | None = None
    cpu_at_first_decision: float | None = None
    inference_ms: Histogram = field(default_factory=Histogram)
    latency_ms: Histogram = field(default_factory=Histogram)

    def summary(self, reason: str) -> dict:
        now = time.monotonic()
        cpu = time.process_time()
        uptime = now - self.started
        out = {
            "type": "summary",
            "reason": reason,
            "uptime_s": round(uptime, 3),
            "blocks": self.blocks,
            "windows": self.windows,
            "alerts": self.alerts,
            "state_changes": self.state_changes,
            "dropped_blocks": self.dropped_blocks,
            "dropped_seconds": round(self.dropped_seconds, 3),
            "overflows": self.overflows,
            "gap_restarts": self.gap_restarts,
            "device_losses": self.device_losses,
            "device_errors": self.device_errors,
            "max_queue_depth": self.max_queue_depth,
            "inference_ms_median": _round(self.inference_ms.quantile(0.5)),
            "inference_ms_p95": _round(self.inference_ms.quantile(0.95)),
            "inference_ms_max": _round(self.inference_ms.max if self.inference_ms.n else None),
            "latency_ms_median": _round(self.latency_ms.quantile(0.5)),
            "latency_ms_p95": _round(self.latency_ms.quantile(0.95)),
            "latency_ms_max": _round(self.latency_ms.max if self.latency_ms.n else None),
            "cpu_s": round(cpu - self.cpu_started, 3),
            "cpu_percent": round(100.0 * (cpu - self.cpu_started) / uptime, 2) if uptime > 0 else None,
            "first_decision_s": None if self.first_decision is None else round(self.first_decision - self.started, 3),
            "peak_rss_mb": peak_rss_mb(),
        }
        span = (self.last_decision or 0.0) - (self.first_decision or 0.0)
        out["windows_per_second"] = round((self.windows - 1) / span, 2) if self.windows > 1 and span > 0 else None
        if self.first_decision is not None and now - self.first_decision > 0.5:
            steady_cpu = cpu - (self.cpu_at_first_decision or 0.0)
            out["cpu_percent_steady"] = round(100.0 * steady_cpu / (now - self.first_decision), 2)
        else:
            out["cpu_percent_steady"] = None
        return out


def peak_rss_mb() -> float | None:
    """Peak resident memory of this process image in MB: VmHWM on Linux (``ru_maxrss`` survives ``exec``
    there and would report a big parent's peak), else ``ru_maxrss``."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024.0, 1)
    except (OSError, ValueError, IndexError):
        pass
    if resource is None:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024.0 * 1024.0 if sys.platform == "darwin" else 1024.0), 1)


def _round(value, digits: int = 3):
    return None if value is None else round(float(value), digits)


# --------------------------------------------------------------------------------------------------
# the queue between source and worker


@dataclass(slots=True)
class Block:
    """One block from a source: ``data`` [frames, channels] float32 at ``rate``; ``arrival`` is when it
    was queued (``time.monotonic()``); a new ``stream_id`` marks a discontinuity (device reopened);
    ``gap`` says that audio was lost just before this block (blocks dropped, a driver overflow)."""

    data: np.ndarray
    rate: float
    stream_id: int
    arrival: float
    gap: bool = False


END_OF_STREAM = object()  # a file source has delivered everything


class BlockQueue:
    """A bounded queue that counts what it cannot take."""

    def __init__(self, maxsize: int, stats: LoopStats):
        self.queue: queue.Queue = queue.Queue(maxsize=maxsize)
        self.maxsize = maxsize
        self.stats = stats
        self._gap = False  # a block was dropped: the next one queued follows a gap

    def offer(self, block: Block) -> bool:
        """Non-blocking put (audio callbacks, one producer): a full queue drops the block and counts it, and
        the next block that gets in is flagged ``gap``."""
        if self._gap:
            block.gap = True
        try:
            self.queue.put_nowait(block)
        except queue.Full:
            self.stats.dropped_blocks += 1
            self.stats.dropped_frames += len(block.data)
            self.stats.dropped_seconds += len(block.data) / block.rate
            self._gap = True
            return False
        self._gap = False
        return True

    def put_wait(self, item, stop: threading.Event) -> bool:
        """Blocking put that gives up when ``stop`` is set (fast replays, end-of-stream marker)."""
        while not stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def get(self, timeout: float):
        return self.queue.get(timeout=timeout)

    def depth(self) -> int:
        return self.queue.qsize()


# --------------------------------------------------------------------------------------------------
# sources


def _sounddevice():
    try:
        import sounddevice
    except (ImportError, OSError) as exc:
        raise FanwatchError(
            f"live capture needs the sounddevice package and the PortAudio library ({exc}); "
            "install libportaudio2 (apt-get install libportaudio2) or replay a file with --wav") from None
    return sounddevice


def parse_device(value: str | int | None) -> str | int | None:
    """``"3"`` -> 3 (a device index), other text is a device name (or part of one), ``None``/"" -> default."""
    if value is None:
        return None
    if isinstance(value, int):
        return value
    text = str(value).strip()
    if not text or text.lower() == "default":
        return None
    return int(text) if text.isdigit() else text


def list_devices(out=None) -> int:
    """Print the input devices PortAudio sees; returns how many there are."""
    out = out or sys.stdout
    sd = _sounddevice()
    try:
        devices = sd.query_devices()
        default_in = sd.default.device[0]
    except sd.PortAudioError as exc:
        raise FanwatchError(f"cannot list audio devices: {exc}") from None
    hostapis = sd.query_hostapis()
    n = 0
    for index, dev in enumerate(devices):
        if dev["max_input_channels"] < 1:
            continue
        n += 1
        mark = "*" if index == default_in else " "
        api = hostapis[dev["hostapi"]]["name"]
        print(f"{mark}{index:3d}  {dev['name']}  ({api}; {dev['max_input_channels']} in, "
              f"default {dev['default_samplerate']:.0f} Hz)", file=out)
    if n == 0:
        print("no input devices found", file=out)
    else:
        print("* = default input device; pass --device INDEX or --device NAME (or part of it)", file=out)
    return n


class SoundDeviceSource:
    """A live capture device through PortAudio; the callback only copies and queues.

    ``channel="mean"`` opens every input channel the device offers (at most :data:`MAX_MEAN_CHANNELS`, or
    exactly ``channels``) and the worker averages them, as training's ``--channel mean`` averages all the
    channels of a file; a channel index opens enough channels to include it.
    """

    def __init__(self, device=None, channel: str | int | None = "mean", rate: float | None = None,
                 channels: int | None = None, block_seconds: float = DEFAULT_BLOCK_SECONDS,
                 stall_seconds: float = 5.0, stats: LoopStats | None = None):
        self.device = parse_device(device)
        self.channel = audio.parse_channel("mean" if channel is None else channel)
        self.rate = rate
        self.channels = channels
        self.block_seconds = block_seconds
        self.stall_seconds = stall_seconds
        self.stats = stats or LoopStats()
        self._stream = None
        self._finished = threading.Event()
        self._last_block = 0.0
        self._opened = 0
        self._stuck = False

    def describe(self) -> str:
        return "default input device" if self.device is None else f"input device {self.device!r}"

    def _plan(self, sd) -> tuple[dict, int]:
        """(PortAudio's device info, channels to open); DeviceConfigError when the device or the channel
        setting cannot work, DeviceError when PortAudio cannot be asked."""
        try:
            info = sd.query_devices(self.device, "input")
        except ValueError as exc:  # no device matches the name, or it has no input
            raise DeviceConfigError(f"no {self.describe()} ({' '.join(str(exc).split())}); "
                                    "see python inference.py --list-devices") from None
        except sd.PortAudioError as exc:
            if isinstance(self.device, int):  # "Error querying device 99": no such index
                raise DeviceConfigError(f"no {self.describe()} ({' '.join(str(exc).split())}); "
                                        "see python inference.py --list-devices") from None
            raise DeviceError(f"cannot query {self.describe()}: {exc}") from None
        available = int(info["max_input_channels"])
        if available < 1:
            raise DeviceConfigError(f"{info['name']} has no input channels")
        if self.channel == "mean":
            n_channels = self.channels or min(available, MAX_MEAN_CHANNELS)
            if n_channels > available:
                raise DeviceConfigError(f"--channels {n_channels} requested but {info['name']} has {available} "
                                        f"input channel(s)")
        else:
            n_channels = max(self.channel + 1, self.channels or 0)
            if self.channel + 1 > available:
                raise DeviceConfigError(f"channel {self.channel} requested but {info['name']} has {available} "
                                        f"input channel(s) (valid: 0..{available - 1} or \"mean\")")
            if n_channels > available:
                raise DeviceConfigError(f"--channels {n_channels} requested but {info['name']} has {available} "
                                        f"input channel(s)")
        return info, n_channels

    def prepare(self, channel: str | int) -> None:
        """Take the resolved channel setting and check it against the device before the model loads:
        DeviceConfigError (one line, exit status 2) for a missing device or a channel it does not have."""
        self.channel = audio.parse_channel(channel)
        sd = _sounddevice()
        try:
            self._plan(sd)
        except DeviceConfigError:
            raise
        except DeviceError:  # PortAudio could not be asked now: the supervisor will keep trying
            pass

    def open(self, bq: BlockQueue, stream_id: int) -> dict:
        sd = _sounddevice()
        if self._opened and not self._stuck:
            # re-initialise PortAudio so that a re-plugged USB microphone (new ALSA card) is enumerated again
            terminate, initialize = getattr(sd, "_terminate", None), getattr(sd, "_initialize", None)
            if terminate and initialize:
                try:
                    terminate()
                    initialize()
                except Exception as exc:  # noqa: BLE001 - keep trying with the old enumeration
                    raise DeviceError(f"cannot re-initialise PortAudio: {exc}") from None
        info, n_channels = self._plan(sd)
        available = int(info["max_input_channels"])
        rate = float(self.rate or info["default_samplerate"])
        blocksize = max(1, int(round(rate * self.block_seconds)))
        stats = self.stats
        self._finished = threading.Event()
        self._last_block = time.monotonic()

        def callback(indata, frames, time_info, status):  # PortAudio's thread: copy, queue, return
            now = time.monotonic()
            self._last_block = now
            overflow = bool(status.input_overflow)  # the driver lost audio before this block
            if overflow:
                stats.overflows += 1
            stats.blocks += 1
            stats.frames += frames
            bq.offer(Block(indata.copy(), rate, stream_id, now, overflow))

        stream = None
        try:
            stream = sd.InputStream(device=info["index"], samplerate=rate, channels=n_channels, dtype="float32",
                                    blocksize=blocksize, callback=callback,
                                    finished_callback=self._finished.set)
            stream.start()
        except (sd.PortAudioError, ValueError) as exc:
            if stream is not None:
                try:
                    stream.close()
                except Exception:  # noqa: BLE001
                    pass
            code = exc.args[1] if isinstance(exc, sd.PortAudioError) and len(exc.args) > 1 else None
            error = DeviceConfigError if isinstance(exc, ValueError) or code in _PA_CONFIG_ERRORS else DeviceError
            raise error(f"cannot open {info['name']} at {rate:.0f} Hz with {n_channels} channel(s): "
                        f"{' '.join(str(exc.args[0] if exc.args else exc).split())}") from None
        self._stream = stream
        self._opened += 1
        self._stuck = False
        return {"device": info["name"], "index": int(info["index"]), "rate": rate, "channels": n_channels,
                "device_channels": available, "blocksize": blocksize,
                "mix": "mean" if self.channel == "mean" else f"channel {self.channel}"}

    def health(self) -> str | None:
        stream = self._stream
        if stream is None:
            return "input stream not open"
        try:
            active = stream.active
        except Exception as exc:  # noqa: BLE001 - PortAudio reports a broken stream as an error
            return f"input stream failed ({' '.join(str(exc).split())})"
        if self._finished.is_set() or not active:
            return "input stream stopped (device unplugged or failed)"
        silent = time.monotonic() - self._last_block
        if silent > self.stall_seconds:
            return f"no audio from the device for {silent:.1f} s"
        return None

    def close(self) -> None:
        stream, self._stream = self._stream, None
        if stream is None:
            return

        def shut():
            try:
                stream.abort()
            except Exception:  # noqa: BLE001 - a vanished device may fail any call
                pass
            try:
                stream.close()
            except Exception:  # noqa: BLE001
                pass

        closer = threading.Thread(target=shut, name="fanwatch-close", daemon=True)
        closer.start()
        closer.join(timeout=3.0)
        # A driver blocked inside a read (a hung device) keeps PortAudio's abort waiting: leave that stream
        # to its daemon thread, do not re-initialise PortAudio under it, and let the CLI exit without
        # PortAudio's exit handler (which would wait for it too).
        self._stuck = closer.is_alive()
        if self._stuck:
            global STUCK_STREAMS
            STUCK_STREAMS += 1


def _open_audio_file(path: Path):
    """A reader with ``.rate``, ``.channels``, ``.frames``, ``.read(n) -> [n, ch] float32``, ``.close()``."""
    try:
        import soundfile
    except (ImportError, OSError):
        soundfile = None
    if soundfile is None:
        if path.suffix.lower() not in (".wav", ".wave"):
            raise BadAudioError(path, "only WAV files can be replayed without the soundfile package")
        return wavfile.WavReader(path)
    audio._check_file(path)  # the same checks and words as training's loader
    try:
        handle = soundfile.SoundFile(str(path))
    except (RuntimeError, ValueError, TypeError, OSError, EOFError) as exc:
        raise BadAudioError(path, audio._decode_reason(exc)) from None

    class _Reader:
        rate = int(handle.samplerate)
        channels = int(handle.channels)
        frames = int(handle.frames)

        @staticmethod
        def read(n: int) -> np.ndarray:
            return handle.read(n, dtype="float32", always_2d=True)

        @staticmethod
        def close() -> None:
            handle.close()

    if _Reader.frames <= 0:
        handle.close()
        raise BadAudioError(path, "contains no audio samples")
    return _Reader


class WavSource:
    """Replay a file through the same queue as a device: blocks at the file's native rate.

    Real-time pace: each block is queued when its last sample would have been captured, with ``offer``
    (drops counted, like the device callback). ``fast``: blocking puts, as fast as the worker takes them.
    An end-of-stream marker follows the last block. Blocks carry every channel of the file; the worker
    mixes them like training does (``"mean"`` averages all of them).
    """

    def __init__(self, path, channel: str | int | None = "mean", fast: bool = False,
                 block_seconds: float = DEFAULT_BLOCK_SECONDS, stats: LoopStats | None = None):
        self.path = Path(path)
        self.fast = fast
        self.block_seconds = block_seconds
        self.stats = stats or LoopStats()
        self.reader = _open_audio_file(self.path)
        self.rate = float(self.reader.rate)
        try:
            self.prepare("mean" if channel is None else channel)
        except BaseException:
            self.reader.close()
            raise
        self.error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def prepare(self, channel: str | int) -> None:
        """Take the resolved channel setting; BadAudioError if the file does not have that channel."""
        channel = audio.parse_channel(channel)
        n = self.reader.channels
        if isinstance(channel, int) and channel >= n:
            raise BadAudioError(self.path, f"channel {channel} requested but the file has {n} channel(s) "
                                           f"(valid: 0..{n - 1} or \"mean\")")
        self.channel = channel

    def open(self, bq: BlockQueue, stream_id: int) -> dict:
        if self._thread is not None:
            raise DeviceError(f"{self.path} was already replayed")
        self._thread = threading.Thread(target=self._feed, args=(bq, stream_id), name="fanwatch-wav",
                                        daemon=True)
        self._thread.start()
        return {"file": str(self.path), "rate": self.rate, "channels": self.reader.channels,
                "mix": "mean" if self.channel == "mean" else f"channel {self.channel}",
                "seconds": round(self.reader.frames / self.rate, 3), "pace": "fast" if self.fast else "real-time"}

    def _feed(self, bq: BlockQueue, stream_id: int) -> None:
        blocksize = max(1, int(round(self.rate * self.block_seconds)))
        stats = self.stats
        sent = 0
        start = time.monotonic()
        try:
            while not self._stop.is_set():
                data = self.reader.read(blocksize)
                if len(data) == 0:
                    break
                if not np.isfinite(data).all():
                    data = np.nan_to_num(data, nan=0.0, posinf=1.0, neginf=-1.0)
                sent += len(data)
                if not self.fast:
                    delay = start + sent / self.rate - time.monotonic()
                    if delay > 0 and self._stop.wait(delay):
                        break
                stats.blocks += 1
                stats.frames += len(data)
                block = Block(np.ascontiguousarray(data, dtype=np.float32), self.rate, stream_id, time.monotonic())
                if self.fast:
                    if not bq.put_wait(block, self._stop):
                        break
                else:
                    bq.offer(block)
            else:
                return
            bq.put_wait(END_OF_STREAM, self._stop)
        except BaseException as exc:  # noqa: BLE001 - reported by the supervisor
            self.error = exc

    def health(self) -> str | None:
        if self.error is not None:
            exc = self.error
            raise exc if isinstance(exc, FanwatchError) else BadAudioError(self.path, f"read failed ({exc})")
        return None

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        try:
            self.reader.close()
        except Exception:  # noqa: BLE001
            pass


# --------------------------------------------------------------------------------------------------
# decisions


class StateDebouncer:
    """Report a new operating state once, after ``k`` consecutive windows agree on it."""

    def __init__(self, k: int = 3):
        if k < 1:
            raise ValueError("k must be at least 1")
        self.k = k
        self.state: str | None = None
        self._candidate: str | None = None
        self._count = 0

    def update(self, label: str) -> tuple[str | None, str] | None:
        """Feed one window's label; returns ``(old, new)`` when the reported state changes."""
        if label == self._candidate:
            self._count += 1
        else:
            self._candidate, self._count = label, 1
        if self._count >= self.k and self._candidate != self.state:
            old, self.state = self.state, self._candidate
            return old, self.state
        return None


class AlertDebouncer:
    """Raise after ``n`` of the last ``m`` windows reach the threshold (ratio >= 1, the ``score >= threshold``
    rule of training and evaluation); clear with hysteresis when at most ``clear_n`` of the last ``m``
    windows are at or above ``clear_ratio`` (<= 1)."""

    def __init__(self, n: int = 3, m: int = 4, clear_n: int = 0, clear_ratio: float = 1.0):
        if not 1 <= n <= m:
            raise ValueError(f"need 1 <= n <= m, got n={n}, m={m}")
        if not 0 <= clear_n < n:
            raise ValueError(f"need 0 <= clear_n < n, got clear_n={clear_n}")
        if not 0 < clear_ratio <= 1.0:
            raise ValueError(f"need 0 < clear_ratio <= 1, got {clear_ratio}")
        self.n, self.m, self.clear_n, self.clear_ratio = n, m, clear_n, clear_ratio
        self._over = deque(maxlen=m)
        self._hold = deque(maxlen=m)
        self.active = False

    def exceeding(self) -> int:
        return sum(self._over)

    def update(self, ratio: float) -> str | None:
        """Feed one window's score ratio; returns "raised", "cleared" or None."""
        self._over.append(ratio >= 1.0)
        self._hold.append(ratio >= self.clear_ratio)
        if not self.active and sum(self._over) >= self.n:
            self.active = True
            return "raised"
        if self.active and len(self._hold) == self.m and sum(self._hold) <= self.clear_n:
            self.active = False
            return "cleared"
        return None


@dataclass
class WindowResult:
    t: float  # seconds of (16 kHz) audio analysed so far, at this window's end
    label: str
    confidence: float
    anomaly: float  # score / threshold
    anomalous: bool
    state: str | None
    alert: bool
    inference_ms: float
    latency_ms: float
    queue: int
    drops: int
    overflows: int
    gap_restarts: int = 0  # analysis restarts after lost audio so far: windows with equal counts are continuous
    level_dbfs: float | None = None  # RMS level of the window the model heard (16 kHz), dB re full scale
    events: list = field(default_factory=list)

    def record(self) -> dict:
        return {"type": "window", "t": round(self.t, 3), "label": self.label,
                "confidence": round(self.confidence, 4), "anomaly": round(self.anomaly, 4),
                "anomalous": self.anomalous, "state": self.state, "alert": self.alert,
                "inference_ms": round(self.inference_ms, 2), "latency_ms": round(self.latency_ms, 1),
                "queue": self.queue, "drops": self.drops, "overflows": self.overflows,
                "gap_restarts": self.gap_restarts,
                "level_dbfs": None if self.level_dbfs is None else round(self.level_dbfs, 1)}


def to_mono(data: np.ndarray, channel: str | int) -> np.ndarray:
    """Mix a [frames, channels] block to mono like :func:`fanwatch.audio.load_audio`: ``"mean"`` averages
    every channel, an int picks that channel."""
    data = np.asarray(data, dtype=np.float32)
    if data.ndim == 1:
        return data
    if channel == "mean":
        return data[:, 0] if data.shape[1] == 1 else data.mean(axis=1, dtype=np.float32)
    return data[:, channel]


def live_channels(data: np.ndarray) -> np.ndarray | None:
    """For a live ``"mean"``: the columns of a [frames, channels] block that carry signal, or None when all
    do (or none does). A capture channel that is exact digital zero for a whole block is not a microphone:
    ALSA's plug layer fills the channels a device does not have with silence (a stereo microphone opened
    with 8 channels gives 2 + 6 silent ones), and averaging them in would scale the signal down."""
    if data.ndim != 2 or data.shape[1] < 2:
        return None
    alive = np.flatnonzero(np.any(data != 0.0, axis=0))
    if len(alive) in (0, data.shape[1]):
        return None
    return alive


class Analyzer:
    """The worker's logic, independent of threads: blocks in, one :class:`WindowResult` per hop out.

    A block with a new ``stream_id`` or rate, or with ``gap`` set, starts a new continuous segment: the
    resampler and the rolling window start afresh, so no window spans a discontinuity. At a gap the
    segment before it is first finished like the end of a file (the resampler's delay flushed, its last
    full windows analysed); each such restart is counted in ``stats.gap_restarts``.
    """

    def __init__(self, classifier, settings: LoopSettings, stats: LoopStats | None = None,
                 queue_depth: Callable[[], int] = lambda: 0, skip_silent_channels: bool | None = None):
        self.classifier = classifier
        self.settings = settings
        self.channel = "mean" if settings.channel is None else settings.channel
        self.stats = stats or LoopStats()
        self.queue_depth = queue_depth
        # a live "mean" leaves out channels that are pure padding (see live_channels); files are averaged as is
        self.skip_silent = (settings.wav is None) if skip_silent_channels is None else skip_silent_channels
        self.hop = max(1, int(round(settings.hop * config.SAMPLE_RATE)))
        self.window = config.WINDOW_SAMPLES
        self.states = StateDebouncer(settings.state_k)
        self.alerts = AlertDebouncer(settings.alert_n, settings.alert_m, settings.clear_n, settings.clear_ratio)
        self.notices: list[dict] = []  # events not tied to a window (the Worker reports them)
        # band levels of every window (its level_dbfs), and what changed when an alert is raised
        self.explainer = bands.AlertExplainer(bands.load_beside(settings.model), settings.alert_m)
        card = getattr(classifier, "card", None)
        self._normal_labels = set(card.get("normal_labels") or []) if isinstance(card, dict) else set()
        self._normal_state: str | None = None  # the last normal operating state reported: an alert's reference
        self._resampler: audio.StreamResampler | None = None
        self._stream_id = None
        self._rate = None
        self._silent_reported: tuple | None = None
        self._buf = np.zeros(0, dtype=np.float32)
        self._buf_start = 0  # absolute 16 kHz sample index of _buf[0]
        self._next_start = 0  # absolute index where the next window starts
        self._total = 0  # 16 kHz samples produced so far (over all streams)
        self._arrivals: deque = deque()  # (absolute end index of a block's output, its arrival time)

    def _restart(self, block: Block) -> None:
        """A new continuous segment (device reopened, maybe at another rate, or audio lost before this
        block): forget the partial window and the resampler's state."""
        if block.rate != self._rate or self._resampler is None:
            self._resampler = audio.StreamResampler(block.rate, config.SAMPLE_RATE)
            self._rate = block.rate
        else:
            self._resampler.reset()
        if block.stream_id != self._stream_id:
            self._silent_reported = None
        self._stream_id = block.stream_id
        self._buf = np.zeros(0, dtype=np.float32)
        self._buf_start = self._next_start = self._total
        self._arrivals.clear()
        self.explainer.reset()

    def _append(self, samples: np.ndarray, arrival: float) -> None:
        if samples.size:
            self._buf = np.concatenate((self._buf, samples)) if self._buf.size else samples.astype(np.float32)
            self._total += samples.size
            self._arrivals.append((self._total, arrival))

    def _mono(self, data: np.ndarray) -> np.ndarray:
        if self.channel == "mean" and self.skip_silent:
            alive = live_channels(np.asarray(data))
            if alive is not None:
                silent = tuple(sorted(set(range(data.shape[1])) - set(alive.tolist())))
                if silent != self._silent_reported:
                    self._silent_reported = silent
                    self.notices.append({"event": "silent_channels", "channels": list(silent),
                                         "averaging": alive.tolist(), "of": int(data.shape[1])})
                data = data[:, alive]
        return to_mono(data, self.channel)

    def feed(self, block: Block) -> list[WindowResult]:
        results = []
        if block.stream_id != self._stream_id or block.rate != self._rate:
            self._restart(block)
        elif block.gap:
            results = self.finish()  # the audio before the gap is complete: treat it like the end of a file
            self.stats.gap_restarts += 1
            self._restart(block)
        mono = self._mono(block.data)
        self._append(self._resampler.process(mono), block.arrival)
        return results + self._windows()

    def finish(self) -> list[WindowResult]:
        """End of a file (or of a continuous segment): flush the resampler's delay and analyse the last full
        windows."""
        if self._resampler is None:
            return []
        arrival = self._arrivals[-1][1] if self._arrivals else time.monotonic()
        self._append(self._resampler.process(np.zeros(0, dtype=np.float32), last=True), arrival)
        return self._windows()

    def _windows(self) -> list[WindowResult]:
        results = []
        while self._next_start + self.window <= self._total:
            offset = self._next_start - self._buf_start
            end = self._next_start + self.window
            while len(self._arrivals) > 1 and self._arrivals[0][0] < end:
                self._arrivals.popleft()
            results.append(self._analyse(self._buf[offset:offset + self.window], end, self._arrivals[0][1]))
            self._next_start += self.hop
        cut = min(self._next_start, self._total) - self._buf_start
        if cut > 0:
            self._buf = self._buf[cut:]
            self._buf_start += cut
        return results

    def _analyse(self, window: np.ndarray, end: int, arrival: float) -> WindowResult:
        clf = self.classifier
        t0 = time.perf_counter()
        prediction = clf.predict(window)
        inference_ms = (time.perf_counter() - t0) * 1000.0
        if self.settings.simulate_slow_ms > 0:
            time.sleep(self.settings.simulate_slow_ms / 1000.0)
        level = self.explainer.measure(window)
        probabilities = np.asarray(prediction.probabilities, dtype=np.float64).reshape(-1)
        best = int(np.argmax(probabilities))
        label = clf.labels[best]
        ratio = float(clf.anomaly_ratio(prediction.anomaly_scores)) / self.settings.threshold_scale
        decided = time.monotonic()
        stats = self.stats
        stats.windows += 1
        if stats.first_decision is None:
            stats.first_decision = decided
            stats.cpu_at_first_decision = time.process_time()
        stats.last_decision = decided
        stats.inference_ms.add(inference_ms)
        latency_ms = (decided - arrival) * 1000.0
        stats.latency_ms.add(latency_ms)
        t = end / config.SAMPLE_RATE
        events = []
        change = self.states.update(label)
        if change is not None:
            stats.state_changes += 1
            if change[1] in self._normal_labels:
                self._normal_state = change[1]
            events.append({"event": "state", "t": round(t, 3), "from": change[0], "to": change[1],
                           "confidence": round(float(probabilities[best]), 4)})
        alert = self.alerts.update(ratio)
        if alert is not None:
            if alert == "raised":
                stats.alerts += 1
            event = {"event": f"alert_{alert}", "t": round(t, 3), "anomaly": round(ratio, 4),
                     "exceeding": self.alerts.exceeding(), "of": self.alerts.m, "label": label,
                     "state": self.states.state}
            if alert == "raised":
                event["explanation"] = self.explainer.explain(self._machine(prediction.anomaly_scores),
                                                              self._normal_state)
            events.append(event)
        depth = self.queue_depth()
        stats.max_queue_depth = max(stats.max_queue_depth, depth)
        return WindowResult(t=t, label=label, confidence=float(probabilities[best]), anomaly=ratio,
                            anomalous=ratio >= 1.0, state=self.states.state, alert=self.alerts.active,
                            inference_ms=inference_ms, latency_ms=latency_ms, queue=depth,
                            drops=stats.dropped_blocks, overflows=stats.overflows,
                            gap_restarts=stats.gap_restarts, level_dbfs=level, events=events)

    def _machine(self, scores) -> str | None:
        """The machine whose threshold applies (the chosen one, else the closest), for the explanation."""
        clf = self.classifier
        machines = list(getattr(clf, "machines", []) or [])
        index = getattr(clf, "machine_index", None)
        if index is None and machines and hasattr(clf, "thresholds"):
            index = int(np.argmin(np.asarray(scores, np.float64).reshape(-1) / np.asarray(clf.thresholds)))
        return machines[index] if index is not None and index < len(machines) else None


class Worker(threading.Thread):
    """Takes blocks off the queue, analyses them, reports windows and their events."""

    def __init__(self, analyzer: Analyzer, bq: BlockQueue, reporter: "Reporter", stop: threading.Event):
        super().__init__(name="fanwatch-worker", daemon=True)
        self.analyzer = analyzer
        self.bq = bq
        self.reporter = reporter
        self.stop = stop
        self.done = threading.Event()  # the end-of-stream marker was processed
        self.error: BaseException | None = None

    def _emit(self, results: list[WindowResult]) -> None:
        notices, self.analyzer.notices = self.analyzer.notices, []
        for notice in notices:
            self.reporter.event(**notice)
        for result in results:
            self.reporter.window(result)
            for event in result.events:
                self.reporter.event(**event)

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                try:
                    item = self.bq.get(timeout=0.1)
                except queue.Empty:
                    continue
                if item is END_OF_STREAM:
                    self._emit(self.analyzer.finish())
                    self.done.set()
                    return
                self._emit(self.analyzer.feed(item))
        except BaseException as exc:  # noqa: BLE001 - handed to the supervisor
            self.error = exc
            self.stop.set()


# --------------------------------------------------------------------------------------------------
# output


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Reporter:
    """Console lines or JSON Lines on ``out``, and events (plus the summary) in an optional rotating log."""

    def __init__(self, out=None, json_lines: bool = False, quiet: bool = False, event_log: Path | None = None,
                 event_log_bytes: int = 1_000_000, event_log_backups: int = 5,
                 on_record: Callable[[dict], None] | None = None, on_closed: Callable[[], None] | None = None):
        self.out = out if out is not None else sys.stdout
        self.on_closed = on_closed
        self.json_lines = json_lines
        self.quiet = quiet
        self.on_record = on_record
        self.closed = False
        self._lock = threading.Lock()
        self._logger = None
        self._handler = None
        if event_log is not None:
            path = Path(event_log)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                handler = logging.handlers.RotatingFileHandler(path, maxBytes=event_log_bytes,
                                                               backupCount=event_log_backups, encoding="utf-8")
            except OSError as exc:
                raise FanwatchError(f"cannot write the event log {path}: {exc.strerror or exc}") from None
            handler.setFormatter(logging.Formatter("%(message)s"))
            logger = logging.getLogger(f"fanwatch.events.{id(self)}")
            logger.propagate = False
            logger.setLevel(logging.INFO)
            logger.addHandler(handler)
            self._logger, self._handler = logger, handler

    def _write(self, line: str) -> None:
        if self.closed:
            return
        try:
            self.out.write(line + "\n")
            self.out.flush()
        except (BrokenPipeError, ValueError):  # the reader went away (| head) or the stream was closed
            self.closed = True
            if self.out is sys.stdout:  # no second BrokenPipeError when Python flushes stdout at exit
                try:
                    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                except (OSError, ValueError):
                    pass
            if self.on_closed is not None:
                self.on_closed()

    def _record(self, record: dict, line: str | None, log: bool) -> None:
        with self._lock:
            if self.on_record is not None:
                self.on_record(record)
            if log and self._logger is not None:
                self._logger.info(json.dumps(record, separators=(",", ":")))
            if line is not None:
                self._write(json.dumps(record, separators=(",", ":")) if self.json_lines else line)

    def window(self, result: WindowResult) -> None:
        record = result.record()
        record["time"] = _now_iso()
        line = None
        if not self.quiet:
            clock = datetime.now().strftime("%H:%M:%S.%f")[:-3]
            flag = "HIGH" if result.anomalous else "ok  "
            alert = " ALERT" if result.alert else "      "
            extra = f"  drops {result.drops}" if result.drops else ""
            extra += f"  overflows {result.overflows}" if result.overflows else ""
            line = (f"{clock}  t={result.t:8.2f}s  {result.label:<16s} {result.confidence:4.2f}  "
                    f"anomaly {result.anomaly:5.2f} {flag}{alert}  {result.inference_ms:6.1f} ms  "
                    f"latency {result.latency_ms:5.0f} ms  queue {result.queue}{extra}")
        self._record(record, line if not self.quiet else None, log=False)

    def event(self, event: str, **fields) -> None:
        record = {"type": "event", "event": event, "time": _now_iso(), **fields}
        self._record(record, f"[{datetime.now().strftime('%H:%M:%S')}] {_describe(record)}", log=True)

    def summary(self, summary: dict) -> None:
        record = dict(summary, time=_now_iso())
        self._record(record, _describe_summary(record), log=True)

    def close(self) -> None:
        if self._handler is not None:
            self._logger.removeHandler(self._handler)
            self._handler.close()
            self._handler = None


def _describe(r: dict) -> str:
    e = r["event"]
    if e == "start":
        channel = r.get("channel")
        mix = "mean of the channels" if channel == "mean" else f"channel {channel}"
        return (f"fanwatch listening: {r.get('source')} | model {r.get('model')} ({r.get('runtime')}, "
                f"{r.get('threads')} thread(s)) | {mix} ({r.get('channel_from')}) | hop {r.get('hop_s')} s | "
                f"alert {r.get('alert')} | audio stays in memory, nothing is recorded or sent")
    if e == "state":
        return f"state: {r['from'] or '(start)'} -> {r['to']}  (t={r['t']:.1f} s, confidence {r['confidence']:.2f})"
    if e == "alert_raised":
        explanation = r.get("explanation") or {}
        return (f"ALERT RAISED: anomaly in {r['exceeding']} of the last {r['of']} windows "
                f"(score {r['anomaly']:.2f} x threshold, state {r['state']}, t={r['t']:.1f} s)"
                + (f"; what changed: {explanation['text']}" if explanation.get("text") else ""))
    if e == "alert_cleared":
        return f"alert cleared (score {r['anomaly']:.2f} x threshold, t={r['t']:.1f} s)"
    if e in ("device_opened", "device_reopened"):
        what = r.get("device") or r.get("file")
        verb = "opened" if e == "device_opened" else "reopened"
        return f"{verb} {what}: {r['rate']:.0f} Hz, {r['channels']} channel(s), {r.get('mix', 'mean')}" + (
            f", {r['pace']}" if "pace" in r else "")
    if e == "device_lost":
        return f"input lost: {r['reason']}; reopening in {r['retry_in']:.1f} s"
    if e == "device_error":
        return f"cannot open the input: {r['reason']}; retrying in {r['retry_in']:.1f} s"
    if e == "drops":
        return (f"audio lost: {r['dropped_blocks']} block(s) ({r['dropped_seconds']:.2f} s) dropped because the "
                f"queue was full, {r['overflows']} driver overflow(s) since the last report "
                f"(totals {r['total_dropped_blocks']} blocks, {r['total_overflows']} overflows)")
    if e == "silent_channels":
        return (f"channel(s) {', '.join(map(str, r['channels']))} of {r['of']} deliver digital silence (padding "
                f"added by the audio layer): the mean uses channel(s) {', '.join(map(str, r['averaging']))}; "
                "pass --channels N to open only the device's real channels")
    if e == "stop":
        return f"stopping: {r.get('reason')}"
    fields = {k: v for k, v in r.items() if k not in ("type", "event", "time")}
    return f"{e}: {fields}"


def _describe_summary(r: dict) -> str:
    def ms(key):
        value = r.get(key)
        return "-" if value is None else f"{value:.1f}"

    return (f"summary: {r['windows']} windows, {r['alerts']} alert(s), {r['state_changes']} state change(s), "
            f"{r['dropped_blocks']} dropped block(s) ({r['dropped_seconds']:.2f} s), {r['overflows']} overflow(s), "
            f"{r.get('gap_restarts', 0)} restart(s) after lost audio, {r['device_losses']} device loss(es); "
            f"inference median {ms('inference_ms_median')} ms, "
            f"p95 {ms('inference_ms_p95')} ms; latency median {ms('latency_ms_median')} ms, "
            f"p95 {ms('latency_ms_p95')} ms; CPU {r['cpu_percent']}%; peak RSS {r['peak_rss_mb']} MB; "
            f"uptime {r['uptime_s']:.1f} s ({r['reason']})")


# --------------------------------------------------------------------------------------------------
# the supervisor


def make_source(settings: LoopSettings, stats: LoopStats):
    if settings.wav is not None:
        return WavSource(settings.wav, settings.channel, settings.fast, settings.block_seconds, stats)
    return SoundDeviceSource(settings.device, settings.channel, settings.rate, settings.channels,
                             settings.block_seconds, settings.stall_seconds, stats)


def read_model_card(model: str | os.PathLike) -> dict:
    """The model card beside ``model``; "model not found" first when the model itself is missing."""
    model = Path(model)
    if not model.is_file():
        raise FanwatchError(f"model not found: {model} (train one with: python train.py)")
    return runtime.read_card(model)


def resolve_channel(channel: str | int | None, card: dict | None) -> tuple[str | int, str]:
    """(channel setting, where it came from): an explicit one wins, else the training setting the model card
    records (``card["settings"]["channel"]``), else ``"mean"`` (training's default)."""
    if channel is not None:
        return audio.parse_channel(channel), "command line"
    trained = ((card or {}).get("settings") or {}).get("channel") if isinstance(card, dict) else None
    if trained is None:
        return "mean", "default"
    try:
        return audio.parse_channel(trained), "model card"
    except FanwatchError:
        raise FanwatchError(f"the model card records an invalid channel setting {trained!r}; "
                            f"pass --channel ({audio.CHANNEL_HELP})") from None


def start_record(settings: LoopSettings, classifier, source_name: str, channel_from: str) -> dict:
    """What the start event carries: the settings that produced the run, and which model (path, SHA-256,
    labels, machines and thresholds as the card gives them)."""
    card = getattr(classifier, "card", None) or {}
    anomaly = card.get("anomaly") if isinstance(card.get("anomaly"), dict) else {}
    try:
        model_sha = config.sha256_file(settings.model)
    except OSError:
        model_sha = None
    return {
        "source": source_name, "model": str(settings.model), "model_sha256": model_sha,
        "runtime": getattr(classifier, "runtime", None), "threads": settings.threads,
        "labels": list(classifier.labels), "machines": list(getattr(classifier, "machines", []) or []),
        "thresholds": anomaly.get("thresholds"), "threshold_method": anomaly.get("method"),
        "hop_s": settings.hop, "alert": f"{settings.alert_n} of {settings.alert_m}",
        "threshold_scale": settings.threshold_scale, "state_k": settings.state_k,
        "queue_blocks": settings.queue_blocks, "channel": settings.channel, "channel_from": channel_from,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(settings).items()},
    }


def backoff_delays(initial: float, maximum: float):
    """1, 2, 4, ... seconds, capped at ``maximum`` (an endless generator)."""
    delay = initial
    while True:
        yield delay
        delay = min(delay * 2.0, maximum)


class _DropReporter:
    def __init__(self, stats: LoopStats, reporter: Reporter, interval: float):
        self.stats, self.reporter, self.interval = stats, reporter, interval
        self.blocks = self.seconds = self.overflows = 0
        self.last = -math.inf

    def check(self, force: bool = False) -> None:
        s = self.stats
        new_blocks, new_overflows = s.dropped_blocks - self.blocks, s.overflows - self.overflows
        if not (new_blocks or new_overflows):
            return
        now = time.monotonic()
        if not force and now - self.last < self.interval:
            return
        self.reporter.event("drops", dropped_blocks=new_blocks,
                            dropped_seconds=round(s.dropped_seconds - self.seconds, 3), overflows=new_overflows,
                            total_dropped_blocks=s.dropped_blocks, total_overflows=s.overflows)
        self.blocks, self.seconds, self.overflows, self.last = s.dropped_blocks, s.dropped_seconds, s.overflows, now


def run(settings: LoopSettings, out=None, classifier=None, source=None, stop: threading.Event | None = None,
        install_signals: bool = True, on_record: Callable[[dict], None] | None = None) -> dict:
    """Run the loop until the file ends, ``settings.duration`` passes, or ``stop`` is set (SIGINT/SIGTERM).

    ``classifier`` (a :class:`fanwatch.runtime.SoundClassifier` or anything with its interface) and
    ``source`` (an object with ``open(queue, stream_id) -> dict``, ``health() -> str | None``, ``close()``)
    are built from ``settings`` unless given. Returns the summary record (also reported).
    """
    settings.validate()
    stats = LoopStats()
    stop = stop or threading.Event()
    reason = {"why": None}
    previous = {}
    if install_signals and threading.current_thread() is threading.main_thread():
        # installed first, so that a SIGTERM while the model loads still ends in a summary
        def handler(signum, _frame):
            reason["why"] = reason["why"] or signal.Signals(signum).name
            stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)

    def restore_signals():
        for sig, old in previous.items():
            signal.signal(sig, old)

    def output_closed():
        reason["why"] = reason["why"] or "output closed"
        stop.set()

    settings = dataclasses.replace(settings)  # the channel gets resolved below; the caller's copy stays as is
    try:
        if source is None:
            source = make_source(settings, stats)  # a bad --wav file fails here, before the model loads
        elif hasattr(source, "stats"):
            source.stats = stats
    except BaseException:
        restore_signals()
        raise
    try:
        card = getattr(classifier, "card", None) if classifier is not None else read_model_card(settings.model)
        settings.channel, channel_from = resolve_channel(settings.channel, card)
        if hasattr(source, "prepare"):
            source.prepare(settings.channel)  # no such device / channel: one line, before the model loads
        if classifier is None:
            try:
                classifier = runtime.SoundClassifier(settings.model, settings.threads, settings.runtime,
                                                     settings.machine)
            except (KeyError, TypeError, IndexError) as exc:  # a card the runtime's checks let through
                raise FanwatchError(f"{Path(settings.model).with_name(runtime.CARD_NAME)}: malformed model "
                                    f"card ({type(exc).__name__}: {exc})") from None
        reporter = Reporter(out, settings.json_lines, settings.quiet, settings.event_log,
                            settings.event_log_bytes, settings.event_log_backups, on_record, output_closed)
    except BaseException:
        source.close()
        restore_signals()
        raise

    bq = BlockQueue(settings.queue_blocks, stats)
    analyzer = Analyzer(classifier, settings, stats, bq.depth)
    worker = Worker(analyzer, bq, reporter, stop)
    drops = _DropReporter(stats, reporter, settings.drop_report_seconds)
    source_name = (f"file {settings.wav}" if settings.wav is not None
                   else getattr(source, "describe", lambda: "input")())
    reporter.event("start", **start_record(settings, classifier, source_name, channel_from))
    worker.start()
    try:
        if not stop.is_set():
            reason["why"] = _supervise(settings, source, bq, worker, stop, reporter, stats, drops) or reason["why"]
        if worker.error is not None:
            exc = worker.error
            raise exc if isinstance(exc, FanwatchError) else FanwatchError(
                f"the analysis worker failed: {type(exc).__name__}: {exc}")
    except FanwatchError:
        reason["why"] = reason["why"] or "error"
        raise
    except Exception as exc:  # noqa: BLE001 - one line, not a traceback, for an operator reading logs
        reason["why"] = reason["why"] or "error"
        raise FanwatchError(f"the loop failed: {type(exc).__name__}: {exc}") from exc
    finally:
        stop.set()
        source.close()
        worker.join(timeout=5.0)
        drops.check(force=True)
        summary = stats.summary(reason["why"] or "stopped")
        reporter.summary(summary)
        reporter.close()
        restore_signals()
    return summary


def _supervise(settings, source, bq, worker, stop, reporter, stats, drops) -> str | None:
    """Open the source, watch it, reopen it with backoff when it goes away. Returns why it ended.

    The very first open failing with a :class:`DeviceConfigError` ends the run (raised): retrying a
    configuration that cannot work would only hide it. Once a stream has been opened, every failure is
    retried with backoff (an unplugged device may come back, even with another index)."""
    deadline = None if settings.duration is None else time.monotonic() + settings.duration
    delays = backoff_delays(settings.backoff_initial, settings.backoff_max)
    delay = next(delays)
    stream_id = 0
    opened_before = False

    def wait(seconds: float) -> bool:
        """Sleep while watching stop / deadline; True if the loop must end."""
        end = time.monotonic() + seconds
        while True:
            left = end - time.monotonic()
            if deadline is not None:
                left = min(left, deadline - time.monotonic())
            if left <= 0:
                return deadline is not None and time.monotonic() >= deadline
            if stop.wait(min(left, 0.2)):
                return True
            drops.check()

    while not stop.is_set():
        stream_id += 1
        try:
            info = source.open(bq, stream_id)
        except DeviceError as exc:
            if isinstance(exc, DeviceConfigError) and not opened_before:
                raise
            stats.device_errors += 1
            reporter.event("device_error", reason=str(exc), retry_in=delay)
            if wait(delay):
                return "duration reached" if deadline and time.monotonic() >= deadline else None
            delay = next(delays)
            continue
        reporter.event("device_reopened" if opened_before else "device_opened", **info)
        opened_before = True
        opened_at = time.monotonic()
        lost = None
        while not stop.is_set():
            if worker.error is not None:
                return None
            if worker.done.is_set():
                return "end of file"
            if deadline is not None and time.monotonic() >= deadline:
                return "duration reached"
            lost = source.health()
            if lost:
                break
            if time.monotonic() - opened_at > 10.0 and delay != settings.backoff_initial:
                delays = backoff_delays(settings.backoff_initial, settings.backoff_max)  # healthy again
                delay = next(delays)
            drops.check()
            stop.wait(0.1)
        if not lost:
            return None
        stats.device_losses += 1
        reporter.event("device_lost", reason=lost, retry_in=delay)  # before closing: a hung driver may
        source.close()  # keep PortAudio's abort waiting (bounded, see SoundDeviceSource.close)
        if wait(delay):
            return "duration reached" if deadline and time.monotonic() >= deadline else None
        delay = next(delays)
    return None
