"""train.py's work: data -> split -> embeddings -> head + anomaly score -> one end-to-end TFLite model."""

from __future__ import annotations

import math
import os
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import (
    __version__,
    anomaly,
    audio,
    augment,
    bands,
    config,
    datasets,
    embeddings,
    evaluation,
    evidence,
    export,
    runtime,
    scorer,
    spectral,
)
from .card import FORMAT as CARD_FORMAT
from .card import write_card
from .errors import FanwatchError
from .runtime import ANOMALY_NAME, FLOAT_NAME, HEAD_NAME, SCORER_NAME, SPLIT_NAME

PARITY_WINDOWS = 24  # windows checked Keras vs TFLite after export
# The deployed file must reproduce the Keras head + numpy score on the cached front-end embeddings
# (measured: probabilities 1e-6, scores 1e-5 relative, embedding cosine 1.0); beyond these it is not
# deployed.
PARITY_LIMITS = {
    "max_probability_diff": 1e-3,
    "max_relative_score_diff": 1e-3,
    "min_embedding_cosine": 0.9999,
    "max_band_level_diff": 1e-2,
    "max_relative_fused_diff": 1e-3,
}

EMPTY_DATA_HELP = """no recordings found in {data}.
Lay out recordings in one of these ways (WAV/FLAC/OGG, any rate, any channel count):
  {data}/<class>/*.wav                                  one folder per machine state / fault,
                                                        e.g. on_state/ off_state/ fault_bearing/
  {data}/[<snr>_]<machine>/id_XX/{{normal,abnormal}}/*.wav  MIMII
  {data}/<machine>/{{train,test}}/{{normal,anomaly}}_id_XX_NNNNNNNN.wav   DCASE 2020 Task 2
A class whose name has a word starting with fault, anomal, abnormal, broken, defect, damage or fail
(fault_bearing, abnormal, ...) is anomalous; or say which with --normal-classes / --anomalous-classes.
Or try the synthetic fan demo: python train.py --demo"""


@dataclass
class TrainSettings:
    data: Path
    out: Path
    yamnet: str | None = None
    cache: str | None = None
    seed: int = 0
    layout: str = "auto"
    normal_classes: str | None = None
    anomalous_classes: str | None = None
    channel: str | int = "mean"
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    quantization: str = export.DEFAULT_QUANTIZATION
    anomaly_method: str = anomaly.DEFAULT_METHOD
    false_alarm_rate: float = anomaly.DEFAULT_FALSE_ALARM_RATE
    score_components: str = "embedding:2,shape:1"
    score_channels: str = "modulation_peak,embedding"  # side channels of the score, comma-separated ("none": none)
    score_horizon: int = scorer.DEFAULT_HORIZON
    false_alerts_per_day: float = evidence.DEFAULT_FALSE_ALERTS_PER_DAY
    min_alert_level: float = evidence.MIN_ALERT_LEVEL  # the score's and channels' alert levels never below this
    epochs: int = 200
    patience: int = 15
    hidden: int = 0
    augment: int = 0  # nuisance copies of each training recording for the head (fanwatch.augment), opt-in
    workers: int | None = None
    progress: bool = True
    extra: dict = field(default_factory=dict)

    def validate(self) -> None:
        """Bad values end the run before any work, in one line."""
        if self.seed < 0:
            raise FanwatchError(f"--seed must be 0 or more, not {self.seed}")
        if (
            not 0 <= self.val_fraction < 1
            or not 0 <= self.test_fraction < 1
            or self.val_fraction + self.test_fraction >= 1
        ):
            raise FanwatchError("--val-fraction and --test-fraction must be in [0, 1) and leave files to train on")
        if not 0 < self.false_alarm_rate < 0.5:
            raise FanwatchError(f"--false-alarm-rate must be between 0 and 0.5, not {self.false_alarm_rate}")
        if not 0 < self.false_alerts_per_day <= 1000:
            raise FanwatchError(f"--false-alerts-per-day must be between 0 and 1000, not {self.false_alerts_per_day}")
        if not 0 <= self.min_alert_level <= 100:
            raise FanwatchError(f"--min-alert-level must be between 0 and 100, not {self.min_alert_level}")
        if self.epochs < 1 or self.patience < 1 or self.hidden < 0:
            raise FanwatchError("--epochs and --patience must be at least 1, --hidden 0 or more")
        if not 0 <= self.augment <= 10:
            raise FanwatchError(f"--augment must be a whole number from 0 to 10, not {self.augment}")
        if self.workers is not None and self.workers < 1:
            raise FanwatchError("--workers must be at least 1")
        if self.quantization not in export.QUANTIZATIONS:
            raise FanwatchError(f"unknown quantization '{self.quantization}'")
        if self.anomaly_method not in anomaly.METHODS:
            raise FanwatchError(f"unknown anomaly method '{self.anomaly_method}'")
        self.score_config()

    def score_config(self) -> scorer.ScoreConfig:
        weights = scorer.parse_components(self.score_components)
        channels = scorer.parse_channels(self.score_channels)
        # the embedding may be both: the fused score weighs it with the spectral shape, its channel watches it
        # at full strength (on the real fan it separated the fault best); a band component is one or the other
        if "embedding" in channels and set(weights) == {"embedding"}:  # two identical totals
            rest = ",".join(c for c in channels if c != "embedding") or "none"
            raise FanwatchError(
                "with --score embedding alone the embedding side channel would be a copy of the fused score: "
                f"pass --score-channels {rest}"
            )
        both = [c for c in channels if c in weights and c != "embedding"]
        if both:
            raise FanwatchError(
                f"{', '.join(both)} is both weighted in the fused score (--score) and a side channel "
                "(--score-channels): choose one"
            )
        return scorer.ScoreConfig(weights=weights, horizon=self.score_horizon, channels=channels)

    def as_dict(self) -> dict:
        d = {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items() if k != "extra"}
        d.update(self.extra)
        return d


