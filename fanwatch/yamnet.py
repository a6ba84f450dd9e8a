"""YAMNet as a Keras 3 model, with its weights imported from Google's published YAMNet TFLite file.

No hub is ever contacted: the weights come from ``yamnet.tflite`` (see ``config.resolve_yamnet_path``).
The file stores int8 weights with their own scales (per channel along ``quantized_dimension`` or per
tensor) and float biases with batch norm already folded in; they are dequantized and transposed into
the Keras layouts here. The activations are ReLU (not ReLU6).

The log-mel front end is part of the model and uses builtin TFLite ops only: periodic Hann 400 /
hop 160, 512-point FFT magnitude, 64 mel bands 125-7500 Hz, ``log(mel + 0.001)``. The mel matrix is
the exact float one (``tf.signal.linear_to_mel_weight_matrix``), which the file's int8 copy
approximates. The 512-point real FFT of each zero-padded 400-sample frame is computed with matrix
products instead of ``tf.signal.rfft`` (TFLite's RFFT2D kernel took 0.77 ms of a 2.2 ms window here):
one radix step of Cooley-Tukey (:func:`fft_factors`: 512 = 32 x 16, the 400 samples as 25 x 16, a
32-point DFT, twiddles, a 16-point DFT), each stage a small matrix product that XNNPACK runs: 4.4 M
multiply-adds per window instead of the 19.7 M of one product with the whole windowed DFT basis
([400, 2 x 257]), which had been the front end's way (0.24 ms of it alone against 0.11 ms now). The bins
come out in (k1, k2) order; the mel and band matrices take them in that order (their rows permuted,
:func:`bin_order`), so no reordering is computed.

With ``with_bands=True`` the front end layer also returns the window's ``band_levels``
(:mod:`fanwatch.spectral`: mean log-mel, mean log power of 64 linear bands, level in dB, the bands'
fluctuation over the frames, the modulation spectrum of 8 band groups) from the spectrum it has already
computed: means over frames and three small matrix products, a few per cent of the front end's time.

Input: ``[batch, WINDOW_SAMPLES]`` float32 waveform in [-1, 1] at 16 kHz, exactly one 96-frame patch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import config, spectral
from .errors import FanwatchError

# MobileNetV1 body as YAMNet uses it: (stride, channels) of the 13 depthwise-separable blocks.
BLOCKS = (
    (1, 64),
    (2, 128),
    (1, 128),
    (2, 256),
    (1, 256),
    (2, 512),
    (1, 512),
    (1, 512),
    (1, 512),
    (1, 512),
    (1, 512),
    (2, 1024),
    (1, 1024),
)
NUM_CLASSES = 521


@dataclass
class YamnetWeights:
    """Float weights in Keras layouts, plus where they came from."""

    path: Path
    sha256: str
    conv1: tuple[np.ndarray, np.ndarray]
    blocks: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]  # dw kernel, dw bias, pw kernel, pw bias
    dense: tuple[np.ndarray, np.ndarray]
    file_mel_matrix: np.ndarray | None = None  # [257, 64], dequantized from the file (reference only)
    notes: dict = field(default_factory=dict)


def _dequantize(values: np.ndarray, qparams: dict) -> np.ndarray:
    if values.dtype == np.float32:
        return values.astype(np.float32)
    scales = np.asarray(qparams["scales"], dtype=np.float64)
    zero_points = np.asarray(qparams["zero_points"], dtype=np.float64)
    if scales.size == 0:
        raise FanwatchError(f"int tensor without quantization scales ({values.dtype})")
    if scales.size == 1:
        return ((values.astype(np.float64) - zero_points[0]) * scales[0]).astype(np.float32)
    axis = int(qparams["quantized_dimension"])
    shape = [1] * values.ndim
    shape[axis] = scales.size
    if zero_points.size != scales.size:  # one zero point shared by all channels
        zero_points = np.broadcast_to(zero_points[:1], scales.shape)
    out = (values.astype(np.float64) - zero_points.reshape(shape)) * scales.reshape(shape)
    return out.astype(np.float32)


def _open_interpreter(path: Path):
    """Any available TFLite interpreter; only constant tensors are read, nothing is run."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # pragma: no cover - TensorFlow is always there on the training side
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    return interpreter


def check_yamnet_file(path: str | os.PathLike | None) -> Path:
    """Resolve the weights path and fail with one sentence that says where to get the file."""
    resolved = config.resolve_yamnet_path(path)
    if not resolved.is_file():
        raise FanwatchError(f"YAMNet weights not found at {resolved}. {config.YAMNET_HELP}.")
    return resolved


