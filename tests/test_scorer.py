"""The deployed anomaly score (fanwatch.scorer) and the baselines (fanwatch.baselines), on seeded data."""

from __future__ import annotations

import numpy as np
import pytest

from fanwatch import baselines, config, scorer, spectral
from fanwatch.errors import FanwatchError

D = config.EMBEDDING_DIM


def _machine(rng, centre_emb, profile, n_files=6, n_windows=12, spread=0.05):
    """Normal recordings of one machine: embeddings near a direction, band levels near a profile."""
    files = []
    for _ in range(n_files):
        e = np.abs(centre_emb + spread * rng.standard_normal((n_windows, D))).astype(np.float32)
        b = (profile + spread * rng.standard_normal((n_windows, spectral.BAND_FEATURES))).astype(np.float32)
        files.append((e, b))
    return files


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(0)
    centres = {name: np.abs(rng.standard_normal(D)) for name in ("a", "b")}
    profiles = {name: rng.normal(-8.0, 2.0, spectral.BAND_FEATURES) for name in ("a", "b")}
    train = {m: _machine(rng, centres[m], profiles[m]) for m in centres}
    val = {m: _machine(rng, centres[m], profiles[m], n_files=3) for m in centres}
    sc = scorer.Scorer.fit(train).set_thresholds(val)
    return sc, rng, centres, profiles


def test_stream_gives_what_score_file_gives_and_reset_restarts_the_horizon(fitted):
    sc, rng, centres, profiles = fitted
    e, b = _machine(rng, centres["a"], profiles["a"], n_files=1, n_windows=20)[0]
    offline = sc.score_file("a", e, b)
    stream = sc.stream("a")
    online = np.array([stream.update(e[i], b[i]) for i in range(len(e))])
    np.testing.assert_allclose(online, offline, rtol=1e-9)
    stream.reset()
    np.testing.assert_allclose(
        [stream.update(e[i], b[i]) for i in range(5)], sc.score_file("a", e[:5], b[:5]), rtol=1e-9
    )
    # the horizon really averages: a one-window horizon gives different scores
    short = scorer.Scorer(scorer.ScoreConfig(horizon=1), sc.references, sc.thresholds)
    assert not np.allclose(short.score_file("a", e, b), offline)


@pytest.mark.parametrize("channel", ["modulation", "modulation_peak"])
def test_a_side_channel_has_its_own_threshold_streams_like_files_and_is_saved(fitted, tmp_path, channel):
    """A modulation side channel (either distance): scored on its own beside the fused score (which it does not change),
    with a threshold per machine from the validation recordings; a modulation that the fused score barely
    sees is far above the channel's threshold; the stream gives what the file gives; save/load keeps it."""
    sc, rng, centres, profiles = fitted
    train = {m: _machine(np.random.default_rng(5), centres[m], profiles[m]) for m in centres}
    val = {m: _machine(np.random.default_rng(6), centres[m], profiles[m], n_files=3) for m in centres}
    cfg = scorer.ScoreConfig(channels=(channel,))
    side = scorer.Scorer.fit(train, cfg).set_thresholds(val)
    plain = scorer.Scorer.fit(train).set_thresholds(val)
    assert side.channel_thresholds[channel].keys() == {"a", "b", scorer.POOLED}
    e, b = _machine(rng, centres["a"], profiles["a"], n_files=1, n_windows=20)[0]
    fused, channels = side.score_file_channels("a", e, b)
    np.testing.assert_allclose(fused, plain.score_file("a", e, b), rtol=1e-12)  # the fused score is untouched
    shaft = b.copy()
    shaft[:, spectral.MODULATION_SLICE.start + 16] += 3.0  # a peak at one modulation frequency (nats)
    modulated, by_channel = side.score_file_channels("a", e, shaft)
    assert (channels[channel][-10:] / side.channel_threshold("a", channel)).max() < 1.0
    assert (by_channel[channel][-10:] / side.channel_threshold("a", channel)).min() > 2.0
    assert (modulated[-10:] / side.threshold("a")).max() < 1.0  # the fused score (embedding, shape) misses it
    stream = side.stream("a")
    online = [stream.update_channels(e[i], shaft[i]) for i in range(len(e))]
    np.testing.assert_allclose([f for f, _ in online], modulated, rtol=1e-9)
    np.testing.assert_allclose([c[channel] for _, c in online], by_channel[channel], rtol=1e-9)
    loaded = scorer.Scorer.load(side.save(tmp_path / "side.npz"))
    assert loaded.config.channels == (channel,) and loaded.channel_thresholds == side.channel_thresholds
    np.testing.assert_allclose(loaded.score_file_channels("a", e, shaft)[1][channel], by_channel[channel])


