"""Seeded synthetic fan recordings: a small, physically plausible stand-in for MIMII / DCASE fan audio.

Used by the tests and by ``python train.py --demo``; numpy + soundfile only.

Sound model (all of it rendered directly at the requested sample rate, so 44.1/48 kHz files are
genuinely wide-band and exercise the loader's resampler):

* **Rotor.** A shaft rate f_r per state and machine (``MachineSpec``), a few per cent of jitter between
  files and a slow wander within a file. The shaft phase is the running integral of the instantaneous
  speed, so every rotor-locked component (blade tones, slot harmonics, fault events) follows the speed.
* **Fan.** Blade-pass tones at k·B·f_r with decaying harmonics and slow turbulent amplitude wander;
  broadband aerodynamic noise whose corner frequency, spectral tilt and level follow the speed (level
  about 45 dB per decade of speed, between the dipole and the fan-law exponent), coloured by a housing
  resonance and modulated at the blade-pass rate; weak shaft harmonics (blade-to-blade differences).
* **Motor.** Hum at the machine's mains frequency (50 or 60 Hz) and its 2nd/3rd harmonics, rotor-slot
  harmonics at R·f_r and R·f_r ± 2·mains.
* **Room.** Pink-ish background with a per-file slope and HVAC rumble, a distant unrelated machine
  tone, occasional transients (clanks, door thumps), mixed at ``snr_db`` (± 1 dB per file) relative
  to the healthy machine sound, as MIMII's -6 / 0 / 6 dB sets are. ``off`` is the room alone, at the
  level it would have next to this machine at low speed, sometimes with a faint standby hum.
* **Microphone.** Random per-file gain (± 6 dB) and a slight random EQ (shelves, a presence peak, a
  high-pass) so that neither loudness nor overall tilt identifies a class. More than one channel gives
  a small circular array: plane-wave delays of the machine and of the room's main direction per mic,
  ± 0.5 dB sensitivity, plus independent (sensor / diffuse high-frequency) noise.
* **Faults** (run at low or high speed at random; each is a few-dB rise in its own band of the healthy
  machine sound, or a modulation of it): ``imbalance`` (amplitude and phase modulation at f_r, a
  raised 1×/2× f_r line), ``blockage`` (more broadband turbulence, a flow whistle tied to speed, steeper blade
  harmonics, surging, a few per cent of speed change), ``bearing`` (short impacts at the outer-race
  defect rate ≈ ratio·f_r with slip and jitter, ringing a 2-6 kHz resonance, stronger in the load
  zone), ``rubbing`` (a scraping / squealing burst once per revolution, in intermittent episodes).

Every file is drawn from its own ``numpy.random.default_rng`` child seed derived from
(seed, class, file index), so the same seed gives byte-identical files (same platform and numpy) and
adding files to one class changes no other file. Synthesis runs in float32 where precision allows
(float64 phases, reduced before the float32 sin): about 10x faster sines, errors far below 16 bits.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from fanwatch import __version__
from fanwatch.config import SAMPLE_RATE
from fanwatch.errors import FanwatchError

STATES = ("off", "low_speed", "high_speed")
FAULTS = ("imbalance", "blockage", "bearing", "rubbing")
SUBTLE_FAULTS = ("wear",)  # a few dB in one band and a dB or two of level: only sessions make it audible
SESSION_FAULTS = FAULTS + SUBTLE_FAULTS  # the faults of a session dataset's test day, in turn
KINDS = STATES + FAULTS + SUBTLE_FAULTS
RUNNING_STATES = ("low_speed", "high_speed")
LAYOUTS = ("folders", "mimii", "dcase")
FAULT_PREFIX = "fault_"
MANIFEST_NAME = "SYNTHETIC.json"
LAYOUT_MACHINE_IDS = ("id_00", "id_02")

# Per-layout defaults for generate_dataset(files_per_state=None, files_per_fault=None):
#   folders: files per normal state / per fault class;
#   mimii:   per machine id, normal files / abnormal files;
#   dcase:   per machine id, train normal files / test files of each label (normal and anomaly).
DEFAULT_COUNTS = {"folders": (24, 8), "mimii": (20, 6), "dcase": (20, 6)}

LEVEL_REF_DBFS = -32.0  # RMS of the healthy machine sound at a shaft rate of REF_SHAFT_HZ, before gain
REF_SHAFT_HZ = 20.0
SPEED_LAW_DB = 45.0  # dB per decade of shaft speed
GAIN_SPREAD_DB = 6.0  # per-file gain, uniform in ± this
SNR_JITTER_DB = 1.0  # per-file SNR, uniform in snr_db ± this
PEAK_LIMIT = 10 ** (-1.0 / 20.0)  # never louder than -1 dBFS peak; scaled down when needed
MIN_SAMPLES = 1024
MAX_CHANNELS = 32
TWO_PI = 2.0 * np.pi
ARRAY_RADIUS_M = 0.034  # radius of the simulated circular microphone array
SPEED_OF_SOUND = 343.0  # m/s
CONTROL_STEP = 1.0 / 200.0  # s, grid of the slow random fluctuations


@dataclass(frozen=True)
class MachineSpec:
    """One fan model: what stays fixed between its recordings."""

    machine_id: str = "id_00"
    blades: int = 7
    mains_hz: float = 50.0
    low_speed_hz: float = 12.5  # nominal shaft rate at low speed
    high_speed_hz: float = 24.0  # nominal shaft rate at high speed
    rotor_slots: int = 28  # induction-motor rotor slots (slot harmonics at R * f_r)
    bearing_ratio: float = 3.58  # outer-race defect frequency / shaft rate
    housing_hz: float = 420.0  # panel resonance that colours the broadband noise

    def shaft_hz(self, state: str) -> float:
        if state == "low_speed":
            return self.low_speed_hz
        if state == "high_speed":
            return self.high_speed_hz
        raise FanwatchError(f"no shaft speed for state {state!r}; running states are {', '.join(RUNNING_STATES)}")


MACHINES: dict[str, MachineSpec] = {
    "id_00": MachineSpec(
        "id_00",
        blades=7,
        mains_hz=50.0,
        low_speed_hz=12.5,
        high_speed_hz=24.0,
        rotor_slots=28,
        bearing_ratio=3.58,
        housing_hz=420.0,
    ),
    "id_02": MachineSpec(
        "id_02",
        blades=5,
        mains_hz=60.0,
        low_speed_hz=15.5,
        high_speed_hz=28.0,
        rotor_slots=22,
        bearing_ratio=3.05,
        housing_hz=610.0,
    ),
    "id_04": MachineSpec(
        "id_04",
        blades=9,
        mains_hz=50.0,
        low_speed_hz=13.0,
        high_speed_hz=23.0,
        rotor_slots=34,
        bearing_ratio=4.10,
        housing_hz=330.0,
    ),
}
DEFAULT_MACHINE = MACHINES["id_00"]


@dataclass(frozen=True)
class RenderInfo:
    """What render_with_info() drew for one clip (for tests and debugging)."""

    kind: str
    state: str  # the operating state underneath (a fault runs at low_speed or high_speed)
    machine_id: str
    shaft_hz: float  # mean shaft rate over the clip, 0 when off
    blade_pass_hz: float  # blades * shaft_hz, 0 when off
    snr_db: float  # effective SNR of the healthy machine over the room (nominal ± jitter)
    gain_db: float  # overall per-file gain actually applied (including any peak guard)
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SessionSpec:
    """One recording session (a day, a microphone placement): what every file of it shares.

    A real machine recorded on another day sounds the same, but the room tone, the microphone's gain and
    colouring, the background level and the exact speed (mains, load, temperature) differ a little;
    within a session they hardly move (files keep only small jitters, see SESSION_JITTER). The spreads
    are those of one microphone set up again at about the same place on another day: gain ± 1.5 dB,
    colouring at 0.35 x the per-file EQ of sessions=1 (shelves within about ± 2 dB), background level
    ± 2 dB, speed ± 1.5 %; the room tone (slope, rumble, distant machine) is drawn anew.
    """

    index: int
    gain_db: float  # microphone gain, uniform in ± SESSION_GAIN_SPREAD_DB
    snr_offset_db: float  # background level relative to the nominal SNR
    speed_offset: float  # relative shaft-speed offset of the whole session
    mic_eq: tuple[float, ...]  # _mic_eq parameters
    room: dict  # _room_tone parameters

    def as_dict(self) -> dict:
        return asdict(self)


# Per-file variation inside a session: gain (dB), SNR (dB), relative speed.
SESSION_JITTER = {"gain_db": 0.5, "snr_db": 0.5, "speed": 0.004}
SESSION_GAIN_SPREAD_DB = 1.5
SESSION_EQ_SCALE = 0.35
SESSION_SNR_SPREAD_DB = 2.0
SESSION_SPEED_SPREAD = 0.015


def draw_session(seed: int, index: int, key: str = "") -> SessionSpec:
    """Session ``index`` of dataset seed ``seed`` for ``key`` (a machine id; depends on nothing else)."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), zlib.crc32(f"session/{key}".encode()), int(index)]))
    return SessionSpec(
        index=int(index),
        gain_db=rng.uniform(-SESSION_GAIN_SPREAD_DB, SESSION_GAIN_SPREAD_DB),
        snr_offset_db=rng.uniform(-SESSION_SNR_SPREAD_DB, SESSION_SNR_SPREAD_DB),
        speed_offset=rng.uniform(-SESSION_SPEED_SPREAD, SESSION_SPEED_SPREAD),
        mic_eq=tuple(float(v) for v in _mic_eq_params(rng, SESSION_EQ_SCALE)),
        room=_room_tone(rng),
    )


