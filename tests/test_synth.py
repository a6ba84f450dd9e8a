"""fanwatch.synth: reproducible, realistic-enough synthetic fan recordings in the three layouts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from fanwatch import synth
from fanwatch.errors import FanwatchError

SR = 16000


def _wavs(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.wav"))


def _db(x: np.ndarray) -> float:
    return float(20.0 * np.log10(np.sqrt(np.mean(np.square(x, dtype=np.float64)))))


def _power_spectrum(x: np.ndarray, sr: int = SR) -> tuple[np.ndarray, np.ndarray]:
    spec = np.abs(np.fft.rfft(x * np.hanning(x.size))) ** 2
    return np.fft.rfftfreq(x.size, 1.0 / sr), spec


def _auc(negatives, positives) -> float:
    """P(score of a positive > score of a negative), ties count half (Mann-Whitney)."""
    neg = np.asarray(negatives)[None, :]
    pos = np.asarray(positives)[:, None]
    return float((np.sum(pos > neg) + 0.5 * np.sum(pos == neg)) / (pos.size * neg.size))


# ---------------------------------------------------------------------------------------------------
# reproducibility


def test_render_same_seed_same_samples_and_different_seed_differs():
    for kind in synth.KINDS:
        a = synth.render(kind, 1.0, 7)
        b = synth.render(kind, 1.0, np.random.default_rng(7))
        c = synth.render(kind, 1.0, 8)
        assert a.dtype == np.float32 and a.shape == (SR,)
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, c)


def test_dataset_same_seed_same_bytes_different_seed_different_audio(tmp_path):
    kwargs = dict(seconds=1.0, files_per_state=2, files_per_fault=1, progress=False)
    synth.generate_dataset(tmp_path / "a", seed=3, **kwargs)
    synth.generate_dataset(tmp_path / "b", seed=3, **kwargs)
    synth.generate_dataset(tmp_path / "c", seed=4, **kwargs)
    names = _wavs(tmp_path / "a")
    assert names == _wavs(tmp_path / "b") == _wavs(tmp_path / "c")
    for name in names + [synth.MANIFEST_NAME]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    for name in names:
        a, _ = sf.read(tmp_path / "a" / name, dtype="int16")
        c, _ = sf.read(tmp_path / "c" / name, dtype="int16")
        assert not np.array_equal(a, c), name


def test_changing_one_class_count_leaves_other_files_unchanged(tmp_path):
    synth.generate_dataset(tmp_path / "a", seed=1, seconds=1.0, files_per_state=1, files_per_fault=1, progress=False)
    synth.generate_dataset(tmp_path / "b", seed=1, seconds=1.0, files_per_state=1, files_per_fault=3, progress=False)
    for name in _wavs(tmp_path / "a"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert len(_wavs(tmp_path / "b")) == 3 * 1 + 4 * 3


# ---------------------------------------------------------------------------------------------------
# layouts


def test_folders_layout_paths_counts_and_manifest(tmp_path):
    out = tmp_path / "ds"
    counts = synth.generate_dataset(out, seconds=1.0, files_per_state=3, files_per_fault=2, progress=False)
    expected = {
        "off": 3,
        "low_speed": 3,
        "high_speed": 3,
        "fault_imbalance": 2,
        "fault_blockage": 2,
        "fault_bearing": 2,
        "fault_rubbing": 2,
    }
    assert counts == expected
    names = _wavs(out)
    assert len(names) == sum(expected.values())
    for cls, count in expected.items():
        assert [n for n in names if n.startswith(cls + "/")] == [f"{cls}/{cls}_{i:04d}.wav" for i in range(count)]
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(expected)
    manifest = json.loads((out / synth.MANIFEST_NAME).read_text())
    assert manifest["complete"] is True
    assert manifest["counts"] == expected
    assert manifest["settings"]["layout"] == "folders"
    assert sorted(manifest["files"]) == names


def test_folders_layout_default_counts(tmp_path):
    counts = synth.generate_dataset(tmp_path / "ds", seconds=0.1, progress=False)
    assert counts == {
        "off": 24,
        "low_speed": 24,
        "high_speed": 24,
        "fault_imbalance": 8,
        "fault_blockage": 8,
        "fault_bearing": 8,
        "fault_rubbing": 8,
    }
    assert len(_wavs(tmp_path / "ds")) == 104


@pytest.mark.parametrize("snr, prefix", [(6.0, "6dB"), (0.0, "0dB"), (-6.0, "-6dB")])
def test_mimii_layout(tmp_path, snr, prefix):
    out = tmp_path / "mimii"
    counts = synth.generate_dataset(
        out, layout="mimii", snr_db=snr, seconds=0.5, files_per_state=3, files_per_fault=2, progress=False
    )
    assert counts == {"id_00/normal": 3, "id_00/abnormal": 2, "id_02/normal": 3, "id_02/abnormal": 2}
    expected = []
    for mid in ("id_00", "id_02"):
        expected += [f"{prefix}_fan/fan/{mid}/abnormal/{i:08d}.wav" for i in range(2)]
        expected += [f"{prefix}_fan/fan/{mid}/normal/{i:08d}.wav" for i in range(3)]
    assert _wavs(out) == sorted(expected)


def test_mimii_and_dcase_default_counts(tmp_path):
    m = synth.generate_dataset(tmp_path / "m", layout="mimii", seconds=0.1, progress=False)
    assert m == {"id_00/normal": 20, "id_00/abnormal": 6, "id_02/normal": 20, "id_02/abnormal": 6}
    assert (tmp_path / "m" / "6dB_fan" / "fan" / "id_00" / "normal" / "00000019.wav").is_file()
    d = synth.generate_dataset(tmp_path / "d", layout="dcase", seconds=0.1, progress=False)
    assert d == {
        "id_00/train/normal": 20,
        "id_00/test/normal": 6,
        "id_00/test/anomaly": 6,
        "id_02/train/normal": 20,
        "id_02/test/normal": 6,
        "id_02/test/anomaly": 6,
    }


def test_dcase_layout(tmp_path):
    out = tmp_path / "dcase"
    synth.generate_dataset(out, layout="dcase", seconds=0.5, files_per_state=3, files_per_fault=2, progress=False)
    expected = []
    for mid in ("id_00", "id_02"):
        expected += [f"fan/train/normal_{mid}_{i:08d}.wav" for i in range(3)]
        expected += [f"fan/test/normal_{mid}_{i:08d}.wav" for i in range(2)]
        expected += [f"fan/test/anomaly_{mid}_{i:08d}.wav" for i in range(2)]
    assert _wavs(out) == sorted(expected)
    assert not any("anomaly" in n for n in _wavs(out) if n.startswith("fan/train/"))


def test_machine_ids_differ_in_blade_pass_and_mains():
    a, b = synth.MACHINES["id_00"], synth.MACHINES["id_02"]
    assert a.blades != b.blades and a.mains_hz != b.mains_hz
    assert a.blades * a.high_speed_hz != pytest.approx(b.blades * b.high_speed_hz, rel=0.05)


# ---------------------------------------------------------------------------------------------------
# format


def test_sample_rate_and_channels_honoured_in_files(tmp_path):
    out = tmp_path / "ds"
    synth.generate_dataset(
        out, seconds=0.5, files_per_state=1, files_per_fault=1, sample_rate=44100, channels=2, progress=False
    )
    for name in _wavs(out):
        info = sf.info(str(out / name))
        assert (info.samplerate, info.channels, info.frames) == (44100, 2, 22050), name
        assert info.format == "WAV" and info.subtype == "PCM_16"


@pytest.mark.parametrize("sr, ch", [(48000, 8), (44100, 1), (8000, 3)])
def test_render_shapes(sr, ch):
    x = synth.render("bearing", 0.5, 2, sample_rate=sr, channels=ch)
    assert x.dtype == np.float32
    assert x.shape == ((sr // 2, ch) if ch > 1 else (sr // 2,))


def test_mic_array_channels_are_correlated_but_not_identical():
    x = synth.render("high_speed", 1.0, 5, channels=8)
    corr = np.corrcoef(x.T)
    off_diagonal = corr[~np.eye(8, dtype=bool)]
    assert off_diagonal.min() > 0.3 and off_diagonal.max() < 0.995
    levels = [_db(x[:, c]) for c in range(8)]
    assert max(levels) - min(levels) < 3.0


def test_high_rate_files_carry_content_above_8khz():
    x = synth.render("rubbing", 1.0, 1, sample_rate=48000)
    f, p = _power_spectrum(x, 48000)
    assert p[(f > 9000) & (f < 20000)].sum() / p.sum() > 1e-4


def test_no_clipping_and_no_nan_even_at_low_snr(tmp_path):
    peaks = []
    for i, kind in enumerate(synth.KINDS * 4):
        x = synth.render(kind, 1.0, 100 + i, snr_db=-6.0, channels=1 + i % 2)
        assert np.all(np.isfinite(x)), kind
        peaks.append(float(np.max(np.abs(x))))
        assert _db(x) < -10.0, kind  # a recording, not a full-scale test tone
    assert max(peaks) <= synth.PEAK_LIMIT + 1e-6
    out = tmp_path / "ds"
    synth.generate_dataset(out, seconds=1.0, files_per_state=2, files_per_fault=2, snr_db=-6.0, progress=False)
    for name in _wavs(out):
        pcm, _ = sf.read(out / name, dtype="int16")
        assert np.abs(pcm.astype(np.int32)).max() < 32767, name


# ---------------------------------------------------------------------------------------------------
# realism


def test_faults_are_not_separable_by_loudness_alone():
    normal = [_db(synth.render(synth.STATES[i % 3], 1.0, 1000 + i)) for i in range(24)]
    faults = [_db(synth.render(synth.FAULTS[i % 4], 1.0, 2000 + i)) for i in range(24)]
    running = [v for i, v in enumerate(normal) if synth.STATES[i % 3] != "off"]
    for negatives in (normal, running):
        auc = _auc(negatives, faults)
        assert max(auc, 1.0 - auc) < 0.85, auc
    # and the per-file gain spreads each class over a realistic range
    assert np.ptp(running) > 10.0


def test_blade_pass_peak_moves_up_with_speed():
    machine = synth.DEFAULT_MACHINE
    peaks = {}
    for state in ("low_speed", "high_speed"):
        found = []
        for i in range(4):
            x, info = synth.render_with_info(state, 2.0, 300 + i)
            f, p = _power_spectrum(x)
            sel = (f > 60.0) & (f < 260.0)
            for k in range(1, 6):
                sel &= np.abs(f - k * machine.mains_hz) > 4.0  # not the motor hum
            peak = float(f[sel][np.argmax(p[sel])])
            assert peak == pytest.approx(info.blade_pass_hz, rel=0.03)
            found.append(peak)
        peaks[state] = np.mean(found)
    assert peaks["high_speed"] > 1.5 * peaks["low_speed"]
    assert peaks["low_speed"] == pytest.approx(machine.blades * machine.low_speed_hz, rel=0.06)
    assert peaks["high_speed"] == pytest.approx(machine.blades * machine.high_speed_hz, rel=0.06)


def test_off_has_no_blade_pass_tone():
    x = synth.render("off", 2.0, 11)
    y, info = synth.render_with_info("low_speed", 2.0, 11)
    for sig in (x, y):
        f, p = _power_spectrum(sig)
        near = np.abs(f - info.blade_pass_hz) < 1.5
        around = (np.abs(f - info.blade_pass_hz) > 5) & (np.abs(f - info.blade_pass_hz) < 25)
        ratio = 10 * np.log10(p[near].max() / np.median(p[around]))
        if sig is y:
            assert ratio > 15.0
        else:
            assert ratio < 15.0


def test_bearing_fault_has_more_high_frequency_energy_than_its_normal_counterpart():
    def hf_share(x):
        f, p = _power_spectrum(x)
        return 10 * np.log10(p[f > 2000].sum() / p.sum())

    diffs = []
    for i in range(12):
        x, info = synth.render_with_info("bearing", 2.0, 400 + i)
        diffs.append(hf_share(x) - hf_share(synth.render(info.state, 2.0, 500 + i)))
    assert np.mean(diffs) > 1.0
    # and a fault is a few dB in some band, not a different machine
    assert np.mean(diffs) < 12.0


def test_imbalance_shows_shaft_rate_modulation():
    def modulation_db(x, shaft_hz):
        f = np.fft.rfftfreq(x.size, 1.0 / SR)
        spec = np.fft.rfft(x.astype(np.float64))
        spec[(f < 150) | (f > 4000)] = 0  # the blade/broadband band, not the 1x line itself
        env = np.fft.irfft(spec, x.size) ** 2
        e = np.abs(np.fft.rfft(env - env.mean()))
        at = e[np.abs(f - shaft_hz) < 0.03 * shaft_hz].max()
        return 20 * np.log10(at / np.median(e[(f > 3) & (f < 60)]))

    faulty, healthy = [], []
    for i in range(6):
        x, info = synth.render_with_info("imbalance", 2.0, 600 + i)
        faulty.append(modulation_db(x, info.shaft_hz))
        y, info_y = synth.render_with_info(info.state, 2.0, 700 + i)
        healthy.append(modulation_db(y, info_y.shaft_hz))
    assert np.mean(faulty) > np.mean(healthy) + 8.0
    assert min(faulty) > max(healthy)


def test_faults_run_at_both_speeds_and_blockage_changes_speed():
    states = {synth.render_with_info(kind, 0.2, i)[1].state for kind in synth.FAULTS for i in range(6)}
    assert states == {"low_speed", "high_speed"}
    for i in range(4):
        _, info = synth.render_with_info("blockage", 0.5, i)
        assert 0.03 <= abs(info.details["speed_change"]) <= 0.08


# ---------------------------------------------------------------------------------------------------
# safety and errors


def test_refuses_non_empty_folder_without_manifest(tmp_path):
    out = tmp_path / "my_recordings"
    out.mkdir()
    precious = out / "precious.wav"
    precious.write_bytes(b"not synthetic")
    with pytest.raises(FanwatchError, match="my_recordings"):
        synth.generate_dataset(out, seconds=0.5, files_per_state=1, files_per_fault=1, progress=False)
    assert precious.read_bytes() == b"not synthetic"
    assert sorted(p.name for p in out.iterdir()) == ["precious.wav"]


def test_regenerating_into_own_output_replaces_it(tmp_path):
    out = tmp_path / "ds"
    synth.generate_dataset(out, seconds=0.5, files_per_state=2, files_per_fault=1, progress=False)
    synth.generate_dataset(out, seconds=0.5, files_per_state=1, files_per_fault=1, progress=False)
    assert len(_wavs(out)) == 3 + 4
    synth.generate_dataset(out, layout="dcase", seconds=0.5, files_per_state=1, files_per_fault=1, progress=False)
    names = _wavs(out)
    assert names and all(n.startswith("fan/") for n in names)  # the folders-layout files are gone
    assert sorted(p.name for p in out.iterdir()) == ["SYNTHETIC.json", "fan"]


def test_regeneration_keeps_files_it_did_not_write(tmp_path):
    out = tmp_path / "ds"
    synth.generate_dataset(out, seconds=0.5, files_per_state=1, files_per_fault=0, progress=False)
    notes = out / "off" / "notes.txt"
    notes.write_text("mine")
    synth.generate_dataset(out, seconds=0.5, files_per_state=0, files_per_fault=1, progress=False)
    assert notes.read_text() == "mine"
    assert not (out / "off" / "off_0000.wav").exists()


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: synth.render("wobble", 1.0, 0), "wobble"),
        (lambda: synth.render("off", 0.0, 0), "seconds"),
        (lambda: synth.render("off", 1.0, 0, channels=0), "channels"),
        (lambda: synth.render("off", 1.0, 0, sample_rate=100), "sample rate"),
        (lambda: synth.render("off", 1.0, -1), "seed"),
        (lambda: synth.render("off", 1.0, 0, machine="id_99"), "id_99"),
        (lambda: synth.generate_dataset("/nonexistent-never", layout="pyramid", progress=False), "pyramid"),
    ],
)
def test_bad_arguments_raise_one_line_errors(call, message):
    with pytest.raises(FanwatchError, match=message) as err:
        call()
    assert "\n" not in str(err.value)


def test_output_path_that_is_a_file_is_refused(tmp_path):
    target = tmp_path / "file.wav"
    target.write_bytes(b"x")
    with pytest.raises(FanwatchError, match="file.wav"):
        synth.generate_dataset(target, seconds=0.5, progress=False)


# ---------------------------------------------------------------------------------------------------
# command line


def test_cli_writes_dataset(tmp_path, capsys):
    out = tmp_path / "cli"
    code = synth.main(
        [
            str(out),
            "--layout",
            "mimii",
            "--snr-db",
            "-6",
            "--seconds",
            "0.5",
            "--seed",
            "2",
            "--files-per-state",
            "2",
            "--files-per-fault",
            "1",
            "--quiet",
        ]
    )
    assert code == 0
    assert len(_wavs(out)) == 2 * (2 + 1)
    assert (out / "-6dB_fan" / "fan" / "id_02" / "abnormal" / "00000000.wav").is_file()
    assert "wrote 6 files" in capsys.readouterr().out


def test_cli_help_and_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        synth.main(["--help"])
    assert exc.value.code == 0
    assert "--layout" in capsys.readouterr().out
    (tmp_path / "x.txt").write_text("user data")
    assert synth.main([str(tmp_path), "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and str(tmp_path) in err and "\n" not in err


# ---------------------------------------------------------------------------------------------------
# recording sessions


def test_sessions_layout_is_session_disjoint_dcase(tmp_path):
    out = tmp_path / "s"
    counts = synth.generate_dataset(
        out, layout="dcase", seconds=0.5, files_per_state=4, files_per_fault=5, sessions=3, progress=False
    )
    assert counts == {
        "id_00/train/normal": 4,
        "id_00/test/normal": 5,
        "id_00/test/anomaly": 5,
        "id_02/train/normal": 4,
        "id_02/test/normal": 5,
        "id_02/test/anomaly": 5,
    }
    manifest = json.loads((out / synth.MANIFEST_NAME).read_text())
    sessions = manifest["file_sessions"]
    assert set(sessions) == set(_wavs(out))
    train = {s for f, s in sessions.items() if "/train/" in f}
    test = {s for f, s in sessions.items() if "/test/" in f}
    assert train == {0, 1} and test == {2}  # the test day is never heard in training
    assert manifest["settings"]["sessions"] == 3 and set(manifest["sessions"]) == {
        f"{m}/{i}" for m in ("id_00", "id_02") for i in range(3)
    }
    # the test anomalies take every fault, the subtle one included
    from fanwatch import datasets

    recs = datasets.scan(out)
    assert {r.subset for r in recs} == {"train", "test"} and not any(not r.normal for r in recs if r.subset == "train")


def test_sessions_fix_gain_and_room_and_files_keep_small_jitter():
    a, b = synth.draw_session(7, 0, "id_00"), synth.draw_session(7, 1, "id_00")
    assert a == synth.draw_session(7, 0, "id_00") and a != b and a != synth.draw_session(7, 0, "id_02")
    infos = [synth.render_with_info("low_speed", 0.5, i, session=a)[1] for i in range(6)]
    gains = [i.gain_db for i in infos]
    assert max(abs(g - a.gain_db) for g in gains) <= synth.SESSION_JITTER["gain_db"] + 1e-9
    assert all(i.details["session"] == 0 for i in infos)
    # without a session the per-file gain spreads much wider
    free = [synth.render_with_info("low_speed", 0.5, i)[1].gain_db for i in range(12)]
    assert np.ptp(free) > 3 * np.ptp(gains)
    # same-session files share the room tone (background slope, distant machine)
    assert len({i.details["bg_slope"] for i in infos}) == 1 and len({i.details["distant_hz"] for i in infos}) == 1


def test_wear_fault_changes_one_band_by_a_few_db_and_little_else():
    """wear = the same healthy sound with a few dB more in one band and a dB or two of level."""
    session = synth.draw_session(1, 0, "id_00")
    for seed in range(4):
        worn, info = synth.render_with_info("wear", 4.0, seed, snr_db=40.0, session=session)
        healthy = synth.render(info.state, 4.0, seed, snr_db=40.0, session=session)
        f, pw = _power_spectrum(worn)
        _, ph = _power_spectrum(healthy)
        centre = info.details["band_hz"]
        band = (f > centre / 2**0.25) & (f < centre * 2**0.25)
        rise = 10 * np.log10(pw[band].sum() / ph[band].sum())
        level = _db(worn) - _db(healthy)
        assert 3.0 <= rise <= 9.0, rise
        assert 0.5 <= level <= 5.0, level
        far = (f > 50) & ((f < centre / 4) | (f > centre * 4)) & (f < 7000)
        assert abs(10 * np.log10(pw[far].sum() / ph[far].sum()) - info.details["level_rise_db"]) < 1.0


def test_sessions_need_the_dcase_layout(tmp_path):
    with pytest.raises(FanwatchError, match="dcase"):
        synth.generate_dataset(tmp_path / "x", layout="mimii", sessions=2, progress=False)
    with pytest.raises(FanwatchError, match="sessions"):
        synth.generate_dataset(tmp_path / "y", layout="dcase", sessions=0, progress=False)
    with pytest.raises(FanwatchError, match="machine_ids"):
        synth.generate_dataset(tmp_path / "z", layout="dcase", machine_ids=("id_99",), sessions=2, progress=False)