def test_side_channel_names_are_checked():
    with pytest.raises(FanwatchError, match="side channels"):
        scorer.ScoreConfig(channels=("loudness",))
    with pytest.raises(FanwatchError, match="side channels"):
        scorer.ScoreConfig(channels=("shape", "shape"))
    from fanwatch.training import TrainSettings

    both = TrainSettings(data="d", out="o", score_components="embedding:2,modulation:1", score_channels="modulation")
    with pytest.raises(FanwatchError, match="both weighted"):
        both.score_config()
    assert TrainSettings(data="d", out="o", score_components="embedding:1", score_channels="shape").score_config()
    assert scorer.parse_channels("none") == () and scorer.parse_channels("modulation") == ("modulation",)
    # the embedding may be weighted and a channel (the default): the channel watches it at full strength
    default = TrainSettings(data="d", out="o").score_config()
    assert default.channels == ("modulation_peak", "embedding") and "embedding" in default.weights


def test_an_embedding_channel_sees_at_full_strength_what_the_fused_score_dilutes(fitted):
    """An embedding that moves while the spectrum does not (the real fan's fault): the fused score weighs it by
    2/3 beside a normal shape, the embedding channel by itself, against its own threshold; the stream gives what
    the file gives."""
    sc, rng, centres, profiles = fitted
    train = {m: _machine(np.random.default_rng(5), centres[m], profiles[m]) for m in centres}
    val = {m: _machine(np.random.default_rng(6), centres[m], profiles[m], n_files=3) for m in centres}
    side = scorer.Scorer.fit(train, scorer.ScoreConfig(channels=("embedding",))).set_thresholds(val)
    e, b = _machine(rng, centres["a"], profiles["a"], n_files=1, n_windows=20)[0]
    fused, channels = side.score_file_channels("a", e, b)
    assert (channels["embedding"][-10:] / side.channel_threshold("a", "embedding")).max() < 1.0
    moved = (0.85 * e + 0.15 * np.abs(rng.standard_normal(e.shape))).astype(np.float32)
    fused_moved, by_channel = side.score_file_channels("a", moved, b)
    channel_ratio = by_channel["embedding"][-10:] / side.channel_threshold("a", "embedding")
    fused_ratio = fused_moved[-10:] / side.threshold("a")
    assert channel_ratio.min() > 1.0 and np.median(channel_ratio) > 1.2 * np.median(fused_ratio)
    stream = side.stream("a")
    online = [stream.update_channels(moved[i], b[i])[1]["embedding"] for i in range(len(e))]
    np.testing.assert_allclose(online, by_channel["embedding"], rtol=1e-9)


