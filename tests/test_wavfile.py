"""The stdlib WAV reader (fanwatch/wavfile.py), used where soundfile is not installed (the runtime image)."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from conftest import REALDATA, needs_realdata

from fanwatch import wavfile
from fanwatch.errors import BadAudioError


@pytest.mark.parametrize("subtype", ["PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE"])
def test_wavfile_matches_libsndfile(tmp_path, subtype):
    x = np.random.default_rng(1).uniform(-0.9, 0.9, (3001, 3)).astype(np.float32)
    path = tmp_path / "x.wav"
    sf.write(path, x, 22050, subtype=subtype)
    ref, rate = sf.read(path, dtype="float32", always_2d=True)
    y, r = wavfile.read_wav(path)
    assert r == rate == 22050 and y.dtype == np.float32 and y.shape == (3001, 3)
    np.testing.assert_array_equal(y, ref)
    with wavfile.WavReader(path) as reader:  # block by block gives the same samples
        blocks = [reader.read(1000) for _ in range(5)]
    np.testing.assert_array_equal(np.concatenate(blocks), ref)


@needs_realdata
def test_wavfile_reads_extensible_multichannel_real_recording():
    path = REALDATA / "mimii_8ch" / "fan.00.normal.00000000.wav"
    y, rate = wavfile.read_wav(path)
    ref, ref_rate = sf.read(path, dtype="float32", always_2d=True)
    assert rate == ref_rate == 16000 and y.shape == ref.shape and y.shape[1] == 8
    np.testing.assert_array_equal(y, ref)


def test_wavfile_tolerates_a_cut_data_chunk(tmp_path):
    x = np.random.default_rng(2).uniform(-0.5, 0.5, 5000).astype(np.float32)
    path = tmp_path / "cut.wav"
    sf.write(path, x, 16000, subtype="PCM_16")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1001])  # 500.5 frames missing
    y, _ = wavfile.read_wav(path)
    assert y.shape == (4499, 1)
    np.testing.assert_array_equal(y[:, 0], sf.read(tmp_path / "cut.wav", dtype="float32")[0][:4499])


def test_wavfile_rejects_junk_with_one_clear_line(tmp_path):
    cases = {
        "missing.wav": (None, "file not found"),
        "empty.wav": (b"", "empty file"),
        "text.wav": (b"hello, this is not audio at all" * 10, "no RIFF/WAVE header"),
        "nofmt.wav": (b"RIFF\x24\x00\x00\x00WAVEjunk\x04\x00\x00\x00abcd", "no fmt chunk"),
    }
    for name, (content, reason) in cases.items():
        path = tmp_path / name
        if content is not None:
            path.write_bytes(content)
        with pytest.raises(BadAudioError) as info:
            wavfile.read_wav(path)
        assert name in str(info.value) and reason in str(info.value) and "\n" not in str(info.value)
    ulaw = tmp_path / "ulaw.wav"
    sf.write(ulaw, np.zeros(1000, np.float32), 8000, subtype="ULAW")
    with pytest.raises(BadAudioError, match="unsupported WAV encoding"):
        wavfile.read_wav(ulaw)
    header_only = tmp_path / "nodata.wav"
    sf.write(header_only, np.zeros(100, np.float32), 8000, subtype="PCM_16")
    header_only.write_bytes(header_only.read_bytes()[:44])
    with pytest.raises(BadAudioError, match="no audio samples"):
        wavfile.read_wav(header_only)
