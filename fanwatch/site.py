"""On-site enrollment: adapt a trained model to the room and microphone it listens in, with numpy alone.

A Pi hears its fan in its own room through its own microphone; the training recordings were made elsewhere.
``inference.py --enroll SECONDS`` listens to normal running (in memory only) and

1. splits the enrollment windows into 10 s blocks, two of every three kept as the site's **reference** and
   the third **held apart** (the window straddling a block boundary is dropped: windows overlap by half);
2. adds the reference windows' embeddings as the site's normal: the site score of a window is the mean
   cosine distance to its ``K`` nearest site embeddings (the model's own k-NN score, against the site's
   audio), its per-window threshold the ``1 - false alarm rate`` quantile of a log-normal fitted to the
   held-apart windows' site scores (never below the largest of them);
3. combines the two: the window's ratio is the geometric mean ``sqrt(model ratio * site ratio)``, both
   opinions weighted alike: a sound like the enrolled normal running is pulled down where the model finds it
   unusual, a sound unlike both (a fault) stays high, and the site's tighter picture of its own normal sound
   sharpens detection. Measured in ``bench/alerts.py`` (2 min enrolled, 1 h of normal audio and 60 faults
   in each of 4 recording sessions, the card's rule): unknown-anomaly alerts within 15 s rose from
   63/68/43/52 % to 87/83/43/63 % with no false alert, where ``min(model, site)`` lost detections
   (63/67/38/52 %) and the site ratio alone raised 5 false alerts in an hour; 1 min enrolled raised 2 and 3
   false alerts in an hour in two sessions, hence the 2 min minimum;
4. recalibrates the alert rule on the held-apart audio with the combined ratio: the threshold is the
   model card's, raised if the held-apart evidence comes near it; the site's own tail bound (from far less
   audio than the card's) is reported beside the card's expected false alerts per day.

It writes ``site_calibration.json`` (settings, figures, the model's sha256) and ``site_calibration.npz``
(the reference embeddings, no pickle) beside the model. A site file made for another model (sha256) is
refused. ``SiteScorer`` is the small interface a scorer offers for this (``fit`` on the site's normal
embeddings, ``score`` windows); :class:`KnnSiteScorer` is the k-NN one.

Runtime module: numpy and the standard library.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

import numpy as np

from . import config, evidence
from .errors import FanwatchError

SITE_FORMAT = "fanwatch-site/1"
SITE_JSON = "site_calibration.json"
SITE_NPZ = "site_calibration.npz"
MIN_SECONDS = 120.0  # shorter is refused unless forced: 1 min raised 2-3 false alerts/h in bench/alerts.py
ABSOLUTE_MIN_SECONDS = 20.0  # never, even forced: too few windows for a site picture
BLOCK_WINDOWS = 20  # 10 s blocks at the 0.5 s hop
SILENT_RMS = 10 ** (-70 / 20)  # below -70 dBFS the input is silent (a muted or unplugged microphone)
ANOMALOUS_SHARE = 0.5  # refuse when more than half of the windows are anomalous or a known fault
KNN_K = 5
PEAK_MARGIN = 1.5  # the site threshold stays this far above the held-apart evidence peak


class SiteScorer(Protocol):
    """What a scorer offers to be extended with a site's normal audio (numpy only, on the Pi)."""

    def fit(self, embeddings: np.ndarray) -> None: ...

    def score(self, embeddings: np.ndarray) -> np.ndarray: ...


class KnnSiteScorer:
    """Mean cosine distance to the K nearest site embeddings (fanwatch's k-NN score, against the site)."""

    def __init__(self, k: int = KNN_K):
        self.k = k
        self.bank = np.zeros((0, config.EMBEDDING_DIM), np.float32)

    def fit(self, embeddings: np.ndarray) -> None:
        e = np.asarray(embeddings, np.float32)
        self.bank = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
        if len(self.bank) < self.k:
            raise FanwatchError(f"enrollment needs at least {self.k} reference windows, got {len(self.bank)}")

    def score(self, embeddings: np.ndarray) -> np.ndarray:
        e = np.atleast_2d(np.asarray(embeddings, np.float32))
        unit = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
        sims = unit @ self.bank.T
        top = -np.partition(-sims, self.k - 1, axis=1)[:, : self.k]
        return (1.0 - top.mean(axis=1)).astype(np.float64)


