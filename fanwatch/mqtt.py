"""Publish the live loop's decisions to an MQTT broker, with Home Assistant discovery.

:class:`MqttPublisher` is a *record sink*: the loop calls it with every record it reports (window, event and
summary dicts, the same as the JSON Lines output). It never blocks the caller: a record is turned into at
most two small messages and appended to a bounded in-memory outbox; one thread of its own
(``fanwatch-mqtt``) owns the paho client, connects, reconnects with capped backoff and publishes.

Topics (``<topic>`` is ``--mqtt-topic``, ``<device>`` the device name made topic-safe):

* ``<topic>/<device>/status``: ``online`` / ``offline``, retained, QoS 1; ``offline`` is also the last will,
  so the broker says it when the process dies or the network goes.
* ``<topic>/<device>/state``: retained JSON (operating state, confidence, anomaly ratio, alert active and
  kind(s), the current input fault, updated at, model SHA-256, diagnostics), published when the state,
  the alert or the input fault changes and at most every ``state_interval`` seconds otherwise. Both alert
  kinds may be active at once: ``alert`` is true while any is, ``alert_kinds`` lists them, ``alert_kind``
  is the latest raised of them. ``input_fault`` is the reason while the input cannot be judged (no window
  comes then, so the state says it at once on ``input_fault`` and ``input_ok``), else null.
* ``<topic>/<device>/events``: every event record the loop emits (and the run's summary), JSON, QoS 1, not
  retained.
* ``homeassistant/...`` discovery configs (retained), sent on every connect and whenever Home Assistant
  announces ``online`` on ``homeassistant/status``.

While the broker is unreachable, messages wait in the outbox (at most ``queue_max``). When it is full, the
oldest state update goes first, then the oldest other event; alerts go only when nothing else is left.
What was dropped is counted, printed once and published as an ``mqtt_dropped`` event when the broker is
back. Messages leave the outbox in order; a QoS 1 message handed to paho stays with paho until the broker
acknowledges it (paho sends it again after a reconnect), so delivery is at least once, in order.

Every message is QoS 1. Runtime module: the standard library and paho-mqtt (imported when a publisher is
made, so the loop without ``--mqtt`` does not need it).
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import ssl
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from fanwatch import __version__
from fanwatch.errors import FanwatchError

PASSWORD_ENV = "FANWATCH_MQTT_PASSWORD"
DEFAULT_TOPIC = "fanwatch"
DISCOVERY_PREFIX = "homeassistant"
DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
ALERT_EVENTS = ("alert_raised", "alert_cleared")
MAX_INFLIGHT = 10  # QoS 1 messages handed to paho and not yet acknowledged; the rest waits in the outbox


def default_device_name() -> str:
    return socket.gethostname() or "fanwatch"


def slug(name: str) -> str:
    """A name safe in topics, client ids and Home Assistant ids: letters, digits, ``-`` and ``_``."""
    cleaned = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_")
    return cleaned or "fanwatch"


@dataclass(frozen=True)
class MqttSettings:
    """Where and how to publish; ``inference.py`` fills it from ``--mqtt*`` (see :func:`settings_from`)."""

    host: str
    port: int = 1883
    tls: bool = False
    user: str | None = None
    password: str | None = field(default=None, repr=False)  # from the environment or a file, never the CLI
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    insecure: bool = False  # TLS without verifying the broker's certificate
    topic: str = DEFAULT_TOPIC
    device_name: str = field(default_factory=default_device_name)
    discovery: bool = True
    discovery_prefix: str = DISCOVERY_PREFIX
    state_interval: float = 5.0  # seconds: state published at most this often unless something changes
    queue_max: int = 1000  # messages kept while the broker is unreachable
    keepalive: int = 30
    retry_max: float = 30.0  # reconnect backoff: 1, 2, 4 ... s, at most this
    connect_timeout: float = 5.0

    @property
    def device_id(self) -> str:
        return slug(self.device_name)

    @property
    def base(self) -> str:
        return f"{self.topic}/{self.device_id}"

    @property
    def client_id(self) -> str:
        return f"fanwatch-{self.device_id}"

    @property
    def address(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def parse_url(url: str) -> tuple[str, int, bool, str | None]:
    """``mqtt://host[:port]`` or ``mqtts://host[:port]`` (a user name may come before ``@``) ->
    (host, port, tls, user). A password in the URL is refused: it would show in ``ps`` and in logs."""
    text = url.strip()
    if "://" not in text:
        text = "mqtt://" + text
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise FanwatchError(f"--mqtt {url!r}: use mqtt://host[:port] or mqtts://host[:port]")
    if parts.password is not None:
        raise FanwatchError(
            f"--mqtt: no password in the URL (it would be visible to every user of the "
            f"machine); set {PASSWORD_ENV} or use --mqtt-password-file"
        )
    try:
        port = parts.port or DEFAULT_PORTS[scheme]
    except ValueError:
        raise FanwatchError(f"--mqtt {url!r}: the port must be a number from 1 to 65535") from None
    if not parts.hostname:
        raise FanwatchError(f"--mqtt {url!r}: no host name")
    if parts.path not in ("", "/"):
        raise FanwatchError(f"--mqtt {url!r}: no path allowed; the topic is set with --mqtt-topic")
    return parts.hostname, port, scheme == "mqtts", parts.username


def read_password(password_file: str | os.PathLike | None, environ=None) -> str | None:
    """The broker password: ``--mqtt-password-file`` (first line) wins, else ``$FANWATCH_MQTT_PASSWORD``."""
    environ = os.environ if environ is None else environ
    if password_file:
        path = Path(password_file)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise FanwatchError(f"--mqtt-password-file {path}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise FanwatchError(f"--mqtt-password-file {path}: not a text file") from None
        lines = text.splitlines()
        return (lines[0] if lines else "") or None  # an empty file: no password (compose's placeholder)
    return environ.get(PASSWORD_ENV) or None


def settings_from(
    url: str,
    *,
    user: str | None = None,
    password_file=None,
    ca=None,
    cert=None,
    key=None,
    insecure: bool = False,
    topic: str = DEFAULT_TOPIC,
    device_name: str | None = None,
    discovery: bool = True,
    discovery_prefix: str = DISCOVERY_PREFIX,
    state_interval: float = 5.0,
    queue_max: int = 1000,
    retry_max: float = 30.0,
    environ=None,
) -> MqttSettings:
    """Check the ``--mqtt*`` options and build the settings; every problem is one :class:`FanwatchError` line."""
    host, port, tls, url_user = parse_url(url)
    if user and url_user and user != url_user:
        raise FanwatchError("--mqtt-user and the user in the --mqtt URL differ: give it once")
    if (ca or cert or key or insecure) and not tls:
        raise FanwatchError("--mqtt-ca / --mqtt-cert / --mqtt-key / --mqtt-insecure need an mqtts:// URL")
    if bool(cert) != bool(key):
        raise FanwatchError("--mqtt-cert and --mqtt-key go together (client certificate and its key)")
    for option, path in (("--mqtt-ca", ca), ("--mqtt-cert", cert), ("--mqtt-key", key)):
        if path is not None and not Path(path).is_file():
            raise FanwatchError(f"{option} {path}: no such file")
    topic = topic.strip("/")
    if not topic or any(c in topic for c in "+#\0"):
        raise FanwatchError(f"--mqtt-topic {topic!r}: a topic prefix without wildcards (+ #), e.g. fanwatch")
    if not discovery_prefix or any(c in discovery_prefix for c in "+#/\0"):
        raise FanwatchError(f"--discovery-prefix {discovery_prefix!r}: one topic level, e.g. homeassistant")
    if not (state_interval > 0 and math.isfinite(state_interval)):
        raise FanwatchError(f"--mqtt-state-interval must be a positive number of seconds, got {state_interval}")
    if queue_max < 10:
        raise FanwatchError(f"--mqtt-queue must be at least 10 messages, got {queue_max}")
    if not retry_max >= 1:
        raise FanwatchError(f"--mqtt-retry-max must be at least 1 second, got {retry_max}")
    return MqttSettings(
        host=host,
        port=port,
        tls=tls,
        user=user or url_user,
        password=read_password(password_file, environ),
        ca=Path(ca) if ca else None,
        cert=Path(cert) if cert else None,
        key=Path(key) if key else None,
        insecure=insecure,
        topic=topic,
        device_name=device_name or default_device_name(),
        discovery=discovery,
        discovery_prefix=discovery_prefix,
        state_interval=state_interval,
        queue_max=queue_max,
        retry_max=retry_max,
    )


# --------------------------------------------------------------------------------------------------
# Home Assistant discovery


def discovery_messages(settings: MqttSettings, start: dict | None) -> list[tuple[str, dict]]:
    """(topic, config) of every entity: alert and input problem (binary sensors, problem), operating state
    (enum sensor with the model's labels as options), anomaly ratio, and diagnostics. ``start`` is the loop's
    start record (labels, model SHA-256); without one the state sensor has no options yet."""
    start = start or {}
    dev = settings.device_id
    base = settings.base
    state_topic = f"{base}/state"
    labels = [str(label) for label in start.get("labels") or []]
    sha = start.get("model_sha256")
    device = {
        "identifiers": [f"fanwatch_{dev}"],
        "name": settings.device_name,
        "manufacturer": "fanwatch",
        "model": "fanwatch sound monitor",
        "sw_version": __version__,
    }
    if sha:
        device["hw_version"] = f"model {str(sha)[:12]}"
    common = {
        "availability_topic": f"{base}/status",
        "payload_available": "online",
        "payload_not_available": "offline",
        "state_topic": state_topic,
        "device": device,
        "origin": {"name": "fanwatch", "sw_version": __version__},
        "qos": 1,
    }
    entities = [
        (
            "binary_sensor",
            "alert",
            {
                "name": "Anomaly alert",
                "device_class": "problem",
                "value_template": "{{ 'ON' if value_json.alert else 'OFF' }}",
                "payload_on": "ON",
                "payload_off": "OFF",
                "json_attributes_topic": state_topic,
                "json_attributes_template": "{{ {'kind': value_json.alert_kind, 'anomaly': value_json.anomaly,"
                " 'state': value_json.state, 'kinds': value_json.alert_kinds} | tojson }}",
            },
        ),
        (
            "binary_sensor",
            "input_problem",
            {
                "name": "Input problem",
                "device_class": "problem",
                "value_template": "{{ 'ON' if value_json.input_fault else 'OFF' }}",
                "payload_on": "ON",
                "payload_off": "OFF",
                "json_attributes_topic": state_topic,
                "json_attributes_template": "{{ {'reason': value_json.input_fault, 'since':"
                " value_json.input_fault_since} | tojson }}",
                "icon": "mdi:microphone-off",
            },
        ),
        (
            "sensor",
            "state",
            {
                "name": "Operating state",
                "device_class": "enum",
                "options": labels,
                "value_template": "{{ value_json.state }}",
                "icon": "mdi:fan",
            },
        ),
        (
            "sensor",
            "anomaly",
            {
                "name": "Anomaly ratio",
                "state_class": "measurement",
                "suggested_display_precision": 2,
                "value_template": "{{ value_json.anomaly }}",
                "icon": "mdi:waveform",
            },
        ),
        (
            "sensor",
            "inference_ms",
            {
                "name": "Inference time",
                "device_class": "duration",
                "unit_of_measurement": "ms",
                "state_class": "measurement",
                "entity_category": "diagnostic",
                "value_template": "{{ value_json.inference_ms }}",
            },
        ),
        (
            "sensor",
            "dropped_audio",
            {
                "name": "Dropped audio blocks",
                "state_class": "total_increasing",
                "entity_category": "diagnostic",
                "value_template": "{{ value_json.dropped_blocks }}",
                "icon": "mdi:microphone-off",
            },
        ),
        (
            "sensor",
            "device_losses",
            {
                "name": "Microphone losses",
                "state_class": "total_increasing",
                "entity_category": "diagnostic",
                "value_template": "{{ value_json.device_losses }}",
                "icon": "mdi:microphone-question",
            },
        ),
        (
            "sensor",
            "mqtt_dropped",
            {
                "name": "MQTT messages dropped",
                "state_class": "total_increasing",
                "entity_category": "diagnostic",
                "value_template": "{{ value_json.mqtt_dropped }}",
                "icon": "mdi:message-alert",
            },
        ),
    ]
    out = []
    for component, object_id, specific in entities:
        config = dict(common, **specific, unique_id=f"fanwatch_{dev}_{object_id}")
        out.append((f"{settings.discovery_prefix}/{component}/{dev}/{object_id}/config", config))
    return out


# --------------------------------------------------------------------------------------------------
# the publisher


@dataclass(slots=True)
class Message:
    topic: str
    payload: str
    retain: bool
    kind: str  # "alert" | "event" | "state": what goes first when the outbox is full (state, then event)


def _dumps(record: dict) -> str:
    return json.dumps(record, separators=(",", ":"), default=str)


def _console(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def describe_error(exc: BaseException) -> str:
    """One line for a failed connection attempt."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"the broker's TLS certificate does not verify ({exc.verify_message or exc.reason})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed ({exc.reason or exc})"
    if isinstance(exc, socket.gaierror):
        return f"unknown host ({exc.strerror or exc})"
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return "no answer (timed out)"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {exc}"


class MqttPublisher:
    """A record sink that publishes to MQTT from its own thread. Call it with records; :meth:`close` at the end.

    ``log`` gets the publisher's console lines (connection problems, drops); default: stderr.
    """

    def __init__(self, settings: MqttSettings, log: Callable[[str], None] | None = None):
        import paho.mqtt.client as paho  # only with --mqtt

        self.settings = settings
        self._paho = paho
        self._log = log or _console
        self._cond = threading.Condition()
        self._outbox: deque[Message] = deque()
        self.dropped = {"state": 0, "event": 0, "alert": 0}
        self._dropped_reported = 0
        self._start: dict | None = None
        self._state: dict = {}
        self._state_key = None
        self._state_dirty = False  # the latest window's state is newer than the last one queued
        self._state_at = -math.inf
        self._device_losses = 0
        self._alert_kinds: list[str] = []  # the active alert kinds, in the order raised
        self._fault: str | None = None  # the current input fault's reason
        self._fault_since: str | None = None
        self._broken = False  # a record the sink could not handle (reported once)
        self._stop_at: float | None = None  # monotonic deadline to deliver the outbox by, once closing
        self._connected = False
        self._discovery_due = False
        self._inflight: set[int] = set()
        self._last_problem: str | None = None
        self.connections = 0
        self.undelivered = 0
        self._client = self._make_client()
        self._thread = threading.Thread(target=self._run, name="fanwatch-mqtt", daemon=True)
        self._thread.start()

    # ---- paho setup ----------------------------------------------------------------------------
    def _make_client(self):
        s, paho = self.settings, self._paho
        client = paho.Client(
            paho.CallbackAPIVersion.VERSION2, client_id=s.client_id, clean_session=True, protocol=paho.MQTTv311
        )
        client.connect_timeout = s.connect_timeout
        if s.user:
            client.username_pw_set(s.user, s.password)
        if s.tls:
            try:
                context = ssl.create_default_context(cafile=str(s.ca) if s.ca else None)
                if s.cert:
                    context.load_cert_chain(str(s.cert), str(s.key))
            except (OSError, ssl.SSLError) as exc:
                raise FanwatchError(
                    f"MQTT TLS files (--mqtt-ca/--mqtt-cert/--mqtt-key): {describe_error(exc)}"
                ) from None
            if s.insecure:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            client.tls_set_context(context)
        client.will_set(f"{s.base}/status", "offline", qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        return client

    # ---- the sink (the loop's worker thread): never blocks, never raises --------------------------
    def __call__(self, record: dict) -> None:
        try:
            with self._cond:
                self._take(record)
                self._cond.notify()
        except Exception as exc:
            if not self._broken:
                self._broken = True
                self._log(f"mqtt: could not publish a record ({type(exc).__name__}: {exc}); carrying on")

    def _take(self, record: dict) -> None:
        kind = record.get("type")
        base = self.settings.base
        if kind == "window":
            self._window(record)
            return
        if kind == "event":
            event = record.get("event")
            if event == "start":
                self._start = record
                self._discovery_due = True
            elif event == "device_lost":
                self._device_losses += 1
            elif event in ALERT_EVENTS:
                kind = record.get("kind")
                if event == "alert_raised":
                    self._alert_kinds = [k for k in self._alert_kinds if k != kind] + [kind]
                elif kind is None:  # a record without its kind clears them all
                    self._alert_kinds = []
                else:
                    self._alert_kinds = [k for k in self._alert_kinds if k != kind]
            elif event == "input_fault":
                if self._fault is None:
                    self._fault_since = record.get("time")
                self._fault = record.get("reason") or "unusable input"
            elif event == "input_ok":
                self._fault = self._fault_since = None
            self._put(Message(f"{base}/events", _dumps(record), False, "alert" if event in ALERT_EVENTS else "event"))
            if event in ALERT_EVENTS and self._state:
                # the window before this event already says alert on/off and its kinds; the event confirms them
                self._alerts_into_state()
                self._state_changed()
            elif event in ("input_fault", "input_ok"):
                if not self._state:  # a fault before any window: say so all the same
                    self._state = self._blank_state()
                self._state.update(input_fault=self._fault, input_fault_since=self._fault_since)
                self._state_changed()
        elif kind == "summary":
            self._put(Message(f"{base}/events", _dumps(record), False, "event"))

    def _alerts_into_state(self) -> None:
        """``alert``, ``alert_kind`` (the latest raised) and ``alert_kinds`` of the state from the active kinds."""
        kinds = list(self._alert_kinds)
        self._state.update(alert=bool(kinds), alert_kind=kinds[-1] if kinds else None, alert_kinds=kinds)

    def _state_key_now(self) -> tuple:
        s = self._state
        return (s.get("state"), s.get("alert"), s.get("alert_kind"), tuple(s.get("alert_kinds") or ()), self._fault)

    def _state_changed(self) -> None:
        """Publish the state at once if what it says changed (not only the figures)."""
        key = self._state_key_now()
        if key != self._state_key:
            self._state_key, self._state_at = key, time.monotonic()
            self._put_state()

    def _blank_state(self) -> dict:
        start = self._start or {}
        return {
            "state": None,
            "label": None,
            "confidence": None,
            "anomaly": None,
            "alert": bool(self._alert_kinds),
            "alert_kind": self._alert_kinds[-1] if self._alert_kinds else None,
            "alert_kinds": list(self._alert_kinds),
            "updated_at": None,
            "t": None,
            "model_sha256": start.get("model_sha256"),
            "inference_ms": None,
            "dropped_blocks": None,
            "overflows": None,
            "device_losses": self._device_losses,
            "mqtt_dropped": sum(self.dropped.values()),
            "input_fault": self._fault,
            "input_fault_since": self._fault_since,
        }

    def _window(self, r: dict) -> None:
        start = self._start or {}
        alert = bool(r.get("alert"))
        if "alert_kinds" in r:  # the window says which alerts are active after it (both kinds may be)
            kinds = [str(k) for k in r.get("alert_kinds") or []]
            order = {k: i for i, k in enumerate(self._alert_kinds)}
            self._alert_kinds = sorted(kinds, key=lambda k: order.get(k, len(order)))  # the order they were raised
            alert = alert or bool(kinds)
        kinds = list(self._alert_kinds) if alert else []
        self._state = {
            "state": r.get("state"),
            "label": r.get("label"),
            "confidence": r.get("confidence"),
            "anomaly": r.get("anomaly"),
            "alert": alert,
            "alert_kind": kinds[-1] if kinds else None,
            "alert_kinds": kinds,
            "updated_at": r.get("time"),
            "t": r.get("t"),
            "model_sha256": start.get("model_sha256"),
            "inference_ms": r.get("inference_ms"),
            "dropped_blocks": r.get("drops"),
            "overflows": r.get("overflows"),
            "device_losses": self._device_losses,
            "mqtt_dropped": sum(self.dropped.values()),
            "input_fault": self._fault,
            "input_fault_since": self._fault_since,
        }
        self._state_dirty = True
        key = self._state_key_now()
        now = time.monotonic()
        if key != self._state_key or now - self._state_at >= self.settings.state_interval:
            self._state_key, self._state_at = key, now
            self._put_state()

    def _put_state(self) -> None:
        self._state_dirty = False
        self._put(Message(f"{self.settings.base}/state", _dumps(self._state), True, "state"))

    def _put(self, message: Message) -> None:
        self._make_room()
        self._outbox.append(message)

    def _make_room(self) -> None:
        box = self._outbox
        if len(box) >= self.settings.queue_max:
            for victim_kind in ("state", "event", "alert"):
                index = next((i for i, m in enumerate(box) if m.kind == victim_kind), None)
                if index is not None:
                    del box[index]
                    self.dropped[victim_kind] += 1
                    break

    def pending(self) -> int:
        with self._cond:
            return len(self._outbox)

    @property
    def connected(self) -> bool:
        return self._connected

    # ---- paho callbacks (in the publisher thread, inside client.loop) ------------------------------
    def _on_connect(self, client, _userdata, _flags, reason_code, _properties) -> None:
        if reason_code.is_failure:
            self._problem(
                f"the broker refused the connection: {reason_code}"
                + (" (check --mqtt-user and the password)" if reason_code.value in (4, 5, 134, 135) else "")
            )
            self._refused = True
            return
        self._connected = True
        self.connections += 1
        if self._last_problem is not None or self.connections == 1:
            self._log(
                f"mqtt: connected to {self.settings.address} as {self.settings.client_id}"
                + (f", publishing under {self.settings.base}/" if self.connections == 1 else "")
            )
        self._last_problem = None
        self._announce = True

    def _on_message(self, _client, _userdata, message) -> None:
        if message.topic == f"{self.settings.discovery_prefix}/status" and message.payload.strip() == b"online":
            self._discovery_due = True  # Home Assistant (re)started: it forgot non-retained configs

    def _on_publish(self, _client, _userdata, mid, _reason_code, _properties) -> None:
        self._inflight.discard(mid)

    def _problem(self, text: str) -> None:
        if text != self._last_problem:
            self._last_problem = text
            self._log(
                f"mqtt: {self.settings.address}: {text}; retrying (backoff up to "
                f"{self.settings.retry_max:g} s), decisions are queued meanwhile"
            )

    # ---- the publisher thread -----------------------------------------------------------------------
    def _publish(self, topic: str, payload: str, retain: bool) -> bool:
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        if info.rc == self._paho.MQTT_ERR_QUEUE_SIZE:
            return False
        self._inflight.add(info.mid)  # paho holds it now, and sends it again after a reconnect
        return True

    def _pump(self) -> None:
        s = self.settings
        if self._announce:
            self._announce = False
            self._publish(f"{s.base}/status", "online", True)
            if s.discovery:
                self._client.subscribe(f"{s.discovery_prefix}/status", qos=1)
                self._discovery_due = True
            with self._cond:
                if self._state and not any(m.kind == "state" for m in self._outbox):
                    self._put_state()  # the broker may have lost the retained one (restarted without persistence)
        report = None
        with self._cond:  # held for list operations only: the loop's thread waits on it in __call__
            discovery = s.discovery and self._discovery_due and self._start is not None
            if discovery:
                self._discovery_due = False
                start = self._start
            if sum(self.dropped.values()) > self._dropped_reported:
                self._make_room()  # first, so that the report counts what its own place cost
            dropped = sum(self.dropped.values())
            if dropped > self._dropped_reported:
                new = dropped - self._dropped_reported
                self._dropped_reported = dropped
                report = (
                    f"mqtt: the outbox was full (broker unreachable too long): {new} message(s) dropped, "
                    f"{self.dropped['state']} state update(s), {self.dropped['event']} event(s), "
                    f"{self.dropped['alert']} alert(s) in all"
                )
                self._outbox.append(
                    Message(
                        f"{s.base}/events",
                        _dumps(
                            {
                                "type": "event",
                                "event": "mqtt_dropped",
                                "time": _utc_now(),
                                "dropped": new,
                                "total_dropped_state": self.dropped["state"],
                                "total_dropped_events": self.dropped["event"],
                                "total_dropped_alerts": self.dropped["alert"],
                            }
                        ),
                        False,
                        "event",
                    )
                )
        if report:
            self._log(report)
        if discovery:
            for topic, config in discovery_messages(s, start):
                self._publish(topic, _dumps(config), True)
        while len(self._inflight) < MAX_INFLIGHT:
            with self._cond:
                if not self._outbox:
                    return
                message = self._outbox[0]
            if not self._publish(message.topic, message.payload, message.retain):
                return
            with self._cond:
                if self._outbox and self._outbox[0] is message:
                    self._outbox.popleft()
                else:  # dropped by _put meanwhile (full outbox), already counted
                    pass

    def _wait(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        with self._cond:
            while self._stop_at is None and time.monotonic() < end:
                self._cond.wait(min(0.2, max(end - time.monotonic(), 0.0)))

    def _run(self) -> None:
        paho = self._paho
        s = self.settings
        delay = 1.0
        socket_up = False
        self._refused = False
        self._announce = False
        while True:
            if self._stop_at is not None and (
                not socket_up or time.monotonic() >= self._stop_at or (not self._outbox and not self._inflight)
            ):
                break
            if not socket_up:
                if self._stop_at is not None:
                    break
                try:
                    self._refused = False
                    self._client.connect(s.host, s.port, s.keepalive)
                    socket_up = True
                except Exception as exc:
                    self._problem(f"cannot connect: {describe_error(exc)}")
                    self._wait(delay)
                    delay = min(delay * 2.0, s.retry_max)
                    continue
            try:
                rc = self._client.loop(timeout=0.1)
            except Exception as exc:
                rc, error = None, exc
            else:
                error = None
            if self._refused:
                self._client.disconnect()
                socket_up = self._connected = False
                self._wait(s.retry_max)  # a refused login does not mend in a second
                continue
            if rc != paho.MQTT_ERR_SUCCESS:
                socket_up = False
                was = self._connected
                self._connected = False
                reason = describe_error(error) if error else paho.error_string(rc)
                self._problem(("connection lost" if was else "cannot connect") + f": {reason}")
                if self._stop_at is None:
                    self._wait(delay)
                    delay = min(delay * 2.0, s.retry_max)
                continue
            if self._connected:
                delay = 1.0
                self._pump()
        self._finish(socket_up)

    def _finish(self, socket_up: bool) -> None:
        if socket_up and self._connected:
            mid = self._client.publish(f"{self.settings.base}/status", "offline", qos=1, retain=True).mid
            self._inflight.add(mid)
            end = time.monotonic() + 1.0
            while mid in self._inflight and time.monotonic() < end:
                if self._client.loop(timeout=0.1) != self._paho.MQTT_ERR_SUCCESS:
                    break
            self._client.disconnect()
            self._client.loop(timeout=0.1)
        self._connected = False
        with self._cond:
            self.undelivered = len(self._outbox) + len(self._inflight)
            alerts = sum(m.kind == "alert" for m in self._outbox)
        if self.undelivered:
            self._log(
                f"mqtt: {self.undelivered} message(s) not delivered at exit ({alerts} alert(s) among those "
                f"waiting) to {self.settings.address}: {self._last_problem or 'not connected'}"
            )

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what waits (up to ``timeout`` s while connected), say ``offline``, disconnect."""
        with self._cond:
            if self._state_dirty:
                self._put_state()  # the retained state ends as the last window left it
            if self._stop_at is None:
                self._stop_at = time.monotonic() + timeout
            self._cond.notify_all()
        self._thread.join(timeout + 3.0)


def _utc_now() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
