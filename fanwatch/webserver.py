"""The Pi's own face: a status page, a JSON API, server-sent events, a health check and Prometheus metrics.

``inference.py --http [ADDR:]PORT`` starts :class:`StatusServer` beside the loop. It is the standard
library's ``ThreadingHTTPServer`` (one thread per connection; the loop's worker never waits for it):
every request reads the :class:`fanwatch.status.StatusBoard` the worker publishes into, nothing else.

=================  ===========================================================================================
``/``              the status page (one HTML file, no external resource: works with the Pi offline)
``/api/status``    the board's snapshot as JSON (current window, alert, last hour's points, events, health)
``/events``        server-sent events: a ``status`` snapshot first, then ``window``, ``event`` and ``summary``
``/healthz``       200 while audio is analysed; 503 once none has been for ``stale_seconds``, or during an
                   input fault (audio arrives but cannot be judged: digital silence, a constant, NaN)
``/metrics``       Prometheus text format (prometheus-client), ``fanwatch_*`` metrics in base units
=================  ===========================================================================================

Bound to 127.0.0.1 unless an address is given; an address beyond loopback needs a token (``--http-token-file``),
then checked on every request except ``/healthz``: ``Authorization: Bearer TOKEN`` (Prometheus'
``authorization`` setting), or ``?token=TOKEN`` once in a browser, which sets an HttpOnly cookie and
redirects to the same page without the token in its address. Nothing here serves or keeps audio.

Runtime module: the standard library and prometheus-client.
"""

from __future__ import annotations

import hmac
import http.server
import ipaddress
import json
import os
import platform
import socket
import stat
import sys
import threading
import urllib.parse
from pathlib import Path

from . import __version__
from .errors import FanwatchError
from .status import StatusBoard

PAGE = Path(__file__).with_name("status_page.html")
TOKEN_COOKIE = "fanwatch_token"
MIN_TOKEN_CHARS = 16
MAX_SSE_CLIENTS = 32
KEEPALIVE_SECONDS = 15.0
SEND_TIMEOUT_SECONDS = 10.0  # a client that takes no data for this long is disconnected
DEFAULT_PORT = 8080


def parse_bind(text: str) -> tuple[str, int]:
    """``PORT``, ``ADDR:PORT`` or ``[IPv6]:PORT`` -> (address, port); the address defaults to 127.0.0.1."""
    text = str(text).strip()
    host, port = "127.0.0.1", text
    if text.startswith("["):
        close = text.find("]")
        if close < 0 or not text[close + 1 :].startswith(":"):
            raise FanwatchError(f"--http {text}: expected [IPV6]:PORT")
        host, port = text[1:close], text[close + 2 :]
    elif ":" in text:
        host, port = text.rsplit(":", 1)
        host = host or "0.0.0.0"
    try:
        number = int(port)
    except ValueError:
        raise FanwatchError(f"--http {text}: the port must be a number (PORT or ADDR:PORT)") from None
    if not 0 <= number <= 65535:
        raise FanwatchError(f"--http {text}: port {number} is out of range")
    return host, number


def check_bind(listen: str, token_file: str | os.PathLike | None) -> tuple[str, int]:
    """``--http`` and ``--http-token-file`` make sense together (one line otherwise): (address, port)."""
    host, port = parse_bind(listen)
    if not is_loopback(host) and token_file is None:
        raise FanwatchError(
            f"--http {listen} is reachable beyond this machine: give an access token with "
            "--http-token-file FILE (or bind to 127.0.0.1)"
        )
    return host, port


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost: treat as reachable from the network


