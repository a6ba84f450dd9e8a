"""The deployed anomaly score: YAMNet embedding and spectral shape together, over a few seconds (numpy only).

The model outputs, per 0.975 s window, the 1024-d YAMNet ``embedding`` and the ``band_levels`` its own
front end computed (:mod:`fanwatch.spectral`). This module turns them into one fused anomaly score per
window, per machine, plus one score per side channel (below), fitted on normal recordings only. It runs
on the Pi (numpy, no TensorFlow, scipy or scikit-learn) and in evaluation through the same code path, so
what is evaluated is what runs.

Components (each a k = 5 nearest-neighbour distance to that machine's normal training windows):

``embedding``
    mean cosine distance of the window's embedding to the 5 nearest normal embeddings (a seeded bank
    of at most 1024 windows), its median over the last ``horizon`` windows.
``shape``
    the spectral shape: log power of the 64 linear bands minus its mean over the bands (so the
    microphone gain and overall level cancel), its median over the last ``horizon`` windows, z-scored per
    band on the normal training windows (standard deviation floored at 0.1, about 0.4 dB, so a band that
    never moves in training cannot dominate), mean Euclidean distance to the 5 nearest.
``fluctuation`` (an option, off by default; ``train.py --score embedding:4,shape:2,fluctuation:1``)
    how unsteady each of the 64 linear bands is within the window: the standard deviation over its 96
    frames of the band's log power (:mod:`fanwatch.spectral`), its median over the last ``horizon``
    windows, z-scored per band (floor 0.05), mean Euclidean distance to the 5 nearest. A gain or a smooth
    colouring of the microphone adds a constant to a band's log power and leaves its spread alone; an
    imbalance (modulation at the shaft rate), a rub or a bearing defect (bursts) raise it.
``modulation``
    the shape of the window's modulation spectrum (:mod:`fanwatch.spectral`: how the log power of 8 groups
    of 1 kHz swings at 3-49 Hz over the window's 96 frames) minus its median over the modulation
    frequencies, its median over the last ``horizon`` windows, z-scored (floor 0.1), mean Euclidean distance
    to the 5 nearest. A fault that modulates the sound at the shaft rate puts a peak there; the microphone's
    gain or colouring moves nothing, and more background noise lowers the peak without moving the floor.
``modulation_peak`` (the default **side channel**, ``train.py --score-channels modulation_peak``)
    the same rows, z-scored with a floor of 0.2 (about 0.9 dB), but scored by how far the window **rises
    above** its 5 nearest normal rows where it rises most: the mean over those rows of
    ``max(0, max_j(x_j - r_j))``. A fault's modulation is a peak at one or two frequencies (the shaft rate,
    its harmonics); a Euclidean distance spreads it over the normal scatter of all 45 frequencies, this counts
    it in full, and less modulation than normal (more masking noise, a quieter machine) counts nothing (so a
    fault that *removes* a modulation is left to the fused score). On ``bench/alerts.py``'s streams it alerted
    on weak imbalances in a loud room and beside a new hum where the Euclidean ``modulation`` channel (the
    default before it) stayed at 0.55-0.8 of its threshold. The floor, chosen on the same benches it is
    reported on: with 0.1 a reference of one clip of another unit (``bench/anomaly_methods.py``'s MIMII pump)
    made normal windows rise at single frequencies (window AUC 0.945, against 0.960 with 0.2 and 0.983 with
    the Euclidean channel); 0.3 cost the MIMII valve (window AUC 0.543, against 0.602 with 0.2 and 0.647
    with the Euclidean channel). It cannot be a weight of the fused score (it is 0 on most normal windows).
``embedding`` as a **side channel** (default beside ``modulation_peak``: ``--score-channels
modulation_peak,embedding``)
    the embedding component over its scale, on its own with its own threshold, while the fused score keeps
    weighing it with the shape. On the real fan (``bench/anomaly_methods.py``, dcase2020 id_00) the embedding
    alone separated the fault best (window AUC 1.000, the fused score 0.996) and the deployed combination
    with the modulation peak alone fell behind two baselines (0.979 against loudness 0.986, YAMNet k-NN
    0.990); with the embedding channel it is 0.994. A room and a microphone move it, so a site calibration
    refits it as it refits the fused score (:mod:`fanwatch.site`).
``level`` and ``bands`` (options, off by default)
    the window level in dB (std floored at 1 dB), and the absolute band log powers plus level.

**Side channels** (``ScoreConfig.channels``) are components scored on their own beside the fused score, each
divided by its scale and with its own per-machine threshold from the same validation recordings; the live
loop keeps one alert evidence for the fused score and one for each channel, and either raises the
unknown-anomaly alert (:mod:`fanwatch.live.decisions`, calibrated per day with the target shared out,
:func:`fanwatch.training.calibrate_alerts`). Why a channel and not a weight: a fault that shows in one
component only (an imbalance: the Euclidean modulation distance at 1.0-1.4 of its scale where normal running
stays at 0.55-0.63, while the embedding and the shape stay at their normal 0.4-0.6) is diluted by a geometric
mean (its log counts by its weight) and, in a maximum over components, by the tail of the other components;
its own CUSUM sums it at full strength. Measured when the channel was introduced (the Euclidean
``modulation`` channel, ``bench/alerts.py``, each rule calibrated on the same validation audio for its share
of the target): alerted within 15 s on 68-82 % of the faults of the four sessions, against 43-62 % with the
fused score alone, 58-72 % with the modulation at a quarter of the weight in the geometric mean and 55-82 %
with one CUSUM over the larger of the two ratios. As a weight the modulation also cost the MIMII pump's
window AUC (0.983 -> 0.78 at a quarter), as a channel nothing. Today's figures (the ``modulation_peak``
channel, 95-100 % within 15 s) are in the README.

Each component is divided by its scale, the 95th percentile of its scores on the machine's normal
training windows computed leave-one-file-out (each file against the others), so 1 means "as far as
another normal recording"; the components are combined as a weighted geometric mean (default weights
embedding 2/3, shape 1/3; the fluctuation is an option, below). Thresholds: per machine, from the
combined scores of normal validation recordings only (a gamma distribution's 1 - rate quantile,
method of moments, numpy; at least ``MIN_THRESHOLD``), never from anomalous audio.
The window record's ``anomaly`` is score / threshold, 1.0 = the per-window threshold.

Why this one (``bench/anomaly_methods.py``, synthetic recording sessions with a test day never heard in
training, 2 seeds x 2 machines at +6 and 0 dB, and the real sets in ../shared/realdata): absolute
spectra (the long-term-average-spectrum baseline, absolute band k-NN, level) were near chance across
sessions, because a 1-2 dB change of microphone gain or room moves every band together and the
z-scored distance adds it up over 64 bands; the spectral *shape* cancels the gain and kept most of
what the spectrum knows. The embedding alone was the best single component on the real clips; an
arithmetic mean with the shape lost where the shape is misled (a reference from another unit, the
MIMII leave-one-out sets), the geometric mean did not (a component far off counts by its logarithm).
A horizon of 8 windows (4.5 s) raised window-level AUC to about the file level at no file-level cost;
16 gave no more. The fluctuation came last: the synthetic imbalance and rub (a modulation at the shaft
rate, bursts once per revolution) barely move the mean spectrum or the embedding, and were the faults the
score missed on streams of unheard recording sessions (``bench/alerts.py``); alone it separated them best
of all components there (window AUC imbalance 0.79-0.98, rub 0.98-0.99, against 0.38-0.56 and 0.59-0.83
for the shape). With a seventh of the weight (the largest that kept every file AUC of the real sets: a
quarter dropped the MIMII pump's leave-one-out file AUC from 1.0 to 0.5) the score alone alerted within 15 s
on 50-67 % of the faults instead of 45-62 %, and the real fan's (dcase id_00) window AUC rose to 1.000. It
is not the default because it also moves with the background's level, which a gain does not: a session with
a quieter room raised one false alert in 4 h where the default raised none, and the test scene whose normal
part has another signal-to-noise ratio than its training files (tests/conftest.py ``scene``) no longer
separated normal from imbalance by the margin the loop tests need. A level-robust form (e.g. relative to the
band's own noise floor, or enrolled per site) is the next step. The measured tables and the commands are in the README.

Machines the model does not know: scored against the *pooled* normal reference of all known machines
(``POOLED``: the union of their normal windows, its own scales and its own threshold from all
validation normals). The earlier rule, the smallest score/threshold over the known machines, let an
unknown machine's fault hide behind whichever known machine it happened to resemble, or behind the one
with the loosest threshold; the pooled reference has one scale and one threshold, so a sound unlike
every known normal sound scores high (an unknown machine may raise false alarms until it is enrolled;
it never has its faults explained away).

Enrollment API (on the Pi, numpy only; the alerts helper builds the site workflow on it)::

    scorer = Scorer.load(path)                       # the state train.py wrote beside the model
    files = [(embeddings, band_levels), ...]          # per enrollment recording, the model's outputs
    enrolled = scorer.with_references("fan/site", files)            # add (or create) normal references
    enrolled = enrolled.with_threshold("fan/site", held_apart_files)  # re-set the per-window threshold
    enrolled.save(path2)
    stream = enrolled.stream("fan/site"); ratio = stream.update(embedding, band_levels) / threshold

``with_references`` keeps the machine's training references unless ``replace=True``, recomputes the
z-scoring and the leave-one-file-out scales over all of them and keeps the old threshold until
``with_threshold`` sets one from recordings held apart from the references (a threshold on the
references themselves would be too low). Both return new scorers; a scorer is never changed in place.
"""

