"""The live loop: a source puts blocks into one bounded queue, a worker thread drives the
:class:`~fanwatch.live.analyzer.Analyzer`, and the supervisor (:func:`run`, in the main thread) opens the
source, watches it and reopens it with capped exponential backoff.

A slow model can never stall the audio driver: a block that does not fit into the queue is dropped and
counted, and the first block after lost audio carries a ``gap`` flag (the analysis then restarts, so no
window is cut from audio that was not continuous). A vanished device (a USB microphone unplugged: PortAudio
error, stream finished or aborted, or no audio for a while) is reported and reopened; a configuration that
cannot work ends the run with one line when the very first open fails. SIGINT / SIGTERM end the loop with a
summary. Audio never leaves the process: only the decisions are output (see :mod:`fanwatch.live.report`).
"""

from __future__ import annotations

import dataclasses
import math
import queue
import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from .. import audio, bands, config, runtime, site
from ..card import ModelCard, card_path, read_card, resolve_channel
from ..errors import FanwatchError
from ..scorer import channel_label
from .analyzer import Analyzer, Classifier, WindowResult
from .blocks import END_OF_STREAM, BlockQueue
from .decisions import window_counts
from .report import RecordSink, Reporter
from .settings import LoopSettings, check_hop
from .sources import DeviceConfigError, DeviceError, SoundDeviceSource, Source, WavSource
from .stats import LoopStats


class Worker(threading.Thread):
    """Takes blocks off the queue, analyses them, reports windows and their events."""

    def __init__(
        self,
        analyzer: Analyzer,
        bq: BlockQueue,
        reporter: Reporter,
        stop: threading.Event,
        stats: LoopStats | None = None,
        simulate_slow_ms: float = 0.0,
    ):
        super().__init__(name="fanwatch-worker", daemon=True)
        self.analyzer = analyzer
        self.bq = bq
        self.stats = stats or bq.stats
        self.slow = simulate_slow_ms / 1000.0
        self.reporter = reporter
        self.stop = stop
        self.done = threading.Event()  # the end-of-stream marker was processed
        self.error: BaseException | None = None

    def _emit(self, results: list[WindowResult]) -> None:
        notices, self.analyzer.notices = self.analyzer.notices, []
        self.stats.input_faults = self.analyzer.input_faults
        self.stats.input_fault_seconds = self.analyzer.fault_seconds
        for notice in notices:
            self.reporter.event(**notice)
        for result in results:
            self._count(result)
            self.reporter.window(result)
            for event in result.events:
                self.reporter.event(**event)

    def _count(self, result: WindowResult) -> None:
        """The loop's share of a window: statistics, and the queue and loss figures its record carries."""
        if self.slow > 0:  # testing aid: a slower model
            time.sleep(self.slow)
            result.latency_ms += self.slow * 1000.0
        stats, decided = self.stats, time.monotonic()
        stats.windows += 1
        if stats.first_decision is None:
            stats.first_decision = decided
            stats.cpu_at_first_decision = time.process_time()
        stats.last_decision = decided
        stats.inference_ms.add(result.inference_ms)
        stats.latency_ms.add(result.latency_ms)
        stats.gap_restarts = self.analyzer.gap_restarts
        for event in result.events:
            stats.state_changes += event["event"] == "state"
            stats.alerts += event["event"] == "alert_raised"
        result.queue = self.bq.depth()
        stats.max_queue_depth = max(stats.max_queue_depth, result.queue)
        result.drops, result.overflows = stats.dropped_blocks, stats.overflows

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
                self._emit(self.analyzer.feed_block(item))
                self.reporter.alive()  # processed, windows or not (an input fault gives none)
        except BaseException as exc:  # handed to the supervisor
            self.error = exc
            self.stop.set()


def make_source(settings: LoopSettings) -> Source:
    i, sup = settings.input, settings.supervision
    if i.wav is not None:
        return WavSource(i.wav, i.channel, i.fast, i.block_seconds)
    return SoundDeviceSource(i.device, i.channel, i.rate, i.channels, i.block_seconds, sup.stall_seconds)


def resolve_hop(hop: float | None, card: ModelCard | None) -> tuple[float, str]:
    """(seconds between windows, where it came from): explicit, else the model card's (training's) hop."""
    if hop is not None:
        return hop, "command line"
    if card is None:
        return config.HOP_SECONDS, "default"
    return card.hop_seconds, "model card"


