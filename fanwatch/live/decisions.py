"""The live loop's decisions, window by window: operating state, anomaly alerts and known-fault alerts.

Two kinds of alert share one event stream (``alert_raised`` / ``alert_cleared`` with a ``kind`` field):

* ``unknown_anomaly``: the anomaly evidence (:class:`fanwatch.evidence.AlertRule`, the CUSUM of the score
  ratio) reached the alert level calibrated for the target false alerts per day; any sound unlike normal
  running, including faults never seen in training. The score's side channels (:mod:`fanwatch.scorer`: the
  modulation spectrum by default) each keep their own CUSUM with their own calibrated level; whichever
  reaches its level first raises the one alert (``evidence_from``: ``"score"`` or the channel), and it clears
  when all of them have cleared;
* ``known_fault``: the head keeps saying "a fault class" (e.g. ``fault_bearing``): the same CUSUM, over the
  odds the head gives to its fault classes together (``p / (1 - p)``, reference 1: a window where the faults
  are more likely than not adds, one where they are not drains), calibrated the same way on the normal
  validation recordings. The event names the ``class``: the fault class with the most probability since the
  evidence last left zero. Measured in ``bench/alerts.py``: alerting when the debounced state (3 agreeing
  windows) is a fault class raised 8 and 21 false alerts per hour in two unheard recording sessions; the
  calibrated CUSUM of the fault odds raised none in 3 h and still alerted 78-97 % of faults within 15 s.

Each kind raises and clears on its own; a window's ``alert`` is true while either is active. The previous rule
("windows covering ``alert_after`` s of the last ``alert_window`` s at or above the threshold", no known-fault
alerts) stays available as ``alert_rule="n-of-m"``. Its debouncers count windows; :func:`window_counts`
derives those counts from the seconds the user sets and the hop, so ``--hop 0.25`` keeps the time behaviour
of the default ``--hop 0.5`` (the evidence rule's time constants are seconds too).
"""

from __future__ import annotations

import dataclasses
from collections import deque
from dataclasses import dataclass

import numpy as np

from .. import evidence
from ..errors import FanwatchError
from .settings import DecisionSettings


@dataclass(frozen=True)
class WindowCounts:
    alert_n: int  # windows at or above the threshold that raise the alert ...
    alert_m: int  # ... among the last this many
    clear_n: int  # at most this many above the clear level clear it
    state_k: int  # agreeing windows that report a state


def _windows(seconds: float, hop: float) -> int:
    return int(round(seconds / hop + 1e-9))


def window_counts(decisions: DecisionSettings, hop: float) -> WindowCounts:
    """Window counts for ``decisions`` at ``hop`` seconds between windows (rounded to the nearest count)."""
    m, n = max(1, _windows(decisions.alert_window, hop)), max(1, _windows(decisions.alert_after, hop))
    clear_n, k = _windows(decisions.clear_allow, hop), max(1, _windows(decisions.state_after, hop))
    if n > m:
        raise FanwatchError(
            f"--alert-after {decisions.alert_after:g} s is {n} windows at hop {hop:g} s, more than "
            f"the {m} of --alert-window {decisions.alert_window:g} s"
        )
    if clear_n >= n:
        raise FanwatchError(
            f"--clear-allow {decisions.clear_allow:g} s is {clear_n} windows at hop {hop:g} s: "
            f"must be fewer than the {n} of --alert-after"
        )
    return WindowCounts(alert_n=n, alert_m=m, clear_n=clear_n, state_k=k)


class StateDebouncer:
    """Report a new operating state once, after ``k`` consecutive windows agree on it."""

    def __init__(self, k: int = 3):
        if k < 1:
            raise ValueError("k must be at least 1")
        self.k = k
        self.state: str | None = None
        self._candidate: str | None = None
        self._count = 0

    def update(self, label: str) -> tuple[str | None, str] | None:
        """Feed one window's label; returns ``(old, new)`` when the reported state changes."""
        if label == self._candidate:
            self._count += 1
        else:
            self._candidate, self._count = label, 1
        if self._count >= self.k and self._candidate != self.state:
            old, self.state = self.state, self._candidate
            return old, self.state
        return None


