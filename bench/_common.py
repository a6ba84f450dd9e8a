"""Helpers shared by the benchmark scripts: results JSON and machine facts.

Run the benchmarks as modules from the repository root (``python -m bench.latency``), so that ``fanwatch``
and ``bench`` import without touching ``sys.path``.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

RESULTS = REPO / "bench" / "results"
# ../shared/realdata beside the repository (a worktree sits one level deeper)
REAL = next(
    (p for p in (REPO.parent / "shared" / "realdata", REPO.parent.parent / "shared" / "realdata") if p.is_dir()),
    REPO.parent / "shared" / "realdata",
)


def machine() -> dict:
    return {
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "load_average": os.getloadavg(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write_results(name: str, data: dict, out: str | None = None) -> Path:
    path = Path(out) if out else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"benchmark": name, "machine": machine(), **data}
    path.write_text(json.dumps(data, indent=2) + "\n")
    print(f"results written to {path}")
    return path