def test_modulation_peak_counts_a_new_peak_in_full_and_less_modulation_not_at_all(fitted):
    """modulation_peak is one-sided and per frequency: a rise at one modulation frequency scores as high as
    the Euclidean modulation distance or higher; a dip of the same size (less modulation than normal, e.g. more
    masking noise) leaves it at its normal level while the Euclidean distance rises."""
    sc, rng, centres, profiles = fitted
    train = {m: _machine(np.random.default_rng(5), centres[m], profiles[m]) for m in centres}
    val = {m: _machine(np.random.default_rng(6), centres[m], profiles[m], n_files=3) for m in centres}
    both = scorer.Scorer.fit(train, scorer.ScoreConfig(channels=("modulation", "modulation_peak"))).set_thresholds(val)
    e, b = _machine(rng, centres["a"], profiles["a"], n_files=1, n_windows=20)[0]

    def ratios(bands):
        ch = both.score_file_channels("a", e, bands)[1]
        return {c: float(np.median(v[-10:])) / both.channel_threshold("a", c) for c, v in ch.items()}

    normal = ratios(b)
    dip = b.copy()
    # the least modulated frequency, so that the shape's median (subtracted from every frequency) stays put
    low = spectral.MODULATION_SLICE.start + int(np.argmin(profiles["a"][spectral.MODULATION_SLICE]))
    dip[:, low] -= 3.0
    dipped = ratios(dip)
    assert dipped["modulation"] > 2.0 and dipped["modulation_peak"] < 1.5 * normal["modulation_peak"] < 1.0
    peak = b.copy()
    peak[:, spectral.MODULATION_SLICE.start + 16] += 1.0
    peaked = ratios(peak)
    assert peaked["modulation_peak"] > 1.0 and peaked["modulation_peak"] > peaked["modulation"]


def _brute_peak(bank, queries, k, exclude=None):
    """_knn_peak the slow way: per query, the allowed rows by distance, the k nearest (fewer if fewer allowed)."""
    out = []
    for i, q in enumerate(queries):
        allowed = [j for j in range(len(bank)) if exclude is None or not exclude[i, j]]
        nearest = sorted(allowed, key=lambda j: float(np.sum((q - bank[j]) ** 2)))[:k]
        out.append(np.mean([max(0.0, float(np.max(q - bank[j]))) for j in nearest]))
    return np.array(out)


def test_modulation_peak_distance_and_its_scale_match_a_brute_force_computation():
    """The neighbours are the Euclidean nearest allowed rows (a wrong choice or an ignored exclusion changes
    the result: the rows differ in where they rise), fewer than k allowed rows average over those only, and the
    component's scale is the 95th percentile of the leave-one-file-out distances."""
    rng = np.random.default_rng(11)
    bank = rng.standard_normal((30, 6)) * rng.uniform(0.2, 2.0, 6)
    queries = rng.standard_normal((9, 6))
    np.testing.assert_allclose(scorer._knn_peak(bank, queries, 5), _brute_peak(bank, queries, 5), rtol=1e-12)
    exclude = rng.random((9, 30)) < 0.5
    exclude[0, :3], exclude[0, 3:] = False, True  # the first query may use 3 rows only: their mean, no other row
    got = scorer._knn_peak(bank, queries, 5, exclude)
    np.testing.assert_allclose(got, _brute_peak(bank, queries, 5, exclude), rtol=1e-12)
    assert not np.allclose(got, scorer._knn_peak(bank, queries, 5))
    # the Euclidean and cosine distances average over the allowed neighbours too (no inf from an excluded row)
    eu = scorer._knn_euclid(bank, queries, 5, exclude)
    assert np.isfinite(eu).all()
    np.testing.assert_allclose(eu[0], np.linalg.norm(queries[0] - bank[:3], axis=1).mean(), rtol=1e-12)
    cos = scorer._knn_cosine(scorer._unit(bank), queries, 5, exclude)
    assert np.isfinite(cos).all()
    np.testing.assert_allclose(cos[0], 1.0 - (scorer._unit(bank[:3]) @ scorer._unit(queries[0])).mean(), rtol=1e-12)

    # the scale: each file's rows against the other files' rows, z-scored with the floored std
    files = [(np.abs(rng.standard_normal((10, D))), rng.standard_normal((10, spectral.BAND_FEATURES))) for _ in "abcd"]
    cfg = scorer.ScoreConfig(weights={"embedding": 1.0}, channels=("modulation_peak",), horizon=1)
    ref = scorer.Scorer.fit({"a": files}, cfg).references["a"]
    rows = np.concatenate([scorer.features("modulation_peak", b) for _, b in files])
    ids = np.repeat(np.arange(4), 10)
    z = (rows - rows.mean(0)) / np.maximum(rows.std(0), scorer.STD_FLOOR["modulation_peak"])
    lofo = _brute_peak(z, z, cfg.k, ids[:, None] == ids[None, :])
    expected = np.quantile(lofo, scorer.SCALE_QUANTILE)
    assert ref.scales["modulation_peak"] == pytest.approx(expected, rel=1e-6)  # the rows are kept in float32


