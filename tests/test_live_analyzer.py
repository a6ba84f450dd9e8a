"""The streaming analysis (fanwatch/live/analyzer.py) with a stub classifier: framing, gaps, mixing, hops."""

from __future__ import annotations

import time

import numpy as np
import pytest
from live_common import StubClassifier, offline, scenario

from fanwatch import audio, config, live
from fanwatch.errors import BadAudioError


def test_a_score_at_the_threshold_counts_as_anomalous():
    """score >= threshold, as training and evaluation count it: a window whose ratio is exactly 1 is anomalous
    and raises an n=1 alert; the clear level is inclusive too."""
    d = live.AlertDebouncer(n=1, m=1)
    assert d.update(1.0) == "raised" and d.update(1.0) is None and d.update(0.999) == "cleared"
    d = live.AlertDebouncer(n=1, m=2, clear_ratio=0.8)
    assert [d.update(r) for r in (1.0, 0.8, 0.8, 0.79, 0.79)] == ["raised", None, None, None, "cleared"]
    clf = StubClassifier()
    window = scenario(16000)[: config.WINDOW_SAMPLES]
    ratio = clf.anomaly_ratio(clf.predict(window).anomaly_scores)
    one_window = live.DecisionSettings(
        threshold_scale=ratio,
        alert_after=0.5,
        alert_window=0.5,  # n=1, m=1
        alert_rule="n-of-m",
    )
    [result] = live.Analyzer(clf, channel="mean", decisions=one_window).feed_block(
        live.Block(window[:, None], 16000.0, 1, time.monotonic())
    )
    assert result.anomaly == 1.0 and result.anomalous and result.alert
    assert [e["event"] for e in result.events if e["event"].startswith("alert")] == ["alert_raised"]
    # a model without side channels: the records' channel fields are there, and empty
    record = result.record()
    assert record["anomaly_channels"] == {} and record["evidence_parts"] == {}


def test_windows_restart_at_a_gap_instead_of_splicing():
    """Audio lost between two stretches: each stretch is analysed as its own recording (the resampler and
    the rolling window restart), exactly as training would cut the two stretches, and the restart is counted."""
    clf = StubClassifier()
    rate, block = 48000, 4800
    x = scenario(rate)
    first, second = x[: 25 * block], x[30 * block : 60 * block]  # blocks 25..29 (0.5 s) were lost
    analyzer = live.Analyzer(clf, channel="mean")
    results = []
    for part, flagged in ((first, False), (second, True)):
        for i in range(0, len(part), block):
            gap = flagged and i == 0
            results += analyzer.feed_block(live.Block(part[i : i + block, None], float(rate), 1, time.monotonic(), gap))
    results += analyzer.finish()
    expected_first, _ = offline(clf, audio.resample(first, rate))
    expected_second, _ = offline(clf, audio.resample(second, rate))
    assert len(results) == len(expected_first) + len(expected_second) == 4 + 5
    np.testing.assert_allclose(
        [r.anomaly for r in results], np.concatenate([expected_first, expected_second]), atol=1e-5
    )
    assert analyzer.gap_restarts == 1
    assert [r.gap_restarts for r in results] == [0] * 4 + [1] * 5
    ends = np.array([r.t for r in results])
    # the second stretch's first window starts where the first stretch's 16 kHz samples end
    assert ends[4] - config.WINDOW_SECONDS == pytest.approx(len(first) / 3 / config.SAMPLE_RATE)
    assert ends[3] <= ends[4] - config.WINDOW_SECONDS


def test_a_live_mean_leaves_out_padding_channels_only():
    x = np.random.default_rng(3).uniform(-0.5, 0.5, (480, 2)).astype(np.float32)
    padded = np.concatenate([x, np.zeros((480, 6), np.float32)], axis=1)  # ALSA plug: 2 real + 6 silent
    assert live.live_channels(padded).tolist() == [0, 1]
    assert live.live_channels(x) is None and live.live_channels(np.zeros((480, 4), np.float32)) is None
    analyzer = live.Analyzer(StubClassifier(), channel="mean", skip_silent_channels=True)
    np.testing.assert_array_equal(analyzer._mono(padded), x.mean(axis=1, dtype=np.float32))
    assert analyzer.notices == [
        {"event": "silent_channels", "channels": [2, 3, 4, 5, 6, 7], "averaging": [0, 1], "of": 8}
    ]
    analyzer._mono(padded)
    assert len(analyzer.notices) == 1  # reported once per stream
    files = live.Analyzer(StubClassifier(), channel="mean")  # the loop's default for --wav replays
    np.testing.assert_array_equal(files._mono(padded), padded.mean(axis=1, dtype=np.float32))  # as training


