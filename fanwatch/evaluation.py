"""evaluate_model.py's work: run the exported TFLite model on recordings it never saw and measure it.

What is measured is the deployed file itself (``sound_classifier.tflite``, what the Pi runs), window
by window, on the test recordings that training set aside (``split.json`` beside the model) or on
every recording of another folder (``--data``).

Levels and definitions (also written into ``metrics.json`` under ``definitions``):

* **Window level**: every 0.975 s window cut every 0.5 s (``config.HOP_SAMPLES``), one model call each,
  the decision the live loop makes. **File level**: the mean class probability of a file's windows
  (classification) and the mean window anomaly score of a file (anomaly score), as DCASE 2020 Task 2
  scores a clip.
* **Classification** only counts files whose label (or machine id, when the card's ``head_target`` is
  ``machine``) is one of the model's labels. ``macro_f1`` averages the F1 of the classes that occur in
  the evaluated files or in the predictions (scikit-learn's default), so a class absent from the data
  does not count as a zero.
* **Anomaly score**: the deployed score (:mod:`fanwatch.scorer`, computed from the model's
  ``embedding`` and ``band_levels`` outputs through the same code the Pi runs, the horizon restarting at
  each file), per machine id of the recording. A recording whose machine the model does not know is
  scored like the runtime scores an unknown machine: against the pooled normal reference of all known
  machines, with its threshold (``--machine`` scores every recording as that machine). Models without
  a fused score keep the earlier rule (the smallest score/threshold ratio over the known machines).
  The pooled ("overall") figures use the ratio score/threshold, so machines with different score
  scales can be pooled and 1.0 is the decision boundary everywhere.
* **Baselines** (``baselines`` in metrics.json): on the same test files, fitted on the model's normal
  training files (split.json), per machine (all machines pooled for an unknown one): loudness (RMS dB)
  and the long-term average spectrum, each z-scored, mean distance to the 5 nearest normal training
  clips (:mod:`fanwatch.baselines`), and the model's own embedding-only ``anomaly_score`` output; so
  every user sees whether the model earns its keep on their data. Beside the fused score (``deployed``):
  the score's side channels alone (``channels``) and, per window, the larger of the fused ratio and the
  channels' (``deployed_with_channels``), the per-window picture of the live loop's alert; these two are
  also under ``score_channels``, which is there when the baselines cannot be computed.
* **AUC**: area under the ROC curve, ties counted half. **pAUC**: the DCASE 2020 Task 2 definition,
  the area under the ROC curve for false-positive rates 0..p (p = 0.1) divided by p, *not*
  McClish-standardised. scikit-learn's ``roc_auc_score(max_fpr=0.1)`` (which the DCASE 2020 baseline
  code called) is the standardised one; it is reported beside it as ``pauc_mcclish``.
* **False-alarm rate / detection rate**: share of normal / anomalous windows whose score reaches the
  model's own threshold (the thresholds were set as a per-window false-alarm target); the file-level
  variants compare a file's mean window score with the threshold.

Two worker processes (spawn context, one interpreter each) run the model so that both cores are used.
A bad file gives one line, is skipped and listed with its reason. A metric that cannot be computed
(no anomalous file, no labelled file, ...) is null, with one sentence in ``notes`` saying why.
"""

from __future__ import annotations

import csv
import multiprocessing
import os
import re
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import __version__, audio, config, datasets, runtime
from .card import ModelCard, resolve_channel
from .errors import FanwatchError
from .export import DEFAULT_QUANTIZATION
from .live.analyzer import Analyzer
from .runtime import ANOMALY_NAME, HEAD_NAME, SPLIT_NAME  # written by training beside the model

EVAL_FORMAT = "fanwatch-evaluation/1"
METRICS_NAME = "metrics.json"
REPORT_NAME = "classification_report.txt"
FILES_NAME = "files.csv"
PAUC_MAX_FPR = 0.1
MIN_FILES_FOR_POOL = 8  # starting workers costs about a second; fewer files run in this process
PARITY_MAX_WINDOWS = 2000  # windows compared TFLite vs Keras head (files spread over the set)
PARITY_AGREEMENT = 0.99  # below this share of windows with the same top class, a note says so
PARITY_MAX_DP = 0.2  # above this largest probability difference, a note says so
PARITY_EXTRA_FILES = 4  # files whose front-end embeddings are computed for parity when none is cached

DEFINITIONS = {
    "accuracy": "window level: share of windows whose most probable class is the file's label "
    "(files with one of the model's labels only)",
    "macro_f1": "window level: mean F1 over the classes present in the labels or predictions",
    "anomaly_auc": "file level (mean window score per file, as DCASE 2020 Task 2), all machines pooled "
    "on score/threshold; ROC AUC, ties counted half",
    "anomaly_pauc": f"file level, pooled like anomaly_auc: DCASE 2020 Task 2 pAUC, area under the ROC "
    f"curve for FPR in [0, {PAUC_MAX_FPR}] divided by {PAUC_MAX_FPR} (not McClish-"
    "standardised; that variant is pauc_mcclish in the detailed sections)",
    "false_alarm_rate": "window level: share of normal windows with score >= the model's threshold",
    "detection_rate": "window level: share of anomalous windows with score >= the model's threshold",
    "files": "files evaluated (bad files are in skipped, not counted)",
}


@dataclass
class EvalSettings:
    model: Path = Path("artifacts") / runtime.MODEL_NAME
    data: Path | None = None  # None: the test split in split.json beside the model
    out: Path | None = None  # None: <model folder>/evaluation
    layout: str = "auto"
    machine: str | None = None  # score every recording as this machine id of the model
    yamnet: str | None = None  # parity check only; default the card's weights, else the usual lookup
    cache: str | None = None
    channel: str | int | None = None  # None: the card's channel setting
    workers: int | None = None
    progress: bool = True
    parity: bool = True
    alerts: bool = True  # replay the recordings as streams through the live Analyzer (alert-level figures)
    site: bool = True  # apply the site calibration beside the model, if there is one

    def as_dict(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}


def log(message: str) -> None:
    print(message, flush=True)


# --------------------------------------------------------------------------------------------------
# running the deployed model


@dataclass
class ModelOutputs:
    """Per-window outputs of the deployed model for the files that could be used."""

    recordings: list[datasets.Recording]
    probabilities: np.ndarray  # [n_windows, n_labels]
    scores: np.ndarray  # [n_windows, n_machines], the model's anomaly_score output
    file_index: np.ndarray  # [n_windows] into recordings
    skipped: list[tuple[str, str]] = field(default_factory=list)
    embeddings: np.ndarray | None = None  # [n_windows, 1024]
    bands: np.ndarray | None = None  # [n_windows, BAND_FEATURES]