from __future__ import annotations

import json
import math
from collections import deque
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from statistics import NormalDist

import numpy as np

from . import config, spectral
from .errors import FanwatchError

COMPONENTS = ("embedding", "shape", "fluctuation", "modulation", "modulation_peak", "level", "bands")
DEFAULT_WEIGHTS = {"embedding": 2.0 / 3.0, "shape": 1.0 / 3.0}
DEFAULT_HORIZON = 8  # windows: 8 x 0.5 s hop + 0.975 s = 4.5 s of audio
KNN_K = 5
EMBEDDING_BANK = 1024
FEATURE_BANK = 4096
STD_FLOOR = {"shape": 0.1, "fluctuation": 0.05, "modulation": 0.1, "modulation_peak": 0.2, "level": 1.0, "bands": 0.1}
# what a side channel is called where a person reads it (the console, the site summary); JSON keeps the id
CHANNEL_LABELS = {
    "modulation_peak": "modulation-peak (a new beat in the sound)",
    "modulation": "modulation (the beat pattern of the sound)",
    "embedding": "embedding (what the sound is like)",
    "shape": "spectral-shape",
    "fluctuation": "band-fluctuation",
    "level": "loudness",
    "bands": "band-level",
}
SCALE_QUANTILE = 0.95
POOLED = "*pooled*"
FORMAT = "fanwatch-scorer/1"
UNKNOWN_MACHINE_RULE = (
    "a recording of a machine the model does not know is scored against the pooled normal "
    "reference of all known machines, with its own threshold (never the closest known machine)"
)
MIN_WINDOWS_FOR_GAMMA = 20
# the smallest threshold (in scale units, 1 = as far as another normal recording): a one-sided channel such as
# modulation_peak can score exactly 0 on every validation window, and a ratio to a 0 threshold means nothing
MIN_THRESHOLD = 1e-3
DEFAULT_FALSE_ALARM_RATE = 0.01

