"""Training copies of a recording as another room and microphone would have heard it (head training only).

The head learns the operating states and the known faults from the embeddings of the training recordings,
all made in one place. On site the same fan is heard through another microphone (another gain and
colouring), in a louder or quieter room, beside other machines. Across such recording sessions
(``bench/alerts.py``) the head's known-fault alerts missed most imbalances in a loud room (the head called
them "high speed") and raised a false alert there, while the anomaly score, fitted on normal recordings,
cannot name a fault at all. ``train.py --augment N`` adds, per training recording, N copies in which the
recording is

* louder or quieter: a gain, uniform in +-6 dB;
* coloured: a spectral tilt, uniform in +-2 dB per octave around 1 kHz (a microphone, a room);
* in more background noise: coloured noise (slope uniform in -6..0 dB per octave) added at a
  recording-to-noise ratio uniform in 0..20 dB;
* with probability 1/3, beside another machine: a hum of 5 harmonics of a fundamental uniform in
  45..200 Hz, 8..20 dB under the recording.

The copies are seeded (the run's seed, the file's index, the copy), train only the head (never the anomaly
score's normal references, never a threshold or the alert calibration, which use the real validation
recordings) and are not cached.

Opt-in (default 0), by measurement: on ``bench/alerts.py``'s model (40 ten-second recordings per state) one
copy removed the head's false alert in the loud room and raised the faults alerted within 15 s there from
81.7 to 86.7 % (imbalances 6 -> 9 of 15), 3 copies did no better; on the tests' small fixture model (12
four-second recordings per state) it made the head call a normal recording a fault in more than half of its
windows instead of a fifth. With little training audio, noise-drowned copies of a fault look like normal
running and the head learns the wrong lesson; try it on your data with ``evaluate_model.py``'s alert
figures before deploying it.

Training-side module (numpy only, but nothing on the Pi needs it).
"""

from __future__ import annotations

import numpy as np

from . import config

GAIN_DB = 6.0
TILT_DB_PER_OCTAVE = 2.0
NOISE_SLOPE_DB_PER_OCTAVE = (-6.0, 0.0)
NOISE_RATIO_DB = (0.0, 20.0)
HUM_PROBABILITY = 1.0 / 3.0
HUM_HZ = (45.0, 200.0)
HUM_BELOW_DB = (8.0, 20.0)
HUM_HARMONICS = 5


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def _octaves(n: int, sample_rate: int) -> np.ndarray:
    """log2(f / 1 kHz) of the rfft bins, with f floored at 50 Hz (no boost towards DC)."""
    f = np.fft.rfftfreq(n, 1.0 / sample_rate)
    return np.log2(np.maximum(f, 50.0) / 1000.0)


def nuisance(signal: np.ndarray, rng: np.random.Generator, sample_rate: int = config.SAMPLE_RATE) -> tuple:
    """(augmented copy, the drawn settings) of a mono float signal in [-1, 1]; the copy stays within [-1, 1]."""
    x = np.asarray(signal, np.float64)
    n = len(x)
    octaves = _octaves(n, sample_rate)
    gain_db = rng.uniform(-GAIN_DB, GAIN_DB)
    tilt = rng.uniform(-TILT_DB_PER_OCTAVE, TILT_DB_PER_OCTAVE)
    slope = rng.uniform(*NOISE_SLOPE_DB_PER_OCTAVE)
    ratio_db = rng.uniform(*NOISE_RATIO_DB)
    hum = rng.random() < HUM_PROBABILITY
    hum_hz, hum_db = rng.uniform(*HUM_HZ), rng.uniform(*HUM_BELOW_DB)
    y = np.fft.irfft(np.fft.rfft(x) * 10 ** (tilt * octaves / 20.0), n)
    level = _rms(y)
    noise = np.fft.irfft(np.fft.rfft(rng.standard_normal(n)) * 10 ** (slope * octaves / 20.0), n)
    y = y + noise * (level * 10 ** (-ratio_db / 20.0) / max(_rms(noise), 1e-12))
    if hum:
        t = np.arange(n) / sample_rate
        phases = rng.uniform(0.0, 2 * np.pi, HUM_HARMONICS)
        tone = sum(np.sin(2 * np.pi * k * hum_hz * t + phases[k - 1]) / k for k in range(1, HUM_HARMONICS + 1))
        y = y + tone * (level * 10 ** (-hum_db / 20.0) / max(_rms(tone), 1e-12))
    y = y * 10 ** (gain_db / 20.0)
    peak = float(np.max(np.abs(y))) if n else 0.0
    if peak > 0.99:  # never clip: a clipped copy would teach the head distortion
        y = y * (0.99 / peak)
    settings = {
        "gain_db": gain_db,
        "tilt_db_per_octave": tilt,
        "noise_slope_db_per_octave": slope,
        "noise_ratio_db": ratio_db,
        "hum_hz": hum_hz if hum else None,
        "hum_below_db": hum_db if hum else None,
    }
    return y.astype(np.float32), settings


def describe() -> dict:
    """The augmentation's ranges, for the model card."""
    return {
        "gain_db": [-GAIN_DB, GAIN_DB],
        "tilt_db_per_octave": [-TILT_DB_PER_OCTAVE, TILT_DB_PER_OCTAVE],
        "noise_slope_db_per_octave": list(NOISE_SLOPE_DB_PER_OCTAVE),
        "noise_ratio_db": list(NOISE_RATIO_DB),
        "hum": {"probability": HUM_PROBABILITY, "hz": list(HUM_HZ), "below_db": list(HUM_BELOW_DB)},
        "used_for": "the head's training only (not the anomaly score, thresholds or alert calibration)",
    }
