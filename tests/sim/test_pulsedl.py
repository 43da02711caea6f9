"""PulseDL-II in software: the pulse simulator's SNR, the classical estimators against the Cramer-Rao bound, the
fixed-point arithmetic against gemmlowp's C reference, the integer engine against the quantised PyTorch model bit for
bit, the accelerator's closed-form counts against a cycle-by-cycle replay, and the CLI.

The networks here train for seconds (tiny step counts); the paper's bars need the full training run, which is the
one slow test (and benchmarks/results/pulsedl-cpu-2026-12-02.json).
"""

import json
import math

import numpy as np
import pytest
import torch

from ioaware.sim.pulsedl import accel, engine
from ioaware.sim.pulsedl.baselines import fit_cfd, template_fit
from ioaware.sim.pulsedl.model import NetConfig, TrainConfig, predict, to_inputs, train
from ioaware.sim.pulsedl.pulses import (
    PulseConfig,
    crlb,
    effective_snr_db,
    front_end,
    resolution,
    shape,
    shape_dt,
    simulate,
    snr_db_of,
)
from ioaware.sim.pulsedl.quant import (
    INT32_MAX,
    INT32_MIN,
    QuantizedPulseNet,
    convert,
    quantize_multiplier,
    requantize_torch,
)

CFG = PulseConfig()


# --- the simulator and the SNR definition ---

@pytest.mark.parametrize("snr", [20.0, 47.4, 60.0], ids=lambda s: f"snr{s}")
def test_snr_is_peak_amplitude_over_noise_rms(snr):
    b = simulate(CFG, 4000, snr, np.random.default_rng(1))
    noise = b.analog - b.clean - CFG.pedestal
    # per pulse A / sigma: pool the noise normalised by each pulse's amplitude (128k samples -> ~0.02 dB)
    measured = snr_db_of(1.0, (noise / b.amp[:, None]).std())
    assert abs(measured - snr) < 0.03
    # A is the peak above the baseline: no sample exceeds it (the samples straddle the peak; shape's peak is 1)
    assert (b.clean.max(axis=1) <= b.amp * (1 + 1e-12)).all() and (b.clean.max(axis=1) > 0.8 * b.amp).all()


@pytest.mark.parametrize("bits", [9, 10])
def test_adc_rounding_adds_lsb2_over_12(bits):
    # the additive-uniform model of rounding holds while the noise spans an LSB or so (at 8 bits sigma is 0.3-1 LSB
    # here and the model is 0.14 dB pessimistic); at 9 bits rounding costs 0.27 dB, which this resolves
    cfg = CFG.with_(adc_bits=bits)
    b = simulate(cfg, 4000, 47.4, np.random.default_rng(2))
    assert b.codes.dtype == np.int32 and b.codes.min() >= 0 and b.codes.max() < 2**bits
    err = b.volts(cfg) - b.clean  # everything that is not the pulse
    measured = snr_db_of(1.0, (err / b.amp[:, None]).std())
    predicted = -10 * np.log10(np.mean((10 ** (-47.4 / 20)) ** 2 + cfg.lsb**2 / 12 / b.amp**2))
    assert abs(measured - predicted) < 0.04
    assert effective_snr_db(cfg, 0.6, 47.4) < 47.4


@pytest.mark.parametrize("kind", ["crrc", "dexp"])
def test_shapes_peak_at_one_and_derivative_matches(kind):
    cfg = CFG.with_(shape=kind)
    t = np.linspace(0.01, 150, 20001)
    f = shape(cfg, t)
    assert abs(f.max() - 1) < 1e-6 and shape(cfg, np.array([-1.0, 0.0])).max() == 0
    if kind == "crrc":
        assert abs(t[f.argmax()] - cfg.order * cfg.tau_ns) < 0.01
    h = 1e-5
    fd = (shape(cfg, t + h) - shape(cfg, t - h)) / (2 * h)
    assert np.allclose(shape_dt(cfg, t), fd, atol=1e-6)


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="shape"):
        PulseConfig(shape="square")
    with pytest.raises(ValueError, match="adc_bits"):
        PulseConfig(adc_bits=20)
    with pytest.raises(ValueError, match="amplitudes"):
        PulseConfig(amp_max=0.99)