def load_weights(path: str | os.PathLike | None = None) -> YamnetWeights:
    """Read, dequantize and transpose every YAMNet weight from the published TFLite file."""
    resolved = check_yamnet_file(path)
    try:
        interpreter = _open_interpreter(resolved)
        details = interpreter.get_tensor_details()
    except (ValueError, RuntimeError) as exc:
        raise FanwatchError(
            f"{resolved} is not a readable TFLite model ({str(exc).splitlines()[0]}). {config.YAMNET_HELP}."
        ) from None

    # Constant tensors by (name fragment, rank). Depthwise kernels carry the folded batch-norm name.
    by_key: dict[tuple[str, int], np.ndarray] = {}
    for d in details:
        name = d["name"].split(";")[0]
        rank = len(d["shape"])
        if not name.startswith("yamnet_frames/") and not (rank == 1 and d["shape"][0] == NUM_CLASSES):
            continue
        try:
            value = interpreter.get_tensor(d["index"])
        except ValueError:
            continue
        if value.dtype not in (np.float32, np.int8):
            continue  # shapes, indices, and activations of the int8 hybrid path
        if d["shape"].size and rank and d["shape"][0] == NUM_CLASSES and rank == 1:
            name = "dense/bias"
        by_key[(name, rank)] = _dequantize(value, d["quantization_parameters"])

    def take(name: str, rank: int) -> np.ndarray:
        key = (f"yamnet_frames/{name}" if name != "dense/bias" else name, rank)
        if key not in by_key:
            raise FanwatchError(f"{resolved} does not look like YAMNet (no weight '{name}'). {config.YAMNET_HELP}.")
        return by_key[key]

    conv1 = (take("layer1/conv/Conv2D", 4).transpose(1, 2, 3, 0), take("layer1/conv/bn/FusedBatchNormV3", 1))
    blocks = []
    for i, (_, channels) in enumerate(BLOCKS, start=2):
        dw = take(f"layer{i}/depthwise_conv/bn/FusedBatchNormV3", 4)  # [1, 3, 3, C]
        dw_bias = take(f"layer{i}/depthwise_conv/bn/FusedBatchNormV3", 1)
        pw = take(f"layer{i}/pointwise_conv/Conv2D", 4)  # [out, 1, 1, in]
        pw_bias = take(f"layer{i}/pointwise_conv/bn/FusedBatchNormV3", 1)
        if pw.shape[0] != channels:
            raise FanwatchError(f"{resolved}: layer{i} has {pw.shape[0]} channels, YAMNet has {channels}.")
        blocks.append((dw[0][..., None], dw_bias, pw.transpose(1, 2, 3, 0), pw_bias))
    dense = (take("dense/MatMul", 2).T.copy(), take("dense/bias", 1))
    mel = by_key.get(("yamnet_frames/tf_op_layer_MatMul/MatMul", 2))
    return YamnetWeights(
        path=resolved,
        sha256=config.sha256_file(resolved),
        conv1=conv1,
        blocks=blocks,
        dense=dense,
        file_mel_matrix=None if mel is None else mel.T.copy(),
    )


def mel_matrix() -> np.ndarray:
    """The exact float [257, 64] mel weight matrix YAMNet's front end was built with."""
    import tensorflow as tf

    return tf.signal.linear_to_mel_weight_matrix(
        num_mel_bins=config.MEL_BANDS,
        num_spectrogram_bins=config.FFT_LENGTH // 2 + 1,
        sample_rate=config.SAMPLE_RATE,
        lower_edge_hertz=config.MEL_FMIN,
        upper_edge_hertz=config.MEL_FMAX,
    ).numpy()