# --------------------------------------------------------------------------------------------------
# small signal helpers


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def _unit(x: np.ndarray) -> np.ndarray:
    r = _rms(x)
    return x / r if r > 0 else x


def _db(x: float) -> float:
    return 10.0 ** (x / 20.0)


def _safe_f(f: np.ndarray) -> np.ndarray:
    return np.maximum(f, 1e-3)


def _highpass(f: np.ndarray, corner: float, order: int = 2) -> np.ndarray:
    """Butterworth-like magnitude of a high-pass."""
    return 1.0 / np.sqrt(1.0 + (corner / _safe_f(f)) ** (2 * order))


def _bandpass(f: np.ndarray, centre: float, width_oct: float) -> np.ndarray:
    """Gaussian-in-log-frequency band, peak 1."""
    return np.exp(-0.5 * (np.log2(_safe_f(f) / centre) / width_oct) ** 2)


def _bump_db(f: np.ndarray, centre: float, gain_db: float, width_oct: float) -> np.ndarray:
    return gain_db * _bandpass(f, centre, width_oct)


def _colored_noise(rng: np.random.Generator, n: int, shape: np.ndarray) -> np.ndarray:
    """Gaussian noise of length n with amplitude spectrum `shape` (rfft bins), unit RMS, float32."""
    re = rng.standard_normal(shape.size, dtype=np.float32)
    im = rng.standard_normal(shape.size, dtype=np.float32)
    spec = (re + 1j * im) * shape.astype(np.float32)
    spec[0] = 0.0
    return _unit(np.fft.irfft(spec, n))


def _band_power(x: np.ndarray, f: np.ndarray, lo: float, hi: float) -> float:
    spec = np.fft.rfft(x)
    sel = (f >= lo) & (f < hi)
    return float(np.sum(np.abs(spec[sel]) ** 2)) * 2.0 / (x.size**2)


def _calibrate(
    component: np.ndarray, healthy: np.ndarray, f: np.ndarray, band: tuple[float, float], rise_db: float
) -> np.ndarray:
    """Scale `component` so that adding it raises the band power of `healthy` by rise_db."""
    p_c = _band_power(component, f, *band)
    p_h = _band_power(healthy, f, *band)
    if p_c <= 0 or p_h <= 0:
        return component * 0.0
    return component * math.sqrt((10.0 ** (rise_db / 10.0) - 1.0) * p_h / p_c)


def _slow_wander(
    rng: np.random.Generator, t: np.ndarray, std: float, fmin: float = 0.05, fmax: float = 0.8, parts: int = 4
) -> np.ndarray:
    """Smooth zero-mean random fluctuation (sum of slow sinusoids) with about `std` standard deviation.

    Evaluated on a 200 Hz control grid and interpolated: it only ever moves a few times a second.
    """
    freqs = rng.uniform(fmin, fmax, parts)
    phases = rng.uniform(0.0, TWO_PI, parts)
    amp = std * math.sqrt(2.0 / parts)
    grid = np.arange(0.0, t[-1] + 2 * CONTROL_STEP, CONTROL_STEP)
    values = (amp * np.sin(TWO_PI * grid[:, None] * freqs + phases)).sum(axis=1)
    return np.interp(t, grid, values).astype(np.float32)


def _wrap(phase: np.ndarray) -> np.ndarray:
    """A float64 phase reduced to [0, 2 pi), as float32 (exact enough: error ~1e-6 rad, below 16-bit)."""
    q = phase * (1.0 / TWO_PI)
    np.floor(q, out=q)
    q *= TWO_PI
    np.subtract(phase, q, out=q)
    return q.astype(np.float32)


def _sin(phase: np.ndarray) -> np.ndarray:
    """sin of a float64 phase, evaluated in float32 after reduction (SIMD: about 10x faster here)."""
    return np.sin(_wrap(phase))


def _harmonics(phase: np.ndarray, amps: np.ndarray, phases: np.ndarray, top_hz: float, limit_hz: float) -> np.ndarray:
    """sum_k amps[k] sin(k * phase + phases[k]) as float32; harmonics whose top frequency reaches limit_hz
    are left out."""
    base = _wrap(phase)
    out = np.zeros(phase.size, dtype=np.float32)
    for k, (a, ph) in enumerate(zip(amps, phases), start=1):
        if k * top_hz >= limit_hz:
            break
        arg = base * np.float32(k)
        arg += np.float32(ph)
        np.sin(arg, out=arg)
        arg *= np.float32(a)
        out += arg
    return out


