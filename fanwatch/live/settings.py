"""Settings of the live loop, grouped by concern; every default lives here (``inference.py`` takes its
defaults from these classes). Frozen: a run never changes its settings; :func:`dataclasses.replace` makes
a changed copy.

Every time constant a user sets is in seconds; :mod:`fanwatch.live.decisions` turns them into window
counts with the hop, so a different ``--hop`` keeps the same behaviour in time.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

from .. import config
from ..card import MODEL_NAME
from ..errors import FanwatchError

DEFAULT_MODEL = Path("artifacts") / MODEL_NAME
ALERT_RULES = ("evidence", "n-of-m")
MAX_MEAN_CHANNELS = 8
"""channel="mean" on a live device opens every input channel it offers, up to this many (``--channels N``
opens N). Microphones and mic arrays have 1 to 8; ALSA plugin devices (default, pulse, pipewire, plug)
advertise 32 to 128 virtual channels, copies or digital silence, that would only cost CPU time."""


def _need(ok: bool, message: str) -> None:
    if not ok:
        raise FanwatchError(message)


@dataclass(frozen=True)
class InputSettings:
    device: str | int | None = None  # None: PortAudio's default input device
    wav: Path | None = None  # replay this file instead of a device
    fast: bool = False  # with wav: as fast as the worker goes
    channel: str | int | None = None  # "mean" or a 0-based index (parsed); None: the model card's setting
    channels: int | None = None  # device channels to open (default for "mean": all, see MAX_MEAN_CHANNELS)
    rate: float | None = None  # device sample rate (default: the device's default rate)
    block_seconds: float = 0.1
    queue_blocks: int = 50

    def validate(self) -> None:
        _need(
            0 < self.block_seconds <= 2.0, f"--block-ms must be between 1 and 2000, got {self.block_seconds * 1000:g}"
        )
        _need(self.queue_blocks >= 1, f"--queue-blocks must be at least 1, got {self.queue_blocks}")
        _need(self.rate is None or self.rate > 0, f"--rate must be positive, got {self.rate}")
        _need(self.channels is None or self.channels >= 1, f"--channels must be at least 1, got {self.channels}")
        _need(self.fast is False or self.wav is not None, "--fast only applies to --wav replays")
        _need(
            self.channel is None or self.channel == "mean" or (isinstance(self.channel, int) and self.channel >= 0),
            f"channel must be 'mean' or a channel index, got {self.channel!r}",
        )


@dataclass(frozen=True)
class ModelSettings:
    path: Path = DEFAULT_MODEL
    threads: int = 1
    runtime: str | None = None
    machine: str | None = None
    hop: float | None = None  # seconds between windows; None: the model card's hop (training's)
    site: bool = True  # apply the site calibration beside the model, if there is one (--no-site: ignore it)

    def validate(self) -> None:
        _need(self.threads >= 1, f"--threads must be at least 1, got {self.threads}")
        if self.hop is not None:
            check_hop(self.hop)


MAX_HOP_SECONDS = 10.0
"""A longer hop leaves over 90 % of the sound unheard and turns the alert rule's seconds into a single window."""


def check_hop(hop: float) -> None:
    _need(hop > 0 and math.isfinite(hop), f"--hop must be a positive number of seconds, got {hop}")
    _need(round(hop * config.SAMPLE_RATE) >= 1, f"--hop {hop} is shorter than one sample")
    _need(
        hop <= MAX_HOP_SECONDS,
        f"--hop {hop:g} s is longer than {MAX_HOP_SECONDS:g} s: the loop would hear "
        f"one {config.WINDOW_SECONDS} s window in every {hop:g} s",
    )


