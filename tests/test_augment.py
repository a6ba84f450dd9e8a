"""The head's training copies (fanwatch.augment): seeded, never clipped, within the documented ranges."""

from __future__ import annotations

import numpy as np

from fanwatch import augment, config, synth


def test_copies_are_seeded_bounded_and_span_the_ranges():
    x = synth.render("high_speed", 2.0, 5)
    a, sa = augment.nuisance(x, np.random.default_rng([0, 1, 0]))
    b, sb = augment.nuisance(x, np.random.default_rng([0, 1, 0]))
    c, _ = augment.nuisance(x, np.random.default_rng([0, 1, 1]))
    assert sa == sb and np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.shape == x.shape and a.dtype == np.float32 and np.isfinite(a).all()
    draws = [augment.nuisance(x, np.random.default_rng(i)) for i in range(60)]
    assert max(np.abs(y).max() for y, _ in draws) <= 0.99 + 1e-6
    settings = [s for _, s in draws]
    gains = [s["gain_db"] for s in settings]
    ratios = [s["noise_ratio_db"] for s in settings]
    assert -augment.GAIN_DB <= min(gains) < -3 and 3 < max(gains) <= augment.GAIN_DB
    assert min(ratios) < 5 and max(ratios) > 15
    assert 10 <= sum(s["hum_hz"] is not None for s in settings) <= 35


def test_more_noise_means_a_copy_less_like_the_recording():
    """The noise is added at the drawn recording-to-noise ratio: a 0 dB copy is far less like the original
    than a 20 dB one (correlation of the waveforms, gain and tilt set to 0 by fixing the draws)."""
    x = synth.render("low_speed", 2.0, 6).astype(np.float64)

    def corr(ratio_db):
        rng = np.random.default_rng(3)
        saved = augment.GAIN_DB, augment.TILT_DB_PER_OCTAVE, augment.NOISE_RATIO_DB, augment.HUM_PROBABILITY
        try:
            augment.GAIN_DB, augment.TILT_DB_PER_OCTAVE = 0.0, 0.0
            augment.NOISE_RATIO_DB, augment.HUM_PROBABILITY = (ratio_db, ratio_db), 0.0
            y, s = augment.nuisance(x, rng, config.SAMPLE_RATE)
        finally:
            augment.GAIN_DB, augment.TILT_DB_PER_OCTAVE, augment.NOISE_RATIO_DB, augment.HUM_PROBABILITY = saved
        assert abs(s["noise_ratio_db"] - ratio_db) < 1e-9 and s["hum_hz"] is None
        return np.corrcoef(x, y)[0, 1]

    assert corr(20.0) > 0.99
    assert 0.6 < corr(0.0) < 0.8  # equal power: correlation 1/sqrt(2)