@dataclass
class SiteModel:
    """A site calibration: the site's scorer, its per-window threshold, the recalibrated alert rule."""

    scorer: KnnSiteScorer
    threshold: float  # per-window site score threshold
    rule: evidence.EvidenceRule
    model_sha256: str
    info: dict = field(default_factory=dict)

    def site_ratios(self, embeddings: np.ndarray) -> np.ndarray:
        return self.scorer.score(embeddings) / self.threshold

    def adjust(self, embedding, model_ratio: float) -> float:
        """The combined per-window ratio: sqrt(model ratio * site ratio)."""
        if embedding is None:
            return model_ratio
        return float(self.adjust_many(embedding, np.asarray([model_ratio]))[0])

    def adjust_many(self, embeddings: np.ndarray, model_ratios: np.ndarray) -> np.ndarray:
        model = np.maximum(np.asarray(model_ratios, np.float64), 0.0)
        return np.sqrt(model * self.site_ratios(embeddings))

    # -- files ---------------------------------------------------------------------------------
    def save(self, model_path: str | Path) -> tuple[Path, Path]:
        folder = Path(model_path).parent
        json_path, npz_path = folder / SITE_JSON, folder / SITE_NPZ
        doc = {
            "format": SITE_FORMAT,
            "model": Path(model_path).name,
            "model_sha256": self.model_sha256,
            "site_threshold": self.threshold,
            "k": self.scorer.k,
            "rule": self.rule.to_dict(),
            **self.info,
        }
        try:
            tmp = npz_path.with_name(npz_path.name + ".tmp.npz")
            np.savez(tmp, bank=self.scorer.bank.astype(np.float32))
            tmp.replace(npz_path)
            tmp = json_path.with_name(json_path.name + ".tmp")
            tmp.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
            tmp.replace(json_path)
        except OSError as exc:
            raise FanwatchError(
                f"cannot write the site calibration beside the model in {folder}: {exc.strerror or exc}"
            ) from None
        return json_path, npz_path


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
        if not isinstance(doc, dict) or doc.get("format") != SITE_FORMAT:
            raise ValueError("not a fanwatch site calibration")
        with np.load(npz_path, allow_pickle=False) as z:
            bank = np.asarray(z["bank"], np.float32)
        threshold = float(doc["site_threshold"])
        k = int(doc.get("k", KNN_K))
        if bank.ndim != 2 or len(bank) < k or not (threshold > 0 and math.isfinite(threshold)):
            raise ValueError("bad reference embeddings or threshold")
    except FileNotFoundError:
        raise FanwatchError(
            f"{json_path}: its reference embeddings {npz_path.name} are missing; enroll again or pass --no-site"
        ) from None
    except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError) as exc:
        raise FanwatchError(
            f"{json_path}: unreadable site calibration ({exc}); enroll again or pass --no-site"
        ) from None
    sha = model_sha256 or config.sha256_file(model_path)
    if doc.get("model_sha256") != sha:
        raise FanwatchError(
            f"{json_path} was made for another model (sha256 {str(doc.get('model_sha256'))[:12]}, "
            f"this one is {sha[:12]}); enroll again or pass --no-site"
        )
    scorer = KnnSiteScorer(k)
    scorer.bank = bank
    info = {
        key: v
        for key, v in doc.items()
        if key not in ("format", "model", "model_sha256", "site_threshold", "k", "rule")
    }
    return SiteModel(scorer, threshold, evidence.EvidenceRule.from_dict(doc.get("rule")), sha, info)


# --------------------------------------------------------------------------------------------------
# enrollment


