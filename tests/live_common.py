"""Helpers shared by the live-loop tests (tests/test_live_*.py): the scenario recording, the reference
debouncing rules, CLI runs, and a stub classifier for tests of the analysis logic that need no real model.

The scenario: a fan runs at high speed for 3 s and then with an imbalanced rotor; end-to-end tests replay it
through ``--wav`` and capture it through PortAudio from a virtual ALSA microphone (tests/alsa_virtual.py).
"""

from __future__ import annotations

import ctypes.util
import functools
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from fanwatch import audio, config, runtime, synth
from fanwatch.card import ModelCard
from fanwatch.runtime import Prediction, StatelessAnomaly

REPO = Path(__file__).resolve().parents[1]
INFERENCE = REPO / "inference.py"

SCENARIO_RATE = 48000
NORMAL_SECONDS = 3.0  # high_speed, then an imbalance fault (the fault these small models detect best:
# about twice the threshold, where bearing or rubbing faults hover around it)
FAULT_SECONDS = 5.0
SPLICE = NORMAL_SECONDS


@functools.cache
def scenario(rate: int = SCENARIO_RATE) -> np.ndarray:
    """The fan at high speed, then with an imbalance: rendered at 48 kHz (one acoustic scene); other
    rates hear the same scene through soxr. Peak below -1 dBFS."""
    normal = synth.render("high_speed", NORMAL_SECONDS, 3002, sample_rate=SCENARIO_RATE, snr_db=12.0)
    fault = synth.render("imbalance", FAULT_SECONDS, 3006, sample_rate=SCENARIO_RATE, snr_db=20.0)
    x = np.concatenate([normal, fault]).astype(np.float32)
    return x if rate == SCENARIO_RATE else audio.resample(x, SCENARIO_RATE, rate)


def model_path(artifacts: Path) -> Path:
    return artifacts / runtime.MODEL_NAME


@functools.lru_cache(maxsize=2)
def _classifier(path: str):
    return runtime.SoundClassifier(path)


def offline(classifier, signal_16k: np.ndarray, hop: int = config.HOP_SAMPLES):
    """(ratios, labels) of every window, computed the training way (whole signal, frame_windows)."""
    ratios, labels = [], []
    stream = classifier.anomaly_stream()  # one continuous recording: one anomaly state (the score's horizon)
    for window in audio.frame_windows(signal_16k, hop=hop):
        p = classifier.predict(window)
        ratios.append(stream.update(p)[1])
        labels.append(classifier.labels[int(np.argmax(p.probabilities))])
    return np.array(ratios), labels


