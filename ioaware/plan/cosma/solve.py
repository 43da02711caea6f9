"""COSMA end to end: budgets (M_R, M_H, M_P), then the plan with the fewest non-compulsory bytes under a budget.

The schedule is part of the search. The per-step ILP of ilp.py carries the schedule as variables (the paper's free
mode), and at the ten networks' sizes HiGHS solves it whole only where operators have little freedom; so a solve
first finds the best plan on each candidate schedule (the framework's order and the memory-minimising one of
Eq.13-15) with the fixed-schedule model. Then, with CP-SAT, when traffic is left although a schedule's live bytes fit
the budget (pure fragmentation), schedule and addresses are searched together with no spill; with HiGHS, where the
free per-step model is small enough, operators move starting from the best plan. Each solver uses its own models
only, so the two columns of the experiment compare solvers. Every plan is replayed by validate.check before
it is returned.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from .baselines import arena_belady
from .cpsat import schedule_cpsat, solve_fs_cpsat
from .graph import Graph, asap_alap, peak_bytes
from .heuristic import greedy_order, refine_schedule
from .ilp import StepModel, Window, peak_schedule, whole
from .plan import Plan, runs_to_traffic
from .validate import check

SOLVERS = ("cpsat", "highs")
BUDGET_NAMES = ("M_R", "M_H", "M_P")
EXACT_MAX_OPS = 200  # above this (the NAS cells) M_P comes from the divide-and-conquer schedule, an upper bound
FREE_MAX_PAIRS = 4000  # the free per-step model is tried only below this many address pairs (HiGHS' reach in ~10 s)
FS_MAX_PAIRS = 60000  # above this the fixed-schedule per-step model takes minutes just to build (the NAS cells)


@dataclass
class Budgets:
    m_r: int
    m_p: int
    m_p_bound: float  # proven lower bound on the minimum peak (equals m_p when the schedule ILP closed)
    schedule: list[int]  # a schedule whose live bytes peak at m_p
    method: str
    seconds: float
    others: list[list[int]] = field(default_factory=list)  # other low-peak schedules worth trying (greedy, ...)

    @property
    def schedules(self) -> list[list[int]]:
        return [self.schedule] + [o for o in self.others if o != self.schedule]

    @property
    def m_h(self) -> int:
        return (self.m_r + self.m_p) // 2

    def value(self, name: str | int) -> int:
        if isinstance(name, int):
            return name
        table = {"M_R": self.m_r, "M_H": self.m_h, "M_P": self.m_p}
        key = name.upper().replace("MR", "M_R").replace("MH", "M_H").replace("MP", "M_P")
        if key in table:
            return table[key]
        try:
            return int(float(name))
        except ValueError:
            raise ValueError(f"budget {name!r}: use M_R, M_H, M_P or a number of bytes") from None


def budgets(g: Graph, time_limit: float = 30.0, progress=None) -> Budgets:
    """M_R from the graph; M_P from the peak-footprint ILP (exact when it closes), or for graphs over
    EXACT_MAX_OPS operators from the windowed heuristic (an upper bound, as the paper takes HMCOS's for NAS)."""
    t0 = time.perf_counter()
    if g.n_ops <= EXACT_MAX_OPS:
        order, peak, bound, status, _ = peak_schedule(g, time_limit=time_limit)
        order = list(order)
        cands = [order, list(g.default_order), greedy_order(g)]
        best = min(cands, key=lambda o: peak_bytes(g, o))
        method = f"peak ILP (HiGHS, {status.lower()})"
        others = [o for o in cands if peak_bytes(g, o) == peak_bytes(g, best)]
        return Budgets(g.m_r, peak_bytes(g, best), float(bound), best, method, time.perf_counter() - t0, others)
    order, info = refine_schedule(g, time_limit=min(5.0, time_limit), budget_s=time_limit * 4, progress=progress)
    return Budgets(g.m_r, info["peak"], float(g.m_r), order, "divide and conquer (upper bound)",
                   time.perf_counter() - t0, [greedy_order(g)])


def fs_highs(g: Graph, order, budget: int, time_limit: float, hint: Plan | None = None) -> Plan:
    """The fixed-schedule per-step ILP (§III-E2) with HiGHS, warm-started from `hint` when it is feasible there."""
    t0 = time.perf_counter()
    pos = {o: s for s, o in enumerate(order)}
    if _pairs_estimate(g, pos, pos) > FS_MAX_PAIRS and hint is not None:
        return _fallback(hint, "cosma-fs/highs", "model too large", t0)
    sm = StepModel(g, whole(g, order), budget)
    start = None
    if hint is not None and list(hint.order) == list(order):
        start = sm.start_from({o: s for s, o in enumerate(order)}, hint.runs)
    status, x, _, bound, _ = sm.solve(time_limit, start=start)
    if x is None:
        if hint is not None:
            return _fallback(hint, "cosma-fs/highs", status, t0)
        raise RuntimeError(f"HiGHS found no plan for {g.name} at {budget} B in {time_limit} s ({status})")
    o, runs = sm.extract(x)
    return _plan(g, budget, o, runs, "cosma-fs/highs", status, bound, t0, {"vars": sm.m.n_vars, "pairs": sm.pairs})


def free_highs(g: Graph, budget: int, time_limit: float, hint: Plan) -> Plan | None:
    """The free-schedule per-step ILP over the whole graph, from `hint`; None when the model is too big."""
    t0 = time.perf_counter()
    asap, alap = asap_alap(g)
    w = Window(list(range(g.n_ops)), dict(enumerate(asap)), dict(enumerate(alap)))
    if _pairs_estimate(g, asap, alap) > FREE_MAX_PAIRS:
        return None
    sm = StepModel(g, w, budget)
    start = sm.start_from({o: s for s, o in enumerate(hint.order)}, hint.runs)
    status, x, _, bound, _ = sm.solve(time_limit, start=start)
    if x is None:
        return None
    o, runs = sm.extract(x)
    return _plan(g, budget, o, runs, "cosma-free/highs", status, bound, t0, {"vars": sm.m.n_vars, "pairs": sm.pairs})


def _pairs_estimate(g, asap, alap) -> int:
    span = [0] * (g.n_ops + 1)
    for t in range(g.n_tensors):
        lo = asap[g.producer[t]]
        hi = max([alap[c] for c in g.consumers[t]] + [alap[g.producer[t]]])
        span[lo] += 1
        span[hi + 1] -= 1
    acc, total = 0, 0
    for s in range(g.n_ops):
        acc += span[s]
        total += acc * (acc - 1) // 2
    return total


def _plan(g, budget, order, runs, method, status, bound, t0, info) -> Plan:
    _, _, total = runs_to_traffic(g.sizes, [g.in_dram(t) for t in range(g.n_tensors)], runs)
    return Plan(g.name, budget, list(order), sorted(runs), method, objective=total,
                bound=None if bound is None else float(bound), status=str(status).lower(),
                solve_s=time.perf_counter() - t0, info=info)


def _fallback(hint: Plan, method: str, status: str, t0: float) -> Plan:
    return Plan(hint.graph, hint.budget, list(hint.order), list(hint.runs), method + " (start kept)",
                objective=hint.objective, status=str(status).lower(), solve_s=time.perf_counter() - t0)


def solve(g: Graph, budget: int, solver: str = "cpsat", time_limit: float = 10.0, schedules=None,
          free: bool = True) -> Plan:
    """The COSMA plan under `budget` bytes. schedules: candidate orders (default: the framework's and M_P's)."""
    if solver not in SOLVERS:
        raise ValueError(f"solver {solver!r}: choose one of {', '.join(SOLVERS)}")
    if budget < g.m_r:
        raise ValueError(f"budget {budget} B is below M_R = {g.m_r} B for {g.name}: operators are atomic, so no "
                         f"plan exists; use at least M_R")
    t0 = time.perf_counter()
    cands = [list(g.default_order)] + [list(s) for s in (schedules or [])]
    uniq = []
    for c in cands:
        if c not in uniq:
            uniq.append(c)
    tried = []
    best = None
    for order in uniq:
        hint = arena_belady(g, order, budget)
        if hint.objective == 0:
            p = hint  # the baseline already needs no DRAM traffic: nothing to improve on this schedule
            p.method, p.bound, p.status = f"cosma-fs/{solver}", 0.0, "optimal"
        elif solver == "cpsat":
            p = solve_fs_cpsat(g, order, budget, time_limit=time_limit, hint=hint)
        else:
            p = fs_highs(g, order, budget, time_limit, hint=hint)
        tried.append({"method": p.method, "objective": p.objective, "bound": p.bound, "status": p.status,
                      "seconds": p.solve_s})
        if best is None or p.objective < best.objective:
            best = p
    fits = [o for o in uniq if peak_bytes(g, o) <= budget]
    if solver == "cpsat" and best.objective > 0 and fits:
        # some schedule's live bytes fit: spills are then only fragmentation, so ask CP-SAT for a schedule and
        # addresses with no spill at all (free schedule, one rectangle per tensor)
        try:
            p = schedule_cpsat(g, budget, time_limit=time_limit, hint_order=fits[0])
            tried.append({"method": p.method, "objective": 0, "bound": 0.0, "status": p.status,
                          "seconds": p.solve_s})
            best = p
        except RuntimeError as e:
            tried.append({"method": "cosma-schedule/cpsat", "objective": None, "status": str(e)})
    if free and solver == "highs" and best.objective > 0:  # the FS bound holds for its schedule only
        p = free_highs(g, budget, time_limit, best)
        if p is not None:
            tried.append({"method": p.method, "objective": p.objective, "bound": p.bound, "status": p.status,
                          "seconds": p.solve_s})
            if p.objective < best.objective and check(g, p).ok:
                best = p
    best.solve_s = time.perf_counter() - t0
    best.info = dict(best.info, tried=tried)
    c = check(g, best)
    if not c.ok:
        raise RuntimeError(f"internal error: the {best.method} plan for {g.name} fails the validator: {c.errors[0]}")
    return best
