"""On-site enrollment: adapt a trained model to the room and microphone it listens in, with numpy alone.

A Pi hears its fan in its own room through its own microphone; the training recordings were made elsewhere.
``inference.py --enroll SECONDS`` listens to normal running (in memory only) and

1. splits the enrollment windows into 10 s blocks, the first two thirds kept as the site's **reference** and
   the last third **held apart** (the window straddling a block boundary is dropped: windows overlap by half);
2. fits the model's own anomaly score (:mod:`fanwatch.scorer`: embedding and spectral-shape k-NN, median
   over the same horizon) on the reference windows alone, as the site's normal; its per-window threshold is
   the ``1 - false alarm rate`` quantile of a gamma fit to the held-apart windows' site scores;
3. combines the two: the window's ratio is the smaller of the model's and the site's (:func:`combine`: the
   site may explain a sound away, never accuse it), both over the same horizon: a sound like the enrolled
   normal running is pulled down where the model finds it unusual, a sound unlike both (a fault) stays
   high. The site score
   was first a single-window embedding k-NN; combined with the model's horizon score it brought back
   single-window spikes and raised false alerts (``bench/alerts.py``), hence the same score for both;
4. recalibrates the alert rule on the held-apart audio with the combined ratio: the threshold is the
   model card's, raised if the held-apart evidence comes near it; the site's own tail bound (from far less
   audio than the card's) is reported beside the card's expected false alerts per day.

The score's side channels (:mod:`fanwatch.scorer`): the modulation channels keep the model's score: a
room's level and colouring and a microphone's gain do not move a shape over modulation frequencies (on
``bench/alerts.py``'s odd site the channel raised no false alert without enrollment); audio that one of them
mostly finds anomalous (a fault only it hears, such as an imbalance) is refused unless forced, as for the
score. Any other channel (the embedding's, which a room does move) is adapted like the fused score: the site
scorer fits it too and its ratio is the smaller of the model's and the site's. A room may still have a
modulation of its own (a ceiling fan, another motor's beat): each channel's alert level is raised, as the
score's is, when its evidence on the held-apart audio comes near it (``channel_rules`` in the site file, and
the printed summary says so in capitals).

It writes ``site_calibration.json`` (settings, figures, the model's sha256) and ``site_calibration.npz``
(the site's score state in :class:`fanwatch.scorer.Scorer`'s format, no pickle) beside the model. A site
file made for another model (sha256), or by an older fanwatch, is refused with one line.

Runtime module: numpy and the standard library.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from . import config, evidence, spectral
from .errors import FanwatchError
from .scorer import ScoreConfig, Scorer, channel_label

SITE_FORMAT = "fanwatch-site/3"  # /1: a single-window embedding k-NN; /2: geometric mean (enroll again)
SITE_JSON = "site_calibration.json"
SITE_NPZ = "site_calibration.npz"
SITE = "site"  # the name of the site's reference in its score state
MIN_SECONDS = 120.0  # shorter is refused unless forced: less audio knows less of the site's normal sound
# (before the cap of combine(), 1 min also raised false alerts in bench/alerts.py)
ABSOLUTE_MIN_SECONDS = 20.0  # never, even forced: too few windows for a site picture
BLOCK_WINDOWS = 20  # 10 s blocks at the 0.5 s hop
SILENT_RMS = 10 ** (-70 / 20)  # below -70 dBFS the input is silent (a muted or unplugged microphone)
ANOMALOUS_SHARE = 0.5  # refuse when more than half of the windows are anomalous or a known fault
PEAK_MARGIN = 1.5  # the site threshold stays this far above the held-apart evidence peak
# side channels a room or a microphone does not move (shapes over modulation frequencies): they keep the model's
# score at a site; every other channel is fitted on the site's audio and combined, as the fused score is
ROOM_INVARIANT_CHANNELS = ("modulation", "modulation_peak")


def adapted_channels(channels) -> tuple:
    """The side channels a site calibration fits on the site's audio (all but the room-invariant ones)."""
    return tuple(c for c in channels if c not in ROOM_INVARIANT_CHANNELS)