# One radix step of the 512-point FFT: n = N2 * n1 + n2, k = k1 + N1 * k2 (Cooley-Tukey).
FFT_N1, FFT_N2 = 32, 16
FFT_K2 = (config.FFT_LENGTH // 2) // FFT_N1 + 1  # k2 = 0..8 covers bins 0..256 (and a few beyond, unused)


def fft_factors() -> dict:
    """The constant matrices of the front end's FFT, for frames reshaped to [n1 = 25, n2 = 16]:

    * ``first`` [25, 2 * 32]: the 32-point DFT over n1 (real | imaginary), for each n2 (a frame has 400
      samples, n1 < 25: the zero padding to 512 needs no rows);
    * ``twiddle_re``, ``twiddle_im`` [16, 32]: exp(-2 pi i n2 k1 / 512);
    * ``second`` [2 * 16, 2 * FFT_K2]: the 16-point DFT over n2 of a complex input (real rows | imaginary
      rows) for k2 = 0..FFT_K2-1 (real | imaginary columns).

    The result is bin ``k1 + 32 k2`` at position ``k1 * FFT_K2 + k2`` (:func:`bin_order`)."""
    n1 = np.arange(config.STFT_WINDOW // FFT_N2)[:, None]
    k1 = np.arange(FFT_N1)[None, :]
    a = 2 * np.pi * n1 * k1 / FFT_N1
    first = np.concatenate([np.cos(a), -np.sin(a)], axis=1)
    t = 2 * np.pi * np.arange(FFT_N2)[:, None] * k1 / config.FFT_LENGTH
    b = 2 * np.pi * np.arange(FFT_N2)[:, None] * np.arange(FFT_K2)[None, :] / FFT_N2
    cos_b, sin_b = np.cos(b), -np.sin(b)
    second = np.block([[cos_b, sin_b], [-sin_b, cos_b]])  # (re + i im)(cos + i sin), stacked as reals
    f32 = np.float32
    return {
        "first": first.astype(f32),
        "twiddle_re": np.cos(t).astype(f32),
        "twiddle_im": (-np.sin(t)).astype(f32),
        "second": second.astype(f32),
    }


def bin_order() -> np.ndarray:
    """[32 * FFT_K2] DFT bin of each position of the front end's power spectrum (bins > 256 are unused)."""
    return (np.arange(FFT_N1)[:, None] + FFT_N1 * np.arange(FFT_K2)[None, :]).reshape(-1)


def in_bin_order(matrix: np.ndarray) -> np.ndarray:
    """A [257, m] matrix over DFT bins with its rows in the front end's order (zero rows where unused)."""
    order = bin_order()
    out = np.zeros((len(order), matrix.shape[1]), np.float32)
    used = order <= config.FFT_LENGTH // 2
    out[used] = matrix[order[used]]
    return out


def power_spectrum_reference(frames: np.ndarray) -> np.ndarray:
    """numpy replica of the front end's FFT: [..., 400] frames -> [..., 32 * FFT_K2] power in bin order."""
    x = np.asarray(frames, np.float64) * spectral.hann_window().astype(np.float32)  # as the model has it
    f = fft_factors()
    x = np.swapaxes(x.reshape(*x.shape[:-1], -1, FFT_N2), -1, -2)  # [..., n2, n1]
    y = x @ f["first"].astype(np.float64)
    yr, yi = y[..., :FFT_N1], y[..., FFT_N1:]
    zr = yr * f["twiddle_re"] - yi * f["twiddle_im"]
    zi = yr * f["twiddle_im"] + yi * f["twiddle_re"]
    z = np.swapaxes(np.concatenate([zr, zi], axis=-2), -1, -2)  # [..., k1, 2 * n2]
    out = z @ f["second"].astype(np.float64)
    power = out[..., :FFT_K2] ** 2 + out[..., FFT_K2:] ** 2
    return power.reshape(*power.shape[:-2], -1)


def _log_mel_layer():
    import keras
    import tensorflow as tf

    from . import spectral

    class LogMelPatch(keras.layers.Layer):
        """[batch, 15600] waveform -> [batch, 96, 64, 1] log-mel patch, builtin TFLite ops only.

        with_bands: also [batch, spectral.BAND_FEATURES] band levels (see fanwatch.spectral)."""

        def __init__(self, with_bands: bool = False, **kwargs):
            super().__init__(**kwargs)
            self.with_bands = with_bands
            self._hann = tf.constant(spectral.hann_window().astype(np.float32))
            self._fft = {name: tf.constant(value) for name, value in fft_factors().items()}
            self._mel = tf.constant(in_bin_order(mel_matrix()))
            self._bands = tf.constant(in_bin_order(spectral.linear_band_matrix()))
            self._groups = tf.constant(spectral.group_matrix())
            self._modulation = tf.constant(spectral.modulation_dft())

        def call(self, waveform):
            frames = tf.signal.frame(waveform, config.STFT_WINDOW, config.STFT_HOP, axis=-1) * self._hann
            n1 = config.STFT_WINDOW // FFT_N2
            x = tf.reshape(frames, [-1, config.PATCH_FRAMES, n1, FFT_N2])
            y = tf.tensordot(tf.transpose(x, [0, 1, 3, 2]), self._fft["first"], axes=1)  # [b, t, n2, 2*32]
            yr, yi = y[..., :FFT_N1], y[..., FFT_N1:]
            tr, ti = self._fft["twiddle_re"], self._fft["twiddle_im"]
            z = tf.concat([yr * tr - yi * ti, yr * ti + yi * tr], axis=-2)  # [b, t, 2*n2, k1]
            spectrum = tf.tensordot(tf.transpose(z, [0, 1, 3, 2]), self._fft["second"], axes=1)  # [b, t, k1, 2*K2]
            real, imag = spectrum[..., :FFT_K2], spectrum[..., FFT_K2:]
            power = tf.reshape(real * real + imag * imag, [-1, config.PATCH_FRAMES, FFT_N1 * FFT_K2])
            magnitude = tf.sqrt(power)
            mel = tf.tensordot(magnitude, self._mel, axes=1)
            log_mel = tf.math.log(mel + config.LOG_OFFSET)
            if not self.with_bands:
                return log_mel[..., None]
            band_power = tf.tensordot(power, self._bands, axes=1)
            linear = tf.math.log(band_power + spectral.POWER_FLOOR)
            level = tf.reduce_mean(waveform * waveform, axis=-1, keepdims=True)
            level_db = tf.math.log(level + spectral.POWER_FLOOR) * (10.0 / np.log(10.0))
            linear_mean = tf.reduce_mean(linear, axis=-2)
            # fluctuation: the spread over frames of each band's log power (see fanwatch.spectral)
            deviation = linear - linear_mean[..., None, :]
            fluctuation = tf.sqrt(tf.reduce_mean(deviation * deviation, axis=-2))
            # modulation spectrum of the 8 groups' log-power envelopes (see fanwatch.spectral)
            envelope = tf.math.log(tf.tensordot(band_power, self._groups, axes=1) + spectral.POWER_FLOOR)
            envelope = envelope - tf.reduce_mean(envelope, axis=-2, keepdims=True)  # [b, frames, groups]
            spectrum = tf.tensordot(tf.transpose(envelope, [0, 2, 1]), self._modulation, axes=1)  # [b, g, 2k]
            k = spectral.MODULATION_FEATURES
            re, im = spectrum[..., :k], spectrum[..., k:]
            modulation = tf.math.log(tf.reduce_mean(re * re + im * im, axis=-2) + spectral.POWER_FLOOR)
            parts = [tf.reduce_mean(log_mel, axis=-2), linear_mean, level_db, fluctuation, modulation]
            bands = tf.concat(parts, axis=-1)
            return log_mel[..., None], bands

        def compute_output_shape(self, input_shape):
            patch = (input_shape[0], config.PATCH_FRAMES, config.MEL_BANDS, 1)
            return (patch, (input_shape[0], spectral.BAND_FEATURES)) if self.with_bands else patch

    return LogMelPatch


def build_model(weights: YamnetWeights, with_scores: bool = True, name: str = "yamnet", with_bands: bool = False):
    """Keras functional model: waveform -> embedding [, scores] [, band_levels]. Batch size is free."""
    import keras
    from keras import layers

    waveform = keras.Input(shape=(config.WINDOW_SAMPLES,), dtype="float32", name="waveform")
    bands = None
    if with_bands:
        x, bands = _log_mel_layer()(with_bands=True, name="log_mel")(waveform)
    else:
        x = _log_mel_layer()(name="log_mel")(waveform)
    conv = layers.Conv2D(32, 3, strides=2, padding="same", activation="relu", name="layer1_conv")
    x = conv(x)
    conv.set_weights(list(weights.conv1))
    for i, ((stride, channels), (dw, dw_b, pw, pw_b)) in enumerate(zip(BLOCKS, weights.blocks), start=2):
        dwl = layers.DepthwiseConv2D(3, strides=stride, padding="same", activation="relu", name=f"layer{i}_dw")
        x = dwl(x)
        dwl.set_weights([dw, dw_b])
        pwl = layers.Conv2D(channels, 1, padding="same", activation="relu", name=f"layer{i}_pw")
        x = pwl(x)
        pwl.set_weights([pw, pw_b])
    embedding = layers.GlobalAveragePooling2D(name="embedding")(x)
    outputs = {"embedding": embedding}
    if bands is not None:
        outputs["band_levels"] = layers.Identity(name="band_levels")(bands)
    if with_scores:
        dense = layers.Dense(NUM_CLASSES, activation="sigmoid", name="scores")
        outputs["scores"] = dense(embedding)
        dense.set_weights(list(weights.dense))
    return keras.Model(waveform, outputs, name=name)


def build_log_mel_model():
    """The front end alone, [batch, 15600] -> [batch, 96, 64], for checks against the reference file."""
    import keras

    waveform = keras.Input(shape=(config.WINDOW_SAMPLES,), dtype="float32", name="waveform")
    patch = _log_mel_layer()(name="log_mel")(waveform)
    return keras.Model(waveform, keras.layers.Reshape((config.PATCH_FRAMES, config.MEL_BANDS))(patch))
