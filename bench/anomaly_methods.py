#!/usr/bin/env python3
"""Which anomaly score: the deployed one against baselines that learn nothing, on the same splits.

Methods (all fitted on normal training recordings only, per machine):
  loudness      RMS dB, z-scored, mean distance to the 5 nearest normal training clips (windows)
  ltas          long-term average spectrum: mean log power of 64 linear bands (1024-point FFT), z-scored,
                mean Euclidean distance to the 5 nearest normal training clips (windows)
  yamnet_knn    the previous score: mean cosine distance to the 5 nearest normal embeddings, per window
  fused         the fused score (fanwatch.scorer defaults): embedding and spectral shape, geometric mean
                of their normalised k-NN distances, over a horizon of 8 windows
  fused|embedding|modulation_peak  the deployed score: the fused score and its two side channels, the
                embedding's k-NN distance alone and how far the modulation spectrum's shape rises above the
                nearest normal windows', each in units of its scale; a window counts by the largest (the live
                loop keeps one evidence for each and any raises the alert)
  fused|modulation_peak  the previous deployed score: the fused score and the modulation-peak channel
  fused|modulation  the one before: the same with the modulation spectrum's Euclidean k-NN distance
  fused+fluct   the option with the bands' fluctuation: embedding 4/7, shape 2/7, fluctuation 1/7
  options       emb_h8 (embedding alone, horizon 8), shape_h8 (shape alone), fluct_h8 (band fluctuation
                alone), modulation_h8 (modulation spectrum alone), peak_h8 (modulation_peak alone), fused+level
                (with the level), fused_closest (fused, but a machine not in training by the earlier rule: the
                smallest score over the known machines, window by window, instead of the pooled reference)

File level = the clip feature for the baselines (as they are defined), the mean window score for the
others (DCASE). Window level = every 0.975 s window. AUC and DCASE pAUC (FPR <= 0.1).

Splits:
  synthetic sessions: DCASE layout, 3 recording sessions, train on two, test on the third (a day never
  heard in training), machines id_00 and id_02, --seeds seeds x --snrs;
  synthetic per-file: MIMII layout where every file has its own room and microphone, seed 0, +6 dB;
  synthetic unknown machine: sessions data of id_00, id_02, id_04; each left out of training in turn and its
  test day scored as a machine the model does not know (pooled reference; baselines pooled too);
  dcase2020_id00 (real fan): 75 normal clips and 1 anomalous clip; 5 folds, 60 normal train clips,
  15 held-out normal clips + the anomalous clip as test;
  mimii_8ch (real, channel mean): per machine type, leave one normal clip out (references: the other
  normal clips of that type, often another unit), test the held-out normal against the abnormal ones.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np

from bench._common import REAL, write_results

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

MIMII_GROUPS = {
    "fan": (["fan.00.normal.00000000.wav", "fn444.wav"], ["fab969.wav"]),
    "pump": (["pump.00.normal.00000000.wav", "pn113.wav"], ["pab403.wav"]),
    "slider": (["slider.00.normal.00000000.wav", "sn576.wav"], ["sab18.wav"]),
    "valve": (
        [
            "vavle.00.normal.00000000.wav",
            "vavle.00.normal.00000023.wav",
            "vn421.wav",
            "valve_id00_n_00000117.wav",
            "valve_id06_n_00000048.wav",
        ],
        ["vab291.wav", "valve_id06_abn_00000008.wav"],
    ),
}
BASELINES = ("loudness", "ltas")
METHODS = (
    "loudness",
    "ltas",
    "yamnet_knn",
    "fused",
    "fused|embedding|modulation_peak",
    "fused|modulation_peak",
    "fused|modulation",
    "fused+fluct",
    "emb_h8",
    "shape_h8",
    "fluct_h8",
    "modulation_h8",
    "peak_h8",
    "fused+level",
    "fused_closest",
)
NEW = "fused|embedding|modulation_peak"


class Files:
    """Per-file features: embeddings and band levels (model front end, cached) and the baseline features."""

    def __init__(self, extractor):
        self.extractor = extractor
        self.memo: dict = {}

    def get(self, path) -> dict:
        from fanwatch import audio, baselines

        key = str(path)
        if key not in self.memo:
            emb, bands = self.extractor.file_features(path)
            sig = audio.load_audio(path, channel=self.extractor.channel)
            wins = audio.frame_windows(sig)
            self.memo[key] = {
                "emb": emb,
                "bands": bands,
                "clip": {b: baselines.clip_features(b, sig) for b in BASELINES},
                "win": {b: np.stack([baselines.clip_features(b, w) for w in wins]) for b in BASELINES},
            }
        return self.memo[key]


def scores_for(method: str, train: dict, test: list) -> tuple[np.ndarray, list]:
    """(file scores [n_test], window scores per test file) for train {machine: [file]}, test [(machine, file)]."""
    from fanwatch import anomaly, baselines, scorer

    if method in BASELINES:
        file_s, win_s = np.zeros(len(test)), [None] * len(test)
        pooled = [f for fs in train.values() for f in fs]
        for machine in {m for m, _ in test}:  # a machine not in training: all training machines pooled
            idx = [i for i, (m, _) in enumerate(test) if m == machine]
            ref = train.get(machine, pooled)
            clip = baselines.KnnBaseline.fit(np.stack([f["clip"][method] for f in ref]))
            win = baselines.KnnBaseline.fit(np.concatenate([f["win"][method] for f in ref]))
            file_s[idx] = clip.score(np.stack([test[i][1]["clip"][method] for i in idx]))
            for i in idx:
                win_s[i] = win.score(test[i][1]["win"][method])
        return file_s, win_s
    if method == "yamnet_knn":
        names = sorted(train)
        emb = np.concatenate([f["emb"] for m in names for f in train[m]])
        machines = np.concatenate([[m] * len(f["emb"]) for m in names for f in train[m]])
        model = anomaly.fit(emb, machines, np.ones(len(emb), bool), "knn")
        # a machine not in training: the smallest score over the known machines (the earlier rule)
        win_s = [
            model.score(f["emb"])[:, model.machines.index(m)]
            if m in model.machines
            else model.score(f["emb"]).min(axis=1)
            for m, f in test
        ]
        return np.array([w.mean() for w in win_s]), win_s
    name, _, horizon = method.partition("@h")
    closest = name == "fused_closest"  # unknown machines by the earlier rule: smallest over the known machines
    name, *channels = name.split("|")  # "fused|embedding|modulation_peak": side channels beside the fused score
    weights = {
        "fused": scorer.DEFAULT_WEIGHTS,
        "fused_closest": scorer.DEFAULT_WEIGHTS,
        "emb_h8": {"embedding": 1.0},
        "shape_h8": {"shape": 1.0},
        "fluct_h8": {"fluctuation": 1.0},
        "modulation_h8": {"modulation": 1.0},
        "peak_h8": {"modulation_peak": 1.0},
        "fused+fluct": {"embedding": 4.0, "shape": 2.0, "fluctuation": 1.0},
        "fused+level": {"embedding": 2.0, "shape": 1.0, "level": 0.5},
    }.get(name)
    if weights is None:  # "embedding:2,shape:1@h4"
        weights = scorer.parse_components(name)
    sc = scorer.Scorer.fit(
        {m: [(f["emb"], f["bands"]) for f in fs] for m, fs in train.items()},
        scorer.ScoreConfig(
            weights=dict(weights),
            horizon=int(horizon or scorer.DEFAULT_HORIZON),
            channels=tuple(channels),
        ),
    )
    if channels:
        # the largest of the fused score and the channels', all in units of their scale (the 95th percentile
        # of normal training windows against the other files): the per-window picture of the live loop's
        # "either evidence raises the alert"
        win_s = []
        for m, f in test:
            fused, side = sc.score_file_channels(m, f["emb"], f["bands"])
            win_s.append(np.max([fused, *[side[c] for c in channels]], axis=0))
        return np.array([w.mean() for w in win_s]), win_s
    win_s = [
        np.min([sc.score_file(k, f["emb"], f["bands"]) for k in sc.machines], axis=0)
        if closest and m not in sc.machines
        else sc.score_file(m, f["emb"], f["bands"])
        for m, f in test
    ]
    return np.array([w.mean() for w in win_s]), win_s


def measure(train: dict, test: list, normal: np.ndarray, methods=METHODS) -> dict:
    from fanwatch.anomaly import roc_auc
    from fanwatch.evaluation import pauc_dcase

    out = {}
    for method in methods:
        fs, ws = scores_for(method, train, test)
        wn = np.concatenate([w for w, n in zip(ws, normal) if n])
        wa = np.concatenate([w for w, n in zip(ws, normal) if not n])
        out[method] = {
            "file_auc": roc_auc(fs[normal], fs[~normal]),
            "file_pauc": pauc_dcase(fs[normal], fs[~normal]),
            "window_auc": roc_auc(wn, wa),
            "window_pauc": pauc_dcase(wn, wa),
        }
    return out


def synthetic_session_splits(
    files: Files,
    root: Path,
    seeds: int,
    snrs: list[float],
    files_per_state: int,
    files_per_fault: int,
    sessions: int,
    seconds: float,
):
    from fanwatch import datasets, synth

    for snr in snrs:
        for seed in range(seeds):
            path = root / f"sessions-snr{snr:g}-seed{seed}"
            synth.generate_dataset(
                path,
                layout="dcase",
                seed=300 + seed,
                seconds=seconds,
                snr_db=snr,
                files_per_state=files_per_state,
                files_per_fault=files_per_fault,
                progress=False,
                sessions=sessions,
            )
            recs = datasets.scan(path)
            train, test = {}, []
            for r in recs:
                if r.subset == "train":
                    train.setdefault(r.machine, []).append(files.get(r.path))
                else:
                    test.append((r.machine, files.get(r.path), r.normal))
            yield f"synthetic sessions {snr:+g} dB", f"seed {seed}", train, test


def synthetic_unknown_machine_splits(
    files: Files, root: Path, seeds: int, files_per_state: int, files_per_fault: int, sessions: int, seconds: float
):
    """Three machine ids; each in turn is left out of training and tested as a machine the model does not know."""
    from fanwatch import datasets, synth

    for seed in range(seeds):
        path = root / f"unknown-seed{seed}"
        synth.generate_dataset(
            path,
            layout="dcase",
            seed=500 + seed,
            seconds=seconds,
            snr_db=6.0,
            files_per_state=files_per_state,
            files_per_fault=files_per_fault,
            progress=False,
            sessions=sessions,
            machine_ids=("id_00", "id_02", "id_04"),
        )
        recs = datasets.scan(path)
        for left_out in ("fan/id_00", "fan/id_02", "fan/id_04"):
            train = {}
            for r in recs:
                if r.subset == "train" and r.machine != left_out:
                    train.setdefault(r.machine, []).append(files.get(r.path))
            test = [
                ("unknown", files.get(r.path), r.normal) for r in recs if r.subset == "test" and r.machine == left_out
            ]
            yield "synthetic unknown machine +6 dB", f"seed {seed}, {left_out} unknown", train, test


def synthetic_per_file_split(files: Files, root: Path, seconds: float):
    from fanwatch import datasets, synth

    path = root / "perfile"
    synth.generate_dataset(
        path,
        layout="mimii",
        seed=100,
        seconds=seconds,
        snr_db=6.0,
        files_per_state=24,
        files_per_fault=12,
        progress=False,
    )
    splits = datasets.split_recordings(datasets.scan(path), seed=0)
    train = {}
    for r in splits["train"]:
        if r.normal:
            train.setdefault(r.machine, []).append(files.get(r.path))
    test = [(r.machine, files.get(r.path), r.normal) for r in splits["val"] + splits["test"]]
    yield "synthetic per-file +6 dB", "seed 0", train, test


def real_splits(files: Files, real: Path):
    d = real / "dcase2020_id00"
    if (d / "train").is_dir() and (d / "test").is_dir():
        normals = sorted((d / "train").glob("*.wav"))
        anomalous = sorted((d / "test").glob("anomaly_*.wav"))
        if normals and anomalous:
            for fold in range(5):
                train = {"fan/id_00": [files.get(p) for i, p in enumerate(normals) if i % 5 != fold]}
                test = [("fan/id_00", files.get(p), True) for i, p in enumerate(normals) if i % 5 == fold]
                test += [("fan/id_00", files.get(p), False) for p in anomalous]
                yield "real dcase2020 id_00 (fan)", f"fold {fold}", train, test
    m = real / "mimii_8ch"
    for group, (normals, abnormals) in MIMII_GROUPS.items():
        paths = [m / n for n in normals + abnormals]
        if not all(p.is_file() for p in paths):
            continue
        for held in normals:
            train = {group: [files.get(m / n) for n in normals if n != held]}
            test = [(group, files.get(m / held), True)] + [(group, files.get(m / a), False) for a in abnormals]
            yield f"real mimii_8ch {group}", f"leave out {held}", train, test


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--yamnet", default=None)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=10.0, help="length of the synthetic clips (real ones: 10 s)")
    p.add_argument("--snrs", default="6,0")
    p.add_argument("--sessions", type=int, default=3)
    p.add_argument("--files-per-state", type=int, default=16, help="synthetic train files per machine")
    p.add_argument("--files-per-fault", type=int, default=15, help="synthetic test files of each label per machine")
    p.add_argument("--real", default=str(REAL), help="folder of the real clip sets (../shared/realdata)")
    p.add_argument("--no-synthetic", action="store_true")
    p.add_argument(
        "--methods",
        default=",".join(METHODS),
        help="comma-separated; besides the named ones, scorer variants like 'embedding:2+shape:1@h4' "
        "(components joined by +, @h horizon)",
    )
    p.add_argument("--out", default=None)
    args = p.parse_args()
    methods = [m.replace("+", ",") if ":" in m else m for m in args.methods.split(",")]

    from tqdm import tqdm

    from fanwatch import embeddings

    ex, _ = embeddings.make_extractor(args.yamnet)
    files = Files(ex)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        sources = []
        if not args.no_synthetic:
            snrs = [float(s) for s in args.snrs.split(",")]
            sources.append(
                synthetic_session_splits(
                    files,
                    Path(tmp),
                    args.seeds,
                    snrs,
                    args.files_per_state,
                    args.files_per_fault,
                    args.sessions,
                    args.seconds,
                )
            )
            sources.append(synthetic_per_file_split(files, Path(tmp), args.seconds))
            sources.append(
                synthetic_unknown_machine_splits(
                    files, Path(tmp), 1, args.files_per_state, args.files_per_fault, args.sessions, args.seconds
                )
            )
        sources.append(real_splits(files, Path(args.real)))
        with tqdm(desc="splits", unit="split") as bar:
            for source in sources:
                for group, member, train, test in source:
                    normal = np.array([n for _, _, n in test], bool)
                    result = measure(train, [(m, f) for m, f, _ in test], normal, methods)
                    rows.append(
                        {
                            "group": group,
                            "split": member,
                            "train_files": sum(len(v) for v in train.values()),
                            "test_normal": int(normal.sum()),
                            "test_anomalous": int((~normal).sum()),
                            "methods": result,
                        }
                    )
                    bar.update(1)

    groups = list(dict.fromkeys(r["group"] for r in rows))
    summary = {}
    for g in groups:
        members = [r for r in rows if r["group"] == g]
        summary[g] = {
            m: {
                k: float(np.mean([r["methods"][m][k] for r in members if r["methods"][m][k] is not None]))
                for k in ("file_auc", "file_pauc", "window_auc", "window_pauc")
            }
            for m in methods
        }
        summary[g]["splits"] = len(members)
    print("\nmean over the splits of each group: file AUC / file pAUC / window AUC / window pAUC")
    head = f"{'method':12s}" + "".join(f" | {g[:30]:30s}" for g in groups)
    print(head)
    for m in methods:
        print(
            f"{m[:12]:12s}"
            + "".join(
                f" | {summary[g][m]['file_auc']:.3f} {summary[g][m]['file_pauc']:.3f} "
                f"{summary[g][m]['window_auc']:.3f} {summary[g][m]['window_pauc']:.3f}   "
                for g in groups
            )
        )
    verdict = {}
    if NEW not in methods:
        write_results(
            "anomaly_methods", {"settings": vars(args), "methods": methods, "summary": summary, "rows": rows}, args.out
        )
        return
    print(f"\n{NEW} against every baseline (loudness, ltas, yamnet_knn), file and window AUC:")
    for g in groups:
        lost = [
            f"{b} {k}"
            for b in ("loudness", "ltas", "yamnet_knn")
            if b in methods
            for k in ("file_auc", "window_auc")
            if summary[g][NEW][k] < summary[g][b][k] - 1e-9
        ]
        verdict[g] = {"beats_or_ties_all": not lost, "behind": lost}
        print(f"  {g:36s} {'beats or ties all' if not lost else 'behind on ' + ', '.join(lost)}")
    write_results(
        "anomaly_methods",
        {"settings": vars(args), "methods": methods, "summary": summary, "verdict": verdict, "rows": rows},
        args.out,
    )


if __name__ == "__main__":
    main()