def test_normal_scores_below_threshold_and_a_band_rise_above(fitted):
    sc, rng, centres, profiles = fitted
    e, b = _machine(rng, centres["a"], profiles["a"], n_files=1, n_windows=16)[0]
    normal = sc.score_file("a", e, b) / sc.threshold("a")
    worn = b.copy()
    worn[:, spectral.LINEAR_SLICE.start + 20 : spectral.LINEAR_SLICE.start + 26] += np.log(10**0.4)  # +4 dB, 6 bands
    faulty = sc.score_file("a", e, worn) / sc.threshold("a")
    assert normal[-8:].max() < 1.0 < faulty[-8:].min()
    # the embedding-only score cannot see it: the embeddings did not change
    emb_only = scorer.Scorer.fit(
        {"a": _machine(np.random.default_rng(1), centres["a"], profiles["a"])},
        scorer.ScoreConfig(weights={"embedding": 1.0}),
    )
    np.testing.assert_allclose(emb_only.score_file("a", e, b), emb_only.score_file("a", e, worn))


def test_gain_change_alone_does_not_move_the_shape():
    rng = np.random.default_rng(3)
    b = rng.normal(-8, 2, (5, spectral.BAND_FEATURES))
    louder = b.copy()
    louder[:, spectral.LINEAR_SLICE] += np.log(10**0.3)  # +3 dB in every band
    np.testing.assert_allclose(scorer.features("shape", b), scorer.features("shape", louder))


def test_save_and_load_give_the_same_scores(fitted, tmp_path):
    sc, rng, centres, profiles = fitted
    path = sc.save(tmp_path / "s.npz")
    back = scorer.Scorer.load(path)
    e, b = _machine(rng, centres["b"], profiles["b"], n_files=1)[0]
    for name in ("a", "b", None, "never-seen"):
        np.testing.assert_allclose(back.score_file(name, e, b), sc.score_file(name, e, b), rtol=1e-12)
    assert back.thresholds == sc.thresholds and back.machines == ["a", "b"]
    (tmp_path / "bad.npz").write_bytes(b"not a scorer")
    with pytest.raises(FanwatchError, match="bad.npz"):
        scorer.Scorer.load(tmp_path / "bad.npz")


def test_unknown_machine_uses_the_pooled_reference_and_its_threshold(fitted):
    sc, rng, centres, profiles = fitted
    assert sc.resolve("c") == scorer.POOLED and sc.resolve(None) == scorer.POOLED and sc.resolve("a") == "a"
    assert scorer.POOLED in sc.thresholds and sc.stream("c").threshold == sc.thresholds[scorer.POOLED]
    # pooled references are all machines' normal windows: a known machine's normal sound is normal there
    e, b = _machine(rng, centres["a"], profiles["a"], n_files=1)[0]
    assert (sc.score_file("c", e, b)[-4:] < sc.threshold("c")).all()


def test_unknown_machine_fault_raises_its_pooled_score(fitted):
    """An unknown machine is compared with one fixed reference (the pooled one) and one threshold, not window
    by window with whichever known machine forgives most: its fault raises the score it gets."""
    sc, rng, centres, profiles = fitted
    e, b = _machine(rng, 0.5 * (centres["a"] + centres["b"]), profiles["a"], n_files=1, n_windows=16)[0]
    faulty = b.copy()
    faulty[:, spectral.LINEAR_SLICE.start + 10 : spectral.LINEAR_SLICE.start + 16] += np.log(10**0.5)  # +5 dB
    normal_ratio = sc.score_file("unknown", e, b)[-8:] / sc.threshold("unknown")
    faulty_ratio = sc.score_file("unknown", e, faulty)[-8:] / sc.threshold("unknown")
    assert faulty_ratio.min() > normal_ratio.max() and faulty_ratio.min() >= 1.0
    # and the pooled score is not the smallest of the per-machine ratios
    old_rule = np.minimum(
        sc.score_file("a", e, faulty) / sc.threshold("a"), sc.score_file("b", e, faulty) / sc.threshold("b")
    )[-8:]
    assert not np.allclose(old_rule, faulty_ratio)