def split_blocks(n: int, block: int = BLOCK_WINDOWS) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(reference blocks, held-apart blocks) of window indices: of every three blocks the third is held
    apart; each block's last window, which overlaps the next block's audio, is dropped."""
    ref, held = [], []
    for b, start in enumerate(range(0, n, block)):
        idx = np.arange(start, min(start + block, n))
        if start + block < n:
            idx = idx[:-1]
        if len(idx) == 0:
            continue
        (held if b % 3 == 2 else ref).append(idx)
    if not held and len(ref) > 1:  # short enrollment: hold the last block apart anyway
        held.append(ref.pop())
    return ref, held


def lognormal_quantile(values: np.ndarray, q: float) -> float:
    v = np.log(np.maximum(np.asarray(values, np.float64), 1e-12))
    return float(math.exp(v.mean() + evidence._normal_quantile(q) * (v.std(ddof=1) if len(v) > 1 else 0.0)))


def enroll(
    classifier,
    embeddings: np.ndarray,
    model_ratios: np.ndarray,
    probabilities: np.ndarray,
    rms: float,
    model_sha256: str,
    force: bool = False,
    hop_s: float = config.HOP_SECONDS,
    source: str = "",
) -> SiteModel:
    """A site calibration from the enrollment windows (outputs of the deployed model on normal running).

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
            + ("" if force else " (--force to enroll from less; 1 min was measured to raise false alerts)")
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
    scorer = KnnSiteScorer()
    scorer.fit(embeddings[ref_idx])
    held_scores = [scorer.score(embeddings[idx]) for idx in held_blocks]
    pooled = np.concatenate(held_scores)
    rate = float((card.get("anomaly") or {}).get("target_false_alarm_rate", 0.01))
    site_threshold = max(lognormal_quantile(pooled, 1.0 - rate), float(pooled.max()))
    held_ratios = [
        np.sqrt(np.maximum(model_ratios[idx], 0.0) * s / site_threshold) for idx, s in zip(held_blocks, held_scores)
    ]
    alerts = card.get("alerts") or {}
    card_rule = evidence.EvidenceRule.from_dict(alerts.get("rule"))
    card_cal = alerts.get("calibration") or {}
    target = float(card_cal.get("target_false_alerts_per_day", evidence.DEFAULT_FALSE_ALERTS_PER_DAY))
    peak = max(float(evidence.evidence_series(r, replace(card_rule, threshold=1e9), hop_s).max()) for r in held_ratios)
    threshold = max(card_rule.threshold, PEAK_MARGIN * peak)
    rule = replace(card_rule, threshold=threshold)
    tail = evidence.tail_bound(held_ratios, rule, hop_s)
    before = [model_ratios[idx] for idx in held_blocks]
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
            "evidence_peak_before": max(
                float(evidence.evidence_series(r, replace(card_rule, threshold=1e9), hop_s).max()) for r in before
            ),
            "evidence_peak_after": peak,
        },
        "expected_false_alerts_per_day_card": card_cal.get("expected_false_alerts_per_day"),
        "expected_false_alerts_per_day_site_bound": evidence._round(evidence.rate_per_day(tail, threshold, True)),
        "site_bound_hours": evidence._round(tail["hours"]),
        "target_false_alerts_per_day": target,
    }
    return SiteModel(scorer, site_threshold, rule, model_sha256, info)


def describe(site_model: SiteModel) -> str:
    i = site_model.info
    h = i.get("held_apart", {})
    return (
        f"site calibration: {i.get('seconds', 0):.0f} s enrolled ({i.get('reference_windows')} reference, "
        f"{i.get('held_apart_windows')} held-apart windows); held-apart windows above the threshold "
        f"{h.get('windows_above_threshold_before', 0):.1%} -> {h.get('windows_above_threshold_after', 0):.1%}, "
        f"evidence peak {h.get('evidence_peak_before', 0):.2f} -> {h.get('evidence_peak_after', 0):.2f}; alert "
        f"threshold {i.get('card_threshold', 0):.3g} -> {site_model.rule.threshold:.3g}; expected false alerts "
        f"per day {_f(i.get('expected_false_alerts_per_day_card'))} (model card), site bound "
        f"{_f(i.get('expected_false_alerts_per_day_site_bound'))} from {60 * (i.get('site_bound_hours') or 0):.1f}"
        " min held apart"
    )


def _f(value) -> str:
    return "?" if value is None else f"{value:.2g}"