def log(message: str) -> None:
    print(message, flush=True)


def build_end_to_end(weights, head_model, anomaly_model: anomaly.AnomalyModel):
    """waveform -> {probabilities, anomaly_score, embedding, band_levels}: one Keras model, exported as one file.

    ``anomaly_score`` is the embedding k-NN (or Mahalanobis) score per machine; the deployed anomaly
    decision is fanwatch.scorer's, computed in numpy from ``embedding`` and ``band_levels``."""
    import keras

    from . import yamnet

    frontend = yamnet.build_model(weights, with_scores=False, name="frontend", with_bands=True)
    waveform = keras.Input(shape=(config.WINDOW_SAMPLES,), dtype="float32", name="waveform")
    front = frontend(waveform)
    emb = front["embedding"]
    outputs = {
        "probabilities": head_model(emb),
        "anomaly_score": anomaly.keras_layer(anomaly_model)(emb),
        "embedding": emb,
        spectral.OUTPUT_NAME: front[spectral.OUTPUT_NAME],
    }
    return keras.Model(waveform, outputs, name="sound_classifier")


def _library_versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version(), "fanwatch": __version__}
    for name in (
        "tensorflow",
        "tensorflow-cpu",
        "keras",
        "numpy",
        "ai-edge-litert",
        "soxr",
        "soundfile",
        "scikit-learn",
    ):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


OUTPUT_NAMES = (
    SPLIT_NAME,
    HEAD_NAME,
    ANOMALY_NAME,
    SCORER_NAME,
    bands.PROFILE_NAME,
    FLOAT_NAME,
    runtime.MODEL_NAME,
    runtime.CARD_NAME,
)
"""What a run writes into --out; the model card moves into place last (it names the others)."""
STALE_NAMES = ("site_calibration.json", "site_calibration.npz", "site_band_profile.json")
"""Made for an earlier model (its sha256) and refused with any other: removed when a new one is written."""


def train(s: TrainSettings) -> dict:
    """The whole run; returns the model card (also written to ``s.out``).

    Everything is written into a temporary folder inside ``s.out`` and moved into place only when the run
    has succeeded, so a failed or interrupted run leaves the previous model, its split and its card as
    they were (and no half-written new ones).
    """
    s.validate()
    data = Path(s.data)
    if not data.exists():
        raise FanwatchError(
            f"{data}: folder not found, so no recordings found (give --data the folder that "
            "holds them, or try the synthetic fan demo: python train.py --demo)"
        )
    if not datasets.has_audio_files(data):  # also follows symlinked folders; "not a folder" comes from there
        raise FanwatchError(EMPTY_DATA_HELP.format(data=data))
    out = Path(s.out).expanduser()
    config.ensure_writable_folder(out, "--out")
    config.ensure_writable_folder(config.resolve_cache_dir(s.cache), "--cache")
    work = Path(tempfile.mkdtemp(prefix=".train-partial-", dir=out))  # same file system: os.replace is atomic
    try:
        card = _train(s, work, out)
        produced = [name for name in OUTPUT_NAMES if (work / name).is_file()]
        for name in OUTPUT_NAMES:  # a file of an older run that this run does not write would not match
            if name not in produced and (out / name).is_file():
                (out / name).unlink()
        for name in produced:
            os.replace(work / name, out / name)
        stale = [name for name in STALE_NAMES if (out / name).is_file()]
        for name in stale:
            (out / name).unlink()
        if stale:
            log(f"removed the site calibration of the previous model ({', '.join(stale)}): enroll again")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log(f"done in {card['train_seconds']:.0f} s: {out / runtime.MODEL_NAME}, {out / runtime.CARD_NAME}")
    return card


