"""Audio sources: a live capture device (PortAudio through sounddevice) or a replayed file, both putting
blocks at their native rate into the same :class:`~fanwatch.live.blocks.BlockQueue`.

Every source implements :class:`Source`. ``sounddevice`` is imported only when a live device is used;
``soundfile`` only if installed (otherwise :mod:`fanwatch.wavfile` decodes WAV files).
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Protocol

import numpy as np

from .. import audio, wavfile
from ..errors import BadAudioError, FanwatchError
from .blocks import END_OF_STREAM, Block, BlockQueue
from .settings import MAX_MEAN_CHANNELS, InputSettings, SupervisionSettings

_BLOCK_SECONDS = InputSettings.block_seconds
_STALL_SECONDS = SupervisionSettings.stall_seconds


class Source(Protocol):
    """What the supervisor needs from an input."""

    def describe(self) -> str:
        """A few words for the start event ("file x.wav", "input device 'USB'")."""

    def prepare(self, channel: str | int) -> None:
        """Take the resolved channel setting and check it before the model loads (one line if it cannot work)."""

    def open(self, bq: BlockQueue, stream_id: int) -> dict:
        """Start delivering blocks tagged ``stream_id``; returns what the device_opened event says."""

    def health(self) -> str | None:
        """None while delivering, else why the input is lost."""

    def close(self) -> None:
        """Stop delivering (idempotent)."""


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


def _sounddevice():
    try:
        import sounddevice
    except (ImportError, OSError) as exc:
        raise FanwatchError(
            f"live capture needs the sounddevice package and the PortAudio library ({exc}); "
            "install libportaudio2 (apt-get install libportaudio2) or replay a file with --wav"
        ) from None
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
        print(
            f"{mark}{index:3d}  {dev['name']}  ({api}; {dev['max_input_channels']} in, "
            f"default {dev['default_samplerate']:.0f} Hz)",
            file=out,
        )
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

    def __init__(
        self,
        device=None,
        channel: str | int | None = "mean",
        rate: float | None = None,
        channels: int | None = None,
        block_seconds: float = _BLOCK_SECONDS,
        stall_seconds: float = _STALL_SECONDS,
    ):
        self.device = parse_device(device)
        self.channel = "mean" if channel is None else channel
        self.rate = rate
        self.channels = channels
        self.block_seconds = block_seconds
        self.stall_seconds = stall_seconds
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
            raise DeviceConfigError(
                f"no {self.describe()} ({' '.join(str(exc).split())}); see python inference.py --list-devices"
            ) from None
        except sd.PortAudioError as exc:
            if isinstance(self.device, int):  # "Error querying device 99": no such index
                raise DeviceConfigError(
                    f"no {self.describe()} ({' '.join(str(exc).split())}); see python inference.py --list-devices"
                ) from None
            raise DeviceError(f"cannot query {self.describe()}: {exc}") from None
        available = int(info["max_input_channels"])
        if available < 1:
            raise DeviceConfigError(f"{info['name']} has no input channels")
        if self.channel == "mean":
            n_channels = self.channels or min(available, MAX_MEAN_CHANNELS)
            if n_channels > available:
                raise DeviceConfigError(
                    f"--channels {n_channels} requested but {info['name']} has {available} input channel(s)"
                )
        else:
            n_channels = max(self.channel + 1, self.channels or 0)
            if self.channel + 1 > available:
                raise DeviceConfigError(
                    f"channel {self.channel} requested but {info['name']} has {available} "
                    f'input channel(s) (valid: 0..{available - 1} or "mean")'
                )
            if n_channels > available:
                raise DeviceConfigError(
                    f"--channels {n_channels} requested but {info['name']} has {available} input channel(s)"
                )
        return info, n_channels

    def prepare(self, channel: str | int) -> None:
        """Take the resolved channel setting and check it against the device before the model loads:
        DeviceConfigError (one line, exit status 2) for a missing device or a channel it does not have."""
        self.channel = channel
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
                except Exception as exc:  # keep trying with the old enumeration
                    raise DeviceError(f"cannot re-initialise PortAudio: {exc}") from None
        info, n_channels = self._plan(sd)
        available = int(info["max_input_channels"])
        rate = float(self.rate or info["default_samplerate"])
        blocksize = max(1, int(round(rate * self.block_seconds)))
        stats = bq.stats
        self._finished = threading.Event()
        self._last_block = time.monotonic()

        def callback(indata, frames, time_info, status):  # PortAudio's thread: copy, queue, return
            now = time.monotonic()
            self._last_block = now
            overflow = bool(status.input_overflow)  # the driver lost audio before this block
            if overflow:
                stats.overflows += 1
            bq.offer(Block(indata.copy(), rate, stream_id, now, overflow))

        stream = None
        try:
            stream = sd.InputStream(
                device=info["index"],
                samplerate=rate,
                channels=n_channels,
                dtype="float32",
                blocksize=blocksize,
                callback=callback,
                finished_callback=self._finished.set,
            )
            stream.start()
        except (sd.PortAudioError, ValueError) as exc:
            if stream is not None:
                try:
                    stream.close()
                except Exception:  # the open already failed; report that
                    pass
            code = exc.args[1] if isinstance(exc, sd.PortAudioError) and len(exc.args) > 1 else None
            error = DeviceConfigError if isinstance(exc, ValueError) or code in _PA_CONFIG_ERRORS else DeviceError
            raise error(
                f"cannot open {info['name']} at {rate:.0f} Hz with {n_channels} channel(s): "
                f"{' '.join(str(exc.args[0] if exc.args else exc).split())}"
            ) from None
        self._stream = stream
        self._opened += 1
        self._stuck = False
        return {
            "device": info["name"],
            "index": int(info["index"]),
            "rate": rate,
            "channels": n_channels,
            "device_channels": available,
            "blocksize": blocksize,
            "mix": "mean" if self.channel == "mean" else f"channel {self.channel}",
        }

    def health(self) -> str | None:
        stream = self._stream
        if stream is None:
            return "input stream not open"
        try:
            active = stream.active
        except Exception as exc:  # PortAudio reports a broken stream as an error
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
            except Exception:  # a vanished device may fail any call
                pass
            try:
                stream.close()
            except Exception:  # idem
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


def open_audio_file(path: Path):
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


def check_file_channel(path, channel: str | int, n: int) -> None:
    """BadAudioError if a file with ``n`` channels does not have ``channel``."""
    if isinstance(channel, int) and channel >= n:
        raise BadAudioError(
            path, f'channel {channel} requested but the file has {n} channel(s) (valid: 0..{n - 1} or "mean")'
        )


class WavSource:
    """Replay a file through the same queue as a device: blocks at the file's native rate.

    Real-time pace: each block is queued when its last sample would have been captured, with ``offer``
    (drops counted, like the device callback). ``fast``: blocking puts, as fast as the worker takes them.
    An end-of-stream marker follows the last block. Blocks carry every channel of the file; the worker
    mixes them like training does (``"mean"`` averages all of them).
    """

    def __init__(
        self, path, channel: str | int | None = "mean", fast: bool = False, block_seconds: float = _BLOCK_SECONDS
    ):
        self.path = Path(path)
        self.fast = fast
        self.block_seconds = block_seconds
        self.reader = open_audio_file(self.path)
        self.rate = float(self.reader.rate)
        try:
            self.prepare("mean" if channel is None else channel)
        except BaseException:
            self.reader.close()
            raise
        self.error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def describe(self) -> str:
        return f"file {self.path}"

    def prepare(self, channel: str | int) -> None:
        """Take the resolved channel setting; BadAudioError if the file does not have that channel."""
        check_file_channel(self.path, channel, self.reader.channels)
        self.channel = channel

    def open(self, bq: BlockQueue, stream_id: int) -> dict:
        if self._thread is not None:
            raise DeviceError(f"{self.path} was already replayed")
        self._thread = threading.Thread(target=self._feed, args=(bq, stream_id), name="fanwatch-wav", daemon=True)
        self._thread.start()
        return {
            "file": str(self.path),
            "rate": self.rate,
            "channels": self.reader.channels,
            "mix": "mean" if self.channel == "mean" else f"channel {self.channel}",
            "seconds": round(self.reader.frames / self.rate, 3),
            "pace": "fast" if self.fast else "real-time",
        }

    def _feed(self, bq: BlockQueue, stream_id: int) -> None:
        blocksize = max(1, int(round(self.rate * self.block_seconds)))
        sent = 0
        start = time.monotonic()
        try:
            while not self._stop.is_set():
                data = self.reader.read(blocksize)
                if len(data) == 0:
                    break
                sent += len(data)  # NaN/inf blocks go on as they are: the analyzer reports them, never scores them
                if not self.fast:
                    delay = start + sent / self.rate - time.monotonic()
                    if delay > 0 and self._stop.wait(delay):
                        break
                block = Block(np.ascontiguousarray(data, dtype=np.float32), self.rate, stream_id, time.monotonic())
                if self.fast:
                    if not bq.put_wait(block, self._stop):
                        break
                else:
                    bq.offer(block)
            else:
                return
            bq.put_wait(END_OF_STREAM, self._stop)
        except BaseException as exc:  # reported by the supervisor (health)
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
        except Exception:  # closing a reader that failed: nothing left to do
            pass
