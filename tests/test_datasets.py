"""fanwatch.datasets: layouts built from tiny real WAV files, plus the real DCASE clips."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import REALDATA, needs_realdata

from fanwatch.datasets import (
    LAYOUTS,
    Recording,
    detect_layout,
    is_anomalous_name,
    load_split,
    save_split,
    scan,
    split_recordings,
    summarize,
)
from fanwatch.errors import FanwatchError

DCASE_REAL = REALDATA / "dcase2020_id00"


def wav(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    noise = np.random.default_rng(seed).standard_normal(800).astype(np.float32) * 0.1
    sf.write(path, noise, 16000, subtype="PCM_16")
    return path


def add_clutter(folder: Path) -> None:
    (folder / "README.md").write_text("notes\n")
    (folder / "SYNTHETIC.json").write_text("{}\n")
    np.savez(folder / "cache.npz", x=np.zeros(3))
    wav(folder / ".hidden" / "ghost.wav")
    wav(folder / ".ghost.wav")


@pytest.fixture
def folders_root(tmp_path):
    root = tmp_path / "fan_states"
    counts = {"on_state": 5, "off_state": 4, "solid_state": 3, "soft_state": 2, "fault_bearing": 1}
    seed = 0
    for cls, n in counts.items():
        for i in range(n):
            sub = "deeper/day2" if i == 0 else ""
            wav(root / cls / sub / f"{cls}_{i}.wav", seed)
            seed += 1
    wav(root / "on_state" / "extra.FLAC")  # any audio extension, any case
    add_clutter(root)
    add_clutter(root / "on_state")
    return root


def mimii_tree(base: Path, snrs=("6dB", "-6dB"), machines=(("fan", "id_00"), ("pump", "id_02"))):
    for snr in snrs:
        for machine, ident in machines:
            for state, n in (("normal", 4), ("abnormal", 3)):
                for i in range(n):
                    wav(base / f"{snr}_{machine}" / machine / ident / state / f"{i:08d}.wav", i)
    add_clutter(base)
    return base


def dcase_tree(base: Path):
    for machine in ("fan", "pump"):
        for i in range(6):
            wav(base / machine / "train" / f"normal_id_00_{i:08d}.wav", i)
            wav(base / machine / "train" / f"normal_id_02_{i:08d}.wav", i)
        for i in range(2):
            wav(base / machine / "test" / f"normal_id_00_{i:08d}.wav", i)
            wav(base / machine / "test" / f"anomaly_id_00_{i:08d}.wav", i)
    add_clutter(base)
    return base


# ---------------------------------------------------------------------------- folders layout


def test_folders_layout(folders_root):
    assert detect_layout(folders_root) == "folders"
    recs = scan(folders_root)
    assert len(recs) == 5 + 4 + 3 + 2 + 1 + 1
    assert recs == sorted(recs, key=lambda r: str(r.path))
    assert all(r.path.is_absolute() and r.path.is_file() for r in recs)
    assert all(r.machine == "default" and r.subset is None and r.snr is None for r in recs)
    assert not any(".hidden" in str(r.path) or r.path.name.startswith(".") for r in recs)
    labels = {r.label for r in recs}
    assert labels == {"on_state", "off_state", "solid_state", "soft_state", "fault_bearing"}
    flags = {r.label: r.normal for r in recs}
    assert flags == {
        "on_state": True,
        "off_state": True,
        "solid_state": True,
        "soft_state": True,
        "fault_bearing": False,
    }
    nested = [r for r in recs if "deeper" in r.path.parts]
    assert len(nested) == 5 and all(r.label == r.path.name.rsplit("_", 1)[0] for r in nested)
    assert scan(folders_root, layout="folders") == recs


@pytest.mark.parametrize(
    "name",
    [
        "fault_bearing",
        "bearing_fault",
        "abnormal",
        "anomaly_x",
        "Anomalous",
        "BrokenBlade",
        "faulty",
        "defect-3",
        "blade_damage",
        "motor_failure",
        "ABNORMAL_noise",
    ],
)
def test_default_rule_anomalous(name):
    assert is_anomalous_name(name)


@pytest.mark.parametrize(
    "name",
    [
        "off",
        "on_state",
        "high_speed",
        "normal",
        "Normal",
        "no_fault",
        "fault_free",
        "solid_state",
        "soft_state",
        "idle",
        "default",
    ],
)
def test_default_rule_normal(name):
    assert not is_anomalous_name(name)


def test_normal_and_anomalous_overrides(folders_root):
    recs = scan(folders_root, normal_classes=["on_state"])
    assert {r.label for r in recs if r.normal} == {"on_state"}
    recs = scan(folders_root, anomalous_classes="solid_state, soft_state")
    assert {r.label for r in recs if not r.normal} == {"solid_state", "soft_state"}
    recs = scan(
        folders_root,
        normal_classes=["on_state", "off_state"],
        anomalous_classes=["solid_state", "soft_state", "fault_bearing"],
    )
    assert {r.label for r in recs if r.normal} == {"on_state", "off_state"}
    with pytest.raises(FanwatchError, match="do not exist: humming"):
        scan(folders_root, normal_classes=["on_state", "humming"])
    with pytest.raises(FanwatchError, match="do not exist"):
        scan(folders_root, anomalous_classes=["ON_STATE"])
    with pytest.raises(FanwatchError, match="both normal and anomalous"):
        scan(folders_root, normal_classes=["on_state"], anomalous_classes=["on_state"])
    with pytest.raises(FanwatchError, match="neither"):
        scan(folders_root, normal_classes=["on_state"], anomalous_classes=["off_state"])


# ---------------------------------------------------------------------------- MIMII layout


def test_mimii_layout_with_snr_folders(tmp_path):
    root = mimii_tree(tmp_path / "mimii")
    assert detect_layout(root) == "mimii"
    recs = scan(root)
    assert len(recs) == 2 * 2 * 7
    assert {r.label for r in recs} == {"fan_normal", "fan_abnormal", "pump_normal", "pump_abnormal"}
    assert {r.machine for r in recs} == {"fan/id_00", "pump/id_02"}
    assert {r.snr for r in recs} == {"6dB", "-6dB"}
    for r in recs:
        assert r.normal == (r.path.parent.name == "normal")
        assert r.label.endswith(r.path.parent.name) and r.subset is None
    # the same machine/id under two SNR folders: all kept, same machine group
    fan0 = [r for r in recs if r.machine == "fan/id_00" and r.path.name == "00000000.wav" and r.normal]
    assert sorted(r.snr for r in fan0) == ["-6dB", "6dB"]


def test_mimii_root_at_every_level(tmp_path):
    base = mimii_tree(tmp_path / "mimii", snrs=("0dB",))
    for root, n, snr in [
        (base / "0dB_fan", 7, "0dB"),
        (base / "0dB_fan" / "fan", 7, "0dB"),
        (base / "0dB_fan" / "fan" / "id_00", 7, "0dB"),
    ]:
        assert detect_layout(root) == "mimii", root
        recs = scan(root)
        assert len(recs) == n
        assert {r.machine for r in recs} == {"fan/id_00"} and {r.snr for r in recs} == {snr}
        assert {r.label for r in recs} == {"fan_normal", "fan_abnormal"}


def test_mimii_without_snr_level(tmp_path):
    root = tmp_path / "plain"
    for ident in ("id_00", "id_04"):
        wav(root / "valve" / ident / "normal" / "00000000.wav")
        wav(root / "valve" / ident / "abnormal" / "00000000.wav")
    recs = scan(root)
    assert {r.machine for r in recs} == {"valve/id_00", "valve/id_04"}
    assert all(r.snr is None for r in recs)
    assert sum(r.normal for r in recs) == 2


def test_normal_abnormal_folders_without_id_are_classes(tmp_path):
    root = tmp_path / "two_classes"
    wav(root / "normal" / "a.wav")
    wav(root / "abnormal" / "b.wav")
    assert detect_layout(root) == "folders"
    assert {r.label: r.normal for r in scan(root)} == {"normal": True, "abnormal": False}


# ---------------------------------------------------------------------------- DCASE layout


def test_dcase_layout_parent_of_machines(tmp_path):
    root = dcase_tree(tmp_path / "dev_data")
    assert detect_layout(root) == "dcase"
    recs = scan(root)
    assert len(recs) == 2 * (12 + 4)
    assert {r.machine for r in recs} == {"fan/id_00", "fan/id_02", "pump/id_00", "pump/id_02"}
    assert {r.label for r in recs} == {"fan_normal", "fan_anomaly", "pump_normal", "pump_anomaly"}
    for r in recs:
        assert r.subset == r.path.parent.name
        assert r.normal == r.path.name.startswith("normal")
    with pytest.raises(FanwatchError, match="folders layout only"):
        scan(root, normal_classes=["fan_normal"])


@needs_realdata
def test_dcase_real_machine_folder():
    assert detect_layout(DCASE_REAL) == "dcase"
    recs = scan(DCASE_REAL)
    machine = DCASE_REAL.name
    assert len(recs) == 76
    assert {r.machine for r in recs} == {f"{machine}/id_00"}
    train = [r for r in recs if r.subset == "train"]
    test = [r for r in recs if r.subset == "test"]
    assert len(train) == 75 and all(r.normal and r.label == f"{machine}_normal" for r in train)
    assert len(test) == 1 and not test[0].normal and test[0].label == f"{machine}_anomaly"
    splits = split_recordings(recs, seed=3)
    assert splits["test"] == test
    assert len(splits["val"]) == round(75 * 0.15) and len(splits["train"]) == 75 - round(75 * 0.15)


# ---------------------------------------------------------------------------- detection errors


def test_layout_errors(tmp_path, folders_root):
    with pytest.raises(FanwatchError, match="not found"):
        scan(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FanwatchError, match="no audio files"):
        detect_layout(tmp_path / "empty")
    loose = tmp_path / "loose"
    wav(loose / "a.wav")
    wav(loose / "cls" / "b.wav")
    with pytest.raises(FanwatchError) as info:
        scan(loose)
    message = str(info.value)
    assert "a.wav fits none" in message and "MIMII" in message and "DCASE" in message
    assert "\n" not in message
    with pytest.raises(FanwatchError, match="does not fit the mimii layout"):
        scan(folders_root, layout="mimii")
    with pytest.raises(FanwatchError, match="does not fit the dcase layout"):
        scan(folders_root, layout="dcase")
    with pytest.raises(FanwatchError, match="unknown layout"):
        scan(folders_root, layout="kaggle")
    assert LAYOUTS == ("folders", "mimii", "dcase")


# ---------------------------------------------------------------------------- splits


def check_partition(recs, splits):
    assert set(splits) == {"train", "val", "test"}
    paths = [r.path for part in splits.values() for r in part]
    assert len(paths) == len(set(paths)) == len(recs)
    assert set(paths) == {r.path for r in recs}


def test_split_stratified_and_small_strata(folders_root):
    recs = scan(folders_root)
    splits = split_recordings(recs, seed=0)
    check_partition(recs, splits)

    def count(part, label):
        return sum(r.label == label for r in splits[part])

    for label in ("on_state", "off_state", "solid_state"):  # 6, 4, 3 files: one in each split at least
        assert all(count(part, label) >= 1 for part in ("train", "val", "test")), label
    assert (count("train", "soft_state"), count("val", "soft_state"), count("test", "soft_state")) == (1, 1, 0)
    assert (count("train", "fault_bearing"), count("val", "fault_bearing")) == (1, 0)
    for part in splits.values():
        assert part == sorted(part, key=lambda r: str(r.path))


def test_split_fraction_sizes_and_rules():
    recs = [Recording(Path(f"/data/c{k}/{i:03d}.wav"), f"c{k}", "default", True) for k in range(2) for i in range(100)]
    splits = split_recordings(recs, seed=1, val_fraction=0.2, test_fraction=0.1)
    check_partition(recs, splits)
    assert [len(splits[p]) for p in ("train", "val", "test")] == [140, 40, 20]
    no_test = split_recordings(recs[:10], val_fraction=0.3, test_fraction=0.0)
    assert len(no_test["test"]) == 0 and len(no_test["val"]) == 3
    two = split_recordings(recs[:2], val_fraction=0.0, test_fraction=0.2)
    assert [len(two[p]) for p in ("train", "val", "test")] == [1, 0, 1]
    for bad in ((0.5, 0.5), (-0.1, 0.2), (0.2, 1.0)):
        with pytest.raises(FanwatchError, match="fractions"):
            split_recordings(recs, val_fraction=bad[0], test_fraction=bad[1])


def test_split_seeded_and_order_independent(folders_root):
    recs = scan(folders_root)
    shuffled = list(recs)
    random.Random(7).shuffle(shuffled)
    a = split_recordings(recs, seed=5)
    b = split_recordings(shuffled, seed=5)
    assert a == b
    assert split_recordings(recs + recs[:3], seed=5) == a  # exact duplicates collapse
    many = [Recording(Path(f"/d/x/{i:03d}.wav"), "x", "default", True) for i in range(60)]
    seeds = {tuple(r.path for r in split_recordings(many, seed=s)["test"]) for s in range(4)}
    assert len(seeds) > 1


def test_split_dcase_test_subset_respected(tmp_path):
    recs = scan(dcase_tree(tmp_path / "dev_data"))
    splits = split_recordings(recs, seed=0, val_fraction=0.2, test_fraction=0.3)
    check_partition(recs, splits)
    assert {r.path for r in splits["test"]} == {r.path for r in recs if r.subset == "test"}
    assert all(r.subset == "train" for r in splits["train"] + splits["val"])
    for machine in ("fan/id_00", "fan/id_02", "pump/id_00", "pump/id_02"):  # 6 train files each
        assert sum(r.machine == machine for r in splits["val"]) == 1
        assert sum(r.machine == machine for r in splits["train"]) == 5


def test_split_keeps_mimii_snr_copies_together(tmp_path):
    recs = scan(mimii_tree(tmp_path / "mimii", snrs=("6dB", "0dB", "-6dB")))
    splits = split_recordings(recs, seed=2)
    check_partition(recs, splits)
    where = {}
    for part, items in splits.items():
        for r in items:
            where.setdefault((r.machine, r.label, r.path.name), set()).add(part)
    assert all(len(parts) == 1 for parts in where.values())
    for label in ("fan_normal", "fan_abnormal", "pump_normal", "pump_abnormal"):
        assert all(any(r.label == label for r in splits[p]) for p in ("train", "val", "test"))


def test_save_load_round_trip(tmp_path, folders_root):
    recs = scan(folders_root)
    outside = wav(tmp_path / "elsewhere" / "stray.wav")
    recs.append(Recording(outside, "on_state", "default", True))
    splits = split_recordings(recs, seed=4, val_fraction=0.2, test_fraction=0.2)
    out = save_split(tmp_path / "artifacts" / "split.json", splits, folders_root)
    doc = json.loads(out.read_text())
    assert doc["seed"] == 4 and doc["val_fraction"] == 0.2 and doc["test_fraction"] == 0.2
    stored = [e["path"] for part in doc["splits"].values() for e in part]
    assert str(outside) in stored
    assert all(Path(p).is_absolute() == (p == str(outside)) for p in stored)
    entry = doc["splits"]["train"][0]
    assert set(entry) >= {"path", "label", "machine", "normal", "subset"}

    loaded = load_split(out)
    assert loaded == splits
    assert loaded.params["seed"] == 4
    assert all(r.path.is_absolute() for part in loaded.values() for r in part)

    victim = splits["val"][0].path
    victim.unlink()
    with pytest.raises(FanwatchError, match="vanished") as info:
        load_split(out)
    assert str(victim) in str(info.value)
    with pytest.raises(FanwatchError, match="not found"):
        load_split(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(FanwatchError, match="not a readable split file"):
        load_split(bad)


def test_load_split_with_moved_root(tmp_path):
    root = dcase_tree(tmp_path / "dev_data")
    splits = split_recordings(scan(root))
    out = save_split(tmp_path / "split.json", splits, root)
    moved = root.rename(tmp_path / "moved")
    loaded = load_split(out, root=moved)
    assert {r.path.name for r in loaded["test"]} == {r.path.name for r in splits["test"]}
    assert all(r.path.is_relative_to(moved) for part in loaded.values() for r in part)


# ---------------------------------------------------------------------------- summary


@needs_realdata
def test_summarize(tmp_path, folders_root):
    s = summarize(scan(folders_root))
    assert s["files"] == 16 and s["normal"] == 15 and s["anomalous"] == 1
    assert s["labels"] == {"fault_bearing": 1, "off_state": 4, "on_state": 6, "soft_state": 2, "solid_state": 3}
    assert s["machines"] == {"default": 16}
    assert s["label_normal"]["fault_bearing"] is False
    assert "subsets" not in s and "snrs" not in s
    d = summarize(scan(DCASE_REAL))
    assert d["subsets"] == {"test": 1, "train": 75} and d["anomalous"] == 1
    m = summarize(scan(mimii_tree(tmp_path / "mimii")))
    assert m["snrs"] == {"-6dB": 14, "6dB": 14}
