"""Output of the live loop: every record (window, event, summary) goes to the record sinks, then as a readable
line or JSON Lines to the console, events and summaries also to an optional rotating event log.

A record sink is any ``callable(record: dict)``: MQTT, a web status page, a test. Records are a contract
(``type``, ``event``, ``t``, ``alert``, ``anomaly``, ...): fields may be added, never renamed. A sink may also
have an ``alive()`` method: the worker calls it (through :meth:`Reporter.alive`) after every block of audio it
processed, windows or not, so that liveness (the heartbeat, the watchdog, ``/healthz``) can tell a loop that
runs through an input fault from one that is stuck or gets no audio.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import sys
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from ..errors import FanwatchError
from ..scorer import channel_label
from .analyzer import WindowResult
from .settings import OutputSettings

RecordSink = Callable[[dict], None]


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Reporter:
    """Console lines or JSON Lines on ``out``, and events (plus the summary) in an optional rotating log."""

    def __init__(
        self,
        out=None,
        settings: OutputSettings | None = None,
        sinks: Sequence[RecordSink] = (),
        on_closed: Callable[[], None] | None = None,
    ):
        settings = settings or OutputSettings()
        self.out = out if out is not None else sys.stdout
        self.on_closed = on_closed
        self.json_lines = settings.json_lines
        self.quiet = settings.quiet
        event_log = settings.event_log
        self.sinks = list(sinks)
        self._alive = [hook for hook in (getattr(sink, "alive", None) for sink in self.sinks) if callable(hook)]
        self.closed = False
        self._lock = threading.Lock()
        self._logger = None
        self._handler = None
        if event_log is not None:
            path = Path(event_log)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                handler = logging.handlers.RotatingFileHandler(
                    path, maxBytes=settings.event_log_bytes, backupCount=settings.event_log_backups, encoding="utf-8"
                )
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
            for sink in self.sinks:
                sink(record)
            if log and self._logger is not None:
                self._logger.info(json.dumps(record, separators=(",", ":")))
            if line is not None:
                self._write(json.dumps(record, separators=(",", ":")) if self.json_lines else line)

    def alive(self) -> None:
        """A block of audio was processed (the worker, after each block): the sinks' ``alive()`` hooks."""
        if self._alive:
            with self._lock:
                for hook in self._alive:
                    try:
                        hook()
                    except Exception:  # a sink's liveness never stops the audio loop
                        pass

    def window(self, result: WindowResult) -> None:
        record = result.record()
        record["time"] = _now_iso()
        line = None
        if not self.quiet:
            clock = datetime.now().strftime("%H:%M:%S.%f")[:-3]
            flag = "HIGH" if result.anomalous else "ok  "
            alert = " ALERT" if result.alert else "      "
            if "known_fault" in result.alert_kinds:
                alert += " (known fault)"
            evidence = f"evidence {result.evidence:5.2f}  " if result.evidence is not None else ""
            extra = f"  drops {result.drops}" if result.drops else ""
            extra += f"  overflows {result.overflows}" if result.overflows else ""
            extra += "  (unknown machine: pooled reference)" if result.machine < 0 else ""
            line = (
                f"{clock}  t={result.t:8.2f}s  {result.label:<16s} {result.confidence:4.2f}  "
                f"anomaly {result.anomaly:5.2f} {flag} {evidence}{alert}  {result.inference_ms:6.1f} ms  "
                f"latency {result.latency_ms:5.0f} ms  queue {result.queue}{extra}"
            )
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
        site = r.get("site")
        where = (
            f"site calibration applied ({site.get('seconds') or 0:.0f} s enrolled {site.get('created', '')}; "
            "--no-site ignores it)" + ("; known-fault alerts off at this site" if site.get("known_faults_off") else "")
            if site
            else "no site calibration"
        )
        return (
            f"fanwatch listening: {r.get('source')} | model {r.get('model')} ({r.get('runtime')}, "
            f"{r.get('threads')} thread(s)) | {mix} ({r.get('channel_from')}) | hop {r.get('hop_s')} s | "
            f"alert {r.get('alert')} | {where} | audio stays in memory, nothing is recorded or sent"
            + (
                f" | UNKNOWN MACHINE {r.get('machine_id') or '(none given)'}: scored against the "
                f"{(r.get('scoring') or {}).get('scored_as')}"
                if r.get("unknown_machine")
                else ""
            )
        )
    if e == "site_refused":
        return (
            f"SITE CALIBRATION NOT APPLIED: {r['reason']}; monitoring with the model's own calibration "
            "(enroll again to adapt it to this site)"
        )
    if e == "state":
        return f"state: {r['from'] or '(start)'} -> {r['to']}  (t={r['t']:.1f} s, confidence {r['confidence']:.2f})"
    if e == "alert_raised" and r.get("kind") == "known_fault":
        return (
            f"ALERT RAISED (known fault): {r.get('class')} (fault probability {r.get('fault_probability', 0):.2f}, "
            f"score {r['anomaly']:.2f} x threshold, state {r['state']}, t={r['t']:.1f} s)"
        )
    if e == "alert_raised":
        explanation = r.get("explanation") or {}
        if r.get("evidence") is not None and r.get("evidence_from") not in (None, "score"):  # a side channel's
            why = (
                f"the {channel_label(r['evidence_from'])} channel's anomaly evidence reached its alert level "
                f"({r['evidence']:.2f} x)"
            )
        elif r.get("evidence") is not None:  # the evidence rule: windows above the reference add up
            why = (
                f"anomaly evidence reached the alert level ({r['evidence']:.2f} x; {r['exceeding']} of the last "
                f"{r['of']} windows above the per-window threshold)"
            )
        else:
            why = f"anomaly in {r['exceeding']} of the last {r['of']} windows"
        return (
            f"ALERT RAISED (unknown anomaly): {why} (score {r['anomaly']:.2f} x threshold, state {r['state']}, "
            f"t={r['t']:.1f} s)" + (f"; what changed: {explanation['text']}" if explanation.get("text") else "")
        )
    if e == "alert_cleared":
        what = f"known fault {r.get('class')}" if r.get("kind") == "known_fault" else "anomaly"
        return f"alert cleared ({what}; score {r['anomaly']:.2f} x threshold, t={r['t']:.1f} s)"
    if e in ("device_opened", "device_reopened"):
        what = r.get("device") or r.get("file")
        verb = "opened" if e == "device_opened" else "reopened"
        return f"{verb} {what}: {r['rate']:.0f} Hz, {r['channels']} channel(s), {r.get('mix', 'mean')}" + (
            f", {r['pace']}" if "pace" in r else ""
        )
    if e == "device_lost":
        return f"input lost: {r['reason']}; reopening in {r['retry_in']:.1f} s"
    if e == "device_error":
        return f"cannot open the input: {r['reason']}; retrying in {r['retry_in']:.1f} s"
    if e == "drops":
        return (
            f"audio lost: {r['dropped_blocks']} block(s) ({r['dropped_seconds']:.2f} s) dropped because the "
            f"queue was full, {r['overflows']} driver overflow(s) since the last report "
            f"(totals {r['total_dropped_blocks']} blocks, {r['total_overflows']} overflows)"
        )
    if e == "input_fault":
        return (
            f"INPUT FAULT (the monitor hears nothing it can judge, not a machine state): {r['reason']} "
            f"(t={r['t']:.1f} s); no state or alert until the input is usable again"
        )
    if e == "input_ok":
        return f"input usable again (t={r['t']:.1f} s)"
    if e == "silent_channels":
        return (
            f"channel(s) {', '.join(map(str, r['channels']))} of {r['of']} deliver digital silence (padding "
            f"added by the audio layer): the mean uses channel(s) {', '.join(map(str, r['averaging']))}; "
            "pass --channels N to open only the device's real channels"
        )
    fields = {k: v for k, v in r.items() if k not in ("type", "event", "time")}
    return f"{e}: {fields}"


def _describe_summary(r: dict) -> str:
    def ms(key):
        value = r.get(key)
        return "-" if value is None else f"{value:.1f}"

    return (
        f"summary: {r['windows']} windows, {r['alerts']} alert(s), {r['state_changes']} state change(s), "
        f"{r['dropped_blocks']} dropped block(s) ({r['dropped_seconds']:.2f} s), {r['overflows']} overflow(s), "
        f"{r.get('gap_restarts', 0)} restart(s) after lost audio, {r['device_losses']} device loss(es), "
        f"{r.get('input_faults', 0)} input fault(s) ({r.get('input_fault_seconds', 0.0):.1f} s unusable); "
        f"inference median {ms('inference_ms_median')} ms, "
        f"p95 {ms('inference_ms_p95')} ms; latency median {ms('latency_ms_median')} ms, "
        f"p95 {ms('latency_ms_p95')} ms; CPU {r['cpu_percent']}%; peak RSS {r['peak_rss_mb']} MB; "
        f"uptime {r['uptime_s']:.1f} s ({r['reason']})"
    )