@dataclass
class SiteModel:
    """A site calibration: the site's own anomaly score (fitted on its normal audio), the recalibrated alert
    rule and the sha256 of the model it belongs to."""

    scorer: Scorer  # one reference, SITE, with its threshold
    rule: evidence.EvidenceRule
    model_sha256: str
    info: dict = field(default_factory=dict)
    known_faults_off: bool = False  # the head calls this site's normal running a fault: no known-fault alerts
    channel_rules: dict = field(default_factory=dict)  # side channel -> its alert rule at this site

    @property
    def threshold(self) -> float:
        return self.scorer.threshold(SITE)

    def stream(self, horizon: int | None = None) -> SiteStream:
        """The site's running score for one continuous segment (reset with the model's); ``horizon``: the
        model's score horizon in windows at the loop's hop."""
        return SiteStream(self, horizon)

    def combine_file(self, embeddings: np.ndarray, bands: np.ndarray, model_ratios: np.ndarray) -> np.ndarray:
        """The combined ratios of one continuous recording (what a stream reset at its start gives)."""
        return self.combine_file_channels(embeddings, bands, model_ratios)[0]

    def combine_file_channels(
        self, embeddings: np.ndarray, bands: np.ndarray, model_ratios: np.ndarray, model_channels: dict | None = None
    ) -> tuple[np.ndarray, dict]:
        """(combined ratios, {side channel: ratios}) of one continuous recording: the channels the site fitted
        combined with the model's (``model_channels``: {channel: [n] ratios}), the others as the model gives."""
        fused, side = self.scorer.score_file_channels(
            SITE, np.asarray(embeddings, np.float32), np.asarray(bands, np.float32)
        )
        channels = {ch: np.asarray(r, np.float64) for ch, r in (model_channels or {}).items()}
        for ch, r in channels.items():
            if ch in side:
                channels[ch] = combine(r, side[ch] / self.scorer.channel_threshold(SITE, ch))
        return combine(np.asarray(model_ratios, np.float64), fused / self.threshold), channels

    # -- files ---------------------------------------------------------------------------------
    def save(self, model_path: str | Path) -> tuple[Path, Path]:
        folder = Path(model_path).parent
        json_path, npz_path = folder / SITE_JSON, folder / SITE_NPZ
        doc = {
            "format": SITE_FORMAT,
            "model": Path(model_path).name,
            "model_sha256": self.model_sha256,
            "site_threshold": self.threshold,
            "rule": self.rule.to_dict(),
            "known_faults_off": self.known_faults_off,
            "channel_rules": {ch: rule.to_dict() for ch, rule in self.channel_rules.items()},
            **self.info,
        }
        try:
            self.scorer.save(npz_path)
            tmp = json_path.with_name(json_path.name + ".tmp")
            tmp.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
            tmp.replace(json_path)
        except OSError as exc:
            raise FanwatchError(
                f"cannot write the site calibration beside the model in {folder}: {exc.strerror or exc}"
            ) from None
        return json_path, npz_path


class SiteStream:
    """The site's score over the live loop's windows: ``update(embedding, band_levels, model ratio)`` -> the
    combined ratio; ``reset()`` at a gap (its horizon restarts with the model's)."""

    def __init__(self, site_model: SiteModel, horizon: int | None = None):
        self.site_model = site_model
        self._stream = site_model.scorer.stream(SITE, horizon)
        self._threshold = site_model.threshold
        self._channel_thresholds = {
            ch: site_model.scorer.channel_threshold(SITE, ch) for ch in site_model.scorer.config.channels
        }

    def reset(self) -> None:
        self._stream.reset()

    def update(self, embedding, band_levels, model_ratio: float) -> float:
        return self.update_channels(embedding, band_levels, model_ratio)[0]

    def update_channels(self, embedding, band_levels, model_ratio: float, model_channels: dict | None = None):
        """(combined ratio, {side channel: ratio}) of the next window: the channels the site fitted combined
        with the model's, the others as the model gives them."""
        if band_levels is None:  # a model without band levels: its site score is embedding-only
            band_levels = np.zeros(spectral.BAND_FEATURES, np.float32)
        site, side = self._stream.update_channels(
            np.asarray(embedding, np.float32), np.asarray(band_levels, np.float32)
        )
        channels = dict(model_channels or {})
        for ch, t in self._channel_thresholds.items():
            if ch in channels:
                channels[ch] = float(combine(np.float64(channels[ch]), side[ch] / t))
        return float(combine(np.float64(model_ratio), site / self._threshold)), channels


