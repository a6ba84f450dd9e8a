"""The exported front end: builtin ops only, no NaN, float == Keras, selective int8 close to float."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import REALDATA

from fanwatch import audio, config, export, runtime, yamnet


@pytest.fixture(scope="module")
def frontends(yamnet_weights, tmp_path_factory):
    model = yamnet.build_model(yamnet_weights, with_scores=False)
    folder = tmp_path_factory.mktemp("frontends")
    paths = {q: export.export_tflite(model, folder / f"{q}.tflite", q) for q in export.QUANTIZATIONS}
    return model, paths


@pytest.fixture(scope="module")
def windows():
    if not REALDATA.is_dir():
        pytest.skip(f"needs {REALDATA} (../shared beside the clone)")
    fan = audio.frame_windows(audio.load_audio(REALDATA / "dcase2020_id00/train/normal_id_00_00000005.wav"))
    valve = audio.frame_windows(audio.load_audio(REALDATA / "mimii_8ch/valve_id06_abn_00000008.wav"))
    rng = np.random.default_rng(0)
    noise = (0.2 * rng.standard_normal((2, config.WINDOW_SAMPLES))).astype(np.float32)
    return np.concatenate([fan[::4], valve[::4], noise])


def _cos(a, b):
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def test_builtin_ops_only(frontends):
    _, paths = frontends
    for path in paths.values():
        ops = export.op_counts(path.read_bytes())
        assert not [o for o in ops if o.startswith("CUSTOM") or "FLEX" in o]
        # FFT first and second stage, mel
        assert ops["CONV_2D"] == 14 and ops["DEPTHWISE_CONV_2D"] == 13 and ops["FULLY_CONNECTED"] == 3


def test_float_export_matches_keras_and_has_no_nan(frontends, windows):
    model, paths = frontends
    tfl = runtime.TFLiteModel(paths["float32"])
    got = np.stack([tfl(w)["embedding"] for w in windows])
    want = model(windows)["embedding"].numpy()
    assert np.isfinite(got).all()
    assert np.abs(got - want).max() < 1e-4 * max(1.0, np.abs(want).max())


def test_quantized_is_close_to_float_and_smaller(frontends, windows):
    _, paths = frontends
    f, q = runtime.TFLiteModel(paths["float32"]), runtime.TFLiteModel(paths["int8-pointwise"])
    ef = np.stack([f(w)["embedding"] for w in windows])
    eq = np.stack([q(w)["embedding"] for w in windows])
    assert np.isfinite(eq).all()
    assert _cos(ef, eq).min() >= 0.999
    assert paths["int8-pointwise"].stat().st_size < 0.35 * paths["float32"].stat().st_size


def test_only_pointwise_weights_are_quantized(frontends):
    from tensorflow.lite.tools import flatbuffer_utils

    _, paths = frontends
    model = flatbuffer_utils.read_model(str(paths["int8-pointwise"]))
    graph = model.subgraphs[0]
    int8 = [
        graph.tensors[op.inputs[1]]
        for op in graph.operators
        if len(op.inputs) > 1 and graph.tensors[op.inputs[1]].type == 9
    ]  # INT8
    # every pointwise convolution but the first (64x32: too small to matter), nothing else
    assert len(int8) == 12
    assert all(tuple(t.shape[1:3]) == (1, 1) for t in int8)
    assert all(len(t.quantization.scale) == t.shape[0] for t in int8)  # per output channel


def test_keras_export_path_leaves_no_nan_for_nested_models(yamnet_weights, tmp_path):
    """A Keras 3 model nested in another (as the end-to-end model is) exports with frozen weights."""
    import keras

    inner = yamnet.build_model(yamnet_weights, with_scores=False, name="inner")
    x = keras.Input((config.WINDOW_SAMPLES,), name="waveform")
    outer = keras.Model(x, {"embedding": inner(x)["embedding"]})
    path = export.export_tflite(outer, tmp_path / "nested.tflite", "float32")
    out = runtime.TFLiteModel(path)(np.full(config.WINDOW_SAMPLES, 0.01, np.float32))["embedding"]
    assert np.isfinite(out).all() and np.abs(out).max() > 0


def test_band_levels_output_is_the_numpy_reference(yamnet_weights, windows, tmp_path):
    """The deployed front end's band_levels (mean log-mel, linear band levels, level, fluctuation) against
    fanwatch.spectral's float64 replica: what the scorer's references were fitted on is what the Pi computes."""
    from fanwatch import spectral

    model = yamnet.build_model(yamnet_weights, with_scores=False, with_bands=True)
    path = export.export_tflite(model, tmp_path / "bands.tflite", export.DEFAULT_QUANTIZATION)
    tfl = runtime.TFLiteModel(path)
    got = np.stack([tfl(w)[spectral.OUTPUT_NAME] for w in windows]).reshape(len(windows), -1)
    want = spectral.reference(windows, yamnet.mel_matrix())
    assert got.shape == want.shape == (len(windows), spectral.BAND_FEATURES)
    for part in (spectral.MEL_SLICE, spectral.LINEAR_SLICE, spectral.FLUCTUATION_SLICE, spectral.MODULATION_SLICE):
        assert np.abs(got[:, part] - want[:, part]).max() < 2e-3, part
    assert np.abs(got[:, spectral.LEVEL_INDEX] - want[:, spectral.LEVEL_INDEX]).max() < 1e-3
    assert (got[:, spectral.FLUCTUATION_SLICE] > 0).all()
