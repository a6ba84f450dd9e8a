"""A virtual ALSA capture device for tests: real PortAudio, real ALSA, no sound card.

ALSA's ``file`` PCM plugin can read its capture samples from an ``infile``; with a ``null`` slave it needs
no hardware, and wrapped in a ``plug`` device PortAudio lists it like any other input. The ``null`` slave
has no clock, though: with a regular file as ``infile`` PortAudio's callback runs as fast as the CPU
allows (and, past the end of the file, repeats stale buffer contents), which is nothing like a
microphone -- a real-time loop with a bounded queue would drop almost everything. So the ``infile`` here
is a **named pipe** fed by a thread of the test process at the device's real-time pace: the plugin's
blocking ``read`` then paces PortAudio's callback thread the way a sound card's clock would. The feeder
writes one period (the loop's 100 ms block) per period into a 1 MiB pipe, so reads get whole periods
and the samples arrive unchanged. After the signal it feeds silence until stopped; ``hold`` makes the
device hang (nothing delivered, the pipe kept open), as a wedged USB driver would.

Observed with PortAudio 19.6 / alsa-lib 1.2.8: at stream start the plugin hands PortAudio one or two
extra periods (a repeat of the first period, or stale buffer contents) before the signal, so the signal
arrives intact but delayed by whole periods; tests allow for that shift. PortAudio probes the device when
it initialises, opening and closing the pipe; when the feeder sees that reader go (``EPIPE``) it starts
again from the beginning of the signal with the next reader.

ALSA reads its configuration once per process, from ``ALSA_CONFIG_PATH``: run the code under test in a
subprocess with :attr:`VirtualMic.env`. The configuration includes the system's ``alsa.conf`` (without
it alsa-lib aborts) and adds one PCM, :attr:`VirtualMic.device`.

A ``plug`` device converts channel counts, so PortAudio reports 128 input channels for it whatever the
signal has: channels beyond a multichannel signal's own come out as digital silence (alsa-lib's default
route policy copies channel i to channel i; only a mono signal is duplicated into every channel). For
tests of channel settings against a device that reports its real channel count, as a sound card's
``hw`` device does, :func:`fixed_channel_env` adds an ALSA ``multi`` PCM over ``null`` (it enumerates
with exactly the channels given; it is not meant to deliver a signal).

Usage::

    with VirtualMic(tmp_path, signal, 48000) as mic:
        proc = subprocess.Popen([..., "--device", mic.device], env=mic.env)
        mic.played.wait(timeout)      # the whole signal went through the device
        ...
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
import time
from pathlib import Path

import numpy as np

SYSTEM_ALSA_CONF = "/usr/share/alsa/alsa.conf"
DEFAULT_NAME = "fanwatch_virtual"
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


def write_config(directory: Path, infile: Path, rate: int, channels: int = 1, name: str = DEFAULT_NAME) -> Path:
    """An ALSA configuration with the system defaults plus one capture PCM ``name`` reading ``infile``
    (raw signed 16-bit little-endian, ``channels`` interleaved) at ``rate`` Hz."""
    path = Path(directory) / "asound.conf"
    include = f"<{SYSTEM_ALSA_CONF}>\n" if Path(SYSTEM_ALSA_CONF).is_file() else ""
    path.write_text(
        f"""{include}
pcm.{name} {{
    type plug
    slave {{
        pcm {{
            type file
            slave.pcm {{ type null }}
            file "/dev/null"
            infile "{infile}"
            format "raw"
        }}
        rate {int(rate)}
        format S16_LE
        channels {int(channels)}
    }}
    hint {{
        show on
        description "fanwatch test microphone ({int(rate)} Hz)"
    }}
}}
"""
    )
    return path


def fixed_channel_env(directory, channels: int, name: str = "fanwatch_fixed") -> dict:
    """An environment whose ALSA configuration adds a capture PCM ``name`` that PortAudio lists with
    exactly ``channels`` input channels (``multi`` over ``null``: for configuration checks only)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    include = f"<{SYSTEM_ALSA_CONF}>\n" if Path(SYSTEM_ALSA_CONF).is_file() else ""
    bindings = "\n".join(f"    bindings.{i} {{ slave a channel {i} }}" for i in range(int(channels)))
    path = directory / "asound.conf"
    path.write_text(
        f"""{include}
pcm.{name} {{
    type multi
    slaves.a {{ pcm {{ type null }} channels {int(channels)} }}
{bindings}
    hint {{
        show on
        description "fanwatch test device with {int(channels)} input channel(s)"
    }}
}}
"""
    )
    return dict(os.environ, ALSA_CONFIG_PATH=str(path))


