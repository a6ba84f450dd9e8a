#!/usr/bin/env python3
"""Alerts on a real fan: the product's own commands on the DCASE 2020 id_00 clips of ../shared/realdata.

The acceptance test of the alert rule replays real fan streams (normal running, then a fault) through
``inference.py --wav FILE --json --fast``. The real clips kept here are one fan (DCASE 2020 Task 2, machine
id_00, most likely MIMII fan id_00): 75 normal clips of 10 s and one anomalous clip, all from the same
recording days. This benchmark, per fold (``--folds``, default 5, the normal clips shuffled with ``--seed``
and dealt into folds):

1. trains a model with ``python train.py`` on the other folds' normal clips (DCASE layout: train.py sets
   aside its own normal validation clips, calibrates the alert rule on them, and never sees the test fold or
   the anomalous clip);
2. renders one stream: the fold's held-out normal clips one after the other (sorted by name), then the
   anomalous clip played ``--fault-repeats`` times (default 3: a 30 s fault as in the acceptance streams;
   a fan fails slowly, and the one 10 s clip is the only fault recording there is);
3. runs ``python inference.py --model M --wav STREAM --json --fast`` with the default alert rule and with
   today's baseline rule (``--alert-rule n-of-m``: 3 of the last 4 windows above the per-window threshold),
   and counts the alerts raised before the fault starts (false alerts) and the time from the fault's start
   to the first alert after it.

Prints a table and writes ``bench/results/alerts_real.json``. Same recording days only: a day the model
never heard is not in these clips (``bench/alerts.py`` measures that on synthetic sessions). Usage:
``python -m bench.alerts_real [--work DIR] [--folds 5] [--fault-repeats 3] [--out FILE]``
(``FANWATCH_YAMNET`` or ``--yamnet`` for the weights, as for train.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench._common import REAL, REPO, RESULTS, write_results

CLIPS = "dcase2020_id00"
RULES = {"default": [], "n-of-m (baseline)": ["--alert-rule", "n-of-m"]}


def folds_of(names: list[str], folds: int, seed: int) -> list[list[str]]:
    order = list(names)
    np.random.default_rng(seed).shuffle(order)
    return [sorted(order[i::folds]) for i in range(folds)]


def build_fold(work: Path, clips: Path, test: list[str], anomalies: list[Path], used: set[str]) -> Path:
    """A DCASE-layout data folder of symbolic links: train/ the other normal clips of ``used``, test/ the fold
    and the fault."""
    for old in (work / "data", work / "model"):  # an earlier run's links and split (another seed or fold count)
        if old.exists():
            shutil.rmtree(old)
    data = work / "data" / "fan"
    for sub in ("train", "test"):
        (data / sub).mkdir(parents=True, exist_ok=True)
    for wav in sorted((clips / "train").glob("normal_*.wav")):
        if wav.name not in used:
            continue
        link = data / ("test" if wav.name in test else "train") / wav.name
        link.symlink_to(wav.resolve())
    for wav in anomalies:
        (data / "test" / wav.name).symlink_to(wav.resolve())
    return data.parent


def write_stream(path: Path, normal: list[Path], fault: Path, repeats: int) -> float:
    """normal clips then the fault clip ``repeats`` times, as one 16-bit WAV; returns the fault's onset (s)."""
    import soundfile

    from fanwatch import audio, config

    parts = [audio.load_audio(p) for p in normal]
    onset = sum(len(p) for p in parts) / config.SAMPLE_RATE
    parts += [audio.load_audio(fault)] * repeats
    soundfile.write(str(path), np.concatenate(parts), config.SAMPLE_RATE, subtype="PCM_16")
    return onset