def _train(s: TrainSettings, out: Path, final: Path) -> dict:
    """The run itself, writing into ``out`` (a temporary folder); ``final`` is where it will end up."""
    started = time.time()
    data = Path(s.data)
    recs, layout = datasets.scan_dataset(data, s.layout, s.normal_classes, s.anomalous_classes)
    splits = datasets.split_recordings(recs, seed=s.seed, val_fraction=s.val_fraction, test_fraction=s.test_fraction)
    datasets.save_split(out / SPLIT_NAME, splits, data, params={"layout": layout})
    summary = datasets.summarize(recs)
    log(
        f"data: {summary['files']} files in {data} ({layout} layout), {summary['normal']} normal, "
        f"{summary['anomalous']} anomalous; split train/val/test = "
        f"{len(splits['train'])}/{len(splits['val'])}/{len(splits['test'])} files"
    )

    extractor, yamnet_sha = embeddings.make_extractor(s.yamnet, s.quantization, s.cache, s.channel, s.workers)
    sets = {}
    skipped: list[tuple[str, str]] = []
    for name in datasets.SPLITS:
        sets[name] = extractor.embed_recordings(splits[name], progress=s.progress, desc=f"embeddings ({name})")
        skipped += sets[name].skipped
    train_set, val_set = sets["train"], sets["val"]
    embeddings.require_windows(train_set, "training")

    # --- classifier head -------------------------------------------------------------------------
    train_labels = sorted({r.label for r in train_set.recordings})
    target = "label"
    if len(train_labels) < 2:
        machines = sorted({r.machine for r in train_set.recordings})
        if len(machines) >= 2:
            target, train_labels = "machine", machines
    key = (lambda r: r.machine) if target == "machine" else (lambda r: r.label)
    index = {label: i for i, label in enumerate(train_labels)}

    def targets(es: embeddings.EmbeddingSet) -> tuple[np.ndarray, np.ndarray]:
        y_file = np.array([index.get(key(r), -1) for r in es.recordings], dtype=int)
        y = y_file[es.file_index] if len(es.file_index) else np.zeros(0, int)
        return y, y_file

    y_train, _ = targets(train_set)
    y_val, y_val_file = targets(val_set)
    val_known = y_val >= 0  # a class absent from training cannot be predicted; it is reported
    from .head import train_head

    if len(train_labels) < 2:
        log(
            f"head: one class only ({train_labels[0] if train_labels else 'none'}); "
            "the head always answers it and the anomaly score does the work"
        )
    head_x, head_y = train_set.embeddings, y_train
    augmented = s.augment and len(train_labels) >= 2  # copies teach a head with classes to tell apart
    if augmented:
        extra_x, extra_file = augmented_embeddings(extractor, train_set, s.augment, s.seed, s.progress)
        y_file = targets(train_set)[1]
        head_x, head_y = np.concatenate([head_x, extra_x]), np.concatenate([head_y, y_file[extra_file]])
        log(
            f"head: {len(extra_x)} windows of {s.augment} augmented cop{'y' if s.augment == 1 else 'ies'} of each "
            "training recording (gain, colouring, background noise, another machine's hum; fanwatch/augment.py)"
        )
    head = train_head(
        head_x,
        head_y,
        val_set.embeddings[val_known],
        y_val[val_known],
        train_labels,
        seed=s.seed,
        epochs=s.epochs,
        patience=s.patience,
        hidden=s.hidden,
    )
    validation: dict = {"head_target": target, "epochs": head.epochs}
    if augmented:
        validation["augmentation"] = {"copies_per_recording": s.augment, **augment.describe()}
    if len(val_set.embeddings):
        probs = head.model.predict(val_set.embeddings, verbose=0, batch_size=256)
        pred = probs.argmax(axis=1)
        validation["window"] = evaluation.classification_metrics(y_val[val_known], pred[val_known], train_labels)
        file_pred = evaluation.file_means(probs, val_set.file_index, len(val_set.recordings)).argmax(axis=1)
        known_files = y_val_file >= 0
        validation["file"] = evaluation.classification_metrics(
            y_val_file[known_files], file_pred[known_files], train_labels
        )
        unknown = sorted({key(r) for r, y in zip(val_set.recordings, y_val_file) if y < 0})
        if unknown:
            validation["classes_not_in_training"] = unknown
        w = validation["window"]
        if w["accuracy"] is not None:
            log(
                f"head: validation accuracy {w['accuracy']:.3f}, macro F1 {w['macro_f1']:.3f} "
                f"(window level, {w['n']} windows); file level accuracy {validation['file']['accuracy']:.3f}, "
                f"macro F1 {validation['file']['macro_f1']:.3f}"
            )
    else:
        log("head: no validation recordings, so no validation metrics")

    normal_labels = sorted({key(r) for r in recs if r.normal and key(r) in index})

    # --- anomaly score ----------------------------------------------------------------------------
    anom = anomaly.fit(train_set.embeddings, train_set.machines(), train_set.normal(), s.anomaly_method, s.seed)
    val_scores = anom.score(val_set.embeddings) if len(val_set.embeddings) else np.zeros((0, len(anom.machines)))
    val_machines, val_normal = val_set.machines(), val_set.normal()
    thresholds = anomaly.thresholds_from_normal(
        val_scores[val_normal] if len(val_scores) else val_scores,
        val_machines[val_normal] if len(val_scores) else val_machines,
        anom,
        s.false_alarm_rate,
    )
    anom.thresholds = {m: t["threshold"] for m, t in thresholds.items()}
    bad = [m for m, t in anom.thresholds.items() if not (np.isfinite(t) and t > 0)]
    if bad:
        raise FanwatchError(
            f"the anomaly threshold of {', '.join(bad)} is not a positive number "
            f"({anom.thresholds[bad[0]]}); nothing written"
        )
    embedding_info = _anomaly_validation(anom, val_scores, val_machines, val_normal, val_set)
    embedding_info["method_comparison"] = _compare_methods(s, train_set, val_set, anom)

    # the deployed score: embedding + spectral shape over a horizon (fanwatch.scorer), per machine
    score = scorer.Scorer.fit(_normal_files(train_set), s.score_config(), s.seed)
    score = score.set_thresholds(_normal_files(val_set), s.false_alarm_rate)
    bad = [m for m, t in score.thresholds.items() if not (np.isfinite(t) and t > 0)]
    if bad:
        raise FanwatchError(
            f"the anomaly score's threshold of {', '.join(bad)} is not a positive number "
            f"({score.thresholds[bad[0]]}); nothing written"
        )
    for channel, thresholds in score.channel_thresholds.items():
        bad = [m for m, t in thresholds.items() if not (np.isfinite(t) and t > 0)]
        if bad:
            raise FanwatchError(
                f"the {channel} channel's threshold of {', '.join(bad)} is not a positive number "
                f"({thresholds[bad[0]]}); nothing written (--score-channels none leaves the channel out)"
            )
    anomaly_info = _fused_validation(score, val_set)
    anomaly_info["embedding_knn"] = {m: b.get("auc") for m, b in embedding_info["per_machine"].items()}
    for m in [*score.machines, scorer.POOLED]:
        t = score.threshold_info[m]
        auc = anomaly_info["per_machine"].get(m, {}).get("auc")
        if m == scorer.POOLED and len(score.machines) == 1:
            continue
        log(
            f"anomaly: {m}: threshold {t['threshold']:.3f} ({t['rule']} on {t['source']}, {t['windows']} windows, "
            f"target false-alarm rate {s.false_alarm_rate:.1%})"
            + (f"; validation AUC {auc:.3f} (information only)" if auc is not None else "")
        )

    fault_labels = [label for label in train_labels if target == "label" and label not in normal_labels]
    known = bool(fault_labels and len(val_set.embeddings))
    # one target for the whole alert rule: shared equally by its running totals (the score's, each side
    # channel's and the head's known-fault one), so that together they stay within it
    totals = 1 + len(score.config.channels) + int(known)
    share = s.false_alerts_per_day / totals
    alerts_info = calibrate_alerts(score, val_set, share, s.min_alert_level)
    alerts_info["target_false_alerts_per_day"] = s.false_alerts_per_day
    if known:
        val_probs = head.model.predict(val_set.embeddings, verbose=0, batch_size=256)
        alerts_info["known_fault"] = calibrate_known_faults(val_probs, val_set, train_labels, fault_labels, share)
        kcal = alerts_info["known_fault"]["calibration"]
        log(
            f"alerts: known faults ({', '.join(fault_labels)}): {alerts_info['known_fault']['rule_text']}; expected "
            f"{_fmt_rate(kcal['expected_false_alerts_per_day'])} false alert(s) per day (target {share:.3g})"
        )
    alerts_info["expected_false_alerts_per_day"] = expected_false_alerts_per_day(alerts_info)
    cal = alerts_info["calibration"]
    log(
        f"alerts: {alerts_info['rule_text']}; expected {_fmt_rate(cal['expected_false_alerts_per_day'])} false "
        f"alert(s) per day (target {share:.3g}, 90 % bound "
        f"{_fmt_rate(cal['upper_false_alerts_per_day'])}), from {cal['normal_hours'] * 60:.1f} min of normal "
        f"validation audio ({cal['method']}; {cal['observed_false_alerts']} alert(s) when replayed)"
    )
    for channel, info in alerts_info.get("channels", {}).items():
        ccal = info["calibration"]
        log(
            f"alerts: {channel} channel: {info['rule_text']}; expected "
            f"{_fmt_rate(ccal['expected_false_alerts_per_day'])} false alert(s) per day (target {share:.3g}; "
            f"{ccal['observed_false_alerts']} alert(s) when replayed)"
        )
    log(
        f"alerts: all {totals} running total(s) together: expected "
        f"{_fmt_rate(alerts_info['expected_false_alerts_per_day'])} false alert(s) per day "
        f"(target {s.false_alerts_per_day:g}, shared equally)"
    )

    # --- normal band profile: what an alert's explanation compares with ----------------------------
    profile = bands.fit_from_recordings([r for r in splits["train"] if r.normal], s.channel, s.progress)
    profile.save(out / bands.PROFILE_NAME)
    log(
        f"band profile: {len(profile.edges)} third-octave bands, "
        + ", ".join(f"{m}: {p.windows} normal windows at {p.level_mean:.1f} dBFS" for m, p in profile.machines.items())
    )

    # --- export -----------------------------------------------------------------------------------
    from . import yamnet

    weights = yamnet.load_weights(s.yamnet)
    model = build_end_to_end(weights, head.model, anom)
    head.model.save(out / HEAD_NAME)
    np.savez(
        out / ANOMALY_NAME,
        method=anom.method,
        machines=np.asarray(anom.machines),
        **({"mean": anom.mean, "transform": anom.transform} if anom.method == "mahalanobis" else {"bank": anom.bank}),
    )
    score.save(out / SCORER_NAME)
    paths = {}
    for q, name in (("float32", FLOAT_NAME), (s.quantization, runtime.MODEL_NAME)):
        if q == "float32" and name == runtime.MODEL_NAME:
            continue
        paths[q] = export.export_tflite(model, out / name, q)
    if s.quantization == "float32":
        paths["float32"] = export.export_tflite(model, out / runtime.MODEL_NAME, "float32")
    deployed = paths[s.quantization]
    parity = _parity(deployed, head.model, anom, extractor, splits["val"] or splits["train"], score)
    if (
        parity["max_probability_diff"] > PARITY_LIMITS["max_probability_diff"]
        or parity["max_relative_score_diff"] > PARITY_LIMITS["max_relative_score_diff"]
        or parity["min_embedding_cosine"] < PARITY_LIMITS["min_embedding_cosine"]
        or parity["max_band_level_diff"] > PARITY_LIMITS["max_band_level_diff"]
        or parity["max_relative_fused_diff"] > PARITY_LIMITS["max_relative_fused_diff"]
    ):
        deployed.unlink()
        raise FanwatchError(
            f"the exported model does not reproduce the trained one ({parity}); not deployed (limits {PARITY_LIMITS})"
        )
    log(
        f"export: {final / deployed.name} ({deployed.stat().st_size / 1e6:.1f} MB, {s.quantization}); "
        f"parity with Keras head on deployed embeddings: max |dp| {parity['max_probability_diff']:.2e}, "
        f"max relative score diff {parity['max_relative_score_diff']:.2e}, embedding cosine min "
        f"{parity['min_embedding_cosine']:.6f}, band levels max |d| {parity['max_band_level_diff']:.1e}, "
        f"fused score max relative diff {parity['max_relative_fused_diff']:.1e}"
    )

    card = {
        "format": CARD_FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "labels": train_labels,
        "head_target": target,
        "normal_labels": normal_labels,
        "sample_rate": config.SAMPLE_RATE,
        "window_samples": config.WINDOW_SAMPLES,
        "hop_samples": config.HOP_SAMPLES,
        "inputs": {"waveform": [1, config.WINDOW_SAMPLES]},
        "outputs": {
            "probabilities": [1, len(train_labels)],
            "anomaly_score": [1, len(anom.machines)],
            "embedding": [1, config.EMBEDDING_DIM],
            spectral.OUTPUT_NAME: [1, spectral.BAND_FEATURES],
        },
        "anomaly": {
            "method": anom.method,
            "machines": score.machines,
            "thresholds": {m: score.thresholds[m] for m in score.machines},
            "threshold_rule": f"per machine, the {1 - s.false_alarm_rate:.3g} quantile of a gamma "
            "distribution (method of moments) fitted to the window scores of normal validation "
            "recordings",
            "target_false_alarm_rate": s.false_alarm_rate,
            "fit_windows": anom.fit_windows,
            "threshold_details": {m: score.threshold_info[m] for m in score.machines},
            "validation": anomaly_info,
            "score": {
                "kind": "fused",
                "file": SCORER_NAME,
                **score.config.as_dict(),
                "pooled_threshold": score.thresholds[scorer.POOLED],
                "pooled_threshold_details": score.threshold_info[scorer.POOLED],
                "unknown_machine_rule": scorer.UNKNOWN_MACHINE_RULE,
                "reference_windows": score.describe()["reference_windows"],
                "definition": "fanwatch.scorer: weighted geometric mean of the k-NN distances of its components "
                "(embedding, spectral shape, optionally band fluctuation; each over its normal leave-one-file-out "
                "95th percentile; their weights under 'weights'), "
                f"over the last {score.config.horizon} windows; computed in numpy from the "
                "model's embedding and band_levels outputs; each side channel under 'channels' (by default "
                "modulation_peak: how far the modulation spectrum's shape rises above the nearest normal "
                "windows', and embedding: the embedding's k-NN distance alone) is scored alone with its own "
                "thresholds ('channel_thresholds') and alert rule (alerts.channels)",
                "channel_thresholds": score.channel_thresholds,
            },
            "embedding_score": {
                "output": "anomaly_score",
                "method": anom.method,
                "thresholds": anom.thresholds,
                "threshold_details": thresholds,
                "validation": embedding_info,
                "note": "the model's anomaly_score output (embedding only, one window); the "
                "deployed decision uses the fused score above",
            },
        },
        "alerts": alerts_info,
        "band_profile": {
            "file": bands.PROFILE_NAME,
            "bands": len(profile.edges),
            "machines": {m: p.windows for m, p in profile.machines.items()},
            "source": profile.source,
        },
        "quantization": s.quantization,
        "files": {q: p.name for q, p in paths.items()},
        "sha256": {p.name: config.sha256_file(p) for p in paths.values()},  # ties the card to its model files
        "sizes_bytes": {q: p.stat().st_size for q, p in paths.items()},
        "yamnet": {"path": str(weights.path), "sha256": yamnet_sha},
        "data": {
            "root": str(data),
            "layout": layout,
            "summary": summary,
            "split": {k: len(v) for k, v in splits.items()},
            "windows": {k: int(len(v.embeddings)) for k, v in sets.items()},
            "skipped": [{"file": f, "reason": r} for f, r in skipped],
        },
        "validation": validation,
        "parity": parity,
        "runtimes_verified": _verify_runtimes(deployed),
        "settings": s.as_dict(),
        "versions": _library_versions(),
        "train_seconds": round(time.time() - started, 1),
    }
    write_card(out / runtime.CARD_NAME, card)
    if skipped:
        log(f"skipped {len(skipped)} file(s):")
        for f, r in skipped:
            log(f"  {f}: {r}")
    return card


