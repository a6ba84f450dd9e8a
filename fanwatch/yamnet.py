"""YAMNet as a Keras 3 model, with its weights imported from Google's published YAMNet TFLite file.

No hub is ever contacted: the weights come from ``yamnet.tflite`` (see ``config.resolve_yamnet_path``).
The file stores int8 weights with their own scales (per channel along ``quantized_dimension`` or per
tensor) and float biases with batch norm already folded in; they are dequantized and transposed into
the Keras layouts here. The activations are ReLU (not ReLU6).

The log-mel front end is part of the model and uses builtin TFLite ops only: periodic Hann 400 /
hop 160, 512-point FFT magnitude, 64 mel bands 125-7500 Hz, ``log(mel + 0.001)``. The mel matrix is
the exact float one (``tf.signal.linear_to_mel_weight_matrix``), which the file's int8 copy
approximates. The 512-point real FFT of each zero-padded 400-sample frame is computed as one matrix
product with the windowed DFT basis ([400, 2 x 257], Hann folded in) instead of ``tf.signal.rfft``:
TFLite's RFFT2D kernel took 0.77 ms of a 2.2 ms window here, the matrix product (run by XNNPACK)
0.5 ms, with the same result to 1e-6.

With ``with_bands=True`` the front end layer also returns the window's ``band_levels``
(:mod:`fanwatch.spectral`: mean log-mel, mean log power of 64 linear bands, level in dB) from the
spectrum it has already computed: a mean over frames and one [257, 64] matrix product, a few per cent
of the front end's time.

Input: ``[batch, WINDOW_SAMPLES]`` float32 waveform in [-1, 1] at 16 kHz, exactly one 96-frame patch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import config
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


def dft_basis() -> np.ndarray:
    """[400, 514]: periodic-Hann-windowed real and imaginary 512-point DFT basis for bins 0..256."""
    n = np.arange(config.STFT_WINDOW)[:, None]
    k = np.arange(config.FFT_LENGTH // 2 + 1)[None, :]
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(config.STFT_WINDOW) / config.STFT_WINDOW)
    angle = 2 * np.pi * n * k / config.FFT_LENGTH
    basis = np.concatenate([np.cos(angle), -np.sin(angle)], axis=1) * hann[:, None]
    return basis.astype(np.float32)


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
            self._basis = tf.constant(dft_basis())
            self._mel = tf.constant(mel_matrix())
            self._bands = tf.constant(spectral.linear_band_matrix())

        def call(self, waveform):
            frames = tf.signal.frame(waveform, config.STFT_WINDOW, config.STFT_HOP, axis=-1)
            spectrum = tf.tensordot(frames, self._basis, axes=1)  # [..., re(257) | im(257)]
            bins = config.FFT_LENGTH // 2 + 1
            real, imag = spectrum[..., :bins], spectrum[..., bins:]
            power = real * real + imag * imag
            magnitude = tf.sqrt(power)
            mel = tf.tensordot(magnitude, self._mel, axes=1)
            log_mel = tf.math.log(mel + config.LOG_OFFSET)
            if not self.with_bands:
                return log_mel[..., None]
            linear = tf.math.log(tf.tensordot(power, self._bands, axes=1) + spectral.POWER_FLOOR)
            level = tf.reduce_mean(waveform * waveform, axis=-1, keepdims=True)
            level_db = tf.math.log(level + spectral.POWER_FLOOR) * (10.0 / np.log(10.0))
            linear_mean = tf.reduce_mean(linear, axis=-2)
            # fluctuation: the spread over frames of each band's log power (see fanwatch.spectral)
            deviation = linear - linear_mean[..., None, :]
            fluctuation = tf.sqrt(tf.reduce_mean(deviation * deviation, axis=-2))
            bands = tf.concat([tf.reduce_mean(log_mel, axis=-2), linear_mean, level_db, fluctuation], axis=-1)
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
