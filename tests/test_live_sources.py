"""Audio sources (fanwatch/live/sources.py): file replay without soundfile, and real capture through
PortAudio and ALSA from virtual microphones (tests/alsa_virtual.py) at 48 and 44.1 kHz."""

from __future__ import annotations

import io
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from alsa_virtual import VirtualMic, fixed_channel_env, from_pcm16, to_pcm16
from live_common import (
    FAULT_SECONDS,
    INFERENCE,
    NORMAL_SECONDS,
    REPO,
    _classifier,
    check_decisions,
    events,
    kinds,
    live_vs_offline,
    model_path,
    offline,
    one_error_line,
    parse,
    portaudio_available,
    run_cli,
    scenario,
)

from fanwatch import audio, live
from fanwatch.errors import BadAudioError


def test_wav_without_soundfile_uses_the_stdlib_reader(trained_model, tmp_path, monkeypatch):
    """44.1 kHz, 24-bit stereo (mean of the channels), decoded by fanwatch.wavfile: same windows as libsndfile."""
    x = scenario(44100)[: int(44100 * 4.5)]
    stereo = np.stack([x, 0.5 * x], axis=1)
    wav = tmp_path / "stereo24.wav"
    sf.write(wav, stereo, 44100, subtype="PCM_24")
    clf = _classifier(str(model_path(trained_model)))

    def replay():
        records = []
        settings = live.build(path=model_path(trained_model), wav=wav, fast=True, quiet=True)
        live.run(settings, out=io.StringIO(), classifier=clf, install_signals=False, on_record=records.append)
        return kinds(records, "window")

    with_soundfile = replay()
    monkeypatch.setitem(sys.modules, "soundfile", None)  # import soundfile -> ImportError
    without = replay()
    assert len(without) == len(with_soundfile) == audio.n_windows(int(4.5 * 16000))
    assert [w["anomaly"] for w in without] == [w["anomaly"] for w in with_soundfile]
    decoded, _ = sf.read(wav, dtype="float32")  # the model is sensitive to the 24-bit rounding: use the file
    ratios, _ = offline(clf, audio.resample(decoded.mean(axis=1, dtype=np.float32), 44100))
    np.testing.assert_allclose([w["anomaly"] for w in without], ratios, atol=2e-4)
    with pytest.raises(BadAudioError, match="only WAV files"):
        live.WavSource(tmp_path / "x.flac")


def _start_on_mic(mic: VirtualMic, model: Path, *extra) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(INFERENCE), "--model", str(model), "--device", mic.device, "--json", *map(str, extra)],
        cwd=REPO,
        env=mic.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _run_on_mic(mic: VirtualMic, model: Path, *extra, during=None) -> tuple[subprocess.Popen, str, str]:
    """inference.py on the virtual microphone: ``during()`` runs while it listens, then SIGTERM ends it."""
    proc = _start_on_mic(mic, model, *extra)
    try:
        during()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc, out, err


