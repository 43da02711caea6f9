"""The independent plan checker: replays a plan step by step and recomputes its DRAM traffic from scratch.

It shares no code with the solvers (only the graph's structure): a plan passes when the schedule runs every operator
once after its producers; every tensor's first on-chip run starts at its creation, later runs only after it has a
DRAM copy (a run may start right after the previous one ends: a move through DRAM); every input and output of the
operator at a step is on chip at that step; and at every step the resident tensors sit in disjoint address ranges
inside [0, budget).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .graph import Graph
from .plan import Plan


@dataclass
class Check:
    ok: bool
    spilled: int  # bytes written to DRAM that a plan with room for everything would not write
    retrieved: int  # bytes read back
    peak: int  # the highest occupied address at any step (bytes)
    errors: list[str] = field(default_factory=list)

    @property
    def non_compulsory(self) -> int:
        return self.spilled + self.retrieved


def check(g: Graph, p: Plan, max_errors: int = 20) -> Check:
    errs: list[str] = []

    def err(msg):
        if len(errs) < max_errors:
            errs.append(msg)

    n = g.n_ops
    order = list(p.order)
    if sorted(order) != list(range(n)):
        return Check(False, 0, 0, 0, [f"the schedule is not a permutation of the {n} operators"])
    pos = [0] * n
    for s, o in enumerate(order):
        pos[o] = s
    for o in range(n):
        for t in g.op_inputs[o]:
            if pos[g.producer[t]] >= pos[o]:
                err(f"operator {o} runs at step {pos[o]} before tensor {t} is made (step {pos[g.producer[t]]})")

    runs_of: dict[int, list[tuple[int, int, int]]] = {}
    for t, a, b, addr in p.runs:
        if not 0 <= t < g.n_tensors:
            err(f"run for tensor {t}, which does not exist")
            continue
        if not (0 <= a <= b < n):
            err(f"tensor {t}: run [{a}, {b}] is outside the {n} steps")
            continue
        if addr < 0 or addr + g.sizes[t] > p.budget:
            err(f"tensor {t} at address {addr} + {g.sizes[t]} bytes leaves the budget {p.budget}")
        runs_of.setdefault(t, []).append((a, b, addr))

    spilled = retrieved = 0
    for t in range(g.n_tensors):
        rs = sorted(runs_of.get(t, []))
        born = pos[g.producer[t]]
        if not rs:
            err(f"tensor {t} is never on chip (it must be at its creation, step {born})")
            continue
        if rs[0][0] != born:
            err(f"tensor {t}: first run starts at step {rs[0][0]}, not at its creation (step {born})")
        for (_, b0, _), (a1, _, _) in zip(rs, rs[1:]):
            if a1 <= b0:  # touching runs are a move through DRAM (spill after b0, retrieve for a1): allowed
                err(f"tensor {t}: runs ending at {b0} and starting at {a1} overlap (one run has one address)")
        covered = set()
        for a, b, _ in rs:
            covered.update(range(a, b + 1))
        for c in g.consumers[t]:
            if pos[c] not in covered:
                err(f"tensor {t} is not on chip at step {pos[c]}, where operator {c} reads it")
        if len(rs) > 1:
            retrieved += g.sizes[t] * (len(rs) - 1)
            if not g.in_dram(t):
                spilled += g.sizes[t]

    # address ranges at every step: sweep the steps, sort the residents by address, compare neighbours
    at: list[list[tuple[int, int, int]]] = [[] for _ in range(n)]
    for t, rs in runs_of.items():
        for a, b, addr in rs:
            for s in range(a, b + 1):
                at[s].append((addr, addr + g.sizes[t], t))
    peak = 0
    for s in range(n):
        res = sorted(at[s])
        for (a0, e0, t0), (a1, _, t1) in zip(res, res[1:]):
            if a1 < e0:
                err(f"step {s}: tensors {t0} [{a0}, {e0}) and {t1} [{a1}, ...) overlap")
        if res:
            peak = max(peak, max(e for _, e, _ in res))
    if p.objective is not None and p.objective != spilled + retrieved:
        err(f"the plan claims {p.objective} non-compulsory bytes; replay counts {spilled + retrieved}")
    return Check(not errs, spilled, retrieved, peak, errs)
