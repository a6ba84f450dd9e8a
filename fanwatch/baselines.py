"""Two anomaly baselines that learn nothing, to show whether a model earns its keep (numpy only).

Both are fitted on normal training clips only and score a clip by the mean Euclidean distance of its
z-scored feature vector to the ``k = 5`` nearest normal training clips (z-scored with the mean and
standard deviation of the normal training clips, per feature):

``loudness``
    One feature: the clip's RMS level in dB (``10 log10(mean x^2)``).
``ltas`` (long-term average spectrum)
    64 features: the mean over the clip's frames of the log power of 64 linear-frequency bands of a
    1024-point FFT (periodic Hann frames of 1024 samples, hop 512; bins 1..512, 8 bins per band, so
    125 Hz per band at 16 kHz; ``log(band power + 1e-10)``).

The same features of one 0.975 s window (instead of the whole clip) give the window-level variants;
there the normal references are the training clips' windows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import config, spectral

LTAS_FFT = 1024
LTAS_HOP = 512
LTAS_BANDS = 64
LTAS_FLOOR = 1e-10
KNN_K = 5
BASELINES = ("loudness", "ltas")


def loudness_db(signal: np.ndarray) -> np.ndarray:
    """[1]: RMS level of a mono signal in dB (full scale = 0 dB for a sine of amplitude 1 * sqrt 2)."""
    x = np.asarray(signal, np.float64)
    return np.array([10.0 * np.log10(np.mean(x * x) + LTAS_FLOOR)])


def ltas(signal: np.ndarray) -> np.ndarray:
    """[64]: mean log power of 64 linear bands over the frames of a mono signal (1024-point FFT)."""
    x = np.asarray(signal, np.float64)
    if len(x) < LTAS_FFT:
        x = np.pad(x, (0, LTAS_FFT - len(x)))
    n = 1 + (len(x) - LTAS_FFT) // LTAS_HOP
    idx = np.arange(LTAS_FFT)[None, :] + LTAS_HOP * np.arange(n)[:, None]
    hann = spectral.hann_window(LTAS_FFT)
    power = np.abs(np.fft.rfft(x[idx] * hann, axis=1)) ** 2  # [n, 513]
    bands = power[:, 1:].reshape(n, LTAS_BANDS, -1).sum(axis=2)
    return np.log(bands + LTAS_FLOOR).mean(axis=0)


FEATURES = {"loudness": loudness_db, "ltas": ltas}


def clip_features(kind: str, signal: np.ndarray) -> np.ndarray:
    return FEATURES[kind](signal)


def window_features(kind: str, signal: np.ndarray) -> np.ndarray:
    """[n_windows, d]: the feature of every analysis window (config.WINDOW_SAMPLES every HOP_SAMPLES)."""
    from .audio import frame_windows

    return np.stack([FEATURES[kind](w) for w in frame_windows(signal)])


@dataclass
class KnnBaseline:
    """z-score on the normal references, then mean Euclidean distance to the k nearest of them."""

    mean: np.ndarray
    std: np.ndarray
    references: np.ndarray  # [n, d], z-scored
    k: int = KNN_K

    @classmethod
    def fit(cls, normal_features: np.ndarray, k: int = KNN_K) -> KnnBaseline:
        x = np.asarray(normal_features, np.float64)
        if x.ndim != 2 or len(x) == 0:
            raise ValueError("KnnBaseline needs at least one normal reference")
        mean, std = x.mean(axis=0), x.std(axis=0)
        std = np.where(std > 1e-9, std, 1.0)
        return cls(mean, std, (x - mean) / std, k)

    def score(self, features: np.ndarray) -> np.ndarray:
        z = (np.asarray(features, np.float64) - self.mean) / self.std
        d2 = (z * z).sum(1)[:, None] + (self.references**2).sum(1)[None, :] - 2.0 * z @ self.references.T
        d = np.sqrt(np.maximum(d2, 0.0))
        k = min(self.k, d.shape[1])
        return np.sort(d, axis=1)[:, :k].mean(axis=1)


def fit_and_score(train_features: list[np.ndarray], test_features: list[np.ndarray], k: int = KNN_K) -> np.ndarray:
    """Scores of the test rows given normal training rows (lists of [n_i, d] arrays, concatenated)."""
    model = KnnBaseline.fit(np.concatenate(train_features), k)
    return model.score(np.concatenate(test_features))


def describe() -> dict:
    return {
        "loudness": "RMS dB of the clip (window), z-scored on normal training clips (windows), mean "
        f"distance to the {KNN_K} nearest",
        "ltas": f"mean log power of {LTAS_BANDS} linear bands ({LTAS_FFT}-point FFT, hop {LTAS_HOP}) over the "
        f"clip (window), z-scored on normal training clips (windows), mean Euclidean distance to the "
        f"{KNN_K} nearest",
        "sample_rate": config.SAMPLE_RATE,
    }
