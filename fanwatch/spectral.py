"""Per-window spectral and level features that the deployed model outputs beside the embedding.

The YAMNet front end already computes, for the 96 frames of a window (400-sample periodic Hann, hop
160, 512-point DFT), the magnitude spectrum and the log-mel patch. From them the model also outputs
``band_levels`` ([1, BAND_FEATURES]), at the cost of a mean over frames and one small matrix product:

* ``[0:64]``   mean over the frames of the log-mel patch (exactly what YAMNet sees, ``log(mel + 0.001)``);
* ``[64:128]`` mean over the frames of ``log(power + 1e-10)`` of 64 linear bands of 125 Hz (DFT bins
  1..256, 4 bins each, power = |X|^2 summed over the band): fine resolution where the mel bands are
  coarse (above 1 kHz), where bearing, rubbing and wear show;
* ``[128]``    the window's level, ``10 log10(mean(x^2) + 1e-10)`` dB.

This module is runtime-safe (numpy only). :func:`reference` is the float64 numpy replica of the
TFLite computation, used by the parity checks; the mel matrix is passed in (TensorFlow makes it on
the training side, ``yamnet.mel_matrix()``).
"""

from __future__ import annotations

import numpy as np

from . import config

MEL_SLICE = slice(0, config.MEL_BANDS)
LINEAR_BANDS = 64
LINEAR_SLICE = slice(config.MEL_BANDS, config.MEL_BANDS + LINEAR_BANDS)
LEVEL_INDEX = config.MEL_BANDS + LINEAR_BANDS
BAND_FEATURES = LEVEL_INDEX + 1
POWER_FLOOR = 1e-10
OUTPUT_NAME = "band_levels"


def linear_band_matrix() -> np.ndarray:
    """[257, 64] 0/1 matrix summing DFT power bins 1..256 into 64 bands of 4 bins (125 Hz each)."""
    bins = config.FFT_LENGTH // 2 + 1
    m = np.zeros((bins, LINEAR_BANDS), np.float32)
    per = (bins - 1) // LINEAR_BANDS
    for b in range(LINEAR_BANDS):
        m[1 + b * per : 1 + (b + 1) * per, b] = 1.0
    return m


def reference(windows: np.ndarray, mel_matrix: np.ndarray) -> np.ndarray:
    """[n, BAND_FEATURES] in float64 for [n, WINDOW_SAMPLES] windows: what the model's output should be."""
    w = np.atleast_2d(np.asarray(windows, np.float64))
    n_frames = 1 + (w.shape[1] - config.STFT_WINDOW) // config.STFT_HOP
    idx = np.arange(config.STFT_WINDOW)[None, :] + config.STFT_HOP * np.arange(n_frames)[:, None]
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(config.STFT_WINDOW) / config.STFT_WINDOW)
    spec = np.fft.rfft(w[:, idx] * hann, n=config.FFT_LENGTH, axis=-1)  # [n, frames, 257]
    power = spec.real**2 + spec.imag**2
    mel = np.log(np.sqrt(power) @ np.asarray(mel_matrix, np.float64) + config.LOG_OFFSET).mean(axis=1)
    lin = np.log(power @ linear_band_matrix().astype(np.float64) + POWER_FLOOR).mean(axis=1)
    level = 10.0 * np.log10((w * w).mean(axis=1) + POWER_FLOOR)
    return np.concatenate([mel, lin, level[:, None]], axis=1)
