"""The exported model in the Pi runtimes: LiteRT (ai-edge-litert) here, and tflite-runtime 2.14
(older Pis) in a virtual environment of its own (it needs numpy < 2)."""

from __future__ import annotations

import json
import subprocess
import venv

import numpy as np
import pytest

from fanwatch import config, runtime

PROBE = """
import json, sys
import numpy as np
from tflite_runtime.interpreter import Interpreter
interp = Interpreter(model_path=sys.argv[1])
interp.allocate_tensors()
x = np.load(sys.argv[2])
out = interp.get_signature_runner()(waveform=x[None])
print(json.dumps({k: np.asarray(v)[0].tolist() for k, v in out.items()}))
"""


def _window() -> np.ndarray:
    t = np.arange(config.WINDOW_SAMPLES) / config.SAMPLE_RATE
    rng = np.random.default_rng(0)
    return (0.2 * np.sin(2 * np.pi * 180 * t) + 0.05 * rng.standard_normal(len(t))).astype(np.float32)


def _close(a: dict, b: dict, min_cosine: float = 0.9995, score_rtol: float = 0.03) -> None:
    """Runtimes implement the int8 hybrid kernels differently (measured between LiteRT 2.3 and TF 2.21:
    embedding cosine 0.9999, scores 1 % apart; tflite-runtime 2.14: cosine 0.9988); the float32
    export agrees to 1e-6."""
    cos = float(a["embedding"] @ b["embedding"] / np.linalg.norm(a["embedding"]) / np.linalg.norm(b["embedding"]))
    assert cos > min_cosine
    np.testing.assert_allclose(a["anomaly_score"], b["anomaly_score"], rtol=score_rtol)
    np.testing.assert_allclose(a["probabilities"], b["probabilities"], atol=0.05)


def test_litert_and_tensorflow_lite_agree(trained_model):
    path = trained_model / runtime.MODEL_NAME
    _close(
        runtime.TFLiteModel(path, runtime="ai_edge_litert")(_window()),
        runtime.TFLiteModel(path, runtime="tensorflow")(_window()),
    )
    path = trained_model / "sound_classifier_float32.tflite"
    a = runtime.TFLiteModel(path, runtime="ai_edge_litert")(_window())
    b = runtime.TFLiteModel(path, runtime="tensorflow")(_window())
    for key in ("probabilities", "anomaly_score", "embedding"):
        np.testing.assert_allclose(a[key], b[key], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_tflite_runtime_2_14_runs_the_model(trained_model, tmp_path):
    env = tmp_path / "venv"
    venv.create(env, with_pip=True)
    py = env / "bin" / "python"
    subprocess.run([py, "-m", "pip", "install", "-q", "tflite-runtime==2.14.0", "numpy<2"], check=True, timeout=600)
    np.save(tmp_path / "x.npy", _window())
    path = trained_model / runtime.MODEL_NAME
    proc = subprocess.run(
        [py, "-c", PROBE, str(path), str(tmp_path / "x.npy")], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    old = {k: np.asarray(v, np.float32) for k, v in json.loads(proc.stdout.strip().splitlines()[-1]).items()}
    _close(old, runtime.TFLiteModel(path)(_window()), min_cosine=0.998, score_rtol=0.06)