def augmented_embeddings(
    extractor: embeddings.Extractor, es: embeddings.EmbeddingSet, copies: int, seed: int, progress: bool
) -> tuple[np.ndarray, np.ndarray]:
    """([n, 1024] embeddings, [n] index into ``es.recordings``) of ``copies`` seeded nuisance copies of each
    recording (:mod:`fanwatch.augment`), for the head's training only."""
    from tqdm import tqdm

    out, index = [], []
    for i, rec in enumerate(tqdm(es.recordings, desc="augmented copies (train)", unit="file", disable=not progress)):
        try:
            x = audio.load_audio(rec.path, channel=extractor.channel)
        except FanwatchError as exc:  # it loaded a moment ago; if it no longer does, train without its copies
            tqdm.write(f"augmentation skipped {rec.path}: {exc}")
            continue
        for c in range(copies):
            y, _ = augment.nuisance(x, np.random.default_rng([seed, i, c]))
            emb = extractor.features_signal(y)[0]
            if np.isfinite(emb).all():
                out.append(emb)
                index.append(np.full(len(emb), i))
    if not out:
        return np.zeros((0, config.EMBEDDING_DIM), np.float32), np.zeros(0, int)
    return np.concatenate(out), np.concatenate(index)


def validation_streams(score: scorer.Scorer, val_set: embeddings.EmbeddingSet) -> dict[str, list[np.ndarray]]:
    """Per machine, the deployed window ratios of its normal validation recordings: ``"score"`` (fused score /
    threshold) and each side channel (its score / its threshold), from one scoring pass. Each recording is
    scored as the live loop scores a continuous segment and the recordings are concatenated in order: what the
    live loop would have heard had they been played one after the other. Scored against the machine's own
    reference (``--machine``) and, with several machines, against the pooled one too (the live loop given no
    ``--machine``): one rule covers both."""
    streams: dict[str, list[np.ndarray]] = {"score": [], **{ch: [] for ch in score.config.channels}}
    for name, files in _normal_files(val_set).items():
        targets = [name] + ([scorer.POOLED] if len(score.machines) > 1 else [])
        for target in targets:
            per_file = [score.score_file_channels(target, e, b) for e, b in files]
            if not per_file:
                continue
            streams["score"].append(np.concatenate([f for f, _ in per_file]) / score.threshold(target))
            for ch in score.config.channels:
                threshold = score.channel_threshold(target, ch)
                streams[ch].append(np.concatenate([c[ch] for _, c in per_file]) / threshold)
    return streams


