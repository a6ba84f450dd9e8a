"""Every benchmark runs end to end on tiny settings and writes its JSON: the figures the README quotes come
from scripts that still work (``bench/latency.py`` broke unnoticed once when the model card became typed).
Figures are not checked here (benchmarks show them; timed tests would be noise on a shared machine), only
that each run finishes, says what it measured and writes the keys its README row reads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import needs_realdata

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def _bench(name: str, *args, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", f"bench.{name}", *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert proc.returncode == 0, (proc.stdout[-1500:], proc.stderr[-1500:])
    assert "Traceback" not in proc.stderr
    return proc


def _results(path: Path, *keys: str) -> dict:
    data = json.loads(path.read_text())
    assert data["benchmark"] and data["machine"], data
    missing = [k for k in keys if k not in data]
    assert not missing, f"{path.name} lacks {missing}"
    return data


@pytest.fixture(scope="module")
def model(trained_model) -> Path:
    return trained_model / "sound_classifier.tflite"


def test_latency(model, tmp_path):
    proc = _bench("latency", "--model", model, "--rounds", 5, "--also", model, "--out", tmp_path / "l.json")
    data = _results(tmp_path / "l.json", "results", "goal_met")
    assert f"also: {model}" in data["results"]  # another model timed in the same rounds
    assert "published yamnet.tflite" in proc.stdout and "fused score" in proc.stdout
    assert all(r["median_ms"] > 0 for r in data["results"].values() if "median_ms" in r)


def test_stream_and_web(model, tmp_path):
    _bench("stream", model, "--seconds", 3, "--fast-seconds", 3, "--out", tmp_path / "s.json")
    s = _results(tmp_path / "s.json", "realtime", "fast")
    assert s["realtime"]["cpu_percent_steady"] >= 0 and s["fast"]["windows_per_second"] > 0
    _bench("web", model, "--seconds", 3, "--clients", 2, "--out", tmp_path / "w.json")
    _results(tmp_path / "w.json", "without_http", "with_http")


def test_alerts(model, tmp_path):
    proc = _bench(
        "alerts", "--model", model, "--work", tmp_path / "work", "--cycles", 1, "--streams", 1,
        "--normal-s", 10, "--fault-s", 5, "--enroll-s", 30, "--equal-false-alerts", 1,
        "--out", tmp_path / "a.json", "--no-progress",
    )  # fmt: skip
    data = _results(tmp_path / "a.json", "figures", "card_alerts", "equal_false_alerts")
    assert any(k.startswith("cusum + known fault |") for k in data["figures"])
    assert any(k.startswith("cusum + known fault + enrollment") for k in data["figures"])
    assert "cusum + known fault" in proc.stdout


@needs_realdata
def test_alerts_real(tmp_path, yamnet_path):  # the fixture sets FANWATCH_YAMNET for train.py
    proc = _bench("alerts_real", "--folds", 2, "--clips", 12, "--work", tmp_path / "work", "--out", tmp_path / "r.json")
    data = _results(tmp_path / "r.json", "summary", "folds", "normal_minutes")
    assert len(data["folds"]) == 2 and set(data["summary"]) == {"default", "n-of-m (baseline)"}
    assert data["normal_minutes"] == pytest.approx(2 * 6 * 10 / 60, rel=0.02)  # 6 held-out clips of 10 s a fold
    assert "false alerts" in proc.stdout


def test_embeddings_and_anomaly_methods(tmp_path):
    _bench("embeddings", "--files", 4, "--repeats", 1, "--out", tmp_path / "e.json")
    _results(tmp_path / "e.json", "windows_per_second")
    _bench(
        "anomaly_methods", "--seeds", 1, "--seconds", 2, "--files-per-state", 3, "--files-per-fault", 2,
        "--sessions", 2, "--real", tmp_path / "no_real_sets", "--out", tmp_path / "m.json",
    )  # fmt: skip
    _results(tmp_path / "m.json", "methods", "summary", "rows")
