"""COSMA with OR-Tools CP-SAT: residency as intervals, placement as rectangles (time x address) in AddNoOverlap2D.

The big-M pairs of the ILP (Eq.10) give a weak relaxation, so here placement is a global constraint instead. On a
fixed schedule, a tensor must be on chip at its events (creation, then each step that reads it). Between two events
it is either kept (one rectangle spanning the gap at one address: the paper's P) or dropped after the first and
retrieved at the second (a new rectangle anywhere: R, plus one spill S the first time, unless it has a DRAM copy).
Retrieving earlier than the step that reads it, or spilling later than right after a read, only occupies memory, so
these two choices per gap lose nothing against the per-step model. A move through DRAM between adjacent steps is
allowed (the per-step model needs a free step between S and R).

`schedule_cpsat` is the free-schedule, no-spill model behind M_P with placement: each operator's step is a
variable (all different), each tensor one rectangle from its producer's step to its last reader's.
"""

from __future__ import annotations

import time

from .graph import Graph, asap_alap, check_order, events
from .plan import Plan, runs_to_traffic


def _solver(time_limit: float, workers: int, seed: int = 0):
    from ortools.sat.python import cp_model

    s = cp_model.CpSolver()
    s.parameters.max_time_in_seconds = float(time_limit)
    s.parameters.num_workers = int(workers)
    s.parameters.random_seed = seed
    return s


def _status(solver, st) -> str:
    return solver.StatusName(st).lower()


def solve_fs_cpsat(g: Graph, order, budget: int, time_limit: float = 10.0, hint: Plan | None = None,
                   workers: int = 2) -> Plan:
    """Minimum non-compulsory bytes on a fixed schedule (COSMA FS, §III-E2) under `budget`."""
    from ortools.sat.python import cp_model

    order = list(order)
    check_order(g, order)
    if budget < g.m_r:
        raise ValueError(f"budget {budget} B is below M_R = {g.m_r} B for {g.name}: an operator cannot run")
    t0 = time.perf_counter()
    ev = events(g, order)
    n = len(order)
    m = cp_model.CpModel()
    xs_t, xs_a, demands, cost = [], [], [], []
    pieces = []  # per tensor: list of (keep var or None, address var)
    for t, e in enumerate(ev):
        size = g.sizes[t]
        mine = []
        spilled = None if g.in_dram(t) else m.NewBoolVar(f"s{t}")
        if spilled is not None:
            cost.append(size * spilled)
        for i, step in enumerate(e):
            x = m.NewIntVar(0, budget - size, f"x{t}_{i}")
            if i == 0:
                iv = m.NewFixedSizeIntervalVar(step, 1, f"T{t}_{i}")
                keep = None
            else:
                keep = m.NewBoolVar(f"k{t}_{i}")
                gap = step - e[i - 1] - 1
                if gap == 0:
                    iv = m.NewFixedSizeIntervalVar(step, 1, f"T{t}_{i}")
                else:
                    start = m.NewIntVar(e[i - 1] + 1, step, f"b{t}_{i}")
                    m.Add(start == step - gap * keep)
                    length = m.NewIntVar(1, gap + 1, f"l{t}_{i}")
                    m.Add(length == 1 + gap * keep)
                    iv = m.NewIntervalVar(start, length, step + 1, f"T{t}_{i}")
                m.Add(x == mine[-1][1]).OnlyEnforceIf(keep)
                cost.append(size * (1 - keep))
                if spilled is not None:
                    m.AddImplication(keep.Not(), spilled)
            xs_t.append(iv)
            xs_a.append(m.NewFixedSizeIntervalVar(x, size, f"A{t}_{i}"))
            demands.append(size)
            mine.append((keep, x))
        pieces.append(mine)
    m.AddNoOverlap2D(xs_t, xs_a)
    m.AddCumulative(xs_t, demands, budget)  # redundant with the rectangles, but it prunes residency early
    m.Minimize(sum(cost))
    if hint is not None:
        _hint_from_plan(m, g, order, ev, pieces, hint)
    solver = _solver(time_limit, workers)
    st = solver.Solve(m)
    if st not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        raise RuntimeError(f"CP-SAT found no plan for {g.name} at {budget} B in {time_limit} s ({_status(solver, st)})")
    runs = []
    for t, e in enumerate(ev):
        start, addr = e[0], solver.Value(pieces[t][0][1])
        for i in range(1, len(e)):
            keep, x = pieces[t][i]
            if not solver.Value(keep):
                runs.append((t, start, e[i - 1], addr))
                start, addr = e[i], solver.Value(x)
        runs.append((t, start, e[-1], addr))
    _, _, total = runs_to_traffic(g.sizes, [g.in_dram(t) for t in range(g.n_tensors)], runs)
    return Plan(g.name, budget, order, sorted(runs), "cosma-fs/cpsat", objective=total,
                bound=float(solver.BestObjectiveBound()), status=_status(solver, st),
                solve_s=time.perf_counter() - t0, info={"n": n, "rectangles": len(xs_t)})


