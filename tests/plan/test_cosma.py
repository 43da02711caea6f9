"""COSMA: graphs, the validator, the baselines, the HiGHS and CP-SAT models, the heuristic, the CLI.

Small hand-built graphs whose optimum is derived by hand; the real networks only where a solve takes a second.
The ten-network reproduction is the slow test at the bottom."""

from __future__ import annotations

import json
import random

import pytest

from ioaware.plan.cosma.baselines import arena_belady
from ioaware.plan.cosma.cpsat import schedule_cpsat, solve_fs_cpsat
from ioaware.plan.cosma.graph import (
    NAS_NETWORKS,
    PAPER_NETWORKS,
    Graph,
    available,
    chain_graph,
    live_bytes,
    load_graph,
    peak_bytes,
)
from ioaware.plan.cosma.heuristic import greedy_order, refine_schedule
from ioaware.plan.cosma.ilp import peak_schedule
from ioaware.plan.cosma.plan import Plan
from ioaware.plan.cosma.solve import budgets, free_highs, fs_highs, solve
from ioaware.plan.cosma.validate import check


def residual(size=10, mid=4):
    """input(2) -> a(size) -> b(mid) -> c(size) -> add(a, c): at M_R the skip `a` cannot stay through c's step."""
    return Graph("residual", (2, size, mid, size, 2), ("input", "activation", "activation", "activation", "output"),
                 ((), (0,), (1,), (2,), (3, 1)), ((0,), (1,), (2,), (3,), (4,)))


def branches():
    """x -> a1 (10) -> a2 (1); x -> b1 (10) -> b2 (1); add(a2, b2). The file's order runs a1 and b1 first, so both
    big tensors meet; running each branch to its end first never holds more than 12 bytes."""
    sizes = (1, 10, 10, 1, 1, 1)
    ins = ((), (0,), (0,), (1,), (2,), (3, 4))
    return Graph("branches", sizes, ("input",) + ("activation",) * 4 + ("output",), ins, tuple((i,) for i in range(6)))


def random_dag(seed, n=9):
    rng = random.Random(seed)
    sizes = [rng.randint(1, 9) for _ in range(n)]
    ins = [()]
    for o in range(1, n):
        k = rng.randint(1, min(2, o))
        ins.append(tuple(sorted(rng.sample(range(o), k))))
    used = {t for x in ins for t in x}
    kinds = ["input"] + ["activation" if t in used else "output" for t in range(1, n)]
    return Graph(f"dag{seed}", tuple(sizes), tuple(kinds), tuple(ins), tuple((i,) for i in range(n)))


# --- graphs ------------------------------------------------------------------------------------------------------

def test_every_network_graph_loads_with_its_provenance():
    names = available()
    assert set(PAPER_NETWORKS) | set(NAS_NETWORKS) <= set(names)
    for n in PAPER_NETWORKS:
        g = load_graph(n)
        assert g.n_ops > 40 and g.meta["source"] and g.meta["command"]
        assert g.m_r == max(g.op_bytes(o) for o in range(g.n_ops))
        assert peak_bytes(g, g.default_order) >= g.m_r


def test_params_setting_adds_one_tensor_per_weighted_operator():
    g = load_graph("resnet50")
    gp = load_graph("resnet50+params")
    assert gp.n_tensors == g.n_tensors + sum(1 for b in g.param_bytes if b > 0)
    assert sum(gp.sizes) - sum(g.sizes) == sum(g.param_bytes)
    assert gp.m_r > g.m_r


def test_graph_errors_are_specific():
    with pytest.raises(ValueError, match="exactly one producing"):
        Graph("bad", (1, 1), ("input", "output"), ((), ()), ((0,), (0,)))
    with pytest.raises(ValueError, match="no graph 'nope'"):
        load_graph("nope")
    with pytest.raises(ValueError, match="skip"):
        chain_graph([1, 2, 3], [(2, 1)])


def test_live_bytes_by_hand():
    g = residual()
    # steps: input | a (input dies) | b (a lives) | c (a lives) | add
    assert live_bytes(g, g.default_order) == [2, 12, 14, 24, 22]
    assert g.m_r == 22


# --- the validator -----------------------------------------------------------------------------------------------

def _good_residual_plan():
    # budget 22 = M_R: a (10) spilled after step 2, retrieved at step 4
    runs = [(0, 0, 1, 0), (1, 1, 2, 2), (2, 2, 3, 12), (3, 3, 4, 0), (1, 4, 4, 10), (4, 4, 4, 20)]
    return Plan("residual", 22, [0, 1, 2, 3, 4], runs, "hand", objective=20)