# --------------------------------------------------------------------------------------------------
# components


def _room_tone(rng: np.random.Generator) -> dict:
    """The stationary character of a room: background slope, HVAC rumble, a distant machine."""
    return {
        "slope": rng.uniform(0.8, 1.3),
        "rumble_hz": rng.uniform(40.0, 120.0),
        "rumble_db": rng.uniform(0.0, 6.0),
        "distant_on": bool(rng.random() < 0.8),
        "distant_hz": math.exp(rng.uniform(math.log(70.0), math.log(700.0))),
        "distant_amps": (1.0, rng.uniform(0.2, 0.6), rng.uniform(0.1, 0.4)),
        "distant_db": rng.uniform(-14.0, -6.0),
    }


def _background(
    rng: np.random.Generator, n: int, sr: float, t: np.ndarray, f: np.ndarray, room: dict | None = None
) -> tuple[np.ndarray, dict]:
    """Room / factory noise: unit-RMS stationary part plus occasional transients on top.

    ``room`` (a session's ``_room_tone``) fixes the stationary character; else it is drawn per file.
    """
    nyq = sr / 2.0
    slope = rng.uniform(0.8, 1.3)  # PSD ~ f^-slope
    rumble_hz = rng.uniform(40.0, 120.0)
    rumble_db = rng.uniform(0.0, 6.0)
    if room is not None:
        slope, rumble_hz, rumble_db = room["slope"], room["rumble_hz"], room["rumble_db"]
    shape = _highpass(f, 18.0, 2) * (np.maximum(f, 20.0) / 100.0) ** (-slope / 2.0)
    shape *= 10.0 ** (_bump_db(f, rumble_hz, rumble_db, 0.6) / 20.0)
    pink = _colored_noise(rng, n, shape)

    distant_on = rng.random() < 0.8
    d_hz = math.exp(rng.uniform(math.log(70.0), math.log(700.0)))
    d_amps = np.array([1.0, rng.uniform(0.2, 0.6), rng.uniform(0.1, 0.4)])
    d_phases = rng.uniform(0.0, TWO_PI, 3)
    d_db = rng.uniform(-14.0, -6.0)
    if room is not None:
        distant_on, d_hz, d_db = room["distant_on"], room["distant_hz"], room["distant_db"]
        d_amps = np.asarray(room["distant_amps"])
    d_am = 1.0 + _slow_wander(rng, t, 0.1, 0.1, 1.5, parts=3)
    d_phase = TWO_PI * d_hz * t * (1.0 + 0.001 * rng.standard_normal())
    distant = np.zeros(n, dtype=np.float32)
    if distant_on:
        distant = _unit(_harmonics(d_phase, d_amps, d_phases, d_hz, 0.45 * sr) * d_am) * _db(d_db)
    stationary = _unit(pink + distant)

    rate = rng.uniform(0.03, 0.3)  # transients per second
    count = int(rng.poisson(rate * n / sr))
    out = stationary.copy()
    events = []
    for _ in range(count):
        start = int(rng.integers(0, n))
        level = _db(rng.uniform(6.0, 18.0))  # peak over the stationary RMS
        if rng.random() < 0.6:  # clank: a few ringing modes
            modes = np.minimum(np.exp(rng.uniform(math.log(300.0), math.log(4000.0), 3)), 0.9 * nyq)
            decays = rng.uniform(0.02, 0.12, 3)
            weights = rng.uniform(0.3, 1.0, 3)
            length = min(int(5 * decays.max() * sr), n - start)
            tt = np.arange(length) / sr
            ev = sum(w * np.exp(-tt / d) * np.sin(TWO_PI * m * tt) for m, d, w in zip(modes, decays, weights))
            name = "clank"
        else:  # door / thump: a low damped mode plus a short noise burst
            mode = rng.uniform(40.0, 150.0)
            decay = rng.uniform(0.04, 0.15)
            length = min(int(5 * decay * sr), n - start)
            tt = np.arange(length) / sr
            burst = rng.standard_normal(length) * np.exp(-tt / 0.008) * 0.5
            ev = np.exp(-tt / decay) * np.sin(TWO_PI * mode * tt) + burst
            name = "thump"
        if length <= 0:
            continue
        ev = np.asarray(ev, dtype=np.float64)
        peak = np.max(np.abs(ev))
        if peak > 0:
            out[start : start + length] += ev / peak * level
        events.append(name)
    return out, {"bg_slope": slope, "distant_hz": d_hz if distant_on else 0.0, "transients": events}


def _rotor(rng: np.random.Generator, t: np.ndarray, sr: float, f0: float) -> tuple[np.ndarray, np.ndarray]:
    """Instantaneous shaft rate (Hz) and the shaft phase integrated from it (rad)."""
    speed = f0 * (1.0 + _slow_wander(rng, t, rng.uniform(0.002, 0.006), 0.05, 0.8))
    phase = rng.uniform(0.0, TWO_PI) + TWO_PI * np.cumsum(speed, dtype=np.float64) / sr
    return speed, phase


