"""What changed, in terms a maintenance engineer reads: band levels in Hz ranges and dB against normal.

Every window the model hears (0.975 s at 16 kHz) is also measured in **third-octave bands** (the bands of
acoustic measurement, IEC 61260, base 2: centres ``1000 * 2**(k/3)`` from 20 Hz to 8 kHz, low enough for
a fan's shaft rate of 10-50 Hz), each band's level in dB relative to full scale, and the window's overall
level (RMS, dBFS: a full-scale square wave is 0 dBFS, a full-scale sine -3 dBFS). A machine's **normal
profile** is the mean and spread of those levels over the windows of its normal training recordings,
fitted by ``train.py`` and stored beside the model as ``band_profile.json`` (plain JSON, no pickle);
where the training data has several normal operating states (off, low speed, high speed), each state
also gets a profile of its own, since a fan at high speed is louder than at low speed without anything
being wrong. When an alert is raised, :func:`explain` compares the alert's windows with the profile of
the last normal state the loop reported (else with all normal recordings): the bands whose level moved
most (in units of the band's normal spread, at least :data:`MIN_CHANGE_DB`) with their change in dB, and
the overall level change.

Levels are power sums over ~1 Hz FFT bins, so they say nothing about the waveform: no audio (or speech)
can be rebuilt from 27 band levels per window. Runtime module: numpy and the standard library.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import config
from .errors import FanwatchError

PROFILE_NAME = "band_profile.json"
SITE_PROFILE_NAME = "site_band_profile.json"  # written by on-site enrollment beside the model
PROFILE_FORMAT = "fanwatch-band-profile/1"
FLOOR_DB = -120.0  # the level of digital silence (a band with no energy)
MIN_STD_DB = 1.0  # a band's normal spread is taken as at least this (a very steady band is not infinitely telling)
MIN_CHANGE_DB = 3.0  # a band must move at least this much to be named in an explanation
TOP_BANDS = 3
MIN_STATE_WINDOWS = 8  # a normal state gets its own reference profile from this many training windows on


def third_octave_edges(low_hz: float = 20.0, high_hz: float = 8000.0, rate: int = config.SAMPLE_RATE) -> np.ndarray:
    """[n, 2] band edges in Hz: third-octave bands with centres from ``low_hz`` to ``high_hz`` (base 2),
    the top edge cut at the Nyquist frequency."""
    k_low = round(3 * math.log2(low_hz / 1000.0))
    k_high = round(3 * math.log2(high_hz / 1000.0))
    centres = 1000.0 * 2.0 ** (np.arange(k_low, k_high + 1) / 3.0)
    edges = np.stack([centres * 2.0 ** (-1 / 6), centres * 2.0 ** (1 / 6)], axis=1)
    edges[:, 1] = np.minimum(edges[:, 1], rate / 2.0)
    return edges


BAND_EDGES = third_octave_edges()


class BandMeter:
    """Band levels and overall level of fixed-length windows (one FFT per window, precomputed bins)."""

    def __init__(
        self,
        edges: np.ndarray = BAND_EDGES,
        window_samples: int = config.WINDOW_SAMPLES,
        rate: int = config.SAMPLE_RATE,
    ):
        self.edges = np.asarray(edges, dtype=np.float64)
        self.n = int(window_samples)
        self.taper = np.hanning(self.n).astype(np.float64)
        freqs = np.fft.rfftfreq(self.n, 1.0 / rate)
        # one-sided power spectrum scaled so that the bins sum to the mean square (Parseval, Hann-corrected)
        scale = np.full(len(freqs), 2.0 / (self.n * float(np.sum(self.taper**2))))
        scale[0] /= 2.0
        if self.n % 2 == 0:
            scale[-1] /= 2.0
        self.scale = scale
        self.band_of = np.full(len(freqs), -1, dtype=np.int64)
        for i, (lo, hi) in enumerate(self.edges):
            self.band_of[(freqs >= lo) & (freqs < hi) | ((freqs == hi) & (i == len(self.edges) - 1))] = i
        self.in_band = self.band_of >= 0

    def measure(self, window: np.ndarray) -> tuple[float, np.ndarray]:
        """(overall level in dBFS, [n_bands] band levels in dB) of one window of ``window_samples``."""
        x = np.asarray(window, dtype=np.float64).reshape(-1)
        if len(x) != self.n:
            raise ValueError(f"expected {self.n} samples, got {len(x)}")
        level = to_db(float(np.mean(x * x)))
        power = np.abs(np.fft.rfft((x - x.mean()) * self.taper)) ** 2 * self.scale
        bands = np.bincount(self.band_of[self.in_band], weights=power[self.in_band], minlength=len(self.edges))
        return level, to_db(bands)


def to_db(power):
    """Mean-square power -> dB (full scale = 0 dB), digital silence -> :data:`FLOOR_DB`."""
    with np.errstate(divide="ignore"):
        db = 10.0 * np.log10(np.maximum(power, 10.0 ** (FLOOR_DB / 10.0)))
    return float(db) if np.ndim(db) == 0 else db


@dataclass
class MachineProfile:
    """One machine's normal band levels: mean and spread (dB) per band and overall, over ``windows``."""

    windows: int
    level_mean: float
    level_std: float
    band_mean: np.ndarray
    band_std: np.ndarray
    states: dict[str, MachineProfile] = field(default_factory=dict)  # per normal operating state (label)

    @classmethod
    def fit(cls, levels: np.ndarray, bands: np.ndarray) -> MachineProfile:
        levels = np.asarray(levels, dtype=np.float64).reshape(-1)
        bands = np.asarray(bands, dtype=np.float64)
        if len(levels) == 0 or bands.shape[0] != len(levels):
            raise FanwatchError("a band profile needs at least one window")
        return cls(
            windows=len(levels),
            level_mean=float(levels.mean()),
            level_std=float(levels.std()),
            band_mean=bands.mean(axis=0),
            band_std=bands.std(axis=0),
        )

    def as_dict(self) -> dict:
        out = {
            "windows": self.windows,
            "level_mean_dbfs": round(self.level_mean, 3),
            "level_std_db": round(self.level_std, 3),
            "band_mean_db": [round(float(v), 3) for v in self.band_mean],
            "band_std_db": [round(float(v), 3) for v in self.band_std],
        }
        if self.states:
            out["states"] = {label: p.as_dict() for label, p in self.states.items()}
        return out

    @classmethod
    def from_dict(cls, p: dict, n_bands: int, name: str) -> MachineProfile:
        mean = np.asarray(p["band_mean_db"], dtype=np.float64)
        std = np.asarray(p["band_std_db"], dtype=np.float64)
        if mean.shape != (n_bands,) or std.shape != (n_bands,):
            raise ValueError(f"{name}: {len(mean)} band levels for {n_bands} bands")
        states = {str(k): cls.from_dict(v, n_bands, f"{name}/{k}") for k, v in (p.get("states") or {}).items()}
        return cls(int(p["windows"]), float(p["level_mean_dbfs"]), float(p["level_std_db"]), mean, std, states)


