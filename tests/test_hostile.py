"""Hostile input (issue 13): every bad file, folder and option ends in one clear line or a counted skip.

The hostile files come from ``tests/hostile.py`` and are written at test time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hostile import tone, write_hostile_files

from fanwatch import audio, datasets, embeddings, wavfile
from fanwatch.errors import BadAudioError, FanwatchError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("hostile")
    return folder, write_hostile_files(folder)


def test_every_hostile_file_is_refused_in_one_line(hostile):
    folder, cases = hostile
    assert len(cases) >= 20
    for name, words in cases.items():
        with pytest.raises(BadAudioError) as info:
            audio.load_audio(folder / name)
        message = str(info.value)
        assert message.startswith(str(folder / name)) and "\n" not in message, message
        for word in words:
            assert word in message, message


def test_header_facts_are_refused_before_decoding(hostile):
    """A 1 Hz header on a 1.5 s file would be resampled to 16000 times its length: refused up front."""
    folder, _ = hostile
    for name, words in (("rate_1hz.wav", "1 Hz"), ("rate_0hz.wav", "0 Hz"), ("channels_65535.wav", "65535")):
        for read in (audio.audio_info, wavfile.read_info):
            with pytest.raises(BadAudioError, match=words):
                read(folder / name)


def test_plausible_extremes_are_still_accepted(tmp_path):
    low = tmp_path / "rate_8k.wav"
    sf.write(low, tone(2.0, 8000), 8000, subtype="PCM_16")
    assert len(audio.load_audio(low)) == 32000
    loud = tmp_path / "overs.wav"
    sf.write(loud, tone(2.0, amp=1.5), 16000, subtype="FLOAT")  # 3.5 dB over full scale: a float file may
    assert np.max(np.abs(audio.load_audio(loud))) > 1.4


@pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX users")
def test_permission_denied_is_said_as_such(tmp_path):
    path = tmp_path / "locked.wav"
    sf.write(path, tone(), 16000, subtype="PCM_16")
    path.chmod(0o000)
    os.chmod(tmp_path, 0o755)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: as an unprivileged user when root (root reads everything)
        try:
            if os.geteuid() == 0:
                os.setuid(65534)
            audio.load_audio(path)
            message = "read it"
        except BaseException as exc:
            message = str(exc)
        os.write(write, message.encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    message = os.read(read, 4096).decode()
    os.close(read)
    assert message.startswith(f"{path}: permission denied (this user may not ") and "\n" not in message


# ---------------------------------------------------------------------------- datasets


def test_symlinked_class_folders_are_followed_and_loops_visited_once(tmp_path):
    elsewhere = tmp_path / "other_disk" / "fan_on"
    elsewhere.mkdir(parents=True)
    for i in range(2):
        sf.write(elsewhere / f"{i}.wav", tone(), 16000)
    data = tmp_path / "data"
    (data / "fan_off").mkdir(parents=True)
    sf.write(data / "fan_off" / "a.wav", tone(), 16000)
    (data / "fan_on").symlink_to(elsewhere, target_is_directory=True)
    (elsewhere / "again").symlink_to(elsewhere, target_is_directory=True)  # a loop
    recs = datasets.scan(data)
    assert sorted(r.label for r in recs) == ["fan_off", "fan_on", "fan_on"]
    assert datasets.has_audio_files(data)


def test_a_dcase_test_folder_itself_is_understood(tmp_path):
    test = tmp_path / "dev_data" / "fan" / "test"
    test.mkdir(parents=True)
    for name in ("normal_id_00_00000000.wav", "anomaly_id_00_00000001.wav", "normal_id_02_00000000.wav"):
        sf.write(test / name, tone(), 16000)
    recs, layout = datasets.scan_dataset(test)
    assert layout == "dcase"
    assert [(r.label, r.machine, r.subset, r.normal) for r in recs] == [
        ("fan_anomaly", "fan/id_00", "test", False),
        ("fan_normal", "fan/id_00", "test", True),
        ("fan_normal", "fan/id_02", "test", True),
    ]


@pytest.mark.parametrize("kind", ["dcase", "mimii"])
def test_machine_folders_beside_other_folders_are_not_taken_as_classes(tmp_path, kind):
    data = tmp_path / "data"
    if kind == "dcase":
        for sub, name in (("train", "normal_id_00_00000000.wav"), ("test", "anomaly_id_00_00000000.wav")):
            (data / "propeller" / sub).mkdir(parents=True)
            sf.write(data / "propeller" / sub / name, tone(), 16000)
    else:
        for state in ("normal", "abnormal"):
            (data / "propeller" / "id_00" / state).mkdir(parents=True)
            sf.write(data / "propeller" / "id_00" / state / "00000000.wav", tone(), 16000)
    (data / "states" / "on").mkdir(parents=True)
    sf.write(data / "states" / "on" / "a.wav", tone(), 16000)
    with pytest.raises(FanwatchError) as info:
        datasets.scan_dataset(data)
    message = str(info.value)
    assert "propeller/ is a" in message and ("DCASE" in message if kind == "dcase" else "MIMII" in message)
    assert "states/" in message and "\n" not in message
    recs, layout = datasets.scan_dataset(data, layout="folders")  # said explicitly: allowed
    assert layout == "folders" and {r.label for r in recs} == {"propeller", "states"}


def test_missing_data_folder_is_one_line(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "train.py"),
            "--data",
            str(tmp_path / "nonexistent"),
            "--out",
            str(tmp_path / "out"),
        ],
        check=False,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "folder not found" in lines[0], proc.stderr
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------- embeddings (the cache key)


def test_embedding_skips_every_hostile_file_without_hanging(hostile, yamnet_path, cache_dir):
    """The cache key hashed a named pipe (blocks forever) or /dev/zero (never ends) before any check."""
    folder, cases = hostile
    ex, _ = embeddings.make_extractor(yamnet_path, cache_dir=cache_dir, workers=1)
    good = folder.parent / "good.wav"
    sf.write(good, tone(2.0), 16000, subtype="PCM_16")
    recs = [datasets.Recording(folder / name, "x", "default", True) for name in sorted(cases)]
    recs.append(datasets.Recording(good, "x", "default", True))
    es = ex.embed_recordings(recs, progress=False)
    assert [r.path for r in es.recordings] == [good]
    assert np.isfinite(es.embeddings).all() and len(es.embeddings) == audio.n_windows(32000)
    reasons = dict(es.skipped)
    assert sorted(reasons) == sorted(str(folder / n) for n in cases)
    for name, words in cases.items():
        assert all(w in reasons[str(folder / name)] for w in words), reasons[str(folder / name)]


# ---------------------------------------------------------------------------- model outputs and log noise


def test_non_finite_model_outputs_skip_the_file_in_evaluation(tmp_path):
    from fanwatch import evaluation, runtime

    class NaNModel:  # stands in for a damaged model: the real runtimes cannot be made to output NaN on demand
        labels, machines, card, runtime, sha256 = ["a", "b"], ["default"], None, "stub", None

        def predict(self, window):
            return runtime.Prediction(np.array([np.nan, 0.5], np.float32), np.array([0.1], np.float32))

        def anomaly(self, scores):
            return 0, float(scores[0])

        def anomaly_stream(self, hop_s=None):
            return runtime.StatelessAnomaly(self)

    wav = tmp_path / "ok.wav"
    sf.write(wav, tone(2.0), 16000, subtype="PCM_16")
    probs, scores, reason = evaluation._file_outputs(NaNModel(), str(wav), "mean")
    assert probs is None and scores is None and reason == "the model's outputs are NaN or infinite for this audio"


def test_loading_a_model_prints_no_runtime_noise(yamnet_path, cache_dir):
    frontend, _ = embeddings.ensure_frontend(yamnet_path, cache_dir=cache_dir)
    code = (
        "import sys; from fanwatch import runtime\n"
        "m = runtime.TFLiteModel(sys.argv[1]); print('loaded', m.runtime)\n"
        "print('kept', file=sys.stderr)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(frontend)], check=False, capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert proc.returncode == 0 and proc.stdout.startswith("loaded"), proc.stderr
    assert "XNNPACK" not in proc.stderr and "cuInit" not in proc.stderr
    assert proc.stderr.strip() == "kept"


# ---------------------------------------------------------------------------- train.py outputs


def test_a_failed_run_leaves_the_previous_model_untouched(trained_model, tmp_path, yamnet_path, cache_dir):
    import shutil

    from fanwatch import training

    out = tmp_path / "artifacts"
    shutil.copytree(trained_model, out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    bad_data = tmp_path / "bad_data"
    for cls in ("on", "off"):  # every file unusable
        write_hostile_files(bad_data / cls, special=False)
    with pytest.raises(FanwatchError, match="no usable recordings for training"):
        training.train(
            training.TrainSettings(
                data=bad_data, out=out, yamnet=str(yamnet_path), cache=str(cache_dir), progress=False, workers=1
            )
        )
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert after == before  # split.json included: it still matches the model
    assert not [p for p in out.iterdir() if p.name.startswith(".train-partial")]


def test_unusable_out_and_cache_folders_fail_before_any_work(tmp_path, synthetic_data):
    from fanwatch import training

    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    for kwargs, words in (
        ({"out": a_file}, "--out"),
        ({"out": a_file / "sub"}, "--out"),
        ({"out": tmp_path / "o", "cache": str(a_file)}, "--cache"),
    ):
        kwargs.setdefault("cache", str(tmp_path / "cache"))
        with pytest.raises(FanwatchError) as info:
            training.train(training.TrainSettings(data=synthetic_data, progress=False, **kwargs))
        assert words in str(info.value) and "\n" not in str(info.value), str(info.value)
    proc = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "--data", str(synthetic_data), "--out", str(a_file)],
        check=False,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: --out {a_file}: is a file, not a folder"


# ---------------------------------------------------------------------------- evaluate_model.py side files


def _model_copy(trained_model: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(trained_model, dest, ignore=shutil.ignore_patterns("evaluation", ".*"))
    return dest / "sound_classifier.tflite"


def _two_files(synthetic_data: Path, dest: Path) -> Path:
    import shutil

    for cls in ("off", "fault_bearing"):
        (dest / cls).mkdir(parents=True)
        for f in sorted((synthetic_data / cls).glob("*.wav"))[:1]:
            shutil.copy(f, dest / cls / f.name)
    return dest


@pytest.mark.parametrize("damage", ["npz_random_bytes", "npz_pickle", "keras_corrupt", "npz_wrong_shape"])
def test_damaged_side_files_are_a_note_before_the_work(trained_model, synthetic_data, tmp_path, capsys, damage):
    import pickle

    from fanwatch import evaluation

    model = _model_copy(trained_model, tmp_path / "model")
    if damage == "npz_random_bytes":
        (model.parent / "anomaly_model.npz").write_bytes(np.random.default_rng(0).bytes(5000))
    elif damage == "npz_pickle":
        (model.parent / "anomaly_model.npz").write_bytes(pickle.dumps({"bank": [1, 2, 3]}))
    elif damage == "npz_wrong_shape":
        np.savez(
            model.parent / "anomaly_model.npz",
            method="knn",
            machines=np.asarray(["default"]),
            bank=np.zeros((1, 4, 7), np.float32),
        )
    else:
        keras_file = model.parent / "sound_classifier_head.keras"
        keras_file.write_bytes(keras_file.read_bytes()[:300])
    out = tmp_path / "eval"
    m = evaluation.evaluate(
        evaluation.EvalSettings(
            model=model, data=_two_files(synthetic_data, tmp_path / "d"), out=out, progress=False, workers=1
        )
    )
    console = capsys.readouterr().out
    name = "sound_classifier_head.keras" if damage.startswith("keras") else "anomaly_model.npz"
    note = next(n for n in m["notes"] if n.startswith("parity check skipped"))
    assert name in note and "\n" not in note
    assert console.index(note) < console.index("evaluating ")  # said before the work, not after it
    assert m["parity"] is None and m["files"] == 2
    assert json.loads((out / "metrics.json").read_text())["notes"] == m["notes"]


def test_a_vanished_training_file_does_not_block_the_test_split(trained_model, tmp_path):
    from fanwatch import evaluation

    model = _model_copy(trained_model, tmp_path / "model")
    split_path = model.parent / "split.json"
    split = json.loads(split_path.read_text())
    split["splits"]["train"].append({**split["splits"]["train"][0], "path": "/nonexistent/vanished.wav"})
    split_path.write_text(json.dumps(split))
    m = evaluation.evaluate(
        evaluation.EvalSettings(model=model, out=tmp_path / "eval", progress=False, parity=False, workers=1)
    )
    assert m["files"] == len(split["splits"]["test"]) and not m["skipped"]


def test_unusable_evaluation_out_is_one_line(trained_model, tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    for option in ("--out", "--cache"):
        proc = subprocess.run(
            [
                sys.executable,
                str(REPO / "evaluate_model.py"),
                "--model",
                str(trained_model / "sound_classifier.tflite"),
                option,
                str(a_file),
            ],
            check=False,
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=300,
        )
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip() == f"error: {option} {a_file}: is a file, not a folder"


# ---------------------------------------------------------------------------- the live loop


def _inference(*args, env=None, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "inference.py"), *map(str, args)],
        check=False,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=timeout,
        env=env,
    )


def _records(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


@pytest.mark.parametrize(
    "name, words",
    [
        ("all_nan.wav", "NaN or infinite"),
        ("all_zero.wav", "digital silence"),
        ("cancelling.wav", "cancel out"),
        ("constant.wav", "constant"),
        ("huge_1e18.wav", "far outside"),
        ("too_short.wav", "too short"),
    ],
)
def test_wav_replay_of_unusable_audio_is_reported_never_a_state_or_alert(trained_model, tmp_path, name, words):
    """Replayed files are not checked like training's loader (the live loop listens to what comes): what
    cannot be judged is an input fault, and a file that gave no window at all ends in one line."""
    write_hostile_files(tmp_path, special=False)
    proc = _inference(
        "--model", trained_model / "sound_classifier.tflite", "--wav", tmp_path / name, "--fast", "--json"
    )
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert errors[0].startswith(f"error: {tmp_path / name}: no window could be analysed: ") and words in errors[0]
    records = _records(proc.stdout)
    assert not [r for r in records if r["type"] == "window"]
    assert not [r for r in records if r.get("event", "").startswith(("alert", "state"))]
    summary = records[-1]
    assert summary["type"] == "summary" and summary["windows"] == 0 and summary["alerts"] == 0
    if name != "too_short.wav":
        faults = [r for r in records if r.get("event") == "input_fault"]
        assert faults and words in faults[0]["reason"] and summary["input_faults"] == 1


def test_a_silent_stretch_inside_a_recording_is_a_fault_then_ok(trained_model, tmp_path):
    from fanwatch import synth

    x = synth.render("high_speed", 3.0, 7, sample_rate=16000)
    wav = tmp_path / "dropout.wav"
    sf.write(wav, np.concatenate([x, np.zeros(3 * 16000, np.float32), x]), 16000, subtype="FLOAT")
    proc = _inference("--model", trained_model / "sound_classifier.tflite", "--wav", wav, "--fast", "--json")
    assert proc.returncode == 0, proc.stderr
    records = _records(proc.stdout)
    windows = [r for r in records if r["type"] == "window"]
    fault = next(r for r in records if r.get("event") == "input_fault")
    ok = next(r for r in records if r.get("event") == "input_ok")
    assert "digital silence" in fault["reason"] and fault["t"] < ok["t"]
    assert not [w for w in windows if fault["t"] <= w["t"] < ok["t"]]  # nothing decided on silence
    assert [w for w in windows if w["t"] < fault["t"]] and [w for w in windows if w["t"] >= ok["t"]]
    summary = records[-1]
    assert summary["input_faults"] == 1 and 2.0 <= summary["input_fault_seconds"] <= 4.5
    assert all(np.isfinite(w["anomaly"]) for w in windows)
    text = _inference("--model", trained_model / "sound_classifier.tflite", "--wav", wav, "--fast", "--quiet")
    assert "INPUT FAULT" in text.stdout and "not a machine state" in text.stdout, text.stdout


def test_a_hop_beyond_ten_seconds_is_refused(trained_model, tmp_path):
    wav = tmp_path / "ok.wav"
    sf.write(wav, tone(2.0), 16000)
    proc = _inference("--model", trained_model / "sound_classifier.tflite", "--wav", wav, "--hop", "1e9")
    assert proc.returncode == 2 and "--hop 1e+09 s is longer than 10 s" in proc.stderr, proc.stderr


def test_a_live_microphone_delivering_silence_or_a_constant_is_a_monitor_fault(trained_model, tmp_path):
    """Through PortAudio from the virtual ALSA microphone: sound, then a constant, then (after the signal) the
    digital silence a dead microphone gives. Faults are events, no window is decided on them, no alert."""
    import signal
    import time

    from live_common import portaudio_available

    if not portaudio_available():
        pytest.skip("needs sounddevice and libportaudio2")
    from alsa_virtual import VirtualMic

    rate = 48000
    from fanwatch import synth

    sound = synth.render("high_speed", 2.5, 11, sample_rate=rate)
    signal_in = np.concatenate([sound, np.full(int(2.5 * rate), 0.25, np.float32)])
    with VirtualMic(tmp_path, signal_in, rate) as mic:
        proc = subprocess.Popen(
            [
                sys.executable,
                str(REPO / "inference.py"),
                "--model",
                str(trained_model / "sound_classifier.tflite"),
                "--device",
                mic.device,
                "--json",
            ],
            cwd=REPO,
            env=mic.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert mic.played.wait(timeout=40), "the device never played its signal"
            time.sleep(2.5)  # silence after the signal
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=15)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, err
    records = _records(out)
    faults = [r for r in records if r.get("event") == "input_fault"]
    reasons = [f["reason"] for f in faults]
    assert any("constant" in r for r in reasons) and any("digital silence" in r for r in reasons), reasons
    windows = [r for r in records if r["type"] == "window"]
    assert windows and all(w["t"] < faults[0]["t"] + 1.0 for w in windows)  # none decided after the fault began
    assert records[-1]["type"] == "summary" and records[-1]["input_faults"] >= 1