def _fan_components(
    rng: np.random.Generator,
    kind: str,
    machine: MachineSpec,
    f0: float,
    n: int,
    sr: float,
    t: np.ndarray,
    f: np.ndarray,
) -> tuple[np.ndarray, dict]:
    """Healthy-reference-normalised machine sound (RMS ~1 for the healthy weights) plus the fault."""
    limit = 0.45 * sr
    speed, phase = _rotor(rng, t, sr, f0)
    top = float(speed.max())
    blades = machine.blades
    details: dict[str, Any] = {}

    # --- draws shared by every running kind (fixed order, fixed counts)
    tone_db = rng.uniform(-8.0, -3.0)  # all blade-pass tones vs broadband, power
    decay = rng.uniform(0.4, 0.6)
    n_harm = 6
    h_amps = decay ** np.arange(n_harm) * 10.0 ** (rng.normal(0.0, 1.5, n_harm) / 20.0)
    h_phases = rng.uniform(0.0, TWO_PI, n_harm)
    tone_am = 1.0 + _slow_wander(rng, t, rng.uniform(0.04, 0.1), 0.2, 3.0)
    bb_bpf_depth = rng.uniform(0.1, 0.25)
    bb_bpf_phase = rng.uniform(0.0, TWO_PI)
    shaft_db = rng.uniform(-24.0, -18.0)
    shaft_amps = np.array([1.0, rng.uniform(0.3, 0.8), rng.uniform(0.2, 0.5)])
    shaft_phases = rng.uniform(0.0, TWO_PI, 3)
    hum_db = np.array([rng.uniform(-26.0, -20.0), rng.uniform(-18.0, -12.0), rng.uniform(-26.0, -20.0)])
    hum_phases = rng.uniform(0.0, TWO_PI, 3)
    slot_db = rng.uniform(-20.0, -13.0, 3)
    slot_phases = rng.uniform(0.0, TWO_PI, 3)
    s = f0 / REF_SHAFT_HZ
    corner = rng.uniform(10.0, 16.0) * f0
    tilt = 1.0 - 0.35 * (s - 1.0) + rng.normal(0.0, 0.05)
    housing = machine.housing_hz * rng.uniform(0.9, 1.1)
    housing_db = rng.uniform(3.0, 7.0)

    # --- fault-specific modifications of the rotor-locked parts
    blade_phase = blades * phase
    mod = 1.0
    if kind == "imbalance":
        sev = rng.uniform(0.5, 1.0)
        am_depth = 0.12 + 0.25 * sev
        pm_index = 0.1 + 0.3 * sev
        am_phase, pm_phase = rng.uniform(0.0, TWO_PI, 2)
        blade_phase = blade_phase + pm_index * _sin(phase + pm_phase)
        mod = 1.0 + am_depth * _sin(phase + am_phase)
        details.update(severity=sev, am_depth=am_depth, pm_index=pm_index)
    elif kind == "blockage":
        decay = min(decay + rng.uniform(0.08, 0.15), 0.8)  # rotating stall: richer blade harmonics
        h_amps = decay ** np.arange(n_harm) * 10.0 ** (rng.normal(0.0, 1.5, n_harm) / 20.0)
        tone_db += rng.uniform(0.0, 2.0)

    # --- healthy parts, each unit RMS, weighted in dB against the broadband noise
    shape = _highpass(f, 30.0, 2) * (1.0 + (f / corner) ** 2) ** (-tilt / 2.0)
    shape *= 10.0 ** (_bump_db(f, housing, housing_db, 0.4) / 20.0)
    broadband = _colored_noise(rng, n, shape) * (1.0 + bb_bpf_depth * _sin(blade_phase + bb_bpf_phase))
    tones = _unit(_harmonics(blade_phase, h_amps, h_phases, blades * top, limit) * tone_am)
    shaft = _unit(_harmonics(phase, shaft_amps, shaft_phases, top, limit))
    mains = machine.mains_hz * (1.0 + 2e-4 * rng.standard_normal())
    mains_phase = TWO_PI * mains * t
    hum = _harmonics(mains_phase, _db(hum_db) * math.sqrt(2.0), hum_phases, mains, limit)
    slot_phase = machine.rotor_slots * phase
    slots = np.zeros(n, dtype=np.float32)
    for k, side in enumerate((0, -2, 2)):
        if machine.rotor_slots * top + side * mains < limit:
            slots += _db(slot_db[k]) * math.sqrt(2.0) * _sin(slot_phase + side * mains_phase + slot_phases[k])

    healthy_power = 1.0 + 10.0 ** (tone_db / 10.0) + 10.0 ** (shaft_db / 10.0)
    healthy_power += float(np.sum(10.0 ** (hum_db / 10.0))) + float(np.sum(10.0 ** (slot_db / 10.0)))
    norm = 1.0 / math.sqrt(healthy_power)

    bb_gain = 1.0
    bb_mod = np.ones(n, dtype=np.float32)
    if kind == "blockage":
        bb_rise = rng.uniform(2.5, 5.0)
        bb_gain = _db(bb_rise)
        bb_mod = 1.0 + _slow_wander(rng, t, rng.uniform(0.06, 0.15), 1.0, 5.0, parts=3)  # surging
        details.update(broadband_rise_db=bb_rise)
    healthy = (bb_gain * broadband * bb_mod + _db(tone_db) * tones) * mod
    healthy += _db(shaft_db) * shaft + hum + slots
    healthy *= norm

    # healthy reference (no fault) for calibrating the fault bands
    if kind == "blockage":
        reference = (broadband + _db(tone_db) * tones + _db(shaft_db) * shaft + hum + slots) * norm
    else:
        reference = healthy
    fault = np.zeros(n, dtype=np.float32)
    if kind == "imbalance":
        line_db = rng.uniform(-10.0, -5.0)  # the 1x line, far above the healthy -24..-18 dB
        amps = np.array([1.0, _db(-rng.uniform(6.0, 10.0))])
        fault = _unit(_harmonics(phase, amps, rng.uniform(0.0, TWO_PI, 2), top, limit)) * _db(line_db) * norm
        details.update(line_db=line_db)
    elif kind == "blockage":
        ratio = rng.uniform(40.0, 90.0)
        whistle_hz = min(ratio * f0, 0.4 * sr)
        width = rng.uniform(0.03, 0.07)  # octaves
        rise = rng.uniform(4.0, 9.0)
        w = _colored_noise(rng, n, _bandpass(f, whistle_hz, width))
        w *= 1.0 + _slow_wander(rng, t, 0.2, 0.3, 2.0, parts=3)
        band = (whistle_hz / 1.26, whistle_hz * 1.26)
        fault = _calibrate(w, reference, f, band, rise)
        details.update(whistle_hz=whistle_hz, whistle_rise_db=rise)
    elif kind == "bearing":
        slip = rng.uniform(-0.015, 0.015)
        rate = machine.bearing_ratio * (1.0 + slip) * speed
        cycles = np.cumsum(rate, dtype=np.float64) / sr + rng.uniform(0.0, 1.0)
        hits = np.flatnonzero(np.diff(np.floor(cycles))) + 1
        period = 1.0 / (machine.bearing_ratio * f0)
        jitter = rng.normal(0.0, 0.01 * period * sr, hits.size)
        amps = rng.lognormal(0.0, 0.4, hits.size) * np.maximum(
            1.0 + 0.6 * np.cos(phase[hits] + rng.uniform(0.0, TWO_PI)), 0.1
        )
        idx = np.clip(np.round(hits + jitter).astype(np.int64), 0, n - 1)
        spikes = np.zeros(n, dtype=np.float32)
        np.add.at(spikes, idx, amps)
        f_res = min(rng.uniform(2000.0, 6000.0), 0.42 * sr)
        f_res2 = f_res * rng.uniform(1.3, 1.8)
        tau = rng.uniform(0.6e-3, 2.0e-3)
        klen = min(int(8 * tau * sr) + 1, n)
        tk = np.arange(klen) / sr
        kernel = np.exp(-tk / tau) * np.sin(TWO_PI * f_res * tk)
        if f_res2 < 0.45 * sr:
            kernel += 0.5 * np.exp(-tk / (0.7 * tau)) * np.sin(TWO_PI * f_res2 * tk)
        ring = np.fft.irfft(np.fft.rfft(spikes) * np.fft.rfft(kernel.astype(np.float32), n), n)
        rise = rng.uniform(5.0, 10.0)
        band = (f_res / 1.41, min(f_res * 1.41, 0.5 * sr))
        fault = _calibrate(ring, reference, f, band, rise)
        details.update(defect_hz=machine.bearing_ratio * (1.0 + slip) * f0, resonance_hz=f_res, band_rise_db=rise)
    elif kind == "rubbing":
        rel = phase - phase[0]
        rev = np.floor(rel / TWO_PI).astype(np.int64)
        n_rev = int(rev[-1]) + 1
        stay_on, stay_off = rng.uniform(0.75, 0.9), rng.uniform(0.8, 0.95)
        u = rng.random(n_rev)
        on = np.zeros(n_rev, dtype=bool)
        state = rng.random() < 0.6
        for i in range(n_rev):
            on[i] = state
            state = (u[i] < stay_on) if state else (u[i] >= stay_off)
        if not on.any():
            on[int(rng.integers(0, n_rev)) :] = True
        gains = (on * rng.lognormal(0.0, 0.35, n_rev)).astype(np.float32)
        contact = rng.uniform(0.0, TWO_PI)
        width = TWO_PI * rng.uniform(0.08, 0.3)
        theta = np.mod(rel - contact, TWO_PI)
        env = np.where(theta < width, _sin(np.pi * np.minimum(theta / width, 1.0)) ** 2, 0.0) * gains[rev]
        centre = rng.uniform(1500.0, 4000.0)
        scrape = _colored_noise(rng, n, _bandpass(f, min(centre, 0.4 * sr), 0.8))
        squeal_on = rng.random() < 0.5
        sq_hz = min(rng.uniform(1200.0, 3500.0), 0.4 * sr)
        sq_rate = sq_hz * (1.0 + _slow_wander(rng, t, 0.01, 0.5, 4.0, parts=2))
        sq_phase = TWO_PI * np.cumsum(sq_rate, dtype=np.float64) / sr
        if squeal_on:
            scrape = scrape + 0.7 * math.sqrt(2.0) * _sin(sq_phase)
        rise = rng.uniform(3.0, 7.0)
        band = (1000.0, min(6000.0, 0.5 * sr))
        fault = _calibrate(scrape * env, reference, f, band, rise)
        details.update(duty=float(np.mean(env > 0)), band_rise_db=rise, squeal=bool(squeal_on))
    elif kind == "wear":
        # worn bearings / loosened panel: stationary, a few dB more in one band and a little more level,
        # no new event or tone (what the embedding of one window barely notices)
        centre = math.exp(rng.uniform(math.log(600.0), math.log(min(4000.0, 0.4 * sr))))
        rise = rng.uniform(3.0, 6.0)
        level_rise = rng.uniform(1.0, 2.5)
        response = 10.0 ** ((_bump_db(f, centre, rise, 0.5) + level_rise) / 20.0) - 1.0
        fault = np.fft.irfft(np.fft.rfft(healthy) * response.astype(np.float32), n).astype(np.float32)
        details.update(band_hz=centre, band_rise_db=rise, level_rise_db=level_rise)
    details.update(tilt=tilt, corner_hz=corner)
    return healthy + fault, {"speed": speed, **details}


