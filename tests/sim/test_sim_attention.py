"""The closed forms of `ioaware.iomodel.bounds` equal the simulator's counts exactly; the bounds hold."""

import numpy as np
import pytest

from ioaware.iomodel import flash_attention_cost
from ioaware.iomodel.bounds import (
    attention_io_lower_bound,
    decode_io,
    fa1_footprint,
    fa1_forward_io,
    fa2_backward_blocks,
    fa2_backward_footprint,
    fa2_backward_io,
    fa2_forward_blocks,
    fa2_forward_footprint,
    fa2_forward_io,
    small_sram_block,
    small_sram_footprint,
    small_sram_io,
    standard_attention_io,
    standard_footprint,
)
from ioaware.sim import FastMemoryFull, TwoLevelMemory
from ioaware.sim.attention import (
    reference_backward,
    reference_forward,
    run_decode,
    run_fa1_forward,
    run_fa2_backward,
    run_fa2_forward,
    run_standard,
)
from ioaware.sim.attention_small_sram import run_small_sram

# (Nq, Nk, d, bq, bk): ragged blocks, Nq < Nk, blocks larger than the sequence, single rows
GRID = [(8, 8, 4, 4, 4), (13, 17, 5, 4, 3), (16, 16, 8, 5, 7), (7, 20, 3, 2, 6), (9, 9, 6, 16, 16), (5, 11, 2, 1, 1)]
IDS = [f"Nq{a}-Nk{b}-d{c}-bq{e}-bk{f}" for a, b, c, e, f in GRID]


def _inputs(Nq, Nk, d, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s) for s in ((Nq, d), (Nk, d), (Nk, d), (Nq, d))]


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("shape", GRID, ids=IDS)
def test_forward_schedules_match_closed_forms(shape, causal):
    Nq, Nk, d, bq, bk = shape
    bq, bk = min(bq, Nq), min(bk, Nk)  # a block larger than the sequence holds only the sequence
    q, k, v, _ = _inputs(Nq, Nk, d)
    o_ref, lse_ref = reference_forward(q, k, v, causal)
    kw = {"Nk": Nk, "causal": causal}
    # each schedule runs in exactly its footprint: one word less must not fit
    M = fa2_forward_footprint(d, bq, bk)
    (o, lse), mem = run_fa2_forward(q, k, v, bq, bk, M, causal=causal)
    assert mem.words == fa2_forward_io(Nq, d, bq, bk, **kw) and mem.peak == M
    assert mem.bytes == fa2_forward_io(Nq, d, bq, bk, elem=2, stat=4, **kw)
    np.testing.assert_allclose(o, o_ref, atol=1e-12)
    np.testing.assert_allclose(lse, lse_ref, atol=1e-12)
    with pytest.raises(FastMemoryFull):
        run_fa2_forward(q, k, v, bq, bk, M - 1, causal=causal)

    M = fa1_footprint(d, bq, bk)
    o, mem = run_fa1_forward(q, k, v, bq, bk, M, causal=causal)
    assert mem.words == fa1_forward_io(Nq, d, bq, bk, **kw) and mem.peak == M
    assert mem.bytes == fa1_forward_io(Nq, d, bq, bk, elem=2, stat=4, **kw)
    np.testing.assert_allclose(o, o_ref, atol=1e-12)

    M = standard_footprint(d, bq, bk, Nk)
    o, mem = run_standard(q, k, v, bq, bk, M, causal=causal)
    assert mem.words == standard_attention_io(Nq, d, Nk=Nk, block_q=bq, block_k=bk) and mem.peak == M
    np.testing.assert_allclose(o, o_ref, atol=1e-12)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("shape", GRID, ids=IDS)
def test_backward_schedule_matches_closed_form(shape, causal):
    Nq, Nk, d, bq, bk = shape
    bq, bk = min(bq, Nq), min(bk, Nk)
    q, k, v, do = _inputs(Nq, Nk, d, seed=1)
    M = fa2_backward_footprint(d, bq, bk)
    grads, mem = run_fa2_backward(q, k, v, do, bq, bk, M, causal=causal)
    assert mem.words == fa2_backward_io(Nq, d, bq, bk, Nk=Nk, causal=causal) and mem.peak == M
    assert mem.bytes == fa2_backward_io(Nq, d, bq, bk, Nk=Nk, causal=causal, elem=2, stat=4)
    for g, r in zip(grads, reference_backward(q, k, v, do, causal)):
        np.testing.assert_allclose(g, r, atol=1e-12)


