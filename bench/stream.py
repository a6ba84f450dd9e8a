#!/usr/bin/env python3
"""Benchmark the real-time loop (inference.py) the way it runs on the Raspberry Pi.

Two runs of ``inference.py --wav`` in a subprocess, on a synthetic fan recording at a microphone's rate
(48 kHz by default: high speed, then an imbalance fault):

1. **real time** (``--seconds``, default 20 s of audio paced like a microphone): CPU use at steady state
   (process CPU time / wall time after the first decision), end-to-end latency from a block's arrival in the
   queue to the decision of the window it completes (median / p95 / max), inference time per window, peak
   resident memory, and time to first decision after start (from launching the process: interpreter,
   imports, model load, plus the 0.975 s of audio the first window needs);
2. **fast** (``--fast-seconds``, default 60 s of audio, ``--fast``): windows per second the loop sustains when
   it never waits for audio (the headroom over the 2 windows/s real time needs), and its peak memory.

Prints the figures and writes them, with the settings and the machine, as JSON (``bench/results/stream.json``
or ``--out``). Usage: ``python -m bench.stream [MODEL] [--threads N] [--rate HZ] [--seconds S]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench._common import REPO, RESULTS, write_results
from fanwatch import config, synth
from fanwatch.runtime import CARD_NAME

DEFAULT_MODEL = REPO / "artifacts" / "sound_classifier.tflite"
DEFAULT_OUT = RESULTS / "stream.json"


def make_recording(path: Path, seconds: float, rate: int, seed: int = 0) -> Path:
    """High speed for the first half, an imbalance fault for the second, 16-bit PCM at ``rate``."""
    half = seconds / 2.0
    normal = synth.render("high_speed", half, seed, sample_rate=rate, snr_db=12.0)
    fault = synth.render("imbalance", seconds - half, seed + 1, sample_rate=rate, snr_db=20.0)
    synth.write_wav(path, np.concatenate([normal, fault]), rate)
    return path


def run_loop(model: Path, wav: Path, threads: int, fast: bool, timeout: float) -> dict:
    """One inference.py run; returns its summary, its windows and when (after launch) the first one came."""
    cmd = [
        sys.executable,
        str(REPO / "inference.py"),
        "--model",
        str(model),
        "--wav",
        str(wav),
        "--json",
        "--threads",
        str(threads),
    ] + (["--fast"] if fast else [])
    started = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
    first_window_at = None
    records = []
    try:
        for line in proc.stdout:
            if not line.startswith("{"):
                continue
            record = json.loads(line)
            if record["type"] == "window" and first_window_at is None:
                first_window_at = time.monotonic() - started
            records.append(record)
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr = proc.stderr.read()
    if proc.returncode != 0:
        raise SystemExit(f"inference.py failed ({proc.returncode}): {stderr.strip()}")
    summary = next(r for r in reversed(records) if r["type"] == "summary")
    windows = [r for r in records if r["type"] == "window"]
    return {
        "summary": summary,
        "windows": windows,
        "first_window_after_launch_s": first_window_at,
        "wall_s": time.monotonic() - started,
    }


def percentile(values, q):
    return None if not values else round(float(np.percentile(values, q)), 2)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "model",
        nargs="?",
        type=Path,
        default=DEFAULT_MODEL,
        help=f"exported model with {CARD_NAME} beside it (default artifacts/sound_classifier.tflite)",
    )
    p.add_argument("--threads", type=int, default=1, help="TFLite threads (default 1)")
    p.add_argument("--rate", type=int, default=48000, help="sample rate of the replayed 'microphone' (48000)")
    p.add_argument("--seconds", type=float, default=20.0, help="audio for the real-time run (default 20)")
    p.add_argument("--fast-seconds", type=float, default=60.0, help="audio for the --fast run (default 60)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results (default bench/results/stream.json)")
    args = p.parse_args(argv)
    if not args.model.is_file():
        raise SystemExit(f"error: model not found: {args.model} (train one with: python train.py --demo)")

    with tempfile.TemporaryDirectory() as tmp:
        rt_wav = make_recording(Path(tmp) / "realtime.wav", args.seconds, args.rate)
        fast_wav = make_recording(Path(tmp) / "fast.wav", args.fast_seconds, args.rate, seed=1)
        print(f"real-time run: {args.seconds:g} s of {args.rate} Hz audio ...", flush=True)
        rt = run_loop(args.model, rt_wav, args.threads, fast=False, timeout=args.seconds + 60)
        print(f"fast run: {args.fast_seconds:g} s of {args.rate} Hz audio ...", flush=True)
        fast = run_loop(args.model, fast_wav, args.threads, fast=True, timeout=args.fast_seconds * 5 + 60)

    s, f = rt["summary"], fast["summary"]
    latencies = [w["latency_ms"] for w in rt["windows"]]
    steady = latencies[2:] or latencies  # after the start-up transient
    results = {
        "realtime": {
            "audio_seconds": args.seconds,
            "windows": s["windows"],
            "cpu_percent_steady": s["cpu_percent_steady"],
            "cpu_percent_overall": s["cpu_percent"],
            "latency_ms_median": percentile(steady, 50),
            "latency_ms_p95": percentile(steady, 95),
            "latency_ms_max": round(max(steady), 2) if steady else None,
            "inference_ms_median": s["inference_ms_median"],
            "inference_ms_p95": s["inference_ms_p95"],
            "peak_rss_mb": s["peak_rss_mb"],
            "first_decision_after_launch_s": round(rt["first_window_after_launch_s"], 3),
            "first_decision_after_loop_start_s": s["first_decision_s"],
            "dropped_blocks": s["dropped_blocks"],
            "max_queue_depth": s["max_queue_depth"],
        },
        "fast": {
            "audio_seconds": args.fast_seconds,
            "windows": f["windows"],
            "windows_per_second": f["windows_per_second"],
            "realtime_factor": round(f["windows_per_second"] / (1.0 / config.HOP_SECONDS), 1)
            if f["windows_per_second"]
            else None,
            "inference_ms_median": f["inference_ms_median"],
            "inference_ms_p95": f["inference_ms_p95"],
            "cpu_percent_steady": f["cpu_percent_steady"],
            "peak_rss_mb": f["peak_rss_mb"],
            "first_decision_after_launch_s": round(fast["first_window_after_launch_s"], 3),
            "dropped_blocks": f["dropped_blocks"],
        },
        "settings": {
            "model": str(args.model),
            "model_bytes": args.model.stat().st_size,
            "threads": args.threads,
            "rate": args.rate,
            "hop_s": config.HOP_SECONDS,
            "window_s": config.WINDOW_SECONDS,
            "block_ms": 100,
            "source": "inference.py --wav (file source through the same bounded queue as a microphone)",
        },
    }
    r, q = results["realtime"], results["fast"]
    print(
        f"real time ({args.seconds:g} s at {args.rate} Hz, {args.threads} thread(s)): CPU {r['cpu_percent_steady']}% "
        f"steady ({r['cpu_percent_overall']}% overall); latency median {r['latency_ms_median']} ms, "
        f"p95 {r['latency_ms_p95']} ms, max {r['latency_ms_max']} ms; inference median "
        f"{r['inference_ms_median']} ms, p95 {r['inference_ms_p95']} ms; peak RSS {r['peak_rss_mb']} MB; "
        f"first decision {r['first_decision_after_launch_s']} s after launch; drops {r['dropped_blocks']}"
    )
    print(
        f"fast ({args.fast_seconds:g} s): {q['windows_per_second']} windows/s ({q['realtime_factor']}x real time), "
        f"inference median {q['inference_ms_median']} ms; peak RSS {q['peak_rss_mb']} MB; first decision "
        f"{q['first_decision_after_launch_s']} s after launch"
    )
    write_results("stream", results, str(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
