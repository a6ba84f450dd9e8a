"""train.py end to end on synthetic fan data, and on awkward data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO

from fanwatch import anomaly, audio, datasets, evidence, runtime, synth, training
from fanwatch.errors import FanwatchError


def _train(data, out, yamnet_path, cache_dir, **kw):
    settings = training.TrainSettings(
        data=data,
        out=out,
        yamnet=str(yamnet_path),
        cache=str(cache_dir),
        progress=False,
        epochs=kw.pop("epochs", 60),
        **kw,
    )
    return training.train(settings)


def _file_outputs(model: runtime.SoundClassifier, path: Path):
    windows = audio.frame_windows(audio.load_audio(path))
    preds = [model.predict(w) for w in windows]
    return (np.mean([p.probabilities for p in preds], axis=0), np.mean([p.anomaly_scores for p in preds], axis=0))


def test_artifacts_and_model_card(trained_model):
    names = {p.name for p in trained_model.iterdir()}
    assert {
        "sound_classifier.tflite",
        "sound_classifier_float32.tflite",
        "sound_classifier_head.keras",
        "model_card.json",
        "split.json",
        "anomaly_model.npz",
    } <= names
    assert not [n for n in names if n.endswith((".pkl", ".pickle"))]
    card = json.loads((trained_model / "model_card.json").read_text())
    assert card["labels"] == sorted(card["labels"]) and len(card["labels"]) == 7
    assert set(card["normal_labels"]) == {"off", "low_speed", "high_speed"}
    assert card["window_samples"] == 15600 and card["hop_samples"] == 8000
    assert card["yamnet"]["sha256"] == "687f226c147a2caab4706fbbab5e9cecb14b9a368264bf61108078b1fddf68f5"
    assert card["quantization"] == "int8-pointwise"
    assert any(r.startswith("ai_edge_litert") for r in card["runtimes_verified"])
    assert card["anomaly"]["machines"] == ["default"] and card["anomaly"]["thresholds"]["default"] > 0
    assert card["data"]["summary"]["files"] == 60 and card["data"]["skipped"] == []
    assert 0 <= card["validation"]["window"]["macro_f1"] <= 1
    # Keras head on cached front-end embeddings vs the deployed TFLite file
    assert card["parity"]["min_embedding_cosine"] > 0.9999
    assert card["parity"]["max_probability_diff"] < 1e-4  # the head stays float
    assert card["parity"]["max_relative_score_diff"] < 1e-3  # the anomaly transform stays float
    np.load(trained_model / "anomaly_model.npz", allow_pickle=False)  # no pickle inside either
    # the alert rules, calibrated per day on the normal validation recordings (never on anomalous ones)
    alerts = card["alerts"]
    cal = alerts["calibration"]
    assert alerts["rule"]["method"] == "cusum"
    # the score's and the channel's alert levels never below the minimum (recording-long normal deviations)
    assert alerts["rule"]["threshold"] >= evidence.MIN_ALERT_LEVEL
    for c in alerts["channels"].values():
        assert c["rule"]["threshold"] >= evidence.MIN_ALERT_LEVEL
    assert alerts["min_alert_level"] == evidence.MIN_ALERT_LEVEL == training.TrainSettings.min_alert_level
    with pytest.raises(FanwatchError, match="min-alert-level"):
        training.TrainSettings(data="d", out="o", min_alert_level=-1).validate()
    assert 0 < alerts["rule"]["reference"] <= 1.0
    # the target of 1 per day is shared by the four running totals: the fused score's, the modulation-peak
    # channel's, the embedding channel's and the head's known-fault one
    assert card["settings"]["score_channels"] == "modulation_peak,embedding"
    assert list(alerts["channels"]) == ["modulation_peak", "embedding"]
    assert alerts["target_false_alerts_per_day"] == 1.0 and alerts["target_share_per_day"] == pytest.approx(1 / 4)
    channels = [c["calibration"] for c in alerts["channels"].values()]
    known = alerts["known_fault"]["calibration"]
    for c in (cal, *channels, known):
        assert c["target_false_alerts_per_day"] == pytest.approx(1 / 4) and c["observed_false_alerts"] == 0
        assert c["expected_false_alerts_per_day"] is None or c["expected_false_alerts_per_day"] <= 1 / 4
    val_windows = card["anomaly"]["threshold_details"]["default"]["windows"]
    assert cal["normal_hours"] * 3600 == pytest.approx(val_windows * 0.5, rel=1e-3)
    assert all(c["normal_hours"] == cal["normal_hours"] for c in channels)
    parts = [c["expected_false_alerts_per_day"] for c in (cal, *channels, known)]
    if None not in parts:
        assert alerts["expected_false_alerts_per_day"] == pytest.approx(sum(parts), abs=1e-3)
    assert alerts["known_fault"]["classes"] == [c for c in card["labels"] if c.startswith("fault_")]
    assert alerts["known_fault"]["rule"]["reference"] == 1.0


def test_split_is_by_file_and_reused(trained_model, synthetic_data):
    splits = datasets.load_split(trained_model / "split.json")
    sets = [{r.path for r in splits[k]} for k in datasets.SPLITS]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    assert sum(map(len, sets)) == 60
    assert {r.label for r in splits["test"]} == {r.label for r in splits["train"]}


def test_deployed_model_classifies_and_detects_held_out_files(trained_model):
    model = runtime.SoundClassifier(trained_model / "sound_classifier.tflite")
    test = datasets.load_split(trained_model / "split.json")["test"]
    correct, normal_scores, anomalous_scores = 0, [], []
    for rec in test:
        probs, scores = _file_outputs(model, rec.path)
        assert np.isfinite(probs).all() and np.isfinite(scores).all()
        assert abs(probs.sum() - 1) < 1e-3
        correct += model.labels[int(probs.argmax())] == rec.label
        (normal_scores if rec.normal else anomalous_scores).append(scores[0])
    accuracy = correct / len(test)
    assert accuracy >= 2.5 / len(model.labels), f"file accuracy {accuracy:.2f} is near chance"
    auc = anomaly.roc_auc(np.array(normal_scores), np.array(anomalous_scores))
    assert auc > 0.7, f"held-out anomaly AUC {auc:.2f}"


@pytest.mark.slow
def test_bad_files_single_file_class_and_empty_class(tmp_path, yamnet_path, cache_dir):
    data = tmp_path / "data"
    synth.generate_dataset(data, seed=3, seconds=2.0, files_per_state=4, files_per_fault=3, progress=False)
    (data / "fault_imbalance" / "truncated.wav").write_bytes((data / "off" / "off_0000.wav").read_bytes()[:60])
    (data / "off" / "notes.wav").write_text("not audio at all")
    (data / "low_speed" / "short.wav").write_bytes(b"")
    for path in sorted((data / "fault_rubbing").glob("*.wav"))[1:]:
        path.unlink()  # a class with a single file
    (data / "empty_state").mkdir()  # a class folder without recordings
    card = _train(data, tmp_path / "out", yamnet_path, cache_dir)
    skipped = {Path(s["file"]).name: s["reason"] for s in card["data"]["skipped"]}
    assert set(skipped) == {"truncated.wav", "notes.wav", "short.wav"}
    assert all(reason and "\n" not in reason for reason in skipped.values())
    assert "fault_rubbing" in card["labels"] and "empty_state" not in card["labels"]
    assert (tmp_path / "out" / "sound_classifier.tflite").is_file()


@pytest.mark.slow
def test_single_class_and_normal_only_data(tmp_path, yamnet_path, cache_dir):
    data = tmp_path / "one"
    synth.generate_dataset(data, seed=4, seconds=2.0, files_per_state=5, files_per_fault=1, progress=False)
    for folder in data.iterdir():
        if folder.is_dir() and folder.name != "high_speed":
            for f in folder.iterdir():
                f.unlink()
            folder.rmdir()
    card = _train(data, tmp_path / "out", yamnet_path, cache_dir)
    assert card["labels"] == ["high_speed"] and card["head_target"] == "label"
    model = runtime.SoundClassifier(tmp_path / "out" / "sound_classifier.tflite")
    pred = model.predict(np.zeros(15600, np.float32) + 1e-3)
    assert pred.probabilities.tolist() == [1.0] and np.isfinite(pred.anomaly_scores).all()


@pytest.mark.slow
def test_dcase_normal_only_training_trains_on_machine_ids(tmp_path, yamnet_path, cache_dir):
    data = tmp_path / "dcase"
    synth.generate_dataset(
        data, layout="dcase", seed=5, seconds=2.0, files_per_state=6, files_per_fault=2, progress=False
    )
    card = _train(data, tmp_path / "out", yamnet_path, cache_dir)
    assert card["head_target"] == "machine" and card["labels"] == ["fan/id_00", "fan/id_02"]
    assert card["anomaly"]["machines"] == ["fan/id_00", "fan/id_02"]
    assert all(t > 0 for t in card["anomaly"]["thresholds"].values())
    split = json.loads((tmp_path / "out" / "split.json").read_text())
    assert split  # DCASE test folder files are all in the test split
    test = datasets.load_split(tmp_path / "out" / "split.json")["test"]
    assert test and all(r.subset == "test" for r in test)


@pytest.mark.parametrize("setup", ["missing", "empty"])
def test_cli_without_data_explains_layouts(tmp_path, setup):
    data = tmp_path / "data"
    if setup == "empty":
        data.mkdir()
    proc = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "--data", str(data), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "no recordings found" in proc.stderr and "python train.py --demo" in proc.stderr
    assert "Traceback" not in proc.stderr
