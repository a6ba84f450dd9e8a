"""The live loop's default alert rule (calibrated evidence, known faults) and on-site enrollment, through the real
inference.py on the fixture model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
from live_common import SPLICE, events, kinds, model_copy, one_error_line, parse, run_cli

from fanwatch import config, site, synth

LONG_FAULT_SECONDS = 14.0  # the fixture's 20 s of validation audio make a cautious alert level: ~5-10 s to alert


@pytest.fixture(scope="module")
def long_scene(tmp_path_factory):
    """The scenario's fan (high speed, then an imbalance), with the fault running long enough for evidence."""
    normal = synth.render("high_speed", SPLICE, 3002, snr_db=12.0)
    fault = synth.render("imbalance", LONG_FAULT_SECONDS, 3006, snr_db=20.0)
    wav = tmp_path_factory.mktemp("long_scene") / "long_scene.wav"
    sf.write(wav, np.concatenate([normal, fault]), config.SAMPLE_RATE, subtype="PCM_16")
    return wav


def test_default_rule_alerts_on_the_fault_with_its_kind_and_never_before(trained_model, scene, long_scene):
    proc = run_cli(
        [
            "--model",
            trained_model / "sound_classifier.tflite",
            "--wav",
            long_scene,
            "--fast",
            "--json",
            "--threshold-scale",
            scene["scale"],
        ]
    )
    assert proc.returncode == 0, proc.stderr
    records = parse(proc.stdout)
    windows = kinds(records, "window")
    card = json.loads((trained_model / "model_card.json").read_text())
    start = events(records, "start")[0]
    assert start["alert_rule"] == card["alerts"]["rule"] and start["site"] is None
    assert start["known_fault_classes"] == card["alerts"]["known_fault"]["classes"]
    assert start["alert"].startswith("cusum")
    # every window carries the evidence beside the per-window score (the contract's fields stay)
    for w in windows:
        assert {"type", "t", "alert", "anomaly", "evidence", "alert_kinds"} <= set(w)
        assert w["evidence"] >= 0 and w["alert"] == bool(w["alert_kinds"])
        assert set(w["anomaly_channels"]) == {
            "modulation_peak",
            "embedding",
        }  # the side channels, beside the fused ratio
    assert start["alert_channels"] == {ch: c["rule"] for ch, c in card["alerts"]["channels"].items()}
    assert "or the modulation-peak (a new beat in the sound) channel's cusum" in start["alert"]
    assert "; or known faults: cusum of ln(fault odds/" in start["alert"]  # every rule that can raise an alert
    raised = events(records, "alert_raised")
    assert raised, [(w["t"], w["anomaly"], w["evidence"], w["label"]) for w in windows]
    assert all(e["t"] > SPLICE for e in raised)
    assert {e["kind"] for e in raised} <= {"known_fault", "unknown_anomaly"}
    for e in raised:
        if e["kind"] == "known_fault":
            assert e["class"] == "fault_imbalance"
        else:
            assert e["evidence"] >= 1.0
    assert not any(w["alert"] for w in windows if w["t"] <= SPLICE)
    assert records[-1]["alerts"] == len(raised)
    # the console says which kind
    text = run_cli(
        [
            "--model",
            trained_model / "sound_classifier.tflite",
            "--wav",
            long_scene,
            "--fast",
            "--quiet",
            "--threshold-scale",
            scene["scale"],
        ]
    )
    assert "ALERT RAISED (" in text.stdout and "no site calibration" in text.stdout


def _normal_wav(path, seconds: float, seed: int = 11, scale: float = 1.0):
    x = np.concatenate(
        [synth.render("high_speed", seconds / 2, seed), synth.render("low_speed", seconds / 2, seed + 1)]
    )
    sf.write(path, (x * scale).astype(np.float32), config.SAMPLE_RATE, subtype="PCM_16")
    return path