class AlertDebouncer:
    """Raise after ``n`` of the last ``m`` windows reach the threshold (ratio >= 1, the ``score >= threshold``
    rule of training and evaluation); clear with hysteresis when at most ``clear_n`` of the last ``m``
    windows are at or above ``clear_ratio`` (<= 1)."""

    def __init__(self, n: int = 3, m: int = 4, clear_n: int = 0, clear_ratio: float = 1.0):
        if not 1 <= n <= m:
            raise ValueError(f"need 1 <= n <= m, got n={n}, m={m}")
        if not 0 <= clear_n < n:
            raise ValueError(f"need 0 <= clear_n < n, got clear_n={clear_n}")
        if not 0 < clear_ratio <= 1.0:
            raise ValueError(f"need 0 < clear_ratio <= 1, got {clear_ratio}")
        self.n, self.m, self.clear_n, self.clear_ratio = n, m, clear_n, clear_ratio
        self._over = deque(maxlen=m)
        self._hold = deque(maxlen=m)
        self.active = False

    def exceeding(self) -> int:
        return sum(self._over)

    def update(self, ratio: float) -> str | None:
        """Feed one window's score ratio; returns "raised", "cleared" or None."""
        self._over.append(ratio >= 1.0)
        self._hold.append(ratio >= self.clear_ratio)
        if not self.active and sum(self._over) >= self.n:
            self.active = True
            return "raised"
        if self.active and len(self._hold) == self.m and sum(self._hold) <= self.clear_n:
            self.active = False
            return "cleared"
        return None


# --------------------------------------------------------------------------------------------------
# both alert kinds

UNKNOWN = "unknown_anomaly"
KNOWN = "known_fault"
RECENT = 4  # the alert events' "exceeding ... of" fields: windows at or above the threshold among the last 4
KNOWN_FAULT_DEFAULTS = {"reference": 1.0, "clip": 2.0, "threshold": 12.0}  # uncalibrated (a card without one)


def fault_odds(probabilities, fault_index) -> float:
    """The odds the head gives to its fault classes together: p / (1 - p)."""
    p = float(np.sum(np.asarray(probabilities, np.float64)[fault_index])) if len(fault_index) else 0.0
    p = min(max(p, 1e-6), 1 - 1e-6)
    return p / (1.0 - p)


def anomalous_labels(card) -> list[str]:
    """The head's classes that are faults: its labels that are not normal states (none when the head was
    trained on machine ids or normal classes only). ``card``: a :class:`fanwatch.card.ModelCard` or its dict."""
    card = getattr(card, "raw", card) or {}
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
    # (with side channels: the highest of the score's and the channels', each relative to its own level)
    kinds: list  # active alert kinds
    evidence_parts: dict = dataclasses.field(default_factory=dict)  # {"score": level, channel: level, ...}


