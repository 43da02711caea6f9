"""Cambricon-LLM simulator: Section V's closed forms, the event model against them, determinism, Fig. 9's bar."""

from __future__ import annotations

import json
import math
import time
from dataclasses import replace

import pytest

from ioaware.sim.cambricon import FLASH, MODELS, ChannelSim, default_design, simulate_token, token_time
from ioaware.sim.cambricon.configs import CONSTANTS, RETRY_PROBABILITY
from ioaware.sim.cambricon.tiling import (
    Tile,
    channel_util,
    hardware_tile,
    request_split,
    retry_delay,
    row_major_tile,
    t_input,
    t_output,
    t_rc,
    t_read_sliced,
    traffic,
)
from ioaware.sim.cambricon.timing import plan_gemv


@pytest.mark.parametrize("cfg,H,W", [("S", 256, 2048), ("M", 362, 5793), ("L", 512, 16384)],
                         ids=["S-256x2048", "M-362x5793", "L-512x16384"])
def test_tile_shapes_are_the_papers(cfg, H, W):
    t = hardware_tile(FLASH[cfg])
    assert (round(t.H), round(t.W)) == (H, W)
    if cfg != "M":  # S and L are exact powers of two; M is sqrt(8 x 16 KiB) = 362.04
        assert (t.H, t.W) == (H, W)


@pytest.mark.parametrize("cfg", ["S", "M", "L"])
def test_tile_minimises_traffic_at_fixed_area(cfg):
    c = FLASH[cfg]
    best = hardware_tile(c)
    for f in (0.25, 0.5, 0.9, 1.1, 2.0, 4.0):
        other = Tile(best.H * f, best.W / f)
        other.check(c)
        assert traffic(other, c) > traffic(best, c)
    assert traffic(best, c) == pytest.approx(2 * c.channels * best.H)  # W + ch H with W = ch H


def test_section_v_request_times_on_s():
    c = FLASH["S"]
    t = hardware_tile(c)
    assert t_rc(t, c) == pytest.approx(30e-6 + 256 / 1e9, rel=1e-12)  # tR + W/(ch bw), W/ch = 256 B
    assert channel_util(t, c) == pytest.approx(512 / 30_000, rel=1e-12)  # (H + W/ch)/(tR bw)
    assert t_read_sliced(t, c) == pytest.approx(16384 / ((1 - 512 / 30_000) * 1e9), rel=1e-12)


@pytest.mark.parametrize("cfg,alpha", [("S", 0.355), ("M", 0.356), ("L", 0.357)])
def test_request_split_is_about_0355(cfg, alpha):
    assert request_split(hardware_tile(FLASH[cfg]), FLASH[cfg]) == pytest.approx(alpha, abs=5e-4)


def test_wrong_tile_area_is_refused():
    with pytest.raises(ValueError, match="one page per core"):
        Tile(100, 100).check(FLASH["S"])


# -- the event model against the closed form ------------------------------------------------------------------
@pytest.mark.parametrize("cfg", ["S", "L"])
def test_event_equals_closed_form_read_compute_only(cfg):
    """No plain reads, no retries: n requests take exactly n (t_in + tR) + t_out in both models."""
    c = FLASH[cfg]
    d = default_design(c, p=0.0)
    n = 37
    plan = plan_gemv(c, d, "x", 8 * hardware_tile(c).H, math.ceil(n * c.tile_bytes / (8 * hardware_tile(c).H)),
                     rounds=n)
    plan = replace(plan, plain_per_channel=0)
    want = n * (t_input(d.tile, c) + c.tR) + t_output(d.tile, c)
    assert ChannelSim(c, d).run_gemvs([plan]) == pytest.approx(want, rel=1e-12)


def test_event_equals_closed_form_plain_only():
    c = FLASH["M"]
    d = default_design(c, p=0.0)
    plan = plan_gemv(c, d, "x", 4096, 4096, rounds=0)
    assert plan.plain_per_channel == 4096 * 4096 // 16
    assert ChannelSim(c, d).run_gemvs([plan]) == pytest.approx(plan.t_plain_path, rel=1e-12)
    assert plan.t_plain_path == pytest.approx(plan.plain_per_channel / c.channel_Bps, rel=1e-12)


