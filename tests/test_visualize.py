"""visualize_data.py / fanwatch.visualize: embedding maps and silhouette on synthetic data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from conftest import png_size

from fanwatch import visualize

REPO = Path(__file__).resolve().parents[1]


def test_cli_on_synthetic_data_with_subsample(synthetic_data, yamnet_path, cache_dir, tmp_path, capsys):
    import visualize_data  # the repository root is on pytest's pythonpath (pyproject.toml)

    out = tmp_path / "vis"
    visualize_data.main(
        ["--data", str(synthetic_data), "--out", str(out), "--tsne-max", "120", "--seed", "1", "--no-progress"]
    )
    console = capsys.readouterr().out
    assert "120 of 420 windows, subsampled stratified by label" in console
    assert "silhouette by label (cosine distance" in console
    v = json.loads((out / "visualize.json").read_text())
    assert v["counts"]["files"] == 60 and v["counts"]["windows"] == 420  # 4 s files: 7 windows each
    assert v["subsample"] == {
        "windows": 120,
        "of": 420,
        "cap": 120,
        "stratified_by": "label",
        "seed": 1,
        "used_for": ["t-SNE", "silhouette"],
    }
    per_label = v["counts"]["tsne_windows_per_label"]
    assert sum(per_label.values()) == 120 and len(per_label) == 7 and min(per_label.values()) >= 10
    sil = v["silhouette"]
    assert sil["metric"] == "cosine" and sil["by"] == "label" and sil["windows"] == 120
    assert -1.0 <= sil["value"] <= 1.0 and -1.0 <= sil["euclidean"] <= 1.0
    assert v["settings"]["tsne_max"] == 120 and v["settings"]["quantization"] == "int8-pointwise"
    assert v["machine_panels"] == [] and v["notes"] == []
    for name in ("embeddings_pca_check.png", "embeddings_tsne.png"):
        w, h = png_size(out / name)
        assert 500 <= w <= 3000 and 300 <= h <= 2000, (name, w, h)
    assert sum(pca for pca in v["pca"]["explained_variance_ratio"]) < 1.0


def test_several_machines_get_panels(yamnet_path, cache_dir, tmp_path):
    from fanwatch import synth

    data = tmp_path / "dcase"
    synth.generate_dataset(
        data, layout="dcase", seed=5, seconds=2.0, files_per_state=1, files_per_fault=1, progress=False
    )
    v = visualize.visualize(visualize.VisualizeSettings(data=data, out=tmp_path / "vis", progress=False))
    assert v["machine_panels"] == ["fan/id_00", "fan/id_02"]
    assert v["counts"]["windows"] == 6 * 3 and v["subsample"]["windows"] == 18  # 2 s files: 3 windows each
    assert set(v["silhouette"]["per_machine"]) == {"fan/id_00", "fan/id_02"}
    w_pca, _ = png_size(tmp_path / "vis" / "embeddings_pca_check.png")
    w_tsne, _ = png_size(tmp_path / "vis" / "embeddings_tsne.png")
    assert w_pca > 1200 and w_tsne > 1200  # three panels side by side


def test_stratified_subsample():
    labels = np.array(["a"] * 1000 + ["b"] * 90 + ["c"] * 5)
    idx = visualize.stratified_subsample(labels, 200, seed=0)
    assert len(idx) == 200 and len(set(idx.tolist())) == 200 and np.all(np.diff(idx) > 0)
    counts = {k: int((labels[idx] == k).sum()) for k in "abc"}
    assert counts["c"] == 5 and counts["b"] >= 20 and counts["a"] > counts["b"]
    assert np.array_equal(idx, visualize.stratified_subsample(labels, 200, seed=0))
    assert not np.array_equal(idx, visualize.stratified_subsample(labels, 200, seed=1))
    assert np.array_equal(visualize.stratified_subsample(labels, 5000), np.arange(len(labels)))


def test_cli_bad_data_folder_is_one_line_exit_2(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "visualize_data.py"),
            "--data",
            str(tmp_path / "missing"),
            "--out",
            str(tmp_path / "vis"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "dataset folder not found" in lines[0]