def start_record(
    settings: LoopSettings, classifier: Classifier, source_name: str, channel_from: str, hop_from: str = "command line"
) -> dict:
    """What the start event carries: the settings that produced the run (flat, as before the settings were
    grouped, plus the window counts the seconds gave), and which model (path, SHA-256, labels, machines and
    thresholds as the card gives them)."""
    card: ModelCard | None = classifier.card
    m, d = settings.model, settings.decisions
    counts = window_counts(d, m.hop)
    model_sha = classifier.sha256
    flat = {
        name: (str(v) if isinstance(v, Path) else v)
        for group in dataclasses.asdict(settings).values()
        for name, v in group.items()
    }
    flat.update(model=flat.pop("path"), **dataclasses.asdict(counts))
    scoring = classifier.scoring()
    return {
        "source": source_name,
        "model": str(m.path),
        "model_sha256": model_sha,
        "runtime": classifier.runtime,
        "threads": m.threads,
        "labels": list(classifier.labels),
        "machines": list(card.machines) if card else [],
        "thresholds": card.thresholds_by_machine() if card else None,
        "threshold_method": card.threshold_method if card else None,
        "scoring": scoring,
        "unknown_machine": bool(scoring.get("unknown_machine")),
        "machine_id": m.machine,
        "hop_s": m.hop,
        "hop_from": hop_from,
        "alert": f"{counts.alert_n} of {counts.alert_m}",
        "alert_window_s": d.alert_window,
        "alert_after_s": d.alert_after,
        "clear_allow_s": d.clear_allow,
        "threshold_scale": d.threshold_scale,
        "state_k": counts.state_k,
        "state_after_s": d.state_after,
        "queue_blocks": settings.input.queue_blocks,
        "channel": settings.input.channel,
        "channel_from": channel_from,
        "settings": flat,
    }


def load_site(settings: LoopSettings, model_sha256: str | None) -> tuple[site.SiteModel | None, str | None]:
    """(the site calibration beside the model, why one there is not applied). None with ``--no-site`` or when
    there is none. One that is unreadable, of an older fanwatch or made for another model (a retrained model
    copied over an enrolled one) is not applied, and the loop monitors with the model's own calibration
    rather than not at all: the start is followed by a ``site_refused`` event saying why."""
    if not settings.model.site:
        return None, None
    try:
        return site.load(settings.model.path, model_sha256), None
    except FanwatchError as exc:
        return None, str(exc)


def alert_record(analyzer: Analyzer, site_model: site.SiteModel | None) -> dict:
    """What the start event says about the alert rules and the site calibration (fields added to the start
    record; ``alert`` keeps its name and says the rule in words)."""
    d = analyzer.decisions
    out = {
        "alert_rule": analyzer.rule.to_dict() if d.evidence is not None else "n-of-m",
        "known_fault_classes": [d.labels[i] for i in d.fault_index] if d.known_evidence is not None else [],
        "site": None,
    }
    if d.evidence is not None:
        out["alert"] = analyzer.rule.describe() + (" (site calibration)" if site_model is not None else "")
        channels = {ch: e.rule for ch, e in d.channel_evidence.items()}
        out["alert_channels"] = {ch: rule.to_dict() for ch, rule in channels.items()}
        out["alert"] += "".join(
            f"; or the {channel_label(ch)} channel's {rule.describe()}" for ch, rule in channels.items()
        )
    if d.known_evidence is not None:
        out["known_fault_rule"] = d.known_rule.to_dict()
        if d.evidence is not None:  # the head's total too, so the console header lists every alert rule
            out["alert"] += f"; or known faults: {d.known_rule.describe('fault odds')}"
    if site_model is not None:
        out["site"] = {
            "file": site.SITE_JSON,
            "created": site_model.info.get("created"),
            "seconds": site_model.info.get("seconds"),
            "source": site_model.info.get("source"),
            "threshold": site_model.rule.threshold,
            "card_threshold": site_model.info.get("card_threshold"),
            "known_faults_off": site_model.known_faults_off,
        }
    return out


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
        self.reporter.event(
            "drops",
            dropped_blocks=new_blocks,
            dropped_seconds=round(s.dropped_seconds - self.seconds, 3),
            overflows=new_overflows,
            total_dropped_blocks=s.dropped_blocks,
            total_overflows=s.overflows,
        )
        self.blocks, self.seconds, self.overflows, self.last = s.dropped_blocks, s.dropped_seconds, s.overflows, now