def _mic_eq_params(rng: np.random.Generator, scale: float = 1.0) -> tuple[float, ...]:
    """(low shelf gain, freq, high shelf gain, freq, peak gain, freq, width, high-pass corner); gains x scale."""
    return (
        scale * rng.uniform(-4.0, 3.0),
        rng.uniform(80.0, 300.0),
        scale * rng.uniform(-6.0, 3.0),
        rng.uniform(2000.0, 6000.0),
        scale * rng.uniform(-3.0, 3.0),
        math.exp(rng.uniform(math.log(300.0), math.log(5000.0))),
        rng.uniform(0.3, 0.8),
        rng.uniform(15.0, 30.0),
    )


def _mic_eq(rng: np.random.Generator, f: np.ndarray, params: tuple[float, ...] | None = None) -> np.ndarray:
    """Slight random microphone / distance colouring, as an amplitude response over rfft bins.

    ``params`` (a session's microphone) fixes it; else it is drawn per file."""
    drawn = _mic_eq_params(rng)
    ls_g, ls_f, hs_g, hs_f, pk_g, pk_f, pk_w, hp = drawn if params is None else params
    db = ls_g / (1.0 + (f / ls_f) ** 2) + hs_g / (1.0 + (hs_f / _safe_f(f)) ** 2) + _bump_db(f, pk_f, pk_g, pk_w)
    return 10.0 ** (db / 20.0) * _highpass(f, hp, 2)


# --------------------------------------------------------------------------------------------------
# public rendering API


def _as_rng(rng_or_seed) -> np.random.Generator:
    if isinstance(rng_or_seed, np.random.Generator):
        return rng_or_seed
    bad = f"rng_or_seed must be a numpy Generator, SeedSequence or non-negative int, not {rng_or_seed!r}"
    if isinstance(rng_or_seed, bool):
        raise FanwatchError(bad)
    if isinstance(rng_or_seed, (int, np.integer)) and int(rng_or_seed) < 0:
        raise FanwatchError(f"seed must be a non-negative integer, not {rng_or_seed}")
    if rng_or_seed is None or isinstance(rng_or_seed, (int, np.integer, np.random.SeedSequence)):
        return np.random.default_rng(rng_or_seed)
    raise FanwatchError(bad)


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_common(seconds: float, sample_rate: int, channels: int, snr_db: float) -> int:
    if not _is_int(sample_rate) or not 8000 <= sample_rate <= 192000:
        raise FanwatchError(f"sample rate must be an integer number of Hz between 8000 and 192000, not {sample_rate!r}")
    if not _is_int(channels) or not 1 <= channels <= MAX_CHANNELS:
        raise FanwatchError(f"channels must be an integer between 1 and {MAX_CHANNELS}, not {channels!r}")
    try:
        seconds_f = float(seconds)
        snr_f = float(snr_db)
    except (TypeError, ValueError):
        raise FanwatchError(f"seconds and snr_db must be numbers, not {seconds!r} and {snr_db!r}") from None
    if not math.isfinite(snr_f) or not -40.0 <= snr_f <= 60.0:
        raise FanwatchError(f"snr_db must be between -40 and 60 dB, not {snr_db!r}")
    if not math.isfinite(seconds_f) or seconds_f <= 0:
        raise FanwatchError(f"seconds must be a positive number, not {seconds!r}")
    n = int(round(seconds_f * sample_rate))
    if n < MIN_SAMPLES:
        raise FanwatchError(
            f"{seconds_f:g} s at {sample_rate} Hz is too short to synthesise (at least {MIN_SAMPLES} samples)"
        )
    return n