def parse(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def kinds(records, kind):
    return [r for r in records if r["type"] == kind]


def events(records, name=None):
    return [r for r in records if r["type"] == "event" and (name is None or r["event"] == name)]


def decision_events(records) -> list[dict]:
    """The state / alert events of a run, reduced to what the decision rules determine."""
    keep = ("state", "alert_raised", "alert_cleared")
    return [
        {"event": e["event"], "t": round(e["t"], 3), **({"to": e["to"]} if e["event"] == "state" else {})}
        for e in events(records)
        if e["event"] in keep
    ]


def reference_events(labels, anomalous, t_end, k=3, n=3, m=4, clear_n=0) -> list[dict]:
    """The debouncing rules written out independently of fanwatch.live.decisions: a state is reported after k
    agreeing windows in a row, an alert raised when n of the last m windows are anomalous and cleared
    when at most clear_n of the last m are."""
    out, state, run_label, run, history, alert = [], None, None, 0, [], False
    for label, over, t in zip(labels, anomalous, t_end):
        run = run + 1 if label == run_label else 1
        run_label = label
        if run >= k and label != state:
            state = label
            out.append({"event": "state", "t": round(float(t), 3), "to": label})
        history.append(bool(over))
        recent = history[-m:]
        if not alert and sum(recent) >= n:
            alert = True
            out.append({"event": "alert_raised", "t": round(float(t), 3)})
        elif alert and len(recent) == m and sum(recent) <= clear_n:
            alert = False
            out.append({"event": "alert_cleared", "t": round(float(t), 3)})
    return out


def live_vs_offline(windows: list[dict], ratios: np.ndarray, skip: int) -> tuple[float, int]:
    """(largest |live - offline| ratio, windows compared): each live window matched by its end time with the
    offline window ending then, the first ``skip`` live windows left out (the score's horizon carries a
    segment's start for that many). A segment's start-up padding is skipped live, so live windows may begin
    later than the offline ones; they must never be between them or elsewhere."""
    t_live = np.array([w["t"] for w in windows])
    index = np.rint((t_live - window_ends(1)[0]) / config.HOP_SECONDS).astype(int)
    assert np.allclose(window_ends(int(index.max()) + 1)[index], t_live, atol=1e-3), "live windows off the hop grid"
    assert np.all(np.diff(index) == 1), f"live windows not consecutive: {index.tolist()}"
    keep = (np.arange(len(index)) >= skip) & (index < len(ratios))
    live = np.array([w["anomaly"] for w in windows])
    err = float(np.abs(live[keep] - ratios[index[keep]]).max()) if keep.any() else float("inf")
    return err, int(keep.sum())


def window_ends(n: int, shift: float = 0.0) -> np.ndarray:
    return shift + (np.arange(n) * config.HOP_SAMPLES + config.WINDOW_SAMPLES) / config.SAMPLE_RATE


def check_scenario(decisions: list[dict], shift: float = 0.0, what: str = "the loop"):
    """State high_speed -> fault_imbalance, exactly one alert, raised soon after the fault starts."""
    states = [e for e in decisions if e["event"] == "state"]
    raised = [e for e in decisions if e["event"] == "alert_raised"]
    message = f"{what}: {decisions}"
    assert [e["to"] for e in states][:1] == ["high_speed"], message
    assert "fault_imbalance" in [e["to"] for e in states], message
    assert all(e["t"] > SPLICE + shift for e in states[1:]), message  # nothing spurious before the fault
    assert len(raised) == 1, message
    assert SPLICE + shift < raised[0]["t"] <= SPLICE + shift + 3.5, message
    assert not [e for e in decisions if e["event"] == "alert_cleared"], message


def check_decisions(records, shift: float = 0.0):
    """The live events are exactly what the rules give for the live windows, and tell the scenario."""
    windows = kinds(records, "window")
    for w in windows:  # a window whose score is settling (its horizon starting) counts towards no alert
        assert w["anomalous"] == (w["anomaly"] > 1.0 and not w["settling"]) or abs(w["anomaly"] - 1.0) < 1e-3
    live = decision_events(records)
    expected = reference_events(
        [w["label"] for w in windows], [w["anomalous"] for w in windows], [w["t"] for w in windows]
    )
    assert live == expected
    check_scenario(live, shift)
    before = [w for w in windows if w["t"] <= SPLICE + shift]
    assert before and not any(w["alert"] for w in before)


def run_cli(args, timeout=60, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(INFERENCE), *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        **kw,
    )


def portaudio_available() -> bool:
    return importlib.util.find_spec("sounddevice") is not None and ctypes.util.find_library("portaudio") is not None


def model_copy(trained_model: Path, directory: Path, edit=None) -> Path:
    """The fixture model in ``directory`` with its card changed by ``edit(card)``."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(model_path(trained_model), directory / runtime.MODEL_NAME)
    if (trained_model / runtime.SCORER_NAME).is_file():  # the anomaly score's numpy state travels with the model
        shutil.copy(trained_model / runtime.SCORER_NAME, directory / runtime.SCORER_NAME)
    card = json.loads((trained_model / runtime.CARD_NAME).read_text())
    if edit is not None:
        edit(card)
    (directory / runtime.CARD_NAME).write_text(json.dumps(card))
    return directory / runtime.MODEL_NAME


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The CLI ended with status 2 and one "error: ..." line (PortAudio/ALSA may print their own noise)."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


class StubClassifier:
    """A deterministic stand-in for :class:`fanwatch.runtime.SoundClassifier`: the "anomaly score" of a window
    is its RMS level, the label says whether its level is above ``loud``. Enough for the analysis logic
    (framing, resampling, gaps, debouncing), which does not care what the model computes."""

    def __init__(self, threshold: float = 0.1, loud: float = 0.1, hop_samples: int = config.HOP_SAMPLES):
        self.labels = ["quiet", "loud"]
        self.machines = ["default"]
        self.thresholds = np.asarray([threshold], np.float32)
        self.loud = loud
        self.runtime = "stub"
        self.sha256 = None
        self.card = ModelCard.from_dict(
            {
                "labels": self.labels,
                "anomaly": {"machines": self.machines, "thresholds": {"default": threshold}},
                "hop_samples": hop_samples,
            },
            "stub card",
        )
        self.calls = 0

    def predict(self, window: np.ndarray) -> Prediction:
        self.calls += 1
        assert window.shape == (config.WINDOW_SAMPLES,) and window.dtype == np.float32
        rms = float(np.sqrt(np.mean(np.square(window, dtype=np.float64))))
        loud = 1.0 / (1.0 + np.exp(-(rms - self.loud) * 100.0))
        return Prediction(
            probabilities=np.asarray([1.0 - loud, loud], np.float32), anomaly_scores=np.asarray([rms], np.float32)
        )

    def anomaly(self, scores) -> tuple[int, float]:
        return 0, float(np.asarray(scores, np.float32)[0] / self.thresholds[0])

    def anomaly_ratio(self, scores) -> float:
        return self.anomaly(scores)[1]

    def anomaly_stream(self, hop_s=None):
        return StatelessAnomaly(self)

    def scoring(self) -> dict:
        return {"machine": None, "unknown_machine": False, "scored_as": "default", "rule": "stub"}