def test_range_switch_doubles_small_pulses_only():
    b = simulate(CFG, 3000, 47.4, np.random.default_rng(12))
    x, gain = front_end(b.codes, CFG)
    raw, one = front_end(b.codes, CFG, switch=False)
    assert (one == 1).all() and np.array_equal(raw, b.codes - CFG.pedestal_code)
    assert np.array_equal(x, raw * gain[:, None])
    top = CFG.amp_max * 2**CFG.adc_bits
    assert x[gain == 2].max() < top  # a switched pulse stays below the largest amplitude
    assert (raw[gain == 2].max(axis=1) < top / 2).all() and (raw[gain == 1].max(axis=1) >= top // 2).all()


# --- classical estimators and the bound ---

def test_template_fit_reaches_the_cramer_rao_bound_and_cfd_does_not():
    rng = np.random.default_rng(3)
    cfd = fit_cfd(simulate(CFG, 5000, 47.4, rng), CFG)
    te = simulate(CFG, 5000, 47.4, rng)
    t, a = cfd(te, CFG)
    bound = crlb(CFG, 47.4)
    r_cfd = resolution(t, a, te, CFG)
    r_fit = resolution(*template_fit(te, CFG, t, a), te, CFG)
    # 5000 pulses: the standard deviation itself is known to ~1%
    assert r_fit["time_ps"] < 1.05 * bound["time_ps"] and r_fit["energy_pct"] < 1.05 * bound["energy_pct"]
    assert r_fit["time_ps"] > 0.95 * bound["time_ps"]  # a bound: nothing unbiased does much better
    assert r_cfd["time_ps"] > 1.2 * r_fit["time_ps"] and r_cfd["energy_pct"] > 1.2 * r_fit["energy_pct"]


def test_shape_free_fit_reaches_its_own_bound_when_the_shape_varies():
    cfg = CFG.with_(tau_spread=0.02)
    rng = np.random.default_rng(13)
    cfd = fit_cfd(simulate(cfg, 3000, 47.4, rng), cfg)
    te = simulate(cfg, 3000, 47.4, rng)
    t, a = cfd(te, cfg)
    fixed = resolution(*template_fit(te, cfg, t, a), te, cfg)
    free = resolution(*template_fit(te, cfg, t, a, fit_shape=True), te, cfg)
    bound = crlb(cfg, 47.4, shape_free=True)
    assert free["time_ps"] < 1.08 * bound["time_ps"] and free["energy_pct"] < 1.08 * bound["energy_pct"]
    assert fixed["time_ps"] > 3 * free["time_ps"]  # the nominal template is biased pulse by pulse
    assert bound["time_ps"] > 1.5 * crlb(cfg, 47.4)["time_ps"]


def test_bound_scales_inversely_with_amplitude_over_noise():
    a, b = crlb(CFG, 40.0), crlb(CFG, 60.0)
    assert math.isclose(a["time_ps"] / b["time_ps"], 10.0, rel_tol=1e-9)
    assert 30 < crlb(CFG, 47.4)["time_ps"] < 45  # the module doc's 38 ps


# --- fixed-point arithmetic against gemmlowp ---

def _gemmlowp(x: int, m0: int, shift: int) -> int:
    """MultiplyByQuantizedMultiplier transcribed from gemmlowp/TFLite C, on Python ints."""
    left, right = max(shift, 0), max(-shift, 0)
    a, b = x * (1 << left), m0
    if a == b == INT32_MIN:
        hi = INT32_MAX
    else:
        ab = a * b
        nudge = (1 << 30) if ab >= 0 else 1 - (1 << 30)
        q = ab + nudge
        hi = q // (1 << 31) if q >= 0 else -((-q) // (1 << 31))  # C division truncates
    mask = (1 << right) - 1
    remainder = hi & mask
    threshold = (mask >> 1) + (1 if hi < 0 else 0)
    return (hi >> right) + (1 if remainder > threshold else 0)


def test_fixed_point_requantisation_matches_the_c_reference():
    rng = np.random.default_rng(4)
    xs = np.concatenate([rng.integers(-(2**31) + 1, 2**31 - 1, 3000), rng.integers(-3000, 3000, 3000),
                         [0, 1, -1, 2**31 - 1, -(2**31) + 1, 3 << 20, -(3 << 20)]]).astype(np.int64)
    for m in [0.5, 0.75, 1 / 3, 1e-3, 2.7e-7, 0.999999, 1.7, 5.0]:
        m0, shift = quantize_multiplier(m)
        assert 2**30 <= m0 < 2**31 and abs(m0 * 2.0 ** (shift - 31) / m - 1) < 2**-30
        ok = np.abs(xs) < 2**31 >> max(shift, 0)
        x = xs[ok]
        ref = np.array([_gemmlowp(int(v), m0, shift) for v in x])
        assert np.array_equal(engine.multiply_by_quantized_multiplier(x, m0, shift), ref)
        assert np.array_equal(requantize_torch(torch.from_numpy(x), m0, shift).numpy(), ref)
        # and it is x * M rounded, to within one step
        assert np.abs(ref - x * (m0 * 2.0 ** (shift - 31))).max() <= 1.0


def test_halves_round_as_gemmlowp_does():
    # the doubling high multiply rounds halves up (towards +inf); the rounding shift rounds them away from zero
    m0, shift = quantize_multiplier(0.5)  # M0 = 2^30, no shift: x * 0.5 in the multiply
    x = np.array([-5, -3, -1, 1, 3, 5], dtype=np.int64)
    assert list(engine.multiply_by_quantized_multiplier(x, m0, shift)) == [-2, -1, 0, 1, 2, 3]
    m0, shift = quantize_multiplier(0.25)  # M0 = 2^30, shift -1: exact halving, then halves in the shift
    x = np.array([-6, -2, 2, 6], dtype=np.int64)
    assert list(engine.multiply_by_quantized_multiplier(x, m0, shift)) == [-2, -1, 1, 2]


# --- the network, its integer engine, the quantised torch model ---

TINY = NetConfig(channels=(4, 8, 8), kernels=(5, 5, 3), pools=(1, 2, 2), hidden=16)


@pytest.fixture(scope="module")
def tiny():
    tc = TrainConfig(steps=300, qat_steps=40, batch=256, lr=1e-2, snr_db=(40.0, 55.0))
    fm, qm, log = train(CFG, tc, TINY)
    return fm, qm, log


def test_tiny_network_learns(tiny):
    fm, qm, _ = tiny
    te = simulate(CFG, 2000, 47.4, np.random.default_rng(5))
    r = resolution(*predict(fm, te, CFG), te, CFG)
    spread_ps = CFG.t0_span / math.sqrt(12) * CFG.ts_ns * 1e3  # guessing the middle of the range
    assert r["time_ps"] < spread_ps / 5
    assert r["energy_pct"] < 100 * (CFG.amp_max - CFG.amp_min) / math.sqrt(12) / 0.6 / 5


@pytest.mark.parametrize("adc_bits", [12, 8, 14], ids=lambda b: f"adc{b}")
def test_engine_equals_quantised_torch_model_bit_for_bit(tiny, adc_bits):
    _, qm, _ = tiny
    cfg = CFG.with_(adc_bits=adc_bits)
    im = convert(qm, cfg)
    te = simulate(cfg, 3000, 47.4, np.random.default_rng(6))
    x, gain = im.front_end(te.codes, cfg)
    assert 0.1 < (gain == 2).mean() < 0.5  # amplitudes 0.3-0.9: those below 0.45 (a quarter) are switched
    stats = engine.EngineStats()
    acc = engine.run(im, x, stats)
    ref = QuantizedPulseNet(im)(torch.from_numpy(x)).numpy()
    assert acc.dtype == np.int64 and acc.shape == (3000, 2)
    assert np.array_equal(acc, ref)
    assert stats.acc_bits <= 32
    assert all(layer.w.dtype == np.int8 and np.abs(layer.w).max() <= 127 for layer in im.layers)


def test_engine_tracks_the_fake_quantised_model(tiny):
    # the two differ only where float and fixed-point requantisation round a value differently
    _, qm, _ = tiny
    im = convert(qm, CFG)
    te = simulate(CFG, 2000, 47.4, np.random.default_rng(7))
    t_i, a_i = engine.infer(im, te.codes, CFG)
    t_q, a_q = predict(qm, te, CFG, qat=True)
    r = resolution(t_i, a_i, te, CFG)
    assert np.median(np.abs(t_i - t_q)) * CFG.ts_ns * 1e3 < 0.05 * r["time_ps"]
    assert np.median(np.abs(a_i / a_q - 1)) * 100 < 0.05 * r["energy_pct"]


def test_low_bit_engine_is_exact_too(tiny):
    fm, _, _ = tiny
    import copy

    m = copy.deepcopy(fm)
    te = simulate(CFG, 1000, 47.4, np.random.default_rng(8))
    m.calibrate(to_inputs(te, CFG)[0], bits=4, input_scale=CFG.lsb)
    im = convert(m, CFG)
    assert max(np.abs(layer.w).max() for layer in im.layers) <= 7
    x, _ = im.front_end(te.codes, CFG)
    assert np.array_equal(engine.run(im, x), QuantizedPulseNet(im)(torch.from_numpy(x)).numpy())


def test_engine_refuses_bad_codes(tiny):
    im = convert(tiny[1], CFG)
    with pytest.raises(ValueError, match="ADC range"):
        engine.run(im, np.full((2, CFG.n_samples), 2**13))
    with pytest.raises(ValueError, match="integer"):
        engine.run(im, np.zeros((2, CFG.n_samples)))


# --- the accelerator model ---

@pytest.mark.parametrize("hw", [accel.AccelConfig(), accel.AccelConfig(n_pe=3, au_per_pe=5, line_buffer=False),
                                accel.AccelConfig(n_pe=1, au_per_pe=1)], ids=["8x8", "3x5-im2col", "1x1"])
def test_closed_form_counts_equal_the_cycle_replay(tiny, hw):
    im = convert(tiny[1], CFG)
    s, r = accel.schedule(im, CFG.n_samples, hw), accel.replay(im, CFG.n_samples, hw)
    assert s["total"]["cycles"] == r["cycles"] and s["total"]["macs"] == r["macs"]
    for a, b in zip(s["layers"], r["layers"]):
        assert (a["cycles"], a["macs"], a["act_read_bytes"]) == (b["cycles"], b["macs"], b["act_read_bytes"])
    # MACs are the network's, whatever the machine
    macs = sum(layer.w.size * (CFG.n_samples // int(np.prod(TINY.pools[:i])) if layer.kind == "conv" else 1)
               for i, layer in enumerate(im.layers))
    assert s["total"]["macs"] == macs
    assert 0 < s["total"]["utilisation"] <= 1


def test_hand_counted_layer():
    # conv 2 -> 3 channels, K = 3, 4 positions ('same' padding), 2 PEs of 4 AUs, tail 4:
    # 4 positions x ceil(3/2) = 2 groups x ceil(6/4) = 2 chunks = 16 cycles + 4; each group reads the 8 inputs once
    from ioaware.sim.pulsedl.quant import IntLayer, IntModel

    conv = IntLayer("conv", np.ones((3, 2, 3), np.int8), np.zeros(3, np.int32), 0, 1.0, 1.0, pad=1, m0=2**30,
                    shift=0, z_out=-128, qmin=-128, qmax=127, s_out=1.0)
    fc = IntLayer("dense", np.ones((2, 12), np.int8), np.zeros(2, np.int32), -128, 1.0, 1.0)
    im = IntModel([conv, fc], 8, 12, 1.0)
    hw = accel.AccelConfig(n_pe=2, au_per_pe=4, tail_cycles=4)
    c = accel.schedule(im, 4, hw)["layers"][0]
    assert c["cycles"] == 20 and c["macs"] == 4 * 3 * 6
    assert c["act_read_bytes"] == 2 * 2 * 4 * accel.SAMPLE_BYTES
    no_lb = accel.schedule(im, 4, accel.AccelConfig(n_pe=2, au_per_pe=4, line_buffer=False))["layers"][0]
    assert no_lb["act_read_bytes"] == 2 * (4 * 6 - 2 * 2) * accel.SAMPLE_BYTES  # 2 padded taps per channel


# --- the CLI ---

def test_cli_eval_writes_json(tmp_path):
    from ioaware.sim.pulsedl.cli import main

    out = tmp_path / "r.json"
    rc = main(["eval", "--steps", "60", "--qat-steps", "20", "--channels", "4,8,8", "--hidden", "16",
               "--n-test", "500", "--json", str(out)])
    assert rc == 0
    d = json.loads(out.read_text())
    m = d["eval"]["methods"]
    assert {"cfd", "template_fit", "nn_float", "nn_fake_quant", "nn_int_engine"} <= set(m)
    assert d["eval"]["bit_exact"]["equal"] == d["eval"]["bit_exact"]["outputs"] == 1000
    assert d["paper"]["time_ps"] == 60.0 and "accelerator" in d


@pytest.mark.parametrize("argv,msg", [(["eval", "--snr-db", "-5"], "snr"), (["eval", "--adc-bits", "20"], "adc"),
                                      (["sweep", "--snrs", "30,abc"], "snrs"), (["eval", "--model", "/nope.pt"],
                                                                                 "nope")])
def test_cli_refuses_bad_input_before_work(argv, msg):
    from ioaware.sim.pulsedl.cli import main

    with pytest.raises(ValueError, match=msg):
        main(argv)


# --- the paper's bars (the full training run) ---

@pytest.mark.slow
def test_bars_at_47_4_db():
    from ioaware.sim.pulsedl.experiment import PAPER, evaluate, train_all

    tr = train_all(CFG, TrainConfig())
    r = evaluate(tr, PAPER["snr_db"], 20000, seed=0)
    eng, m = r["methods"]["nn_int_engine"], r["methods"]
    assert eng["time_ps"] <= PAPER["time_ps"] and eng["energy_pct"] <= PAPER["energy_pct"]
    assert eng["time_ps"] < m["cfd"]["time_ps"] and eng["energy_pct"] < m["cfd"]["energy_pct"]
    assert r["bit_exact"]["equal"] == r["bit_exact"]["outputs"]