FileFeatures = tuple[np.ndarray, np.ndarray]  # ([n, 1024] embeddings, [n, BAND_FEATURES] band levels)


@dataclass(frozen=True)
class ScoreConfig:
    weights: dict = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))  # component -> weight (sum 1)
    horizon: int = DEFAULT_HORIZON
    k: int = KNN_K
    # side channels: components scored on their own, each with its own threshold (and, in the live loop, its
    # own alert evidence), beside the fused score of ``weights``; train.py's default is ("modulation_peak", "embedding")
    channels: tuple = ()

    def __post_init__(self):
        bad = [c for c in self.weights if c not in COMPONENTS]
        if bad or not self.weights or any(w <= 0 for w in self.weights.values()):
            raise FanwatchError(
                f"score components must be some of {', '.join(COMPONENTS)} with positive weights, not {self.weights}"
            )
        if "modulation_peak" in self.weights and len(self.weights) > 1:
            raise FanwatchError(
                "modulation_peak is 0 on most normal windows, which would take a geometric mean with other "
                "components to 0: use it as a side channel (train.py --score-channels modulation_peak) or alone"
            )
        if not isinstance(self.horizon, int) or self.horizon < 1 or self.k < 1:
            raise FanwatchError(f"score horizon and k must be at least 1 (horizon {self.horizon}, k {self.k})")
        object.__setattr__(self, "channels", tuple(self.channels))
        bad = [c for c in self.channels if c not in COMPONENTS]
        if bad or len(set(self.channels)) != len(self.channels):
            raise FanwatchError(
                f"score side channels must be distinct components ({', '.join(COMPONENTS)}), "
                f"not {', '.join(self.channels)}"
            )

    @property
    def components(self) -> tuple[str, ...]:
        """Every component the references keep: the fused score's and the side channels'."""
        return tuple(c for c in COMPONENTS if c in self.weights or c in self.channels)

    @property
    def fused(self) -> tuple[str, ...]:
        return tuple(c for c in COMPONENTS if c in self.weights)

    def as_dict(self) -> dict:
        total = sum(self.weights.values())
        return {
            "weights": {c: self.weights[c] / total for c in self.fused},
            "horizon": self.horizon,
            "k": self.k,
            "channels": list(self.channels),
        }


def channel_label(channel: str) -> str:
    """'modulation_peak' -> 'modulation-peak (a new beat in the sound)': a side channel's name for people."""
    return CHANNEL_LABELS.get(channel, channel)


def parse_channels(text: str) -> tuple[str, ...]:
    """'modulation_peak' or 'modulation_peak,fluctuation' -> side channels; '' or 'none' -> none."""
    names = tuple(p.strip() for p in str(text).split(",") if p.strip() and p.strip().lower() != "none")
    ScoreConfig(weights={"embedding": 1.0}, channels=names)  # the names alone (training checks the overlap)
    return names


def parse_components(text: str) -> dict:
    """'embedding:2,shape:1' or 'embedding,shape' (equal weights) -> weights dict."""
    out = {}
    for part in str(text).split(","):
        name, _, weight = part.strip().partition(":")
        if not name:
            continue
        try:
            out[name] = float(weight) if weight else 1.0
        except ValueError:
            raise FanwatchError(f"bad score component weight in {text!r} (use e.g. embedding:2,shape:1)") from None
    ScoreConfig(weights=out)
    return out


