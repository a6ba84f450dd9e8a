"""tensorflow vs tensorflow-cpu: same exported models and outputs? How big is each?

    python -m bench.tensorflow_variants --python /path/to/venv-tensorflow/bin/python \\
                                        --python /path/to/venv-tensorflow-cpu/bin/python

Each interpreter (a venv with requirements.txt, one with ``tensorflow``, one with ``tensorflow-cpu``)
builds YAMNet from the same weights, exports the front end as float32 and int8-pointwise TFLite, runs
8 seeded windows through the Keras model and the TFLite files, and trains a seeded head on seeded
embeddings. Printed: the installed size of each ``tensorflow`` package folder, the sha256 of every
exported file and the largest output difference between the two, and whether "cuInit" appeared on stderr.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from bench._common import REPO, write_results
from fanwatch import config

CHILD = r"""
import sys
from pathlib import Path
import numpy as np
import tensorflow as tf
from fanwatch import config, export, runtime, yamnet
from fanwatch.head import train_head
out = Path(sys.argv[1])
w = yamnet.load_weights(sys.argv[2])
rng = np.random.default_rng(0)
x = (0.1 * rng.standard_normal((8, config.WINDOW_SAMPLES))).astype(np.float32)
keras_out = yamnet.build_model(w, with_scores=True).predict(x, verbose=0)
front = yamnet.build_model(w, with_scores=False, name="frontend")
arrays = {"keras_" + k: np.asarray(v) for k, v in keras_out.items()}
for q in ("float32", "int8-pointwise"):
    m = runtime.TFLiteModel(export.export_tflite(front, out / f"front_{q}.tflite", q))
    arrays["tflite_" + q] = np.stack([m(xi)["embedding"] for xi in x])
emb = rng.standard_normal((300, 1024)).astype(np.float32)
y = (emb[:, 0] > 0).astype(int) + (emb[:, 1] > 0).astype(int)
head = train_head(emb[:200], y[:200], emb[200:], y[200:], ["a", "b", "c"], seed=0, epochs=30, patience=5)
arrays["head_probabilities"] = head.model.predict(emb, verbose=0)
np.savez(out / "outputs.npz", **arrays)
print(tf.__version__, Path(tf.__file__).parent)
"""


def folder_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6


def run(python: str, yamnet: str, out: Path) -> dict:
    out.mkdir(parents=True)
    proc = subprocess.run(
        [python, "-c", CHILD, str(out), yamnet],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "0"},
        check=False,
    )
    if proc.returncode != 0:
        sys.exit(f"{python} failed:\n{proc.stderr[-3000:]}")
    version, package = proc.stdout.split()[-2:]
    return {
        "python": python,
        "tensorflow": version,
        "package_mb": round(folder_mb(Path(package)), 1),
        "cuInit_on_stderr": "cuInit" in proc.stderr,
        "sha256": {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("*.tflite"))},
        "outputs": dict(np.load(out / "outputs.npz")),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--python", action="append", required=True, help="an interpreter to compare (give two)")
    p.add_argument(
        "--yamnet",
        default=str(config.resolve_yamnet_path(None)),
        help="YAMNet weights (default $FANWATCH_YAMNET, else models/yamnet.tflite)",
    )
    p.add_argument("--out", default=None, help="results JSON (default bench/results/tensorflow_variants.json)")
    args = p.parse_args()
    if len(args.python) != 2:
        sys.exit("give --python twice: a tensorflow venv and a tensorflow-cpu venv")
    with tempfile.TemporaryDirectory() as tmp:
        a, b = (run(py, args.yamnet, Path(tmp) / str(i)) for i, py in enumerate(args.python))
    diffs = {k: float(np.abs(a["outputs"][k] - b["outputs"][k]).max()) for k in a["outputs"]}
    for r in (a, b):
        print(
            f"{r['python']}: tensorflow {r['tensorflow']}, package {r['package_mb']:.0f} MB, "
            f"cuInit error on stderr: {r['cuInit_on_stderr']}"
        )
    print(f"exported TFLite files identical: {a['sha256'] == b['sha256']}")
    print("largest output differences: " + ", ".join(f"{k} {v:.3g}" for k, v in diffs.items()))
    write_results(
        "tensorflow_variants",
        {
            "runs": [{k: v for k, v in r.items() if k != "outputs"} for r in (a, b)],
            "tflite_identical": a["sha256"] == b["sha256"],
            "max_output_diff": diffs,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
