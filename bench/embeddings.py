#!/usr/bin/env python3
"""Embedding extraction throughput: one-second-class windows per second, 1 vs 2 worker processes.

Measures the real extraction path (decode, resample, frame, TFLite front end, cache write) on a
seeded synthetic dataset, with an empty cache each time. Goal: >= 1000 windows/s on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from bench._common import write_results

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--yamnet", default=None)
    p.add_argument("--files", type=int, default=420, help="synthetic files (10 s each)")
    p.add_argument("--quantization", default="int8-pointwise")
    p.add_argument("--repeats", type=int, default=2, help="alternating runs per worker count")
    p.add_argument("--out", default=None, help="JSON path (default bench/results/embeddings.json)")
    args = p.parse_args()

    from fanwatch import config, datasets, embeddings, synth

    work = Path(tempfile.mkdtemp(prefix="fanwatch-bench-"))
    try:
        data = work / "data"
        per = max(1, args.files // 7)
        synth.generate_dataset(data, seed=0, seconds=10.0, files_per_state=per, files_per_fault=per, progress=False)
        recs = datasets.scan(data)
        frontend, sha = embeddings.ensure_frontend(args.yamnet, args.quantization)  # built once, not timed
        runs = {1: [], 2: []}
        windows = None
        for _ in range(args.repeats):
            for workers in (1, 2):  # alternate so both see the same machine load
                cache = work / f"cache-{workers}"
                shutil.rmtree(cache, ignore_errors=True)
                ex = embeddings.Extractor(frontend, f"{sha}:{args.quantization}", cache, workers=workers)
                start = time.perf_counter()
                es = ex.embed_recordings(recs, progress=False)
                elapsed = time.perf_counter() - start
                windows = len(es.embeddings)
                runs[workers].append(windows / elapsed)
        cache = work / "cache-2"
        ex = embeddings.Extractor(frontend, f"{sha}:{args.quantization}", cache, workers=2)
        start = time.perf_counter()
        ex.embed_recordings(recs, progress=False)
        cached_s = time.perf_counter() - start
    finally:
        shutil.rmtree(work, ignore_errors=True)
    best = {w: max(v) for w, v in runs.items()}
    print(f"{len(recs)} files, {windows} windows of {config.WINDOW_SAMPLES} samples, {args.quantization} front end")
    for w in (1, 2):
        print(f"  {w} worker(s): {best[w]:7.0f} windows/s (runs: {', '.join(f'{r:.0f}' for r in runs[w])})")
    print(
        f"  2 workers / 1 worker: {best[2] / best[1]:.2f}x; goal >= 1000 windows/s on 2 cores: "
        f"{'met' if best[2] >= 1000 else 'NOT met'}"
    )
    print(f"  second run from the cache: {cached_s:.2f} s for all {len(recs)} files")
    write_results(
        "embeddings",
        {
            "settings": vars(args),
            "files": len(recs),
            "windows": windows,
            "windows_per_second": {str(k): v for k, v in best.items()},
            "runs": {str(k): v for k, v in runs.items()},
            "speedup_2_over_1": best[2] / best[1],
            "cached_run_seconds": cached_s,
            "goal_windows_per_second": 1000,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
