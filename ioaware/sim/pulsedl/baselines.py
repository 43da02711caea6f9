"""The classical estimators the network is measured against, on the same ADC codes.

* **Digital constant-fraction discrimination (CFD)**: amplitude from a parabola through the three samples around the
  maximum; time where the leading edge crosses `fraction` of that amplitude, interpolated linearly between samples.
  Both carry a systematic error that repeats with the sampling phase (the parabola and the straight line are not the
  pulse), so, as is usual for digital CFD, a periodic correction in the phase is fitted on the training pulses
  (`fit_cfd`, a Fourier series of `CFD_HARMONICS` harmonics; the fraction is picked from `CFD_FRACTIONS` the same way).
* **Least-squares template fit**: minimise sum (v_i - A * shape(t_i - t0))^2 over (A, t0) with the nominal template
  and the known pedestal, by Gauss-Newton with Levenberg damping, vectorised over pulses and started from the CFD.
  In white Gaussian noise with the right template this is the maximum-likelihood estimator: it reaches the
  Cramer-Rao bound at high SNR, so on a fixed pulse shape nothing unbiased beats it. `fit_shape=True` also fits a
  common stretch of the time constants (the remedy when the shape varies from pulse to pulse).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .pulses import PulseBatch, PulseConfig, shape, shape_dt

CFD_FRACTIONS = (0.2, 0.3, 0.4, 0.5)  # candidate fractions; the one with the best training resolution is kept
CFD_HARMONICS = 4  # phase-correction harmonics: enough that more changes the training resolution by < 1%


def _parabola_peak(v: np.ndarray):
    """Index of the maximum, the vertex offset (samples) and height of the parabola through it and its neighbours."""
    n, w = v.shape
    i = np.clip(np.argmax(v, axis=1), 1, w - 2)
    rows = np.arange(n)
    ym, y0, yp = v[rows, i - 1], v[rows, i], v[rows, i + 1]
    den = ym - 2 * y0 + yp
    d = np.where(den < 0, 0.5 * (ym - yp) / np.where(den < 0, den, -1.0), 0.0)
    d = np.clip(d, -0.5, 0.5)
    return i, d, y0 - 0.25 * (ym - yp) * d


def _raw_cfd(v: np.ndarray, fraction: float):
    """Uncorrected CFD time (samples), parabolic amplitude, and the peak's position (samples)."""
    n, _ = v.shape
    i_max, d, a = _parabola_peak(v)
    thr = fraction * a
    rows = np.arange(n)
    below = (v < thr[:, None]) & (np.arange(v.shape[1])[None, :] < i_max[:, None])
    # last sample below the threshold before the maximum; the edge crosses between it and the next sample
    j = np.where(below.any(axis=1), v.shape[1] - 1 - np.argmax(below[:, ::-1], axis=1), 0)
    j = np.minimum(j, i_max - 1)
    v0, v1 = v[rows, j], v[rows, j + 1]
    t = j + np.clip((thr - v0) / np.where(v1 > v0, v1 - v0, 1.0), 0.0, 1.0)
    return t, a, i_max + d


def _fourier(phase: np.ndarray, harmonics: int) -> np.ndarray:
    cols = [np.ones_like(phase)]
    for k in range(1, harmonics + 1):
        cols += [np.cos(2 * np.pi * k * phase), np.sin(2 * np.pi * k * phase)]
    return np.stack(cols, axis=1)


@dataclass
class CFD:
    fraction: float
    time_coef: np.ndarray  # t0 = t_cfd - F(phase(t_cfd)) @ time_coef
    gain_coef: np.ndarray  # A = a_parabola * (F(phase(peak)) @ gain_coef)
    harmonics: int = CFD_HARMONICS

    def __call__(self, batch: PulseBatch, cfg: PulseConfig):
        t, a, p = _raw_cfd(batch.volts(cfg), self.fraction)
        t0 = t - _fourier(t % 1.0, self.harmonics) @ self.time_coef
        amp = a * (_fourier(p % 1.0, self.harmonics) @ self.gain_coef)
        return t0, amp


def fit_cfd(train: PulseBatch, cfg: PulseConfig, fractions=CFD_FRACTIONS, harmonics=CFD_HARMONICS) -> CFD:
    """Pick the fraction and fit the phase corrections on training pulses (least squares)."""
    best = None
    v = train.volts(cfg)
    for f in fractions:
        t, a, p = _raw_cfd(v, f)
        ft, fp = _fourier(t % 1.0, harmonics), _fourier(p % 1.0, harmonics)
        tc = np.linalg.lstsq(ft, t - train.t0, rcond=None)[0]
        gc = np.linalg.lstsq(fp, train.amp / a, rcond=None)[0]
        err = np.std(t - ft @ tc - train.t0)
        if best is None or err < best[0]:
            best = (err, CFD(f, tc, gc, harmonics))
    return best[1]


def template_fit(batch: PulseBatch, cfg: PulseConfig, t_init, amp_init, iters: int = 30, fit_shape: bool = False):
    """Least-squares (A, t0[, stretch]) fit of the nominal template to every pulse at once. Returns (t0, A)."""
    v = batch.volts(cfg)
    n, w = v.shape
    ts = cfg.ts_ns
    k = np.arange(w)[None, :]
    p = [np.asarray(amp_init, np.float64).copy(), np.asarray(t_init, np.float64).copy()]
    if fit_shape:
        p.append(np.ones(n))
    p = np.stack(p, axis=1)
    lam = np.full(n, 1e-3)

    def model(p):
        t = (k - p[:, 1:2]) * ts
        s = p[:, 2:3] if fit_shape else 1.0
        return p[:, 0:1] * shape(cfg, t / s)

    def cost(p):
        return ((v - model(p)) ** 2).sum(axis=1)

    c = cost(p)
    for _ in range(iters):
        t = (k - p[:, 1:2]) * ts
        s = p[:, 2:3] if fit_shape else 1.0
        g = shape(cfg, t / s)
        cols = [g, -p[:, 0:1] * shape_dt(cfg, t / s) * ts / s]  # d/dA, d/dt0 (t0 in samples)
        if fit_shape:
            cols.append(-p[:, 0:1] * shape_dt(cfg, t / s) * t / s**2)  # d/ds of shape(t / s)
        J = np.stack(cols, axis=2)  # (n, w, P)
        r = v - p[:, 0:1] * g
        JtJ = np.einsum("nwi,nwj->nij", J, J)
        Jtr = np.einsum("nwi,nw->ni", J, r)
        D = JtJ + lam[:, None, None] * np.einsum("nii->ni", JtJ)[:, :, None] * np.eye(J.shape[2])
        step = np.linalg.solve(D, Jtr[..., None])[..., 0]
        p_new = p + step
        c_new = cost(p_new)
        ok = c_new <= c
        p[ok], c[ok] = p_new[ok], c_new[ok]
        lam = np.where(ok, lam * 0.3, lam * 10.0)
    return p[:, 1], p[:, 0]
