"""Alert-level evaluation: the test recordings replayed as continuous streams through the live Analyzer.

What a maintenance engineer lives with is false alerts per day and how soon a real fault raises one. Per
machine id, evaluate_model.py replays

* one **normal stream**: the machine's normal test recordings one after the other (in recording order,
  i.e. sorted by file name) through one :class:`fanwatch.live.analyzer.Analyzer` (its decisions carry on from
  file to file, as in a long live run; the resampler restarts at each file): false alerts per hour;
* one **fault stream** per anomalous recording, through a fresh Analyzer (evidence starting from zero, where
  normal running keeps it): is an alert raised while the fault plays (or while the last windows still hold
  it), and how long after the fault's start.

Both use the live decision code itself (alert kinds, calibrated thresholds, the site calibration when one is
applied). Results go under ``alerts`` in metrics.json, with a timeline plot per stream (score ratio,
evidence, alert spans).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import config, evidence
from .errors import FanwatchError

HORIZON_S = 15.0  # "alerted within the horizon"
MAX_FAULT_PLOTS = 24  # fault streams drawn per machine (small multiples)


@dataclass
class StreamReplay:
    machine: str
    kind: str  # "normal" or "fault"
    files: list[str]
    seconds: float
    t: np.ndarray
    anomaly: np.ndarray
    evidence: np.ndarray
    alert: np.ndarray
    raised: list[dict] = field(default_factory=list)  # alert_raised events
    channels: dict = field(default_factory=dict)  # the score's side channels: {channel: [n] score / threshold}
    faults: list[tuple[float, float]] = field(default_factory=list)  # (onset, end) in stream seconds
    skipped: list[tuple[str, str]] = field(default_factory=list)


def replay(make_analyzer, files: list[str], machine: str, kind: str) -> StreamReplay:
    """The files one after the other through one Analyzer; bad files are skipped with their reason."""
    analyzer = make_analyzer()
    results, used, skipped = [], [], []
    for path in files:
        try:
            out = analyzer.run_file(path)
        except FanwatchError as exc:
            skipped.append((str(path), str(exc)))
            analyzer.reset()
            continue
        analyzer.reset()  # the next file is new audio: the resampler restarts, the decisions carry on
        results += out
        used.append(str(path))
    t = np.array([r.t for r in results])
    rep = StreamReplay(
        machine=machine,
        kind=kind,
        files=used,
        seconds=float(t[-1]) if len(t) else 0.0,
        t=t,
        anomaly=np.array([r.anomaly for r in results]),
        evidence=np.array(
            [np.nan if getattr(r, "evidence", None) is None else r.evidence for r in results], dtype=np.float64
        ),
        alert=np.array([r.alert for r in results], dtype=bool),
        raised=[e for r in results for e in r.events if e["event"] == "alert_raised"],
        skipped=skipped,
        channels={
            ch: np.array([r.channels.get(ch, np.nan) for r in results], dtype=np.float64)
            for ch in sorted({ch for r in results for ch in r.channels})
        },
    )
    if kind == "fault" and used:
        rep.faults = [(0.0, rep.seconds)]  # the whole recording is the fault
    return rep


def metrics(normal: list[StreamReplay], faults: list[StreamReplay], horizon_s: float = HORIZON_S) -> dict:
    """False alerts per hour on the normal streams; share of fault streams alerted within the horizon,
    median and 95th percentile time to alert (a missed fault counts as never); by alert kind too."""
    streams = [{"seconds": r.seconds, "raised": [e["t"] for e in r.raised], "faults": []} for r in normal]
    streams += [{"seconds": r.seconds, "raised": [e["t"] for e in r.raised], "faults": r.faults} for r in faults]
    out = evidence.stream_metrics(streams, horizon_s=horizon_s, window_s=config.WINDOW_SECONDS)
    out["normal_streams"] = len(normal)
    out["fault_files_seconds_median"] = round(float(np.median([r.seconds for r in faults])), 2) if faults else None
    kinds = sorted({e.get("kind", "unknown_anomaly") for r in normal + faults for e in r.raised})
    out["by_kind"] = {}
    for kind in kinds:
        s = [
            dict(x, raised=[e["t"] for e in r.raised if e.get("kind", "unknown_anomaly") == kind])
            for x, r in zip(streams, normal + faults)
        ]
        m = evidence.stream_metrics(s, horizon_s=horizon_s, window_s=config.WINDOW_SECONDS)
        out["by_kind"][kind] = {
            k: m[k]
            for k in (
                "false_alerts",
                "false_alerts_per_hour",
                "faults_alerted",
                "share_alerted_within_horizon",
                "median_time_to_alert_s",
            )
        }
    return out


def plot_timeline(replays: list[StreamReplay], path: Path, title: str) -> Path:
    """Score ratio (and the side channels'), evidence (relative to its alert level) and alert spans, one panel
    per stream."""
    from .evaluation import pyplot

    plt = pyplot()
    n = len(replays)
    fig, axes = plt.subplots(n, 1, figsize=(11, 1.9 * n + 0.6), squeeze=False, sharex=False)
    for ax, r in zip(axes[:, 0], replays):
        if len(r.t):
            ax.plot(r.t, r.anomaly, lw=0.8, color="tab:blue", label="score / threshold")
            for (ch, ratio), colour in zip(r.channels.items(), ("tab:green", "tab:purple", "tab:brown")):
                ax.plot(r.t, ratio, lw=0.7, color=colour, alpha=0.8, label=f"{ch} channel / its threshold")
            if np.isfinite(r.evidence).any():
                ax.plot(r.t, r.evidence, lw=1.2, color="tab:orange", label="evidence / alert level")
            ax.axhline(1.0, color="k", lw=0.8, ls="--", label="1.0 (threshold / alert level)")
            for a, b in _spans(r.t, r.alert):
                ax.axvspan(a, b, color="tab:red", alpha=0.2, lw=0)
            for a, b in r.faults:
                ax.axvspan(a, b, color="tab:gray", alpha=0.12, lw=0)
            for e in r.raised:
                ax.axvline(e["t"], color="tab:red", lw=1.0)
            top = max(2.0, float(np.nanpercentile(np.r_[r.anomaly, np.nan_to_num(r.evidence)], 99)) * 1.1)
            ax.set_ylim(0, min(top, 10.0))
        name = Path(r.files[0]).name if len(r.files) == 1 else f"{len(r.files)} files"
        ax.set_title(f"{r.machine} {r.kind}: {name}, {len(r.raised)} alert(s)", fontsize=8, loc="left")
        ax.tick_params(labelsize=7)
    axes[0, 0].legend(fontsize=7, loc="upper right")
    axes[-1, 0].set_xlabel("stream time (s); red: alert active, grey: fault audio")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _spans(t: np.ndarray, active: np.ndarray) -> list[tuple[float, float]]:
    spans, start = [], None
    for ti, a in zip(t, active):
        if a and start is None:
            start = ti
        elif not a and start is not None:
            spans.append((start, ti))
            start = None
    if start is not None:
        spans.append((start, t[-1]))
    return spans


def evaluate_alerts(make_analyzer, recordings, out: Path, horizon_s: float = HORIZON_S, progress: bool = True):
    """Replay the recordings per machine (normal stream, one fault stream per anomalous file);
    ``make_analyzer(machine)`` gives a fresh Analyzer for a stream of that machine. Returns (metrics, plot file
    names)."""
    by_machine: dict[str, list] = {}
    for r in recordings:
        by_machine.setdefault(r.machine, []).append(r)
    normal, faults, written, per_machine = [], [], [], {}
    todo = sum(1 for recs in by_machine.values() for r in recs)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=todo, desc="alert streams", unit="file")
    try:
        for machine, recs in sorted(by_machine.items()):
            recs = sorted(recs, key=lambda r: str(r.path))
            n_files = [str(r.path) for r in recs if r.normal]
            a_files = [str(r.path) for r in recs if not r.normal]

            def make(machine=machine):
                return make_analyzer(machine)

            m_normal = [replay(make, n_files, machine, "normal")] if n_files else []
            if bar:
                bar.update(len(n_files))
            m_faults = []
            for f in a_files:
                m_faults.append(replay(make, [f], machine, "fault"))
                if bar:
                    bar.update(1)
            m_faults = [r for r in m_faults if r.files]
            normal += m_normal
            faults += m_faults
            per_machine[machine] = metrics(m_normal, m_faults, horizon_s)
            stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in machine)
            if m_normal:
                name = f"alerts_timeline_{stem}_normal.png"
                plot_timeline(m_normal, out / name, f"{machine}: normal test recordings as one stream")
                written.append(name)
            if m_faults:
                name = f"alerts_timeline_{stem}_faults.png"
                shown = m_faults[:MAX_FAULT_PLOTS]
                plot_timeline(
                    shown,
                    out / name,
                    f"{machine}: each anomalous recording as a fault stream"
                    + (f" (first {len(shown)} of {len(m_faults)})" if len(shown) < len(m_faults) else ""),
                )
                written.append(name)
    finally:
        if bar:
            bar.close()
    overall = metrics(normal, faults, horizon_s)
    skipped = [{"file": f, "reason": why} for r in normal + faults for f, why in r.skipped]
    overall.update(
        {
            "per_machine": per_machine,
            "definitions": {
                "normal stream": "a machine's normal test recordings one after the other (sorted by name) through one "
                "live Analyzer, its decisions carrying on from file to file",
                "fault stream": "one anomalous recording through a fresh Analyzer (evidence from zero); detected when "
                "an alert is raised while it plays (or within one window after)",
                "time to alert": "from the start of the fault recording to the end of the window that raised the "
                "alert; percentiles over all fault streams, a missed one counting as never (null)",
                "false_alerts_per_hour": "alerts raised on normal streams per hour of normal stream audio",
            },
            "skipped": skipped,
        }
    )
    if math.isfinite(overall.get("normal_hours") or 0) and (overall.get("normal_hours") or 0) < 0.25:
        overall["note"] = (
            f"only {60 * overall['normal_hours']:.1f} min of normal test audio: false alerts per "
            "hour rest on little audio"
        )
    return overall, written