def read_token(path: str | os.PathLike) -> str:
    """The access token in ``path`` (first line, surrounding space removed); one line on a problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise FanwatchError(
            f"--http-token-file {path}: cannot read it ({getattr(exc, 'strerror', None) or exc})"
        ) from None
    lines = text.strip().splitlines()
    token = lines[0].strip() if lines else ""
    if len(token) < MIN_TOKEN_CHARS or any(c.isspace() or not c.isprintable() for c in token):
        raise FanwatchError(
            f"--http-token-file {path}: the token must be one line of at least {MIN_TOKEN_CHARS} "
            'printable characters without spaces (e.g. python3 -c "import secrets; '
            'print(secrets.token_urlsafe(24))")'
        )
    return token


def token_file_warning(path: str | os.PathLike) -> str | None:
    try:
        mode = Path(path).stat().st_mode
    except OSError:
        return None
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        return f"note: {path} is readable by other users; chmod 600 it"
    return None


# --------------------------------------------------------------------------------------------------
# /metrics


class _Collector:
    """A prometheus-client collector that reads the board at scrape time."""

    def __init__(self, board: StatusBoard, server: StatusServer | None = None):
        self.board = board
        self.server = server

    def collect(self):
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
            InfoMetricFamily,
        )

        m = self.board.metrics()
        ident = m["identity"]
        yield InfoMetricFamily(
            "fanwatch_build",
            "fanwatch version, model and runtime of this process",
            value={
                "version": __version__,
                "python": platform.python_version(),
                "model_sha256": str(ident.get("model_sha256") or "")[:16],
                "runtime": str(ident.get("runtime") or ""),
            },
        )
        gauge = GaugeMetricFamily("fanwatch_start_time_seconds", "Unix time the monitor started")
        gauge.add_metric([], m["started_wall"])
        yield gauge
        c = m["counters"]
        for name, key, doc in (
            ("fanwatch_windows", "windows", "windows analysed"),
            ("fanwatch_alerts", "alerts", "anomaly alerts raised"),
            ("fanwatch_state_changes", "state_changes", "operating state changes reported"),
            ("fanwatch_device_losses", "device_losses", "times the input device was lost"),
            ("fanwatch_device_errors", "device_errors", "failed attempts to open the input device"),
            ("fanwatch_dropped_blocks", "dropped_blocks", "audio blocks dropped (queue full)"),
            ("fanwatch_dropped_audio_seconds", "dropped_seconds", "seconds of audio dropped (queue full)"),
            ("fanwatch_input_overflows", "overflows", "input overflows reported by the audio driver"),
            ("fanwatch_gap_restarts", "gap_restarts", "analysis restarts after lost audio"),
            ("fanwatch_input_faults", "input_faults", "input fault episodes (audio that cannot be judged)"),
        ):
            counter = CounterMetricFamily(name, doc)
            counter.add_metric([], c[key])
            yield counter
        for name, value, doc in (
            (
                "fanwatch_anomaly_ratio",
                m["anomaly"],
                "last window's anomaly score over its threshold (>= 1 is anomalous)",
            ),
            ("fanwatch_state_confidence", m["confidence"], "last window's class probability (0..1)"),
            ("fanwatch_audio_level_dbfs", m["level_dbfs"], "last window's RMS level, dB re full scale"),
            ("fanwatch_queue_blocks", m["queue"], "blocks waiting between capture and model"),
            ("fanwatch_last_window_timestamp_seconds", m["last_window_wall"], "Unix time of the last analysed window"),
        ):
            if value is not None:
                gauge = GaugeMetricFamily(name, doc)
                gauge.add_metric([], float(value))
                yield gauge
        gauge = GaugeMetricFamily("fanwatch_alert_active", "1 while an alert (of any kind) is raised")
        gauge.add_metric([], 1.0 if m["alert"] else 0.0)
        yield gauge
        gauge = GaugeMetricFamily(
            "fanwatch_input_fault",
            "1 during an input fault: audio arrives but cannot be judged (digital silence, a constant, NaN), "
            "so no state or alert is decided",
        )
        gauge.add_metric([], 1.0 if m["input_fault"] else 0.0)
        yield gauge
        gauge = GaugeMetricFamily("fanwatch_healthy", "1 while audio is being analysed (as /healthz)")
        gauge.add_metric([], 1.0 if m["healthy"] else 0.0)
        yield gauge
        labels = m["labels"]
        if labels:  # one series per class of the model card: a handful, fixed for the run
            gauge = GaugeMetricFamily("fanwatch_state", "1 for the current debounced operating state", labels=["state"])
            for label in labels:
                gauge.add_metric([label], 1.0 if m["state"] == label else 0.0)
            yield gauge
        for name, key, doc in (
            ("fanwatch_inference_seconds", "inference", "model inference time per window"),
            ("fanwatch_decision_latency_seconds", "latency", "time from a window's last audio block to its decision"),
        ):
            buckets, _count, total = m[key]
            hist = HistogramMetricFamily(name, doc)
            hist.add_metric([], buckets, total)
            yield hist
        if self.server is not None:
            gauge = GaugeMetricFamily("fanwatch_http_event_clients", "clients connected to /events")
            gauge.add_metric([], self.server.sse_clients)
            yield gauge


# --------------------------------------------------------------------------------------------------
# the server


def serve(settings, hop_seconds: float, err=None) -> StatusServer:
    """Start the server ``settings`` (:class:`fanwatch.live.settings.HttpSettings`) asks for, with a fresh
    board (``server.board``: pass it to the loop as a record sink); says where on ``err`` (stderr)."""
    host, port = check_bind(settings.listen, settings.token_file)
    token = read_token(settings.token_file) if settings.token_file is not None else None
    board = StatusBoard(hop_seconds, settings.stale_seconds)
    server = StatusServer(board, host, port, token).start()
    note = token_file_warning(settings.token_file) if token else None
    print(
        f"status page: {server.url}" + (" (token required)" if token else "") + (f"; {note}" if note else ""),
        file=err or sys.stderr,
        flush=True,
    )
    return server


class _HTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def handle_error(self, request, client_address) -> None:
        """One line on stderr instead of socketserver's traceback; the loop's console stays readable."""
        exc = sys.exc_info()[1]
        print(f"status page: error serving {client_address[0]}: {type(exc).__name__}: {exc}", file=sys.stderr)


class StatusServer:
    """Serve ``board`` on ``host:port`` from a background thread until :meth:`stop`."""

    def __init__(
        self,
        board: StatusBoard,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        token: str | None = None,
        max_sse_clients: int = MAX_SSE_CLIENTS,
    ):
        if not is_loopback(host) and not token:
            raise FanwatchError(
                f"--http {host}:{port} is reachable beyond this machine: give an access token "
                "with --http-token-file FILE (or bind to 127.0.0.1)"
            )
        from prometheus_client import CollectorRegistry

        self.board = board
        self.token = token
        self.max_sse_clients = max_sse_clients
        self.sse_clients = 0
        self._clients_lock = threading.Lock()
        self.closing = threading.Event()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(board, self))
        try:
            self.page = PAGE.read_bytes()
        except OSError as exc:
            raise FanwatchError(f"the status page {PAGE} is missing ({exc.strerror or exc})") from None
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server_class = type("_Server", (_HTTPServer,), {"address_family": family})
        handler = type("_BoundHandler", (_Handler,), {"app": self})
        try:
            self.httpd = server_class((host, port), handler)
        except OSError as exc:
            raise FanwatchError(f"--http: cannot listen on {host}:{port} ({exc.strerror or exc})") from None
        self.host = host
        self.port = int(self.httpd.server_address[1])
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def start(self) -> StatusServer:
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.5}, name="fanwatch-http", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self.closing.set()
        self.board.close()
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join(timeout=5.0)
        self.httpd.server_close()

    def __enter__(self) -> StatusServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def authorized(self, handler: _Handler, query: dict) -> tuple[bool, bool]:
        """(allowed, token came in the query string)."""
        if self.token is None:
            return True, False
        expected = self.token.encode()
        offered = []
        auth = handler.headers.get("Authorization", "")
        if auth[:7].lower() == "bearer ":
            offered.append(auth[7:].strip())
        for part in handler.headers.get("Cookie", "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == TOKEN_COOKIE:
                offered.append(value)
        in_query = "token" in query
        if in_query:
            offered.append(query["token"][0])
        return any(hmac.compare_digest(o.encode(), expected) for o in offered), in_query

    def sse_enter(self) -> bool:
        with self._clients_lock:
            if self.sse_clients >= self.max_sse_clients:
                return False
            self.sse_clients += 1
            return True

    def sse_leave(self) -> None:
        with self._clients_lock:
            self.sse_clients -= 1


class _Handler(http.server.BaseHTTPRequestHandler):
    app: StatusServer
    server_version = "fanwatch"
    sys_version = ""
    timeout = SEND_TIMEOUT_SECONDS

    def log_message(self, format, *args):
        pass

    def _send(self, status: int, body: bytes, content_type: str, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, data) -> None:
        self._send(status, json.dumps(data, separators=(",", ":")).encode(), "application/json")

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        path = url.path.rstrip("/") or "/"
        query = urllib.parse.parse_qs(url.query)
        try:
            if path == "/healthz":
                ok, reason, age = self.app.board.health()
                self._json(
                    200 if ok else 503,
                    {"healthy": ok, "reason": reason, "last_window_age_s": None if age is None else round(age, 2)},
                )
                return
            allowed, in_query = self.app.authorized(self, query)
            if not allowed:
                self._send(
                    401,
                    b"401: this fanwatch status page needs its access token: open /?token=TOKEN or "
                    b"send Authorization: Bearer TOKEN\n",
                    "text/plain; charset=utf-8",
                    {"WWW-Authenticate": 'Bearer realm="fanwatch"'},
                )
                return
            if path in ("/", "/index.html"):
                if in_query:  # keep the token out of the address bar and history: a cookie from now on
                    rest = urllib.parse.urlencode({k: v for k, v in query.items() if k != "token"}, doseq=True)
                    self._send(
                        303,
                        b"",
                        "text/plain",
                        {
                            "Location": url.path + (f"?{rest}" if rest else ""),
                            "Set-Cookie": f"{TOKEN_COOKIE}={self.app.token}; HttpOnly; SameSite=Strict; Path=/",
                        },
                    )
                    return
                self._send(
                    200,
                    self.app.page,
                    "text/html; charset=utf-8",
                    {
                        "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; style-src "
                        "'unsafe-inline'; connect-src 'self'; img-src 'self' data:; "
                        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
                    },
                )
            elif path == "/api/status":
                self._json(200, self.app.board.snapshot())
            elif path == "/events":
                self._events()
            elif path == "/metrics":
                from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

                self._send(200, generate_latest(self.app.registry), CONTENT_TYPE_LATEST)
            else:
                self._send(
                    404,
                    b"404: not found (try /, /api/status, /events, /healthz, /metrics)\n",
                    "text/plain; charset=utf-8",
                )
        except (TimeoutError, BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _events(self) -> None:
        app, board = self.app, self.app.board
        if not app.sse_enter():
            self._send(503, b"503: too many clients on /events\n", "text/plain; charset=utf-8", {"Retry-After": "30"})
            return
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Accel-Buffering", "no")
            self.end_headers()
            if self.command == "HEAD":
                return
            self.connection.settimeout(SEND_TIMEOUT_SECONDS)
            snapshot = board.snapshot()
            seq = snapshot["seq"]
            self._sse("status", snapshot, retry=3000)
            while not app.closing.is_set():
                seq, messages = board.messages_since(seq, KEEPALIVE_SECONDS)
                if app.closing.is_set():
                    break
                if messages is None:  # fell too far behind: start again from a snapshot
                    snapshot = board.snapshot()
                    seq = snapshot["seq"]
                    self._sse("status", snapshot)
                elif not messages:
                    self.wfile.write(b": keepalive\n\n")
                    self.wfile.flush()
                else:
                    for message in messages:
                        self._sse(message["type"], message, flush=False)
                    self._sse("live", board.live())  # counters, health, uptime: read here, not by the worker
        finally:
            app.sse_leave()
            self.close_connection = True

    def _sse(self, name: str, data: dict, retry: int | None = None, flush: bool = True) -> None:
        text = (
            (f"retry: {retry}\n" if retry else "")
            + f"event: {name}\ndata: "
            + json.dumps(data, separators=(",", ":"))
            + "\n\n"
        )
        self.wfile.write(text.encode())
        if flush:
            self.wfile.flush()