def features(component: str, bands: np.ndarray) -> np.ndarray:
    """[n, d] per-window features of a band-based component from [n, BAND_FEATURES] band levels."""
    b = np.asarray(bands, np.float64)
    lin = b[:, spectral.LINEAR_SLICE]
    if component == "shape":
        return lin - lin.mean(axis=1, keepdims=True)
    if component == "fluctuation":
        if b.shape[1] < spectral.FLUCTUATION_SLICE.stop:
            raise FanwatchError(
                "this model gives no band fluctuation (exported by an older fanwatch): retrain it, "
                "or choose score components without 'fluctuation'"
            )
        return b[:, spectral.FLUCTUATION_SLICE]
    if component in ("modulation", "modulation_peak"):
        if b.shape[1] < spectral.MODULATION_SLICE.stop:
            raise FanwatchError(
                "this model gives no modulation spectrum (exported by an older fanwatch): retrain it, "
                f"or leave '{component}' out of train.py's --score and --score-channels (--score-channels none)"
            )
        m = b[:, spectral.MODULATION_SLICE]
        return m - np.median(m, axis=1, keepdims=True)  # its shape: the level of the floor moves with the SNR
    if component == "level":
        return b[:, spectral.LEVEL_INDEX : spectral.LEVEL_INDEX + 1]
    if component == "bands":
        return np.concatenate([lin, b[:, spectral.LEVEL_INDEX : spectral.LEVEL_INDEX + 1]], axis=1)
    raise FanwatchError(f"no band features for component {component!r}")


def running_median(x: np.ndarray, horizon: int) -> np.ndarray:
    """Causal median over the last ``horizon`` rows (fewer at the start), rows in order, per column.

    A median, not a mean: one odd window (a start-up glitch of the sound card, a door slam) then moves
    none of the next ``horizon`` scores once three windows are in the horizon."""
    x = np.asarray(x, np.float64)
    return (
        np.stack([np.median(x[max(0, i + 1 - horizon) : i + 1], axis=0) for i in range(len(x))]) if len(x) else x.copy()
    )


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _mean_allowed(top: np.ndarray) -> np.ndarray:
    """Row means of the k nearest values over the finite ones only: with fewer than k rows allowed (a small
    other file in the leave-one-file-out scores), an excluded row is not a neighbour (inf if none is allowed)."""
    ok = np.isfinite(top)
    n = ok.sum(axis=1)
    return np.where(n > 0, np.where(ok, top, 0.0).sum(axis=1) / np.maximum(n, 1), np.inf)


def _knn_cosine(bank: np.ndarray, queries: np.ndarray, k: int, exclude: np.ndarray | None = None) -> np.ndarray:
    """Mean cosine distance to the k nearest bank rows (rows unit-norm); exclude: [n_q, n_bank] mask."""
    d = 1.0 - _unit(queries) @ bank.T
    if exclude is not None:
        d = np.where(exclude, np.inf, d)
    return _mean_allowed(np.sort(d, axis=1)[:, : min(k, bank.shape[0])])


def _knn_euclid(bank: np.ndarray, queries: np.ndarray, k: int, exclude: np.ndarray | None = None) -> np.ndarray:
    q = np.asarray(queries, np.float64)
    d2 = (q * q).sum(1)[:, None] + (bank * bank).sum(1)[None, :] - 2.0 * q @ bank.T
    d = np.sqrt(np.maximum(d2, 0.0))
    if exclude is not None:
        d = np.where(exclude, np.inf, d)
    return _mean_allowed(np.sort(d, axis=1)[:, : min(k, bank.shape[0])])


def _knn_peak(bank: np.ndarray, queries: np.ndarray, k: int, exclude: np.ndarray | None = None) -> np.ndarray:
    """How far each query rises above its k nearest bank rows (Euclidean) where it rises most: the mean over
    those rows of ``max(0, max_j(query_j - row_j))``. One-sided and per feature: a new peak in one or two
    modulation frequencies counts in full (a Euclidean distance spreads it over all of them), and less
    modulation than normal (a quieter machine, more masking noise) counts nothing."""
    q = np.asarray(queries, np.float64)
    d2 = (q * q).sum(1)[:, None] + (bank * bank).sum(1)[None, :] - 2.0 * q @ bank.T
    if exclude is not None:
        d2 = np.where(exclude, np.inf, d2)
    k = min(k, bank.shape[0])
    nearest = np.argpartition(d2, k - 1, axis=1)[:, :k] if k < d2.shape[1] else np.argsort(d2, axis=1)  # [n, k]
    rise = np.maximum((q[:, None, :] - np.asarray(bank, np.float64)[nearest]).max(axis=2), 0.0)
    allowed = np.isfinite(np.take_along_axis(d2, nearest, axis=1))  # fewer than k allowed rows: those only
    return _mean_allowed(np.where(allowed, rise, np.inf))


def _band_distance(component: str, bank: np.ndarray, queries: np.ndarray, k: int, exclude=None) -> np.ndarray:
    """The k-NN distance a band component is scored with (z-scored rows)."""
    if component == "modulation_peak":
        return _knn_peak(bank, queries, k, exclude)
    return _knn_euclid(bank, queries, k, exclude)


@dataclass(frozen=True)
class Reference:
    """One machine's (or the pooled) normal references, with the file each row came from."""

    embeddings: np.ndarray  # [n, 1024] unit-norm float32
    embedding_files: np.ndarray  # [n] int, file id of each row
    feature_rows: dict  # component -> [m, d] horizon-averaged features (not z-scored), float32
    feature_files: np.ndarray  # [m] int
    mean: dict  # component -> [d]
    std: dict  # component -> [d]
    scales: dict  # component -> float
    files: int

    def z(self, component: str, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, np.float64) - self.mean[component]) / self.std[component]

    @cached_property
    def bank(self) -> np.ndarray:
        """The embedding references in float64 (converted once; float32 products of one row and of a batch
        differ by 1e-5 relative in a cosine distance near 0, which would break stream/file parity)."""
        return self.embeddings.astype(np.float64)

    @cached_property
    def z_rows(self) -> dict:
        """component -> the z-scored reference rows (computed once)."""
        return {c: self.z(c, r) for c, r in self.feature_rows.items()}