def test_enrollment_adds_references_and_resets_the_threshold(fitted):
    sc, rng, centres, profiles = fitted
    site_profile = profiles["a"] + rng.normal(0, 0.5, spectral.BAND_FEATURES)  # the same fan in another room
    site = _machine(rng, centres["a"], site_profile, n_files=4)
    held = _machine(rng, centres["a"], site_profile, n_files=2)
    before = np.concatenate([sc.score_file("a", e, b) for e, b in held])
    enrolled = sc.with_references("a", site)
    assert enrolled is not sc and enrolled.references["a"].files == sc.references["a"].files + 4
    assert "re-set" in enrolled.threshold_info["a"]["note"]
    after = np.concatenate([enrolled.score_file("a", e, b) for e, b in held])
    assert after.mean() < before.mean()
    enrolled = enrolled.with_threshold("a", held)
    assert enrolled.threshold_info["a"]["windows"] == sum(len(e) for e, _ in held)
    assert (np.concatenate([enrolled.score_file("a", e, b) for e, b in held]) <= enrolled.threshold("a")).mean() > 0.9
    # a new machine name creates it; its threshold is the pooled one until set
    new = sc.with_references("site-fan", site)
    assert "site-fan" in new.machines and new.threshold("site-fan") == sc.threshold(scorer.POOLED)
    # the original is unchanged
    assert sc.references["a"].files == 6 and "site-fan" not in sc.machines
    with pytest.raises(FanwatchError, match="no window"):
        sc.with_references("a", [])


def test_score_config_rejects_bad_components():
    assert scorer.parse_components("embedding:2,shape:1") == {"embedding": 2.0, "shape": 1.0}
    for bad in ("loudness:1", "embedding:-1", "embedding:x"):
        with pytest.raises(FanwatchError):
            scorer.parse_components(bad)
    with pytest.raises(FanwatchError):
        scorer.ScoreConfig(horizon=0)
    with pytest.raises(FanwatchError, match="side channel"):  # 0 on most normal windows: a geometric mean -> 0
        scorer.parse_components("embedding:2,modulation_peak:1")
    assert scorer.parse_components("modulation_peak") == {"modulation_peak": 1.0}  # alone it is a score


def test_gamma_threshold_is_numpy_only_and_close_to_the_quantile():
    rng = np.random.default_rng(2)
    s = rng.gamma(4.0, 0.25, 5000) + 0.3
    value, rule = scorer._gamma_quantile(s, 0.99)
    assert rule.startswith("gamma") and abs(value - np.quantile(s, 0.99)) < 0.05 * np.quantile(s, 0.99)
    assert scorer._gamma_quantile(s[:5], 0.99)[1] == "empirical quantile"
    assert abs(scorer._normal_quantile(0.99) - 2.326347874) < 1e-6


