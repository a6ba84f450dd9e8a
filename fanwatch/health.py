"""Liveness without a web server: a heartbeat file the loop touches, and a check command that reads it.

The loop's :class:`Heartbeat` sink rewrites one small file (``--heartbeat FILE``) with the time of the last
analysed window, at most every ``every`` seconds; under systemd it also pings the service watchdog
(``WATCHDOG=1`` on ``$NOTIFY_SOCKET``, when the unit sets ``WatchdogSec=``). Nothing is written while no
audio arrives (a dead or unplugged microphone, a hung driver, a stuck loop), so the file ages.

During an *input fault* (digital silence, a constant, NaN: audio that arrives but cannot be judged, so no
window is analysed) the loop is alive and the audio path works: the worker calls :meth:`Heartbeat.alive`
after every block it processed, which keeps the beat (``last_beat``) and the watchdog going, so systemd
does not restart a service that a restart would not mend (a muted microphone). The file then carries
the fault (``input_fault``, ``input_fault_since``), and the check says it:

    python -m fanwatch.health [--heartbeat FILE] [--max-age SECONDS]

exits 0 when the loop beat at most ``--max-age`` seconds ago and the input is usable, else 1 with one line
saying why (no audio for too long, or the input fault and its reason). The Docker image's ``HEALTHCHECK``
runs it. Standard library only (it runs every 30 s on a Pi).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

HEARTBEAT_ENV = "FANWATCH_HEARTBEAT"
DEFAULT_MAX_AGE = 60.0


class Heartbeat:
    """A record sink: on window records, rewrite ``path`` (atomically) and ping systemd's watchdog,
    at most every ``every`` seconds; on ``input_fault`` / ``input_ok`` events at once (the file says the
    fault), and on :meth:`alive` (a block processed) while a fault lasts. Errors are reported once and
    never reach the loop."""

    def __init__(self, path: str | os.PathLike | None, every: float = 5.0, log=None, environ=None):
        environ = os.environ if environ is None else environ
        self.path = Path(path) if path else None
        self.every = every
        self.windows = 0
        self.fault: str | None = None  # the current input fault's reason, None while the input is usable
        self.fault_since: str | None = None  # when it began (the event's UTC time)
        self._last_window: float | None = None  # Unix time of the last analysed window
        self._window_time: str | None = None  # and its record's time
        self._last = -float("inf")
        self._log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self._failed = False
        self._notify = _notify_address(environ.get("NOTIFY_SOCKET")) if environ.get("WATCHDOG_USEC") else None
        if self.path is not None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.path.unlink(missing_ok=True)  # a file left by an earlier run must not look fresh
            except OSError as exc:
                from fanwatch.errors import FanwatchError

                raise FanwatchError(f"--heartbeat {self.path}: {exc.strerror or exc}") from None

    def __call__(self, record: dict) -> None:
        kind, event = record.get("type"), record.get("event")
        if kind == "window":
            self.windows += 1
            self._last_window, self._window_time = time.time(), record.get("time")
            now = time.monotonic()
            if now - self._last >= self.every:
                self._beat(now)
        elif kind == "event" and event == "input_fault":
            if self.fault is None:
                self.fault_since = record.get("time")
            self.fault = str(record.get("reason") or "unusable input")
            self._beat(time.monotonic())
        elif kind == "event" and event == "input_ok" and self.fault is not None:
            self.fault = self.fault_since = None
            self._beat(time.monotonic())
            self._last = -float("inf")  # the next window writes at once: the file's last window is fresh

    def alive(self) -> None:
        """The worker processed a block of audio. Outside a fault the windows beat; during one, this does
        (at most every ``every`` s): the loop is alive although it analyses nothing."""
        if self.fault is None:
            return
        now = time.monotonic()
        if now - self._last >= self.every:
            self._beat(now)

    def _beat(self, now: float) -> None:
        self._last = now
        try:
            if self.path is not None:
                tmp = self.path.with_name(self.path.name + ".tmp")
                data = {
                    "last_window": self._last_window,
                    "time": self._window_time,
                    "windows": self.windows,
                    "pid": os.getpid(),
                    "last_beat": time.time(),  # the loop processed audio (a window, or a block during a fault)
                    "input_fault": self.fault,
                    "input_fault_since": self.fault_since,
                }
                tmp.write_text(json.dumps(data) + "\n")
                os.replace(tmp, self.path)
            if self._notify is not None:
                _sd_notify(self._notify, b"WATCHDOG=1")
        except OSError as exc:
            if not self._failed:
                self._failed = True
                self._log(f"heartbeat: cannot write {self.path}: {exc.strerror or exc} (health checks will fail)")

    def close(self) -> None:
        pass


def _notify_address(value: str | None):
    if not value:
        return None
    return "\0" + value[1:] if value.startswith("@") else value


def _sd_notify(address: str, message: bytes) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        sock.sendall(message)


def check(path: str | os.PathLike, max_age: float, now: float | None = None) -> tuple[bool, str]:
    """(healthy, one line) for the heartbeat file at ``path``: unhealthy when the loop has not beaten for
    ``max_age`` seconds (no audio arrives, or the loop is stuck), or when it reports an input fault."""
    path = Path(path)
    now = time.time() if now is None else now
    try:
        text = path.read_text()
    except FileNotFoundError:
        return False, f"unhealthy: no audio analysed yet ({path} does not exist)"
    except OSError as exc:
        return False, f"unhealthy: cannot read {path}: {exc.strerror or exc}"
    try:
        data = json.loads(text)
        last_window = data.get("last_window")
        last_window = None if last_window is None else float(last_window)
        beat = data.get("last_beat", last_window)  # files of earlier versions: the last window only
        beat = float(beat) if beat is not None else None
    except (ValueError, KeyError, TypeError, AttributeError):
        beat = last_window = None
        data = {}
    if beat is None:
        beat = path.stat().st_mtime
    age = now - beat
    stamp = "none yet"
    if last_window is not None:
        stamp = datetime.fromtimestamp(last_window, UTC).isoformat(timespec="seconds")
    if age > max_age:
        return False, (
            f"unhealthy: no audio analysed for {age:.0f} s (last window {stamp}; limit {max_age:g} s): "
            "microphone gone or the loop stuck"
        )
    fault = data.get("input_fault")
    if fault:
        return False, (
            f"unhealthy: input fault since {data.get('input_fault_since') or '?'}: {fault} "
            f"(the monitor hears nothing it can judge; last window {stamp})"
        )
    return True, f"healthy: last window {now - (last_window or beat):.1f} s ago ({data.get('windows', '?')} windows)"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m fanwatch.health", description="Exit 0 if the fanwatch loop analysed audio recently, else 1."
    )
    p.add_argument(
        "--heartbeat",
        default=os.environ.get(HEARTBEAT_ENV),
        metavar="FILE",
        help=f"the loop's --heartbeat file (default ${HEARTBEAT_ENV})",
    )
    p.add_argument(
        "--max-age",
        type=float,
        default=DEFAULT_MAX_AGE,
        metavar="SECONDS",
        help=f"unhealthy when the last analysed window is older (default {DEFAULT_MAX_AGE:g})",
    )
    args = p.parse_args(argv)
    if not args.heartbeat:
        print(f"unhealthy: no heartbeat file given (--heartbeat or ${HEARTBEAT_ENV})")
        return 1
    ok, line = check(args.heartbeat, args.max_age)
    print(line)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