def test_validator_accepts_a_hand_plan_and_counts_its_traffic():
    c = check(residual(), _good_residual_plan())
    assert c.ok, c.errors
    assert (c.spilled, c.retrieved, c.non_compulsory, c.peak) == (10, 10, 20, 22)


@pytest.mark.parametrize("edit,message", [
    (lambda p: p.runs.__setitem__(1, (1, 1, 2, 3)), "overlap"),  # a moved onto the input's bytes at step 1
    (lambda p: p.runs.__setitem__(4, (1, 4, 4, 13)), "leaves the budget"),
    (lambda p: p.runs.pop(4), "not on chip at step 4"),
    (lambda p: p.runs.__setitem__(2, (2, 3, 3, 12)), "not at its creation"),
    (lambda p: setattr(p, "order", [0, 2, 1, 3, 4]), "before tensor"),
    (lambda p: setattr(p, "objective", 0), "claims 0"),
], ids=["overlap", "over-budget", "input-missing", "late-creation", "bad-order", "wrong-claim"])
def test_validator_rejects(edit, message):
    p = _good_residual_plan()
    edit(p)
    c = check(residual(), p)
    assert not c.ok
    assert any(message in e for e in c.errors), c.errors


# --- baselines ---------------------------------------------------------------------------------------------------

def test_baseline_spills_the_skip_at_mr_and_fragments_at_the_peak():
    g = residual()
    assert arena_belady(g, budget=22).objective == 20
    # at the peak (24) the input's freed 2 bytes sit below `a`, so c finds no 10-byte gap: the skip goes out again
    assert arena_belady(g, budget=24).objective == 20
    assert arena_belady(g, budget=26).objective == 0
    with pytest.raises(ValueError, match="below M_R"):
        arena_belady(g, budget=21)


@pytest.mark.parametrize("name", ["resnet50", "densenet121", "transformer"])
def test_baseline_plans_on_real_graphs_are_valid(name):
    g = load_graph(name)
    for budget in (g.m_r, peak_bytes(g, g.default_order)):
        p = arena_belady(g, budget=budget)
        c = check(g, p)
        assert c.ok, c.errors
        assert c.non_compulsory == p.objective


# --- the solvers -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("budget,expected", [(22, 20), (23, 20), (24, 0)], ids=["MR", "MR+1", "peak"])
def test_both_solvers_find_the_hand_optimum(budget, expected):
    g = residual()
    order = list(g.default_order)
    for p in (solve_fs_cpsat(g, order, budget, time_limit=5), fs_highs(g, order, budget, time_limit=5)):
        c = check(g, p)
        assert c.ok, (p.method, c.errors)
        assert c.non_compulsory == expected, p.method
        assert p.status == "optimal" and p.bound == pytest.approx(expected)


