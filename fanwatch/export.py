"""Keras model -> TFLite file, builtin ops only, float32 or selectively quantized.

Conversion goes through Keras' own export path (``model.export(format="litert")``), which freezes
the variables itself; a hand-made concrete-function conversion of a Keras 3 model can leave them
unfrozen and output NaN.

Quantization ("int8 pointwise"): plain dynamic-range quantization of the whole model ruins YAMNet's
log-mel front end (the mel matrix loses its small weights, and the magnitude spectrum fed to it is
quantized per tensor, so quiet bands fall to the floor). So only the weights where int8 is harmless
are quantized, per output channel, symmetric: the 1x1 pointwise convolutions (95 % of YAMNet's
weights and multiplies), and any other large fully connected layer. The front end, the first 3x3
convolution, the depthwise convolutions, the classifier head and the anomaly score stay float. TFLite then
runs those layers with its hybrid kernels (int8 weights, activations quantized on the fly), exactly as in the published
yamnet.tflite.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from . import config
from .errors import FanwatchError

QUANTIZATIONS = ("float32", "int8-pointwise")
DEFAULT_QUANTIZATION = "int8-pointwise"
MIN_QUANTIZED_ELEMENTS = 4096  # smaller weights stay float: no speed or size to win
# Weights whose tensor names contain these stay float: the log-mel front end; the anomaly score, whose
# Mahalanobis transform amplifies int8 rounding (measured: 27 % relative score error quantized, < 0.1 %
# float); and the classifier head (a 1024 x classes matrix: nothing to win, and int8 moved window
# probabilities by up to 0.1).
FLOAT_MARKS = ("log_mel", "anomaly_score", "head")

# Builtin operator codes (tensorflow/lite/schema/schema.fbs).
_CONV_2D = 3
_FULLY_CONNECTED = 9


def export_tflite(model, path: str | os.PathLike, quantization: str = DEFAULT_QUANTIZATION) -> Path:
    """Write ``model`` (one [1, WINDOW_SAMPLES] float32 input) as a TFLite file; return its path."""
    import tensorflow as tf

    if quantization not in QUANTIZATIONS:
        raise FanwatchError(f"unknown quantization '{quantization}' (choose from {', '.join(QUANTIZATIONS)})")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        float_path = Path(tmp) / "model.tflite"
        model.export(
            str(float_path),
            format="litert",
            verbose=False,
            input_signature=[tf.TensorSpec((1, config.WINDOW_SAMPLES), tf.float32, name="waveform")],
        )
        data = float_path.read_bytes()
    if quantization == "int8-pointwise":
        data = quantize_weights(data)
    check_builtin_only(data)
    tmp_out = path.with_suffix(path.suffix + ".tmp")
    tmp_out.write_bytes(data)
    os.replace(tmp_out, path)
    return path


def _builtin_code(model, op) -> int:
    code = model.operatorCodes[op.opcodeIndex]
    return max(int(code.builtinCode), int(code.deprecatedBuiltinCode))


def _quantize_per_channel(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 along axis 0 (output channels): scale = max|w| / 127, zero point 0."""
    flat = weights.reshape(weights.shape[0], -1).astype(np.float64)
    scale = np.abs(flat).max(axis=1) / 127.0
    scale[scale == 0] = 1.0
    q = np.clip(np.rint(flat / scale[:, None]), -127, 127).astype(np.int8)
    return q.reshape(weights.shape), scale.astype(np.float32)


def quantize_weights(tflite_bytes: bytes) -> bytes:
    """Quantize pointwise-conv and large fully-connected weights per channel; leave the rest float."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(tflite_bytes))
    done = set()
    for graph in model.subgraphs:
        for op in graph.operators:
            kind = _builtin_code(model, op)
            if kind not in (_CONV_2D, _FULLY_CONNECTED) or len(op.inputs) < 2:
                continue
            index = op.inputs[1]
            tensor = graph.tensors[index]
            name = tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name)
            shape = tuple(int(s) for s in tensor.shape)
            if index in done or tensor.type != schema.TensorType.FLOAT32 or any(m in name for m in FLOAT_MARKS):
                continue
            if kind == _CONV_2D and (len(shape) != 4 or shape[1:3] != (1, 1)):
                continue  # only 1x1 (pointwise) convolutions
            if int(np.prod(shape)) < MIN_QUANTIZED_ELEMENTS:
                continue
            buffer = model.buffers[tensor.buffer]
            if buffer.data is None:
                continue  # not a constant
            weights = np.frombuffer(bytes(buffer.data), dtype=np.float32).reshape(shape)
            q, scale = _quantize_per_channel(weights)
            buffer.data = np.frombuffer(q.tobytes(), dtype=np.uint8)
            tensor.type = schema.TensorType.INT8
            params = schema.QuantizationParametersT()
            params.scale = scale.tolist()
            params.zeroPoint = [0] * len(scale)
            params.quantizedDimension = 0
            tensor.quantization = params
            done.add(index)
    if not done:
        raise FanwatchError("quantization found no pointwise or dense weights to quantize")
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def op_counts(tflite_bytes: bytes) -> Counter:
    """Operator names in the file, by count."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(tflite_bytes))
    names = {v: k for k, v in vars(_schema().BuiltinOperator).items() if not k.startswith("_")}
    counts: Counter = Counter()
    for graph in model.subgraphs:
        for op in graph.operators:
            code = model.operatorCodes[op.opcodeIndex]
            kind = _builtin_code(model, op)
            if kind == _schema().BuiltinOperator.CUSTOM:
                custom = code.customCode.decode() if isinstance(code.customCode, bytes) else code.customCode
                counts[f"CUSTOM:{custom}"] += 1
            else:
                counts[names.get(kind, str(kind))] += 1
    return counts


def _schema():
    from tensorflow.lite.python import schema_py_generated as schema

    return schema


def check_builtin_only(tflite_bytes: bytes) -> None:
    """No Flex (select TF) op and no custom op may reach the Pi."""
    bad = [name for name in op_counts(tflite_bytes) if name.startswith("CUSTOM") or "FLEX" in name.upper()]
    if bad:
        raise FanwatchError(f"the converted model needs non-builtin ops {sorted(bad)}; it would not run on the Pi")