def _file_rows(files: list[FileFeatures], component: str, horizon: int) -> list[np.ndarray]:
    return [running_median(features(component, b), horizon) for _, b in files]


def _subsample(n: int, limit: int, rng: np.random.Generator) -> np.ndarray:
    return np.arange(n) if n <= limit else np.sort(rng.choice(n, limit, replace=False))


def _build_reference(emb_rows, emb_files, feat_rows, feat_files, cfg: ScoreConfig, n_files: int) -> Reference:
    """Statistics and leave-one-file-out scales of a set of reference rows."""
    mean, std = {}, {}
    for c, rows in feat_rows.items():
        mean[c] = rows.mean(axis=0)
        std[c] = np.maximum(rows.std(axis=0), STD_FLOOR[c])
    ref = Reference(
        embeddings=emb_rows.astype(np.float32),
        embedding_files=emb_files.astype(np.int64),
        feature_rows={c: r.astype(np.float32) for c, r in feat_rows.items()},
        feature_files=feat_files.astype(np.int64),
        mean=mean,
        std=std,
        scales={},
        files=int(n_files),
    )
    scales = {}
    for c in cfg.components:
        raw = _lofo_scores(ref, c, cfg)
        scale = float(np.quantile(raw, SCALE_QUANTILE)) if len(raw) else 1.0
        scales[c] = scale if np.isfinite(scale) and scale > 1e-9 else 1.0
    return replace(ref, scales=scales)


def _lofo_scores(ref: Reference, component: str, cfg: ScoreConfig) -> np.ndarray:
    """Scores of the reference rows against the rows of the other files (one file: the other half of it)."""
    if component == "embedding":
        files, rows = ref.embedding_files, ref.bank
    else:
        files, rows = ref.feature_files, ref.z_rows[component]
    ids = np.unique(files)
    if len(ids) < 2:  # one file: its first half against its second half and back
        half = np.arange(len(files)) >= len(files) // 2
        files = half.astype(np.int64)
        if len(np.unique(files)) < 2:
            return np.zeros(0)
    exclude = files[:, None] == files[None, :]
    if component == "embedding":
        return _knn_cosine(rows, rows, cfg.k, exclude)
    return _band_distance(component, rows, rows, cfg.k, exclude)


def _gamma_quantile(scores: np.ndarray, q: float) -> tuple[float, str]:
    """(threshold, rule): a gamma distribution's q quantile (method of moments, location just below the
    smallest score, Wilson-Hilferty quantile), else the empirical quantile (few windows or an implausible fit)."""
    s = np.asarray(scores, np.float64)
    empirical = float(np.quantile(s, q, method="higher"))
    if len(s) < MIN_WINDOWS_FOR_GAMMA or np.ptp(s) <= 0:
        return empirical, "empirical quantile"
    loc = float(s.min()) - 1e-3 * float(np.ptp(s))
    x = s - loc
    mean, var = float(x.mean()), float(x.var())
    if var <= 0:
        return empirical, "empirical quantile"
    shape, scale = mean * mean / var, var / mean
    z = _normal_quantile(q)
    h = 1.0 / (9.0 * shape)
    value = loc + shape * scale * max(1.0 - h + z * math.sqrt(h), 0.0) ** 3
    if not np.isfinite(value) or not np.quantile(s, 0.9) <= value <= 1.5 * float(s.max()) + abs(loc):
        return empirical, "empirical quantile"
    return float(value), "gamma fit (moments)"


def _threshold(scores: np.ndarray, q: float) -> tuple[float, str]:
    """(threshold, rule) of normal windows' scores: the gamma quantile, at least MIN_THRESHOLD."""
    value, rule = _gamma_quantile(scores, q)
    if value < MIN_THRESHOLD:
        return MIN_THRESHOLD, f"{rule}, raised to the minimum {MIN_THRESHOLD:g}"
    return value, rule


def _normal_quantile(p: float) -> float:
    """Inverse standard normal CDF (the standard library's)."""
    return NormalDist().inv_cdf(p)


def _positive(value: float, what: str) -> float:
    if not (math.isfinite(value) and value > 0):
        raise FanwatchError(f"the anomaly score's {what} is {value:g}, not a positive number: retrain or re-enroll")
    return value