def render_with_info(
    kind: str,
    seconds: float,
    rng_or_seed,
    sample_rate: int = SAMPLE_RATE,
    machine: MachineSpec | str | None = None,
    snr_db: float = 6.0,
    channels: int = 1,
    session: SessionSpec | None = None,
) -> tuple[np.ndarray, RenderInfo]:
    """render(), plus a RenderInfo saying what was drawn (speed, SNR, gain, fault parameters)."""
    if kind not in KINDS:
        raise FanwatchError(f"unknown sound kind {kind!r}; choose one of {', '.join(KINDS)}")
    n = _check_common(seconds, sample_rate, channels, snr_db)
    if machine is None:
        machine = DEFAULT_MACHINE
    elif isinstance(machine, str):
        if machine not in MACHINES:
            raise FanwatchError(f"unknown machine id {machine!r}; known ids are {', '.join(MACHINES)}")
        machine = MACHINES[machine]
    rng = _as_rng(rng_or_seed)
    sr = float(sample_rate)
    t = np.arange(n) / sr
    f = np.fft.rfftfreq(n, 1.0 / sr)

    # per-file draws common to every kind, in a fixed order
    snr_eff = float(snr_db) + rng.uniform(-SNR_JITTER_DB, SNR_JITTER_DB)
    gain_db = rng.uniform(-GAIN_SPREAD_DB, GAIN_SPREAD_DB)
    speed_jitter = float(np.clip(rng.normal(0.0, 0.015), -0.04, 0.04))
    fault_state = RUNNING_STATES[int(rng.integers(0, 2))]
    if session is not None:  # the session fixes them; files keep small jitters
        j = SESSION_JITTER
        snr_eff = float(snr_db) + session.snr_offset_db + rng.uniform(-j["snr_db"], j["snr_db"])
        gain_db = session.gain_db + rng.uniform(-j["gain_db"], j["gain_db"])
        speed_jitter = session.speed_offset + float(rng.normal(0.0, j["speed"]))
    room, room_info = _background(rng, n, sr, t, f, None if session is None else session.room)
    details: dict[str, Any] = dict(room_info)
    if session is not None:
        details["session"] = session.index

    state = fault_state if kind in FAULTS + SUBTLE_FAULTS else kind
    if state == "off":
        ref_level = LEVEL_REF_DBFS + SPEED_LAW_DB * math.log10(machine.low_speed_hz / REF_SHAFT_HZ)
        room_rms = _db(ref_level - snr_eff)
        source = np.zeros(n, dtype=np.float32)
        if rng.random() < 0.5:  # a standby transformer / drive hum, faint
            hum_db = rng.uniform(-15.0, -8.0)
            mains = machine.mains_hz
            phases = rng.uniform(0.0, TWO_PI, 2)
            hum = _harmonics(TWO_PI * mains * t, np.array([0.0, 1.0, 0.4]), np.r_[0.0, phases], mains, 0.45 * sr)
            source = _unit(hum) * room_rms * _db(hum_db)
            details["standby_hum_db"] = hum_db
        shaft_hz = 0.0
    else:
        f0 = machine.shaft_hz(state) * (1.0 + speed_jitter)
        if kind == "blockage":
            change = rng.uniform(0.03, 0.08) * (1.0 if rng.random() < 0.5 else -1.0)
            f0 *= 1.0 + change
            details["speed_change"] = change
        level = LEVEL_REF_DBFS + SPEED_LAW_DB * math.log10(f0 / REF_SHAFT_HZ)
        sig, fan_info = _fan_components(rng, kind, machine, f0, n, sr, t, f)
        speed = fan_info.pop("speed")
        details.update(fan_info)
        source = sig * _db(level)
        room_rms = _db(level - snr_eff)
        shaft_hz = float(np.mean(speed))

    eq = _mic_eq(rng, f, None if session is None else session.mic_eq).astype(np.float32)
    if channels == 1:
        out = np.fft.irfft(eq * np.fft.rfft(source + room * room_rms), n)[:, None]
    else:
        src_spec = np.fft.rfft(source)
        room_spec = np.fft.rfft(room * room_rms)
        # a small circular array (MIMII used an 8-mic circle): far-field plane-wave delays for the
        # machine and for the room's dominant direction, per-mic sensitivity, and independent noise
        # (sensor noise plus the high-frequency part of the diffuse field, which is incoherent).
        omega = (TWO_PI * f).astype(np.float32)
        mic_angles = TWO_PI * np.arange(channels) / channels
        src_az, room_az = rng.uniform(0.0, TWO_PI, 2)
        src_delay = -ARRAY_RADIUS_M / SPEED_OF_SOUND * np.cos(src_az - mic_angles)
        room_delay = -ARRAY_RADIUS_M / SPEED_OF_SOUND * np.cos(room_az - mic_angles)
        src_delay -= src_delay[0]
        room_delay -= room_delay[0]
        sens = 10.0 ** (rng.uniform(-0.5, 0.5, channels) / 20.0)
        sens[0] = 1.0
        diffuse_rel = rng.uniform(0.3, 0.6)
        diffuse_shape = _highpass(f, 800.0, 1) * (np.maximum(f, 20.0) / 1000.0) ** -0.5
        out = np.empty((n, channels), dtype=np.float32)
        for c in range(channels):
            spec = src_spec * np.exp(-1j * omega * float(src_delay[c]))
            spec += room_spec * np.exp(-1j * omega * float(room_delay[c]))
            spec += np.fft.rfft(_colored_noise(rng, n, diffuse_shape) * float(room_rms * diffuse_rel))
            out[:, c] = np.fft.irfft(eq * float(sens[c]) * spec, n)
    out *= _db(gain_db)
    peak = float(np.max(np.abs(out)))
    if peak > PEAK_LIMIT:
        out *= PEAK_LIMIT / peak
        gain_db += 20.0 * math.log10(PEAK_LIMIT / peak)
    audio = out.astype(np.float32)
    if channels == 1:
        audio = audio[:, 0]
    info = RenderInfo(
        kind=kind,
        state=state,
        machine_id=machine.machine_id,
        shaft_hz=shaft_hz,
        blade_pass_hz=shaft_hz * machine.blades,
        snr_db=snr_eff,
        gain_db=gain_db,
        details=details,
    )
    return audio, info


def render(
    kind: str,
    seconds: float,
    rng_or_seed,
    sample_rate: int = SAMPLE_RATE,
    machine: MachineSpec | str | None = None,
    snr_db: float = 6.0,
    channels: int = 1,
    session: SessionSpec | None = None,
) -> np.ndarray:
    """One synthetic recording: float32 in [-1, 1], shape [n] (mono) or [n, channels].

    kind is one of STATES (normal) or FAULTS (anomalous); rng_or_seed a numpy Generator, SeedSequence
    or non-negative int (same seed, same samples); machine a MachineSpec or an id of MACHINES (default
    id_00); snr_db the healthy-machine-to-room ratio (± 1 dB per file); session a SessionSpec
    (draw_session) whose room, microphone, background level and speed offset the file shares.
    """
    return render_with_info(kind, seconds, rng_or_seed, sample_rate, machine, snr_db, channels, session)[0]


# --------------------------------------------------------------------------------------------------
# datasets


def file_seed(seed: int, class_key: str, index: int) -> np.random.SeedSequence:
    """The child seed of one file: depends only on (seed, class key, index within the class)."""
    return np.random.SeedSequence([int(seed), zlib.crc32(class_key.encode("utf-8")), int(index)])