def calibrate_alerts(
    score: scorer.Scorer,
    val_set: embeddings.EmbeddingSet,
    share: float,
    min_alert_level: float = evidence.MIN_ALERT_LEVEL,
) -> dict:
    """The alert rules for the model card: the score's CUSUM and each side channel's
    (:class:`fanwatch.scorer.ScoreConfig`), each threshold set for ``share`` false alerts per day by replaying
    the normal validation recordings through :class:`fanwatch.evidence.AlertRule` (anomalous clips never).
    train.py shares its target equally among these totals and the head's known-fault one."""
    streams = validation_streams(score, val_set)
    if not streams["score"]:
        raise FanwatchError(
            "no normal validation windows to calibrate the alert rule on; add normal recordings or raise --val-fraction"
        )
    floor = min_alert_level or None  # 0: the bound alone (as before the minimum)
    cal = evidence.calibrate(streams["score"], evidence.EvidenceRule(), config.HOP_SECONDS, share, floor=floor)
    out = {
        "rule": cal.rule.to_dict(),
        "rule_text": cal.rule.describe(),
        "hop_s": config.HOP_SECONDS,
        "calibration": cal.to_dict(),
        "note": "normal validation recordings of each machine played one after the other through the live "
        "alert rule; the false-alert rate per day extrapolates the exponential tail of the "
        "evidence peaks, with its 90 % upper confidence bound set to the target; the alert level is never "
        f"below {min_alert_level:g} (whole normal recordings of a real fan sit higher than minutes "
        "of validation audio show)",
        "min_alert_level": min_alert_level,
        "target_share_per_day": share,
    }
    if score.config.channels:
        out["channels"] = {}
        for channel in score.config.channels:
            try:
                ccal = evidence.calibrate(
                    streams[channel], evidence.EvidenceRule(), config.HOP_SECONDS, share, floor=floor
                )
            except FanwatchError as exc:
                raise FanwatchError(f"the {channel} channel: {exc} (--score-channels none leaves it out)") from None
            out["channels"][channel] = {
                "rule": ccal.rule.to_dict(),
                "rule_text": ccal.rule.describe(),
                "calibration": ccal.to_dict(),
            }
    return out