@dataclass(frozen=True)
class DecisionSettings:
    """Debouncing, in seconds of audio (at the default hop of 0.5 s: alert after 3 of the last 4 windows,
    cleared after 4 quiet windows, a state reported after 3 agreeing windows)."""

    alert_window: float = 2.0  # seconds of recent windows the alert looks at (M windows)
    alert_after: float = 1.5  # raise when windows covering this long of them reach the threshold (N)
    clear_allow: float = 0.0  # clear when at most this long of them are above the clear level (C)
    clear_ratio: float = 1.0  # clear level as a fraction of the threshold
    threshold_scale: float = 1.0  # multiplies the model card's anomaly thresholds
    state_after: float = 1.5  # report a state after this long of agreeing windows (K)
    alert_rule: str = "evidence"  # "evidence": the calibrated CUSUM + known faults; "n-of-m": the previous rule
    alert_level: float | None = None  # evidence that raises an unknown-anomaly alert; None: the model card's
    known_faults: bool = True  # known-fault alerts from the head (evidence rule only)

    def validate(self) -> None:
        for name in ("alert_window", "alert_after", "state_after"):
            value = getattr(self, name)
            _need(
                value > 0 and math.isfinite(value),
                f"--{name.replace('_', '-')} must be a positive number of seconds, got {value}",
            )
        _need(
            self.alert_after <= self.alert_window,
            f"--alert-after must be at most --alert-window ({self.alert_window:g} s), got {self.alert_after:g}",
        )
        _need(
            0 <= self.clear_allow < self.alert_after,
            f"--clear-allow must be between 0 and --alert-after, got {self.clear_allow:g}",
        )
        _need(0 < self.clear_ratio <= 1.0, f"--clear-ratio must be in (0, 1], got {self.clear_ratio}")
        _need(
            self.threshold_scale > 0 and math.isfinite(self.threshold_scale),
            f"--threshold-scale must be a positive number, got {self.threshold_scale}",
        )
        _need(
            self.alert_rule in ALERT_RULES,
            f"--alert-rule must be one of {', '.join(ALERT_RULES)}, got {self.alert_rule!r}",
        )
        _need(
            self.alert_level is None or (self.alert_level > 0 and math.isfinite(self.alert_level)),
            f"--alert-level must be a positive number, got {self.alert_level}",
        )


@dataclass(frozen=True)
class OutputSettings:
    json_lines: bool = False
    quiet: bool = False  # events and summary only, no line per window
    event_log: Path | None = None
    event_log_bytes: int = 1_000_000
    event_log_backups: int = 5

    def validate(self) -> None:
        _need(self.event_log_bytes >= 1024, "--event-log-bytes must be at least 1024")
        _need(self.event_log_backups >= 0, "--event-log-backups must not be negative")


@dataclass(frozen=True)
class SupervisionSettings:
    backoff_initial: float = 1.0
    backoff_max: float = 30.0
    stall_seconds: float = 5.0
    drop_report_seconds: float = 10.0
    duration: float | None = None  # stop after this many seconds
    simulate_slow_ms: float = 0.0  # testing aid: extra delay after each inference

    def validate(self) -> None:
        _need(0 < self.backoff_initial <= self.backoff_max, "--backoff-max must be at least the initial backoff")
        _need(self.stall_seconds > 0, "--stall-seconds must be positive")
        _need(self.duration is None or self.duration > 0, "--duration must be positive")
        _need(self.simulate_slow_ms >= 0, "--simulate-slow-ms must not be negative")


@dataclass(frozen=True)
class HttpSettings:
    """The status page, API and metrics (:mod:`fanwatch.webserver`); off unless ``listen`` is set."""

    listen: str | None = None  # "[ADDR:]PORT"; the address defaults to 127.0.0.1
    token_file: Path | None = None  # required when ADDR is beyond loopback
    stale_seconds: float = 15.0  # /healthz fails once no audio has been analysed for this long

    def validate(self) -> None:
        _need(
            self.stale_seconds > 0 and math.isfinite(self.stale_seconds),
            f"--http-stale-seconds must be a positive number, got {self.stale_seconds}",
        )
        if self.listen is not None:
            from ..webserver import check_bind

            check_bind(self.listen, self.token_file)


@dataclass(frozen=True)
class LoopSettings:
    """Everything the loop needs, one group per concern; ``inference.py`` fills it from the command line."""

    input: InputSettings = field(default_factory=InputSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    decisions: DecisionSettings = field(default_factory=DecisionSettings)
    output: OutputSettings = field(default_factory=OutputSettings)
    supervision: SupervisionSettings = field(default_factory=SupervisionSettings)
    http: HttpSettings = field(default_factory=HttpSettings)

    def validate(self) -> None:
        for group in (self.input, self.model, self.decisions, self.output, self.supervision, self.http):
            group.validate()


def build(**fields) -> LoopSettings:
    """A :class:`LoopSettings` from flat field names (``wav=...``, ``alert_after=...``, ``path=...``): each
    name belongs to exactly one group. Unknown names raise TypeError."""
    groups = {g.name: g.default_factory for g in dataclasses.fields(LoopSettings)}  # name -> settings class
    owner = {f.name: group for group, cls in groups.items() for f in dataclasses.fields(cls)}
    by_group: dict[str, dict] = {group: {} for group in groups}
    for name, value in fields.items():
        if name not in owner:
            raise TypeError(f"unknown loop setting {name!r}")
        by_group[owner[name]][name] = value
    return LoopSettings(**{group: groups[group](**values) for group, values in by_group.items()})
