"""The alert rule (fanwatch/evidence.py): CUSUM evidence, hysteresis, per-day calibration, alert metrics;
and on-site enrollment (fanwatch/site.py) on synthetic score streams (no model needed)."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest

from fanwatch import evidence, site
from fanwatch.errors import FanwatchError
from fanwatch.live import decisions

HOP = 0.5


def normal_stream(n: int, seed: int, median: float = 0.3, sigma: float = 0.5, rho: float = 0.5) -> np.ndarray:
    """Log-normal ratios with AR(1) correlation in log space (overlapping windows are correlated)."""
    rng = np.random.default_rng(seed)
    z = np.empty(n)
    z[0] = rng.normal()
    e = rng.normal(size=n) * math.sqrt(1 - rho * rho)
    for i in range(1, n):
        z[i] = rho * z[i - 1] + e[i]
    return median * np.exp(sigma * z)


def test_cusum_alerts_after_the_evidence_a_constant_fault_brings_and_clears_with_hysteresis():
    rule = evidence.EvidenceRule(reference=0.5, threshold=3.0, clip=1.0, clear_s=2.0, clear_fraction=0.5)
    alerts = evidence.AlertRule(rule, HOP)
    ratios = [0.1] * 10 + [1.0] * 20 + [0.1] * 20  # a fault at twice the reference adds ln 2 per window
    events = [(i, alerts.update(r)) for i, r in enumerate(ratios)]
    events = [(i, e) for i, e in events if e]
    raised = math.ceil(3.0 / math.log(2.0))  # 5 windows of ln 2 = 3.47 >= 3
    assert events[0] == (10 + raised - 1, "raised")
    # after the fault: drains by 1 per window (clipped ln(0.2)), below 1.5 after 2 windows, 4 quiet windows clear
    assert events[1][1] == "cleared" and events[1][0] > 30 and len(events) == 2
    assert alerts.active is False


def test_one_loud_window_cannot_raise_an_alert_alone():
    rule = evidence.EvidenceRule(reference=0.5, threshold=2.5, clip=1.0)
    assert evidence.count_alerts([[0.1] * 10 + [1e6] + [0.1] * 10], rule, HOP) == 0
    assert evidence.count_alerts([[0.1] * 10 + [1e6] * 3 + [0.1] * 10], rule, HOP) == 1


def test_the_cap_bounds_how_long_a_long_fault_takes_to_clear():
    rule = evidence.EvidenceRule(reference=0.5, threshold=3.0, clip=1.0, cap_s=2.0, clear_s=1.0)
    spans = evidence.alert_spans([5.0] * 2000 + [0.01] * 40, rule, HOP)
    ((_, end),) = spans
    assert end is not None and end - 2000 <= 4 + 2 + 2  # cap 3 + 4 windows: drains in <= 5, clears 2 later


def test_evidence_accrues_per_second_at_any_hop_once_the_rule_knows_its_calibration_hop():
    """A rule calibrated at the 0.5 s hop: at --hop 0.25 (twice the windows per second) each window weighs
    half, so a fault raises the alert after the same seconds of audio; without the calibration hop (an older
    card) the windows count as they come."""
    calibrated = evidence.EvidenceRule(reference=0.5, threshold=3.0, clip=1.0, hop_s=0.5)

    def seconds_to_alert(rule, hop):
        n = int(30 / hop)
        ((i, _),) = [(i, e) for i, e in evidence.alert_events([0.1] * n + [1.0] * n, rule, hop) if e == "raised"]
        return (i + 1) * hop - 30

    at_half = seconds_to_alert(calibrated, 0.5)
    assert at_half == pytest.approx(2.5)  # 5 windows of ln 2
    assert abs(seconds_to_alert(calibrated, 0.25) - at_half) <= 0.25  # one hop of rounding
    assert abs(seconds_to_alert(calibrated, 1.0) - at_half) <= 1.0
    unweighted = evidence.EvidenceRule(reference=0.5, threshold=3.0, clip=1.0)
    assert seconds_to_alert(unweighted, 0.25) == pytest.approx(at_half / 2)
    # train.py's calibration records the hop it calibrated at
    normal = [normal_stream(4000, seed) for seed in range(2)]
    assert evidence.calibrate(normal, hop_s=0.5).rule.hop_s == 0.5


def test_mean_method_uses_its_horizon():
    rule = evidence.EvidenceRule(method="mean", horizon_s=2.0, reference=1.0, clip=1.0, threshold=0.5)
    series = evidence.evidence_series([math.e] * 4 + [1.0] * 4, rule, HOP)
    assert series[3] == pytest.approx(1.0) and series[0] == pytest.approx(0.25) and series[-1] == pytest.approx(0.0)


def test_bad_rule_values_are_one_line_errors():
    with pytest.raises(FanwatchError, match="clip"):
        evidence.EvidenceRule(clip=0).validate()
    with pytest.raises(FanwatchError, match="method"):
        evidence.EvidenceRule.from_dict({"method": "magic"})
    rule = evidence.EvidenceRule.from_dict({"threshold": 4.0, "unknown_future_key": 1})
    assert rule.threshold == 4.0 and rule.method == "cusum"


def test_calibration_for_one_alert_a_day_holds_on_two_days_of_fresh_normal_audio():
    """Five minutes of correlated normal ratios set the threshold; two simulated days must then raise no more
    alerts than the target allows (the bound is cautious, so usually none)."""
    cal = evidence.calibrate([normal_stream(600, seed=1)], hop_s=HOP, false_alerts_per_day=1.0)
    assert cal.method == "Lundberg bound"
    assert cal.observed_false_alerts == 0
    assert cal.upper_false_alerts_per_day == pytest.approx(1.0, rel=1e-3)
    assert 0 < cal.expected_false_alerts_per_day <= 1.0
    assert cal.normal_hours == pytest.approx(600 * HOP / 3600)
    days = 2
    fresh = normal_stream(int(days * 86400 / HOP), seed=2)
    assert evidence.count_alerts([fresh], cal.rule, HOP) <= 3 * days
    # and a threshold at the tenth of it raises many: the calibration is not vacuous
    assert evidence.count_alerts([fresh[:20000]], replace(cal.rule, threshold=cal.rule.threshold / 10), HOP) > 10


def test_calibration_is_cautious_with_little_audio():
    short = evidence.calibrate([normal_stream(120, seed=3)], hop_s=HOP)
    long = evidence.calibrate([normal_stream(2400, seed=3)], hop_s=HOP)
    assert short.rule.threshold > long.rule.threshold
    assert short.rule.reference <= 1.0


def test_too_little_audio_is_not_calibrated_and_says_so():
    cal = evidence.calibrate([normal_stream(20, seed=3)], hop_s=HOP)
    assert cal.method.startswith("not calibrated") and cal.rule.threshold == evidence.DEFAULT_THRESHOLD
    assert cal.to_dict()["expected_false_alerts_per_day"] is None


def test_the_alert_level_is_never_below_the_floor_which_whole_normal_recordings_need():
    """Normal audio made of recordings that each sit at their own level (a real fan's 10 s clips): minutes of
    it calibrate a level that a day of such recordings exceeds many times; the floor holds it back, and the
    calibration says when the floor, not the bound, set the level."""

    def recordings(n_files: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed + 100)
        offsets = np.repeat(np.exp(rng.normal(0.0, 0.4, n_files)), 20)  # one level per 10 s recording
        return normal_stream(20 * n_files, seed) * offsets

    plain = evidence.calibrate([recordings(9, seed=1)], hop_s=HOP)  # 1.5 min of validation audio
    floored = evidence.calibrate([recordings(9, seed=1)], hop_s=HOP, floor=evidence.MIN_ALERT_LEVEL)
    assert plain.rule.threshold < evidence.MIN_ALERT_LEVEL == floored.rule.threshold
    assert "minimum alert level" in floored.method and "minimum" not in plain.method
    day = recordings(8640, seed=2)  # a day of such recordings
    assert evidence.count_alerts([day], plain.rule, HOP) > 3 * evidence.count_alerts([day], floored.rule, HOP)
    short = evidence.calibrate([recordings(1, seed=1)], hop_s=HOP, floor=evidence.MIN_ALERT_LEVEL)
    assert short.method.startswith("not calibrated") and short.rule.threshold >= evidence.MIN_ALERT_LEVEL


def test_calibration_refuses_evidence_that_grows_on_normal_audio():
    with pytest.raises(FanwatchError, match="grows on normal audio"):
        evidence.calibrate([np.full(200, 2.0)], hop_s=HOP, reference=1.0)


def test_stream_metrics_count_false_alerts_delays_and_misses():
    streams = [
        {"seconds": 100.0, "raised": [10.0, 65.0], "faults": [(60.0, 90.0)]},  # one false, one after 5 s
        {"seconds": 100.0, "raised": [], "faults": [(60.0, 90.0)]},  # missed
        {"seconds": 100.0, "raised": [90.5], "faults": [(60.0, 90.0)]},  # just after the end: still fault audio
    ]
    m = evidence.stream_metrics(streams, horizon_s=15.0)
    assert m["false_alerts"] == 1
    assert m["faults_alerted"] == 2 and m["fault_streams"] == 3
    assert m["share_alerted_within_horizon"] == pytest.approx(1 / 3, abs=1e-3)
    assert m["median_time_to_alert_s"] == pytest.approx(30.5)
    assert m["p95_time_to_alert_s"] is None  # a missed fault: never
    assert m["normal_hours"] == pytest.approx(3 * 70 / 3600, abs=1e-4)


# --------------------------------------------------------------------------------------------------
# enrollment


class _Classifier:
    labels = ["high_speed", "low_speed", "fault_bearing"]
    card = {
        "normal_labels": ["high_speed", "low_speed"],
        "anomaly": {"target_false_alarm_rate": 0.01},
        "alerts": {
            "rule": {"reference": 0.5, "threshold": 4.0},
            "calibration": {"target_false_alerts_per_day": 1.0, "expected_false_alerts_per_day": 0.4},
        },
    }


def _site_data(n: int, seed: int = 0, centre_seed: int = 0):
    """The model's outputs on a site's normal running: embeddings and band levels around one sound (the
    centre), noise drawn with ``seed``; the model's ratios and probabilities of normal running."""
    from fanwatch import config, spectral

    centre = np.random.default_rng(centre_seed)
    emb_centre = np.abs(centre.normal(size=config.EMBEDDING_DIM))
    band_centre = centre.normal(-60.0, 8.0, size=spectral.BAND_FEATURES)
    rng = np.random.default_rng([seed, 7])
    emb = np.abs(emb_centre + 0.1 * rng.normal(size=(n, config.EMBEDDING_DIM))).astype(np.float32)
    bands = (band_centre + rng.normal(0.0, 1.0, size=(n, spectral.BAND_FEATURES))).astype(np.float32)
    ratios = normal_stream(n, seed, median=0.6)
    probs = np.tile([0.8, 0.15, 0.05], (n, 1))
    return emb, bands, ratios, probs


def test_enrollment_splits_blocks_without_overlap_and_holds_a_third_apart():
    ref, held = site.split_blocks(240)
    assert len(ref) == 8 and len(held) == 4
    assert max(b[-1] for b in ref) < min(b[0] for b in held)  # the later audio is held apart
    used = np.concatenate(ref + held)
    assert len(set(used.tolist())) == len(used)
    assert all(b[-1] + 1 not in used for b in ref + held if b[-1] < 239)  # boundary windows dropped


def test_enrollment_adapts_to_the_site(tmp_path):
    emb, bands, ratios, probs = _site_data(240)
    model = tmp_path / "m.tflite"
    model.write_bytes(b"model bytes")
    from fanwatch import config

    sha = config.sha256_file(model)
    s = site.enroll(_Classifier(), emb, bands, ratios, probs, rms=0.05, model_sha256=sha)
    assert s.rule.threshold >= 4.0 and s.rule.reference >= 0.5  # never below the card's
    assert s.info["reference_windows"] + s.info["held_apart_windows"] <= 240
    # the site's own normal sound (new windows of it) is pulled down where the model finds it unusual (3) ...
    fresh_emb, fresh_bands, _, _ = _site_data(50, seed=1)
    adjusted = s.combine_file(fresh_emb, fresh_bands, np.full(50, 3.0))
    assert np.median(adjusted) < 0.55 * 3.0 and (adjusted < 3.0).all()  # at least halved
    site_ratio = s.scorer.score_file(site.SITE, fresh_emb, fresh_bands) / s.threshold
    np.testing.assert_allclose(adjusted, np.minimum(3.0, site_ratio))
    # ... and a sound unlike it stays where the model put it, far above the threshold (the site never raises
    # a ratio: site.combine caps it at the model's)
    other_emb, other_bands, _, _ = _site_data(20, seed=2, centre_seed=9)
    assert np.allclose(s.combine_file(other_emb, other_bands, np.full(20, 3.0)), 3.0)
    # the live loop's stream gives what the file path gives (one continuous segment)
    stream = s.stream()
    live = [stream.update(e, b, 3.0) for e, b in zip(fresh_emb, fresh_bands)]
    np.testing.assert_allclose(live, adjusted, rtol=1e-6)
    s.save(model)
    loaded = site.load(model)
    assert loaded.threshold == pytest.approx(s.threshold) and loaded.rule == s.rule
    np.testing.assert_allclose(loaded.combine_file(fresh_emb, fresh_bands, np.full(50, 3.0)), adjusted, rtol=1e-6)
    assert "enrolled" in site.describe(loaded)
    doc = json.loads((tmp_path / site.SITE_JSON).read_text())
    (tmp_path / site.SITE_JSON).write_text(json.dumps({**doc, "format": "fanwatch-site/1"}))
    with pytest.raises(FanwatchError, match="older fanwatch"):
        site.load(model)
    (tmp_path / site.SITE_JSON).write_text(json.dumps(doc))
    model.write_bytes(b"another model")
    with pytest.raises(FanwatchError, match="another model"):
        site.load(model)


def test_enrollment_raises_a_side_channels_level_for_a_room_with_a_modulation_of_its_own(tmp_path):
    """A side channel keeps the model's score at a site; its alert level is raised when its ratios on the
    held-apart audio build evidence near it (a ceiling fan's beat), kept where they do not, never lowered;
    audio that the channel mostly finds anomalous is refused unless forced (a fault only it hears); the site
    file keeps the level and the live loop uses it."""
    from fanwatch import config
    from fanwatch.live.settings import DecisionSettings

    emb, bands, ratios, probs = _site_data(240)
    model = tmp_path / "m.tflite"
    model.write_bytes(b"model bytes")
    clf = _Classifier()
    clf.card = {
        **clf.card,
        "alerts": {**clf.card["alerts"], "channels": {"modulation": {"rule": {"reference": 0.7, "threshold": 6.0}}}},
    }
    quiet = normal_stream(240, 3, median=0.5)  # the channel as on the training recordings
    beat = normal_stream(240, 3, median=0.9)  # a room whose own modulation the channel finds unusual
    imbalance = normal_stream(240, 3, median=1.5)  # mostly above the channel's threshold: a fault
    sha = config.sha256_file(model)

    def enroll(channel, force=False):
        return site.enroll(
            clf,
            emb,
            bands,
            ratios,
            probs,
            rms=0.05,
            model_sha256=sha,
            force=force,
            channel_ratios={"modulation": channel},
        )

    assert enroll(quiet).channel_rules["modulation"].threshold == 6.0
    with pytest.raises(FanwatchError, match=r"modulation \(the beat pattern of the sound\) channel"):
        enroll(imbalance)
    raised = enroll(beat)
    level = raised.channel_rules["modulation"].threshold
    peak = raised.info["channel_levels"]["modulation"]["held_apart_evidence_peak"]
    assert level > 6.0 and level == pytest.approx(site.PEAK_MARGIN * peak)
    assert (
        "MODULATION (THE BEAT PATTERN OF THE SOUND) CHANNEL'S ALERT LEVEL RAISED at this site: 6 ->"
        in site.describe(raised)
    )
    assert "RAISED" not in site.describe(enroll(quiet))
    raised.save(model)
    loaded = site.load(model)
    assert loaded.channel_rules == raised.channel_rules
    rules = decisions.channel_rules_from_card(clf.card, DecisionSettings(), loaded)
    assert rules["modulation"].threshold == level
    assert decisions.channel_rules_from_card(clf.card, DecisionSettings())["modulation"].threshold == 6.0
    doc = json.loads((tmp_path / site.SITE_JSON).read_text())
    (tmp_path / site.SITE_JSON).write_text(json.dumps({**doc, "channel_rules": ["not", "rules"]}))
    with pytest.raises(FanwatchError, match="channel_rules"):
        site.load(model)


def test_enrollment_refuses_short_silent_or_anomalous_audio_unless_forced():
    emb, bands, ratios, probs = _site_data(240)
    c = _Classifier()
    with pytest.raises(FanwatchError, match="at least 120 s"):
        site.enroll(c, emb[:200], bands[:200], ratios[:200], probs[:200], rms=0.05, model_sha256="x")
    with pytest.raises(FanwatchError, match="silent"):
        site.enroll(c, emb, bands, ratios, probs, rms=0.0, model_sha256="x")
    with pytest.raises(FanwatchError, match="already sounds anomalous"):
        site.enroll(c, emb, bands, ratios * 5, probs, rms=0.05, model_sha256="x")
    fault = np.tile([0.05, 0.05, 0.9], (240, 1))
    with pytest.raises(FanwatchError, match="fault_bearing"):
        site.enroll(c, emb, bands, ratios, fault, rms=0.05, model_sha256="x")
    assert site.enroll(c, emb, bands, ratios * 5, fault, rms=0.0, model_sha256="x", force=True).info["forced"]
    assert site.enroll(c, emb[:200], bands[:200], ratios[:200], probs[:200], rms=0.05, model_sha256="x", force=True)
    with pytest.raises(FanwatchError, match="at least 20 s"):
        site.enroll(c, emb[:30], bands[:30], ratios[:30], probs[:30], rms=0.05, model_sha256="x", force=True)
    # a model without band levels is enrolled on its embeddings alone
    assert site.enroll(c, emb, None, ratios, probs, rms=0.05, model_sha256="x").scorer.config.components == (
        "embedding",
    )


def test_no_site_file_is_none_and_a_broken_one_is_one_line(tmp_path):
    model = tmp_path / "m.tflite"
    model.write_bytes(b"x")
    assert site.load(model) is None
    (tmp_path / site.SITE_JSON).write_text("{not json")
    with pytest.raises(FanwatchError, match="unreadable site calibration"):
        site.load(model)


# --------------------------------------------------------------------------------------------------
# the live decisions: both alert kinds in one event stream


def test_decisions_raise_known_fault_and_unknown_anomaly_alerts_each_with_its_kind():
    labels = ["high_speed", "fault_bearing", "fault_rubbing"]
    rule = evidence.EvidenceRule(reference=0.5, threshold=3.0, clear_s=1.0)
    known = evidence.EvidenceRule(reference=1.0, clip=2.0, threshold=6.0, clear_s=1.0)
    d = decisions.Decisions(rule, HOP, labels=labels, fault_labels=["fault_bearing", "fault_rubbing"], known_rule=known)
    normal, bearing = [0.9, 0.06, 0.04], [0.05, 0.85, 0.10]
    seq = (
        [(normal, 0.2)] * 10
        + [(bearing, 0.2)] * 10
        + [(normal, 0.2)] * 12
        + [(normal, 3.0)] * 10
        + [(normal, 0.1)] * 12
    )
    events = []
    for i, (p, ratio) in enumerate(seq):
        label = labels[int(np.argmax(p))]
        out = d.update(i * HOP, label, max(p), ratio, p)
        events += [e for e in out.events if e["event"].startswith("alert")]
    kinds = [(e["event"], e["kind"], e.get("class")) for e in events]
    assert kinds == [
        ("alert_raised", "known_fault", "fault_bearing"),
        ("alert_cleared", "known_fault", "fault_bearing"),
        ("alert_raised", "unknown_anomaly", None),
        ("alert_cleared", "unknown_anomaly", None),
    ]
    # the head's fault odds 0.9 / 0.1 = 9 add ln 9 = 2.2, clipped at 2: three windows reach 6
    assert events[0]["t"] == pytest.approx((10 + 2) * HOP)
    assert all(k in events[2] for k in ("anomaly", "exceeding", "of", "evidence", "label", "state"))
    assert d.active is False


def test_a_side_channel_raises_the_one_unknown_anomaly_alert_and_says_which_evidence_did():
    """The score's side channel (the modulation spectrum) has its own evidence: it raises the unknown-anomaly
    alert while the fused score stays low; with both high there is one alert, cleared when both are quiet."""
    rule = evidence.EvidenceRule(reference=0.5, threshold=3.0, clear_s=1.0)
    side = evidence.EvidenceRule(reference=0.6, threshold=4.0, clear_s=1.0)
    d = decisions.Decisions(rule, HOP, labels=["on"], channel_rules={"modulation": side})
    seq = [(0.2, 0.2)] * 10 + [(0.2, 3.0)] * 10 + [(0.2, 0.1)] * 15 + [(3.0, 3.0)] * 10 + [(0.1, 0.1)] * 15
    events, levels = [], []
    for i, (fused, channel) in enumerate(seq):
        out = d.update(i * HOP, "on", 0.9, fused, [1.0], channels={"modulation": channel})
        events += [e for e in out.events if e["event"].startswith("alert")]
        levels.append(out.evidence)
        if i == 12:  # the channel's total rising, the score's at zero: the window's evidence is the channel's
            assert out.evidence_parts["score"] == 0.0 < out.evidence_parts["modulation"] == out.evidence
    assert [(e["event"], e["kind"], e.get("evidence_from")) for e in events] == [
        ("alert_raised", "unknown_anomaly", "modulation"),
        ("alert_cleared", "unknown_anomaly", None),
        ("alert_raised", "unknown_anomaly", "score"),  # both reach their levels: one alert
        ("alert_cleared", "unknown_anomaly", None),
    ]
    # ln(3 / 0.6) = 1.6 clipped at 1 a window: the channel's evidence reaches 4 in the fourth window
    assert events[0]["t"] == pytest.approx((10 + 3) * HOP)
    assert max(levels[10:20]) >= 1.0 and d.active is False
    # windows without the channel's ratio carry no information for it: an active channel neither clears nor
    # raises again on them, and clears once its ratios are back and low
    d = decisions.Decisions(rule, HOP, labels=["on"], channel_rules={"modulation": side})
    raised = [d.update(i * HOP, "on", 0.9, 0.2, [1.0], channels={"modulation": 3.0}).events for i in range(6)]
    assert [e["event"] for ev in raised for e in ev if e["event"] != "state"] == ["alert_raised"]
    assert all(d.update(i * HOP, "on", 0.9, 0.2, [1.0]).events == [] for i in range(6, 30)) and d.active
    cleared = [d.update(i * HOP, "on", 0.9, 0.2, [1.0], channels={"modulation": 0.1}).events for i in range(30, 50)]
    assert [e["event"] for ev in cleared for e in ev] == ["alert_cleared"] and not d.active


def test_n_of_m_stays_available_and_models_without_fault_classes_never_raise_known_faults():
    d = decisions.Decisions(evidence.EvidenceRule(), HOP, labels=["a", "b"], n_of_m=(3, 4, 0, 1.0))
    out = [d.update(i * HOP, "a", 0.9, r, [0.9, 0.1]) for i, r in enumerate([1.2, 1.3, 0.5, 1.1])]
    assert [e["event"] for o in out for e in o.events if e["event"].startswith("alert")] == ["alert_raised"]
    assert out[-1].evidence is None and out[-1].kinds == ["unknown_anomaly"]
    assert (
        decisions.anomalous_labels(
            {"labels": ["id_00", "id_02"], "head_target": "machine", "normal_labels": ["id_00", "id_02"]}
        )
        == []
    )
    assert decisions.anomalous_labels({"labels": ["on", "fault_x"], "normal_labels": ["on"]}) == ["fault_x"]


def test_site_can_explain_a_sound_away_but_never_accuse_it():
    """The enrolled ratio (fanwatch.site.combine): the smaller of the model's and the site's ratios, so a site
    calibration from two minutes of audio explains this room's normal sound away and cannot add false alerts."""
    model = np.array([0.5, 2.0, 2.0, 1.0])
    site_ratio = np.array([4.0, 0.5, 8.0, 1.0])
    combined = site.combine(model, site_ratio)
    assert np.allclose(combined, [0.5, 0.5, 2.0, 1.0])
    assert (combined <= model).all()
    assert float(site.combine(np.float64(3.0), 1.0 / 3.0)) == pytest.approx(1.0 / 3.0)


def test_enrollment_turns_known_fault_alerts_off_where_the_head_calls_normal_running_a_fault(tmp_path):
    """A head trained elsewhere may call a room's normal running a fault: when the card's known-fault rule,
    replayed over the held-apart normal audio, reaches its alert level, the site turns known-fault alerts off
    (saved in the site file, said in the console line, applied by the live loop)."""
    from fanwatch import config

    class Classifier(_Classifier):
        card = {
            **_Classifier.card,
            "labels": _Classifier.labels,
            "alerts": {
                **_Classifier.card["alerts"],
                "known_fault": {"rule": {"reference": 1.0, "clip": 2.0, "threshold": 6.0}},
            },
        }

    emb, bands, ratios, probs = _site_data(240)
    model = tmp_path / "m.tflite"
    model.write_bytes(b"model bytes")
    sha = config.sha256_file(model)
    usual = site.enroll(Classifier(), emb, bands, ratios, probs, rms=0.05, model_sha256=sha)
    assert not usual.known_faults_off and "KNOWN-FAULT ALERTS OFF" not in site.describe(usual)
    odd = np.tile([0.3, 0.1, 0.6], (240, 1))  # fault odds 1.5 on every window of normal running
    s = site.enroll(Classifier(), emb, bands, ratios, odd, rms=0.05, model_sha256=sha, force=True)
    assert s.known_faults_off and s.info["known_fault"]["held_apart_evidence_peak"] >= 6.0
    assert "KNOWN-FAULT ALERTS OFF" in site.describe(s)
    s.save(model)
    assert site.load(model).known_faults_off
    usual.save(model)
    assert not site.load(model).known_faults_off


def test_enrollment_fits_a_channel_the_room_moves_and_leaves_the_modulation_channel_to_the_model(tmp_path):
    """An embedding side channel moves with the room as the fused score does: the site fits it too and its
    ratio becomes the smaller of the model's and the site's (enrollment is not refused because the model finds
    the site's embedding odd), while the modulation-peak channel keeps the model's ratios; the live loop's
    stream gives what the file path gives, and the site file keeps the channel's threshold."""
    from fanwatch import config
    from fanwatch.scorer import ScoreConfig

    emb, bands, ratios, probs = _site_data(240)
    model = tmp_path / "m.tflite"
    model.write_bytes(b"model bytes")
    clf = _Classifier()
    rule = {"rule": {"reference": 0.5, "threshold": 6.0}}
    clf.card = {**clf.card, "alerts": {**clf.card["alerts"], "channels": {"modulation_peak": rule, "embedding": rule}}}
    cfg = ScoreConfig(channels=("modulation_peak", "embedding"))
    odd = np.full(240, 3.0)  # the model finds this room's embedding far from its training recordings
    quiet = normal_stream(240, 3, median=0.4)
    sha = config.sha256_file(model)

    def enroll(peak_ratios, embedding_ratios):
        channel_ratios = {"modulation_peak": peak_ratios, "embedding": embedding_ratios}
        return site.enroll(
            clf, emb, bands, ratios, probs, rms=0.05, model_sha256=sha, score_config=cfg, channel_ratios=channel_ratios
        )

    s = enroll(quiet, odd)
    assert s.scorer.config.channels == ("embedding",)
    # the refitted channel's rule: its reference from the held-apart audio's combined ratios (as the fused
    # score's), so this site's normal running does not build evidence towards a raised level
    emb_rule = s.channel_rules["embedding"]
    assert emb_rule.reference >= 0.5 and emb_rule.threshold == 6.0, s.info["channel_levels"]
    assert "EMBEDDING" not in site.describe(s)
    # not refused for a channel the site refits, but said: the model found every enrollment window anomalous
    assert s.info["channel_levels"]["embedding"]["model_windows_above_threshold"] == 1.0
    assert "embedding (what the sound is like) channel found 100% of the enrollment windows" in site.describe(s)
    long_emb, long_bands, _, _ = _site_data(600, seed=4)
    _, long_channels = s.combine_file_channels(
        long_emb, long_bands, np.full(600, 3.0), {"embedding": np.full(600, 3.0)}
    )
    assert evidence.count_alerts([long_channels["embedding"]], emb_rule, HOP) == 0
    fresh_emb, fresh_bands, _, _ = _site_data(50, seed=1)
    model_channels = {"embedding": np.full(50, 3.0), "modulation_peak": np.full(50, 0.4)}
    fused, channels = s.combine_file_channels(fresh_emb, fresh_bands, np.full(50, 3.0), model_channels)
    assert np.median(channels["embedding"]) < 0.55 * 3.0 and (channels["embedding"] <= 3.0).all()
    np.testing.assert_array_equal(channels["modulation_peak"], 0.4)  # the model's, untouched
    other_emb, other_bands, _, _ = _site_data(20, seed=2, centre_seed=9)
    other = s.combine_file_channels(other_emb, other_bands, np.full(20, 3.0), {"embedding": np.full(20, 3.0)})[1]
    np.testing.assert_allclose(other["embedding"], 3.0)  # a sound unlike this site's stays where the model put it
    stream = s.stream()
    live = [
        stream.update_channels(e, b, 3.0, {"embedding": 3.0, "modulation_peak": 0.4})
        for e, b in zip(fresh_emb, fresh_bands)
    ]
    np.testing.assert_allclose([f for f, _ in live], fused, rtol=1e-6)
    np.testing.assert_allclose([c["embedding"] for _, c in live], channels["embedding"], rtol=1e-6)
    s.save(model)
    loaded = site.load(model)
    assert loaded.scorer.channel_thresholds == s.scorer.channel_thresholds
    # the modulation-peak channel still refuses audio it mostly finds anomalous
    with pytest.raises(FanwatchError, match="modulation-peak"):
        enroll(odd, quiet)