def expected_false_alerts_per_day(alerts_info: dict) -> float | None:
    """Every running total of the alert rule together (score, side channels, known faults): the sum of their
    expected false alerts per day; None when one of them could not be calibrated."""
    parts = [alerts_info["calibration"]]
    parts += [c["calibration"] for c in (alerts_info.get("channels") or {}).values()]
    if alerts_info.get("known_fault"):
        parts.append(alerts_info["known_fault"]["calibration"])
    rates = [p.get("expected_false_alerts_per_day") for p in parts]
    if any(r is None or not math.isfinite(r) for r in rates):
        return None
    return round(sum(rates), 4)


def calibrate_known_faults(
    val_probs: np.ndarray,
    val_set: embeddings.EmbeddingSet,
    labels: list[str],
    fault_labels: list[str],
    false_alerts_per_day: float,
) -> dict:
    """The known-fault rule: the CUSUM of the odds the head gives its fault classes, its threshold set for
    ``false_alerts_per_day`` on the normal validation recordings (played one after the other)."""
    from .live.decisions import KNOWN_FAULT_DEFAULTS, fault_odds

    fault_index = [labels.index(label) for label in fault_labels]
    normal = val_set.normal()
    order = np.argsort(val_set.file_index[normal], kind="stable")
    odds = np.array([fault_odds(p, fault_index) for p in val_probs[normal][order]])
    cal = evidence.calibrate(
        [odds],
        evidence.EvidenceRule(**KNOWN_FAULT_DEFAULTS),
        config.HOP_SECONDS,
        false_alerts_per_day,
        reference=KNOWN_FAULT_DEFAULTS["reference"],
    )
    return {
        "classes": fault_labels,
        "rule": cal.rule.to_dict(),
        "calibration": cal.to_dict(),
        "rule_text": cal.rule.describe("fault odds"),
    }