@dataclass(frozen=True)
class _Planned:
    relpath: str
    kind: str
    machine: MachineSpec
    class_key: str
    index: int
    group: str  # the summary key
    session: int | None = None  # recording session (sessions >= 2 only)


def snr_label(snr_db: float) -> str:
    """MIMII's folder prefix: 6 -> '6dB', 0 -> '0dB', -6 -> '-6dB'."""
    value = float(snr_db)
    if value == 0:
        value = 0.0  # no '-0dB'
    return f"{value:g}dB"


def _dcase_plan(machine_ids: tuple[str, ...], n_a: int, n_b: int, faults, sessions: int = 1) -> list[_Planned]:
    """The DCASE 2020 layout: per machine id, train normals, test normals, test anomalies. With
    ``sessions >= 2`` the train recordings cycle through days 0..S-2 and the test ones are day S-1."""
    test_day = sessions - 1 if sessions >= 2 else None
    parts = (
        ("train", "normal", n_a, lambda i: RUNNING_STATES[i % 2]),
        ("test", "normal", n_b, lambda i: RUNNING_STATES[i % 2]),
        ("test", "anomaly", n_b, lambda i: faults[i % len(faults)]),
    )
    plan = []
    for mid in machine_ids:
        for split, kind_name, count, kind in parts:
            key = f"{mid}/{split}/{kind_name}"
            for i in range(count):
                session = None if test_day is None else (i % test_day if split == "train" else test_day)
                path = f"fan/{split}/{kind_name}_{mid}_{i:08d}.wav"
                plan.append(_Planned(path, kind(i), MACHINES[mid], key, i, key, session))
    return plan


def _plan(
    layout: str, n_a: int, n_b: int, snr_db: float, sessions: int = 1, machine_ids: tuple[str, ...] = LAYOUT_MACHINE_IDS
) -> list[_Planned]:
    if sessions >= 2:  # dcase only (checked by the caller)
        return _dcase_plan(machine_ids, n_a, n_b, SESSION_FAULTS, sessions)
    plan: list[_Planned] = []
    if layout == "folders":
        m = DEFAULT_MACHINE
        for kind in STATES:
            for i in range(n_a):
                plan.append(_Planned(f"{kind}/{kind}_{i:04d}.wav", kind, m, f"{m.machine_id}/{kind}", i, kind))
        for kind in FAULTS:
            cls = FAULT_PREFIX + kind
            for i in range(n_b):
                plan.append(_Planned(f"{cls}/{cls}_{i:04d}.wav", kind, m, f"{m.machine_id}/{kind}", i, cls))
    elif layout == "mimii":
        root = f"{snr_label(snr_db)}_fan/fan"
        for mid in LAYOUT_MACHINE_IDS:
            m = MACHINES[mid]
            for i in range(n_a):
                plan.append(
                    _Planned(
                        f"{root}/{mid}/normal/{i:08d}.wav",
                        RUNNING_STATES[i % 2],
                        m,
                        f"{mid}/normal",
                        i,
                        f"{mid}/normal",
                    )
                )
            for i in range(n_b):
                key = f"{mid}/abnormal"
                plan.append(_Planned(f"{root}/{mid}/abnormal/{i:08d}.wav", FAULTS[i % len(FAULTS)], m, key, i, key))
    elif layout == "dcase":
        plan = _dcase_plan(LAYOUT_MACHINE_IDS, n_a, n_b, FAULTS)
    else:
        raise FanwatchError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    return plan


def _read_manifest(out: Path) -> dict | None:
    """The previous SYNTHETIC.json of `out`, None when `out` is absent or empty; refuses foreign folders."""
    if not out.exists():
        return None
    if not out.is_dir():
        raise FanwatchError(f"{out}: exists and is not a folder; choose another output folder")
    manifest = out / MANIFEST_NAME
    if not manifest.is_file():
        if any(out.iterdir()):
            raise FanwatchError(
                f"{out}: folder is not empty and has no {MANIFEST_NAME}, so it is not synthetic "
                "output; refusing to write into it (choose an empty or new folder)"
            )
        return None
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not an object")
    except (OSError, ValueError) as exc:
        raise FanwatchError(f"{manifest}: unreadable ({exc}); delete the folder or choose another") from None
    return data


def _remove_previous(out: Path, manifest: dict) -> None:
    """Delete the files a previous run listed (and only those), then the folders they leave empty."""
    files = manifest.get("files")
    if not isinstance(files, list):
        return
    root = out.resolve()
    dirs: set[Path] = set()
    for rel in files:
        if not isinstance(rel, str) or not rel.endswith(".wav"):
            continue
        path = (out / rel).resolve()
        if root not in path.parents:
            continue
        if path.is_file():
            path.unlink()
        parent = path.parent
        while parent != root and root in parent.parents:
            dirs.add(parent)
            parent = parent.parent
    for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
        try:
            d.rmdir()  # only succeeds when empty
        except OSError:
            pass


def _write_manifest(out: Path, data: dict) -> None:
    path = out / MANIFEST_NAME
    tmp = out / (MANIFEST_NAME + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)


def write_wav(path: str | Path, audio: np.ndarray, sample_rate: int) -> None:
    """16-bit PCM WAV, quantised here (round to nearest) so the bytes do not depend on libsndfile."""
    pcm = np.round(np.clip(audio, -1.0, 1.0) * 32767.0).astype(np.int16)
    try:
        sf.write(str(path), pcm, int(sample_rate), subtype="PCM_16", format="WAV")
    except (OSError, RuntimeError, sf.LibsndfileError) as exc:
        raise FanwatchError(f"{path}: cannot write WAV ({exc})") from None


