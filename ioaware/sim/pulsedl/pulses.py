"""Shaped detector pulses as an ADC sees them, and the best any unbiased estimator can do on them.

A pulse of amplitude A (fraction of the ADC's full scale) arriving at t0 is `A * shape(t - t0)`, the shape peaking
at 1: a CR-RC^n semi-Gaussian `(u/n)^n exp(n - u)` with u = (t - t0)/tau, or a double exponential
`exp(-t/tau_fall) - exp(-t/tau_rise)` scaled to peak 1. White Gaussian noise is added, the sum is sampled at the ADC
rate from t = 0 and rounded to an N-bit code above a pedestal.

**SNR** (the definition used everywhere here): `SNR_dB = 20 log10(A / sigma)`, A the pulse's peak amplitude above
the baseline and sigma the RMS of the additive white noise, both at the ADC input, before the ADC rounds. Every
pulse carries the stated SNR (sigma = A / 10^(SNR/20) per pulse), as on the paper's bench where a DDS replays one
pulse amplitude (our reading: the abstract quotes one SNR for one resolution). The ADC's rounding adds LSB^2/12 on
top; `effective_snr_db` says how much. 47.4 dB is A/sigma = 234.4.

The default pulse (CR-RC^4, tau = 5 ns: 20 ns peaking time, sampled at 125 MS/s by a 12-bit ADC) is our choice: the
stored sources give neither the paper's shaper nor its ADC. It is a fast-shaper, mid-rate-ADC setting where the
Cramer-Rao bound (`crlb`) at 47.4 dB is 38 ps and 0.29%, below the paper's 60 ps and 0.40%; a slower shaper or ADC
moves every method's resolution with the bound (tau = 10 ns: 53 ps; 65 MS/s with tau = 5 ns: 58 ps).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import numpy as np

SHAPES = ("crrc", "dexp")


@dataclass(frozen=True)
class PulseConfig:
    shape: str = "crrc"  # "crrc" (CR-RC^n semi-Gaussian) or "dexp" (double exponential)
    order: int = 4  # n of CR-RC^n: a 4th-order shaper is a common semi-Gaussian (assumed)
    tau_ns: float = 5.0  # CR-RC^n time constant; peaking time = order * tau = 20 ns (assumed, see module doc)
    tau_rise_ns: float = 3.0  # double exponential rise (assumed)
    tau_fall_ns: float = 15.0  # double exponential fall (assumed)
    fs_mhz: float = 125.0  # ADC sampling rate (assumed: a common 12-bit pipeline ADC class)
    adc_bits: int = 12
    n_samples: int = 32  # the window the trigger hands the network: 256 ns at 125 MS/s
    t0_min: float = 4.0  # earliest arrival, in samples from the window's start
    t0_span: float = 2.0  # arrivals spread uniformly over this many samples (sub-sample phase + trigger jitter)
    amp_min: float = 0.3  # amplitudes uniform in [amp_min, amp_max] of the ADC's full scale
    amp_max: float = 0.9
    pedestal: float = 1 / 16  # baseline as a fraction of full scale, so negative noise is not clipped
    tau_spread: float = 0.0  # per-pulse relative RMS spread of the time constants (0: one fixed shape, as a DDS)

    def __post_init__(self):
        if self.shape not in SHAPES:
            raise ValueError(f"pulse shape {self.shape!r} is not one of {SHAPES}")
        if not 4 <= self.adc_bits <= 16:
            raise ValueError(f"adc_bits={self.adc_bits}: use 4..16 (the integer engine takes the code in int32)")
        if self.n_samples < 8 or self.fs_mhz <= 0 or self.tau_ns <= 0:
            raise ValueError("need n_samples >= 8, fs_mhz > 0 and tau_ns > 0")
        if not 0 < self.amp_min <= self.amp_max < 1 - self.pedestal:
            raise ValueError(f"amplitudes [{self.amp_min}, {self.amp_max}] must lie in (0, 1 - pedestal)")
        if self.t0_min < 0 or self.t0_min + self.t0_span >= self.n_samples - 4:
            raise ValueError("arrival range must start at >= 0 and end 4 samples before the window does")

    @property
    def ts_ns(self) -> float:
        return 1e3 / self.fs_mhz

    @property
    def lsb(self) -> float:
        return 2.0 ** -self.adc_bits

    @property
    def pedestal_code(self) -> int:
        return int(round(self.pedestal * 2**self.adc_bits))

    def with_(self, **kw) -> PulseConfig:
        return replace(self, **kw)

    def to_dict(self) -> dict:
        return asdict(self)


def _crrc(u, order):
    up = np.maximum(u, 0.0)
    return np.where(u > 0, (up / order) ** order * np.exp(order - up), 0.0)


def _dexp_peak(tr, tf):
    tp = math.log(tf / tr) * tr * tf / (tf - tr)
    return tp, math.exp(-tp / tf) - math.exp(-tp / tr)


def shape(cfg: PulseConfig, t_ns, tau_scale=1.0):
    """Unit-peak pulse at time t_ns after its arrival (0 before). tau_scale stretches the time constants."""
    t = np.asarray(t_ns, dtype=np.float64)
    if cfg.shape == "crrc":
        return _crrc(t / (cfg.tau_ns * tau_scale), cfg.order)
    tr, tf = cfg.tau_rise_ns * tau_scale, cfg.tau_fall_ns * tau_scale
    _, peak = _dexp_peak(cfg.tau_rise_ns, cfg.tau_fall_ns)  # the peak does not depend on the common scale
    tp = np.maximum(t, 0.0)
    return np.where(t > 0, (np.exp(-tp / tf) - np.exp(-tp / tr)) / peak, 0.0)


def shape_dt(cfg: PulseConfig, t_ns):
    """d shape / dt (per ns), analytically: the template fit and the Cramer-Rao bound use it."""
    t = np.asarray(t_ns, dtype=np.float64)
    if cfg.shape == "crrc":
        u = np.maximum(t / cfg.tau_ns, 1e-300)
        return np.where(t > 0, _crrc(u, cfg.order) * (cfg.order / u - 1.0) / cfg.tau_ns, 0.0)
    tr, tf = cfg.tau_rise_ns, cfg.tau_fall_ns
    _, peak = _dexp_peak(tr, tf)
    tp = np.maximum(t, 0.0)
    return np.where(t > 0, (np.exp(-tp / tr) / tr - np.exp(-tp / tf) / tf) / peak, 0.0)


def sigma_for(amp, snr_db):
    """Noise RMS that gives each pulse the stated SNR (the module's definition)."""
    return np.asarray(amp) / 10.0 ** (np.asarray(snr_db) / 20.0)


def snr_db_of(amp, sigma):
    return 20.0 * np.log10(np.asarray(amp) / np.asarray(sigma))


def effective_snr_db(cfg: PulseConfig, amp, snr_db):
    """SNR once the ADC's rounding noise (LSB^2/12, uniform rounding error) is added to the analog noise."""
    s2 = sigma_for(amp, snr_db) ** 2 + cfg.lsb**2 / 12
    return snr_db_of(amp, np.sqrt(s2))


@dataclass
class PulseBatch:
    codes: np.ndarray  # (n, W) ADC codes, int32
    t0: np.ndarray  # (n,) true arrival, in samples from the window's start
    amp: np.ndarray  # (n,) true amplitude, fraction of full scale
    snr_db: np.ndarray  # (n,) the SNR each pulse was made with
    analog: np.ndarray  # (n, W) the ADC input (pulse + noise + pedestal), fraction of full scale
    clean: np.ndarray  # (n, W) the pulse alone (no noise, no pedestal)

    def __len__(self):
        return len(self.t0)

    def volts(self, cfg: PulseConfig) -> np.ndarray:
        """The codes back in full-scale units with the pedestal removed: what the classical methods fit."""
        return (self.codes - cfg.pedestal_code) * cfg.lsb


def simulate(cfg: PulseConfig, n: int, snr_db, rng: np.random.Generator) -> PulseBatch:
    """n pulses; snr_db is a number or a (lo, hi) range drawn uniformly per pulse (training mixes SNRs)."""
    if n <= 0:
        raise ValueError(f"need n > 0 pulses, got {n}")
    if np.ndim(snr_db) == 0:
        snr = np.full(n, float(snr_db))
    else:
        lo, hi = snr_db
        if not lo <= hi:
            raise ValueError(f"SNR range ({lo}, {hi}) must have lo <= hi")
        snr = rng.uniform(lo, hi, n)
    t0 = cfg.t0_min + rng.uniform(0.0, cfg.t0_span, n)
    amp = rng.uniform(cfg.amp_min, cfg.amp_max, n)
    scale = 1.0 + cfg.tau_spread * rng.standard_normal(n) if cfg.tau_spread > 0 else 1.0
    t = (np.arange(cfg.n_samples)[None, :] - t0[:, None]) * cfg.ts_ns
    clean = amp[:, None] * shape(cfg, t, np.asarray(scale).reshape(-1, 1) if cfg.tau_spread > 0 else 1.0)
    noise = sigma_for(amp, snr)[:, None] * rng.standard_normal(clean.shape)
    analog = clean + noise + cfg.pedestal
    codes = np.clip(np.rint(analog / cfg.lsb), 0, 2**cfg.adc_bits - 1).astype(np.int32)
    return PulseBatch(codes, t0, amp, snr, analog, clean)


def front_end(codes: np.ndarray, cfg: PulseConfig, switch: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """What the network reads: the ADC code minus the pedestal, doubled (one left shift) when the pulse is small.

    The range switch is a digital version of the dual-gain readout of calorimeter front ends (ALICE PHOS, the card
    of the lineage paper, reads each crystal at two gains): a pulse whose largest sample is below half the largest
    amplitude is shifted up one bit, so the network sees amplitudes over a 2:1 range instead of 3:1. Integers only
    (a compare and a shift per pulse). Why: the int8 activations' step is set by the largest pulses, and on the
    smallest it is as coarse as the noise itself (measured: int8 network 77 ps on A < 0.45 vs 56 ps on A > 0.75
    without it). Returns (x as int32, gain 1 or 2 per pulse); the amplitude the network reports is gain * A.
    """
    x = np.asarray(codes).astype(np.int32) - cfg.pedestal_code
    if not switch:
        return x, np.ones(len(x), np.int32)
    shift = (x.max(axis=1) < int(cfg.amp_max / 2 * 2**cfg.adc_bits)).astype(np.int32)
    return x << shift[:, None], (1 << shift).astype(np.int32)


def crlb(cfg: PulseConfig, snr_db: float, n_phase: int = 64, shape_free: bool = False) -> dict:
    """Cramer-Rao bound on (t0, A) for the known shape and baseline in white noise at the given SNR.

    The bound depends on where the samples fall on the pulse, so it is averaged (as variances: the test set's RMS
    error is what it bounds) over arrivals spread evenly across the configured range. Analog noise only.
    shape_free: the time constants' common stretch is a third unknown (no prior on it), the bound for pulses whose
    shape varies. Returns time in ps and relative amplitude (energy) in %.
    """
    r = 10.0 ** (snr_db / 20.0)  # A / sigma
    var_t, var_a = [], []
    for t0 in cfg.t0_min + cfg.t0_span * (np.arange(n_phase) + 0.5) / n_phase:
        t = (np.arange(cfg.n_samples) - t0) * cfg.ts_ns
        # d(sample)/dA = shape (per unit A), d(sample)/dt0 = -A shape'; work with A = 1, sigma = 1/r
        cols = [shape(cfg, t), -shape_dt(cfg, t)]
        if shape_free:
            cols.append(-shape_dt(cfg, t) * t)  # d shape(t / s) / ds at s = 1
        J = np.stack(cols, axis=1)
        cov = np.linalg.inv(J.T @ J * r * r)
        var_a.append(cov[0, 0])
        var_t.append(cov[1, 1])
    return {"time_ps": float(np.sqrt(np.mean(var_t)) * 1e3), "energy_pct": float(np.sqrt(np.mean(var_a)) * 100)}


def resolution(t_hat, amp_hat, batch: PulseBatch, cfg: PulseConfig) -> dict:
    """Time resolution sigma(t_hat - t0) in ps and energy resolution sigma(A_hat / A - 1) in %.

    Both are plain standard deviations over the set (tails included); the mean (bias) is reported beside them.
    """
    dt = (np.asarray(t_hat, dtype=np.float64) - batch.t0) * cfg.ts_ns * 1e3
    de = (np.asarray(amp_hat, dtype=np.float64) / batch.amp - 1.0) * 100
    return {"time_ps": float(dt.std()), "energy_pct": float(de.std()),
            "time_bias_ps": float(dt.mean()), "energy_bias_pct": float(de.mean())}