def test_feeding_at_any_rate_and_block_size_gives_the_offline_windows():
    """The public streaming API: samples at the device's rate, in pieces of any size, give the windows that
    training's framing cuts from the whole signal resampled at once; the card's hop is the default."""
    clf = StubClassifier()
    x = scenario(44100)[: 44100 * 4]
    expected, labels = offline(clf, audio.resample(x, 44100))
    for sizes in ((4410,), (1, 999, 30000), (len(x),)):
        analyzer = live.Analyzer(clf)
        assert analyzer.hop == config.HOP_SAMPLES
        results, i, k = [], 0, 0
        while i < len(x):
            size = sizes[k % len(sizes)]
            results += analyzer.feed(x[i : i + size], 44100)
            i, k = i + size, k + 1
        results += analyzer.finish()
        np.testing.assert_allclose([r.anomaly for r in results], expected, atol=1e-5)
        assert [r.label for r in results] == labels
        assert results[0].t == pytest.approx(config.WINDOW_SECONDS)


def test_the_hop_comes_from_the_card_unless_given():
    assert live.Analyzer(StubClassifier(hop_samples=4000)).hop == 4000
    analyzer = live.Analyzer(StubClassifier(), hop=0.25)
    results = analyzer.feed(scenario(16000)[: 16000 * 2], 16000) + analyzer.finish()
    assert len(results) == audio.n_windows(32000, hop=4000)
    assert analyzer.counts.alert_n == 6 and analyzer.counts.alert_m == 8  # the same seconds at the shorter hop


def test_reset_starts_a_new_segment_and_run_file_uses_the_same_path(tmp_path):
    import soundfile as sf

    clf = StubClassifier()
    x = scenario(48000)[: 48000 * 3]
    stereo = np.stack([x, 0.25 * x], axis=1)
    wav = tmp_path / "stereo.wav"
    sf.write(wav, stereo, 48000, subtype="FLOAT")
    results = live.Analyzer(clf).run_file(wav)
    expected, _ = offline(clf, audio.resample(stereo.mean(axis=1, dtype=np.float32), 48000))
    np.testing.assert_allclose([r.anomaly for r in results], expected, atol=1e-5)
    channel_1 = live.Analyzer(clf, channel=1).run_file(wav)
    expected_1, _ = offline(clf, audio.resample(0.25 * x, 48000))
    np.testing.assert_allclose([r.anomaly for r in channel_1], expected_1, atol=1e-5)
    with pytest.raises(BadAudioError, match="channel 2 requested but the file has 2 channel"):
        live.Analyzer(clf, channel=2).run_file(wav)

    analyzer = live.Analyzer(clf)
    first = analyzer.feed(x[: 48000 * 2], 48000)
    analyzer.reset()  # 0.6 s of partial window forgotten: the next window needs 0.975 s of new audio
    after = analyzer.feed(x[:48000], 48000) + analyzer.finish()
    assert len(first) == audio.n_windows(32000) and len(after) == 1
    start = after[0].t - config.WINDOW_SECONDS  # where the new segment began: the samples produced so far
    assert first[-1].t <= start <= 2.0


def test_a_site_that_turned_known_faults_off_gets_no_known_fault_alerts():
    """An enrolled site where the head called normal running a fault (fanwatch.site: known_faults_off) runs
    without the known-fault rule; any other site, and no site, keeps it."""
    from fanwatch import evidence
    from fanwatch.card import ModelCard

    class FaultyHead(StubClassifier):  # "loud" is a fault class of this head
        def __init__(self):
            super().__init__()
            self.card = ModelCard.from_dict({**self.card.raw, "normal_labels": ["quiet"]}, "stub card")

    class Site:  # the part of fanwatch.site.SiteModel the analyzer uses; its ratio is the model's
        rule = evidence.EvidenceRule()

        def __init__(self, off):
            self.known_faults_off = off

        def stream(self, horizon=None):
            return self

        def update(self, embedding, band_levels, ratio):
            return ratio

        def reset(self):
            pass

    assert live.Analyzer(FaultyHead(), channel="mean").decisions.known_evidence is not None
    assert live.Analyzer(FaultyHead(), channel="mean", site_model=Site(False)).decisions.known_evidence is not None
    off = live.Analyzer(FaultyHead(), channel="mean", site_model=Site(True)).decisions
    assert off.known_evidence is None and off.fault_index == []