def _hint_from_plan(m, g, order, ev, pieces, hint: Plan) -> None:
    """Start the search from another plan on the same schedule (a baseline's): keeps and addresses per event."""
    if list(hint.order) != list(order):
        return
    run_at = {}
    for t, a, b, addr in hint.runs:
        for s in ev[t]:
            if a <= s <= b:
                run_at[(t, s)] = (a, addr)
    for t, e in enumerate(ev):
        for i, s in enumerate(e):
            a, addr = run_at.get((t, s), (None, None))
            if addr is None:
                return
            keep, x = pieces[t][i]
            m.AddHint(x, addr)
            if keep is not None:
                m.AddHint(keep, int(a < s))


def schedule_cpsat(g: Graph, budget: int | None = None, time_limit: float = 10.0, workers: int = 2,
                   hint_order=None) -> Plan:
    """A schedule and addresses with no spill at all. With `budget`, find one that fits (0 non-compulsory bytes);
    without, minimise the arena's height (the peak footprint with placement, M_P when it equals the live-bytes
    bound of Eq.13-15)."""
    from ortools.sat.python import cp_model

    t0 = time.perf_counter()
    n = g.n_ops
    asap, alap = asap_alap(g)
    m = cp_model.CpModel()
    step = [m.NewIntVar(asap[o], alap[o], f"p{o}") for o in range(n)]
    m.AddAllDifferent(step)
    for o in range(n):
        for p in g.preds[o]:
            m.Add(step[p] < step[o])
    cap = budget if budget is not None else sum(g.sizes)
    height = m.NewIntVar(g.m_r, cap, "height")
    xs_t, xs_a, demands, addr = [], [], [], []
    for t in range(g.n_tensors):
        size = g.sizes[t]
        start = step[g.producer[t]]
        if g.consumers[t]:
            end = m.NewIntVar(asap[g.producer[t]] + 1, n, f"e{t}")
            m.AddMaxEquality(end, [step[c] + 1 for c in g.consumers[t]])
        else:
            end = start + 1
        length = m.NewIntVar(1, n, f"l{t}")
        xs_t.append(m.NewIntervalVar(start, length, end, f"T{t}"))
        x = m.NewIntVar(0, cap - size, f"x{t}")
        m.Add(x + size <= height)
        xs_a.append(m.NewFixedSizeIntervalVar(x, size, f"A{t}"))
        demands.append(size)
        addr.append(x)
    m.AddNoOverlap2D(xs_t, xs_a)
    m.AddCumulative(xs_t, demands, height)
    if budget is None:
        m.Minimize(height)
    if hint_order is not None:
        for s, o in enumerate(hint_order):
            m.AddHint(step[o], s)
    solver = _solver(time_limit, workers)
    st = solver.Solve(m)
    if st not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        raise RuntimeError(f"CP-SAT: no spill-free schedule for {g.name} within {cap} B in {time_limit} s "
                           f"({_status(solver, st)})")
    pos = [solver.Value(v) for v in step]
    order = sorted(range(n), key=lambda o: pos[o])
    ev = events(g, order)
    runs = sorted((t, ev[t][0], ev[t][-1], solver.Value(addr[t])) for t in range(g.n_tensors))
    return Plan(g.name, budget if budget is not None else solver.Value(height), order, runs,
                "cosma-schedule/cpsat", objective=0, status=_status(solver, st), solve_s=time.perf_counter() - t0,
                bound=float(solver.BestObjectiveBound()) if budget is None else 0.0,
                info={"height": solver.Value(height)})