def combine(model_ratio, site_ratio):
    """The enrolled window ratio: the smaller of the model's and the site's.

    The site's opinion rests on a minute or two of audio: it may explain a sound away (a window unlike the
    training recordings but like this room's normal running), never make one more anomalous than the model
    finds it. Measured in ``bench/alerts.py``: the uncapped geometric mean of the two raised 2 false alerts
    per hour in the loud room where the model alone raised none. The geometric mean capped at the model's
    ratio can only halve the log ratio of a room the model finds odd: in a first replay of such a site (one
    stream of 8 cycles) it alerted 12 % of the faults within 15 s, the smaller of the two 38 %. In the
    bench's odd site, 2 min of enrollment took the score's alerts from 4 false per hour and 0 % of the
    faults within 15 s to 1 and 50 %, and changed nothing in the four sessions where the model was right."""
    return np.minimum(np.maximum(model_ratio, 0.0), np.maximum(site_ratio, 0.0))


def site_paths(model_path: str | Path) -> tuple[Path, Path]:
    folder = Path(model_path).parent
    return folder / SITE_JSON, folder / SITE_NPZ


def load(model_path: str | Path, model_sha256: str | None = None) -> SiteModel | None:
    """The site calibration beside the model, or None when there is none. FanwatchError (one line) when it is
    unreadable or belongs to another model."""
    json_path, npz_path = site_paths(model_path)
    if not json_path.is_file():
        return None
    try:
        doc = json.loads(json_path.read_text(encoding="utf-8"))
        if not isinstance(doc, dict) or not str(doc.get("format", "")).startswith("fanwatch-site/"):
            raise ValueError("not a fanwatch site calibration")
    except (OSError, ValueError, json.JSONDecodeError) as exc:
        raise FanwatchError(
            f"{json_path}: unreadable site calibration ({exc}); enroll again or pass --no-site"
        ) from None
    if doc.get("format") != SITE_FORMAT:
        raise FanwatchError(
            f"{json_path}: a site calibration of an older fanwatch ({doc.get('format')}); "
            "enroll again or pass --no-site"
        )
    sha = model_sha256 or config.sha256_file(model_path)
    if doc.get("model_sha256") != sha:
        raise FanwatchError(
            f"{json_path} was made for another model (sha256 {str(doc.get('model_sha256'))[:12]}, "
            f"this one is {sha[:12]}); enroll again or pass --no-site"
        )
    if not npz_path.is_file():
        raise FanwatchError(f"{json_path}: its score state {npz_path.name} is missing; enroll again or pass --no-site")
    try:
        scorer = Scorer.load(npz_path)
        scorer.threshold(SITE)
        for ch in scorer.config.channels:
            scorer.channel_threshold(SITE, ch)
    except FanwatchError as exc:
        raise FanwatchError(f"{exc}; enroll again or pass --no-site") from None
    skip = ("format", "model", "model_sha256", "site_threshold", "rule", "known_faults_off", "channel_rules")
    info = {key: v for key, v in doc.items() if key not in skip}
    off = bool(doc.get("known_faults_off", False))
    channel_rules = doc.get("channel_rules") or {}
    if not isinstance(channel_rules, dict) or not all(isinstance(r, dict) for r in channel_rules.values()):
        raise FanwatchError(f"{json_path}: its channel_rules are not rules; enroll again or pass --no-site")
    rules = {ch: evidence.EvidenceRule.from_dict(r) for ch, r in channel_rules.items()}
    return SiteModel(scorer, evidence.EvidenceRule.from_dict(doc.get("rule")), sha, info, off, rules)