@pytest.mark.parametrize("seed", range(6))
def test_cpsat_and_highs_agree_on_random_dags(seed):
    """Two formulations, two solvers. The per-step model needs a step between a spill and a retrieval, so it can
    only be equal or worse; neither may be worse than the baseline they start from."""
    g = random_dag(seed)
    order = list(g.default_order)
    for budget in (g.m_r, (g.m_r + peak_bytes(g, order)) // 2):
        base = arena_belady(g, order, budget)
        a = solve_fs_cpsat(g, order, budget, time_limit=5, hint=base)
        b = fs_highs(g, order, budget, time_limit=5, hint=base)
        assert check(g, a).ok and check(g, b).ok
        assert a.objective <= b.objective <= base.objective
        assert a.status == "optimal" and a.objective == pytest.approx(a.bound)


def test_schedule_matters_and_the_free_model_finds_it():
    g = branches()
    order, peak, bound, status, _ = peak_schedule(g, time_limit=5)
    assert peak == 12 and status == "Optimal" and peak_bytes(g, g.default_order) == 21
    fixed = solve_fs_cpsat(g, list(g.default_order), 12, time_limit=5)
    # b1 pushes a1 out at step 2, a2 pushes b1 out at step 3: both big tensors go out and back
    assert fixed.objective == 40
    p = free_highs(g, 12, time_limit=5, hint=fixed)
    assert p is not None and check(g, p).ok and p.objective == 0
    assert solve(g, 12, schedules=[order]).objective == 0


def test_r2plus1d_at_mr_is_optimal_over_every_schedule():
    """The README's claim: the free-schedule per-step ILP closes at the fixed-schedule optimum (33% cut)."""
    g = load_graph("r2plus1d")
    p = solve(g, g.m_r, solver="highs", time_limit=10, schedules=budgets(g).schedules)
    free = [t for t in p.info["tried"] if t["method"] == "cosma-free/highs"]
    assert free and free[0]["status"] == "optimal" and free[0]["objective"] == free[0]["bound"] == 12845056
    assert p.objective == 12845056


def test_budget_below_mr_is_refused_before_work():
    with pytest.raises(ValueError, match="below M_R"):
        solve(residual(), 21)


def test_cpsat_schedule_without_spills_reaches_the_live_bytes_bound():
    g = branches()
    p = schedule_cpsat(g, time_limit=5)
    assert check(g, p).ok
    assert p.info["height"] == 12


@pytest.mark.parametrize("name", ["resnet50", "lraspp"])
def test_real_network_at_mr_and_mp(name):
    g = load_graph(name)
    B = budgets(g, time_limit=20)
    assert B.m_p == pytest.approx(B.m_p_bound)
    for budget in (B.m_r, B.m_p):
        p = solve(g, budget, time_limit=10, schedules=B.schedules)
        c = check(g, p)
        assert c.ok, c.errors
        best = min(arena_belady(g, o, budget).objective for o in (g.default_order, B.schedule))
        assert c.non_compulsory <= best
    assert solve(g, B.m_p, time_limit=10, schedules=B.schedules).objective == 0


# --- divide and conquer ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(3))
def test_window_refinement_keeps_a_valid_order_and_never_raises_the_peak(seed):
    g = random_dag(100 + seed, n=14)
    start = greedy_order(g)
    order, info = refine_schedule(g, start, window=6, time_limit=2, max_sweeps=2, budget_s=20)
    assert sorted(order) == list(range(g.n_ops))
    pos = {o: i for i, o in enumerate(order)}
    assert all(pos[p] < pos[o] for o in range(g.n_ops) for p in g.preds[o])
    assert info["peak"] <= peak_bytes(g, start)
    exact, *_ = peak_schedule(g, time_limit=10)
    assert info["peak"] >= peak_bytes(g, exact)


# --- plan files and the CLI --------------------------------------------------------------------------------------

def test_plan_roundtrip_and_cli_check(tmp_path):
    from ioaware.plan.cosma.cli import main

    g = load_graph("resnet50")
    p = solve(g, g.m_r, time_limit=10)
    f = tmp_path / "plan.json"
    p.save(f)
    assert Plan.load(f).runs == p.runs
    out = tmp_path / "check.json"
    assert main(["--model", "resnet50", "--check", str(f), "--json", str(out)]) == 0
    assert json.loads(out.read_text())["valid"] is True


def test_cli_solve_writes_json_and_plot(tmp_path):
    from ioaware.plan.cosma.cli import main

    out, png = tmp_path / "r.json", tmp_path / "r.png"
    assert main(["--model", "resnext50", "--budget", "M_H", "--solver", "highs", "--json", str(out),
                 "--plot", str(png)]) == 0
    r = json.loads(out.read_text())
    assert r["cosma"]["valid"] and r["cosma"]["bytes"] <= min(b["bytes"] for b in r["baselines"].values())
    assert png.stat().st_size > 1000


@pytest.mark.parametrize("argv,message", [
    (["--model", "resnet50", "--budget", "1000"], "below M_R"),
    (["--model", "resnet5"], "no graph"),
    (["--model", "resnet50", "--time-limit", "0"], "positive"),
    (["--model", "resnet50", "--budget", "lots"], "M_R, M_H, M_P"),
])
def test_cli_bad_input(argv, message):
    from ioaware.plan.cosma.cli import main

    with pytest.raises(ValueError, match=message):
        main(argv)


# --- the paper's experiment (slow) -------------------------------------------------------------------------------

@pytest.mark.slow
def test_ten_network_reproduction(tmp_path):
    """Every plan valid, COSMA never behind the best baseline, 0 bytes at M_P, median solve within 10 s."""
    from ioaware.plan.cosma.experiment import reproduce

    res = reproduce(PAPER_NETWORKS, solvers=("cpsat",), time_limit=10, out=tmp_path / "c.json", log=lambda m: None)
    s = res["summary"]["cpsat"]
    assert s["all_valid"]
    assert s["zero_cosma_M_P"] == len(PAPER_NETWORKS)
    assert s["median_solve_s"] <= 10
    for r in res["results"]:
        for row in r["budgets"].values():
            assert row["cosma"]["cpsat"]["bytes"] <= row["best_baseline"], r["network"]
