"""The RNN tile planner: every chosen configuration satisfies the hardware limits, the enumerator is the exact
optimum (checked against CP-SAT on the same model), and impossible problems are refused."""

import itertools

import pytest

from ioaware.kernels.rnn.tiles import (
    BB_CHOICES,
    NW_CHOICES,
    Machine,
    Problem,
    bj_choices,
    feasible,
    plan_rnn_tiles,
    programs,
    registers,
    smem,
    solve_cpsat,
    solve_enumerate,
    step_ns,
)

PROBLEMS = [Problem(cell, B, NH, D, e) for cell, (B, NH, D), e in itertools.product(
    ["lstm", "gru", "slstm"], [(16, 12, 64), (16, 1, 768), (5, 3, 59), (100, 2, 24), (64, 4, 256), (1, 1, 16)],
    [2, 4])]


@pytest.mark.parametrize("p", PROBLEMS, ids=lambda p: f"{p.cell}-B{p.B}-NH{p.NH}-D{p.D}-e{p.elem_bytes}")
def test_chosen_tiles_satisfy_every_limit(p):
    m = Machine()
    sol = solve_enumerate(p, m)
    if sol is None:
        assert not any(feasible(p, m, bb, bj, nw) for bb in BB_CHOICES for bj in bj_choices(p.DP) for nw in NW_CHOICES)
        return
    bb, bj, nw = sol
    assert registers(p, bb, bj, nw) <= m.regs_per_thread
    assert registers(p, bb, bj, nw) * 32 * nw <= m.regs_per_sm
    assert smem(p, bb, bj) <= m.smem_per_block
    assert bj >= p.D or programs(p, bb, bj) <= m.num_sms  # a split head's programs are all co-resident
    assert bj & (bj - 1) == 0 and 16 <= bj <= p.DP and bb >= 16


@pytest.mark.parametrize("p", PROBLEMS[::2], ids=lambda p: f"{p.cell}-B{p.B}-NH{p.NH}-D{p.D}-e{p.elem_bytes}")
def test_enumerator_equals_cpsat_optimum(p):
    # ortools is in the test extra: no skip, so the cross-check cannot silently stop running
    m = Machine()
    a, b = solve_enumerate(p, m), solve_cpsat(p, m)
    assert a == b
    if a is not None:
        pts = [(bb, bj, nw) for bb in BB_CHOICES for bj in bj_choices(p.DP) for nw in NW_CHOICES]
        best = min(step_ns(p, m, bb, bj, nw) for bb, bj, nw in pts if bb <= max(16, p.B) and feasible(p, m, bb, bj, nw))
        assert step_ns(p, m, *a) == best


def test_small_machine_forces_one_program_per_head():
    """With fewer SMs than a split needs, no split is chosen (its barrier would deadlock)."""
    p = Problem("lstm", 16, 1, 512, 2)
    m = Machine(num_sms=8)
    sol = solve_enumerate(p, m)
    assert sol is None or sol[1] >= p.D or programs(p, sol[0], sol[1]) <= 8


def test_plan_is_deterministic_and_refuses_what_cannot_fit():
    assert plan_rnn_tiles("lstm", 16, 12, 64, 2) == plan_rnn_tiles("lstm", 16, 12, 64, 2)
    t = plan_rnn_tiles("lstm", 16, 12, 64, 2)
    assert t.NJ == 1 and t.BJ == 64  # the FlashRNN target: one program per head
    with pytest.raises(ValueError, match="fits the machine"):
        plan_rnn_tiles("lstm", 16, 1, 1024, 4)


def test_split_head_kernel_variant():
    """A split LSTM / sLSTM head gets the acquire-load barrier, the forward's fused-gate dot with K in 3 chunks
    where that avoids padding, and the backward's exchange batched over one chunk of K per warp; GRU (3 gates)
    keeps the plain dots; one program per head has nothing to sync."""
    t = plan_rnn_tiles("lstm", 16, 1, 768, 2)
    assert (t.BJ, t.NJ, t.num_warps) == (16, 48, 4)
    assert (t.barrier, t.fuse, t.kc, t.kb, t.fwd_kb) == (1, True, 256, 4, 0)
    g = plan_rnn_tiles("gru", 16, 1, 768, 2)
    assert g.NJ > 1 and (g.barrier, g.fuse, g.kc, g.kb) == (1, False, 0, 0)
    s = plan_rnn_tiles("slstm", 16, 1, 200, 2)
    assert s.NJ > 1 and s.fuse and s.kc == 0 and s.kb == s.num_warps  # 200 of 256: 4 chunks of 64, no K chunks
    one = plan_rnn_tiles("lstm", 16, 12, 64, 2)
    assert one.NJ == 1 and (one.fuse, one.kb, one.barrier, one.kc) == (False, 0, 0, 0)
