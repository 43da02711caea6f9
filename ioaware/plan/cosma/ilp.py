"""COSMA's ILP with HiGHS, per time step as in the paper: for every tensor a and step t, binaries C (created), P
(preserved from t-1), S (spilled), R (retrieved) and a base address L, with "a above b" / "b above a" binaries for
every pair that may share a step. Equation numbers are the paper's as cited in ../shared/reference/hwmodel.md.

    Eq.1  C+P+S+R <= 1                      Eq.2  P[t] <= C[t-1]+P[t-1]+R[t-1]
    Eq.3  S[t] <= C[t-1]+P[t-1]             Eq.4  R[t] <= sum_{k<=t} S[k]   (or a DRAM copy already exists)
    Eq.5  X[o,t] <= P[b,t]+R[b,t] for every input b of o (C[a,t] = X[producer(a), t]; Eq.6 holds by construction)
    Eq.7  sum_t X[o,t] = 1, one operator per step      Eq.8  sum_t S <= 1
    Eq.9  L + size <= M (a bound: M is the budget, as in the port, not a large constant)
    Eq.10 L_a >= L_b + size_b - M(1-u), L_b >= L_a + size_a - M(1-d), u+d >= res_a+res_b-1
    Eq.11 |L[t] - L[t-1]| <= M(1-P[t])                Eq.12 minimise sum size*(S+R)
    plus the capacity cut sum_a size_a*res[a,t] <= M, which the big-M pairs imply only weakly.
§III-E1 (Eq.13-15, `peak_schedule`): no S, R or addresses; minimise the peak of sum size*(C+P) over the steps.
§III-E2 (fixed schedule): X is a constant. §III-F: variables exist only inside each tensor's window (earliest
creation to latest read, ASAP/ALAP under a free schedule), and pairs only where windows meet.

A window of a larger schedule (the divide-and-conquer heuristic) is the same model with the state at its first
step given: which earlier tensors are on chip (and where) and which have a DRAM copy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .graph import Graph, asap_alap
from .milp import Milp
from .plan import pack_addresses


@dataclass
class Window:
    """Operators `ops` run at steps first..first+len(ops)-1 of the whole schedule; `lo/hi` bound each one's step
    (equal for a fixed schedule). `resident` maps tensors made earlier to their address at the step before;
    `in_dram` holds earlier tensors with a DRAM copy (spilled or inputs)."""

    ops: list[int]
    lo: dict[int, int]
    hi: dict[int, int]
    first: int = 0
    resident: dict[int, int] = field(default_factory=dict)
    in_dram: set[int] = field(default_factory=set)


def whole(g: Graph, order=None) -> Window:
    if order is None:
        asap, alap = asap_alap(g)
        return Window(list(range(g.n_ops)), dict(enumerate(asap)), dict(enumerate(alap)))
    return Window(list(order), {o: s for s, o in enumerate(order)}, {o: s for s, o in enumerate(order)})


class StepModel:
    """The per-step model over one window. mode: "spill" (Eq.1-12) or "peak" (Eq.13-15)."""

    def __init__(self, g: Graph, w: Window, budget: int, mode: str = "spill", later=frozenset()):
        self.g, self.w, self.M, self.mode = g, w, int(budget), mode
        n = len(w.ops)
        self.n = n
        m = self.m = Milp()
        ops = set(w.ops)
        self.X = {}  # (o, t) -> var, or absent when fixed
        for o in w.ops:
            if w.lo[o] == w.hi[o]:
                continue
            for t in range(w.lo[o], w.hi[o] + 1):
                self.X[(o, t)] = m.var()
        # tensors: made in the window, or made earlier and still wanted (by the window or later)
        made = [t for o in w.ops for t in g.op_outputs[o]]
        carried = sorted(set(w.resident) | {t for t in w.in_dram if t not in made})
        self.tensors = made + [t for t in carried if t not in made]
        self.span = {}
        for a in self.tensors:
            mine = a in made
            readers = [c for c in g.consumers[a] if c in ops]
            needed_later = any(c in later for c in g.consumers[a])
            lo = w.lo[g.producer[a]] if mine else 0
            hi = max([w.hi[c] for c in readers] + [w.hi[g.producer[a]] if mine else 0])
            if needed_later:
                hi = n - 1
            self.span[a] = (lo, hi, needed_later)
        self.C, self.P, self.S, self.R, self.L = {}, {}, {}, {}, {}
        for a in self.tensors:
            lo, hi, _ = self.span[a]
            mine = a in made
            dram0 = g.in_dram(a) or a in w.in_dram
            spillable = mode == "spill" and not dram0
            for t in range(lo, hi + 1):
                if mine and t <= w.hi[g.producer[a]]:
                    self.C[(a, t)] = self._x(g.producer[a], t)
                if t > lo or not mine:
                    if mine or t > 0 or a in w.resident:
                        self.P[(a, t)] = m.var()
                    if spillable and (t > lo or a in w.resident):
                        self.S[(a, t)] = m.var(cost=g.sizes[a])
                    if mode == "spill" and (dram0 or spillable) and (t > lo + 1 or not mine):
                        self.R[(a, t)] = m.var(cost=g.sizes[a])
                if mode == "spill":
                    self.L[(a, t)] = m.var(0, budget - g.sizes[a], integer=False)
        self.peak = m.var(0, budget, cost=1.0, integer=False) if mode == "peak" else None
        self._constraints(made)

    def _x(self, o, t):
        """X[o,t] as (var or None, constant)."""
        if (o, t) in self.X:
            return (self.X[(o, t)], 0.0)
        return (None, 1.0 if self.w.lo[o] == t == self.w.hi[o] else 0.0)

    def res(self, a, t):
        """res = C+P+R as (terms, constant)."""
        terms, const = [], 0.0
        v, c = self.C.get((a, t), (None, 0.0))
        if v is not None:
            terms.append((v, 1.0))
        const += c
        for d in (self.P, self.R):
            if (a, t) in d:
                terms.append((d[(a, t)], 1.0))
        return terms, const

    def _constraints(self, made):
        g, w, m, M = self.g, self.w, self.m, self.M
        for o in w.ops:  # Eq.7 and one operator per step
            if w.lo[o] != w.hi[o]:
                m.row([(self.X[(o, t)], 1.0) for t in range(w.lo[o], w.hi[o] + 1)], 1, 1)
        for t in range(self.n):
            terms = [(v, 1.0) for (o, s), v in self.X.items() if s == t]
            fixed = sum(1 for o in w.ops if w.lo[o] == t == w.hi[o])
            if terms:
                m.row(terms, 1 - fixed, 1 - fixed)
        for a in self.tensors:
            lo, hi, later = self.span[a]
            spilled_terms = []
            for t in range(lo, hi + 1):
                r_terms, r_const = self.res(a, t)
                s = self.S.get((a, t))
                m.row(r_terms + ([(s, 1.0)] if s is not None else []), -np.inf, 1 - r_const)  # Eq.1
                prev_terms, prev_const = self.res(a, t - 1) if t > lo or a not in made else ([], 0.0)
                if t == 0 and a not in made:
                    prev_const = 1.0 if a in w.resident else 0.0
                    prev_terms = []
                if (a, t) in self.P:  # Eq.2
                    m.row([(self.P[(a, t)], 1.0)] + [(v, -c) for v, c in prev_terms], -np.inf, prev_const)
                if s is not None:  # Eq.3 (a retrieved copy needs no spill)
                    cp = [(v, -c) for v, c in prev_terms if v not in (self.R.get((a, t - 1)),)]
                    m.row([(s, 1.0)] + cp, -np.inf, prev_const)
                    spilled_terms.append((s, 1.0))
                if (a, t) in self.R and not (g.in_dram(a) or a in w.in_dram):  # Eq.4
                    m.row([(self.R[(a, t)], 1.0)] + [(v, -1.0) for v, _ in spilled_terms if v != s], -np.inf, 0)
                if (a, t) in self.P and (a, t) in self.L:  # Eq.11
                    if t == 0 and a not in made:
                        prev_l = (None, float(w.resident[a]))
                    else:
                        prev_l = (self.L.get((a, t - 1)), 0.0)
                    if prev_l[0] is not None or t == 0:
                        lt, p = self.L[(a, t)], self.P[(a, t)]
                        base = [(lt, 1.0)] + ([(prev_l[0], -1.0)] if prev_l[0] is not None else [])
                        m.row(base + [(p, M)], -np.inf, M + prev_l[1])
                        m.row(base + [(p, -M)], -M + prev_l[1], np.inf)
            if spilled_terms:
                m.row(spilled_terms, -np.inf, 1)  # Eq.8
            if later:  # handed on to the next window: on chip at the end, or with a DRAM copy
                r_terms, r_const = self.res(a, hi)
                if not (g.in_dram(a) or a in w.in_dram):
                    m.row(r_terms + spilled_terms, 1 - r_const, np.inf)
        for o in w.ops:  # Eq.5: inputs on chip when an operator runs
            for b in set(g.op_inputs[o]):
                for t in range(w.lo[o], w.hi[o] + 1):
                    xv, xc = self._x(o, t)
                    terms = [(self.P[(b, t)], -1.0)] if (b, t) in self.P else []
                    if (b, t) in self.R:
                        terms.append((self.R[(b, t)], -1.0))
                    if xv is not None:
                        m.row([(xv, 1.0)] + terms, -np.inf, 0)
                    elif xc:
                        m.row(terms, -np.inf, -1)
        self._capacity_and_placement()

    def _capacity_and_placement(self):
        g, m, M = self.g, self.m, self.M
        at = [[] for _ in range(self.n)]
        for a in self.tensors:
            lo, hi, _ = self.span[a]
            for t in range(lo, hi + 1):
                at[t].append(a)
        self.pairs = 0
        for t in range(self.n):
            terms, const = [], 0.0
            for a in at[t]:
                rt, rc = self.res(a, t)
                terms += [(v, c * g.sizes[a]) for v, c in rt]
                const += rc * g.sizes[a]
            if self.mode == "peak":
                m.row(terms + [(self.peak, -1.0)], -np.inf, -const)
                continue
            m.row(terms, -np.inf, M - const)
            for i, a in enumerate(at[t]):
                ra, ca = self.res(a, t)
                for b in at[t][i + 1:]:
                    rb, cb = self.res(b, t)
                    if g.sizes[a] + g.sizes[b] > M:  # never together
                        m.row(ra + rb, -np.inf, 1 - ca - cb)
                        continue
                    u, d = m.var(), m.var()
                    self.pairs += 1
                    la, lb = self.L[(a, t)], self.L[(b, t)]
                    m.row([(la, 1.0), (lb, -1.0), (u, -M)], g.sizes[b] - M, np.inf)
                    m.row([(lb, 1.0), (la, -1.0), (d, -M)], g.sizes[a] - M, np.inf)
                    m.row([(u, 1.0), (d, 1.0)] + [(v, -c) for v, c in ra + rb], ca + cb - 1, np.inf)

    def start_from(self, order_steps: dict[int, int], runs) -> np.ndarray:
        """A full variable vector from a plan's schedule (operator -> step in this window) and runs (window steps),
        for HiGHS' warm start. Pairs take their order from the addresses."""
        x = np.zeros(self.m.n_vars)
        for (o, t), v in self.X.items():
            x[v] = float(order_steps.get(o) == t)
        occ = {}
        for a, s0, s1, addr in runs:
            for t in range(s0, s1 + 1):
                occ[(a, t)] = (s0, addr)
        for (a, t), v in self.P.items():
            x[v] = float((a, t) in occ and occ[(a, t)][0] < t)
        for (a, t), v in self.R.items():
            x[v] = float((a, t) in occ and occ[(a, t)][0] == t and order_steps.get(self.g.producer[a]) != t)
        spilled = set()
        for (a, t), v in sorted(self.S.items(), key=lambda kv: kv[0][1]):
            if a not in spilled and (a, t) not in occ and (a, t - 1) in occ and \
                    any(k[0] == a and k[1] > t for k in occ):
                x[v] = 1.0
                spilled.add(a)
        for (a, t), v in self.L.items():
            x[v] = float(occ.get((a, t), (0, 0))[1])
        return x

    def solve(self, time_limit: float, start=None, threads: int = 2):
        return self.m.solve(time_limit, threads=threads, start=start)

    def extract(self, x: np.ndarray):
        """(operator order of this window, runs with window steps and integer addresses)."""
        g, w = self.g, self.w
        step = {}
        for o in w.ops:
            if w.lo[o] == w.hi[o]:
                step[o] = w.lo[o]
            else:
                step[o] = max(range(w.lo[o], w.hi[o] + 1), key=lambda t: x[self.X[(o, t)]])
        order = sorted(w.ops, key=lambda o: step[o])
        runs = []
        for a in self.tensors:
            lo, hi, _ = self.span[a]
            cur = None
            for t in range(lo, hi + 1):
                c = 1.0 if step.get(g.producer[a]) == t and g.producer[a] in step else 0.0
                p = x[self.P[(a, t)]] if (a, t) in self.P else 0.0
                r = x[self.R[(a, t)]] if (a, t) in self.R else 0.0
                here = c + p + r > 0.5
                addr = x[self.L[(a, t)]] if (a, t) in self.L else 0.0
                if here and cur is not None and p > 0.5:
                    cur[2] = t
                    continue
                if cur is not None:
                    runs.append(tuple(cur))
                    cur = None
                if here:
                    cur = [a, t, t, addr]
            if cur is not None:
                runs.append(tuple(cur))
        if self.mode == "spill":
            runs = pack_addresses(runs, g.sizes)
        return order, runs


def peak_schedule(g: Graph, time_limit: float = 10.0, window: Window | None = None):
    """Eq.13-15: the schedule with the smallest peak of live bytes (M_P). Returns (order, peak, bound, status,
    seconds)."""
    w = window or whole(g)
    sm = StepModel(g, w, budget=sum(g.sizes), mode="peak")
    status, x, obj, bound, secs = sm.solve(time_limit)
    if x is None:
        raise RuntimeError(f"HiGHS found no schedule for {g.name} in {time_limit} s ({status})")
    order, _ = sm.extract(x)
    return order, int(round(obj)), bound, status, secs
