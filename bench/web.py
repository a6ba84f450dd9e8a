#!/usr/bin/env python3
"""What the status page costs the real-time loop: the same replay with and without 20 clients.

Two runs of ``inference.py --wav`` at real-time pace (``--seconds`` of a synthetic fan at 48 kHz, high speed
then an imbalance fault): one without ``--http``, one with ``--http 127.0.0.1:0``, ``--clients`` readers on
``/events`` and a ``/metrics`` scrape plus an ``/api/status`` read every second. Prints, for both, the loop's
steady-state CPU, decision latency (median / p95), dropped audio and peak memory, and for the served run the
messages every client received and the scrape / status times; writes them as JSON
(``bench/results/web.json`` or ``--out``). Usage: ``python -m bench.web [MODEL] [--seconds S]``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from bench._common import REPO, RESULTS, write_results
from bench.stream import DEFAULT_MODEL, make_recording


def _reader(host: str, port: int, counts: list, index: int, stop: threading.Event) -> None:
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request("GET", "/events")
        response = conn.getresponse()
        for raw in response:
            if raw.startswith(b"event: window"):
                counts[index] += 1
            if stop.is_set() or raw.startswith(b"event: summary"):
                return
    except OSError:
        pass
    finally:
        conn.close()


def _timed_get(host: str, port: int, path: str) -> float:
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request("GET", path)
        conn.getresponse().read()
    finally:
        conn.close()
    return (time.perf_counter() - t0) * 1000.0


def run(model: Path, wav: Path, clients: int, serve: bool) -> dict:
    cmd = [sys.executable, str(REPO / "inference.py"), "--model", str(model), "--wav", str(wav), "--json", "--quiet"]
    if serve:
        cmd += ["--http", "127.0.0.1:0"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    counts, threads, scrape_ms, status_ms = [0] * clients, [], [], []
    stop = threading.Event()
    if serve:
        line = ""
        while not line.startswith("status page: "):
            line = proc.stderr.readline()
            if not line:
                raise SystemExit(f"inference.py did not start its server: {proc.stderr.read()}")
        host, port = re.search(r"http://([^:/]+):(\d+)/", line).groups()
        port = int(port)
        for i in range(clients):
            t = threading.Thread(target=_reader, args=(host, port, counts, i, stop), daemon=True)
            t.start()
            threads.append(t)
        while proc.poll() is None:
            try:
                scrape_ms.append(_timed_get(host, port, "/metrics"))
                status_ms.append(_timed_get(host, port, "/api/status"))
            except OSError:
                break
            time.sleep(1.0)
    out, err = proc.communicate(timeout=120)
    stop.set()
    for t in threads:
        t.join(timeout=5)
    if proc.returncode != 0:
        raise SystemExit(f"inference.py failed: {err}")
    records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    summary = records[-1]
    result = {
        key: summary.get(key)
        for key in (
            "windows",
            "cpu_percent_steady",
            "latency_ms_median",
            "latency_ms_p95",
            "dropped_blocks",
            "overflows",
            "peak_rss_mb",
        )
    }
    if serve:
        result.update(
            clients=clients,
            windows_received_min=min(counts) if counts else None,
            windows_received_max=max(counts) if counts else None,
            metrics_ms_median=round(float(np.median(scrape_ms)), 2) if scrape_ms else None,
            status_ms_median=round(float(np.median(status_ms)), 2) if status_ms else None,
        )
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", nargs="?", type=Path, default=DEFAULT_MODEL)
    p.add_argument("--seconds", type=float, default=20.0, help="seconds of audio per run (default 20)")
    p.add_argument("--clients", type=int, default=20, help="readers on /events (default 20)")
    p.add_argument("--out", default=str(RESULTS / "web.json"))
    args = p.parse_args(argv)
    if not args.model.is_file():
        raise SystemExit(f"no model at {args.model}: train one first (python train.py --demo)")
    with tempfile.TemporaryDirectory() as tmp:
        wav = make_recording(Path(tmp) / "fan.wav", args.seconds, 48000)
        plain = run(args.model, wav, 0, serve=False)
        served = run(args.model, wav, args.clients, serve=True)
    for name, r in (("without --http", plain), (f"--http, {args.clients} clients", served)):
        print(
            f"{name:>22}: {r['windows']} windows, CPU {r['cpu_percent_steady']} % steady, latency median "
            f"{r['latency_ms_median']} ms / p95 {r['latency_ms_p95']} ms, dropped blocks {r['dropped_blocks']}, "
            f"peak RSS {r['peak_rss_mb']} MB"
        )
    print(
        f"{'':>22}  every client received {served['windows_received_min']}-{served['windows_received_max']} "
        f"window messages; /metrics {served['metrics_ms_median']} ms, /api/status {served['status_ms_median']} ms "
        "(median)"
    )
    write_results(
        "web",
        {"settings": vars(args) | {"model": str(args.model)}, "without_http": plain, "with_http": served},
        args.out,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
