"""Debounced decisions: a state change reported once, an anomaly alert raised and cleared with hysteresis.

The debouncers count windows; :func:`window_counts` derives those counts from the seconds the user sets and
the hop, so ``--hop 0.25`` keeps the time behaviour of the default ``--hop 0.5``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

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
        raise FanwatchError(f"--alert-after {decisions.alert_after:g} s is {n} windows at hop {hop:g} s, more than "
                            f"the {m} of --alert-window {decisions.alert_window:g} s")
    if clear_n >= n:
        raise FanwatchError(f"--clear-allow {decisions.clear_allow:g} s is {clear_n} windows at hop {hop:g} s: "
                            f"must be fewer than the {n} of --alert-after")
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

