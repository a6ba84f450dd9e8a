"""inference.py end to end on files: decisions and scores, bad input, help, light imports, drops, SIGTERM."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf
from live_common import (
    FAULT_SECONDS,
    INFERENCE,
    NORMAL_SECONDS,
    REPO,
    check_decisions,
    decision_events,
    events,
    kinds,
    model_copy,
    model_path,
    one_error_line,
    parse,
    run_cli,
    scenario,
    window_ends,
)

from fanwatch import audio, config, runtime


def test_wav_fast_gives_states_alert_and_the_offline_scores(trained_model, scene, tmp_path):
    wav = scene["wav"]
    log = tmp_path / "events.jsonl"
    # the previous rule (n of m windows, no known-fault alerts): check_decisions writes it out independently
    proc = run_cli(
        [
            "--model",
            model_path(trained_model),
            "--wav",
            wav,
            "--fast",
            "--json",
            "--event-log",
            log,
            "--threshold-scale",
            scene["scale"],
            "--alert-rule",
            "n-of-m",
        ]
    )
    assert proc.returncode == 0, proc.stderr
    records = parse(proc.stdout)
    windows = kinds(records, "window")
    assert len(windows) == len(scene["ratios"]) == audio.n_windows(int((NORMAL_SECONDS + FAULT_SECONDS) * 16000))
    # same queue -> streaming soxr -> rolling window path gives the training-time windows, sample for sample
    np.testing.assert_allclose([w["anomaly"] for w in windows], scene["ratios"] / scene["scale"], atol=1e-4)
    assert [w["label"] for w in windows] == scene["labels"]
    np.testing.assert_allclose([w["t"] for w in windows], window_ends(len(windows)), atol=1e-3)
    check_decisions(records)
    summary = records[-1]
    assert summary["type"] == "summary" and summary["reason"] == "end of file"
    assert summary["windows"] == len(windows) and summary["alerts"] == 1 and summary["dropped_blocks"] == 0
    logged = [json.loads(line) for line in log.read_text().splitlines()]
    assert {r["type"] for r in logged} == {"event", "summary"}  # events only, no per-window records
    assert decision_events(logged) == decision_events(records)
    # the start record says what produced the run: every setting, the model's identity and its thresholds
    start = events(logged, "start")[0]
    card = json.loads((trained_model / runtime.CARD_NAME).read_text())
    assert start["model_sha256"] == config.sha256_file(model_path(trained_model))
    assert start["thresholds"] == card["anomaly"]["thresholds"] and start["labels"] == card["labels"]
    assert start["settings"]["wav"] == str(wav) and start["settings"]["threshold_scale"] == scene["scale"]
    assert start["settings"]["fast"] is True and start["settings"]["event_log"] == str(log)
    assert start["channel"] == start["settings"]["channel"] == card["settings"]["channel"] == "mean"
    assert start["channel_from"] == "model card"


def test_bad_inputs_end_in_one_line(trained_model, tmp_path):
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"not a wav file" * 100)
    cases = [
        (["--wav", junk, "--model", model_path(trained_model)], "junk.wav"),
        (["--wav", junk, "--model", tmp_path / "none.tflite"], "junk.wav"),  # the file is checked first
        (["--wav", tmp_path / "missing.wav", "--model", model_path(trained_model)], "file not found"),
        (["--fast", "--model", model_path(trained_model)], "--fast only applies to --wav"),
    ]
    for args, message in cases:
        proc = run_cli(args, timeout=30)
        assert proc.returncode == 2, proc.stderr
        assert message in proc.stderr and "Traceback" not in proc.stderr
    wav = tmp_path / "ok.wav"
    sf.write(wav, scenario(16000)[: 16000 * 2], 16000)
    proc = run_cli(["--wav", wav, "--model", tmp_path / "none.tflite"], timeout=30)
    assert proc.returncode == 2 and "model not found" in proc.stderr and "Traceback" not in proc.stderr


def test_a_malformed_model_card_ends_in_one_line(trained_model, tmp_path):
    wav = tmp_path / "ok.wav"
    sf.write(wav, scenario(16000)[: 16000 * 2], 16000)
    model = model_copy(trained_model, tmp_path / "broken", lambda card: card.pop("anomaly"))
    line = one_error_line(run_cli(["--wav", wav, "--model", model], timeout=30))
    assert runtime.CARD_NAME in line and "anomaly" in line


def test_a_card_that_belongs_to_another_model_file_ends_in_one_line(trained_model, tmp_path):
    """The card records the sha256 of the model files it was written with: a model copied over another one's
    folder (its card left behind) or a card of wrong labels is refused instead of naming wrong states."""
    wav = tmp_path / "ok.wav"
    sf.write(wav, scenario(16000)[: 16000 * 2], 16000)
    model = model_copy(trained_model, tmp_path / "swapped")
    card = json.loads((model.parent / runtime.CARD_NAME).read_text())
    assert card["sha256"][runtime.MODEL_NAME] == config.sha256_file(model)
    with open(model, "ab") as handle:  # another file of the same name (a flatbuffer ignores trailing bytes)
        handle.write(b"another model")
    line = one_error_line(run_cli(["--wav", wav, "--model", model], timeout=30))
    assert "does not match its card" in line and str(model) in line
    for labels in ("abcdefg", ["on", "on"]):
        bad = model_copy(trained_model, tmp_path / f"labels{len(labels)}", lambda c, v=labels: c.update(labels=v))
        line = one_error_line(run_cli(["--wav", wav, "--model", bad], timeout=30))
        assert runtime.CARD_NAME in line and "label" in line


def test_help_explains_every_option_and_privacy():
    proc = run_cli(["--help"], timeout=30)
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    for option in (
        "--model",
        "--device",
        "--list-devices",
        "--wav",
        "--fast",
        "--hop",
        "--threads",
        "--machine",
        "--json",
        "--event-log",
        "--alert-window",
        "--alert-after",
        "--clear-allow",
        "--state-after",
        "--queue-blocks",
        "--simulate-slow-ms",
        "--duration",
    ):
        assert option in text
    assert "no audio is ever written to disk or sent anywhere" in text


def test_runtime_imports_stay_light(trained_model, tmp_path):
    """The Pi loop must not pull in TensorFlow, scikit-learn, scipy or keras (nor PortAudio for --wav)."""
    wav = tmp_path / "light.wav"
    sf.write(wav, scenario(16000)[: 16000 * 2], 16000)
    code = (
        "import sys, json, inference, fanwatch.live, fanwatch.wavfile\n"
        "after_import = sorted(sys.modules)\n"
        f"rc = inference.main(['--wav', {str(wav)!r}, '--fast', '--quiet', '--model', "
        f"{str(model_path(trained_model))!r}])\n"
        "print(json.dumps({'rc': rc, 'import': after_import, 'run': sorted(sys.modules)}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.splitlines()[-1])
    assert report["rc"] == 0
    heavy = ("tensorflow", "sklearn", "scipy", "keras", "sounddevice")
    assert not [m for m in report["import"] if m.split(".")[0] in heavy]
    litert = importlib.util.find_spec("ai_edge_litert") or importlib.util.find_spec("tflite_runtime")
    if litert:  # a TFLite runtime is installed, so TensorFlow must not be the one in use
        assert not [m for m in report["run"] if m.split(".")[0] in heavy]


def test_the_loop_keeps_numpy_to_one_blas_thread_unless_told_otherwise():
    """OpenBLAS threads spinning after the score's matrix products cost ~20 % of a core at real-time pace
    (bench/stream): inference.py asks for one thread before numpy loads; an explicit setting wins."""
    code = "import os, inference, numpy; print(os.environ['OPENBLAS_NUM_THREADS'])"
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0 and proc.stdout.split() == ["1"], proc.stderr
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={**env, "OPENBLAS_NUM_THREADS": "3"},
    )
    assert proc.stdout.split() == ["3"], proc.stderr


def test_slow_model_drops_are_counted_and_memory_stays_bounded(trained_model, tmp_path):
    wav = tmp_path / "slow.wav"
    # 4 s: after a gap a window needs 0.975 s of unbroken audio again; 4 s leaves room for two windows
    sf.write(wav, scenario(16000)[: 16000 * 4], 16000, subtype="PCM_16")
    proc = run_cli(
        ["--model", model_path(trained_model), "--wav", wav, "--json", "--simulate-slow-ms", 900, "--queue-blocks", 3],
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    records = parse(proc.stdout)
    summary = records[-1]
    assert summary["reason"] == "end of file"
    assert summary["dropped_blocks"] > 0 and summary["dropped_seconds"] > 0
    assert summary["max_queue_depth"] <= 3  # bounded: the queue never holds more than its size
    assert summary["windows"] >= 2  # the loop kept deciding while audio was being dropped
    drops = events(records, "drops")
    assert drops and sum(d["dropped_blocks"] for d in drops) == summary["dropped_blocks"]
    windows = kinds(records, "window")
    assert all(w["queue"] <= 3 for w in windows) and windows[-1]["drops"] > 0
    # dropped audio is a gap, never spliced: the analysis restarted, and no window spans a gap
    assert summary["gap_restarts"] > 0 and windows[-1]["gap_restarts"] > 0
    hop = config.HOP_SECONDS
    for before, after in zip(windows, windows[1:]):
        if after["gap_restarts"] == before["gap_restarts"]:  # one continuous stretch: one hop apart
            assert after["t"] - before["t"] == pytest.approx(hop, abs=1e-3)
        else:  # a new stretch: its first window starts after the last one of the old stretch ended
            assert after["t"] - config.WINDOW_SECONDS >= before["t"] - 1e-3


def test_sigterm_ends_cleanly_with_a_summary(trained_model, tmp_path):
    wav = tmp_path / "long.wav"
    sf.write(wav, np.tile(scenario(16000), 3), 16000, subtype="PCM_16")  # 24 s: would run long
    proc = subprocess.Popen(
        [sys.executable, str(INFERENCE), "--model", str(model_path(trained_model)), "--wav", str(wav)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if " t=" in line:  # the first window line
                break
        assert any(" t=" in line for line in lines), "".join(lines) + proc.stderr.read()
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert time.monotonic() - sent < 5
    last = out.strip().splitlines()[-1]
    assert last.startswith("summary:") and "(SIGTERM)" in last and "windows" in last
    assert "Traceback" not in err
