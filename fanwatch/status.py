"""The live loop's published state: a record sink for the worker, snapshots for the web server.

:class:`StatusBoard` is passed to the loop as a record sink (``on_record``): every window, event and
summary record (the dicts of the JSON Lines output) comes in on the worker thread. Each update is a few
dict and deque operations under one short lock, and a wake-up of the server threads waiting for news;
no JSON is encoded and no I/O happens on the worker's side. The server threads read copies
(:meth:`snapshot`, :meth:`messages_since`, :meth:`metrics`), built under the same lock from data whose
size is fixed (the last hour of points, the last events, the last messages), so neither the number of
clients nor the run's length makes the board grow or the worker wait longer.

Alerts of both kinds (``unknown_anomaly``, ``known_fault``) may be active at once: the board keeps each
active one, and the alert is active while any is. An input fault (``input_fault`` / ``input_ok`` events:
audio that arrives but cannot be judged, so no window comes) is kept as the current fault; during one, the
worker's ``alive()`` calls (a block processed) tell a loop that runs from one that is stuck.

What it keeps is what the status page shows: decisions, scores, levels and counters. No audio, no
spectrum: nothing from which sound could be rebuilt.

Runtime module: standard library only.
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections import deque

TIMELINE_SECONDS = 3600.0
RECENT_EVENTS = 50
MESSAGES = 256  # SSE messages kept for clients that fall behind; older ones get a full snapshot instead
RECENT_WINDOWS = 120  # for the median inference time on the page
# Prometheus histogram buckets for the inference and decision latency, in seconds
SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# events shown in the page's list (others, e.g. "drops" or "start", only update counters)
LISTED_EVENTS = (
    "state",
    "alert_raised",
    "alert_cleared",
    "device_opened",
    "device_reopened",
    "device_lost",
    "device_error",
    "drops",
    "silent_channels",
    "input_fault",
    "input_ok",
    "stop",
)
# fields of the start record that say which model and which site calibration are running
IDENTITY_FIELDS = (
    "model",
    "model_sha256",
    "runtime",
    "threads",
    "labels",
    "machines",
    "thresholds",
    "threshold_method",
    "threshold_scale",
    "hop_s",
    "alert",
    "channel",
    "source",
)
CALIBRATION_FIELDS = ("site", "site_calibration", "calibration", "enrollment")  # "site": the start record's


class _Buckets:
    """A cumulative Prometheus histogram (fixed buckets, count, sum)."""

    def __init__(self, bounds=SECONDS_BUCKETS):
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.count = 0
        self.sum = 0.0

    def add(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, int]]:
        out, total = [], 0
        for bound, n in zip(self.bounds, self.counts[:-1], strict=True):
            total += n
            out.append((repr(float(bound)), total))
        out.append(("+Inf", self.count))
        return out


class StatusBoard:
    """Consumes the loop's records; publishes what the status page, the API and /metrics read."""

    def __init__(self, hop_seconds: float = 0.5, stale_seconds: float = 15.0, clock=time.monotonic, wall=time.time):
        self._clock, self._wall = clock, wall
        self.stale_seconds = float(stale_seconds)
        self._lock = threading.Lock()
        self._news = threading.Condition(self._lock)
        self.started = clock()
        self.started_wall = wall()
        n_points = int(math.ceil(TIMELINE_SECONDS / max(hop_seconds, 0.05))) + 16
        self._timeline: deque = deque(maxlen=n_points)  # (unix time, anomaly ratio, alert, level dBFS)
        self._events: deque = deque(maxlen=RECENT_EVENTS)
        self._messages: deque = deque(maxlen=MESSAGES)  # (seq, message dict)
        self._inference_recent: deque = deque(maxlen=RECENT_WINDOWS)
        self._inference = _Buckets()
        self._latency = _Buckets()
        self.seq = 0
        self.identity: dict = {}
        self.calibration = None
        self.input: dict = {}
        self.window: dict | None = None
        self.alert: dict = {"active": False, "since": None, "since_t": None, "kind": None, "kinds": [], "event": None}
        self._alerts: dict = {}  # kind -> its alert_raised event, for every active alert, in the order raised
        self.input_fault: dict | None = None  # the current input fault: reason, since (UTC), since_t
        self.last_block_at: float | None = None  # monotonic time the worker last processed a block
        self.counters = {
            "windows": 0,
            "alerts": 0,
            "state_changes": 0,
            "device_losses": 0,
            "device_errors": 0,
            "dropped_blocks": 0,
            "dropped_seconds": 0.0,
            "overflows": 0,
            "gap_restarts": 0,
            "input_faults": 0,
        }
        self.last_window_at: float | None = None  # monotonic time of the last analysed window
        self.summary: dict | None = None
        self.closed = False

    # ---------------------------------------------------------------------------------------------
    # the worker's side

    def __call__(self, record: dict) -> None:
        """The record sink: called on the loop's worker thread with every record; never raises."""
        try:
            kind = record.get("type")
            if kind == "window":
                self._window(record)
            elif kind == "event":
                self._event(record)
            elif kind == "summary":
                with self._news:
                    self.summary = dict(record)
                    self._publish({"type": "summary", "summary": self.summary})
        except Exception:
            pass

    def _publish(self, message: dict) -> None:
        """Called with the lock held: queue a message for the event stream and wake its readers."""
        self.seq += 1
        self._messages.append((self.seq, message))
        self._news.notify_all()

    def _window(self, r: dict) -> None:
        now, wall = self._clock(), self._wall()
        inference_s = float(r.get("inference_ms") or 0.0) / 1000.0
        latency_s = float(r.get("latency_ms") or 0.0) / 1000.0
        point = (round(wall, 3), r.get("anomaly"), bool(r.get("alert")), r.get("level_dbfs"))
        with self._news:
            self.window = dict(r)
            self.last_window_at = now
            c = self.counters
            c["windows"] += 1
            for key, field in (
                ("dropped_blocks", "drops"),
                ("overflows", "overflows"),
                ("gap_restarts", "gap_restarts"),
            ):
                if isinstance(r.get(field), int):
                    c[key] = max(c[key], r[field])
            self._timeline.append(point)
            self._inference_recent.append(inference_s * 1000.0)
            self._inference.add(inference_s)
            self._latency.add(latency_s)
            self._publish({"type": "window", "window": self.window, "point": point})

    def _event(self, r: dict) -> None:
        name = r.get("event")
        with self._news:
            c = self.counters
            if name == "start":
                self.identity = {k: r.get(k) for k in IDENTITY_FIELDS if k in r}
                self.calibration = next((r[k] for k in CALIBRATION_FIELDS if r.get(k) is not None), None)
            elif name in ("device_opened", "device_reopened"):
                self.input = {k: v for k, v in r.items() if k not in ("type", "event")}
            elif name == "state":
                c["state_changes"] += 1
            elif name == "alert_raised":
                c["alerts"] += 1
                self._alerts.pop(r.get("kind"), None)
                self._alerts[r.get("kind")] = dict(r)
                self._set_alert()
            elif name == "alert_cleared":
                if r.get("kind") is None and self._alerts:  # a record without its kind clears them all
                    raised = list(self._alerts.values())[-1]
                    self._alerts.clear()
                else:
                    raised = self._alerts.pop(r.get("kind"), None)
                if self._alerts:  # another kind is still active: so is the alert
                    self._set_alert()
                elif raised is not None:
                    self._set_alert([raised])
                    self.alert = dict(self.alert, active=False, kinds=[], cleared=r.get("time"))
            elif name == "input_fault":
                if self.input_fault is None:
                    c["input_faults"] += 1
                    self.input_fault = {"reason": r.get("reason"), "since": r.get("time"), "since_t": r.get("t")}
                else:  # another kind of unusable input within the same episode
                    self.input_fault = dict(self.input_fault, reason=r.get("reason"))
                self.input_fault["at"] = self._clock()
            elif name == "input_ok":
                self.input_fault = None
            elif name == "device_lost":
                c["device_losses"] += 1
            elif name == "device_error":
                c["device_errors"] += 1
            elif name == "drops":
                c["dropped_seconds"] = round(c["dropped_seconds"] + float(r.get("dropped_seconds") or 0.0), 3)
                c["dropped_blocks"] = max(c["dropped_blocks"], int(r.get("total_dropped_blocks") or 0))
                c["overflows"] = max(c["overflows"], int(r.get("total_overflows") or 0))
            if name in LISTED_EVENTS:
                self._events.append(dict(r))
            self._publish({"type": "event", "event": dict(r)})

    def _set_alert(self, raised: list | None = None) -> None:
        """``self.alert`` from the active alerts (lock held): active while any is; ``kind``, ``since`` and
        ``event`` are the latest raised one's (as before there were two kinds), ``kinds`` all of them."""
        raised = list(self._alerts.values()) if raised is None else raised
        latest = raised[-1]
        self.alert = {
            "active": True,
            "since": latest.get("time"),
            "since_t": latest.get("t"),
            "kind": latest.get("kind"),
            "kinds": [e.get("kind") for e in raised],
            "event": latest,
            "first_since": raised[0].get("time"),  # the alert (any kind) has been up since then
        }

    def alive(self) -> None:
        """The worker processed a block of audio (windows or not): called on its thread, never raises."""
        now = self._clock()
        with self._lock:
            self.last_block_at = now

    # ---------------------------------------------------------------------------------------------
    # the server's side (copies, built under the lock)

    def health(self) -> tuple[bool, str, float | None]:
        """(healthy, reason, seconds since the last analysed window): unhealthy when no audio has been
        analysed for ``stale_seconds`` (or none at all that long after the start), and during an input
        fault (the reason says it; once no block has been processed for ``stale_seconds`` either, it says
        that no audio is analysed, as for a stuck loop)."""
        with self._lock:
            return self._health_locked()

    def _live(self) -> dict:
        """The current state without the timeline (lock held)."""
        ok, reason, age = self._health_locked()
        recent = sorted(self._inference_recent)
        median = recent[len(recent) // 2] if recent else None
        return {
            "seq": self.seq,
            "now": round(self._wall(), 3),
            "started": round(self.started_wall, 3),
            "uptime_s": round(self._clock() - self.started, 1),
            "window": self.window,
            "alert": self.alert,
            "health": {
                "healthy": ok,
                "reason": reason,
                "last_window_age_s": None if age is None else round(age, 2),
                "stale_seconds": self.stale_seconds,
                "inference_ms_median": median,
                **self.counters,
            },
            "model": self.identity,
            "calibration": self.calibration,
            "input": self.input,
            "input_fault": self._fault_view(),
            "summary": self.summary,
        }

    def _fault_view(self) -> dict | None:
        """The current input fault for the page and the API (lock held), without the board's own clock."""
        if self.input_fault is None:
            return None
        return {k: v for k, v in self.input_fault.items() if k != "at"}

    def _health_locked(self) -> tuple[bool, str, float | None]:
        now = self._clock()
        fault = self.input_fault
        if fault is not None:
            age = None if self.last_window_at is None else now - self.last_window_at
            moments = [x for x in (self.last_window_at, self.last_block_at, fault["at"]) if x is not None]
            idle = now - max(moments)
            if idle > self.stale_seconds:  # not even the unusable audio comes: stuck, or the device gone
                return False, f"no audio analysed for {idle:.1f} s (input fault before: {fault['reason']})", age
            return False, f"input fault since {fault['since']}: {fault['reason']}", age
        if self.last_window_at is None:
            waited = now - self.started
            if waited > self.stale_seconds:
                return False, f"no audio analysed in the {waited:.0f} s since the start", None
            return True, "starting", None
        age = now - self.last_window_at
        if age > self.stale_seconds:
            return False, f"no audio analysed for {age:.1f} s", age
        return True, "ok", age

    def snapshot(self, timeline_seconds: float = TIMELINE_SECONDS) -> dict:
        """Everything the page shows: the live state, the last hour's points and the recent events."""
        with self._lock:
            out = self._live()
            cut = self._wall() - timeline_seconds
            out["timeline"] = [p for p in self._timeline if p[0] >= cut]
            out["events"] = list(self._events)
        out["timeline_fields"] = ["time", "anomaly", "alert", "level_dbfs"]
        return out

    def live(self) -> dict:
        with self._lock:
            return self._live()

    def messages_since(self, seq: int, timeout: float) -> tuple[int, list[dict] | None]:
        """(latest seq, the messages after ``seq``), waiting up to ``timeout`` for one; None instead of the
        list when ``seq`` is so old that its successors were dropped (the reader should resynchronise)."""
        with self._news:
            if self.seq == seq and not self.closed:
                self._news.wait(timeout)
            if self.seq == seq:
                return seq, []
            oldest = self._messages[0][0] if self._messages else self.seq + 1
            if seq + 1 < oldest:
                return self.seq, None
            return self.seq, [m for s, m in self._messages if s > seq]

    def close(self) -> None:
        """Wake every waiting reader (the server is shutting down)."""
        with self._news:
            self.closed = True
            self._news.notify_all()

    def metrics(self) -> dict:
        """The figures /metrics exports, copied under the lock."""
        with self._lock:
            w = self.window or {}
            return {
                "counters": dict(self.counters),
                "uptime_s": self._clock() - self.started,
                "started_wall": self.started_wall,
                "last_window_age_s": None if self.last_window_at is None else self._clock() - self.last_window_at,
                "last_window_wall": self._timeline[-1][0] if self._timeline else None,
                "anomaly": w.get("anomaly"),
                "confidence": w.get("confidence"),
                "state": w.get("state"),
                "label": w.get("label"),
                "level_dbfs": w.get("level_dbfs"),
                "queue": w.get("queue"),
                "alert": bool(self.alert.get("active")),
                "alert_kind": self.alert.get("kind") if self.alert.get("active") else None,
                "alert_kinds": list(self.alert.get("kinds") or []) if self.alert.get("active") else [],
                "input_fault": self._fault_view(),
                "labels": list(self.identity.get("labels") or []),
                "identity": dict(self.identity),
                "calibration": self.calibration,
                "inference": (self._inference.cumulative(), self._inference.count, self._inference.sum),
                "latency": (self._latency.cumulative(), self._latency.count, self._latency.sum),
                "healthy": self._health_locked()[0],
            }
