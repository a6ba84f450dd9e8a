"""The live loop's decisions, window by window: operating state, anomaly alerts and known-fault alerts.

Two kinds of alert share one event stream (``alert_raised`` / ``alert_cleared`` with a ``kind`` field):

* ``unknown_anomaly``: the anomaly evidence (:class:`fanwatch.evidence.AlertRule`, the CUSUM of the score
  ratio) reached the threshold calibrated for the target false alerts per day; any sound unlike normal
  running, including faults never seen in training;
* ``known_fault``: the head keeps saying "a fault class" (e.g. ``fault_bearing``): the same CUSUM, over the
  odds the head gives to its fault classes together (``p / (1 - p)``, reference 1: a window where the faults
  are more likely than not adds, one where they are not drains), calibrated the same way on the normal
  validation recordings. The event names the ``class``: the fault class with the most probability since the
  evidence last left zero. Measured in ``bench/alerts.py``: alerting when the debounced state (3 agreeing
  windows) is a fault class raised 8 and 21 false alerts per hour in two unheard recording sessions; the
  calibrated CUSUM of the fault odds raised none in 3 h and still alerted 78-97 % of faults within 15 s.

Each kind raises and clears on its own; a window's ``alert`` is true while either is active. The old rule
("N of the last M windows at or above the threshold") stays available as ``n_of_m=(n, m, clear_n,
clear_ratio)``.

Runtime module: numpy and the standard library.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from . import evidence

UNKNOWN = "unknown_anomaly"
KNOWN = "known_fault"
RULES = ("evidence", "n-of-m")
RECENT = 4  # the alert events' "exceeding ... of" fields: windows at or above the threshold among the last 4
KNOWN_FAULT_DEFAULTS = {"reference": 1.0, "clip": 2.0, "threshold": 12.0}  # uncalibrated (a card without one)


def fault_odds(probabilities, fault_index) -> float:
    """The odds the head gives to its fault classes together: p / (1 - p)."""
    p = float(np.sum(np.asarray(probabilities, np.float64)[fault_index])) if len(fault_index) else 0.0
    p = min(max(p, 1e-6), 1 - 1e-6)
    return p / (1.0 - p)


def anomalous_labels(card: dict | None) -> list[str]:
    """The head's classes that are faults: its labels that are not normal states (none when the head was
    trained on machine ids or normal classes only)."""
    card = card or {}
    if card.get("head_target", "label") != "label":
        return []
    labels = list(card.get("labels") or [])
    normal = card.get("normal_labels")
    if normal is None:
        return []
    return [label for label in labels if label not in set(normal)]


@dataclass
class Decision:
    """What one window decided: events (dicts without ``type``/``time``) and the alert state after it."""

    events: list
    alert: bool
    state: str | None
    evidence: float | None  # anomaly evidence relative to its threshold (1.0 = alert level); None for n-of-m
    kinds: list  # active alert kinds


class Decisions:
    """State debouncing, anomaly evidence and known-fault alerts for one continuous stream of windows."""

    def __init__(self, rule: evidence.EvidenceRule, hop_s: float, state_k: int = 3, labels=(), fault_labels=(),
                 known_rule: evidence.EvidenceRule | None = None, n_of_m=None):
        from .stream import AlertDebouncer, StateDebouncer  # the loop's debouncers (kept where they are)

        self.states = StateDebouncer(state_k)
        self.rule = rule
        self.evidence = evidence.AlertRule(rule, hop_s) if n_of_m is None else None
        self.n_of_m = AlertDebouncer(*n_of_m) if n_of_m is not None else None
        self.labels = list(labels)
        self.fault_index = [i for i, label in enumerate(self.labels) if label in set(fault_labels)]
        self.known_rule = known_rule or evidence.EvidenceRule(**KNOWN_FAULT_DEFAULTS)
        self.known_evidence = evidence.AlertRule(self.known_rule, hop_s) if self.fault_index else None
        self.known: str | None = None  # class of the active known-fault alert
        self._fault_mass = np.zeros(len(self.fault_index))
        self._recent: deque = deque(maxlen=RECENT)

    @property
    def anomaly_active(self) -> bool:
        return (self.evidence.active if self.evidence is not None else self.n_of_m.active)

    @property
    def active(self) -> bool:
        return self.anomaly_active or self.known is not None

    def kinds(self) -> list[str]:
        return ([UNKNOWN] if self.anomaly_active else []) + ([KNOWN] if self.known is not None else [])

    def update(self, t: float, label: str, confidence: float, ratio: float, probabilities=None) -> Decision:
        """One window: its top label and confidence, anomaly ratio, and the head's probabilities (for the
        known-fault evidence; without them no known-fault alert is possible)."""
        events = []
        t = round(float(t), 3)
        change = self.states.update(label)
        if change is not None:
            events.append({"event": "state", "t": t, "from": change[0], "to": change[1],
                           "confidence": round(float(confidence), 4)})
        state = self.states.state
        self._recent.append(ratio >= 1.0)
        if self.evidence is not None:
            change = self.evidence.update(ratio)
            level = self.evidence.level
            exceeding, of = sum(self._recent), RECENT
        else:
            change = self.n_of_m.update(ratio)
            level = None
            exceeding, of = self.n_of_m.exceeding(), self.n_of_m.m
        if change is not None:
            event = {"event": f"alert_{change}", "t": t, "kind": UNKNOWN, "anomaly": round(float(ratio), 4),
                     "exceeding": exceeding, "of": of, "label": label, "state": state}
            if level is not None:
                event["evidence"] = round(level, 4)
            events.append(event)
        if self.known_evidence is not None and probabilities is not None:
            p = np.asarray(probabilities, np.float64)
            odds = fault_odds(p, self.fault_index)
            before = self.known_evidence.value
            change = self.known_evidence.update(odds)
            if before == 0.0:
                self._fault_mass[:] = 0.0
            self._fault_mass += p[self.fault_index]
            if change == "raised":
                self.known = self.labels[self.fault_index[int(np.argmax(self._fault_mass))]]
                events.append({"event": "alert_raised", "t": t, "kind": KNOWN, "class": self.known,
                               "anomaly": round(float(ratio), 4), "fault_probability": round(odds / (1 + odds), 4),
                               "evidence": round(self.known_evidence.level, 4), "label": label, "state": state})
            elif change == "cleared":
                events.append({"event": "alert_cleared", "t": t, "kind": KNOWN, "class": self.known,
                               "anomaly": round(float(ratio), 4), "evidence": round(self.known_evidence.level, 4),
                               "label": label, "state": state})
                self.known = None
        return Decision(events=events, alert=self.active, state=state, evidence=level, kinds=self.kinds())
