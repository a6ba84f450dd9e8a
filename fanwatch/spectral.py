"""Per-window spectral and level features that the deployed model outputs beside the embedding.

The YAMNet front end already computes, for the 96 frames of a window (400-sample periodic Hann, hop
160, 512-point DFT), the magnitude spectrum and the log-mel patch. From them the model also outputs
``band_levels`` ([1, BAND_FEATURES]), at the cost of means over frames and three small matrix products:

* ``[0:64]``   mean over the frames of the log-mel patch (exactly what YAMNet sees, ``log(mel + 0.001)``);
* ``[64:128]`` mean over the frames of ``log(power + 1e-10)`` of 64 linear bands of 125 Hz (DFT bins
  1..256, 4 bins each, power = |X|^2 summed over the band): fine resolution where the mel bands are
  coarse (above 1 kHz), where bearing, rubbing and wear show;
* ``[128]``    the window's level, ``10 log10(mean(x^2) + 1e-10)`` dB;
* ``[129:193]`` the **fluctuation** of the same 64 linear bands: the standard deviation over the 96 frames of
  their log power. A fan's normal sound is steady within a second; an imbalance modulates it at the shaft
  rate, a rub or a bearing defect comes in bursts, and none of that moves the time mean. A log power's spread
  over time does not change with the microphone's gain or a room's or microphone's colouring (a constant
  factor per band is a constant offset of its log), only with what the machine does and with the
  background's level (measured in ``bench/anomaly_methods.py`` and ``bench/alerts.py``).
* ``[193:238]`` the **modulation spectrum** of the window: the 64 linear bands summed into 8 groups of
  1 kHz, each group's log power over the 96 frames (100 frames a second) taken as an envelope, its mean
  removed, a 96-point periodic Hann window, the power of its DFT at modulation frequencies 3.1-49 Hz
  (bins 3..47 of 100/96 Hz), averaged over the groups, as ``log(power + 1e-10)``. A fault that modulates the
  machine's sound at the shaft rate (an imbalance, a rub once per revolution, bearing impacts) puts a peak
  there; a steady sound in steady noise gives a smooth floor. The envelope is a log power, so the
  microphone's gain and colouring do not move it, and the scorer compares only its *shape* over the
  modulation frequencies (:func:`fanwatch.scorer.features`), which more background noise lowers
  evenly instead of moving, as it moves the fluctuation.

Models exported before the fluctuation output give the first 129 values only (``LEGACY_FEATURES``), models
exported before the modulation spectrum the first 193 (``FLUCTUATION_FEATURES``); their anomaly scores do not
use what they lack, so they keep working.

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
LEGACY_FEATURES = LEVEL_INDEX + 1  # models exported before the fluctuation output
FLUCTUATION_SLICE = slice(LEGACY_FEATURES, LEGACY_FEATURES + LINEAR_BANDS)
FLUCTUATION_FEATURES = FLUCTUATION_SLICE.stop  # models exported before the modulation spectrum
MODULATION_GROUPS = 8  # groups of 8 linear bands (1 kHz each)
MODULATION_FRAMES = config.PATCH_FRAMES  # the envelope's length: the window's 96 frames
MODULATION_BINS = slice(3, 48)  # modulation frequencies 3.1-49 Hz at 100/96 Hz per bin
MODULATION_FEATURES = MODULATION_BINS.stop - MODULATION_BINS.start  # 45 modulation frequencies
MODULATION_SLICE = slice(FLUCTUATION_FEATURES, FLUCTUATION_FEATURES + MODULATION_FEATURES)
BAND_FEATURES = MODULATION_SLICE.stop
POWER_FLOOR = 1e-10
OUTPUT_NAME = "band_levels"


def hann_window(length: int = config.STFT_WINDOW) -> np.ndarray:
    """[length] periodic Hann window in float64 (the front end's, and the long-term-spectrum baseline's)."""
    return 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(length) / length)


def linear_band_matrix() -> np.ndarray:
    """[257, 64] 0/1 matrix summing DFT power bins 1..256 into 64 bands of 4 bins (125 Hz each)."""
    bins = config.FFT_LENGTH // 2 + 1
    m = np.zeros((bins, LINEAR_BANDS), np.float32)
    per = (bins - 1) // LINEAR_BANDS
    for b in range(LINEAR_BANDS):
        m[1 + b * per : 1 + (b + 1) * per, b] = 1.0
    return m


def group_matrix() -> np.ndarray:
    """[64, 8] 0/1 matrix summing the linear bands' power into the modulation spectrum's groups."""
    per = LINEAR_BANDS // MODULATION_GROUPS
    return np.kron(np.eye(MODULATION_GROUPS), np.ones((per, 1))).astype(np.float32)


def modulation_dft() -> np.ndarray:
    """[96, 2 * 45]: the periodic Hann window times the DFT's cosines, then its (negated) sines, at the
    modulation bins: ``envelope @ modulation_dft()`` gives their real and imaginary parts."""
    n = np.arange(MODULATION_FRAMES)[:, None]
    k = np.arange(MODULATION_BINS.start, MODULATION_BINS.stop)[None, :]
    angle = 2 * np.pi * n * k / MODULATION_FRAMES
    w = hann_window(MODULATION_FRAMES)[:, None]
    return np.concatenate([w * np.cos(angle), -w * np.sin(angle)], axis=1).astype(np.float32)


def reference(windows: np.ndarray, mel_matrix: np.ndarray) -> np.ndarray:
    """[n, BAND_FEATURES] in float64 for [n, WINDOW_SAMPLES] windows: what the model's output should be."""
    w = np.atleast_2d(np.asarray(windows, np.float64))
    n_frames = 1 + (w.shape[1] - config.STFT_WINDOW) // config.STFT_HOP
    idx = np.arange(config.STFT_WINDOW)[None, :] + config.STFT_HOP * np.arange(n_frames)[:, None]
    hann = hann_window()
    spec = np.fft.rfft(w[:, idx] * hann, n=config.FFT_LENGTH, axis=-1)  # [n, frames, 257]
    power = spec.real**2 + spec.imag**2
    mel = np.log(np.sqrt(power) @ np.asarray(mel_matrix, np.float64) + config.LOG_OFFSET).mean(axis=1)
    band_power = power @ linear_band_matrix().astype(np.float64)  # [n, frames, 64]
    lin_frames = np.log(band_power + POWER_FLOOR)
    level = 10.0 * np.log10((w * w).mean(axis=1) + POWER_FLOOR)
    envelope = np.log(band_power @ group_matrix().astype(np.float64) + POWER_FLOOR)  # [n, frames, 8]
    envelope = envelope - envelope.mean(axis=1, keepdims=True)
    k = MODULATION_FEATURES
    spectrum = np.einsum("ntg,tk->ngk", envelope, modulation_dft().astype(np.float64))
    modulation = np.log((spectrum[..., :k] ** 2 + spectrum[..., k:] ** 2).mean(axis=1) + POWER_FLOOR)
    return np.concatenate([mel, lin_frames.mean(axis=1), level[:, None], lin_frames.std(axis=1), modulation], axis=1)