@dataclass
class BandProfile:
    """Normal profiles per machine id, with the band edges they were measured in."""

    edges: np.ndarray
    machines: dict[str, MachineProfile]
    source: str = "normal training recordings"
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        data = {
            "format": PROFILE_FORMAT,
            "created": self.created,
            "source": self.source,
            "sample_rate": config.SAMPLE_RATE,
            "window_samples": config.WINDOW_SAMPLES,
            "levels": "dB re full scale of the 16 kHz window the model hears: overall RMS (a full-scale "
            "square wave is 0 dBFS) and third-octave band power (Hann-windowed FFT)",
            "bands_hz": [[round(float(lo), 1), round(float(hi), 1)] for lo, hi in self.edges],
            "machines": {m: p.as_dict() for m, p in self.machines.items()},
        }
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(data, indent=1) + "\n")
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> BandProfile:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
            if data.get("format") != PROFILE_FORMAT:
                raise ValueError(f"format {data.get('format')!r}, expected {PROFILE_FORMAT}")
            edges = np.asarray(data["bands_hz"], dtype=np.float64).reshape(-1, 2)
            machines = {
                str(name): MachineProfile.from_dict(p, len(edges), f"machine {name}")
                for name, p in data["machines"].items()
            }
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise FanwatchError(f"{path}: unreadable band profile ({exc})") from None
        if not machines:
            raise FanwatchError(f"{path}: band profile lists no machines")
        return cls(
            edges=edges, machines=machines, source=str(data.get("source", "")), created=str(data.get("created", ""))
        )

    def for_machine(self, machine: str | None) -> tuple[str, MachineProfile] | None:
        if machine in self.machines:
            return machine, self.machines[machine]
        if len(self.machines) == 1:
            return next(iter(self.machines.items()))
        return None