@dataclass(frozen=True)
class Scorer:
    """Per-machine normal references (plus the pooled one), the score's settings and its thresholds."""

    config: ScoreConfig
    references: dict  # name -> Reference; POOLED always present
    thresholds: dict = field(default_factory=dict)  # name -> float
    threshold_info: dict = field(default_factory=dict)  # name -> {rule, windows, source}
    channel_thresholds: dict = field(default_factory=dict)  # side channel -> {name -> float}

    @property
    def machines(self) -> list[str]:
        return [m for m in self.references if m != POOLED]

    # ---- fitting (training side, and enrollment) ----------------------------------------------------

    @classmethod
    def fit(cls, files_by_machine: dict, config: ScoreConfig | None = None, seed: int = 0) -> Scorer:
        """Fit on normal recordings only: ``{machine: [(embeddings, band_levels), ...]}``, one tuple per file."""
        cfg = config or ScoreConfig()
        if not files_by_machine:
            raise FanwatchError("no normal training recordings: the anomaly score needs some to learn from")
        refs = {}
        for name in sorted(files_by_machine):
            files = [f for f in files_by_machine[name] if len(f[0])]
            if sum(len(f[0]) for f in files) < cfg.k:
                raise FanwatchError(
                    f"machine {name}: only {sum(len(f[0]) for f in files)} normal window(s), "
                    f"need at least {cfg.k} to fit"
                )
            refs[name] = cls._reference_of(files, cfg, seed, name)
        pooled = [f for name in sorted(files_by_machine) for f in files_by_machine[name] if len(f[0])]
        refs[POOLED] = refs[next(iter(refs))] if len(refs) == 1 else cls._reference_of(pooled, cfg, seed, POOLED)
        return cls(cfg, refs)

    @staticmethod
    def _reference_of(
        files: list[FileFeatures], cfg: ScoreConfig, seed: int, name: str, base: Reference | None = None
    ) -> Reference:
        import zlib

        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        offset = (
            0
            if base is None
            else int(max(base.embedding_files.max(initial=-1), base.feature_files.max(initial=-1)) + 1)
        )
        emb = np.concatenate([_unit(e) for e, _ in files]) if files else np.zeros((0, config.EMBEDDING_DIM))
        emb_files = (
            np.concatenate([np.full(len(e), offset + i) for i, (e, _) in enumerate(files)])
            if files
            else np.zeros(0, np.int64)
        )
        band_components = [c for c in cfg.components if c != "embedding"]
        feat = {c: np.concatenate(_file_rows(files, c, cfg.horizon)) if files else None for c in band_components}
        feat_files = emb_files.copy()
        if base is not None:
            emb = np.concatenate([base.embeddings, emb]) if len(emb) else base.embeddings
            emb_files = np.concatenate([base.embedding_files, emb_files])
            for c in band_components:
                feat[c] = (
                    np.concatenate([base.feature_rows[c], feat[c]]) if feat[c] is not None else base.feature_rows[c]
                )
            feat_files = np.concatenate([base.feature_files, feat_files])
        keep = _subsample(len(emb), EMBEDDING_BANK, rng)
        keep_f = _subsample(len(feat_files), FEATURE_BANK, rng)
        n_files = len(np.unique(emb_files))
        return _build_reference(
            emb[keep], emb_files[keep], {c: feat[c][keep_f] for c in band_components}, feat_files[keep_f], cfg, n_files
        )

    def with_references(
        self, machine: str, files: list[FileFeatures], replace_existing: bool = False, seed: int = 0
    ) -> Scorer:
        """A scorer whose ``machine`` also (or, with replace_existing, only) has these normal recordings as
        references; a new machine name creates it (its threshold is the pooled one until with_threshold)."""
        files = [f for f in files if len(f[0])]
        if not files:
            raise FanwatchError(f"enrollment of {machine}: no window to add")
        base = (
            None
            if replace_existing or machine not in self.references or machine == POOLED
            else self.references[machine]
        )
        ref = self._reference_of(files, self.config, seed, machine, base)
        refs = dict(self.references)
        refs[machine] = ref
        if len(self.machines) == 1 and machine in self.machines:
            refs[POOLED] = ref
        thresholds = dict(self.thresholds)
        info = dict(self.threshold_info)
        channels = {ch: dict(t) for ch, t in self.channel_thresholds.items()}
        if machine not in thresholds and POOLED in thresholds:
            thresholds[machine] = thresholds[POOLED]
            for t in channels.values():
                if POOLED in t:
                    t[machine] = t[POOLED]
        if machine in thresholds:
            info[machine] = {
                **info.get(machine, {}),
                "note": "references changed after the threshold was set; "
                "re-set it with with_threshold on held-apart normal recordings",
            }
        return Scorer(self.config, refs, thresholds, info, channels)

    def with_threshold(
        self, machine: str, files: list[FileFeatures], false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE
    ) -> Scorer:
        """A scorer whose ``machine`` threshold (and its side channels') is re-set on normal recordings held
        apart from its references."""
        scores, side = self._scores_of(machine, files)
        if len(scores) == 0:
            raise FanwatchError(f"threshold of {machine}: no window of normal audio to set it on")
        value, rule = _threshold(scores, 1.0 - false_alarm_rate)
        channels = {ch: dict(t) for ch, t in self.channel_thresholds.items()}
        for ch, v in side.items():
            channels.setdefault(ch, {})[machine] = _threshold(v, 1.0 - false_alarm_rate)[0]
        return Scorer(
            self.config,
            self.references,
            {**self.thresholds, machine: value},
            {
                **self.threshold_info,
                machine: {"rule": rule, "windows": len(scores), "target_false_alarm_rate": false_alarm_rate},
            },
            channels,
        )

    def _scores_of(self, machine: str, files: list[FileFeatures]) -> tuple[np.ndarray, dict]:
        """(fused scores, {side channel: scores}) of these recordings' windows, each recording its own stream,
        concatenated; one scoring pass for both."""
        fused, side = [], {ch: [] for ch in self.config.channels}
        for e, b in files:
            if len(e):
                f, c = self.score_file_channels(machine, e, b)
                fused.append(f)
                for ch, v in c.items():
                    side[ch].append(v)
        if not fused:
            return np.zeros(0), {}
        return np.concatenate(fused), {ch: np.concatenate(v) for ch, v in side.items()}

    def set_thresholds(
        self,
        files_by_machine: dict,
        false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE,
        source: str = "validation normal windows",
    ) -> Scorer:
        """Thresholds of every machine and of the pooled reference (and of their side channels) from normal
        validation recordings."""
        thresholds, info, channels = {}, {}, {ch: {} for ch in self.config.channels}
        for name in [*self.machines, POOLED]:
            files = [f for m, fs in files_by_machine.items() for f in fs if name == POOLED or m == name]
            s, side = self._scores_of(name, files)
            if len(s) == 0:
                raise FanwatchError(
                    f"machine {name}: no normal validation recording to set its threshold on (a threshold on "
                    "training recordings would be too low); add normal recordings of it or raise --val-fraction"
                )
            value, rule = _threshold(s, 1.0 - false_alarm_rate)
            thresholds[name] = value
            info[name] = {
                "threshold": value,
                "rule": rule,
                "windows": len(s),
                "source": source,
                "empirical_quantile": float(np.quantile(s, 1.0 - false_alarm_rate, method="higher")),
            }
            for ch, v in side.items():
                channels[ch][name] = _threshold(v, 1.0 - false_alarm_rate)[0]
        return Scorer(self.config, self.references, thresholds, info, channels)

    # ---- scoring ------------------------------------------------------------------------------------

    def resolve(self, machine: str | None) -> str:
        """The reference a recording of ``machine`` is scored against: its own, else the pooled one."""
        return machine if machine in self.references and machine != POOLED else POOLED

    def component_scores(self, machine: str | None, embeddings: np.ndarray, bands: np.ndarray) -> dict:
        """Raw per-window component scores of one recording, windows in order (the horizon path)."""
        ref = self.references[self.resolve(machine)]
        out = {}
        for c in self.config.components:
            if c == "embedding":
                out[c] = running_median(_knn_cosine(ref.bank, embeddings, self.config.k), self.config.horizon)
            else:
                rows = running_median(features(c, bands), self.config.horizon)
                out[c] = _band_distance(c, ref.z_rows[c], ref.z(c, rows), self.config.k)
        return out

    def combine(self, machine: str | None, components: dict) -> np.ndarray:
        """The fused score: the weighted geometric mean of the components over their scales."""
        ref = self.references[self.resolve(machine)]
        total = sum(self.config.weights.values())
        log = 0.0
        for c in self.config.fused:
            ratio = np.maximum(np.asarray(components[c], np.float64) / ref.scales[c], 1e-6)
            log = log + (self.config.weights[c] / total) * np.log(ratio)
        return np.exp(log)

    def channels_of(self, machine: str | None, components: dict) -> dict:
        """side channel -> its score: the component over its scale."""
        ref = self.references[self.resolve(machine)]
        return {ch: np.asarray(components[ch], np.float64) / ref.scales[ch] for ch in self.config.channels}

    def score_file(self, machine: str | None, embeddings: np.ndarray, bands: np.ndarray) -> np.ndarray:
        """[n] window scores of one continuous recording (what a stream reset at its start gives)."""
        if len(embeddings) == 0:
            return np.zeros(0)
        return self.combine(machine, self.component_scores(machine, embeddings, bands))

    def score_file_channels(self, machine: str | None, embeddings: np.ndarray, bands: np.ndarray) -> tuple:
        """([n] fused scores, {side channel: [n] scores}) of one continuous recording."""
        if len(embeddings) == 0:
            return np.zeros(0), {ch: np.zeros(0) for ch in self.config.channels}
        comps = self.component_scores(machine, embeddings, bands)
        return self.combine(machine, comps), self.channels_of(machine, comps)

    def threshold(self, machine: str | None) -> float:
        name = self.resolve(machine)
        if name not in self.thresholds:
            raise FanwatchError(f"the anomaly score has no threshold for {name}")
        return _positive(float(self.thresholds[name]), f"threshold for {name}")

    def channel_threshold(self, machine: str | None, channel: str) -> float:
        name = self.resolve(machine)
        value = self.channel_thresholds.get(channel, {}).get(name)
        if value is None:
            raise FanwatchError(f"the anomaly score has no {channel} threshold for {name}")
        return _positive(float(value), f"{channel} threshold for {name}")

    def stream(self, machine: str | None, horizon: int | None = None) -> ScoreStream:
        """A running score; ``horizon`` (windows) overrides the config's, e.g. for the same span of audio at
        another hop."""
        return ScoreStream(self, self.resolve(machine), horizon)

    # ---- saving -------------------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        arrays = {}
        names = list(self.references)
        for i, name in enumerate(names):
            r = self.references[name]
            arrays[f"r{i}_embeddings"] = r.embeddings
            arrays[f"r{i}_embedding_files"] = r.embedding_files
            arrays[f"r{i}_feature_files"] = r.feature_files
            for c in r.feature_rows:
                arrays[f"r{i}_{c}_rows"] = r.feature_rows[c]
                arrays[f"r{i}_{c}_mean"] = r.mean[c]
                arrays[f"r{i}_{c}_std"] = r.std[c]
        meta = {
            "format": FORMAT,
            "config": {
                "weights": self.config.weights,
                "horizon": self.config.horizon,
                "k": self.config.k,
                "channels": list(self.config.channels),
            },
            "references": [
                {
                    "name": n,
                    "scales": self.references[n].scales,
                    "files": self.references[n].files,
                    "components": list(self.references[n].feature_rows),
                }
                for n in names
            ],
            "thresholds": self.thresholds,
            "threshold_info": self.threshold_info,
            "channel_thresholds": self.channel_thresholds,
        }
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, meta=np.asarray(json.dumps(meta)), **arrays)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Scorer:
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as d:
                meta = json.loads(str(d["meta"]))
                if meta.get("format") != FORMAT:
                    raise ValueError(f"format {meta.get('format')!r}, expected {FORMAT}")
                cfg = ScoreConfig(
                    weights=dict(meta["config"]["weights"]),
                    horizon=int(meta["config"]["horizon"]),
                    k=int(meta["config"]["k"]),
                    channels=tuple(meta["config"].get("channels", ())),  # none before side channels
                )
                refs = {}
                for i, r in enumerate(meta["references"]):
                    comps = r["components"]
                    refs[r["name"]] = Reference(
                        embeddings=d[f"r{i}_embeddings"],
                        embedding_files=d[f"r{i}_embedding_files"],
                        feature_rows={c: d[f"r{i}_{c}_rows"] for c in comps},
                        feature_files=d[f"r{i}_feature_files"],
                        mean={c: d[f"r{i}_{c}_mean"] for c in comps},
                        std={c: d[f"r{i}_{c}_std"] for c in comps},
                        scales={c: float(v) for c, v in r["scales"].items()},
                        files=int(r["files"]),
                    )
        except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError) as exc:
            raise FanwatchError(f"{path}: not a readable anomaly-score state ({exc})") from None
        except FanwatchError as exc:  # settings this fanwatch refuses (e.g. modulation_peak as a fused weight)
            raise FanwatchError(f"{path}: {exc}; retrain the model") from None
        if POOLED not in refs:
            raise FanwatchError(f"{path}: anomaly-score state without the pooled reference")
        return cls(
            cfg,
            refs,
            {k: float(v) for k, v in meta.get("thresholds", {}).items()},
            dict(meta.get("threshold_info", {})),
            {ch: {k: float(v) for k, v in t.items()} for ch, t in meta.get("channel_thresholds", {}).items()},
        )

    def describe(self) -> dict:
        return {
            "config": self.config.as_dict(),
            "machines": self.machines,
            "pooled": POOLED,
            "scales": {n: r.scales for n, r in self.references.items()},
            "reference_windows": {n: len(r.embeddings) for n, r in self.references.items()},
            "reference_files": {n: r.files for n, r in self.references.items()},
        }