class Decisions:
    """State debouncing, anomaly evidence and known-fault alerts for one continuous stream of windows."""

    def __init__(
        self,
        rule: evidence.EvidenceRule,
        hop_s: float,
        state_k: int = 3,
        labels=(),
        fault_labels=(),
        known_rule: evidence.EvidenceRule | None = None,
        n_of_m=None,
        channel_rules: dict | None = None,
    ):
        self.states = StateDebouncer(state_k)
        self.rule = rule
        self.evidence = evidence.AlertRule(rule, hop_s) if n_of_m is None else None
        # the score's side channels (fanwatch.scorer): each its own evidence; any of them raises the anomaly alert
        self.channel_evidence = (
            {ch: evidence.AlertRule(r, hop_s) for ch, r in (channel_rules or {}).items()} if n_of_m is None else {}
        )
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
        if self.evidence is None:
            return self.n_of_m.active
        return self.evidence.active or any(e.active for e in self.channel_evidence.values())

    def _anomaly_level(self) -> float:
        """The anomaly evidence relative to its alert level: the highest of the score's and its channels'."""
        return max([self.evidence.level] + [e.level for e in self.channel_evidence.values()])

    @property
    def active(self) -> bool:
        return self.anomaly_active or self.known is not None

    def kinds(self) -> list[str]:
        return ([UNKNOWN] if self.anomaly_active else []) + ([KNOWN] if self.known is not None else [])

    def update(
        self,
        t: float,
        label: str,
        confidence: float,
        ratio: float,
        probabilities=None,
        settling: bool = False,
        channels: dict | None = None,
    ) -> Decision:
        """One window: its top label and confidence, anomaly ratio, and the head's probabilities (for the
        known-fault evidence; without them no known-fault alert is possible). ``settling``: the anomaly score
        is not yet one to count (its horizon starting): the anomaly rule skips the window. ``channels``: the
        score's side-channel ratios (``{channel: score / its threshold}``), for the channels' evidence."""
        events = []
        t = round(float(t), 3)
        change = self.states.update(label)
        if change is not None:
            events.append(
                {
                    "event": "state",
                    "t": t,
                    "from": change[0],
                    "to": change[1],
                    "confidence": round(float(confidence), 4),
                }
            )
        state = self.states.state
        source = None
        if settling:
            change, level = None, self._anomaly_level() if self.evidence is not None else None
        elif self.evidence is not None:
            self._recent.append(ratio >= 1.0)
            before = self.anomaly_active
            raised = ["score"] if self.evidence.update(ratio) == "raised" else []
            for ch, rule in self.channel_evidence.items():
                value = (channels or {}).get(ch)
                if value is not None and rule.update(float(value)) == "raised":
                    raised.append(ch)
            after = self.anomaly_active
            change = "raised" if after and not before else "cleared" if before and not after else None
            source = raised[0] if raised else None
            level = self._anomaly_level()
            exceeding, of = sum(self._recent), RECENT
        else:
            self._recent.append(ratio >= 1.0)
            change = self.n_of_m.update(ratio)
            level = None
            exceeding, of = self.n_of_m.exceeding(), self.n_of_m.m
        if change is not None:
            event = {
                "event": f"alert_{change}",
                "t": t,
                "kind": UNKNOWN,
                "anomaly": round(float(ratio), 4),
                "exceeding": exceeding,
                "of": of,
                "label": label,
                "state": state,
            }
            if level is not None:
                event["evidence"] = round(level, 4)
            if change == "raised" and source is not None:
                event["evidence_from"] = source  # "score" (the fused score) or a side channel ("modulation_peak")
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
                events.append(
                    {
                        "event": "alert_raised",
                        "t": t,
                        "kind": KNOWN,
                        "class": self.known,
                        "anomaly": round(float(ratio), 4),
                        "fault_probability": round(odds / (1 + odds), 4),
                        "evidence": round(self.known_evidence.level, 4),
                        "label": label,
                        "state": state,
                    }
                )
            elif change == "cleared":
                events.append(
                    {
                        "event": "alert_cleared",
                        "t": t,
                        "kind": KNOWN,
                        "class": self.known,
                        "anomaly": round(float(ratio), 4),
                        "evidence": round(self.known_evidence.level, 4),
                        "label": label,
                        "state": state,
                    }
                )
                self.known = None
        parts = {}
        if self.evidence is not None and self.channel_evidence:
            parts = {"score": self.evidence.level, **{ch: e.level for ch, e in self.channel_evidence.items()}}
        return Decision(
            events=events, alert=self.active, state=state, evidence=level, kinds=self.kinds(), evidence_parts=parts
        )


def rules_from_card(card, decisions: DecisionSettings, site_model=None):
    """(anomaly evidence rule, known-fault rule) for a run: the model card's calibrated rules (the defaults
    for a card without them), the site calibration's anomaly rule when one is applied, ``--alert-level`` over
    the anomaly rule."""
    alerts = getattr(card, "alerts", None)
    if alerts is None:
        alerts = (getattr(card, "raw", card) or {}).get("alerts") or {}
    rule = evidence.EvidenceRule.from_dict(alerts.get("rule"))
    if site_model is not None:
        rule = site_model.rule
    if decisions.alert_level is not None:
        rule = dataclasses.replace(rule, threshold=decisions.alert_level)
    known = evidence.EvidenceRule.from_dict((alerts.get("known_fault") or {}).get("rule") or KNOWN_FAULT_DEFAULTS)
    return rule, known


def channel_rules_from_card(card, decisions: DecisionSettings, site_model=None) -> dict:
    """{side channel: its evidence rule} from the model card (none for a card without side channels), the
    site calibration's level where it has one (fanwatch.site raises it for a room with a modulation of its
    own); ``--alert-level`` applies to them too."""
    alerts = getattr(card, "alerts", None)
    if alerts is None:
        alerts = (getattr(card, "raw", card) or {}).get("alerts") or {}
    site_rules = getattr(site_model, "channel_rules", None) or {}
    out = {}
    for channel, info in (alerts.get("channels") or {}).items():
        rule = site_rules.get(channel) or evidence.EvidenceRule.from_dict((info or {}).get("rule"))
        if decisions.alert_level is not None:
            rule = dataclasses.replace(rule, threshold=decisions.alert_level)
        out[channel] = rule
    return out