@pytest.mark.parametrize("shape", GRID, ids=IDS)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_flash_attention_cost_is_the_same_count_in_bytes(shape, causal):
    """The kernel-facing `flash_attention_cost` (bf16, fp32 stats) and the word model are one formula."""
    Nq, Nk, d, bq, bk = shape
    for bwd, io in ((False, fa2_forward_io), (True, fa2_backward_io)):
        c = flash_attention_cost(1, 1, Nq, Nk, d, block_q=bq, block_k=bk, causal=causal, backward=bwd)
        t = io(Nq, d, min(bq, Nq), min(bk, Nk), Nk=Nk, causal=causal, elem=2, stat=4)
        assert (c.read("hbm"), c.written("hbm")) == (t.read, t.write)


@pytest.mark.parametrize("splits", [1, 2, 5])
@pytest.mark.parametrize("group", [1, 4])
def test_decode_matches_closed_form(splits, group):
    Nk, d = 23, 6
    q, k, v, _ = _inputs(group, Nk, d, seed=2)
    o, mem = run_decode(q, k, v, 4, 10_000, splits=splits)
    assert mem.words == decode_io(Nk, d, group=group, splits=splits)
    assert mem.bytes == decode_io(Nk, d, group=group, splits=splits, elem=2, stat=4)
    np.testing.assert_allclose(o, reference_forward(q, k, v)[0], atol=1e-12)


@pytest.mark.parametrize("Nq,Nk,d,M,chunk", [(12, 12, 16, 100, 1), (13, 9, 20, 150, 2), (10, 17, 12, 60, 1)])
def test_small_sram_algorithm_is_exact_and_counted(Nq, Nk, d, M, chunk):
    assert M < d * d
    b = small_sram_block(M, chunk)
    q, k, v, _ = _inputs(Nq, Nk, d, seed=3)
    (o, lse), mem = run_small_sram(q, k, v, b, M, chunk=chunk)
    o_ref, lse_ref = reference_forward(q, k, v)
    np.testing.assert_allclose(o, o_ref, atol=1e-12)
    np.testing.assert_allclose(lse, lse_ref, atol=1e-12)
    assert mem.words == small_sram_io(Nq, d, b, Nk=Nk) and mem.peak <= small_sram_footprint(b, chunk) <= M
    assert mem.bytes == small_sram_io(Nq, d, b, Nk=Nk, elem=2, stat=4)


def _best_flash(N, d, M):
    """FlashAttention at its best in M words: the least traffic of FA1 and FA2 over every block pair that fits."""
    best = float("inf")
    for bq in range(1, N + 1):
        for bk in range(1, N + 1):
            if fa2_forward_footprint(d, bq, bk) <= M:
                best = min(best, fa2_forward_io(N, d, bq, bk).total)
            if fa1_footprint(d, bq, bk) <= M:
                best = min(best, fa1_forward_io(N, d, bq, bk).total)
            if fa1_footprint(d, bq, bk) > M and fa2_forward_footprint(d, bq, bk) > M:
                break
    return best


