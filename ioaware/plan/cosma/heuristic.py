"""Divide and conquer for graphs too large for one model (the NAS cells): the paper's §IV heuristic, rebuilt.

The paper's own details could not be fetched (../shared/reference/hwmodel.md says so); this is the stand-in that
note proposes. 1. A start schedule: the better of the framework's order and a greedy list schedule that runs
next the ready operator that grows the live bytes least. 2. Windows of consecutive steps are re-scheduled one after
another by the exact per-step ILP in peak mode (Eq.13-15) with the tensors that cross the window's edges held
fixed, sweeping with half-window overlap until a sweep gains nothing; this is the schedule. 3. Residency and
placement over that schedule are solved whole by the fixed-schedule model (CP-SAT rectangles, or HiGHS per step).
The result is a valid plan, not a proven optimum: its lower bound holds for the chosen schedule only.
"""

from __future__ import annotations

import time

from .graph import Graph, check_order, events, live_bytes, peak_bytes, positions
from .ilp import StepModel, Window


def greedy_order(g: Graph) -> list[int]:
    """List scheduling: among ready operators, run the one whose outputs minus the inputs it frees is smallest."""
    remaining = [len(set(g.consumers[t])) for t in range(g.n_tensors)]
    indeg = [len(p) for p in g.preds]
    ready = {o for o in range(g.n_ops) if indeg[o] == 0}
    order = []
    while ready:
        def delta(o):
            freed = sum(g.sizes[t] for t in set(g.op_inputs[o]) if remaining[t] == 1)
            return (sum(g.sizes[t] for t in g.op_outputs[o]) - freed, o)

        o = min(ready, key=delta)
        ready.remove(o)
        order.append(o)
        for t in set(g.op_inputs[o]):
            remaining[t] -= 1
        for s in g.succs[o]:
            indeg[s] -= 1
            if indeg[s] == 0:
                ready.add(s)
    return order


def _window(g: Graph, order: list[int], first: int, k: int) -> tuple[Window, frozenset]:
    ops = order[first:first + k]
    inside = set(ops)
    n = len(ops)
    # earliest/latest local step from precedence inside the window
    lo, hi = {}, {}
    for o in ops:
        lo[o] = max((lo[p] + 1 for p in g.preds[o] if p in inside), default=0)
    for o in reversed(ops):
        hi[o] = min((hi[s] - 1 for s in g.succs[o] if s in inside), default=n - 1)
    pos = positions(order)
    ev = events(g, order)
    # tensors made before the window and read in it or after: on chip at its first step (peak mode: no spills)
    carried = {t: 0 for t in range(g.n_tensors)
               if pos[g.producer[t]] < first and ev[t][-1] >= first}
    later = frozenset(order[first + k:])
    return Window(ops, lo, hi, first, resident=carried), later


def refine_schedule(g: Graph, order=None, window: int = 24, time_limit: float = 5.0, max_sweeps: int = 3,
                    budget_s: float = 120.0, progress=None) -> tuple[list[int], dict]:
    """Lower the peak of live bytes by re-solving windows of the schedule exactly (Eq.13-15 per window)."""
    t0 = time.perf_counter()
    order = list(order if order is not None else min(
        (list(g.default_order), greedy_order(g)), key=lambda o: peak_bytes(g, o)))
    check_order(g, order)
    start_peak = peak_bytes(g, order)
    solved = 0
    for _ in range(max_sweeps):
        before = sum(live_bytes(g, order))
        peak_before = peak_bytes(g, order)
        for first in range(0, max(1, g.n_ops - window // 2), window // 2):
            if time.perf_counter() - t0 > budget_s:
                break
            w, later = _window(g, order, first, window)
            sm = StepModel(g, w, budget=sum(g.sizes), mode="peak", later=later)
            # the peak first, then the sum of live bytes over the window (fewer spills later), then nothing else
            lb_cost = 1.0 / (len(w.ops) + 1)
            _add_live_sum(sm, lb_cost)
            cur = {o: s for s, o in enumerate(order[first:first + window])}
            st, x, obj, _, _ = sm.solve(time_limit, start=_peak_start(sm, cur))
            solved += 1
            if x is None:
                continue
            local, _ = sm.extract(x)
            cand = order[:first] + local + order[first + len(local):]
            key = (peak_bytes(g, cand), sum(live_bytes(g, cand)))
            if key < (peak_bytes(g, order), sum(live_bytes(g, order))):
                order = cand
            if progress:
                progress(first, g.n_ops)
        if peak_bytes(g, order) == peak_before and sum(live_bytes(g, order)) >= before:
            break
    return order, {"start_peak": start_peak, "peak": peak_bytes(g, order), "windows_solved": solved,
                   "seconds": time.perf_counter() - t0, "window": window}


def _add_live_sum(sm: StepModel, weight: float) -> None:
    """Add weight * sum_t live bytes (C+P, sizes) to the objective of a peak-mode model."""
    for a in sm.tensors:
        lo, hi, _ = sm.span[a]
        for t in range(lo, hi + 1):
            if (a, t) in sm.P:
                sm.m.cost[sm.P[(a, t)]] += weight * sm.g.sizes[a]


def _peak_start(sm: StepModel, steps: dict[int, int]):
    """The current schedule of the window as a warm start (peak mode: P from creation to last read)."""
    import numpy as np

    g = sm.g
    x = np.zeros(sm.m.n_vars)
    for (o, t), v in sm.X.items():
        x[v] = float(steps[o] == t)
    for a in sm.tensors:
        lo, hi, later = sm.span[a]
        born = steps.get(g.producer[a], -1)
        last = max([steps[c] for c in g.consumers[a] if c in steps] + [born])
        if later:
            last = hi
        for t in range(lo, hi + 1):
            if (a, t) in sm.P:
                x[sm.P[(a, t)]] = float(born < t <= last)
    live = [0.0] * sm.n
    for a in sm.tensors:
        born = steps.get(g.producer[a], -1)
        last = sm.span[a][1] if sm.span[a][2] else max([steps[c] for c in g.consumers[a] if c in steps] + [born])
        for t in range(max(born, 0), last + 1):
            live[t] += g.sizes[a]
    x[sm.peak] = max(live)
    return x
