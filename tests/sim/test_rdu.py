"""SN40L simulator: switching (event model vs closed form vs hand arithmetic, and the 10 ms bar), fusion, the CoE
serving run (cache behaviour, determinism) and the CLI."""

import contextlib
import io
import json
from dataclasses import replace

import numpy as np
import pytest

from ioaware.sim.rdu.coe import (
    cache_slots,
    dgx_switch_s,
    expert_popularity,
    simulate_coe,
    switch_closed_form,
    switch_event_s,
)
from ioaware.sim.rdu.dataflow import Workload, benchmarks, fused_s, layer_ops, unfused_s
from ioaware.sim.rdu.spec import MODELS, PAPER, RduSocket, dgx_h100

S = RduSocket()


def test_llama31_8b_params_and_bytes():
    m = MODELS["llama-3.1-8b"]
    assert m.params == pytest.approx(8.03e9, rel=0.001)  # Meta's model card: 8.03B
    assert MODELS["llama-2-7b"].params == pytest.approx(6.74e9, rel=0.001)
    assert MODELS["llama-2-70b"].params == pytest.approx(68.98e9, rel=0.002)


def test_switch_hand_computed_one_socket():
    """1 GB on one socket: 15 chunks of 64 MiB (the last 60,479,904 B); 15 x 2 us setup + 1 GB / 100 GB/s, then the
    last chunk's HBM write at 1.6 TB/s."""
    last = 1e9 - 14 * 64 * 2**20
    hand = 15 * 2e-6 + 1e9 / 100e9 + last / 1.6e12
    assert switch_event_s(1e9, 1, S) == pytest.approx(hand, rel=1e-12)
    assert switch_closed_form(1e9, 1, S) == pytest.approx(hand, rel=1e-12)


@pytest.mark.parametrize("nbytes,sockets", [(16.06e9, 16), (16.06e9, 8), (3e6, 4), (140e9, 16)],
                         ids=["8b-16", "8b-8", "tiny-4", "70b-16"])
def test_switch_event_equals_closed_form(nbytes, sockets):
    assert switch_event_s(nbytes, sockets, S) == pytest.approx(switch_closed_form(nbytes, sockets, S), rel=1e-12)


def test_switch_bar_llama31_8b_16_sockets():
    paper, _ = PAPER["switch_llama31_8b_16sockets_s"]
    t = switch_event_s(MODELS["llama-3.1-8b"].bytes(), 16, S)
    assert abs(t / paper - 1) <= 0.20
    # a DDR twice as fast halves it: the copy is DDR-bound, not HBM-bound
    t2 = switch_event_s(MODELS["llama-3.1-8b"].bytes(), 16, replace(S, ddr_Bps=2 * S.ddr_Bps))
    assert t2 == pytest.approx(t / 2, rel=0.01)


def test_dgx_switch_uses_links_and_host_cap():
    box = dgx_h100({"pinned_GBps": 50.0, "pageable_GBps": 5.0})
    assert dgx_switch_s(8e9, box, False) == pytest.approx(8e9 / (8 * 5e9))
    assert dgx_switch_s(8e9, box, True) == pytest.approx(8e9 / (8 * 50e9))
    fast = dgx_h100({"pinned_GBps": 500.0, "pageable_GBps": 5.0})
    assert dgx_switch_s(8e9, fast, True) == pytest.approx(8e9 / fast.host_dram_Bps)  # host DRAM caps 8 x 500 GB/s


@pytest.mark.parametrize("w", benchmarks(MODELS), ids=lambda w: w.name.replace(" ", "-"))
def test_fused_never_slower_and_above_its_floor(w):
    f, u = fused_s(w, S), unfused_s(w, S)
    assert f < u
    weights = w.model.n_layers * w.model.layer_params * 2 / w.sockets
    assert f >= weights / S.hbm_Bps  # weights stream from HBM at most at peak


def test_unfused_gap_comes_from_overhead_and_round_trips():
    w = Workload("d", MODELS["llama-2-7b"], 1, 4096, False)
    free = replace(S, kernel_overhead_s=0.0, fused_overhead_s=0.0)
    assert unfused_s(w, free) / fused_s(w, free) < 1.05  # decode at batch 1: activations are tiny
    ratios = [unfused_s(w, replace(S, kernel_overhead_s=us * 1e-6)) for us in (0, 5, 10, 20)]
    assert ratios == sorted(ratios)
    p = Workload("p", MODELS["llama-2-7b"], 4096, 4096, True)
    assert unfused_s(p, free) / fused_s(p, free) > 1.3  # prefill: the score matrix round-trips HBM unfused
    assert len(layer_ops(w)) == 14


def test_coe_cache_behaviour():
    e = MODELS["llama-2-7b"]
    steps = {"prefill": 1e-3, "decode": 1e-3}
    big = simulate_coe(e, 10, 500, 0.02, 10, steps, 16, 4, seed=1)
    routed = np.random.default_rng(1).choice(10, size=500, p=expert_popularity(10, 1.0))
    assert big.switches == len(set(routed.tolist()))  # HBM holds all 10: one copy per distinct expert
    assert big.hits == 500 - big.switches  # every expert is copied once, then stays
    one = simulate_coe(e, 10, 500, 0.02, 1, steps, 16, 4, seed=1)
    assert one.switches > big.switches
    assert one.total_s == pytest.approx(one.compute_s + one.switch_s)
    assert cache_slots(8 * 64e9, e.bytes()) == 33


def test_coe_deterministic_and_seeded():
    e = MODELS["llama-2-7b"]
    steps = {"prefill": 1e-3, "decode": 1e-3}
    a = simulate_coe(e, 150, 300, 0.02, 33, steps, 16, 4, seed=3)
    b = simulate_coe(e, 150, 300, 0.02, 33, steps, 16, 4, seed=3)
    c = simulate_coe(e, 150, 300, 0.02, 33, steps, 16, 4, seed=4)
    assert (a.hits, a.total_s, a.timeline) == (b.hits, b.total_s, b.timeline)
    assert a.timeline != c.timeline


def _cli(argv):
    from ioaware.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


def test_cli_json_stdout_parses():
    rc, out, _ = _cli(["sim", "rdu", "--experts", "20", "--requests", "50", "--json", "-"])
    assert rc == 0
    res = json.loads(out)
    assert res["switching"]["within_20pct"] is True
    assert res["coe"]["experts"] == 20 and set(res["coe"]["runs"]) >= {"SN40L node"}


@pytest.mark.parametrize("argv", [["--experts", "0"], ["--expert-model", "gpt-9"], ["--zipf", "-1"]],
                         ids=["zero-experts", "unknown-model", "negative-zipf"])
def test_cli_bad_input_is_one_line_and_exit_2(argv):
    rc, _, err = _cli(["sim", "rdu", *argv])
    assert rc == 2
    assert err.count("\n") == 1 and "error" in err