def _file_outputs(model: runtime.SoundClassifier, path: str, channel) -> tuple:
    """Every window of one file through the live loop's analysis (:class:`fanwatch.live.Analyzer`, the
    model card's hop), decoded by training's loader (its checks, its resampling)."""
    try:
        signal = audio.load_audio(path, channel=channel)
    except FanwatchError as exc:
        return None, None, getattr(exc, "reason", str(exc))
    analyzer = Analyzer(model, channel="mean")  # already mono
    results = analyzer.feed(signal, config.SAMPLE_RATE) + analyzer.finish()
    if not results:  # every window refused (the model's outputs not numbers, ...): a counted skip
        return None, None, analyzer.first_fault or audio.too_short_reason(analyzer.samples_seen)
    probs = np.asarray([r.probabilities for r in results], np.float32).reshape(len(results), len(model.labels))
    scores = np.asarray([r.scores for r in results], np.float32).reshape(len(results), len(model.machines))
    embs = [r.embedding for r in results]
    bands = [r.band_levels for r in results]
    extra = (
        np.asarray(embs, np.float32) if results and all(e is not None for e in embs) else None,
        np.asarray(bands, np.float32) if results and all(b is not None for b in bands) else None,
    )
    return probs, (scores, extra), None


_WORKER: tuple | None = None


def _init_worker(model_path: str, channel) -> None:
    global _WORKER
    _WORKER = (runtime.SoundClassifier(model_path, num_threads=1), channel)


def _worker_run(path: str):
    model, channel = _WORKER
    return _file_outputs(model, path, channel)


def run_model(
    model: runtime.SoundClassifier,
    recordings: list[datasets.Recording],
    channel,
    workers: int | None = None,
    progress: bool = True,
) -> ModelOutputs:
    """Every window of every recording through the TFLite model; bad files skipped with one line each."""
    from tqdm import tqdm

    workers = workers or min(2, os.cpu_count() or 1)
    paths = [str(r.path) for r in recordings]
    pool = None
    if workers > 1 and len(paths) >= MIN_FILES_FOR_POOL:
        pool = ProcessPoolExecutor(
            workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(str(model.model.path), channel),
        )
        outcomes = pool.map(_worker_run, paths, chunksize=1)
    else:
        outcomes = (_file_outputs(model, p, channel) for p in paths)
    kept, probs, scores, index, skipped, embs, bands = [], [], [], [], [], [], []
    try:
        with tqdm(total=len(paths), desc="evaluating", unit="file", disable=not progress, leave=False) as bar:
            for rec, (p, s, reason) in zip(recordings, outcomes):
                if reason is not None:
                    skipped.append((str(rec.path), reason))
                    tqdm.write(f"skipped {rec.path}: {reason}")
                else:
                    index.append(np.full(len(p), len(kept)))
                    kept.append(rec)
                    probs.append(p)
                    scores.append(s[0])
                    embs.append(s[1][0])
                    bands.append(s[1][1])
                bar.update(1)
    except BrokenProcessPool:
        raise FanwatchError("a worker process died while running the model; try again with --workers 1") from None
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    if not kept:
        return ModelOutputs(
            [],
            np.zeros((0, len(model.labels)), np.float32),
            np.zeros((0, len(model.machines)), np.float32),
            np.zeros(0, int),
            skipped,
        )
    have = all(e is not None for e in embs) and all(b is not None for b in bands)
    return ModelOutputs(
        kept,
        np.concatenate(probs),
        np.concatenate(scores),
        np.concatenate(index),
        skipped,
        np.concatenate(embs) if have else None,
        np.concatenate(bands) if have else None,
    )


# --------------------------------------------------------------------------------------------------
# metrics


def roc_curve(normal_scores, anomalous_scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) with every distinct score as a threshold; starts at (0, 0) (scikit-learn)."""
    from sklearn.metrics import roc_curve as sk_roc_curve

    n = np.asarray(normal_scores, np.float64)
    a = np.asarray(anomalous_scores, np.float64)
    labels = np.concatenate([np.zeros(len(n)), np.ones(len(a))])
    fpr, tpr, thresholds = sk_roc_curve(labels, np.concatenate([n, a]), drop_intermediate=False)
    return fpr, tpr, thresholds


def _trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0))


def partial_auc_area(normal_scores, anomalous_scores, max_fpr: float = PAUC_MAX_FPR) -> float | None:
    """Unnormalised area under the ROC curve for FPR in [0, max_fpr] (linear between ROC points)."""
    if len(normal_scores) == 0 or len(anomalous_scores) == 0:
        return None
    fpr, tpr, _ = roc_curve(normal_scores, anomalous_scores)
    stop = int(np.searchsorted(fpr, max_fpr, side="right"))  # fpr[stop-1] <= max_fpr < fpr[stop]
    x, y = fpr[:stop], tpr[:stop]
    if stop < len(fpr) and x[-1] < max_fpr:
        w = (max_fpr - fpr[stop - 1]) / (fpr[stop] - fpr[stop - 1])
        x = np.append(x, max_fpr)
        y = np.append(y, tpr[stop - 1] + w * (tpr[stop] - tpr[stop - 1]))
    return _trapezoid(y, x)


def pauc_dcase(normal_scores, anomalous_scores, max_fpr: float = PAUC_MAX_FPR) -> float | None:
    """DCASE 2020 Task 2 pAUC: ROC area over FPR in [0, max_fpr], divided by max_fpr (0..1)."""
    area = partial_auc_area(normal_scores, anomalous_scores, max_fpr)
    return None if area is None else float(area / max_fpr)


def pauc_mcclish(normal_scores, anomalous_scores, max_fpr: float = PAUC_MAX_FPR) -> float | None:
    """McClish-standardised pAUC, what ``sklearn.metrics.roc_auc_score(max_fpr=...)`` returns."""
    area = partial_auc_area(normal_scores, anomalous_scores, max_fpr)
    if area is None:
        return None
    lo, hi = 0.5 * max_fpr**2, max_fpr
    return float(0.5 * (1 + (area - lo) / (hi - lo)))


def _rate(values: np.ndarray, threshold: float) -> float | None:
    return float((values >= threshold).mean()) if len(values) else None


def score_metrics(normal, anomalous, threshold: float) -> dict:
    """AUC, pAUC (both definitions), false-alarm and detection rates for one set of scores."""
    from .anomaly import roc_auc

    normal = np.asarray(normal, np.float64)
    anomalous = np.asarray(anomalous, np.float64)
    return {
        "normal": int(len(normal)),
        "anomalous": int(len(anomalous)),
        "auc": roc_auc(normal, anomalous),
        "pauc_dcase": pauc_dcase(normal, anomalous),
        "pauc_mcclish": pauc_mcclish(normal, anomalous),
        "false_alarm_rate": _rate(normal, threshold),
        "detection_rate": _rate(anomalous, threshold),
    }


def file_means(values: np.ndarray, file_index: np.ndarray, n_files: int) -> np.ndarray:
    """Mean of ``values`` ([n_windows] or [n_windows, k]) per file, files 0..n_files-1."""
    counts = np.bincount(file_index, minlength=n_files).astype(np.float64)
    if values.ndim == 1:
        return np.bincount(file_index, weights=values, minlength=n_files) / np.maximum(counts, 1)
    out = np.stack(
        [np.bincount(file_index, weights=values[:, j], minlength=n_files) for j in range(values.shape[1])], axis=1
    )
    return out / np.maximum(counts, 1)[:, None]


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, labels: list[str]) -> dict:
    import warnings

    with warnings.catch_warnings():  # sklearn warns when a single class is present; the figures are right
        warnings.simplefilter("ignore", UserWarning)
        return _classification_metrics(y_true, y_pred, labels)


def _classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, labels: list[str]) -> dict:
    """Accuracy, macro F1 and per-class precision/recall/F1 (null when undefined) for label indices."""
    from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

    if len(y_true) == 0:
        return {"n": 0, "accuracy": None, "macro_f1": None, "per_class": {}, "confusion": None}
    present = sorted(set(np.unique(y_true).tolist()) | set(np.unique(y_pred).tolist()))
    p, r, f, support = precision_recall_fscore_support(y_true, y_pred, labels=list(range(len(labels))), zero_division=0)
    predicted = np.bincount(y_pred, minlength=len(labels))
    per_class = {}
    for i, name in enumerate(labels):
        if i not in present:
            continue
        per_class[name] = {
            "precision": float(p[i]) if predicted[i] else None,
            "recall": float(r[i]) if support[i] else None,
            "f1": float(f[i]),
            "support": int(support[i]),
        }
    rows = sorted(np.unique(y_true).tolist())
    matrix = confusion_matrix(y_true, y_pred, labels=list(range(len(labels))))[rows]
    return {
        "n": int(len(y_true)),
        "accuracy": float((y_true == y_pred).mean()),
        "macro_f1": float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)),
        "per_class": per_class,
        "confusion": {
            "rows_true": [labels[i] for i in rows],
            "columns_predicted": list(labels),
            "counts": matrix.tolist(),
        },
    }


def report_text(y_true: np.ndarray, y_pred: np.ndarray, labels: list[str], title: str) -> str:
    from sklearn.metrics import classification_report

    if len(y_true) == 0:
        return f"{title}\n  no labelled {title.split()[0].lower()}s\n"
    present = sorted(set(np.unique(y_true).tolist()) | set(np.unique(y_pred).tolist()))
    text = classification_report(
        y_true, y_pred, labels=present, target_names=[labels[i] for i in present], digits=3, zero_division=0
    )
    m = classification_metrics(y_true, y_pred, labels)["confusion"]
    corner = "true \\ predicted"
    width = max(len(x) for x in labels + [corner]) + 2
    col = max(6, max(len(x) for x in labels) + 1)
    lines = [f"{corner:<{width}}" + "".join(f"{x:>{col}}" for x in m["columns_predicted"])]
    for name, row in zip(m["rows_true"], m["counts"]):
        lines.append(f"{name:<{width}}" + "".join(f"{v:>{col}d}" for v in row))
    return (
        f"{title}\n\n{text}\nconfusion matrix (counts; rows: true label, columns: predicted)\n"
        + "\n".join(lines)
        + "\n"
    )


# --------------------------------------------------------------------------------------------------
# plots


def pyplot():
    """matplotlib's pyplot on the Agg backend (files only, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "machine"