class ScoreStream:
    """Running state of one continuous recording: feed windows in order, get their scores.

    ``update`` gives exactly what ``Scorer.score_file`` gives for the same windows after a ``reset``
    (the live loop resets at a gap in the audio, so no horizon spans a gap).
    """

    def __init__(self, scorer: Scorer, name: str, horizon: int | None = None):
        self.scorer, self.name = scorer, name
        self.reference = scorer.references[name]
        self.horizon = int(horizon) if horizon is not None else scorer.config.horizon
        if self.horizon < 1:
            raise FanwatchError(f"score horizon must be at least 1 window, got {horizon}")
        self.reset()

    def reset(self) -> None:
        h = self.horizon
        self._emb = deque(maxlen=h)
        self._rows = {c: deque(maxlen=h) for c in self.scorer.config.components if c != "embedding"}

    @property
    def threshold(self) -> float:
        return self.scorer.threshold(self.name)

    def update(self, embedding: np.ndarray, band_levels: np.ndarray) -> float:
        return self.update_channels(embedding, band_levels)[0]

    def update_channels(self, embedding: np.ndarray, band_levels: np.ndarray) -> tuple[float, dict]:
        """(fused score, {side channel: score}) of the next window."""
        cfg, ref = self.scorer.config, self.reference
        comps = {}
        for c in cfg.components:
            if c == "embedding":
                self._emb.append(float(_knn_cosine(ref.bank, np.asarray(embedding)[None, :], cfg.k)[0]))
                comps[c] = np.array([np.median(np.asarray(self._emb, np.float64))])
            else:
                self._rows[c].append(features(c, np.asarray(band_levels)[None, :])[0])
                row = np.median(np.stack(self._rows[c]), axis=0)
                comps[c] = _band_distance(c, ref.z_rows[c], ref.z(c, row[None, :]), cfg.k)
        side = {ch: float(v[0]) for ch, v in self.scorer.channels_of(self.name, comps).items()}
        return float(self.scorer.combine(self.name, comps)[0]), side