def _fmt_rate(value) -> str:
    return "?" if value is None else f"{value:.2g}"


def _anomaly_validation(anom, scores, machines, normal, es) -> dict:
    """AUC and the best threshold per machine on validation data, information only."""
    per_machine = {}
    for m, name in enumerate(anom.machines):
        sel = machines == name
        n, a = scores[sel & normal, m], scores[sel & ~normal, m]
        per_machine[name] = {
            "normal_windows": int(len(n)),
            "anomalous_windows": int(len(a)),
            "auc": anomaly.roc_auc(n, a),
            "false_alarm_rate_at_threshold": float((n >= anom.thresholds[name]).mean()) if len(n) else None,
            "detection_rate_at_threshold": float((a >= anom.thresholds[name]).mean()) if len(a) else None,
            "if_labelled_anomalies_were_used": anomaly.best_threshold_info(n, a),
        }
    return {"note": "information only: thresholds never use anomalous clips", "per_machine": per_machine}


def _normal_files(es: embeddings.EmbeddingSet) -> dict:
    """{machine: [(embeddings, band levels) of each normal recording]}."""
    out: dict = {}
    for rec, feats in zip(es.recordings, es.files()):
        if rec.normal and len(feats[0]):
            out.setdefault(rec.machine, []).append(feats)
    return out