def test_enrollment_writes_a_site_calibration_that_later_runs_apply(trained_model, scene, tmp_path):
    model = model_copy(trained_model, tmp_path / "m")
    wav = _normal_wav(tmp_path / "site.wav", 130.0)
    proc = run_cli(["--model", model, "--enroll", "120", "--wav", wav], timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "site calibration:" in proc.stdout and "alert threshold" in proc.stdout
    doc = json.loads((model.parent / site.SITE_JSON).read_text())
    assert doc["model_sha256"] == config.sha256_file(model) and doc["windows"] == 239
    assert doc["reference_windows"] + doc["held_apart_windows"] < doc["windows"]
    assert (model.parent / site.SITE_NPZ).is_file()
    np.load(model.parent / site.SITE_NPZ, allow_pickle=False)  # no pickle
    card = json.loads((model.parent / "model_card.json").read_text())
    assert doc["rule"]["threshold"] >= card["alerts"]["rule"]["threshold"]
    # the channels' rules at the site: the card's level, or higher, never lower
    assert set(doc["channel_rules"]) == {"modulation_peak", "embedding"}
    for ch in doc["channel_rules"]:
        card_level = card["alerts"]["channels"][ch]["rule"]["threshold"]
        assert doc["channel_rules"][ch]["threshold"] >= card_level
        assert doc["channel_levels"][ch]["card_level"] == card_level
    # the embedding channel, which a room moves, is fitted on the site's audio; the modulation peak is not
    assert site.load(model).scorer.config.channels == ("embedding",)
    # and the site's normal band levels: an alert's "what changed" compares with this room, not training's
    from fanwatch import audio, bands

    profile = bands.load_beside(model, site=True)
    assert profile is not None and profile.source.startswith("site enrollment")
    ((name, normal),) = profile.machines.items()
    assert normal.windows >= 100 and bands.load_beside(model) is None  # the copy has no training profile
    explainer = bands.AlertExplainer(profile, 1000)
    for window in audio.frame_windows(audio.load_audio(wav)):  # the site's own normal running, all of it
        explainer.measure(window)
    assert abs(explainer.explain(name)["level_change_db"]) < 1.0

    # later runs apply it and say so; --no-site ignores it
    run = run_cli(["--model", model, "--wav", scene["wav"], "--fast", "--json", "--threshold-scale", scene["scale"]])
    assert run.returncode == 0, run.stderr
    start = events(parse(run.stdout), "start")[0]
    assert start["site"]["seconds"] == doc["seconds"] and start["alert_rule"] == doc["rule"]
    assert start["alert_channels"] == doc["channel_rules"]
    plain = run_cli(["--model", model, "--wav", scene["wav"], "--fast", "--json", "--no-site"])
    assert events(parse(plain.stdout), "start")[0]["site"] is None

    # a site file made for another model (a retrained model copied over) is refused, and said so loudly, but
    # the loop monitors with the model's own calibration rather than not at all
    doc["model_sha256"] = "0" * 64
    (model.parent / site.SITE_JSON).write_text(json.dumps(doc))
    bad = run_cli(["--model", model, "--wav", scene["wav"], "--fast", "--json"])
    assert bad.returncode == 0, bad.stderr
    records = parse(bad.stdout)
    assert events(records, "start")[0]["site"] is None
    assert "made for another model" in events(records, "site_refused")[0]["reason"]
    assert [r for r in records if r["type"] == "window"]
    console = run_cli(["--model", model, "--wav", scene["wav"], "--fast", "--quiet"])
    assert "SITE CALIBRATION NOT APPLIED" in console.stdout and "made for another model" in console.stdout


def test_enrollment_refuses_short_or_silent_audio_with_one_line(trained_model, tmp_path):
    model = model_copy(trained_model, tmp_path / "m")
    short = _normal_wav(tmp_path / "short.wav", 40.0)
    assert "at least 120 s" in one_error_line(run_cli(["--model", model, "--enroll", "120", "--wav", short]))
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(int(125 * config.SAMPLE_RATE), np.float32), config.SAMPLE_RATE, subtype="PCM_16")
    assert "silent" in one_error_line(run_cli(["--model", model, "--enroll", "120", "--wav", silent], timeout=120))
    assert not (model.parent / site.SITE_JSON).exists()
    assert "--force only applies to --enroll" in one_error_line(run_cli(["--model", model, "--force"]))


def test_the_score_horizon_keeps_its_seconds_at_another_hop(trained_model):
    """The per-window threshold was set for medians over the card's horizon at the card's hop: at --hop 0.25
    the horizon spans the same seconds (twice the windows), and settles for as long."""
    from fanwatch import runtime
    from fanwatch.live.analyzer import Analyzer

    clf = runtime.SoundClassifier(trained_model / "sound_classifier.tflite")
    h = clf.scorer.config.horizon
    assert clf.anomaly_stream().horizon == h == clf.anomaly_stream(clf.card.hop_seconds).horizon
    quarter = clf.anomaly_stream(clf.card.hop_seconds / 2)
    assert quarter.horizon == 2 * h and quarter.settle_windows == h
    assert Analyzer(clf, hop=clf.card.hop_seconds / 2)._anomaly.horizon == 2 * h