@pytest.mark.parametrize("model,cfg", [("llama2-7b", "S"), ("llama2-70b", "L")], ids=["7B-S", "70B-L"])
def test_event_token_within_2pct_of_closed_form(model, cfg):
    ev = simulate_token(MODELS[model], FLASH[cfg])
    cf = token_time(MODELS[model], FLASH[cfg])
    assert ev.rounds == cf.rounds and ev.rc_bytes == cf.rc_bytes
    assert ev.seconds == pytest.approx(cf.seconds, rel=0.02)


def test_retry_mean_matches_closed_form():
    """Many requests with a large p: the mean request time is t_rc + tR (1 - (1-p)^cores) within 4 sigma."""
    c = FLASH["S"]
    p = 0.01
    d = default_design(c, p=p)
    n = 4000
    plan = replace(plan_gemv(c, d, "x", 256, 2048 * n, rounds=n), plain_per_channel=0)
    sim = ChannelSim(c, d, seed=3)
    per = (sim.run_gemvs([plan]) - t_output(d.tile, c)) / n
    q = 1 - (1 - p) ** c.cores
    sigma = c.tR * math.sqrt(q * (1 - q) / n)
    assert abs(per - (t_rc(d.tile, c) + retry_delay(c, p))) < 4 * sigma
    assert sim.retries == pytest.approx(q * n, abs=4 * math.sqrt(q * (1 - q) * n))


def test_same_seed_same_token_other_seed_close():
    m, c = MODELS["opt-6.7b"], FLASH["M"]
    a, b = simulate_token(m, c, seed=11).seconds, simulate_token(m, c, seed=11).seconds
    other = simulate_token(m, c, seed=12).seconds
    assert a == b
    assert other != a and other == pytest.approx(a, rel=0.01)


def test_70b_token_on_l_simulates_within_2s_of_cpu():
    t0 = time.process_time()
    simulate_token(MODELS["llama2-70b"], FLASH["L"])
    assert time.process_time() - t0 <= 2.0


# -- Fig. 9 and the ablations ------------------------------------------------------------------------------------
def test_fig9_mean_error_meets_the_bar_closed_form():
    from ioaware.sim.cambricon.fig9 import reproduce

    r = reproduce("closed")
    assert len(r["points"]) == 21
    assert r["mean_abs_rel_err"] <= 0.09
    s = [p for p in r["points"] if p["config"] == "S"]
    assert max(abs(p["rel_err"]) for p in s if p["model"] not in ("opt-66b", "llama2-70b")) < 0.05


def test_refit_gives_the_stored_constant():
    from ioaware.sim.cambricon.fig9 import fit_retry_probability

    assert fit_retry_probability() == pytest.approx(RETRY_PROBABILITY, rel=0.01)


def test_ablations_each_feature_helps():
    from ioaware.sim.cambricon.fig9 import ablations

    a = ablations("closed", models=["llama2-7b", "llama2-70b"])
    for row in a["rows"]:
        assert row["read_slicing"] > 1.05 and row["tiling"] > 1.05
    c = FLASH["S"]
    assert traffic(row_major_tile(c), c) > 10 * traffic(hardware_tile(c), c)


def test_constants_are_counted_by_kind():
    kinds = [c.kind for c in CONSTANTS]
    assert kinds.count("fitted") == 1 and set(kinds) <= {"paper", "assumed", "fitted"}


# -- the command ------------------------------------------------------------------------------------------------
def test_cli_one_token_json(tmp_path):
    from ioaware.sim.cambricon.cli import main

    out = tmp_path / "t.json"
    assert main(["--model", "llama2-7b", "--config", "S", "--engine", "closed", "--json", str(out)]) == 0
    d = json.loads(out.read_text())
    assert d["token"]["paper_tokens_per_s"] == 3.6
    assert d["token"]["tokens_per_s"] == pytest.approx(token_time(MODELS["llama2-7b"], FLASH["S"]).tokens_per_s)
    assert d["constant_counts"]["fitted"] == 1


@pytest.mark.parametrize("argv,msg", [(["--config", "XL"], "Table II"), (["--model", "gpt-5"], "unknown model"),
                                      (["--context", "-1"], "--context")], ids=["config", "model", "context"])
def test_cli_bad_input(argv, msg):
    from ioaware.sim.cambricon.cli import main

    with pytest.raises(ValueError, match=msg):
        main(argv)