def _fused_validation(score: scorer.Scorer, es: embeddings.EmbeddingSet) -> dict:
    """Validation AUC of the deployed score per machine, information only."""
    per_machine = {}
    for name in score.machines:
        n, a = [], []
        for rec, (e, b) in zip(es.recordings, es.files()):
            if rec.machine == name and len(e):
                (n if rec.normal else a).append(score.score_file(name, e, b))
        n = np.concatenate(n) if n else np.zeros(0)
        a = np.concatenate(a) if a else np.zeros(0)
        t = score.thresholds[name]
        per_machine[name] = {
            "normal_windows": int(len(n)),
            "anomalous_windows": int(len(a)),
            "auc": anomaly.roc_auc(n, a),
            "false_alarm_rate_at_threshold": float((n >= t).mean()) if len(n) else None,
            "detection_rate_at_threshold": float((a >= t).mean()) if len(a) else None,
            "if_labelled_anomalies_were_used": anomaly.best_threshold_info(n, a),
        }
    return {"note": "information only: thresholds never use anomalous clips", "per_machine": per_machine}


def _compare_methods(s: TrainSettings, train_set, val_set, chosen) -> dict:
    """Validation AUC of each scoring method, when the validation split holds anomalies."""
    normal = val_set.normal()
    if normal.all() or not normal.any():
        return {"note": "no anomalous and normal validation windows together: methods not compared"}
    out = {}
    for method in anomaly.METHODS:
        model = (
            chosen
            if method == chosen.method
            else anomaly.fit(train_set.embeddings, train_set.machines(), train_set.normal(), method, s.seed)
        )
        scores = model.score(val_set.embeddings)
        machines = val_set.machines()
        aucs = {}
        for m, name in enumerate(model.machines):
            sel = machines == name
            aucs[name] = anomaly.roc_auc(scores[sel & normal, m], scores[sel & ~normal, m])
        out[method] = aucs
    return out


def _parity(model_path: Path, head_model, anom, extractor, recs, score: scorer.Scorer) -> dict:
    """Deployed TFLite vs the Keras head + numpy scores on the cached front-end embeddings and band levels."""

    tfl = runtime.TFLiteModel(model_path)
    windows, embs, bands, fused_diff = [], [], [], [0.0]
    for rec in recs:
        try:
            signal = audio.load_audio(rec.path, channel=extractor.channel)
        except FanwatchError:
            continue
        w = audio.frame_windows(signal)
        emb, band = extractor.file_features(rec.path)
        take = min(len(w), 4)
        deployed = [tfl(x) for x in w[:take]]
        # the fused score from the deployed outputs vs from the cached front end, same windows in order
        name = score.resolve(rec.machine)
        ref = score.score_file(name, emb[:take], band[:take])
        got = score.score_file(
            name, np.stack([o["embedding"] for o in deployed]), np.stack([o[spectral.OUTPUT_NAME] for o in deployed])
        )
        fused_diff.append(float((np.abs(got - ref) / np.maximum(np.abs(ref), 1e-6)).max()))
        windows.extend(w[:take])
        embs.extend(emb[:take])
        bands.extend(band[:take])
        if len(windows) >= PARITY_WINDOWS:
            break
    if not windows:
        raise FanwatchError("no window to check the exported model with")
    embs = np.asarray(embs)
    ref_p = head_model.predict(embs, verbose=0)
    ref_s = anom.score(embs)
    outs = [tfl(w) for w in windows]
    p = np.stack([o["probabilities"] for o in outs])
    sc = np.stack([o["anomaly_score"] for o in outs])
    e = np.stack([o["embedding"] for o in outs])
    b = np.stack([o[spectral.OUTPUT_NAME] for o in outs])
    if not (np.isfinite(p).all() and np.isfinite(sc).all() and np.isfinite(e).all() and np.isfinite(b).all()):
        raise FanwatchError(f"{model_path}: the exported model outputs NaN or inf; not deploying it")
    cos = (e * embs).sum(1) / np.maximum(np.linalg.norm(e, axis=1) * np.linalg.norm(embs, axis=1), 1e-12)
    return {
        "windows": int(len(windows)),
        "max_probability_diff": float(np.abs(p - ref_p).max()),
        "max_relative_score_diff": float((np.abs(sc - ref_s) / np.maximum(np.abs(ref_s), 1e-6)).max()),
        "min_embedding_cosine": float(cos.min()),
        "max_band_level_diff": float(np.abs(b - np.asarray(bands)).max()),
        "max_relative_fused_diff": float(max(fused_diff)),
    }


def _verify_runtimes(model_path: Path) -> list[str]:
    """Which installed TFLite runtimes load and run the model with finite outputs."""
    ok = []
    for name in runtime.RUNTIMES:
        try:
            m = runtime.TFLiteModel(model_path, runtime=name)
            out = m(np.zeros(config.WINDOW_SAMPLES, np.float32) + 1e-3)
            if all(np.isfinite(v).all() for v in out.values()):
                import importlib.metadata as md

                pkg = {"ai_edge_litert": "ai-edge-litert", "tflite_runtime": "tflite-runtime"}.get(name, name)
                try:
                    ok.append(f"{name} {md.version(pkg)}")
                except md.PackageNotFoundError:
                    ok.append(name)
        except Exception:  # a runtime that fails is simply not listed
            continue
    return ok