def to_pcm16(signal: np.ndarray) -> np.ndarray:
    """float [-1, 1] -> int16 (what the device delivers; the test compares against ``from_pcm16``)."""
    x = np.asarray(signal, dtype=np.float64)
    return np.clip(np.round(x * 32768.0), -32768, 32767).astype("<i2")


def from_pcm16(pcm: np.ndarray) -> np.ndarray:
    return pcm.astype(np.float32) / np.float32(32768.0)


class VirtualMic:
    """A paced virtual capture device playing ``signal`` (float, [n] or [n, channels]) at ``rate`` Hz."""

    def __init__(self, directory, signal: np.ndarray, rate: int, name: str = DEFAULT_NAME, period_seconds: float = 0.1):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        pcm = to_pcm16(signal)
        self.channels = 1 if pcm.ndim == 1 else pcm.shape[1]
        self.pcm = pcm.reshape(len(pcm), self.channels)
        self.rate = int(rate)
        self.device = name
        self.period = max(1, int(round(rate * period_seconds)))
        self.fifo = self.directory / f"{name}.fifo"
        if self.fifo.exists():
            self.fifo.unlink()
        os.mkfifo(self.fifo)
        self.config = write_config(self.directory, self.fifo, self.rate, self.channels, name)
        self.env = dict(os.environ, ALSA_CONFIG_PATH=str(self.config))
        self.played = threading.Event()  # the whole signal has been handed to the device
        self.started_at: float | None = None  # monotonic time the signal's first sample was handed over
        self.connections = 0
        self.hold = threading.Event()  # set: stop delivering (the device hangs, the pipe stays open)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._feed, name="virtual-mic", daemon=True)

    @property
    def signal(self) -> np.ndarray:
        """What the device delivers, as float32 [n, channels]."""
        return from_pcm16(self.pcm)

    def __enter__(self) -> VirtualMic:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)

    def _feed(self) -> None:
        data = self.pcm.tobytes()
        step = self.period * self.channels * 2
        silence = bytes(step)
        fd = None
        try:
            while not self._stop.is_set():
                if self.hold.is_set():
                    self._stop.wait(0.01)
                    continue
                if fd is None:
                    try:
                        fd = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)  # ENXIO until a reader opens
                    except OSError as exc:
                        if exc.errno != errno.ENXIO:
                            raise
                        time.sleep(0.005)
                        continue
                    os.set_blocking(fd, True)
                    try:  # room for ~10 s of audio: a busy reader never finds a half-written period
                        fcntl.fcntl(fd, F_SETPIPE_SZ, 1 << 20)
                    except OSError:
                        pass
                    self.connections += 1
                    position, sent, t0 = 0, 0, time.monotonic()
                piece = data[position : position + step]
                if len(piece) < step:
                    piece += silence[: step - len(piece)]
                try:
                    os.write(fd, piece)
                except BrokenPipeError:  # PortAudio probing the device: start over with the next reader
                    os.close(fd)
                    fd = None
                    continue
                if position == 0:
                    self.started_at = time.monotonic()
                position += step
                if position >= len(data):
                    self.played.set()
                sent += 1
                delay = t0 + sent * self.period / self.rate - time.monotonic()
                if delay > 0:
                    self._stop.wait(delay)
        finally:
            if fd is not None:
                os.close(fd)