def load_beside(model_path: str | os.PathLike, site: bool = False) -> BandProfile | None:
    """The band profile stored beside a model, or None when the model has none (trained before it existed).
    ``site``: the site's own (written by enrollment) when there is one: a room and microphone of their own
    would otherwise show up in every explanation as a change of level."""
    site_path = Path(model_path).with_name(SITE_PROFILE_NAME)
    if site and site_path.is_file():
        return BandProfile.load(site_path)
    path = Path(model_path).with_name(PROFILE_NAME)
    return BandProfile.load(path) if path.is_file() else None


def fit_site_profile(levels, bands, labels, machine: str, source: str) -> BandProfile:
    """A profile from enrollment windows (their overall levels, band levels and the head's labels): one
    machine, with a profile per normal state heard long enough, like training's."""
    levels = np.asarray(levels, dtype=np.float64).reshape(-1)
    bands = np.asarray(bands, dtype=np.float64).reshape(len(levels), -1)
    profile = MachineProfile.fit(levels, bands)
    labels = np.asarray(list(labels))
    kinds = sorted(set(labels.tolist()))
    if len(kinds) > 1:
        profile.states = {
            k: MachineProfile.fit(levels[labels == k], bands[labels == k])
            for k in kinds
            if int((labels == k).sum()) >= MIN_STATE_WINDOWS
        }
    return BandProfile(edges=BAND_EDGES, machines={machine: profile}, source=source)


def fit_profile(
    windows_by_machine: dict[str, list[np.ndarray]],
    meter: BandMeter | None = None,
    source: str = "normal training recordings",
) -> BandProfile:
    """A profile from normal windows (16 kHz, ``WINDOW_SAMPLES`` each), grouped by machine id."""
    meter = meter or BandMeter()
    machines = {}
    for name, windows in windows_by_machine.items():
        measured = [meter.measure(w) for w in windows]
        if not measured:
            continue
        machines[name] = MachineProfile.fit(np.array([m[0] for m in measured]), np.stack([m[1] for m in measured]))
    if not machines:
        raise FanwatchError("no normal windows to fit the band profile on")
    return BandProfile(edges=meter.edges, machines=machines, source=source)


def hz_range(lo: float, hi: float) -> str:
    """891 Hz-1.12 kHz, 44-56 Hz, 1.12-1.41 kHz."""
    if lo >= 1000:
        return f"{lo / 1000:.2f}-{hi / 1000:.2f} kHz"
    if hi >= 1000:
        return f"{lo:.0f} Hz-{hi / 1000:.2f} kHz"
    return f"{lo:.0f}-{hi:.0f} Hz"


