"""Shared fixtures: the real YAMNet weights, a seeded synthetic fan dataset, and a model trained on it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FANWATCH_SHARED") or REPO.parent / "shared")  # read-only data beside the clone
REALDATA = SHARED / "realdata"


def needs(*paths: Path) -> pytest.MarkDecorator:
    """Skip, saying why, a test that reads files from ../shared (real recordings, reference models) when
    they are not there; CI has them (.ci/run)."""
    missing = [str(p) for p in paths if not p.exists()]
    return pytest.mark.skipif(bool(missing), reason=f"needs {', '.join(missing)} (../shared beside the clone)")


needs_realdata = needs(REALDATA)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) of a real PNG file; fails the test if it is not one."""
    import struct

    head = Path(path).read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert head[12:16] == b"IHDR"
    width, height = struct.unpack(">II", head[16:24])
    from PIL import Image

    with Image.open(path) as img:
        img.verify()
    return width, height


def _yamnet() -> Path:
    from fanwatch import config

    env = os.environ.get(config.YAMNET_ENV)
    candidates = [Path(env)] if env else []
    candidates += [config.DEFAULT_YAMNET, SHARED / "yamnet" / "yamnet.tflite"]
    for c in candidates:
        if c.is_file():
            return c.resolve()
    pytest.fail(
        f"the tests need the real YAMNet weights: set {config.YAMNET_ENV} or put them at "
        f"models/yamnet.tflite (tried {', '.join(map(str, candidates))})"
    )


@pytest.fixture(scope="session")
def yamnet_path() -> Path:
    path = _yamnet()
    os.environ["FANWATCH_YAMNET"] = str(path)  # subprocesses (CLI tests) see the same weights
    return path


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cache")
    os.environ["FANWATCH_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def yamnet_weights(yamnet_path):
    from fanwatch import yamnet

    return yamnet.load_weights(yamnet_path)


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> Path:
    """A small seeded fan dataset in the folder-per-class layout (3 states, 4 faults)."""
    from fanwatch import synth

    root = tmp_path_factory.mktemp("synthetic") / "data"
    synth.generate_dataset(
        root, layout="folders", seed=0, seconds=4.0, files_per_state=12, files_per_fault=6, progress=False
    )
    return root


@pytest.fixture(scope="session")
def trained_model(synthetic_data, yamnet_path, cache_dir, tmp_path_factory) -> Path:
    """The artifacts folder of a model trained on ``synthetic_data`` (sound_classifier.tflite + card)."""
    from fanwatch import training

    out = tmp_path_factory.mktemp("artifacts")
    training.train(
        training.TrainSettings(
            data=synthetic_data, out=out, yamnet=str(yamnet_path), cache=str(cache_dir), seed=0, progress=False
        )
    )
    return out


@pytest.fixture(scope="module")
def scene(trained_model, tmp_path_factory):
    """How the fixture model sees the scenario offline, and the --threshold-scale that makes its anomaly
    decision separate normal from faulty windows (1.0, the default, whenever the model allows).

    The model is retrained per session by code that other parts of the project keep improving, so its
    raw scores move; what is checked here is the model, so that the loop tests check the loop."""
    import live_common
    import numpy as np
    import soundfile as sf

    from fanwatch import config
    from fanwatch.audio import load_audio

    clf = live_common._classifier(str(live_common.model_path(trained_model)))
    wav = tmp_path_factory.mktemp("scene") / "scene.wav"
    sf.write(wav, live_common.scenario(), live_common.SCENARIO_RATE, subtype="PCM_16")
    # exactly the samples the loop will decode: the int8 model moves by ~2 % under 1-LSB changes
    ratios, labels = live_common.offline(clf, load_audio(wav))
    t_end = live_common.window_ends(len(ratios))
    normal = ratios[t_end <= live_common.SPLICE]
    fault = ratios[t_end - config.WINDOW_SECONDS >= live_common.SPLICE]
    low, high = float(normal.max()), float(np.percentile(fault, 25))
    if low < 0.8 and high > 1.25:
        scale = 1.0
    else:
        assert high > 1.3 * low, (
            f"model quality, not the loop: the fixture model does not separate the scenario's normal windows "
            f"(max ratio {low:.2f}) from its imbalance windows (25th percentile {high:.2f})"
        )
        scale = round(float(np.sqrt(low * high)), 4)
    decisions = live_common.reference_events(labels, ratios / scale >= 1.0, t_end)
    live_common.check_scenario(
        decisions,
        what=f"model quality, not the loop (threshold scale {scale}, "
        f"ratios {np.round(ratios, 2).tolist()}, labels {labels})",
    )
    return {"scale": scale, "ratios": ratios, "labels": labels, "wav": wav}
