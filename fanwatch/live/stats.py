"""Loop statistics: constant-memory percentiles and the counters behind the summary record."""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field

import numpy as np

try:
    import resource
except ImportError:  # not on Windows; only used for the peak-memory figure
    resource = None


class Histogram:
    """Constant-memory distribution of positive values (log-spaced bins, ~1 % resolution) for percentiles.

    The loop runs for months; keeping every inference time would grow without bound.
    """

    LOW = 1e-3
    STEP = math.log(1.01)
    BINS = 2400  # 1e-3 * 1.01**2400 ~ 2.3e7

    def __init__(self):
        self.counts = np.zeros(self.BINS, dtype=np.int64)
        self.n = 0
        self.total = 0.0
        self.max = 0.0

    def add(self, value: float) -> None:
        value = max(float(value), 0.0)
        i = 0 if value <= self.LOW else min(int(math.log(value / self.LOW) / self.STEP) + 1, self.BINS - 1)
        self.counts[i] += 1
        self.n += 1
        self.total += value
        self.max = max(self.max, value)

    def quantile(self, q: float) -> float | None:
        if self.n == 0:
            return None
        rank = q * (self.n - 1)
        i = int(np.searchsorted(np.cumsum(self.counts), rank, side="right"))
        i = min(i, self.BINS - 1)
        if i == 0:
            return self.LOW
        lo = self.LOW * math.exp((i - 1) * self.STEP)
        return min(lo * math.exp(0.5 * self.STEP), self.max)  # bin centre, never above the maximum


@dataclass
class LoopStats:
    """Counters shared by the source (callback thread), the worker and the supervisor."""

    blocks: int = 0
    dropped_blocks: int = 0
    dropped_seconds: float = 0.0
    overflows: int = 0
    gap_restarts: int = 0  # the analysis restarted after lost audio (drops, overflows)
    input_faults: int = 0  # episodes of unusable input (silence, a constant, NaN, ...): no window, no alert
    input_fault_seconds: float = 0.0  # audio not analysed because of them
    windows: int = 0
    alerts: int = 0
    state_changes: int = 0
    device_losses: int = 0
    device_errors: int = 0
    max_queue_depth: int = 0
    started: float = field(default_factory=time.monotonic)
    cpu_started: float = field(default_factory=time.process_time)
    first_decision: float | None = None  # monotonic time of the first window's decision
    last_decision: float | None = None
    cpu_at_first_decision: float | None = None
    inference_ms: Histogram = field(default_factory=Histogram)
    latency_ms: Histogram = field(default_factory=Histogram)

    def summary(self, reason: str) -> dict:
        now = time.monotonic()
        cpu = time.process_time()
        uptime = now - self.started
        out = {
            "type": "summary",
            "reason": reason,
            "uptime_s": round(uptime, 3),
            "blocks": self.blocks,
            "windows": self.windows,
            "alerts": self.alerts,
            "state_changes": self.state_changes,
            "dropped_blocks": self.dropped_blocks,
            "dropped_seconds": round(self.dropped_seconds, 3),
            "overflows": self.overflows,
            "gap_restarts": self.gap_restarts,
            "input_faults": self.input_faults,
            "input_fault_seconds": round(self.input_fault_seconds, 3),
            "device_losses": self.device_losses,
            "device_errors": self.device_errors,
            "max_queue_depth": self.max_queue_depth,
            "inference_ms_median": _round(self.inference_ms.quantile(0.5)),
            "inference_ms_p95": _round(self.inference_ms.quantile(0.95)),
            "inference_ms_max": _round(self.inference_ms.max if self.inference_ms.n else None),
            "latency_ms_median": _round(self.latency_ms.quantile(0.5)),
            "latency_ms_p95": _round(self.latency_ms.quantile(0.95)),
            "latency_ms_max": _round(self.latency_ms.max if self.latency_ms.n else None),
            "cpu_s": round(cpu - self.cpu_started, 3),
            "cpu_percent": round(100.0 * (cpu - self.cpu_started) / uptime, 2) if uptime > 0 else None,
            "first_decision_s": None if self.first_decision is None else round(self.first_decision - self.started, 3),
            "peak_rss_mb": peak_rss_mb(),
        }
        span = (self.last_decision or 0.0) - (self.first_decision or 0.0)
        out["windows_per_second"] = round((self.windows - 1) / span, 2) if self.windows > 1 and span > 0 else None
        if self.first_decision is not None and now - self.first_decision > 0.5:
            steady_cpu = cpu - (self.cpu_at_first_decision or 0.0)
            out["cpu_percent_steady"] = round(100.0 * steady_cpu / (now - self.first_decision), 2)
        else:
            out["cpu_percent_steady"] = None
        return out


def peak_rss_mb() -> float | None:
    """Peak resident memory of this process image in MB: VmHWM on Linux (``ru_maxrss`` survives ``exec``
    there and would report a big parent's peak), else ``ru_maxrss``."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024.0, 1)
    except (OSError, ValueError, IndexError):
        pass
    if resource is None:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024.0 * 1024.0 if sys.platform == "darwin" else 1024.0), 1)


def _round(value, digits: int = 3):
    return None if value is None else round(float(value), digits)