@pytest.mark.parametrize("d", [16, 32, 64])
def test_small_sram_beats_flash_attention_when_m_below_d2(d):
    # below about d^2/2 the N^2 d / sqrt(M) algorithm wins against FlashAttention's best blocks, by more as M
    # shrinks; between d^2/2 and d^2 the constants decide (both are Theta(N^2) at M = d^2) and FlashAttention
    # can still win, which is why this grid stops at d^2/2.
    N, prev = 128, None
    for M in sorted({4 * d + 8, d * d // 4, d * d // 2}):
        small = small_sram_io(N, d, small_sram_block(M)).total
        ratio = _best_flash(N, d, M) / small
        assert ratio > 1, (d, M, ratio)
        assert prev is None or ratio < prev  # the advantage grows as M falls further below d^2
        prev = ratio


def test_flash_attention_within_a_constant_of_the_bound():
    # M >= d^2: FA2's traffic over the Theta(N^2 d^2 / M) bound (constant 1, plus the compulsory term) stays in a
    # narrow band over a 64x range of M and 16x of N; standard attention's (Theta(N^2)) grows like M / d^2
    for d in (16, 64):
        fwd, bwd, std = [], [], []
        for N in (256, 1024, 4096):
            for M in (d * d, 4 * d * d, 16 * d * d, 64 * d * d):
                bq, bk = fa2_forward_blocks(M, d)
                lb, lbb = attention_io_lower_bound(N, d, M), attention_io_lower_bound(N, d, M, backward=True)
                fwd.append(fa2_forward_io(N, d, bq, bk).total / lb.words)
                bwd.append(fa2_backward_io(N, d, *fa2_backward_blocks(M, d)).total / lbb.words)
                std.append(standard_attention_io(N, d).total / lb.words)
        assert 1 <= min(fwd) and max(fwd) <= 10, fwd
        assert 1 <= min(bwd) and max(bwd) <= 50, bwd  # square tiles shared by dK/dV and dQ: a larger constant
        assert std[-1] > 10 * fwd[-1]  # N = 4096, M = 64 d^2


def test_bounds_regimes_and_continuity():
    N, d = 1024, 64
    lo, hi = attention_io_lower_bound(N, d, d * d - 1), attention_io_lower_bound(N, d, d * d)
    assert (lo.regime, hi.regime) == ("M < d^2", "M >= d^2")
    assert lo.asymptotic == pytest.approx(hi.asymptotic, rel=1e-3) == N * N
    # halving M doubles the large-M term and multiplies the small-M one by sqrt(2)
    assert attention_io_lower_bound(N, d, 2 * d * d).asymptotic * 2 == hi.asymptotic
    assert attention_io_lower_bound(N, d, d * d / 8).asymptotic == pytest.approx(
        attention_io_lower_bound(N, d, d * d / 4).asymptotic * 2**0.5)
    assert attention_io_lower_bound(4, 64, 10**9).words == 4 * 4 * 64  # huge M: only the compulsory traffic


def test_lru_cache_reads_kv_once_when_it_fits():
    # an L2-like cache big enough for K and V turns FA2's per-query-block K/V re-reads into hits
    Nq = Nk = 32
    d, bq, bk = 4, 8, 8
    q, k, v, _ = _inputs(Nq, Nk, d, seed=4)
    (o, _), small = run_fa2_forward(q, k, v, bq, bk, fa2_forward_footprint(d, bq, bk), lru=True)
    (o2, _), big = run_fa2_forward(q, k, v, bq, bk, fa2_forward_footprint(d, bq, bk) + 2 * Nk * d, lru=True)
    np.testing.assert_allclose(o2, reference_forward(q, k, v)[0], atol=1e-12)
    np.testing.assert_allclose(o, o2, atol=1e-12)
    assert big.words.read == (Nq + 2 * Nk) * d  # compulsory
    assert small.words == fa2_forward_io(Nq, d, bq, bk)  # no room to keep anything: the explicit count
    # FA1 in LRU mode: O, l, m stay cached and dirty, written back once
    o, mem = run_fa1_forward(q, k, v, bq, bk, 10**6, lru=True)
    assert mem.words.write == Nq * d + 2 * Nq
    np.testing.assert_allclose(o, reference_forward(q, k, v)[0], atol=1e-12)


def test_memory_accounting_errors():
    mem = TwoLevelMemory(10)
    mem.put("a", np.arange(12.0).reshape(4, 3))
    t = mem.load("a", slice(0, 2))
    assert mem.words.read == 6 and mem.used == 6
    with pytest.raises(FastMemoryFull):
        mem.load("a", slice(2, 4))
    with pytest.raises(ValueError, match="fast-memory"):
        mem.store("a", slice(0, 2), t * 2)
    mem.free(t)
    with pytest.raises(ValueError, match="freed twice"):
        mem.free(t)
    assert mem.used == 0 and mem.peak == 6


def test_cost_attention_cli_plot_and_rows(tmp_path, capsys):
    import json

    from ioaware.cli.main import main

    png, js = tmp_path / "io.png", tmp_path / "io.json"
    assert main(["cost", "attention", "--n", "4096", "--d", "128", "--sram", "228KiB", "--hardware", "h100",
                 "--plot", str(png), "--json", str(js)]) == 0
    assert png.exists() and png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
    rows = {(r["algorithm"], r["pass"]): r for r in json.loads(js.read_text())["rows"]}
    assert {("flash-attention-1", "fwd"), ("lower bound", "fwd"), ("lower bound", "bwd")} <= set(rows)
    lb, fa2, std = (rows[(a, "fwd")]["hbm_bytes"] for a in ("lower bound", "flash-attention-2", "standard"))
    assert lb < fa2 < std
    assert "lower bound" in capsys.readouterr().out