# --------------------------------------------------------------------------------------------------
# enrollment


def split_blocks(n: int, block: int = BLOCK_WINDOWS) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(reference blocks, held-apart blocks) of window indices: the last third of the blocks is held apart
    (later audio is what a calibration must hold for: blocks interleaved with the reference ones were so like
    them that the site threshold came out too low, and false alerts followed, in ``bench/alerts.py``); each
    block's last window, which overlaps the next block's audio, is dropped."""
    blocks = []
    for start in range(0, n, block):
        idx = np.arange(start, min(start + block, n))
        if start + block < n:
            idx = idx[:-1]
        if len(idx):
            blocks.append(idx)
    held = max(1, len(blocks) // 3) if len(blocks) > 1 else 0
    return blocks[: len(blocks) - held], blocks[len(blocks) - held :]


def enroll(
    classifier,
    embeddings: np.ndarray,
    bands: np.ndarray | None,
    model_ratios: np.ndarray,
    probabilities: np.ndarray,
    rms: float,
    model_sha256: str,
    force: bool = False,
    hop_s: float = config.HOP_SECONDS,
    source: str = "",
    score_config: ScoreConfig | None = None,
    channel_ratios: dict | None = None,
) -> SiteModel:
    """A site calibration from the enrollment windows (outputs of the deployed model on normal running:
    embeddings, band levels, the model's combined ratios and probabilities). ``score_config``: the model's
    score settings (the site score uses the same); a model without band levels gets an embedding-only one.
    ``channel_ratios``: the model's side-channel ratios of the same windows (``{channel: [n]}``), whose alert
    levels are raised here if the held-apart audio needs it.

    Refuses (FanwatchError, one line) when the audio is shorter than MIN_SECONDS, silent, or already sounds
    anomalous to the model; ``force`` skips these checks (never below ABSOLUTE_MIN_SECONDS).
    """
    card = getattr(classifier, "card", None)
    card = getattr(card, "raw", card) or {}  # a ModelCard or its dict
    embeddings = np.asarray(embeddings, np.float32)
    model_ratios = np.asarray(model_ratios, np.float64)
    n = len(model_ratios)
    seconds = (n - 1) * hop_s + config.WINDOW_SECONDS if n else 0.0
    short = MIN_SECONDS if not force else ABSOLUTE_MIN_SECONDS
    if not force and not (rms >= SILENT_RMS):  # first: silence gives no windows at all (input faults)
        level = 20 * math.log10(rms) if rms > 0 else -math.inf
        raise FanwatchError(
            f"the enrollment audio is silent ({level:.0f} dBFS): check the microphone (--force to enroll anyway)"
        )
    if seconds < short - hop_s:
        raise FanwatchError(
            f"enrollment needs at least {short:g} s of normal running, got {seconds:.1f} s"
            + ("" if force else " (--force to enroll from less: it knows less of this site's normal sound)")
        )
    if embeddings.ndim != 2 or len(embeddings) != n:
        raise FanwatchError("this model has no embedding output: it cannot be enrolled on site (retrain it)")
    if not force:
        share_high = float((model_ratios >= 1.0).mean())
        if share_high > ANOMALOUS_SHARE:
            raise FanwatchError(
                f"the enrollment audio already sounds anomalous to the model ({share_high:.0%} of "
                "windows above the threshold): enroll while the machine runs normally "
                "(--force if you are sure it is healthy)"
            )
        for channel, ratios in (channel_ratios or {}).items():  # a fault only a side channel hears (imbalance)
            if channel not in ROOM_INVARIANT_CHANNELS:
                continue  # a channel the room moves is fitted on the site's audio, as the fused score is
            share_high = float((np.asarray(ratios, np.float64) >= 1.0).mean()) if len(ratios) else 0.0
            if share_high > ANOMALOUS_SHARE:
                raise FanwatchError(
                    f"the enrollment audio already sounds anomalous to the model's {channel_label(channel)} channel "
                    f"({share_high:.0%} of windows above its threshold): enroll while the machine runs normally "
                    "(--force if you are sure it is healthy)"
                )
        labels = list(getattr(classifier, "labels", []))
        normal_labels = set(card.get("normal_labels") or labels)
        if len(probabilities) and labels:
            predicted = [labels[i] for i in np.argmax(np.asarray(probabilities), axis=1)]
            faults = [p for p in predicted if p not in normal_labels]
            if len(faults) > ANOMALOUS_SHARE * n:
                top = max(set(faults), key=faults.count)
                raise FanwatchError(
                    f"the enrollment audio sounds like a known fault ({top} in "
                    f"{len(faults) / n:.0%} of windows): enroll while the machine runs normally "
                    "(--force if you are sure it is healthy)"
                )
    ref_blocks, held_blocks = split_blocks(n)
    ref_idx = np.concatenate(ref_blocks)
    if bands is None or len(bands) != n:
        bands, cfg = np.zeros((n, spectral.BAND_FEATURES), np.float32), ScoreConfig(weights={"embedding": 1.0})
    else:
        # the modulation channels do not move with a room or a microphone: they keep the model's score (their
        # alert level may be raised below); the site fits the fused score and any other channel (the embedding's)
        cfg = score_config or ScoreConfig()
        cfg = replace(cfg, channels=adapted_channels(cfg.channels))
    bands = np.asarray(bands, np.float32)
    rate = float((card.get("anomaly") or {}).get("target_false_alarm_rate", 0.01))
    site_model = SiteModel(
        Scorer.fit({SITE: [(embeddings[i], bands[i]) for i in ref_blocks]}, cfg).with_threshold(
            SITE, [(embeddings[i], bands[i]) for i in held_blocks], rate
        ),
        evidence.EvidenceRule(),
        model_sha256,
    )
    # each held-apart block as a recording of its own (its horizon restarts), as the threshold was set
    model_channels = {ch: np.asarray(r, np.float64) for ch, r in (channel_ratios or {}).items() if len(r) == n}
    held = [
        site_model.combine_file_channels(
            embeddings[i], bands[i], model_ratios[i], {ch: r[i] for ch, r in model_channels.items()}
        )
        for i in held_blocks
    ]
    held_ratios = [f for f, _ in held]
    held_channels = {ch: [side[ch] for _, side in held] for ch in model_channels}  # combined where refitted
    alerts = card.get("alerts") or {}
    card_rule = evidence.EvidenceRule.from_dict(alerts.get("rule"))
    card_cal = alerts.get("calibration") or {}
    # the user's target for the whole rule (a card that shares it out says so; older cards: the score's)
    target = alerts.get("target_false_alerts_per_day")
    if target is None and "target_share_per_day" in alerts:  # shared between the score and its channels
        target = alerts["target_share_per_day"] * (1 + len(alerts.get("channels") or {}))
    if target is None:
        target = card_cal.get("target_false_alerts_per_day", evidence.DEFAULT_FALSE_ALERTS_PER_DAY)
    target = float(target)
    # the combined ratio is not the model's: its reference (what neither adds nor drains evidence) comes from
    # the held-apart audio as the card's came from validation audio, never below the card's
    site_rule = replace(card_rule, reference=max(card_rule.reference, evidence.reference_from_normal(held_ratios)))
    peak = _evidence_peak(held_ratios, site_rule, hop_s)
    threshold = max(card_rule.threshold, PEAK_MARGIN * peak)
    rule = replace(site_rule, threshold=threshold)
    tail = evidence.tail_bound(held_ratios, rule, hop_s)
    before = [model_ratios[idx] for idx in held_blocks]
    known_off, known_info = _known_faults_at_site(card, probabilities, held_blocks, hop_s)
    channel_rules, channel_info = _channels_at_site(
        alerts, held_channels, hop_s, site_model.scorer.config.channels, model_channels
    )
    info = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "source": source,
        "seconds": round(seconds, 2),
        "windows": int(n),
        "reference_windows": int(len(ref_idx)),
        "held_apart_windows": int(sum(len(i) for i in held_blocks)),
        "forced": bool(force),
        "card_threshold": card_rule.threshold,
        "held_apart": {
            "model_ratio_median": float(np.median(np.concatenate(before))),
            "combined_ratio_median": float(np.median(np.concatenate(held_ratios))),
            "windows_above_threshold_before": float((np.concatenate(before) >= 1).mean()),
            "windows_above_threshold_after": float((np.concatenate(held_ratios) >= 1).mean()),
            "evidence_peak_before": _evidence_peak(before, card_rule, hop_s),
            "evidence_peak_after": peak,
        },
        "expected_false_alerts_per_day_card": card_cal.get("expected_false_alerts_per_day"),  # the score's
        # every running total of the card together (score, side channels, known faults); None on older cards
        "expected_false_alerts_per_day_card_all": alerts.get("expected_false_alerts_per_day"),
        "expected_false_alerts_per_day_site_bound": evidence._round(evidence.rate_per_day(tail, threshold, True)),
        "site_bound_hours": evidence._round(tail["hours"]),
        "target_false_alerts_per_day": target,
        **known_info,
        **channel_info,
    }
    return SiteModel(site_model.scorer, rule, model_sha256, info, known_off, channel_rules)


def _evidence_peak(streams, rule: evidence.EvidenceRule, hop_s: float) -> float:
    """The highest evidence ``rule`` reaches over these streams (each from zero), whatever its alert level."""
    return max(float(evidence.evidence_series(x, replace(rule, threshold=1e9), hop_s).max()) for x in streams)


def _channels_at_site(
    alerts: dict, held_channels: dict, hop_s: float, adapted=(), model_channels: dict | None = None
) -> tuple[dict, dict]:
    """({side channel: its alert rule at this site}, what that rests on), from each channel's ratios on the
    held-apart blocks (``held_channels``: {channel: [block ratios]}): the card's rule of each channel, its level
    raised to PEAK_MARGIN x the evidence those ratios reach when that is higher (a room with a beat of its own),
    as the score's level is; never lowered. A channel the site refitted (``adapted``) has a combined ratio that
    is not the model's: its reference comes from the held-apart audio, as the fused score's does, never below
    the card's; it is not refused for finding the enrollment anomalous, so the share of windows the model's
    channel put above its threshold (``model_channels``, all enrollment windows) is recorded instead."""
    rules, info = {}, {}
    for channel, card_info in (alerts.get("channels") or {}).items():
        held = held_channels.get(channel)
        if held is None:
            continue
        card_rule = evidence.EvidenceRule.from_dict((card_info or {}).get("rule"))
        rule = card_rule
        if channel in adapted:
            rule = replace(card_rule, reference=max(card_rule.reference, evidence.reference_from_normal(held)))
        peak = _evidence_peak(held, rule, hop_s)
        rules[channel] = replace(rule, threshold=max(card_rule.threshold, PEAK_MARGIN * peak))
        info[channel] = {
            "card_level": card_rule.threshold,
            "held_apart_evidence_peak": peak,
            "site_level": rules[channel].threshold,
            "card_reference": card_rule.reference,
            "site_reference": rule.reference,
        }
        if channel in adapted and model_channels and channel in model_channels:
            info[channel]["model_windows_above_threshold"] = float((model_channels[channel] >= 1.0).mean())
    return rules, ({"channel_levels": info} if info else {})


def _known_faults_at_site(card: dict, probabilities, held_blocks, hop_s: float) -> tuple[bool, dict]:
    """(known-fault alerts off at this site?, what that rests on). The head was trained on recordings made
    elsewhere; in a room it finds odd it may call normal running a fault outright (bench/alerts.py's odd
    site: fault odds of 6 to 34 on normal running, 3 false known-fault alerts per hour, which raising the
    rule's reference and level could not stop). When the card's known-fault rule, replayed over the
    held-apart normal audio, reaches its alert level, the head cannot be trusted here: known-fault alerts
    are turned off for the site (the anomaly score still alerts, and the site file and console say so)."""
    from .live.decisions import KNOWN_FAULT_DEFAULTS, anomalous_labels, fault_odds

    labels = list(card.get("labels") or [])
    fault_index = [labels.index(label) for label in anomalous_labels(card) if label in labels]
    probabilities = np.asarray(probabilities, np.float64)
    if not fault_index or probabilities.ndim != 2 or probabilities.shape[1] != len(labels):
        return False, {}
    rule = evidence.EvidenceRule.from_dict(
        ((card.get("alerts") or {}).get("known_fault") or {}).get("rule") or KNOWN_FAULT_DEFAULTS
    )
    odds = [np.array([fault_odds(p, fault_index) for p in probabilities[i]]) for i in held_blocks]
    peak = _evidence_peak(odds, rule, hop_s)
    off = peak >= rule.threshold
    return off, {"known_fault": {"alert_level": rule.threshold, "held_apart_evidence_peak": peak, "off": off}}


def describe(site_model: SiteModel) -> str:
    i = site_model.info
    h = i.get("held_apart", {})
    levels = i.get("channel_levels") if isinstance(i.get("channel_levels"), dict) else {}
    return (
        f"site calibration: {i.get('seconds', 0):.0f} s enrolled ({i.get('reference_windows')} reference, "
        f"{i.get('held_apart_windows')} held-apart windows); held-apart windows above the threshold "
        f"{h.get('windows_above_threshold_before', 0):.1%} -> {h.get('windows_above_threshold_after', 0):.1%}, "
        f"evidence peak {h.get('evidence_peak_before', 0):.2f} -> {h.get('evidence_peak_after', 0):.2f}; alert "
        f"threshold {i.get('card_threshold', 0):.3g} -> {site_model.rule.threshold:.3g}; expected false alerts "
        f"per day from the score {_f(i.get('expected_false_alerts_per_day_card'))} (model card), site bound "
        f"{_f(i.get('expected_false_alerts_per_day_site_bound'))} from {60 * (i.get('site_bound_hours') or 0):.1f}"
        " min held apart"
        + (
            "; KNOWN-FAULT ALERTS OFF at this site: the head calls its normal running a fault (known-fault "
            f"evidence {i['known_fault']['held_apart_evidence_peak']:.3g} on the held-apart audio, alert level "
            f"{i['known_fault']['alert_level']:.3g}); the anomaly score still alerts"
            if site_model.known_faults_off and i.get("known_fault")
            else ""
        )
        + "".join(
            f"; the model's {channel_label(ch)} channel found {c['model_windows_above_threshold']:.0%} of the "
            "enrollment windows anomalous: a room unlike the training recordings (refitted here), or a fault "
            "already present"
            for ch, c in levels.items()
            if isinstance(c, dict) and (c.get("model_windows_above_threshold") or 0) > ANOMALOUS_SHARE
        )
        + "".join(
            f"; {channel_label(ch).upper()} CHANNEL'S ALERT LEVEL RAISED at this site: {_f(c.get('card_level'))} -> "
            f"{_f(c.get('site_level'))} (its evidence reached {_f(c.get('held_apart_evidence_peak'))} on the "
            "held-apart audio: "
            + (
                "this room has a beat of its own, or the machine already has a fault)"
                if ch in ROOM_INVARIANT_CHANNELS
                else "this room's normal sound varies more than the enrolled part showed, or the machine "
                "already has a fault)"
            )
            for ch, c in levels.items()
            if isinstance(c, dict) and (c.get("site_level") or 0) > (c.get("card_level") or 0)
        )
    )


def _f(value) -> str:
    return "?" if value is None else f"{value:.2g}"