def explain(
    levels: np.ndarray,
    bands: np.ndarray,
    profile: BandProfile,
    machine: str | None = None,
    state: str | None = None,
    top: int = TOP_BANDS,
) -> dict | None:
    """What changed in ``levels`` ([k] dBFS) / ``bands`` ([k, n_bands] dB), the windows behind an alert,
    against the machine's normal profile: that of normal operating state ``state`` (the last one the loop
    reported) when the profile has it, else all its normal recordings. None when the profile has no entry
    for the machine."""
    chosen = profile.for_machine(machine)
    if chosen is None:
        return None
    name, normal = chosen
    compared_with = "all normal recordings"
    if state is not None and state in normal.states:
        normal, compared_with = normal.states[state], f"normal {state}"
    levels = np.asarray(levels, dtype=np.float64).reshape(-1)
    bands = np.asarray(bands, dtype=np.float64).reshape(len(levels), -1)
    level = float(levels.mean())
    now = bands.mean(axis=0)
    change = now - normal.band_mean
    spread = np.maximum(normal.band_std, MIN_STD_DB)
    z = change / spread
    order = [int(i) for i in np.argsort(-np.abs(z), kind="stable") if abs(change[i]) >= MIN_CHANGE_DB]
    picked = []
    for i in order[:top]:
        lo, hi = profile.edges[i]
        picked.append(
            {
                "low_hz": round(float(lo), 1),
                "high_hz": round(float(hi), 1),
                "range": hz_range(float(lo), float(hi)),
                "change_db": round(float(change[i]), 1),
                "level_db": round(float(now[i]), 1),
                "normal_db": round(float(normal.band_mean[i]), 1),
                "normal_std_db": round(float(normal.band_std[i]), 1),
                "z": round(float(z[i]), 1),
            }
        )
    level_change = level - normal.level_mean
    text = f"level {level_change:+.1f} dB vs {compared_with} ({level:.1f} dBFS, normally {normal.level_mean:.1f})"
    if picked:
        text += "; bands: " + ", ".join(f"{b['range']} {b['change_db']:+.1f} dB" for b in picked)
    else:
        text += f"; no band differs from normal by {MIN_CHANGE_DB:g} dB or more"
    return {
        "machine": name,
        "compared_with": compared_with,
        "windows": len(levels),
        "level_dbfs": round(level, 1),
        "normal_level_dbfs": round(normal.level_mean, 1),
        "level_change_db": round(level_change, 1),
        "bands": picked,
        "text": text,
    }


def fit_from_recordings(recordings, channel: str | int = "mean", progress: bool = False) -> BandProfile:
    """Fit the normal profile on ``recordings`` (normal ones: the training split's), decoded, mixed and
    resampled exactly as for the model (:func:`fanwatch.audio.load_audio`), grouped by machine id.
    A file that cannot be decoded is skipped (training already reports it)."""
    from tqdm import tqdm

    from . import audio

    meter = BandMeter()
    measured: dict[str, dict[str, tuple[list, list]]] = {}  # machine -> label -> (levels, bands)
    for rec in tqdm(list(recordings), desc="band profile", unit="file", disable=not progress, leave=False):
        try:
            signal = audio.load_audio(rec.path, channel=channel)
        except FanwatchError:
            continue
        levels, bands = measured.setdefault(rec.machine, {}).setdefault(rec.label, ([], []))
        for window in audio.frame_windows(signal):
            level, band = meter.measure(window)
            levels.append(level)
            bands.append(band)
    machines = {}
    for machine, by_label in measured.items():
        levels = [v for lv, _ in by_label.values() for v in lv]
        if not levels:
            continue
        profile = MachineProfile.fit(np.array(levels), np.stack([b for _, bd in by_label.values() for b in bd]))
        if len(by_label) > 1:  # several normal states (off, low speed, high speed): each its own reference too
            profile.states = {
                label: MachineProfile.fit(np.array(lv), np.stack(bd))
                for label, (lv, bd) in sorted(by_label.items())
                if len(lv) >= MIN_STATE_WINDOWS
            }
        machines[machine] = profile
    if not machines:
        raise FanwatchError("no normal training window to fit the band profile on")
    return BandProfile(edges=meter.edges, machines=machines)


class AlertExplainer:
    """The live side: measures every window (its level goes into the window record) and keeps the last
    ``history`` measurements, from which :meth:`explain` describes an alert against the normal profile."""

    def __init__(self, profile: BandProfile | None, history: int):
        self.profile = profile
        self.meter = BandMeter(profile.edges if profile is not None else BAND_EDGES)
        self.recent: deque = deque(maxlen=max(1, int(history)))

    def measure(self, window: np.ndarray) -> tuple[float, np.ndarray]:
        """(overall level dBFS, third-octave band levels dB) of the window, kept for :meth:`explain`."""
        level, bands = self.meter.measure(window)
        self.recent.append((level, bands))
        return level, bands

    def reset(self) -> None:
        """Audio was lost: what follows is not compared with what came before."""
        self.recent.clear()

    def explain(self, machine: str | None = None, state: str | None = None) -> dict | None:
        if self.profile is None or not self.recent:
            return None
        levels = np.array([r[0] for r in self.recent])
        bands = np.stack([r[1] for r in self.recent])
        return explain(levels, bands, self.profile, machine, state)
