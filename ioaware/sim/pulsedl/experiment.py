"""The reproduction: train, quantise, and measure every estimator on the same pulses; sweeps over SNR and bits.

`Trained` holds everything one training run makes (float model, quantisation-aware model, integer model, the
calibrated CFD). `evaluate` runs all methods on one fresh test set: the Cramer-Rao bound, CFD, the template fit,
the float network, its fake-quantised twin, the quantised PyTorch model and the numpy integer engine (the last two
compared bit for bit on every output).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from . import engine
from .baselines import CFD, fit_cfd, template_fit
from .model import NetConfig, PulseNet, TrainConfig, predict, train
from .pulses import PulseConfig, crlb, resolution, simulate
from .quant import IntModel, QuantizedPulseNet, convert

PAPER = {"snr_db": 47.4, "time_ps": 60.0, "energy_pct": 0.40}  # the abstract's figures (arXiv 2209.00884)
CALIB_PULSES = 20000  # training pulses the CFD's phase corrections are fitted on
TEST_SEED_OFFSET = 1000  # test sets are drawn from seed + this, never from the training stream


@dataclass
class Trained:
    cfg: PulseConfig
    net: NetConfig
    tc: TrainConfig
    float_model: PulseNet
    qat_model: PulseNet
    int_model: IntModel
    cfd: CFD
    log: dict

    def save(self, path: str) -> None:
        torch.save({"cfg": self.cfg.to_dict(), "net": self.net.to_dict(), "tc": vars(self.tc),
                    "float": self.float_model.state_dict(), "qat": self.qat_model.state_dict(),
                    "bits": self.qat_model.bits, "log": self.log}, path)


def fit_baselines(cfg: PulseConfig, snr_db, seed: int) -> CFD:
    return fit_cfd(simulate(cfg, CALIB_PULSES, snr_db, np.random.default_rng(seed + 7)), cfg)


def train_all(cfg: PulseConfig, tc: TrainConfig, net: NetConfig | None = None,
              progress: Callable[[int, int], None] | None = None) -> Trained:
    net = net or NetConfig()
    fm, qm, log = train(cfg, tc, net, progress)
    return Trained(cfg, net, tc, fm, qm, convert(qm, cfg), fit_baselines(cfg, tc.snr_db, tc.seed), log)


def load(path: str) -> Trained:
    d = torch.load(path, weights_only=False)
    d["net"] = {k: tuple(v) if isinstance(v, list) else v for k, v in d["net"].items()}
    cfg, net = PulseConfig(**d["cfg"]), NetConfig(**d["net"])
    tc = TrainConfig(**d["tc"])
    fm, qm = PulseNet(cfg.n_samples, net), PulseNet(cfg.n_samples, net)
    fm.load_state_dict(d["float"])
    qm.load_state_dict(d["qat"])
    qm.qat, qm.bits, qm.input_scale = True, d["bits"], cfg.lsb
    fm.eval(), qm.eval()
    return Trained(cfg, net, tc, fm, qm, convert(qm, cfg), fit_baselines(cfg, tc.snr_db, tc.seed), d["log"])


def requantize(tr: Trained, bits: int, steps: int, progress=None) -> PulseNet:
    """The float model re-quantised at another bit width, with a short quantisation-aware fine-tune."""
    m = PulseNet(tr.cfg.n_samples, tr.net)
    m.load_state_dict(tr.float_model.state_dict())
    tc = TrainConfig(steps=0, qat_steps=steps, batch=tr.tc.batch, qat_lr=tr.tc.qat_lr, snr_db=tr.tc.snr_db,
                     bits=bits, seed=tr.tc.seed + bits)
    _, qm, _ = train(tr.cfg, tc, tr.net, progress, init=m)
    return qm


def _row(r: dict, ref: dict | None = None) -> dict:
    out = {k: r[k] for k in ("time_ps", "energy_pct", "time_bias_ps", "energy_bias_pct")}
    if ref is not None:
        out["time_vs_crlb"] = r["time_ps"] / ref["time_ps"]
        out["energy_vs_crlb"] = r["energy_pct"] / ref["energy_pct"]
    return out


def evaluate(tr: Trained, snr_db: float, n_test: int, seed: int, cfg: PulseConfig | None = None,
             qat_model: PulseNet | None = None, fit: bool = True, fit_shape: bool = False) -> dict:
    """Every method on one test set at one SNR. cfg may change the ADC (bits sweep); the model stays."""
    cfg = cfg or tr.cfg
    qm = qat_model or tr.qat_model
    im = tr.int_model if (cfg == tr.cfg and qat_model is None) else convert(qm, cfg)
    te = simulate(cfg, n_test, snr_db, np.random.default_rng(seed + TEST_SEED_OFFSET))
    bound = crlb(cfg, snr_db)
    out = {"snr_db": snr_db, "n_test": n_test, "adc_bits": cfg.adc_bits, "nn_bits": qm.bits,
           "crlb": bound, "methods": {}}
    m = out["methods"]
    t_cfd, a_cfd = tr.cfd(te, cfg)
    m["cfd"] = _row(resolution(t_cfd, a_cfd, te, cfg), bound)
    if fit:
        t0 = time.perf_counter()
        m["template_fit"] = _row(resolution(*template_fit(te, cfg, t_cfd, a_cfd), te, cfg), bound)
        m["template_fit"]["seconds"] = time.perf_counter() - t0
    if fit_shape:
        out["crlb_shape_free"] = crlb(cfg, snr_db, shape_free=True)
        m["template_fit_shape"] = _row(resolution(*template_fit(te, cfg, t_cfd, a_cfd, fit_shape=True), te, cfg),
                                       bound)
    m["nn_float"] = _row(resolution(*predict(tr.float_model, te, cfg), te, cfg), bound)
    m["nn_fake_quant"] = _row(resolution(*predict(qm, te, cfg, qat=True), te, cfg), bound)
    stats = engine.EngineStats()
    t0 = time.perf_counter()
    x, gain = im.front_end(te.codes, cfg)
    acc = engine.run(im, x, stats)
    eng_s = time.perf_counter() - t0
    m["nn_int_engine"] = _row(resolution(*im.decode(acc, cfg, gain), te, cfg), bound)
    acc_torch = QuantizedPulseNet(im)(torch.from_numpy(x)).numpy()
    out["bit_exact"] = {"outputs": int(acc.size), "equal": int((acc == acc_torch).sum()),
                        "max_abs_diff": int(np.abs(acc - acc_torch).max())}
    # how far the integer engine is from the float simulation of the same grid it was trained with (they differ
    # where float and fixed-point requantisation round a value to different sides)
    t_e, a_e = im.decode(acc, cfg, gain)
    t_q, a_q = predict(qm, te, cfg, qat=True)
    dt, de = np.abs(t_e - t_q) * cfg.ts_ns * 1e3, np.abs(a_e / a_q - 1) * 100
    out["engine_vs_fake_quant"] = {"time_ps_mean_abs": float(dt.mean()), "time_ps_max_abs": float(dt.max()),
                                   "energy_pct_mean_abs": float(de.mean()), "energy_pct_max_abs": float(de.max())}
    out["accumulator_bits"] = stats.acc_bits
    out["range_switched"] = float((gain > 1).mean())
    out["engine_seconds"] = eng_s
    return out


def sweep_snr(tr: Trained, snrs, n_test: int, seed: int, progress=None) -> list[dict]:
    rows = []
    for i, s in enumerate(snrs):
        rows.append(evaluate(tr, s, n_test, seed + i))
        if progress:
            progress(i + 1, len(snrs))
    return rows


def sweep_adc_bits(tr: Trained, adc_bits, snr_db: float, n_test: int, seed: int, progress=None) -> list[dict]:
    """The 12-bit-trained network on coarser and finer ADCs (no retraining: its first layer takes the new LSB)."""
    rows = []
    for i, b in enumerate(adc_bits):
        rows.append(evaluate(tr, snr_db, n_test, seed, cfg=tr.cfg.with_(adc_bits=b)))
        if progress:
            progress(i + 1, len(adc_bits))
    return rows


def sweep_nn_bits(tr: Trained, nn_bits, snr_db: float, n_test: int, seed: int, qat_steps: int,
                  progress=None) -> list[dict]:
    """Weights and activations at b bits (accumulators stay int32), each after a short fine-tune at b bits."""
    rows = []
    for i, b in enumerate(nn_bits):
        qm = tr.qat_model if b == tr.qat_model.bits else requantize(tr, b, qat_steps)
        rows.append(evaluate(tr, snr_db, n_test, seed, qat_model=qm, fit=False))
        if progress:
            progress(i + 1, len(nn_bits))
    return rows