def run(cmd: list[str], log: Path, keep_stdout: bool = True) -> str:
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    log.write_text(f"$ {' '.join(cmd)}\n" + (proc.stdout if keep_stdout else "") + proc.stderr)
    if proc.returncode != 0:
        last = (proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()[-1]
        raise SystemExit(f"{' '.join(cmd[1:3])} failed (exit {proc.returncode}): {last} (see {log})")
    return proc.stdout


def replay(model: Path, stream: Path, onset: float, extra: list[str], log: Path) -> dict:
    """inference.py on the stream: alerts before the fault, time from its start to the first alert after it."""
    cmd = [sys.executable, "inference.py", "--model", str(model), "--wav", str(stream), "--json", "--fast", *extra]
    out = run(cmd, log, keep_stdout=False)
    records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    raised = [r for r in records if r.get("event") == "alert_raised"]
    windows = [r for r in records if r.get("type") == "window"]
    false = [r for r in raised if r["t"] <= onset]  # t: the end of the window that raised it
    after = [r for r in raised if r["t"] > onset]
    fault_ratio = [r["anomaly"] for r in windows if r["t"] - 0.975 >= onset]
    normal_ratio = [r["anomaly"] for r in windows if r["t"] <= onset]
    return {
        "false_alerts": len(false),
        "false_alert_times_s": [round(r["t"], 2) for r in false],
        "time_to_alert_s": round(after[0]["t"] - onset, 2) if after else None,
        "alert_kind": after[0].get("kind") if after else None,
        "evidence_from": after[0].get("evidence_from") if after else None,
        "window_ratio_median_normal": float(np.median(normal_ratio)) if normal_ratio else None,
        "window_ratio_median_fault": float(np.median(fault_ratio)) if fault_ratio else None,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--real", type=Path, default=REAL, help="the real clip sets (../shared/realdata)")
    p.add_argument("--work", type=Path, default=RESULTS / "alerts_real_work", help="data links, models, streams")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--fault-repeats", type=int, default=3, help="times the 10 s anomalous clip is played (3)")
    p.add_argument(
        "--clips",
        type=int,
        default=None,
        help="use only the first N normal clips (a smoke run: too little validation audio to calibrate, so its "
        "figures mean little)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--yamnet", default=None, help="YAMNet weights for train.py (default: its own lookup)")
    p.add_argument("--score-channels", default=None, help="train.py --score-channels (default: train.py's)")
    p.add_argument("--min-alert-level", default=None, help="train.py --min-alert-level (default: train.py's)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    clips = args.real / CLIPS
    normals = sorted(w.name for w in (clips / "train").glob("normal_*.wav"))[: args.clips]
    anomalies = sorted((clips / "test").glob("anomaly_*.wav"))
    if len(normals) < 2 * args.folds or not anomalies:
        print(f"{clips}: needs train/normal_*.wav (at least {2 * args.folds}) and test/anomaly_*.wav", file=sys.stderr)
        return 2
    started = time.perf_counter()
    rows = []
    for k, test in enumerate(folds_of(normals, args.folds, args.seed)):
        work = args.work / f"fold{k}"
        work.mkdir(parents=True, exist_ok=True)
        data = build_fold(work, clips, test, anomalies, set(normals))
        model = work / "model" / "sound_classifier.tflite"
        cmd = [sys.executable, "train.py", "--data", str(data), "--out", str(model.parent), "--no-progress"]
        cmd += ["--cache", str(args.work / "cache"), "--seed", str(args.seed)]
        cmd += ["--yamnet", args.yamnet] if args.yamnet else []
        cmd += ["--score-channels", args.score_channels] if args.score_channels else []
        cmd += ["--min-alert-level", args.min_alert_level] if args.min_alert_level is not None else []
        run(cmd, work / "train.log")
        card = json.loads((model.parent / "model_card.json").read_text())
        method = ((card.get("alerts") or {}).get("calibration") or {}).get("method", "")
        if method.startswith("not calibrated"):
            print(f"fold {k}: the alert rule is {method}", flush=True)
        stream = work / "stream.wav"
        onset = write_stream(stream, [clips / "train" / n for n in test], anomalies[0], args.fault_repeats)
        row = {
            "fold": k,
            "normal_clips": len(test),
            "normal_s": onset,
            "validation_hours": ((card.get("alerts") or {}).get("calibration") or {}).get("normal_hours"),
            "expected_false_alerts_per_day": (card.get("alerts") or {}).get("expected_false_alerts_per_day"),
        }
        for name, extra in RULES.items():
            row[name] = replay(model, stream, onset, extra, work / f"inference_{name.split()[0]}.log")
        rows.append(row)
        d, b = row["default"], row["n-of-m (baseline)"]
        print(
            f"fold {k}: {onset / 60:.1f} min normal: false alerts {d['false_alerts']} (baseline {b['false_alerts']}); "
            f"fault alerted {_after(d['time_to_alert_s'])} (baseline {_after(b['time_to_alert_s'])}; window ratio "
            f"{d['window_ratio_median_normal']:.2f} normal, {d['window_ratio_median_fault']:.2f} fault)",
            flush=True,
        )
    summary = {name: _summary(rows, name) for name in RULES}
    minutes = sum(r["normal_s"] for r in rows) / 60
    print(f"\n{len(rows)} folds, {minutes:.1f} min of held-out normal audio, the fault clip x{args.fault_repeats}:")
    for name, s in summary.items():
        print(
            f"  {name:18s} false alerts {s['false_alerts']} ({s['false_alerts_per_hour']:.1f} per hour); fault "
            f"alerted within 10 s {s['alerted_within_10s']}/{len(rows)}, 15 s {s['alerted_within_15s']}/{len(rows)}, "
            f"at all {s['alerted']}/{len(rows)}; time to alert median {_s(s['median_time_to_alert_s'])}"
        )
    write_results(
        "alerts_real",
        {
            "settings": {
                **{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                "clip_set": CLIPS,
                "yamnet": args.yamnet or os.environ.get("FANWATCH_YAMNET") or "train.py's lookup",
            },
            "normal_minutes": minutes,
            "summary": summary,
            "folds": rows,
            "seconds": time.perf_counter() - started,
        },
        args.out,
    )
    return 0


def _summary(rows: list[dict], name: str) -> dict:
    times = [r[name]["time_to_alert_s"] for r in rows]
    hits = [t for t in times if t is not None]
    hours = sum(r["normal_s"] for r in rows) / 3600
    false = sum(r[name]["false_alerts"] for r in rows)
    return {
        "false_alerts": false,
        "false_alerts_per_hour": false / hours if hours else None,
        "alerted": len(hits),
        "alerted_within_10s": sum(t <= 10 for t in hits),
        "alerted_within_15s": sum(t <= 15 for t in hits),
        "median_time_to_alert_s": float(np.median(hits)) if hits else None,
    }


def _after(value) -> str:
    return "never" if value is None else f"after {value:.1f} s"


def _s(value) -> str:
    return "never" if value is None else f"{value:.1f} s"


if __name__ == "__main__":
    sys.exit(main())
