"""evaluate_model.py / fanwatch.evaluation on the session's model trained on synthetic data."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REALDATA, needs_realdata, png_size

from fanwatch import evaluation

REPO = Path(__file__).resolve().parents[1]


def in_unit(value) -> bool:
    return value is not None and 0.0 <= value <= 1.0


@pytest.fixture(scope="module")
def split_eval(trained_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval_split")
    metrics = evaluation.evaluate(
        evaluation.EvalSettings(model=trained_model / "sound_classifier.tflite", out=out, progress=False)
    )
    return out, metrics


def test_test_split_evaluation_writes_everything(split_eval, trained_model):
    out, m = split_eval
    split = json.loads((trained_model / "split.json").read_text())
    assert m["files"] == len(split["splits"]["test"]) and m["skipped"] == []
    for key in ("accuracy", "macro_f1", "anomaly_auc", "anomaly_pauc", "false_alarm_rate", "detection_rate"):
        assert in_unit(m[key]), (key, m[key])
    assert [n for n in m["notes"] if not n.startswith("parity:")] == []
    assert set(m["per_machine"]) == {"default"}
    pm = m["per_machine"]["default"]
    assert pm["threshold"] == pytest.approx(m["model"]["thresholds"]["default"])
    for level in ("file_level", "window_level"):
        for key in ("auc", "pauc_dcase", "pauc_mcclish"):
            assert in_unit(pm[level][key])
    assert m["classification"]["file_level"]["n"] == m["files"]
    assert m["classification"]["window_level"]["n"] == m["windows"] > m["files"]
    card = json.loads((trained_model / "model_card.json").read_text())
    assert m["model"]["yamnet_sha256"] == card["yamnet"]["sha256"]
    assert m["model"]["quantization"] == card["quantization"] and len(m["model"]["sha256"]) == 64
    assert m["settings"]["channel_used"] == "mean" and m["settings"]["data"] is None
    # the deployed model and the Keras head agree on the same windows
    p = m["parity"]
    assert p["windows"] == m["windows"]
    # int8 head weights move window probabilities by up to ~0.1 (measured); the score stays float
    assert p["max_probability_diff"] < 0.3 and p["argmax_agreement"] >= 0.9
    assert p["max_score_diff_over_threshold"] < 1e-3
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["anomaly_auc"] == m["anomaly_auc"]
    # the score's side channel beside the fused score and the baselines, on the same files
    b = on_disk["baselines"]
    assert set(b["channels"]) == {"modulation_peak", "embedding"}
    for block in (*b["channels"].values(), b["deployed_with_channels"], b["deployed"]):
        assert in_unit(block["file_level"]["auc"]) and in_unit(block["window_level"]["auc"])
    assert on_disk["score_channels"]["channels"] == b["channels"]  # also without baselines (test_dcase_layout)
    # alert level: the test recordings replayed as streams through the live Analyzer
    a = on_disk["alerts"]
    tests = split["splits"]["test"]
    assert a["fault_streams"] == sum(1 for r in tests if not r["normal"]) and a["normal_streams"] == 1
    assert a["normal_hours"] * 3600 == pytest.approx(sum(1 for r in tests if r["normal"]) * 4.0, rel=0.1)
    assert a["false_alerts"] >= 0 and 0 <= a["faults_alerted"] <= a["fault_streams"]
    assert in_unit(a["share_alerted_within_horizon"]) and a["horizon_s"] == 15.0
    assert a["rule"] == card["alerts"]["rule"] and a["site"] is None
    assert a["channel_rules"] == {ch: c["rule"] for ch, c in card["alerts"]["channels"].items()}
    for name in ("alerts_timeline_default_normal.png", "alerts_timeline_default_faults.png"):
        assert name in on_disk["outputs"] and png_size(out / name)[1] > 100
    for name in on_disk["outputs"]:
        assert (out / name).is_file(), name
    for name in ("confusion_windows.png", "confusion_files.png", "roc_default.png", "scores_default.png"):
        w, h = png_size(out / name)
        assert 400 <= w <= 4000 and 300 <= h <= 3000, (name, w, h)
    report = (out / "classification_report.txt").read_text()
    assert "WINDOW level" in report and "FILE level" in report and "off" in report
    rows = (out / "files.csv").read_text().splitlines()
    assert len(rows) == m["files"] + 1


def test_normal_only_folder_gives_classification_and_clear_auc_note(trained_model, synthetic_data, tmp_path, capsys):
    data = tmp_path / "normal_only"
    for cls, n in (("off", 2), ("low_speed", 2)):
        (data / cls).mkdir(parents=True)
        for f in sorted((synthetic_data / cls).glob("*.wav"))[:n]:
            shutil.copy(f, data / cls / f.name)
    (data / "off" / "broken.wav").write_bytes(b"RIFF not really a wav file")
    m = evaluation.evaluate(
        evaluation.EvalSettings(
            model=trained_model / "sound_classifier.tflite",
            data=data,
            out=tmp_path / "eval",
            progress=False,
            parity=False,
        )
    )
    console = capsys.readouterr().out
    assert m["files"] == 4
    assert [s["file"] for s in m["skipped"]] == [str((data / "off" / "broken.wav").resolve())]
    assert "not a readable audio file" in m["skipped"][0]["reason"]
    assert in_unit(m["accuracy"]) and in_unit(m["macro_f1"])
    assert m["anomaly_auc"] is None and m["anomaly_pauc"] is None and m["detection_rate"] is None
    assert in_unit(m["false_alarm_rate"])
    assert "no anomalous files: AUC not defined" in m["notes"]
    assert "no anomalous files: AUC not defined" in console
    assert (tmp_path / "eval" / "confusion_windows.png").is_file()
    assert not (tmp_path / "eval" / "roc_default.png").exists()  # no ROC without anomalies
    png_size(tmp_path / "eval" / "scores_default.png")
    json.loads((tmp_path / "eval" / "metrics.json").read_text())


@needs_realdata
def test_dcase_layout_folder(trained_model, tmp_path, monkeypatch):
    from fanwatch import synth

    monkeypatch.setattr(evaluation, "MIN_FILES_FOR_POOL", 2)  # exercise the two worker processes
    # as when the model's training files are not beside it: no baselines, the side channel's figures still
    monkeypatch.setattr(evaluation, "baseline_metrics", lambda *a, **k: (None, "baselines not computed: test"))

    data = tmp_path / "dcase"
    synth.generate_dataset(
        data, layout="dcase", seed=3, seconds=2.0, files_per_state=0, files_per_fault=2, progress=False
    )
    m = evaluation.evaluate(
        evaluation.EvalSettings(
            model=trained_model / "sound_classifier.tflite", data=data, out=tmp_path / "eval", progress=False
        )
    )
    assert m["files"] == 8 and m["data"]["layout"] == "dcase"
    # labels fan_normal / fan_anomaly are not the model's: classification is not defined, said so
    assert m["accuracy"] is None and m["macro_f1"] is None
    assert any("classification metrics not defined" in n for n in m["notes"])
    # machine ids the model does not know are scored against the pooled normal reference (ratio units)
    assert m["unknown_machines"] == ["fan/id_00", "fan/id_02"]
    assert set(m["per_machine"]) == {"fan/id_00", "fan/id_02"}
    for block in m["per_machine"].values():
        assert block["file_level"]["normal"] == 2 and block["file_level"]["anomalous"] == 2
        assert in_unit(block["file_level"]["auc"])
        assert block["threshold"] == 1.0
    assert in_unit(m["anomaly_auc"]) and in_unit(m["anomaly_pauc"])
    for name in ("roc_fan_id_00.png", "scores_fan_id_02.png"):
        png_size(tmp_path / "eval" / name)
    assert m["parity"] is not None and m["parity"]["max_score_diff_over_threshold"] < 1e-3
    assert m["baselines"] is None and "baselines not computed: test" in m["notes"]
    channels = m["score_channels"]
    assert set(channels["channels"]) == {"modulation_peak", "embedding"}
    assert in_unit(channels["deployed_with_channels"]["file_level"]["auc"])


@pytest.mark.skipif(not (REALDATA / "dcase2020_id00").is_dir(), reason="shared/realdata not present")
def test_real_dcase_clips_with_chosen_machine(trained_model, tmp_path):
    src = REALDATA / "dcase2020_id00"
    data = tmp_path / "fan"
    (data / "test").mkdir(parents=True)
    (data / "train").mkdir()
    (data / "test" / "anomaly_id_00_00000000.wav").symlink_to(src / "test" / "anomaly_id_00_00000000.wav")
    for f in sorted((src / "train").glob("normal_*.wav"))[:2]:
        (data / "train" / f.name).symlink_to(f)
    m = evaluation.evaluate(
        evaluation.EvalSettings(
            model=trained_model / "sound_classifier.tflite",
            data=data,
            out=tmp_path / "eval",
            machine="default",
            progress=False,
            parity=False,
        )
    )
    assert m["files"] == 3 and m["windows"] == 3 * 19  # 10 s clips
    block = m["per_machine"]["fan/id_00"]
    assert block["scored_as"] == "default" and m["unknown_machines"] == []
    assert in_unit(block["file_level"]["auc"]) and in_unit(m["false_alarm_rate"])


def test_pauc_definitions_match_references():
    from sklearn.metrics import roc_auc_score

    from fanwatch import anomaly

    rng = np.random.default_rng(0)
    for _ in range(50):
        n = rng.normal(size=rng.integers(2, 40)).round(1)
        a = (rng.normal(size=rng.integers(2, 40)) + rng.uniform(-1, 2)).round(1)
        y, s = np.r_[np.zeros(len(n)), np.ones(len(a))], np.r_[n, a]
        fpr, tpr, _ = evaluation.roc_curve(n, a)
        assert evaluation._trapezoid(tpr, fpr) == pytest.approx(anomaly.roc_auc(n, a))
        assert evaluation.pauc_mcclish(n, a) == pytest.approx(roc_auc_score(y, s, max_fpr=0.1))
    # DCASE definition: perfect separation -> 1, all anomalies below all normals -> 0
    assert evaluation.pauc_dcase([0, 1, 2], [5, 6]) == pytest.approx(1.0)
    assert evaluation.pauc_dcase([5, 6], [0, 1, 2]) == pytest.approx(0.0)
    # half of the anomalies beat every normal, the other half only 9 of 10: TPR 0.5 over FPR [0, 0.1]
    normal = np.arange(10.0)
    assert evaluation.pauc_dcase(normal, [8.5, 20.0]) == pytest.approx(0.5)
    assert evaluation.pauc_mcclish(normal, [8.5, 20.0]) == pytest.approx(0.5 * (1 + (0.05 - 0.005) / 0.095))
    assert evaluation.pauc_dcase(normal, [1.0]) is not None and evaluation.pauc_dcase([], [1.0]) is None


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "evaluate_model.py"), *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )


def test_cli_runs_on_the_test_split(trained_model, tmp_path):
    out = tmp_path / "cli_eval"
    proc = run_cli(
        "--model", str(trained_model / "sound_classifier.tflite"), "--out", str(out), "--no-progress", "--no-parity"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "anomaly, file level (DCASE): AUC" in proc.stdout
    m = json.loads((out / "metrics.json").read_text())
    assert m["settings"]["parity"] is False and in_unit(m["anomaly_auc"])


def test_cli_bad_model_path_is_one_line_exit_2(tmp_path):
    proc = run_cli("--model", str(tmp_path / "nope" / "sound_classifier.tflite"))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: model not found:"), proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_unusable_model_files_are_one_line_exit_2(trained_model, tmp_path):
    bad = tmp_path / "sound_classifier.tflite"
    bad.write_bytes(b"this is not a flatbuffer")
    (tmp_path / "model_card.json").write_text("{}")
    proc = run_cli("--model", str(bad))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "not a fanwatch model card" in proc.stderr
    shutil.copy(trained_model / "model_card.json", tmp_path / "model_card.json")
    proc = run_cli("--model", str(bad))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "not a loadable TFLite model" in proc.stderr