def plot_confusion(confusion: dict, path: Path, title: str) -> Path:
    """Counts and row-normalised confusion matrices side by side, seaborn heatmaps."""
    import seaborn as sns

    plt = pyplot()
    counts = np.asarray(confusion["counts"], dtype=float)
    rows, cols = confusion["rows_true"], confusion["columns_predicted"]
    norm = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    cell = 0.75 if len(cols) <= 12 else 0.5
    width = max(5.0, cell * len(cols) + 3.0)
    height = max(3.5, cell * len(rows) + 2.5)
    fig, axes = plt.subplots(1, 2, figsize=(2 * width, height))
    annot = len(cols) <= 20
    for ax, data, fmt, what in ((axes[0], counts, ".0f", "counts"), (axes[1], norm, ".2f", "row-normalised")):
        sns.heatmap(
            data,
            ax=ax,
            annot=annot,
            fmt=fmt,
            cmap="Blues",
            cbar=True,
            square=False,
            xticklabels=cols,
            yticklabels=rows,
            vmin=0,
            vmax=None if what == "counts" else 1,
            linewidths=0.5,
            linecolor="white",
            annot_kws={"size": 9},
        )
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(what)
        ax.set_xticklabels(ax.get_xticklabels(), rotation=40, ha="right")
        ax.set_yticklabels(ax.get_yticklabels(), rotation=0)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_roc(curves: dict, path: Path, title: str, operating_point: tuple[float, float] | None) -> Path:
    """ROC curves (name -> (normal scores, anomalous scores)) with the pAUC region shaded."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5.0))
    ax.axvspan(0, PAUC_MAX_FPR, color="0.92", label=f"pAUC region (FPR ≤ {PAUC_MAX_FPR})")
    ax.plot([0, 1], [0, 1], ls=":", color="0.5", lw=1)
    for name, (n, a) in curves.items():
        fpr, tpr, _ = roc_curve(n, a)
        from .anomaly import roc_auc

        ax.plot(
            fpr,
            tpr,
            lw=2 if name.startswith("file") else 1.2,
            drawstyle="default",
            label=f"{name}: AUC {roc_auc(n, a):.3f}, pAUC {pauc_dcase(n, a):.3f}",
        )
    if operating_point is not None and None not in operating_point:
        ax.plot(*operating_point, "o", color="crimson", label="model threshold (windows)")
    ax.set_xlim(-0.01, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false-positive rate (normal flagged)")
    ax.set_ylabel("true-positive rate (anomaly detected)")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_scores(normal: np.ndarray, anomalous: np.ndarray, threshold: float, path: Path, title: str, unit: str) -> Path:
    """Histogram of window scores, normal vs anomalous, each normalised to its own area, threshold line."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.0))
    both = np.concatenate([normal, anomalous, [threshold]])
    lo, hi = float(np.min(both)), float(np.max(both))
    bins = np.linspace(lo, hi + 1e-9 * max(1.0, abs(hi)), 41)
    if len(normal):
        ax.hist(normal, bins=bins, density=True, alpha=0.6, color="tab:blue", label=f"normal ({len(normal)} windows)")
    if len(anomalous):
        ax.hist(
            anomalous,
            bins=bins,
            density=True,
            alpha=0.6,
            color="tab:red",
            label=f"anomalous ({len(anomalous)} windows)",
        )
    ax.axvline(threshold, color="black", ls="--", lw=1.5, label=f"threshold {threshold:.3g}")
    ax.set_xlabel(unit)
    ax.set_ylabel("density (area of each group = 1)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------------
# parity: TFLite vs the Keras head on the cached front-end embeddings


def _anomaly_params(path: Path):
    from .anomaly import AnomalyModel

    with np.load(path, allow_pickle=False) as d:
        method = str(d["method"])
        machines = [str(m) for m in d["machines"]]
        if method == "mahalanobis":
            return AnomalyModel(method, machines, mean=d["mean"], transform=d["transform"])
        return AnomalyModel(method, machines, bank=d["bank"])


def load_reference(model_dir: Path, card: ModelCard) -> tuple[tuple | None, str | None]:
    """The Keras head and the numpy anomaly score saved beside the model, for the parity check.

    Loaded before the evaluation starts, so that a missing or damaged file (random bytes, a pickle, a
    corrupt .keras) is one note up front instead of a traceback after all the work. Returns
    ((head, anomaly params), None) or (None, why the parity check is skipped).
    """
    import zipfile

    head_path, anomaly_path = model_dir / HEAD_NAME, model_dir / ANOMALY_NAME
    for p in (head_path, anomaly_path):
        if not p.is_file():
            return None, f"parity check skipped: {p.name} not found beside the model"
    try:
        params = _anomaly_params(anomaly_path)
    except (OSError, ValueError, KeyError, EOFError, TypeError, AttributeError, zipfile.BadZipFile) as exc:
        reason = " ".join(str(exc).split())[:160]
        return None, f"parity check skipped: {anomaly_path.name} is damaged ({type(exc).__name__}: {reason})"
    dim, n = config.EMBEDDING_DIM, len(params.machines)
    if params.method == "knn":
        shapes_ok = params.bank.ndim == 3 and params.bank.shape[0] == n and params.bank.shape[2] == dim
    else:
        shapes_ok = params.mean.shape == (n, dim) and params.transform.shape == (n, dim, dim)
    if not shapes_ok:
        return None, f"parity check skipped: {anomaly_path.name} holds no usable {params.method} parameters"
    if params.machines != list(card.machines):
        return None, f"parity check skipped: {anomaly_path.name} and the model card list different machines"
    import keras

    try:
        head = keras.models.load_model(head_path, compile=False)
    except Exception as exc:  # keras raises many kinds for a damaged file; all mean the same here
        reason = " ".join(str(exc).split())[:160] or type(exc).__name__
        return None, f"parity check skipped: {head_path.name} is damaged ({reason})"
    return (head, params), None


def parity_check(
    s: EvalSettings,
    card: ModelCard,
    reference: tuple,
    outputs: ModelOutputs,
    channel,
    thresholds: np.ndarray,
    model: runtime.SoundClassifier | None = None,
) -> tuple[dict | None, str | None]:
    """Largest differences between the deployed model's outputs and the Keras head + numpy score.

    ``reference`` is what :func:`load_reference` returned. Uses the files whose front-end embeddings are
    cached (else computes a few), at most ``PARITY_MAX_WINDOWS`` windows. Returns (result, None) or
    (None, why it was skipped).
    """
    from . import embeddings

    head, params = reference
    yamnet_path = s.yamnet or card.yamnet_path
    if not s.yamnet and (not yamnet_path or not Path(yamnet_path).is_file()):
        yamnet_path = str(config.resolve_yamnet_path(None))
    try:
        extractor, sha = embeddings.make_extractor(
            yamnet_path, card.quantization or DEFAULT_QUANTIZATION, s.cache, channel, s.workers
        )
    except FanwatchError as exc:
        return None, f"parity check skipped: {exc}"
    if card.yamnet_sha256 not in (None, sha):
        return None, (
            "parity check skipped: the YAMNet weights found differ from the ones the model was "
            f"built with (sha256 {sha[:12]} vs {card.yamnet_sha256[:12]}); pass --yamnet"
        )
    counts = np.bincount(outputs.file_index, minlength=len(outputs.recordings))
    cached = [i for i, r in enumerate(outputs.recordings) if extractor.cached(r.path) is not None]
    if not cached:
        step = max(1, len(outputs.recordings) // PARITY_EXTRA_FILES)
        cached = list(range(0, len(outputs.recordings), step))[:PARITY_EXTRA_FILES]
    total = int(counts[cached].sum())
    if total > PARITY_MAX_WINDOWS:  # spread the chosen files over the whole set
        keep = max(1, int(len(cached) * PARITY_MAX_WINDOWS / total))
        cached = [cached[i] for i in np.linspace(0, len(cached) - 1, keep).round().astype(int)]
        cached = sorted(set(cached))
    ref_embs, ref_bands, sel, fused_diff = [], [], [], []
    for i in cached:
        try:
            emb, bands = extractor.file_features(outputs.recordings[i].path)
        except FanwatchError:
            continue
        if len(emb) != counts[i]:
            continue
        ref_embs.append(emb)
        ref_bands.append(bands)
        rows = np.flatnonzero(outputs.file_index == i)
        sel.append(rows)
        if model is not None and model.scorer is not None and outputs.bands is not None:
            name = model.scorer.resolve(outputs.recordings[i].machine)
            ref = model.scorer.score_file(name, emb, bands)
            got = model.scorer.score_file(name, outputs.embeddings[rows], outputs.bands[rows])
            fused_diff.append(float((np.abs(got - ref) / np.maximum(np.abs(ref), 1e-6)).max()))
    if not sel:
        return None, "parity check skipped: no file's front-end embeddings could be computed"
    sel = np.concatenate(sel)
    ref_embs = np.concatenate(ref_embs)
    ref_p = np.asarray(head.predict(ref_embs, verbose=0, batch_size=256))
    if ref_p.shape != outputs.probabilities[sel].shape:
        return None, f"parity check skipped: {HEAD_NAME} does not fit the model's labels"
    ref_s = params.score(ref_embs)
    p, sc = outputs.probabilities[sel], outputs.scores[sel].astype(np.float64)
    return {
        "windows": int(len(sel)),
        "files": int(len(set(outputs.file_index[sel].tolist()))),
        "compared": "deployed TFLite end to end vs Keras head + numpy anomaly score on the cached "
        f"{card.quantization} front-end embeddings of the same windows",
        "max_probability_diff": float(np.abs(p - ref_p).max()),
        "max_score_diff": float(np.abs(sc - ref_s).max()),
        "max_relative_score_diff": float((np.abs(sc - ref_s) / np.maximum(np.abs(ref_s), 1e-6)).max()),
        "max_score_diff_over_threshold": float((np.abs(sc - ref_s) / thresholds).max()),
        "argmax_agreement": float((p.argmax(1) == ref_p.argmax(1)).mean()),
        "decision_agreement": float(((sc >= thresholds) == (ref_s >= thresholds)).mean()),
        **(
            {
                "max_band_level_diff": float(np.abs(outputs.bands[sel] - np.concatenate(ref_bands)).max()),
                "max_relative_fused_diff": max(fused_diff),
            }
            if fused_diff
            else {}
        ),
    }, None


# --------------------------------------------------------------------------------------------------
# the whole run


def deployed_scores(model: runtime.SoundClassifier, outputs: ModelOutputs) -> tuple:
    """([n_windows, C] deployed window scores, [C] thresholds, column of the pooled reference or None,
    {side channel: [n_windows, C] its score / its threshold}).

    With a fused score: one column per known machine plus the pooled one, each file through
    ``Scorer.score_file_channels`` (what a stream reset at the file's start gives, as the Pi computes it; the
    side channels from the same pass). Else the model's own anomaly_score output and the card's thresholds,
    and no channels."""
    if model.scorer is None:
        return outputs.scores.astype(np.float64), np.asarray(model.thresholds, np.float64), None, {}
    if outputs.embeddings is None or outputs.bands is None:
        raise FanwatchError(f"{model.model.path}: no embedding/band_levels outputs, which its anomaly score needs")
    from .scorer import POOLED

    sc = model.scorer
    names = [*model.machines, POOLED]
    out = np.zeros((len(outputs.file_index), len(names)))
    side = {ch: np.zeros_like(out) for ch in sc.config.channels}
    for f in range(len(outputs.recordings)):
        sel = np.flatnonzero(outputs.file_index == f)
        for j, name in enumerate(names):
            out[sel, j], channels = sc.score_file_channels(name, outputs.embeddings[sel], outputs.bands[sel])
            for ch, v in channels.items():
                side[ch][sel, j] = v / sc.channel_threshold(name, ch)
    return out, np.asarray([sc.threshold(n) for n in names]), len(model.machines), side


def channel_ratios(side: dict, outputs: ModelOutputs, col_file: np.ndarray) -> dict:
    """{side channel: per window, its score over its threshold}, each file against the reference its fused
    score used (its machine's column, else the pooled one), as the live loop does; ``{}`` without channels."""
    rows = np.arange(len(outputs.file_index))
    return {ch: r[rows, col_file[outputs.file_index]] for ch, r in side.items()}


def embedding_ratio(model: runtime.SoundClassifier, outputs: ModelOutputs, col_file: np.ndarray) -> np.ndarray:
    """Per window, the model's embedding-only anomaly_score over its threshold (the earlier score)."""
    ratio = outputs.scores / model.embedding_thresholds
    col = col_file[outputs.file_index]
    rows = np.arange(len(ratio))
    known = (col >= 0) & (col < ratio.shape[1])
    return np.where(known, ratio[rows, np.clip(col, 0, ratio.shape[1] - 1)], ratio.min(axis=1))


def baseline_metrics(
    s: EvalSettings,
    model_dir: Path,
    outputs: ModelOutputs,
    channel,
    machines: list[str],
    normal_file: np.ndarray,
    embedding_win: np.ndarray,
) -> tuple[dict | None, str | None]:
    """Loudness and long-term-spectrum 5-NN baselines (fanwatch.baselines) on the evaluated files, fitted on the
    model's normal training files (split.json) per machine, all of them for an unknown machine."""
    from tqdm import tqdm

    from . import baselines

    split = model_dir / SPLIT_NAME
    if not split.is_file():
        return None, f"baselines not computed: {split.name} (the model's training files) not found beside the model"
    try:
        train = [r for r in datasets.load_split(split)["train"] if r.normal]
    except FanwatchError as exc:
        return None, f"baselines not computed: {exc}"

    def feats(path) -> dict | None:
        try:
            sig = audio.load_audio(path, channel=channel)
        except FanwatchError:
            return None
        wins = audio.frame_windows(sig)
        return {
            b: (baselines.clip_features(b, sig)[None, :], np.stack([baselines.clip_features(b, w) for w in wins]))
            for b in baselines.BASELINES
        }

    ref: dict[str, list] = {}
    for r in tqdm(train, desc="baselines", unit="file", disable=not s.progress, leave=False):
        f = feats(r.path)
        if f is not None:
            ref.setdefault(r.machine, []).append(f)
    if not ref:
        return None, "baselines not computed: no normal training file of the model could be read"
    pooled = [f for fs in ref.values() for f in fs]
    counts = np.bincount(outputs.file_index, minlength=len(outputs.recordings))
    block: dict = {
        "fitted_on": f"{len(pooled)} normal training files of the model ({split.name})",
        "definitions": baselines.describe(),
    }
    normal_win = normal_file[outputs.file_index]
    test = [feats(r.path) for r in outputs.recordings]
    for b in baselines.BASELINES:
        file_v = np.zeros(len(outputs.recordings))
        win_v = np.zeros(len(outputs.file_index))
        models: dict = {}
        for i, (r, f) in enumerate(zip(outputs.recordings, test)):
            key = s.machine if s.machine is not None else r.machine
            key = key if key in ref else None
            if key not in models:
                src = ref[key] if key is not None else pooled
                models[key] = (
                    baselines.KnnBaseline.fit(np.concatenate([x[b][0] for x in src])),
                    baselines.KnnBaseline.fit(np.concatenate([x[b][1] for x in src])),
                )
            sel = outputs.file_index == i
            if f is None or len(f[b][1]) != counts[i]:
                file_v[i], win_v[sel] = np.nan, np.nan
                continue
            file_v[i] = models[key][0].score(f[b][0])[0]
            win_v[sel] = models[key][1].score(f[b][1])
        ok_f, ok_w = np.isfinite(file_v), np.isfinite(win_v)
        block[b] = {
            "file_level": {"auc": _auc(file_v, normal_file, ok_f), "pauc_dcase": _pauc(file_v, normal_file, ok_f)},
            "window_level": {"auc": _auc(win_v, normal_win, ok_w), "pauc_dcase": _pauc(win_v, normal_win, ok_w)},
        }
    file_e = file_means(embedding_win, outputs.file_index, len(outputs.recordings))
    ok_f, ok_w = np.ones(len(file_e), bool), np.ones(len(embedding_win), bool)
    block["embedding_knn"] = {
        "file_level": {"auc": _auc(file_e, normal_file, ok_f), "pauc_dcase": _pauc(file_e, normal_file, ok_f)},
        "window_level": {
            "auc": _auc(embedding_win, normal_win, ok_w),
            "pauc_dcase": _pauc(embedding_win, normal_win, ok_w),
        },
        "definition": "the model's anomaly_score output (embedding k-NN of one window) over its threshold",
    }
    return block, None


def _auc(values, normal, ok):
    from .anomaly import roc_auc

    return roc_auc(values[ok & normal], values[ok & ~normal])


def _pauc(values, normal, ok):
    return pauc_dcase(values[ok & normal], values[ok & ~normal])


def _recordings(s: EvalSettings, card: ModelCard, model_dir: Path) -> tuple[list[datasets.Recording], dict]:
    """The recordings to evaluate and a description of where they come from."""
    if s.data is None:
        split = model_dir / SPLIT_NAME
        if not split.is_file():
            raise FanwatchError(
                f"{split} not found: train.py writes it beside the model; "
                "pass --data DIR to evaluate the recordings of a folder"
            )
        # only the test files matter here; a vanished test file is skipped and listed like any bad file
        recs = list(datasets.load_split(split, must_exist=())["test"])
        if not recs:
            raise FanwatchError(
                f"{split}: the split holds no test recordings (trained with --test-fraction 0?); pass --data DIR"
            )
        return recs, {"source": "test split", "split": str(split)}
    data = Path(s.data).expanduser()
    recs, layout = datasets.scan_dataset(data, s.layout)
    info = {"source": "folder", "root": str(data.resolve()), "layout": layout}
    if layout == "folders" and card.head_target == "label":
        # the card knows which of its labels are normal (training may have used --normal-classes)
        labels, normal = set(card.labels), set(card.normal_labels)
        recs = [
            datasets.Recording(r.path, r.label, r.machine, r.label in normal, r.subset, r.snr)
            if r.label in labels
            else r
            for r in recs
        ]
        info["normal_from"] = "model card normal_labels for the model's labels, folder-name rule for others"
    return recs, info


def _training_overlap(model_dir: Path, recs: list[datasets.Recording]) -> int:
    split = model_dir / SPLIT_NAME
    if not split.is_file():
        return 0
    try:
        splits = datasets.load_split(split, must_exist=())
    except FanwatchError:
        return 0
    seen = {os.path.realpath(r.path) for name in ("train", "val") for r in splits.get(name, [])}
    return sum(1 for r in recs if os.path.realpath(r.path) in seen)


def evaluate(s: EvalSettings) -> dict:
    """The whole evaluation; returns the metrics (also written to ``<out>/metrics.json``)."""
    started = time.time()
    model_path = Path(s.model).expanduser()
    model = runtime.SoundClassifier(model_path, machine=s.machine)  # model, card and --machine checked there
    card = model.card
    labels: list[str] = list(card.labels)
    machines: list[str] = list(card.machines)
    thresholds = np.asarray(card.thresholds, np.float64)
    channel, _ = resolve_channel(s.channel, card)
    model_dir = model_path.resolve().parent
    out = Path(s.out).expanduser() if s.out is not None else model_dir / "evaluation"
    recs, source = _recordings(s, card, model_dir)
    config.ensure_writable_folder(out, "--out")
    reference, reference_note = None, None
    if s.parity:  # before the work: a damaged side file is a note now, not a traceback at the end
        config.ensure_writable_folder(config.resolve_cache_dir(s.cache), "--cache")
        reference, reference_note = load_reference(model_dir, card)
        if reference_note:
            log(f"note: {reference_note}")
    notes: list[str] = []
    overlap = _training_overlap(model_dir, recs) if s.data is not None else 0
    if overlap:
        notes.append(
            f"{overlap} of the evaluated files were used in training or validation: the figures are optimistic"
        )
    log(
        f"evaluating {model_path} ({card.quantization}, runtime {model.runtime}) on {len(recs)} files "
        f"({source['source']}: {source.get('root') or source.get('split')})"
    )

    outputs = run_model(model, recs, channel, s.workers, s.progress)
    if not outputs.recordings:
        raise FanwatchError(f"none of the {len(recs)} files could be evaluated ({len(outputs.skipped)} skipped)")
    n_files = len(outputs.recordings)
    if outputs.probabilities.shape[1] != len(labels) or outputs.scores.shape[1] != len(machines):
        raise FanwatchError(f"{model_path}: outputs do not match its model card (labels or machines)")

    # --- classification ----------------------------------------------------------------------------
    key = (lambda r: r.machine) if card.head_target == "machine" else (lambda r: r.label)
    index = {label: i for i, label in enumerate(labels)}
    y_file = np.array([index.get(key(r), -1) for r in outputs.recordings])
    y_win = y_file[outputs.file_index]
    pred_win = outputs.probabilities.argmax(axis=1)
    mean_probs = file_means(outputs.probabilities, outputs.file_index, n_files)
    pred_file = mean_probs.argmax(axis=1)
    known_w, known_f = y_win >= 0, y_file >= 0
    cls_window = classification_metrics(y_win[known_w], pred_win[known_w], labels)
    cls_file = classification_metrics(y_file[known_f], pred_file[known_f], labels)
    not_labelled = sorted({key(r) for r, y in zip(outputs.recordings, y_file) if y < 0})
    if not known_f.any():
        notes.append(
            f"no evaluated file has one of the model's labels ({', '.join(labels)}): classification metrics not defined"
        )
    elif not_labelled:
        notes.append(
            f"{int((~known_f).sum())} file(s) with labels the model does not know "
            f"({', '.join(not_labelled)}) are left out of the classification metrics"
        )
    written: list[str] = []
    if known_f.any():
        (out / REPORT_NAME).write_text(
            report_text(y_win[known_w], pred_win[known_w], labels, "WINDOW level (one decision per window)")
            + "\n"
            + report_text(y_file[known_f], pred_file[known_f], labels, "FILE level (mean probability per file)")
        )
        written.append(REPORT_NAME)
        for level, m in (("windows", cls_window), ("files", cls_file)):
            name = f"confusion_{level}.png"
            plot_confusion(
                m["confusion"], out / name, f"{model_path.name}: confusion at {level[:-1]} level ({m['n']} {level})"
            )
            written.append(name)

    # --- anomaly score -----------------------------------------------------------------------------
    deployed, deployed_thresholds, pooled_col, deployed_channels = deployed_scores(model, outputs)
    ratio = deployed / deployed_thresholds
    unknown_col = -1 if pooled_col is None else pooled_col
    as_machine = [s.machine if s.machine is not None else r.machine for r in outputs.recordings]
    col_file = np.array([machines.index(m) if m in machines else unknown_col for m in as_machine])
    col_win = col_file[outputs.file_index]
    rows = np.arange(len(ratio))
    win_ratio = np.where(col_win >= 0, ratio[rows, np.maximum(col_win, 0)], ratio[:, : len(machines)].min(axis=1))
    win_raw = np.where(col_win >= 0, deployed[rows, np.maximum(col_win, 0)], win_ratio)
    normal_file = np.array([r.normal for r in outputs.recordings], bool)
    normal_win = normal_file[outputs.file_index]
    file_ratio = file_means(win_ratio, outputs.file_index, n_files)
    file_raw = file_means(win_raw, outputs.file_index, n_files)
    unknown = sorted({r.machine for r, c in zip(outputs.recordings, col_file) if c < 0 or c == pooled_col})
    if unknown and pooled_col is not None:
        notes.append(
            f"machine id(s) unknown to the model ({', '.join(unknown)}): scored against the pooled normal "
            "reference of all known machines with its own threshold, as the runtime does; pass --machine "
            "to choose one"
        )
    elif unknown:
        notes.append(
            f"machine id(s) unknown to the model ({', '.join(unknown)}): scored against the closest "
            f"known machine (smallest score/threshold), as the runtime does; pass --machine to choose one"
        )

    def anomaly_block(win_sel, file_sel, win_values, file_values, threshold) -> dict:
        return {
            "file_level": score_metrics(
                file_values[file_sel & normal_file], file_values[file_sel & ~normal_file], threshold
            ),
            "window_level": score_metrics(
                win_values[win_sel & normal_win], win_values[win_sel & ~normal_win], threshold
            ),
        }

    def undefined_notes(block: dict, where: str) -> list[str]:
        f = block["file_level"]
        out_notes = []
        if f["anomalous"] == 0:
            out_notes.append(f"no anomalous files{where}: AUC not defined")
        if f["normal"] == 0:
            out_notes.append(f"no normal files{where}: AUC and false-alarm rate not defined")
        return out_notes

    per_machine: dict[str, dict] = {}
    for name in sorted({r.machine for r in outputs.recordings}):
        file_sel = np.array([r.machine == name for r in outputs.recordings])
        win_sel = file_sel[outputs.file_index]
        col = int(col_file[file_sel][0])
        if col >= 0 and col == pooled_col:
            threshold, unit, win_v, file_v = 1.0, "score / threshold (pooled normal reference)", win_ratio, file_ratio
            scored_as = "pooled normal reference of all known machines"
        elif col >= 0:
            threshold, unit, win_v, file_v = float(deployed_thresholds[col]), "anomaly score", win_raw, file_raw
            scored_as = machines[col]
        else:
            threshold, unit, win_v, file_v = 1.0, "score / threshold (closest known machine)", win_ratio, file_ratio
            scored_as = "closest known machine"
        block = anomaly_block(win_sel, file_sel, win_v, file_v, threshold)
        block.update(
            {
                "scored_as": scored_as,
                "score_unit": unit,
                "threshold": threshold,
                "files": int(file_sel.sum()),
                "windows": int(win_sel.sum()),
            }
        )
        block["notes"] = undefined_notes(block, f" for {name}")
        stem = safe_name(name)
        n_w, a_w = win_v[win_sel & normal_win], win_v[win_sel & ~normal_win]
        plot_scores(
            n_w, a_w, threshold, out / f"scores_{stem}.png", f"{name}: window scores (scored as {scored_as})", unit
        )
        block["plots"] = [f"scores_{stem}.png"]
        if len(n_w) and len(a_w):
            curves = {
                f"files ({block['file_level']['normal']}+{block['file_level']['anomalous']})": (
                    file_v[file_sel & normal_file],
                    file_v[file_sel & ~normal_file],
                ),
                f"windows ({len(n_w)}+{len(a_w)})": (n_w, a_w),
            }
            w = block["window_level"]
            plot_roc(
                curves,
                out / f"roc_{stem}.png",
                f"{name}: ROC (scored as {scored_as})",
                (w["false_alarm_rate"], w["detection_rate"]),
            )
            block["plots"].insert(0, f"roc_{stem}.png")
        written += block["plots"]
        per_machine[name] = block

    overall = anomaly_block(np.ones(len(win_ratio), bool), np.ones(n_files, bool), win_ratio, file_ratio, 1.0)
    overall["score_unit"] = "score / threshold of the recording's machine (1.0 = threshold)"
    aucs = [b["file_level"]["auc"] for b in per_machine.values() if b["file_level"]["auc"] is not None]
    paucs = [b["file_level"]["pauc_dcase"] for b in per_machine.values() if b["file_level"]["pauc_dcase"] is not None]
    overall["mean_over_machines"] = {
        "auc": float(np.mean(aucs)) if aucs else None,
        "pauc_dcase": float(np.mean(paucs)) if paucs else None,
        "machines": len(aucs),
    }
    overall_notes = undefined_notes(overall, "")
    notes += overall_notes
    if len(per_machine) > 1:  # per machine only what the overall notes do not already say
        said = {n.split(":")[0] for n in overall_notes}
        notes += [n for b in per_machine.values() for n in b["notes"] if n.split(" for ")[0] not in said]

    # --- baselines on the same files ----------------------------------------------------------------
    baselines_block, why = baseline_metrics(
        s, model_dir, outputs, channel, machines, normal_file, embedding_ratio(model, outputs, col_file)
    )
    if why:
        notes.append(why)
    else:
        baselines_block["deployed"] = {
            k: {m: overall[k][m] for m in ("auc", "pauc_dcase")} for k in ("file_level", "window_level")
        }
    # the score's side channels on the same files: each alone, and a window counted by the larger of the
    # fused ratio and the channels' (the live loop keeps a running total for each; either raises the alert)
    channel_block = None
    side = channel_ratios(deployed_channels, outputs, col_file)
    if side:
        every = np.ones(len(win_ratio), bool)

        def aucs(win_values) -> dict:
            file_values = file_means(win_values, outputs.file_index, n_files)
            return {
                "file_level": {
                    "auc": _auc(file_values, normal_file, np.ones(n_files, bool)),
                    "pauc_dcase": _pauc(file_values, normal_file, np.ones(n_files, bool)),
                },
                "window_level": {
                    "auc": _auc(win_values, normal_win, every),
                    "pauc_dcase": _pauc(win_values, normal_win, every),
                },
            }

        channel_block = {
            "channels": {ch: aucs(r) for ch, r in side.items()},
            "deployed_with_channels": {
                **aucs(np.max([win_ratio, *side.values()], axis=0)),
                "definition": "per window the larger of the fused score's ratio and the side channels' (each over "
                "its threshold)",
            },
        }
        if baselines_block is not None:  # beside the baselines in their table
            baselines_block.update(channel_block)

    # --- alerts: the recordings as continuous streams through the live Analyzer ----------------------
    alerts = None
    if s.alerts:
        alerts, plots = alert_level(s, model_path, model, outputs.recordings, channel, out)
        written += plots  # alerts["note"] says when the figures rest on little audio

    # --- parity ------------------------------------------------------------------------------------
    parity = None
    if s.parity:
        parity, why = (
            parity_check(s, card, reference, outputs, channel, model.embedding_thresholds, model)
            if reference
            else (None, reference_note)
        )
        if why:
            notes.append(why)
        elif parity["argmax_agreement"] < PARITY_AGREEMENT or parity["max_probability_diff"] > PARITY_MAX_DP:
            notes.append(
                f"parity: the deployed model and the Keras head disagree on the most probable class of "
                f"{100 * (1 - parity['argmax_agreement']):.1f}% of the compared windows (largest "
                f"probability difference {parity['max_probability_diff']:.2f}); see parity in metrics.json"
            )
    else:
        notes.append("parity check not run (--no-parity)")

    # --- files.csv ---------------------------------------------------------------------------------
    with open(out / FILES_NAME, "w", newline="") as handle:
        w = csv.writer(handle)
        w.writerow(
            [
                "path",
                "label",
                "machine",
                "normal",
                "windows",
                "predicted",
                "probability",
                "mean_score",
                "mean_score_over_threshold",
                "flagged",
            ]
        )
        counts = np.bincount(outputs.file_index, minlength=n_files)
        for i, r in enumerate(outputs.recordings):
            w.writerow(
                [
                    str(r.path),
                    r.label,
                    r.machine,
                    int(r.normal),
                    int(counts[i]),
                    labels[pred_file[i]],
                    f"{mean_probs[i, pred_file[i]]:.4f}",
                    f"{file_raw[i]:.6g}",
                    f"{file_ratio[i]:.4f}",
                    int(file_ratio[i] >= 1.0),
                ]
            )
    written.append(FILES_NAME)

    metrics = {
        "format": EVAL_FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "accuracy": cls_window["accuracy"],
        "macro_f1": cls_window["macro_f1"],
        "anomaly_auc": overall["file_level"]["auc"],
        "anomaly_pauc": overall["file_level"]["pauc_dcase"],
        "false_alarm_rate": overall["window_level"]["false_alarm_rate"],
        "detection_rate": overall["window_level"]["detection_rate"],
        "files": n_files,
        "windows": int(len(outputs.file_index)),
        "skipped": [{"file": f, "reason": r} for f, r in outputs.skipped],
        "notes": notes,
        "definitions": DEFINITIONS,
        "classification": {
            "head_target": card.head_target,
            "labels": labels,
            "window_level": cls_window,
            "file_level": cls_file,
            "labels_not_in_model": not_labelled,
        },
        "anomaly": overall,
        "per_machine": per_machine,
        "unknown_machines": unknown,
        "unknown_machine_rule": (card.raw["anomaly"].get("score") or {}).get(
            "unknown_machine_rule", "smallest score/threshold over the known machines"
        ),
        "baselines": baselines_block,
        "score_channels": channel_block,  # also inside "baselines" when those could be computed
        "parity": parity,
        "alerts": alerts,
        "model": {
            "path": str(model_path.resolve()),
            "sha256": model.sha256,
            "quantization": card.quantization,
            "runtime": model.runtime,
            "yamnet_sha256": card.yamnet_sha256,
            "card_created": card.created,
            "labels": labels,
            "machines": machines,
            "thresholds": {m: float(t) for m, t in zip(machines, thresholds)},
            "anomaly_method": card.threshold_method,
            "anomaly_score": "fused" if card.score_file else "embedding",
        },
        "data": {**source, "summary": datasets.summarize(outputs.recordings)},
        "settings": {
            **s.as_dict(),
            "channel_used": channel,
            "out": str(out),
            "window_samples": config.WINDOW_SAMPLES,
            "hop_samples": config.HOP_SAMPLES,
            "pauc_max_fpr": PAUC_MAX_FPR,
            "fanwatch": __version__,
        },
        "outputs": written + [METRICS_NAME],
        "seconds": None,
    }
    metrics["seconds"] = round(time.time() - started, 1)
    datasets.write_json(out / METRICS_NAME, metrics)
    print_summary(metrics, out)
    return metrics


def alert_level(
    s: EvalSettings, model_path: Path, model: runtime.SoundClassifier, recordings, channel, out: Path
) -> tuple[dict, list[str]]:
    """Alert-level figures (:mod:`fanwatch.alert_eval`): per machine id, the normal recordings as one stream
    and each anomalous one as a fault stream, through the live Analyzer with the model card's alert rules
    (and the site calibration beside the model unless ``s.site`` is off)."""
    from . import alert_eval, site
    from .live.analyzer import Analyzer
    from .live.settings import DecisionSettings

    site_model = site.load(model_path, model.sha256) if s.site else None
    if site_model is not None:
        log(
            f"alerts: applying the site calibration beside the model ({site.describe(site_model)}); "
            "--no-site ignores it"
        )
    classifiers: dict[str, runtime.SoundClassifier] = {}

    def make_analyzer(machine: str):
        known = machine if machine in model.machines and s.machine is None else s.machine
        if known not in classifiers:
            classifiers[known] = model if known == s.machine else runtime.SoundClassifier(model_path, machine=known)
        return Analyzer(classifiers[known], None, channel, DecisionSettings(), site_model=site_model)

    figures, plots = alert_eval.evaluate_alerts(make_analyzer, recordings, out, progress=s.progress)
    rule = (model.card.alerts or {}).get("rule")
    figures["rule"] = site_model.rule.to_dict() if site_model is not None else rule
    from .live.decisions import channel_rules_from_card

    channel_rules = channel_rules_from_card(model.card, DecisionSettings(), site_model)
    if channel_rules:
        figures["channel_rules"] = {ch: r.to_dict() for ch, r in channel_rules.items()}
    figures["site"] = None if site_model is None else {"file": site.SITE_JSON, **site_model.info}
    if not model.card.alerts:
        figures["note"] = "the model card has no calibrated alert rule (trained by an older fanwatch): defaults used"
    return figures, plots


# --------------------------------------------------------------------------------------------------
# console


def _f(value, fmt: str = ".3f") -> str:
    return "n/a" if value is None else format(value, fmt)


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def print_summary(m: dict, out: Path) -> None:
    src = m["data"]
    where = src.get("split") if src["source"] == "test split" else src.get("root")
    log("")
    log(
        f"evaluated {m['files']} files ({m['windows']} windows) from the {src['source']} {where}; "
        f"{len(m['skipped'])} skipped"
    )
    cw, cf = m["classification"]["window_level"], m["classification"]["file_level"]
    if cw["accuracy"] is not None:
        log(
            f"classification ({len(m['classification']['labels'])} labels): window accuracy {_f(cw['accuracy'])}, "
            f"macro F1 {_f(cw['macro_f1'])} ({cw['n']} windows); file accuracy {_f(cf['accuracy'])}, "
            f"macro F1 {_f(cf['macro_f1'])} ({cf['n']} files)"
        )
    else:
        log("classification: not defined (no file with one of the model's labels)")
    a = m["anomaly"]
    log(
        f"anomaly, file level (DCASE): AUC {_f(m['anomaly_auc'])}, pAUC(FPR<={PAUC_MAX_FPR}) "
        f"{_f(m['anomaly_pauc'])}; at the model's thresholds: false alarms {_pct(m['false_alarm_rate'])} of "
        f"{a['window_level']['normal']} normal windows, detections {_pct(m['detection_rate'])} of "
        f"{a['window_level']['anomalous']} anomalous windows"
    )
    if len(m["per_machine"]) > 1 or m["unknown_machines"]:
        for name, b in m["per_machine"].items():
            f, w = b["file_level"], b["window_level"]
            log(
                f"  {name} (as {b['scored_as']}): AUC {_f(f['auc'])}, pAUC {_f(f['pauc_dcase'])}, "
                f"false alarms {_pct(w['false_alarm_rate'])}, detections {_pct(w['detection_rate'])} "
                f"({f['normal']}+{f['anomalous']} files)"
            )
    b = m.get("baselines") or (
        {"deployed": None, **m["score_channels"]} if m.get("score_channels") else None
    )  # without baselines: the side channels' figures alone
    if b:
        log(
            "same test files, file AUC / pAUC, window AUC / pAUC "
            + (
                "(baselines fitted on the model's normal training files):"
                if m.get("baselines")
                else "(no baselines: the model's training files were not found):"
            )
        )
        rows = [(name, b.get(name)) for name in ("deployed", "deployed_with_channels")]
        rows += [(f"{ch} channel", v) for ch, v in (b.get("channels") or {}).items()]
        rows += [(name, b.get(name)) for name in ("embedding_knn", "loudness", "ltas")]
        for name, v in rows:
            if v:
                f, w = v["file_level"], v["window_level"]
                log(f"  {name:22s} {_f(f['auc'])} / {_f(f['pauc_dcase'])}, {_f(w['auc'])} / {_f(w['pauc_dcase'])}")

    a = m.get("alerts")
    if a:
        log(
            f"alerts (test recordings as streams through the live loop): {a['false_alerts']} false alert(s) in "
            f"{a['normal_hours'] * 60:.1f} min of normal audio ({_f(a['false_alerts_per_hour'], '.2f')} per hour); "
            f"{a['faults_alerted']} of {a['fault_streams']} fault recordings alerted, "
            f"{_pct(a['share_alerted_within_horizon'])} within {a['horizon_s']:g} s, time to alert median "
            f"{_f(a['median_time_to_alert_s'], '.1f')} s, p95 {_f(a['p95_time_to_alert_s'], '.1f')} s"
            + (" (site calibration applied)" if a.get("site") else "")
        )
    p = m["parity"]
    if p:
        log(
            f"parity TFLite vs Keras head ({p['windows']} windows): max |dp| {p['max_probability_diff']:.2e}, "
            f"max |d score| {p['max_score_diff']:.2e} ({p['max_score_diff_over_threshold']:.2e} of the threshold), "
            f"decisions agree on {_pct(p['decision_agreement'])} of windows"
            + (
                f"; band levels max |d| {p['max_band_level_diff']:.1e}, fused score max relative diff "
                f"{p['max_relative_fused_diff']:.1e}"
                if "max_band_level_diff" in p
                else ""
            )
        )
    for note in m["notes"]:
        log(f"note: {note}")
    if m["skipped"]:
        log(f"skipped {len(m['skipped'])} file(s):")
        for s in m["skipped"]:
            log(f"  {s['file']}: {s['reason']}")
    log(f"wrote {len(m['outputs'])} files to {out} (metrics.json, plots) in {m['seconds']:.0f} s")