def generate_dataset(
    out_dir,
    layout: str = "folders",
    seed: int = 0,
    seconds: float = 6.0,
    files_per_state: int | None = None,
    files_per_fault: int | None = None,
    sample_rate: int = SAMPLE_RATE,
    channels: int = 1,
    snr_db: float = 6.0,
    progress: bool = True,
    sessions: int = 1,
    machine_ids: tuple[str, ...] | None = None,
) -> dict[str, int]:
    """Write a synthetic dataset into out_dir and return the number of files per class.

    Layouts (None counts take DEFAULT_COUNTS[layout]):
      folders: <out>/<class>/<class>_NNNN.wav; files_per_state for each of STATES,
               files_per_fault for each of fault_<FAULTS>  (defaults 24 / 8);
      mimii:   <out>/<snr>_fan/fan/id_XX/{normal,abnormal}/NNNNNNNN.wav for id_00 and id_02;
               files_per_state normal (low/high speed alternating) and files_per_fault abnormal
               (faults in turn) per id (defaults 20 / 6);
      dcase:   <out>/fan/train/normal_id_XX_NNNNNNNN.wav (files_per_state per id) and
               <out>/fan/test/{normal,anomaly}_id_XX_NNNNNNNN.wav (files_per_fault of each per id)
               (defaults 20 / 6).
    sessions >= 2 (dcase only): recording sessions (``SessionSpec``: room tone, microphone gain and
    colouring, background level, speed offset per session and machine, small per-file jitter); the
    train files come from sessions 0..sessions-2 in turn, every test file from the last one, so the
    test day is never heard in training; the test anomalies take SESSION_FAULTS in turn (the four
    faults and ``wear``, a few dB in one band). sessions 1 (default): every file draws its own room,
    gain and microphone, as before. machine_ids (sessions only): which of MACHINES to record (default
    id_00 and id_02).
    Writes <out>/SYNTHETIC.json (settings, counts, file list). Refuses a non-empty folder without
    one; regenerating into its own earlier output first removes the files that output listed.
    """
    if layout not in LAYOUTS:
        raise FanwatchError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if not _is_int(seed) or seed < 0:
        raise FanwatchError(f"seed must be a non-negative integer, not {seed!r}")
    default_a, default_b = DEFAULT_COUNTS[layout]
    n_a = default_a if files_per_state is None else files_per_state
    n_b = default_b if files_per_fault is None else files_per_fault
    for name, value in (("files_per_state", n_a), ("files_per_fault", n_b)):
        if not _is_int(value) or value < 0:
            raise FanwatchError(f"{name} must be a non-negative integer, not {value!r}")
    _check_common(seconds, sample_rate, channels, snr_db)
    if not _is_int(sessions) or not 1 <= sessions <= 100:
        raise FanwatchError(f"sessions must be an integer between 1 and 100, not {sessions!r}")
    if sessions >= 2 and layout != "dcase":
        raise FanwatchError(f"recording sessions need the dcase layout (train days vs a test day), not {layout!r}")
    ids = tuple(machine_ids) if machine_ids is not None else LAYOUT_MACHINE_IDS
    if machine_ids is not None and (sessions < 2 or not ids or any(m not in MACHINES for m in ids)):
        raise FanwatchError(f"machine_ids needs sessions >= 2 and ids among {', '.join(MACHINES)}, not {machine_ids!r}")
    out = Path(out_dir).expanduser()
    previous = _read_manifest(out)
    plan = _plan(layout, int(n_a), int(n_b), snr_db, int(sessions), ids)
    specs = {(mid, i): draw_session(seed, i, mid) for mid in ids for i in range(sessions)} if sessions >= 2 else {}

    counts: dict[str, int] = {}
    for item in plan:
        counts[item.group] = counts.get(item.group, 0) + 1
    used = sorted({item.machine.machine_id for item in plan}) or [DEFAULT_MACHINE.machine_id]
    manifest = {
        "generator": "fanwatch.synth",
        "fanwatch_version": __version__,
        "complete": False,
        "settings": {
            "layout": layout,
            "seed": int(seed),
            "seconds": float(seconds),
            "sample_rate": int(sample_rate),
            "channels": int(channels),
            "snr_db": float(snr_db),
            "files_per_state": int(n_a),
            "files_per_fault": int(n_b),
            "sessions": int(sessions),
        },
        "machines": {mid: asdict(MACHINES[mid]) for mid in used},
        "counts": counts,
        "total_files": len(plan),
        "files": [item.relpath for item in plan],
    }
    if specs:
        manifest["sessions"] = {f"{mid}/{i}": spec.as_dict() for (mid, i), spec in specs.items()}
        manifest["file_sessions"] = {item.relpath: item.session for item in plan}
    try:
        out.mkdir(parents=True, exist_ok=True)
        if previous is not None:
            _remove_previous(out, previous)
        _write_manifest(out, manifest)  # mark the folder as ours before the first WAV lands
    except OSError as exc:
        raise FanwatchError(f"{out}: cannot prepare the output folder ({exc})") from None

    items = plan
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(plan, desc=f"synth {layout}", unit="file")
        items = bar
    try:
        for item in items:
            session = None if item.session is None else specs[(item.machine.machine_id, item.session)]
            audio = render(
                item.kind,
                seconds,
                np.random.default_rng(file_seed(seed, item.class_key, item.index)),
                sample_rate=sample_rate,
                machine=item.machine,
                snr_db=snr_db,
                channels=channels,
                session=session,
            )
            path = out / item.relpath
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise FanwatchError(f"{path.parent}: cannot create folder ({exc})") from None
            write_wav(path, audio, sample_rate)
    finally:
        if bar is not None:
            bar.close()
    manifest["complete"] = True
    try:
        _write_manifest(out, manifest)
    except OSError as exc:
        raise FanwatchError(f"{out / MANIFEST_NAME}: cannot write ({exc})") from None
    return counts


# --------------------------------------------------------------------------------------------------
# command line


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fanwatch.synth",
        description="Write a seeded synthetic dataset of fan recordings (normal states and faults).",
        epilog="Layouts: folders = <out>/<class>/<class>_NNNN.wav (off, low_speed, high_speed, fault_*); "
        "mimii = <out>/<snr>_fan/fan/id_XX/{normal,abnormal}/NNNNNNNN.wav; "
        "dcase = <out>/fan/{train,test}/{normal,anomaly}_id_XX_NNNNNNNN.wav.",
    )
    p.add_argument("out", help="output folder (new, empty, or an earlier synthetic output)")
    p.add_argument("--layout", choices=LAYOUTS, default="folders", help="folder layout (default: folders)")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed, same files (default: 0)")
    p.add_argument("--seconds", type=float, default=6.0, help="length of each file (default: 6)")
    p.add_argument(
        "--files-per-state",
        type=int,
        default=None,
        help="folders: files per normal state; mimii: normal files per id; dcase: train files per id "
        "(defaults: 24 / 20 / 20)",
    )
    p.add_argument(
        "--files-per-fault",
        type=int,
        default=None,
        help="folders: files per fault; mimii: abnormal files per id; dcase: test files of each label "
        "per id (defaults: 8 / 6 / 6)",
    )
    p.add_argument("--sample-rate", type=int, default=SAMPLE_RATE, help=f"Hz (default: {SAMPLE_RATE})")
    p.add_argument("--channels", type=int, default=1, help="channels, >1 simulates a mic array (default: 1)")
    p.add_argument("--snr-db", type=float, default=6.0, help="machine-to-room SNR in dB (MIMII: -6, 0, 6; default: 6)")
    p.add_argument(
        "--sessions",
        type=int,
        default=1,
        help="dcase layout: recording sessions (room, microphone, level, speed); train on the first "
        "ones, test on the last (default: 1, every file its own)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        counts = generate_dataset(
            args.out,
            layout=args.layout,
            seed=args.seed,
            seconds=args.seconds,
            files_per_state=args.files_per_state,
            files_per_fault=args.files_per_fault,
            sample_rate=args.sample_rate,
            channels=args.channels,
            snr_db=args.snr_db,
            progress=not args.quiet,
            sessions=args.sessions,
        )
    except FanwatchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    total = sum(counts.values())
    summary = ", ".join(f"{k}: {v}" for k, v in counts.items())
    print(f"wrote {total} files to {args.out} ({summary})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