def test_band_level_reference_matches_hand_computation():
    rng = np.random.default_rng(4)
    window = rng.standard_normal(config.WINDOW_SAMPLES) * 0.1
    mel = np.abs(rng.standard_normal((config.FFT_LENGTH // 2 + 1, config.MEL_BANDS)))
    ref = spectral.reference(window, mel)[0]
    assert ref.shape == (spectral.BAND_FEATURES,)
    assert abs(ref[spectral.LEVEL_INDEX] - 10 * np.log10(np.mean(window**2))) < 1e-6
    frame = window[: config.STFT_WINDOW] * (
        0.5 - 0.5 * np.cos(2 * np.pi * np.arange(config.STFT_WINDOW) / config.STFT_WINDOW)
    )
    power = np.abs(np.fft.rfft(frame, config.FFT_LENGTH)) ** 2
    first_band = np.log(power[1:5].sum() + spectral.POWER_FLOOR)
    # the band feature is a mean over the 96 frames; the first frame's value is within the spread
    assert abs(first_band - ref[spectral.LINEAR_SLICE.start]) < 3.0


def test_baselines_are_the_documented_features():
    sr = config.SAMPLE_RATE
    t = np.arange(sr * 2) / sr
    tone = 0.1 * np.sin(2 * np.pi * 1000 * t)
    assert abs(baselines.loudness_db(tone)[0] - 10 * np.log10(0.005)) < 0.01
    spec = baselines.ltas(tone)
    # 8 bins (125 Hz) per band over bins 1..512: 1000 Hz is bin 62.5 -> band 7
    assert spec.shape == (64,) and int(np.argmax(spec)) == (1000 // 16 - 1) // 8
    normal = np.random.default_rng(0).normal(0, 1, (20, 3))
    model = baselines.KnnBaseline.fit(normal)
    near, far = model.score(np.zeros((1, 3))), model.score(np.full((1, 3), 5.0))
    assert near[0] < far[0]
    # k nearest, mean Euclidean distance on z-scored features
    z = (normal - normal.mean(0)) / normal.std(0)
    expected = np.sort(np.linalg.norm(z - (np.full(3, 5.0) - normal.mean(0)) / normal.std(0), axis=1))[:5].mean()
    assert abs(far[0] - expected) < 1e-9


def test_fluctuation_ignores_gain_and_colouring_and_sees_modulation():
    """The bands' fluctuation (spread over frames of their log power): a microphone's gain or a smooth
    colouring moves a band's log power by a constant and leaves it alone; a shaft-rate modulation of the
    machine's sound (an imbalance) raises it in every band."""
    rng = np.random.default_rng(7)
    mel = np.abs(rng.standard_normal((config.FFT_LENGTH // 2 + 1, config.MEL_BANDS)))
    n = config.WINDOW_SAMPLES
    noise = 0.05 * rng.standard_normal(n)
    f = np.fft.rfftfreq(n, 1.0 / config.SAMPLE_RATE)
    tilt = 10 ** (1.5 * np.log2(np.maximum(f, 50.0) / 1000.0) / 20.0)  # +1.5 dB per octave
    coloured = np.fft.irfft(np.fft.rfft(noise) * tilt, n)
    t = np.arange(n) / config.SAMPLE_RATE
    modulated = noise * (1.0 + 0.6 * np.sin(2 * np.pi * 20.0 * t))  # 20 Hz shaft rate, 60 % depth
    fl = {
        name: spectral.reference(x, mel)[0, spectral.FLUCTUATION_SLICE]
        for name, x in {"plain": noise, "louder": 4.0 * noise, "coloured": coloured, "modulated": modulated}.items()
    }
    assert np.abs(fl["louder"] - fl["plain"]).max() < 1e-6
    # a smooth colouring: the same spread within what the 4-bin bands' own randomness allows
    assert abs(np.median(fl["coloured"] / fl["plain"]) - 1.0) < 0.05
    assert np.median(fl["modulated"] / fl["plain"]) > 1.3
    assert (fl["modulated"] > fl["plain"]).mean() > 0.9


def test_modulation_spectrum_ignores_gain_and_colouring_and_peaks_at_the_shaft_rate():
    """The modulation spectrum (fanwatch.spectral, its shape as the scorer compares it): the same for a
    louder or coloured recording of the same sound, and a peak at the modulation frequency of a sound
    modulated at a shaft rate (an imbalance) that steady noise does not have."""
    rng = np.random.default_rng(9)
    mel = np.abs(rng.standard_normal((config.FFT_LENGTH // 2 + 1, config.MEL_BANDS)))
    n = config.WINDOW_SAMPLES
    noise = 0.05 * rng.standard_normal(n)
    f = np.fft.rfftfreq(n, 1.0 / config.SAMPLE_RATE)
    tilt = 10 ** (1.5 * np.log2(np.maximum(f, 50.0) / 1000.0) / 20.0)
    coloured = np.fft.irfft(np.fft.rfft(noise) * tilt, n)
    t = np.arange(n) / config.SAMPLE_RATE
    shaft_hz = 20.0
    modulated = noise * (1.0 + 0.3 * np.sin(2 * np.pi * shaft_hz * t))
    mod = {
        name: scorer.features("modulation", spectral.reference(x, mel))[0]
        for name, x in {"plain": noise, "louder": 4.0 * noise, "coloured": coloured, "modulated": modulated}.items()
    }
    assert np.abs(mod["louder"] - mod["plain"]).max() < 1e-6
    assert np.abs(mod["coloured"] - mod["plain"]).mean() < 0.1  # nats
    peak = int(round(shaft_hz / (100.0 / spectral.MODULATION_FRAMES))) - spectral.MODULATION_BINS.start
    assert mod["modulated"][peak] - mod["plain"][peak] > 2.0  # nats: the shaft rate stands out ...
    assert int(np.argmax(mod["modulated"] - mod["plain"])) in (peak - 1, peak, peak + 1)  # ... there


def test_a_model_without_fluctuation_keeps_its_score_and_refuses_one_that_needs_it(fitted):
    rng = np.random.default_rng(8)
    e = np.abs(rng.standard_normal((10, D))).astype(np.float32)
    legacy = rng.normal(-8, 2, (10, spectral.LEGACY_FEATURES)).astype(np.float32)
    old = scorer.Scorer.fit(
        {"a": [(e, legacy), (e[::-1], legacy[::-1])]}, scorer.ScoreConfig({"embedding": 2, "shape": 1})
    )
    assert np.isfinite(old.score_file("a", e, legacy)).all()
    with pytest.raises(FanwatchError, match="no band fluctuation"):
        scorer.Scorer.fit(
            {"a": [(e, legacy), (e[::-1], legacy[::-1])]},
            scorer.ScoreConfig({"embedding": 4, "shape": 2, "fluctuation": 1}),
        )
    older = rng.normal(-8, 2, (10, spectral.FLUCTUATION_FEATURES)).astype(np.float32)
    with pytest.raises(FanwatchError, match="no modulation spectrum"):
        scorer.Scorer.fit(
            {"a": [(e, older), (e[::-1], older[::-1])]},
            scorer.ScoreConfig({"embedding": 2, "shape": 1, "modulation": 1}),
        )


def test_front_end_fft_factors_give_the_power_spectrum():
    """The front end's one-radix-step FFT (fanwatch.yamnet.fft_factors, bins in its own order) is numpy's
    rfft of the Hann-windowed, zero-padded frame."""
    from fanwatch import yamnet

    rng = np.random.default_rng(11)
    frames = rng.standard_normal((3, config.STFT_WINDOW))
    got = yamnet.power_spectrum_reference(frames)
    order = yamnet.bin_order()
    used = order <= config.FFT_LENGTH // 2
    want = np.abs(np.fft.rfft(frames * spectral.hann_window(), config.FFT_LENGTH, axis=-1)) ** 2
    assert sorted(order[used]) == list(range(config.FFT_LENGTH // 2 + 1))
    assert np.abs(got[:, used] - want[:, order[used]]).max() < 1e-6 * want.max()  # float32 constants
    mel = rng.random((config.FFT_LENGTH // 2 + 1, 4))
    assert np.allclose(want @ mel, got @ yamnet.in_bin_order(mel), rtol=1e-5)


def test_a_threshold_is_never_zero_and_a_saved_zero_is_refused(fitted):
    """A one-sided channel can score 0 on every validation window: its threshold is raised to the minimum
    (a ratio to 0 would be inf or a crash in the live loop); a model file with a 0 threshold is refused."""
    sc, *_ = fitted
    value, rule = scorer._threshold(np.zeros(50), 0.99)
    assert value == scorer.MIN_THRESHOLD and "minimum" in rule
    assert scorer._threshold(np.full(50, 0.5), 0.99)[0] == 0.5
    broken = scorer.Scorer(
        sc.config, sc.references, {**sc.thresholds, "a": 0.0}, channel_thresholds={"shape": {"a": 0.0}}
    )
    with pytest.raises(FanwatchError, match="threshold for a is 0"):
        broken.threshold("a")
    with pytest.raises(FanwatchError, match="shape threshold for a is 0"):
        broken.channel_threshold("a", "shape")
