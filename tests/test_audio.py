"""fanwatch.audio: real files written with soundfile, real decoding, real resampling."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import REALDATA, needs_realdata

from fanwatch import audio
from fanwatch.audio import (
    AUDIO_EXTENSIONS,
    StreamResampler,
    audio_info,
    frame_windows,
    is_audio_file,
    load_audio,
    parse_channel,
    resample,
)
from fanwatch.config import HOP_SAMPLES, SAMPLE_RATE, WINDOW_SAMPLES
from fanwatch.errors import BadAudioError, FanwatchError

MIMII_FAN = REALDATA / "mimii_8ch" / "fan.00.normal.00000000.wav"
DCASE_CLIP = REALDATA / "dcase2020_id00" / "train" / "normal_id_00_00000000.wav"


def tone(freq, rate, seconds=1.5, amp=0.5, phase=0.0):
    t = np.arange(int(round(seconds * rate))) / rate
    return (amp * np.sin(2 * np.pi * freq * t + phase)).astype(np.float32)


def peak_hz(x, rate=SAMPLE_RATE):
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return np.fft.rfftfreq(len(x), 1.0 / rate)[int(np.argmax(spec))]


def expect_bad(path, *words, **kwargs):
    with pytest.raises(BadAudioError) as info:
        load_audio(path, **kwargs)
    message = str(info.value)
    assert str(path) in message
    assert "\n" not in message
    for word in words:
        assert word in message, message
    return message


# ---------------------------------------------------------------------------- decoding formats


@pytest.mark.parametrize(
    "subtype, tol",
    [("PCM_16", 2.0 / 32768), ("PCM_24", 2.0 / 2**23), ("PCM_32", 1e-6), ("FLOAT", 0.0)],
)
def test_pcm_and_float_subtypes_decode_exactly(tmp_path, subtype, tol):
    x = tone(440.0, SAMPLE_RATE)
    path = tmp_path / f"tone_{subtype}.wav"
    sf.write(path, x, SAMPLE_RATE, subtype=subtype)
    y = load_audio(path)
    assert y.dtype == np.float32 and y.ndim == 1 and y.shape == x.shape
    assert np.max(np.abs(y - x)) <= tol + 1e-7
    info = audio_info(path)
    assert info["subtype"] == subtype and info["rate"] == SAMPLE_RATE and info["channels"] == 1
    assert info["frames"] == len(x)


@pytest.mark.parametrize("rate", [44100, 48000, 22050])
def test_other_rates_are_resampled_and_keep_frequency(tmp_path, rate):
    path = tmp_path / f"tone_{rate}.wav"
    sf.write(path, tone(1000.0, rate, seconds=2.0), rate, subtype="PCM_16")
    y = load_audio(path)
    assert y.dtype == np.float32
    assert abs(len(y) - 2 * SAMPLE_RATE) <= 2
    assert abs(peak_hz(y) - 1000.0) <= 1.0
    assert 0.45 < np.sqrt(2 * np.mean(y[1000:-1000] ** 2)) < 0.55  # amplitude kept


def test_stereo_mean_and_channel_pick(tmp_path):
    left, right = tone(300.0, SAMPLE_RATE), tone(1200.0, SAMPLE_RATE, amp=0.25)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), SAMPLE_RATE, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(path), (left + right) / 2, atol=1e-6)
    np.testing.assert_allclose(load_audio(path, channel="mean"), (left + right) / 2, atol=1e-6)
    np.testing.assert_array_equal(load_audio(path, channel=0), left)
    np.testing.assert_array_equal(load_audio(path, channel=1), right)
    expect_bad(path, "channel 2", "2 channel", channel=2)


def test_eight_channels_at_48k(tmp_path):
    rate = 48000
    chans = np.stack([tone(200.0 * (k + 1), rate, amp=0.1) for k in range(8)], axis=1)
    path = tmp_path / "array.wav"
    sf.write(path, chans, rate, subtype="PCM_24")
    assert audio_info(path)["channels"] == 8
    five = load_audio(path, channel=5)
    assert abs(peak_hz(five) - 1200.0) <= 1.0
    mixed = load_audio(path, channel="mean")
    expected = resample(chans.mean(axis=1).astype(np.float32), rate)
    np.testing.assert_allclose(mixed, expected, atol=1e-4)
    expect_bad(path, "8 channel", channel=8)


def test_flac_and_ogg(tmp_path):
    x = tone(500.0, 22050)
    flac = tmp_path / "tone.FLAC"
    sf.write(flac, x, 22050, format="FLAC", subtype="PCM_16")
    y = load_audio(flac)
    assert abs(peak_hz(y) - 500.0) <= 1.0 and abs(len(y) - 1.5 * SAMPLE_RATE) <= 2
    assert audio_info(flac)["format"] == "FLAC"
    if "OGG" in sf.available_formats():
        ogg = tmp_path / "tone.ogg"
        sf.write(ogg, x, 22050, format="OGG", subtype="VORBIS")
        assert abs(peak_hz(load_audio(ogg)) - 500.0) <= 1.0


@needs_realdata
def test_real_mimii_wave_format_extensible():
    info = audio_info(MIMII_FAN)
    assert info == {
        "rate": 16000,
        "channels": 8,
        "frames": 160000,
        "duration": 10.0,
        "subtype": "PCM_16",
        "format": "WAVEX",
    }
    mean = load_audio(MIMII_FAN)
    ch7 = load_audio(MIMII_FAN, channel=7)
    assert mean.shape == ch7.shape == (160000,)
    assert mean.dtype == np.float32 and np.isfinite(mean).all()
    raw, _ = sf.read(MIMII_FAN, dtype="float32")
    np.testing.assert_array_equal(ch7, raw[:, 7])
    np.testing.assert_allclose(mean, raw.mean(axis=1), atol=1e-6)
    assert frame_windows(mean).shape == (1 + (160000 - WINDOW_SAMPLES) // HOP_SAMPLES, WINDOW_SAMPLES)


@needs_realdata
def test_real_dcase_clip():
    x = load_audio(DCASE_CLIP)
    assert x.shape == (160000,) and x.dtype == np.float32
    assert np.array_equal(x, load_audio(DCASE_CLIP, channel=0))


# ---------------------------------------------------------------------------- bad files


def test_missing_and_empty(tmp_path):
    expect_bad(tmp_path / "nope.wav", "not found")
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    expect_bad(empty, "empty")
    expect_bad(tmp_path, "not a regular file")
    for path in (tmp_path / "nope.wav", empty):
        with pytest.raises(BadAudioError, match="nope|empty"):
            audio_info(path)


def test_not_audio_and_truncated_header(tmp_path):
    text = tmp_path / "notes.wav"
    text.write_text("this is a text file renamed to .wav\n" * 20)
    expect_bad(text, "not a readable audio file")
    good = tmp_path / "good.wav"
    sf.write(good, tone(440.0, SAMPLE_RATE), SAMPLE_RATE, subtype="PCM_16")
    cut = tmp_path / "cut_header.wav"
    cut.write_bytes(good.read_bytes()[:30])
    expect_bad(cut, "not a readable audio file")
    for path in (text, cut):
        with pytest.raises(BadAudioError, match="not a readable audio file"):
            audio_info(path)


def test_header_without_samples(tmp_path):
    good = tmp_path / "good.wav"
    sf.write(good, tone(440.0, SAMPLE_RATE), SAMPLE_RATE, subtype="PCM_16")
    hollow = tmp_path / "hollow.wav"
    hollow.write_bytes(good.read_bytes()[:44])
    expect_bad(hollow, "no audio samples")
    with pytest.raises(BadAudioError, match="no audio samples"):
        audio_info(hollow)


def test_truncated_data_chunk(tmp_path):
    good = tmp_path / "good.wav"
    x = tone(440.0, SAMPLE_RATE, seconds=2.0)
    sf.write(good, x, SAMPLE_RATE, subtype="PCM_16")
    data = good.read_bytes()
    long_cut = tmp_path / "long_cut.wav"
    long_cut.write_bytes(data[: 44 + 2 * 20000 + 1])  # 1.25 s left, odd byte count
    y = load_audio(long_cut)
    assert len(y) == 20000
    np.testing.assert_allclose(y, x[:20000], atol=2.0 / 32768)
    short_cut = tmp_path / "short_cut.wav"
    short_cut.write_bytes(data[: 44 + 2 * 8000])
    expect_bad(short_cut, "too short", "0.500 s", "0.975 s")


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_non_finite_float_samples(tmp_path, bad_value):
    x = tone(440.0, SAMPLE_RATE)
    x[1234] = bad_value
    path = tmp_path / "nonfinite.wav"
    sf.write(path, x, SAMPLE_RATE, subtype="FLOAT")
    expect_bad(path, "NaN or infinite")


def test_digital_silence(tmp_path):
    path = tmp_path / "silence.wav"
    sf.write(path, np.zeros(SAMPLE_RATE * 2, np.float32), SAMPLE_RATE, subtype="PCM_16")
    expect_bad(path, "all samples are zero")
    stereo = tmp_path / "one_dead_channel.wav"
    sig = tone(440.0, SAMPLE_RATE)
    sf.write(stereo, np.stack([sig, np.zeros_like(sig)], axis=1), SAMPLE_RATE, subtype="PCM_16")
    assert np.any(load_audio(stereo))
    expect_bad(stereo, "zero in channel 1", channel=1)
    cancel = tmp_path / "cancel.wav"
    sf.write(cancel, np.stack([sig, -sig], axis=1), SAMPLE_RATE, subtype="FLOAT")
    expect_bad(cancel, "cancel out")


def test_too_short_after_resampling(tmp_path):
    rate = 44100
    path = tmp_path / "short.wav"
    sf.write(path, tone(440.0, rate, seconds=0.9), rate, subtype="PCM_16")
    expect_bad(path, "too short", "0.900 s", "0.975 s")
    ok = tmp_path / "just_enough.wav"
    sf.write(ok, tone(440.0, rate, seconds=1.0), rate, subtype="PCM_16")
    assert len(load_audio(ok)) >= WINDOW_SAMPLES


def test_channel_setting_validation():
    assert parse_channel("mean") == "mean" and parse_channel(" MEAN ") == "mean"
    assert parse_channel(3) == 3 and parse_channel("3") == 3 and parse_channel(np.int64(2)) == 2
    for bad in ("left", -1, 1.5, True, None, "-1"):
        with pytest.raises(FanwatchError, match="channel"):
            parse_channel(bad)


# ---------------------------------------------------------------------------- resampling


@pytest.mark.parametrize("rate_in", [44100, 48000, 22050, 8000])
def test_resample_keeps_tone_frequency(rate_in):
    freq = 2500.0 if rate_in > 8000 else 1500.0
    y = resample(tone(freq, rate_in, seconds=2.0), rate_in)
    assert y.dtype == np.float32 and abs(len(y) - 2 * SAMPLE_RATE) <= 1
    assert abs(peak_hz(y) - freq) <= 1.0


def test_resample_passthrough_is_no_copy():
    x = tone(440.0, SAMPLE_RATE)
    assert resample(x, SAMPLE_RATE) is x
    assert resample(x, 16000.0, 16000) is x
    stream = StreamResampler(SAMPLE_RATE)
    assert stream.passthrough and stream.process(x) is x
    with pytest.raises(ValueError):
        resample(x, 0)
    with pytest.raises(ValueError):
        resample(np.zeros((10, 2), np.float32), 44100)


@pytest.mark.parametrize("rate_in", [44100, 48000, 22050])
def test_stream_equals_one_shot(rate_in):
    rng = np.random.default_rng(rate_in)
    x = (0.3 * rng.standard_normal(int(rate_in * 1.7))).astype(np.float32) + tone(700.0, rate_in, 1.7)
    expected = resample(x, rate_in)
    stream = StreamResampler(rate_in)
    pieces, start = [], 0
    while start < len(x):
        size = int(rng.integers(1, 6000))
        pieces.append(stream.process(x[start : start + size]))
        start += size
    pieces.append(stream.process(np.zeros(0, np.float32), last=True))
    got = np.concatenate(pieces)
    assert got.dtype == np.float32
    assert abs(len(got) - len(expected)) <= 3
    n = min(len(got), len(expected))
    assert np.max(np.abs(got[:n] - expected[:n])) < 1e-4
    # 2-D single-column blocks (as sounddevice delivers them) are accepted too
    stream.reset()
    assert stream.process(x[:4410, None]).ndim == 1


# ---------------------------------------------------------------------------- framing and names


def test_frame_windows():
    x = np.arange(WINDOW_SAMPLES + 3 * HOP_SAMPLES + 123, dtype=np.float32)
    w = frame_windows(x)
    assert w.shape == (4, WINDOW_SAMPLES) and w.dtype == np.float32
    assert audio.n_windows(len(x)) == 4
    for i in range(4):
        np.testing.assert_array_equal(w[i], x[i * HOP_SAMPLES : i * HOP_SAMPLES + WINDOW_SAMPLES])
    assert not w.flags.writeable
    assert frame_windows(x[:WINDOW_SAMPLES]).shape == (1, WINDOW_SAMPLES)
    assert frame_windows(np.arange(10.0), window=4, hop=3).tolist() == [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]]
    with pytest.raises(ValueError, match="shorter than one window"):
        frame_windows(x[: WINDOW_SAMPLES - 1])
    assert audio.n_windows(WINDOW_SAMPLES - 1) == 0


def test_is_audio_file():
    assert AUDIO_EXTENSIONS == (".wav", ".flac", ".ogg")
    for name in ("a.wav", "B.WAV", "c.Flac", "dir/d.ogg"):
        assert is_audio_file(name)
    for name in ("README.md", "x.npz", "SYNTHETIC.json", ".hidden.wav", "wav", "a.wav.txt"):
        assert not is_audio_file(name)


def test_runtime_module_imports_stay_light():
    code = (
        "import sys, fanwatch.audio; "
        "bad = [m for m in ('tensorflow', 'sklearn', 'scipy', 'soundfile') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