def run(
    settings: LoopSettings,
    out=None,
    classifier: Classifier | None = None,
    source: Source | None = None,
    stop: threading.Event | None = None,
    install_signals: bool = True,
    on_record: RecordSink | None = None,
    sinks: Sequence[RecordSink] = (),
) -> dict:
    """Run the loop until the file ends, ``settings.supervision.duration`` passes, or ``stop`` is set
    (SIGINT/SIGTERM).

    ``classifier`` (a :class:`fanwatch.runtime.SoundClassifier` or anything with the
    :class:`~fanwatch.live.analyzer.Classifier` interface) and ``source`` (a
    :class:`~fanwatch.live.sources.Source`) are built from ``settings`` unless given. Every record also goes
    to ``on_record`` and each of ``sinks`` (MQTT, a web status page, ...). Returns the summary record (also
    reported).
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

    server = None  # the status page (settings.http), started once the model card is read
    try:
        if source is None:
            source = make_source(settings)  # a bad --wav file fails here, before the model loads
    except BaseException:
        restore_signals()
        raise
    try:
        m = settings.model
        card = classifier.card if classifier is not None else read_card(m.path)
        channel, channel_from = resolve_channel(settings.input.channel, card)
        hop, hop_from = resolve_hop(m.hop, card)
        check_hop(hop)
        # resolved here, once; the caller's settings stay as they are
        settings = dataclasses.replace(
            settings, input=dataclasses.replace(settings.input, channel=channel), model=dataclasses.replace(m, hop=hop)
        )
        window_counts(settings.decisions, hop)  # seconds that give no sensible window counts: one line now
        source.prepare(channel)  # no such device / channel: one line, before the model loads
        if settings.http.listen is not None:  # up while the model loads: /healthz says "starting"
            from ..webserver import serve

            server = serve(settings.http, hop)
            sinks = [*sinks, server.board]
        if classifier is None:
            try:
                classifier = runtime.SoundClassifier(m.path, m.threads, m.runtime, m.machine)
            except (KeyError, TypeError, IndexError) as exc:  # a card the runtime's checks let through
                raise FanwatchError(
                    f"{card_path(m.path)}: malformed model card ({type(exc).__name__}: {exc})"
                ) from None
        site_model, site_refused = load_site(settings, classifier.sha256)  # another model's: not applied, and said
        # normal band levels, what an alert's explanation compares with: the site's with its calibration
        profile = bands.load_beside(m.path, site=site_model is not None)
        reporter = Reporter(out, settings.output, [*([on_record] if on_record else []), *sinks], output_closed)
    except BaseException:
        source.close()
        if server is not None:
            server.stop()
        restore_signals()
        raise

    bq = BlockQueue(settings.input.queue_blocks, stats)
    # a live "mean" leaves out channels that are pure padding (see analyzer.live_channels); files are averaged as is
    analyzer = Analyzer(
        classifier,
        hop,
        channel,
        settings.decisions,
        skip_silent_channels=settings.input.wav is None,
        site_model=site_model,
        band_profile=profile,
    )
    worker = Worker(analyzer, bq, reporter, stop, stats, settings.supervision.simulate_slow_ms)
    drops = _DropReporter(stats, reporter, settings.supervision.drop_report_seconds)
    reporter.event(
        "start",
        **{
            **start_record(settings, classifier, source.describe(), channel_from, hop_from),
            **alert_record(analyzer, site_model),
        },
    )
    if site_refused:
        reporter.event("site_refused", reason=site_refused)
    worker.start()
    try:
        if not stop.is_set():
            reason["why"] = _supervise(settings, source, bq, worker, stop, reporter, stats, drops) or reason["why"]
        if reason["why"] == "end of file" and stats.windows == 0 and worker.error is None:
            why = analyzer.first_fault or audio.too_short_reason(analyzer.samples_seen)
            raise FanwatchError(f"{settings.input.wav}: no window could be analysed: {why}")
        if worker.error is not None:
            exc = worker.error
            raise (
                exc
                if isinstance(exc, FanwatchError)
                else FanwatchError(f"the analysis worker failed: {type(exc).__name__}: {exc}")
            )
    except FanwatchError:
        reason["why"] = reason["why"] or "error"
        raise
    except Exception as exc:  # one line, not a traceback, for an operator reading logs
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
        if server is not None:
            server.stop()
        restore_signals()
    return summary


def _supervise(settings, source, bq, worker, stop, reporter, stats, drops) -> str | None:
    """Open the source, watch it, reopen it with backoff when it goes away. Returns why it ended.

    The very first open failing with a :class:`DeviceConfigError` ends the run (raised): retrying a
    configuration that cannot work would only hide it. Once a stream has been opened, every failure is
    retried with backoff (an unplugged device may come back, even with another index)."""
    sup = settings.supervision
    deadline = None if sup.duration is None else time.monotonic() + sup.duration
    delays = backoff_delays(sup.backoff_initial, sup.backoff_max)
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
            if time.monotonic() - opened_at > 10.0 and delay != sup.backoff_initial:
                delays = backoff_delays(sup.backoff_initial, sup.backoff_max)  # healthy again
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
