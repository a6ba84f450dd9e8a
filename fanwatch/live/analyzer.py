"""The streaming analysis, the public API of the live loop: samples in, one :class:`WindowResult` per hop out.

:class:`Analyzer` has no threads, no queue and no loop statistics. Feed it samples at any rate
(:meth:`Analyzer.feed`), in pieces of any size; it mixes them to mono the way the model was trained,
resamples them to 16 kHz with :class:`fanwatch.audio.StreamResampler` (the soxr path of training), keeps a
rolling window of ``config.WINDOW_SAMPLES`` samples, runs the classifier every hop and debounces the
decisions. :meth:`Analyzer.reset` starts a new continuous segment (lost audio, a reopened device);
:meth:`Analyzer.finish` flushes the resampler at the end; :meth:`Analyzer.run_file` analyses a whole file
through the same path. The live loop's worker (:mod:`fanwatch.live.supervisor`) is a thin driver of it.

Runtime module: numpy, soxr (through ``audio``), the standard library.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from .. import audio, bands, config
from ..card import ModelCard
from .blocks import Block
from .decisions import Decisions, anomalous_labels, channel_rules_from_card, rules_from_card, window_counts
from .settings import DecisionSettings
from .sources import check_file_channel, open_audio_file


class Classifier(Protocol):
    """What the Analyzer needs from a model (:class:`fanwatch.runtime.SoundClassifier` has it)."""

    labels: list[str]
    card: ModelCard | None  # the hop default; the live loop's start record and channel setting
    runtime: str  # the TFLite runtime's name, for the start record
    sha256: str | None  # the model file's, for the start record and the site calibration (None: a stand-in)

    def predict(self, window: np.ndarray):
        """An object with ``probabilities`` [n_labels] and ``anomaly_scores`` [n_machines]."""

    def scoring(self) -> dict:
        """Which normal reference the anomaly score compares with (``unknown_machine``, ``scored_as``, ``rule``)."""

    def anomaly_stream(self, hop_s: float | None = None):
        """A new anomaly state for one continuous segment at windows ``hop_s`` apart: ``update(prediction)`` ->
        (machine index, score / threshold), ``reset()``, ``settling``, ``horizon``, ``channel_ratios`` (the last
        window's side-channel ratios, ``{}`` without side channels). The deployed score
        (fanwatch.scorer) averages over a horizon of windows, so it has state;
        :class:`fanwatch.runtime.StatelessAnomaly` wraps a per-window rule."""


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
    latency_ms: float  # from the arrival of the audio that completed this window to its decision
    queue: int = 0  # the live loop fills in its queue depth and loss counters
    drops: int = 0
    overflows: int = 0
    gap_restarts: int = 0  # analysis restarts after lost audio so far: windows with equal counts are continuous
    events: list = field(default_factory=list)
    settling: bool = False  # the anomaly score's horizon is starting: the window counts towards no alert
    level_dbfs: float | None = None  # RMS level of the window the model heard (16 kHz), dB re full scale
    third_octave: np.ndarray | None = field(default=None, repr=False)  # its band levels (dB), enrollment
    probabilities: np.ndarray | None = field(default=None, repr=False)  # the model's outputs, [n_labels]
    scores: np.ndarray | None = field(default=None, repr=False)  # raw anomaly scores, [n_machines]
    machine: int = 0  # the index into ``scores`` whose threshold ``anomaly`` is relative to; -1: pooled reference
    evidence: float | None = None  # anomaly evidence relative to the alert level (1.0 raises); None: n-of-m rule
    # (with side channels the highest of the score's and the channels' levels, each in ``evidence_parts``)
    alert_kinds: list = field(default_factory=list)  # active alerts: "unknown_anomaly", "known_fault"
    embedding: np.ndarray | None = field(default=None, repr=False)  # the model's embedding (score, enrollment)
    band_levels: np.ndarray | None = field(default=None, repr=False)
    channels: dict = field(default_factory=dict)  # the score's side channels: {channel: score / its threshold}
    evidence_parts: dict = field(default_factory=dict)  # with side channels: {"score": level, channel: level}

    def record(self) -> dict:
        return {
            "type": "window",
            "t": round(self.t, 3),
            "label": self.label,
            "confidence": round(self.confidence, 4),
            "anomaly": round(self.anomaly, 4),
            "anomalous": self.anomalous,
            "state": self.state,
            "alert": self.alert,
            "inference_ms": round(self.inference_ms, 2),
            "latency_ms": round(self.latency_ms, 1),
            "queue": self.queue,
            "drops": self.drops,
            "overflows": self.overflows,
            "gap_restarts": self.gap_restarts,
            "unknown_machine": self.machine < 0,
            "evidence": None if self.evidence is None else round(self.evidence, 4),
            "alert_kinds": list(self.alert_kinds),
            "settling": self.settling,
            "level_dbfs": None if self.level_dbfs is None else round(self.level_dbfs, 1),
            "anomaly_channels": {ch: round(r, 4) for ch, r in self.channels.items()},
            "evidence_parts": {k: round(v, 4) for k, v in self.evidence_parts.items()},
        }


def to_mono(data: np.ndarray, channel: str | int) -> np.ndarray:
    """Mix a [frames, channels] block to mono like :func:`fanwatch.audio.load_audio`: ``"mean"`` averages
    every channel, an int picks that channel."""
    data = np.asarray(data, dtype=np.float32)
    if data.ndim == 1:
        return data
    if channel == "mean":
        return data[:, 0] if data.shape[1] == 1 else data.mean(axis=1, dtype=np.float32)
    return data[:, channel]


CONSTANT_PTP = 1e-6
"""A window whose samples all lie within this of one another carries no sound: a constant (a DC offset, a stuck
converter). Real microphones have self-noise far above it (16-bit: one step is 3e-5); resampling a constant
leaves ripples well below it."""


FLAT_SHARE = 0.5
"""A window more than half of whose samples do not move (digital silence or a constant between sound) is a
dropout, not a machine state: sound that stops dead is not what a fan does."""


def window_fault(window: np.ndarray) -> str | None:
    """Why a 16 kHz window is not sound the model can judge, or None: digital silence, a constant, or mostly
    either of them."""
    if not np.any(window):
        return "digital silence (every sample is 0)"
    if float(np.ptp(window)) <= CONSTANT_PTP:
        return f"a constant signal ({float(window[0]):.3g}), no sound"
    flat = float(np.mean(np.abs(np.diff(window)) <= CONSTANT_PTP))
    if flat > FLAT_SHARE:
        return f"mostly no sound: {100 * flat:.0f} % of the window is digital silence or a constant (a dropout?)"
    return None


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
    """Samples in, one :class:`WindowResult` per hop out (see the module docstring).

    ``channel``: how a [frames, channels] block is mixed ("mean" or an index). ``skip_silent_channels``: a
    live "mean" leaves out channels that are pure digital padding (see :func:`live_channels`); files are
    averaged as they are. ``hop`` defaults to the model card's (training's), else ``config.HOP_SECONDS``.
    ``site_model``: a :class:`fanwatch.site.SiteModel` (on-site enrollment) combined with the model's ratio
    and supplying the alert rule. ``band_profile`` (:func:`fanwatch.bands.load_beside`, the model's normal
    band levels): every window's level is measured anyway (``level_dbfs``); with a profile, a raised alert
    says what changed against it.
    """

    def __init__(
        self,
        classifier: Classifier,
        hop: float | None = None,
        channel: str | int = "mean",
        decisions: DecisionSettings | None = None,
        skip_silent_channels: bool = False,
        site_model=None,
        band_profile: bands.BandProfile | None = None,
    ):
        card = classifier.card
        if hop is None:
            hop = card.hop_seconds if isinstance(card, ModelCard) else config.HOP_SECONDS
        decisions = decisions or DecisionSettings()
        self.classifier = classifier
        self.channel = channel
        self.skip_silent = skip_silent_channels
        self.hop_seconds = hop
        self.hop = max(1, int(round(hop * config.SAMPLE_RATE)))
        self.window = config.WINDOW_SAMPLES
        self.threshold_scale = decisions.threshold_scale
        self.counts = window_counts(decisions, hop)
        c = self.counts
        self.site = site_model
        self._site = site_model.stream() if site_model is not None else None
        self.rule, known_rule = rules_from_card(card, decisions, site_model)
        n_of_m = (c.alert_n, c.alert_m, c.clear_n, decisions.clear_ratio) if decisions.alert_rule == "n-of-m" else None
        site_off = site_model is not None and site_model.known_faults_off  # the head is fooled at this site
        faults = anomalous_labels(card) if decisions.known_faults and n_of_m is None and not site_off else []
        self.decisions = Decisions(
            self.rule,
            hop,
            c.state_k,
            labels=classifier.labels,
            fault_labels=faults,
            known_rule=known_rule,
            n_of_m=n_of_m,
            channel_rules=channel_rules_from_card(card, decisions, site_model),
        )
        self.states = self.decisions.states
        self.notices: list[dict] = []  # events not tied to a window (the live loop reports them)
        self.explainer = bands.AlertExplainer(band_profile, c.alert_m)  # the windows an alert looks at
        self._machines = card.machines if isinstance(card, ModelCard) else ()
        self._normal_labels = set(card.normal_labels) if isinstance(card, ModelCard) else set()
        self._normal_state: str | None = None  # the last normal operating state reported: an alert's reference
        self.gap_restarts = 0  # segments finished early because audio was lost (feed_block with gap)
        # unusable input (NaN/inf, samples far outside +-1, digital silence, a constant, channels that cancel,
        # a model output that is not a number): never a window, a state or an alert; reported as input_fault
        self.fault: str | None = None  # the current fault, None while the input is usable
        self.first_fault: str | None = None  # the first one of the run, for a file that gave no window at all
        self.input_faults = 0  # fault episodes
        self.fault_seconds = 0.0  # seconds of audio not analysed because of them
        self._cancelled = False  # the last block's channels were non-zero but their mean was exactly zero
        self._resampler: audio.StreamResampler | None = None
        self._stream_id = None
        self._rate = None
        self._silent_reported: tuple | None = None
        self._buf = np.zeros(0, dtype=np.float32)
        self._buf_start = 0  # absolute 16 kHz sample index of _buf[0]
        self._next_start = 0  # absolute index where the next window starts
        self._total = 0  # 16 kHz samples produced so far (over all segments)
        self._arrivals: deque = deque()  # (absolute end index of a block's output, its arrival time)
        # the score's horizon restarts with every segment, and spans the seconds of audio it was fitted for
        self._anomaly = classifier.anomaly_stream(hop)
        if self._site is not None:
            self._site = site_model.stream(self._anomaly.horizon)

    # -- the public streaming API

    def feed(self, samples: np.ndarray, rate: float, arrival: float | None = None) -> list[WindowResult]:
        """Analyse the next piece of audio: [frames] or [frames, channels] at ``rate`` Hz (a new rate starts a
        new segment). ``arrival``: when it was captured (``time.monotonic()``), for the latency figure."""
        rate = float(rate)
        if self._resampler is None or rate != self._rate:
            self._start(rate)
        arrival = time.monotonic() if arrival is None else arrival
        samples = np.asarray(samples)
        problem = audio.signal_problem(samples)
        if problem is not None:  # never resampled (NaN would smear over the filter) nor seen by the model
            self._set_fault(problem, self._total)
            self.fault_seconds += len(samples) / rate
            self.reset()
            return []
        self._append(self._resampler.process(self._mono(samples)), arrival)
        return self._windows()

    @property
    def samples_seen(self) -> int:
        """16 kHz samples produced so far, over all segments (a file that gave no window: how long it was)."""
        return self._total

    def reset(self) -> None:
        """Start a new continuous segment: forget the partial window and the resampler's state (the decisions
        carry on). Call it when audio was lost; :meth:`finish` first keeps the segment's last windows."""
        if self._resampler is not None:
            self._resampler.reset()
        self._reset_scores()
        self._buf = np.zeros(0, dtype=np.float32)
        self._buf_start = self._next_start = self._total
        self._arrivals.clear()
        self.explainer.reset()

    def finish(self) -> list[WindowResult]:
        """End of a file (or of a continuous segment): flush the resampler's delay and analyse the last full
        windows."""
        if self._resampler is None:
            return []
        arrival = self._arrivals[-1][1] if self._arrivals else time.monotonic()
        self._append(self._resampler.process(np.zeros(0, dtype=np.float32), last=True), arrival)
        return self._windows()

    def run_file(self, path: str | Path, block_seconds: float = 1.0) -> list[WindowResult]:
        """Every window of an audio file, through the same path as a live stream (blocks of the file's native
        rate, fed in order, then :meth:`finish`). BadAudioError (one line) for a file that cannot be used."""
        reader = open_audio_file(Path(path))
        try:
            check_file_channel(path, self.channel, reader.channels)
            size = max(1, int(round(reader.rate * block_seconds)))
            results = []
            while True:
                data = reader.read(size)
                if len(data) == 0:
                    break
                results += self.feed(data, reader.rate)
            return results + self.finish()
        finally:
            reader.close()

    # -- the live loop's entry: blocks with stream ids and gap flags

    def feed_block(self, block: Block) -> list[WindowResult]:
        """A block from the live loop's queue. A new ``stream_id`` (device reopened) or rate starts a new
        segment; ``gap`` (audio lost before this block) first finishes the segment before it like the end of
        a file, then starts a new one (counted in :attr:`gap_restarts`)."""
        results = []
        if block.stream_id != self._stream_id:
            if self._stream_id is not None:
                self.reset()
            self._stream_id = block.stream_id
            self._silent_reported = None
        elif block.gap and block.rate == self._rate:
            results = self.finish()
            self.gap_restarts += 1
            self.reset()
        return results + self.feed(block.data, block.rate, block.arrival)

    # -- internals

    def _reset_scores(self) -> None:
        self._anomaly.reset()
        if self._site is not None:
            self._site.reset()

    def _start(self, rate: float) -> None:
        self._resampler = audio.StreamResampler(rate, config.SAMPLE_RATE)
        self._rate = rate
        self.reset()

    def _append(self, samples: np.ndarray, arrival: float) -> None:
        if samples.size:
            self._buf = np.concatenate((self._buf, samples)) if self._buf.size else samples.astype(np.float32)
            self._total += samples.size
            self._arrivals.append((self._total, arrival))

    def _mono(self, data: np.ndarray) -> np.ndarray:
        if self.channel == "mean" and self.skip_silent:
            alive = live_channels(data)
            if alive is not None:
                silent = tuple(sorted(set(range(data.shape[1])) - set(alive.tolist())))
                if silent != self._silent_reported:
                    self._silent_reported = silent
                    self.notices.append(
                        {
                            "event": "silent_channels",
                            "channels": list(silent),
                            "averaging": alive.tolist(),
                            "of": int(data.shape[1]),
                        }
                    )
                data = data[:, alive]
        mono = to_mono(data, self.channel)
        self._cancelled = (
            self.channel == "mean" and data.ndim == 2 and data.shape[1] > 1 and not np.any(mono) and bool(np.any(data))
        )
        return mono

    def _set_fault(self, reason: str, end: int) -> None:
        def kind(text: str | None) -> str | None:  # "mostly no sound: 79 % ..." and ": 99 % ..." are one fault
            return None if text is None else text.split(":")[0].split("(")[0].strip()

        if kind(reason) != kind(self.fault):
            if self.fault is None:
                self.input_faults += 1
            self.fault = reason
            self.first_fault = self.first_fault or reason
            self.notices.append({"event": "input_fault", "t": round(end / config.SAMPLE_RATE, 3), "reason": reason})

    def _clear_fault(self, end: int) -> None:
        if self.fault is not None:
            self.fault = None
            self.notices.append({"event": "input_ok", "t": round(end / config.SAMPLE_RATE, 3)})

    def _windows(self) -> list[WindowResult]:
        results = []
        while self._next_start + self.window <= self._total:
            offset = self._next_start - self._buf_start
            end = self._next_start + self.window
            while len(self._arrivals) > 1 and self._arrivals[0][0] < end:
                self._arrivals.popleft()
            result = self._analyse(self._buf[offset : offset + self.window], end, self._arrivals[0][1])
            if result is not None:
                results.append(result)
            self._next_start += self.hop
        cut = min(self._next_start, self._total) - self._buf_start
        if cut > 0:
            self._buf = self._buf[cut:]
            self._buf_start += cut
        return results

    def _analyse(self, window: np.ndarray, end: int, arrival: float) -> WindowResult | None:
        """One window's decision, or None (reported as an input fault) when the window is not sound."""
        fault = window_fault(window)
        if fault is not None and self._cancelled:
            fault = "the channels cancel out when averaged (their mean is 0); pick one with --channel N"
        if fault is None:
            clf = self.classifier
            t0 = time.perf_counter()
            prediction = clf.predict(window)
            inference_ms = (time.perf_counter() - t0) * 1000.0
            probabilities = np.asarray(prediction.probabilities, dtype=np.float64).reshape(-1)
            scores = np.asarray(prediction.anomaly_scores, dtype=np.float32).reshape(-1)
            extra = [x for x in (prediction.embedding, prediction.band_levels) if x is not None]
            if not (
                np.isfinite(probabilities).all()
                and np.isfinite(scores).all()
                and all(np.isfinite(x).all() for x in extra)
            ):
                fault = "the model's outputs are NaN or infinite for this audio"
        if fault is not None:
            self._set_fault(fault, end)
            self.fault_seconds += self.hop / config.SAMPLE_RATE
            self._reset_scores()  # the score's horizon does not reach across audio it could not judge
            return None
        self._clear_fault(end)
        level, third_octave = self.explainer.measure(window)
        best = int(np.argmax(probabilities))
        label = clf.labels[best]
        machine, ratio = self._anomaly.update(prediction)
        embedding = prediction.embedding
        channels = self._anomaly.channel_ratios
        if self._site is not None:  # the site's own score over the same horizon, combined with the model's
            ratio, channels = self._site.update_channels(embedding, prediction.band_levels, ratio, channels)
        ratio = float(ratio) / self.threshold_scale
        channels = {ch: float(r) / self.threshold_scale for ch, r in channels.items()}
        latency_ms = (time.monotonic() - arrival) * 1000.0
        t = end / config.SAMPLE_RATE
        confidence = float(probabilities[best])
        settling = self._anomaly.settling  # the score's horizon just (re)started: no anomaly evidence yet
        decision = self.decisions.update(
            t, label, confidence, ratio, probabilities, settling=settling, channels=channels
        )
        for event in decision.events:
            if event["event"] == "state" and event["to"] in self._normal_labels:
                self._normal_state = event["to"]
            elif event["event"] == "alert_raised":  # what changed, against the normal band profile (None without)
                name = self._machines[machine] if 0 <= machine < len(self._machines) else None
                event["explanation"] = self.explainer.explain(name, self._normal_state)
        return WindowResult(
            t=t,
            label=label,
            confidence=confidence,
            anomaly=ratio,
            anomalous=ratio >= 1.0 and not settling,
            channels=channels,
            settling=settling,
            state=decision.state,
            alert=decision.alert,
            inference_ms=inference_ms,
            latency_ms=latency_ms,
            gap_restarts=self.gap_restarts,
            events=decision.events,
            probabilities=probabilities,
            scores=scores,
            machine=int(machine),
            evidence=decision.evidence,
            evidence_parts=decision.evidence_parts,
            alert_kinds=decision.kinds,
            embedding=embedding,
            band_levels=prediction.band_levels,
            level_dbfs=level,
            third_octave=third_octave,
        )
