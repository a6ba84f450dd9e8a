"""Liveness without a web server: a heartbeat file the loop touches, and a check command that reads it.

The loop's :class:`Heartbeat` sink rewrites one small file (``--heartbeat FILE``) with the time of the last
analysed window, at most every ``every`` seconds; under systemd it also pings the service watchdog
(``WATCHDOG=1`` on ``$NOTIFY_SOCKET``, when the unit sets ``WatchdogSec=``). Nothing is written while no
audio is analysed (a dead or unplugged microphone, a hung driver), so the file ages:

    python -m fanwatch.health [--heartbeat FILE] [--max-age SECONDS]

exits 0 when the last window is at most ``--max-age`` seconds old, else 1 with one line saying why. The
Docker image's ``HEALTHCHECK`` runs it. Standard library only (it runs every 30 s on a Pi).
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
    at most every ``every`` seconds. Errors are reported once and never reach the loop."""

    def __init__(self, path: str | os.PathLike | None, every: float = 5.0, log=None, environ=None):
        environ = os.environ if environ is None else environ
        self.path = Path(path) if path else None
        self.every = every
        self.windows = 0
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
        if record.get("type") != "window":
            return
        self.windows += 1
        now = time.monotonic()
        if now - self._last < self.every:
            return
        self._last = now
        try:
            if self.path is not None:
                tmp = self.path.with_name(self.path.name + ".tmp")
                tmp.write_text(
                    json.dumps(
                        {
                            "last_window": time.time(),
                            "time": record.get("time"),
                            "windows": self.windows,
                            "pid": os.getpid(),
                        }
                    )
                    + "\n"
                )
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
    """(healthy, one line) for the heartbeat file at ``path``."""
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
        last = float(data["last_window"])
    except (ValueError, KeyError, TypeError):
        last = path.stat().st_mtime
        data = {}
    age = now - last
    stamp = datetime.fromtimestamp(last, UTC).isoformat(timespec="seconds")
    if age > max_age:
        return False, (
            f"unhealthy: no audio analysed for {age:.0f} s (last window {stamp}; limit {max_age:g} s): "
            "microphone gone or the loop stuck"
        )
    return True, f"healthy: last window {age:.1f} s ago ({data.get('windows', '?')} windows)"


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