@pytest.mark.skipif(not portaudio_available(), reason="needs sounddevice and libportaudio2")
def test_live_capture_from_virtual_alsa_microphones_at_48k_and_44k1(trained_model, scene, tmp_path):
    model = model_path(trained_model)
    mics, procs = {}, {}
    try:
        for rate in (48000, 44100):
            mics[rate] = VirtualMic(tmp_path / str(rate), scenario(rate), rate).__enter__()
        listing = subprocess.run(
            [sys.executable, str(INFERENCE), "--list-devices"],
            cwd=REPO,
            env=mics[44100].env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert listing.returncode == 0 and "fanwatch_virtual" in listing.stdout, listing.stderr
        for rate, mic in mics.items():  # both devices run at the same time (real-time: ~9 s)
            procs[rate] = _start_on_mic(mic, model, "--threshold-scale", scene["scale"], "--alert-rule", "n-of-m")
        for rate, mic in mics.items():
            assert mic.played.wait(timeout=40), f"{rate} Hz device never played its signal"
        time.sleep(1.0)  # the last samples reach a decision
        outputs = {}
        for proc in procs.values():
            proc.send_signal(signal.SIGTERM)
        for rate, proc in procs.items():
            outputs[rate] = proc.communicate(timeout=15)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
        for mic in mics.values():
            mic.stop()

    clf = _classifier(str(model))
    for rate, (out, err) in outputs.items():
        assert procs[rate].returncode == 0, err
        records = parse(out)
        opened = events(records, "device_opened")
        assert opened and opened[0]["rate"] == rate and opened[0]["device"] == "fanwatch_virtual"
        summary = records[-1]
        assert summary["type"] == "summary" and summary["reason"] == "SIGTERM"
        assert summary["dropped_blocks"] == 0 and summary["device_losses"] == 0
        assert summary["latency_ms_median"] < 500
        windows = kinds(records, "window")
        # The device hands over the exact samples. PortAudio's start-up through ALSA's file plugin adds a
        # period or two in front of them, so the samples are found again shifted by whole periods.
        period = rate // 10
        skip = max(1, clf.scoring().get("horizon_windows", 1))
        best = None
        for k in range(4):
            shifted = np.concatenate([np.zeros(k * period, np.float32), from_pcm16(to_pcm16(scenario(rate)))])
            ratios, _ = offline(clf, audio.resample(shifted, rate))
            # the first window differs (start-up samples, or skipped as padding); the score's horizon carries
            # a segment's start for `skip` windows
            err_k, n = live_vs_offline(windows, ratios / scene["scale"], skip)
            if best is None or err_k < best[0]:
                best = (err_k, k, n)
        assert best[0] < 2e-4, f"{rate} Hz: live windows do not match the offline ones (best {best})"
        assert best[2] >= audio.n_windows(int((NORMAL_SECONDS + FAULT_SECONDS) * 16000)) - 1 - skip
        check_decisions(records, shift=best[1] * 0.1)


@pytest.mark.skipif(not portaudio_available(), reason="needs sounddevice and libportaudio2")
def test_a_stereo_microphone_is_averaged_over_its_real_channels(trained_model, tmp_path):
    """ "mean" opens every channel the device offers (ALSA's plug device offers 128: at most 8 are opened);
    the plug layer pads a stereo signal with silent channels, which are left out, so the live windows are
    those of the two channels' mean -- what training's --channel mean makes of a stereo recording."""
    rate = 48000
    x = scenario(rate)[: int(rate * 7.5)]  # windows beyond the score's horizon (8 windows, 4.5 s)
    stereo = np.stack([x, 0.5 * x], axis=1)
    with VirtualMic(tmp_path, stereo, rate) as mic:

        def until_played():
            assert mic.played.wait(timeout=30), "the device never played its signal"
            time.sleep(1.0)

        proc, out, err = _run_on_mic(mic, model_path(trained_model), during=until_played)
    assert proc.returncode == 0, err
    records = parse(out)
    opened = events(records, "device_opened")[0]
    assert opened["channels"] == live.MAX_MEAN_CHANNELS and opened["device_channels"] >= opened["channels"]
    silent = events(records, "silent_channels")
    assert silent and silent[0]["averaging"] == [0, 1] and silent[0]["channels"] == list(range(2, 8))
    assert events(records, "start")[0]["channel"] == "mean"
    windows = kinds(records, "window")
    pcm = from_pcm16(to_pcm16(stereo)).mean(axis=1, dtype=np.float32)
    clf = _classifier(str(model_path(trained_model)))
    skip = max(1, clf.scoring().get("horizon_windows", 1))  # the score's horizon carries the segment's start
    best = None
    for k in range(4):  # the device may hand over a period or two before the signal (see alsa_virtual)
        ratios, _ = offline(clf, audio.resample(np.concatenate([np.zeros(k * rate // 10, np.float32), pcm]), rate))
        err_k, n = live_vs_offline(windows, ratios, skip)
        best = min(best or (err_k, k, n), (err_k, k, n))
    assert best[0] < 2e-4 and best[2] >= 1, f"live windows are not those of the channels' mean (best {best})"


@pytest.mark.skipif(not portaudio_available(), reason="needs sounddevice and libportaudio2")
def test_a_configuration_that_cannot_work_fails_at_once(trained_model, tmp_path):
    """No such device, a channel or channel count the device does not have, a rate it refuses: one line and
    status 2 instead of retrying forever."""
    model = model_path(trained_model)
    line = one_error_line(run_cli(["--model", model, "--device", 99], timeout=30))
    assert "no input device 99" in line
    env = fixed_channel_env(tmp_path / "fixed", 2)
    line = one_error_line(
        run_cli(["--model", model, "--device", "fanwatch_fixed", "--channel", 5], timeout=30, env=env)
    )
    assert "channel 5 requested" in line and "2 input channel(s)" in line
    line = one_error_line(
        run_cli(["--model", model, "--device", "fanwatch_fixed", "--channels", 4], timeout=30, env=env)
    )
    assert "--channels 4 requested" in line
    with VirtualMic(tmp_path / "mic", scenario(16000)[:16000], 16000) as mic:  # opens, but not at 1 Hz
        line = one_error_line(
            run_cli(["--model", model, "--device", mic.device, "--rate", 1, "--json"], timeout=30, env=mic.env)
        )
    assert "Invalid sample rate" in line


@pytest.mark.slow
@pytest.mark.skipif(not portaudio_available(), reason="needs sounddevice and libportaudio2")
def test_hung_alsa_device_is_reported_lost_and_reopened(trained_model, tmp_path):
    """The virtual microphone stops delivering (its driver blocks): the loop reports the device lost after
    --stall-seconds, reopens it through PortAudio when it can, and keeps deciding."""
    with VirtualMic(tmp_path, scenario(48000), 48000) as mic:

        def hang_for_two_seconds():
            time.sleep(3.0)
            mic.hold.set()
            time.sleep(2.0)
            mic.hold.clear()
            time.sleep(4.0)

        proc, out, err = _run_on_mic(
            mic, model_path(trained_model), "--stall-seconds", 0.5, "--quiet", during=hang_for_two_seconds
        )
    assert proc.returncode == 0, err
    records = parse(out)
    sequence = [e["event"] for e in events(records) if e["event"].startswith("device")]
    assert sequence == ["device_opened", "device_lost", "device_reopened"], sequence
    lost = events(records, "device_lost")[0]
    assert "no audio" in lost["reason"]
    summary = records[-1]
    assert summary["device_losses"] == 1 and summary["reason"] == "SIGTERM"
    assert summary["windows"] >= 5  # decisions before the hang and after the reopen
