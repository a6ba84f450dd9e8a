"""Integrated anomaly evidence: from per-window score ratios to alerts a maintenance engineer can trust.

A window's anomaly value is ``ratio = score / per-window threshold`` (1.0 = the threshold training set for
a 1 % false-alarm rate *per window*). Two windows a second make thousands of chances a day, and windows
overlap, so single windows (or 3 of 4 of them) above 1.0 happen on normal audio many times a day. Fans fail
slowly; a few seconds of evidence buys an alert that is almost never false.

The evidence is a **CUSUM** of the clipped log ratio (Page's cumulative sum):

    x_t = clip(ln(ratio_t / reference), -clip, +clip)
    S_t = min(cap, max(0, S_{t-1} + x_t))

Each window above ``reference`` adds to the evidence, each window below drains it, and it never goes below
zero, so normal running keeps it at (or near) 0 and a persistent fault makes it climb steadily: a fault at
twice the reference adds ln 2 = 0.69 per window (1.4 per second at the 0.5 s hop). The clip bounds what one
window (a clank, a door) can contribute; the cap (``cap_s`` seconds of fully clipped evidence) bounds how
long a long fault takes to clear. An alert is raised when ``S_t >= threshold`` and cleared when ``S_t`` has
stayed below ``clear_fraction * threshold`` for ``clear_s`` seconds (hysteresis).

Why a CUSUM (measured in ``bench/alerts.py`` against a moving mean of the same log ratio and against the old
"3 of 4 windows" rule, each calibrated to the same false alerts per day): for a given false-alert rate it
alerts on persistent faults sooner than the moving mean, whose horizon must be as long as the weakest fault
needs, while strong faults wait for the whole window to fill; and it is the sequential test that is optimal
for a step change of the mean (Lorden 1971), which is what a failing fan is.

The alert threshold is calibrated for a **rate of false alerts per day** (:func:`calibrate`) by replaying
normal validation streams through :class:`AlertRule` itself and extrapolating the tail of the evidence
peaks (peaks over threshold, exponential tail: Siegmund's approximation for CUSUM run lengths), because
validation audio is minutes, not days.

Runtime module: numpy and the standard library only (enrollment recalibrates on the Pi).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from statistics import NormalDist

import numpy as np

from .errors import FanwatchError

METHODS = ("cusum", "mean")
DEFAULT_METHOD = "cusum"
DEFAULT_FALSE_ALERTS_PER_DAY = 1.0
# The anomaly score's alert level (train.py, for the fused score and each side channel) is never below this:
# 11 fully clipped windows, 5.5 s of audio with each window at e times the reference or more (a weaker
# deviation needs longer). Minutes of validation audio cannot show how far a whole recording of normal running
# can sit above the others: on the real fan (bench/alerts_real.py, 12.5 min of held-out normal clips) single
# 10 s normal clips took the evidence to 7.8 (fused score) and 9.6 (modulation-peak channel) where the
# calibration on 1.4 min of validation audio had set 6.8 and 8.5: two false alerts. 11 is 1.1 times the
# highest (10.6), rounded up: the margin calibrate() keeps above the highest evidence of its own streams.
MIN_ALERT_LEVEL = 11.0
DEFAULT_THRESHOLD = MIN_ALERT_LEVEL  # evidence level without a calibration (a card without one, too little audio)
MIN_CALIBRATION_BLOCKS = 8  # 16 s of normal audio: less is not calibrated (the default level, and a note)
SECONDS_PER_DAY = 86400.0


@dataclass(frozen=True)
class EvidenceRule:
    """The alert rule's parameters. Times are in seconds; the hop turns them into windows."""

    method: str = DEFAULT_METHOD  # "cusum" (default) or "mean" (moving mean of x over horizon_s)
    reference: float = 1.0  # per-window ratio that neither adds nor drains evidence
    clip: float = 1.0  # |x| <= clip: one window adds at most this much
    threshold: float = DEFAULT_THRESHOLD  # evidence that raises an alert (calibrated per day)
    cap_s: float = 10.0  # cusum: evidence is capped at threshold + cap_s seconds of clipped windows
    horizon_s: float = 8.0  # mean: the averaging window
    clear_fraction: float = 0.5  # clear when evidence < clear_fraction * threshold ...
    clear_s: float = 5.0  # ... for this long
    # the hop the threshold was calibrated at: at another hop each window's evidence is weighted
    # hop / hop_s, so that evidence accrues per second of audio as calibrated (None: unweighted)
    hop_s: float | None = None

    def validate(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise FanwatchError(message)

        need(self.method in METHODS, f"unknown evidence method {self.method!r} (choose from {', '.join(METHODS)})")
        for name in ("reference", "clip", "threshold", "cap_s", "horizon_s", "clear_s"):
            value = getattr(self, name)
            need(
                isinstance(value, (int, float)) and math.isfinite(value) and value > 0,
                f"alert rule: {name} must be a positive number, got {value!r}",
            )
        need(0 < self.clear_fraction < 1, f"alert rule: clear_fraction must be in (0, 1), got {self.clear_fraction}")
        need(
            self.hop_s is None
            or (isinstance(self.hop_s, (int, float)) and math.isfinite(self.hop_s) and self.hop_s > 0),
            f"alert rule: hop_s must be a positive number of seconds, got {self.hop_s!r}",
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict | None) -> EvidenceRule:
        """A rule from a model card / site file; unknown keys are ignored, missing ones take the defaults."""
        if not data:
            return cls()
        known = {f: data[f] for f in cls.__dataclass_fields__ if f in data}
        try:
            rule = cls(**known)
            rule.validate()
        except (TypeError, ValueError) as exc:
            raise FanwatchError(f"bad alert rule {data!r}: {exc}") from None
        return rule

    def describe(self, quantity: str = "ratio") -> str:
        """The rule in words; ``quantity``: what it integrates (the score ratio, the head's fault odds)."""
        if self.method == "cusum":
            return (
                f"cusum of ln({quantity}/{self.reference:g}) >= {self.threshold:.3g}, "
                f"clear below {self.clear_fraction * self.threshold:.3g} for {self.clear_s:g} s"
            )
        return (
            f"mean ln({quantity}/{self.reference:g}) over {self.horizon_s:g} s >= {self.threshold:.3g}, "
            f"clear below {self.clear_fraction * self.threshold:.3g} for {self.clear_s:g} s"
        )


def _windows(seconds: float, hop_s: float) -> int:
    return max(1, int(round(seconds / hop_s)))


class Evidence:
    """The running statistic alone (no alert state): ``update(ratio) -> evidence``."""

    def __init__(self, rule: EvidenceRule, hop_s: float):
        rule.validate()
        if not (hop_s > 0 and math.isfinite(hop_s)):
            raise FanwatchError(f"hop must be a positive number of seconds, got {hop_s}")
        self.rule = rule
        self.hop_s = hop_s
        self._log_ref = math.log(rule.reference)
        # the cusum sums windows: weighted, it accrues per second as calibrated (a mean needs no weight)
        self.weight = hop_s / rule.hop_s if rule.hop_s is not None and rule.method == "cusum" else 1.0
        self.cap = rule.threshold + self.weight * rule.clip * _windows(rule.cap_s, hop_s)
        self._n = _windows(rule.horizon_s, hop_s)
        self.reset()

    def reset(self) -> None:
        self.value = 0.0
        self._recent: list[float] = []
        self._sum = 0.0

    def increment(self, ratio: float) -> float:
        if not math.isfinite(ratio):  # NaN: no information; +inf: as much as one window may give
            return 0.0 if math.isnan(ratio) else self.weight * self.rule.clip
        x = math.log(max(ratio, 1e-12)) - self._log_ref
        return self.weight * min(max(x, -self.rule.clip), self.rule.clip)

    def update(self, ratio: float) -> float:
        x = self.increment(ratio)
        if self.rule.method == "cusum":
            self.value = min(self.cap, max(0.0, self.value + x))
        else:
            self._recent.append(x)
            self._sum += x
            if len(self._recent) > self._n:
                self._sum -= self._recent.pop(0)
            self.value = self._sum / self._n  # a partly filled window counts the missing windows as 0
        return self.value


class AlertRule:
    """Evidence plus hysteresis: ``update(ratio)`` returns "raised", "cleared" or None."""

    def __init__(self, rule: EvidenceRule, hop_s: float):
        self.evidence = Evidence(rule, hop_s)
        self.rule = rule
        self.hop_s = hop_s
        self._clear_windows = _windows(rule.clear_s, hop_s)
        self.reset()

    def reset(self) -> None:
        self.evidence.reset()
        self.active = False
        self._quiet = 0

    @property
    def value(self) -> float:
        return self.evidence.value

    @property
    def level(self) -> float:
        """Evidence relative to the alert threshold (1.0 = alert level), for records and plots."""
        return self.evidence.value / self.rule.threshold

    def update(self, ratio: float) -> str | None:
        s = self.evidence.update(ratio)
        if not self.active:
            if s >= self.rule.threshold:
                self.active, self._quiet = True, 0
                return "raised"
            return None
        self._quiet = self._quiet + 1 if s < self.rule.clear_fraction * self.rule.threshold else 0
        if self._quiet >= self._clear_windows:
            self.active = False
            return "cleared"
        return None


# --------------------------------------------------------------------------------------------------
# replaying streams


def evidence_series(ratios, rule: EvidenceRule, hop_s: float) -> np.ndarray:
    """The evidence after every window of one continuous stream."""
    ev = Evidence(rule, hop_s)
    return np.array([ev.update(float(r)) for r in np.asarray(ratios, dtype=np.float64)])


def alert_events(ratios, rule: EvidenceRule, hop_s: float) -> list[tuple[int, str]]:
    """(window index, "raised"/"cleared") of one continuous stream, through :class:`AlertRule`."""
    alerts = AlertRule(rule, hop_s)
    out = []
    for i, r in enumerate(np.asarray(ratios, dtype=np.float64)):
        change = alerts.update(float(r))
        if change is not None:
            out.append((i, change))
    return out


def count_alerts(streams, rule: EvidenceRule, hop_s: float) -> int:
    return sum(sum(1 for _, e in alert_events(s, rule, hop_s) if e == "raised") for s in streams)


def alert_spans(ratios, rule: EvidenceRule, hop_s: float) -> list[tuple[int, int | None]]:
    """(raised at, cleared at or None) window indices of one stream."""
    spans, start = [], None
    for i, event in alert_events(ratios, rule, hop_s):
        if event == "raised":
            start = i
        else:
            spans.append((start, i))
            start = None
    if start is not None:
        spans.append((start, None))
    return spans


# --------------------------------------------------------------------------------------------------
# calibration for a rate of false alerts per day


@dataclass
class Calibration:
    """What :func:`calibrate` decided and what it rests on (written into the model card / site file)."""

    rule: EvidenceRule
    target_false_alerts_per_day: float
    expected_false_alerts_per_day: float  # the bound with the point estimate of the tail exponent
    upper_false_alerts_per_day: float  # with its lower confidence limit: the threshold makes this the target
    observed_false_alerts: int  # replaying the calibration streams at the chosen threshold
    normal_hours: float
    streams: int
    method: str
    tail: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["rule"] = self.rule.to_dict()
        for key in ("expected_false_alerts_per_day", "upper_false_alerts_per_day", "normal_hours"):
            out[key] = _round(out[key], 4)
        return out


def _round(value, digits=4):
    if value is None:
        return None
    value = float(value)
    return float(f"{value:.{digits}g}") if math.isfinite(value) else None


PSEUDO_WINDOWS = 2  # the pseudo-block is at least two fully clipped windows (measured choice, see tail_bound)
BLOCK_WINDOWS = 4  # increments are summed over 2 s blocks: windows overlap, neighbours are not independent
REFERENCE_QUANTILE = 0.9  # the CUSUM's reference: windows above 90 % of normal validation windows add evidence
CONFIDENCE = 0.9
BOOTSTRAP = 200


def lundberg_exponent(blocks: np.ndarray) -> float:
    """theta > 0 with mean(exp(theta * X)) = 1 (Cramer-Lundberg), by bisection on the log-mean-exp.

    The caller adds a pseudo-block (see :func:`tail_bound`) so that a sample without a positive block still
    gets a finite exponent.
    """
    x = np.asarray(blocks, dtype=np.float64)
    if x.mean() >= 0:
        return 0.0

    def f(theta):
        z = theta * x
        m = z.max()
        return m + math.log(np.exp(z - m).mean())

    lo, hi = 1e-9, 1.0
    while f(hi) < 0 and hi < 1e6:
        hi *= 2
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        if f(mid) < 0:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def tail_bound(streams, rule: EvidenceRule, hop_s: float, seed: int = 0) -> dict:
    """How often the CUSUM can reach a level h on normal audio like these streams.

    For a random walk with increments of negative mean, the chance of ever climbing h above its start is at
    most ``exp(-theta h)`` (Lundberg's inequality), theta solving ``E[exp(theta X)] = 1``. Every excursion of
    the CUSUM above 0 is such a walk started at its first increment (at most ``clip``), so false alerts per
    day at level h are at most ``excursions_per_day * exp(-theta (h - clip))``. theta comes from the whole
    distribution of increments (summed over BLOCK_WINDOWS windows for the correlation of overlapping
    windows), not from the few largest values, which is why minutes of audio can speak for days. Cautious
    three ways: the sample gets one more block, as large as the largest seen and at least two fully clipped
    windows (what a short calibration set may simply not have shown); theta is its lower 90 % confidence
    limit (block bootstrap); the excursion rate its 90 % Poisson upper limit.

    Measured: on correlated log-normal streams (tests/test_evidence.py), thresholds calibrated on 1, 5 and
    20 min for 1 alert a day raised 0-3 alerts in 2 simulated days (a pseudo-block of one window: up to 91,
    of four windows: thresholds twice as high as needed); on the synthetic fan model's 3 min of validation
    audio the bound overstates the rate observed over 3 h of normal test streams at every level tried.
    """
    ev = Evidence(rule, hop_s)
    log_ref, clip = math.log(rule.reference), rule.clip
    blocks, windows, starts = [], 0, 0
    for s in streams:
        x = np.clip(np.log(np.maximum(np.asarray(s, np.float64), 1e-12)) - log_ref, -clip, clip)
        x[np.isnan(x)] = 0.0
        n = len(x) // BLOCK_WINDOWS * BLOCK_WINDOWS
        blocks.append(x[:n].reshape(-1, BLOCK_WINDOWS).sum(axis=1))
        windows += len(x)
        ev.reset()
        for r in s:  # excursions of the evidence above 0 (the live statistic, cap included)
            before = ev.value
            if ev.update(float(r)) > 0 and before == 0:
                starts += 1
    hours = windows * hop_s / 3600.0
    x = np.concatenate(blocks) if blocks else np.zeros(0)
    pseudo = max(float(x.max()) if len(x) else clip, PSEUDO_WINDOWS * clip)

    theta = lundberg_exponent(np.append(x, pseudo)) if len(x) else 0.0
    rng = np.random.default_rng(seed)
    boot = [lundberg_exponent(np.append(rng.choice(x, len(x)), pseudo)) for _ in range(BOOTSTRAP)] if len(x) else [0.0]
    theta_low = float(np.quantile(boot, 1 - CONFIDENCE))
    days = hours / 24.0
    starts_upper = _poisson_upper(starts, CONFIDENCE)
    return {
        "windows": int(windows),
        "hours": hours,
        "blocks": int(len(x)),
        "block_windows": BLOCK_WINDOWS,
        "mean_block_increment": float(x.mean()) if len(x) else None,
        "positive_blocks": int((x > 0).sum()),
        "excursions": int(starts),
        "excursions_per_day": starts / days if days > 0 else math.inf,
        "excursions_per_day_upper": starts_upper / days if days > 0 else math.inf,
        "theta": theta,
        "theta_lower": theta_low,
        "offset": clip,
    }


def _poisson_upper(k: int, confidence: float) -> float:
    """Upper confidence limit of a Poisson mean after observing k events (chi-square, Wilson-Hilferty)."""
    dof = 2 * (k + 1)
    z = NormalDist().inv_cdf(confidence)
    a = 2.0 / (9.0 * dof)
    return 0.5 * dof * (1.0 - a + z * math.sqrt(a)) ** 3


def rate_per_day(tail: dict, level: float, upper: bool = False) -> float:
    """The bound on false alerts per day at evidence ``level`` (``upper``: with the cautious limits)."""
    theta = tail["theta_lower" if upper else "theta"]
    rate = tail["excursions_per_day_upper" if upper else "excursions_per_day"]
    if theta <= 0:
        return math.inf
    return rate * math.exp(-theta * max(level - tail["offset"], 0.0))


def reference_from_normal(streams, quantile: float = REFERENCE_QUANTILE) -> float:
    """The CUSUM's reference ratio: the ``quantile`` of normal windows' ratios, at most 1 (the per-window
    threshold). Faults never set it."""
    values = np.concatenate([np.asarray(s, np.float64) for s in streams])
    values = values[np.isfinite(values) & (values > 0)]
    if not len(values):
        raise FanwatchError("no finite anomaly ratios to calibrate the alert rule on")
    return float(min(np.quantile(values, quantile), 1.0))


def calibrate(
    streams,
    rule: EvidenceRule | None = None,
    hop_s: float = 0.5,
    false_alerts_per_day: float = DEFAULT_FALSE_ALERTS_PER_DAY,
    reference: float | None = None,
    floor: float | None = None,
) -> Calibration:
    """The CUSUM rule for ``false_alerts_per_day`` on these normal streams (per-window ratios, each one
    continuous stream): its reference from the streams (unless given), its threshold from the cautious tail
    bound (:func:`tail_bound`), never below ``floor`` nor below the highest evidence the streams reach (the
    replay at the chosen threshold raises nothing).
    """
    if not (false_alerts_per_day > 0 and math.isfinite(false_alerts_per_day)):
        raise FanwatchError(f"--false-alerts-per-day must be a positive number, got {false_alerts_per_day}")
    rule = rule or EvidenceRule()
    if rule.method != "cusum":
        raise FanwatchError("only the cusum rule is calibrated per day")
    streams = [np.asarray(s, dtype=np.float64) for s in streams if len(s)]
    if not streams:
        raise FanwatchError("no normal audio to calibrate the alert rule on")
    rule = replace(rule, reference=reference if reference is not None else reference_from_normal(streams), hop_s=hop_s)
    tail = tail_bound(streams, rule, hop_s)
    if tail["blocks"] < MIN_CALIBRATION_BLOCKS:
        chosen = replace(rule, threshold=max(DEFAULT_THRESHOLD, floor or 0.0))
        return Calibration(
            rule=chosen,
            target_false_alerts_per_day=false_alerts_per_day,
            expected_false_alerts_per_day=math.nan,
            upper_false_alerts_per_day=math.nan,
            observed_false_alerts=count_alerts(streams, chosen, hop_s),
            normal_hours=tail["hours"],
            streams=len(streams),
            method=f"not calibrated: only {tail['hours'] * 3600:.0f} s of normal audio (need "
            f"{MIN_CALIBRATION_BLOCKS * BLOCK_WINDOWS * hop_s:.0f} s); default alert level "
            f"{chosen.threshold:g}",
            tail={k: _round(v, 5) if isinstance(v, float) else v for k, v in tail.items()},
        )
    rate, theta = tail["excursions_per_day_upper"], tail["theta_lower"]
    if theta > 0:
        h = tail["offset"] + max(math.log(max(rate, 1e-300) / false_alerts_per_day), 0.0) / theta
        how = "Lundberg bound"
    else:
        h = math.inf
        how = "the evidence grows on normal audio (mean increment >= 0)"
    if not math.isfinite(h):
        raise FanwatchError(f"cannot calibrate the alert rule: {how}; the reference {rule.reference:.3g} is too low")
    peak = max(float(evidence_series(s, replace(rule, threshold=1e9), hop_s).max()) for s in streams)
    if floor is not None and floor > max(h, peak * 1.1):
        how = f"the minimum alert level {floor:g}; the {how} gave {max(h, peak * 1.1):.3g}"
    h = max(h, peak * 1.1, floor or 0.0, 1e-3)
    chosen = replace(rule, threshold=float(h))
    observed = count_alerts(streams, chosen, hop_s)
    return Calibration(
        rule=chosen,
        target_false_alerts_per_day=false_alerts_per_day,
        expected_false_alerts_per_day=rate_per_day(tail, h),
        upper_false_alerts_per_day=rate_per_day(tail, h, upper=True),
        observed_false_alerts=int(observed),
        normal_hours=tail["hours"],
        streams=len(streams),
        method=how,
        tail={k: _round(v, 5) if isinstance(v, float) else v for k, v in tail.items()},
    )


# --------------------------------------------------------------------------------------------------
# alert-level metrics of labelled streams


def stream_metrics(streams: list[dict], horizon_s: float = 15.0, window_s: float = 0.975) -> dict:
    """Alert-level figures from replayed streams, in seconds of stream time.

    Each stream is ``{"seconds": duration, "raised": [alert raise times], "faults": [(onset, end), ...]}``
    (times are window end times, as the records' ``t``). A raise between a fault's onset and ``window_s``
    after its end (windows still holding fault audio) detects that fault, time to alert measured from the
    onset; any other raise is a false alert. An alert already active at a fault's onset counts as detecting
    it at once (it was raised falsely before and counted so). Normal hours: the stream time outside the faults.
    """
    normal_s, false_alerts, delays, n_faults = 0.0, 0, [], 0
    for s in streams:
        faults = sorted(tuple(f) for f in s.get("faults", []))
        normal_s += float(s["seconds"]) - sum(min(b, s["seconds"]) - a for a, b in faults)
        raised = sorted(float(r) for r in s.get("raised", []))
        active_at = s.get("active_at_onset", [False] * len(faults))
        used = set()
        for (a, b), active in zip(faults, active_at):
            n_faults += 1
            hits = [r for r in raised if a < r <= b + window_s]
            used.update(hits)
            if active:
                delays.append(0.0)
            elif hits:
                delays.append(hits[0] - a)
            else:
                delays.append(math.inf)
        false_alerts += sum(1 for r in raised if r not in used)
    hours = normal_s / 3600.0
    d = np.asarray(delays, dtype=np.float64)
    hit = d[np.isfinite(d)]
    return {
        "normal_hours": round(hours, 4),
        "false_alerts": int(false_alerts),
        "false_alerts_per_hour": round(false_alerts / hours, 3) if hours > 0 else None,
        "fault_streams": int(n_faults),
        "faults_alerted": int(len(hit)),
        "horizon_s": horizon_s,
        "share_alerted_within_horizon": round(float((d <= horizon_s).mean()), 4) if n_faults else None,
        # percentiles over all faults: a missed fault counts as never (inf), so p95 is honest
        "median_time_to_alert_s": _finite(np.percentile(d, 50, method="higher")) if n_faults else None,
        "p95_time_to_alert_s": _finite(np.percentile(d, 95, method="higher")) if n_faults else None,
        "max_time_to_alert_s": _finite(d.max()) if n_faults else None,
    }


def _finite(value) -> float | None:
    value = float(value)
    return round(value, 3) if math.isfinite(value) else None
