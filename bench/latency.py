#!/usr/bin/env python3
"""Per-window latency of the exported model (float32 and quantized) and of the published YAMNet
TFLite alone, measured interleaved in one run; plus sizes, and each variant's embedding cosine and
anomaly-score error against the float32 export.

Goal: the whole end-to-end model (YAMNet + head + anomaly score + band levels) at most 0.45x the time
of the published yamnet.tflite alone, with embedding cosine >= 0.999 to float. The deployed anomaly
decision also runs the numpy score (fanwatch.scorer) on the model's outputs; its time per window is
measured on its own and reported beside the total (model + score).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from bench._common import REPO, write_results

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _invoker(path: Path, threads: int):
    """set_tensor + invoke only, the same for every model (no output copies in the timing)."""
    from fanwatch.runtime import interpreter_class

    Interpreter, _ = interpreter_class()
    interp = Interpreter(model_path=str(path), num_threads=threads)
    interp.allocate_tensors()
    detail = interp.get_input_details()[0]
    index, shape = detail["index"], tuple(detail["shape"])

    def run(window):
        interp.set_tensor(index, window.reshape(shape))
        interp.invoke()

    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument(
        "--model",
        type=Path,
        default=REPO / "artifacts" / "sound_classifier.tflite",
        help="exported model; if missing, a small one is trained on synthetic data first",
    )
    p.add_argument("--yamnet", default=None)
    p.add_argument("--threads", type=int, default=1, help="interpreter threads (1 = one Pi core)")
    p.add_argument("--rounds", type=int, default=400, help="timed invocations per model")
    p.add_argument("--out", default=None, help="JSON path (default bench/results/latency.json)")
    p.add_argument(
        "--also",
        type=Path,
        action="append",
        default=[],
        metavar="MODEL",
        help="another .tflite timed in the same interleaved rounds (e.g. one exported by an older fanwatch)",
    )
    args = p.parse_args()

    from fanwatch import audio, config, runtime, synth, yamnet

    yamnet_path = yamnet.check_yamnet_file(args.yamnet)
    model_path = args.model
    if not model_path.is_file():
        from fanwatch import training

        tmp = Path(tempfile.mkdtemp(prefix="fanwatch-bench-"))
        print(f"{model_path} not found: training a small synthetic model in {tmp}")
        synth.generate_dataset(tmp / "data", seed=0, seconds=3.0, files_per_state=6, files_per_fault=3, progress=False)
        training.train(
            training.TrainSettings(
                data=tmp / "data", out=tmp / "out", yamnet=str(yamnet_path), progress=False, epochs=30
            )
        )
        model_path = tmp / "out" / runtime.MODEL_NAME
    card = runtime.read_card(model_path)
    float_path = model_path.with_name(card.raw["files"]["float32"])
    variants = {"end-to-end " + card.quantization: model_path}
    if float_path != model_path:
        variants["end-to-end float32"] = float_path

    # inputs: synthetic fan windows of every kind plus noise
    rng = np.random.default_rng(0)
    windows = [audio.frame_windows(synth.render(kind, 2.0, i))[0] for i, kind in enumerate(synth.KINDS)]
    windows += [(0.1 * rng.standard_normal(config.WINDOW_SAMPLES)).astype(np.float32)]
    windows = [np.ascontiguousarray(w, dtype=np.float32) for w in windows]

    models = {name: runtime.TFLiteModel(path, num_threads=args.threads) for name, path in variants.items()}
    runners = {name: _invoker(path, args.threads) for name, path in variants.items()}
    runners["published yamnet.tflite"] = _invoker(yamnet_path, args.threads)
    others = {f"also: {path}": path for path in args.also}
    for name, path in others.items():
        runners[name] = _invoker(path, args.threads)
    for run in runners.values():  # warm-up
        for w in windows:
            run(w)
    times = {name: [] for name in runners}
    for i in range(args.rounds):  # interleaved: every model sees the same machine load
        w = windows[i % len(windows)]
        for name, run in runners.items():
            start = time.perf_counter()
            run(w)
            times[name].append((time.perf_counter() - start) * 1000)

    ref_name = "end-to-end float32" if "end-to-end float32" in models else next(iter(models))
    ref = [models[ref_name](w) for w in windows]
    results = {}
    base = float(np.median(times["published yamnet.tflite"]))
    print(f"per-window latency, {args.threads} thread(s), {args.rounds} interleaved rounds:")
    for name, ts in times.items():
        med, p95 = float(np.median(ts)), float(np.percentile(ts, 95))
        path = variants.get(name) or others.get(name) or yamnet_path
        entry = {
            "median_ms": med,
            "p95_ms": p95,
            "ratio_to_published": med / base,
            "size_bytes": Path(path).stat().st_size,
        }
        if name in models:
            outs = [models[name](w) for w in windows]
            e, er = np.stack([o["embedding"] for o in outs]), np.stack([o["embedding"] for o in ref])
            cos = (e * er).sum(1) / (np.linalg.norm(e, axis=1) * np.linalg.norm(er, axis=1))
            s, sr = np.stack([o["anomaly_score"] for o in outs]), np.stack([o["anomaly_score"] for o in ref])
            entry["embedding_cosine_min_vs_float"] = float(cos.min())
            entry["anomaly_score_max_rel_error_vs_float"] = float((np.abs(s - sr) / np.abs(sr)).max())
        results[name] = entry
        extra = ""
        if "embedding_cosine_min_vs_float" in entry:
            extra = (
                f", embedding cosine to float >= {entry['embedding_cosine_min_vs_float']:.5f}, "
                f"score error <= {entry['anomaly_score_max_rel_error_vs_float']:.2%}"
            )
        print(
            f"  {name:32s} median {med:6.2f} ms  p95 {p95:6.2f} ms  {med / base:4.2f}x published  "
            f"{entry['size_bytes'] / 1e6:5.1f} MB{extra}"
        )
    deployed = results["end-to-end " + card.quantization]
    clf = runtime.SoundClassifier(model_path, num_threads=args.threads)
    if clf.scorer is not None:
        stream = clf.anomaly_stream()
        preds = [clf.predict(w) for w in windows]
        for pred in preds:  # warm-up
            stream.update(pred)
        ts = []
        for i in range(args.rounds):
            start = time.perf_counter()
            stream.update(preds[i % len(preds)])
            ts.append((time.perf_counter() - start) * 1000)
        med = float(np.median(ts))
        results["fused score (numpy)"] = {
            "median_ms": med,
            "p95_ms": float(np.percentile(ts, 95)),
            "scored_as": clf.scoring()["scored_as"],
            "state_bytes": model_path.with_name(runtime.SCORER_NAME).stat().st_size,
        }
        total = deployed["median_ms"] + med
        results["deployed total (model + score)"] = {"median_ms": total, "ratio_to_published": total / base}
        print(
            f"  {'fused score (numpy, ' + clf.scoring()['scored_as'][:20] + ')':32s} median {med:6.2f} ms  "
            f"p95 {results['fused score (numpy)']['p95_ms']:6.2f} ms  state "
            f"{results['fused score (numpy)']['state_bytes'] / 1e6:.1f} MB"
        )
        print(f"  {'deployed total (model + score)':32s} median {total:6.2f} ms  {total / base:4.2f}x published")
    goal = (
        deployed["ratio_to_published"] <= 0.45
        and deployed.get("embedding_cosine_min_vs_float", 1) >= 0.999
        and deployed["size_bytes"] <= 10e6
    )
    print(f"goal (deployed model <= 0.45x published, <= 10 MB, cosine >= 0.999): {'met' if goal else 'NOT met'}")
    write_results(
        "latency",
        {
            "settings": {k: str(v) for k, v in vars(args).items()},
            "model": str(model_path),
            "results": results,
            "goal_met": goal,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
