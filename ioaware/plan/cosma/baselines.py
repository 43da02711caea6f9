"""The paper's baselines: TFLite's linear arena allocator with Belady replacement, on the default schedule or on a
memory-minimising one.

Allocation follows TFLite's `SimpleMemoryArena::Allocate`: among the gaps between the tensors on chip (sorted by
address) take the smallest that fits, else the space above the highest one. TFLite plans offline with room for
everything; under a budget it needs a replacement policy, and the paper pairs it with Belady's: when no gap fits,
evict the tensor whose next read is furthest away (a spill, unless it already has a DRAM copy) and try again. A
spilled tensor comes back just before the operator that reads it (a retrieval). When even evicting every tensor the
current operator does not touch leaves no gap (fragmentation among its own operands), the operands on chip are
evicted and re-placed from address 0, paying a round trip each; M_R >= their total guarantees they then fit.
"""

from __future__ import annotations

import bisect
import time

from .graph import Graph, check_order, events
from .plan import Plan, runs_to_traffic


class _Arena:
    def __init__(self, budget: int):
        self.budget = budget
        self.blocks: list[tuple[int, int, int]] = []  # (address, size, tensor), sorted by address

    def best_fit(self, size: int) -> int | None:
        best, best_gap, cur = None, None, 0
        for addr, sz, _ in self.blocks:
            gap = addr - cur
            if gap >= size and (best_gap is None or gap < best_gap):
                best, best_gap = cur, gap
            cur = max(cur, addr + sz)
        if best is None and cur + size <= self.budget:
            best = cur
        return best

    def place(self, addr: int, size: int, t: int) -> None:
        bisect.insort(self.blocks, (addr, size, t))

    def remove(self, t: int) -> None:
        self.blocks = [b for b in self.blocks if b[2] != t]


def arena_belady(g: Graph, order=None, budget: int | None = None, name: str = "arena+belady") -> Plan:
    """Simulate the baseline over a schedule; returns its plan (runs with addresses) and traffic."""
    t0 = time.perf_counter()
    order = list(order if order is not None else g.default_order)
    check_order(g, order)
    budget = int(budget if budget is not None else g.m_r)
    if budget < g.m_r:
        raise ValueError(f"budget {budget} B is below M_R = {g.m_r} B for {g.name}: an operator cannot run")
    ev = events(g, order)
    arena = _Arena(budget)
    where: dict[int, tuple[int, int]] = {}  # resident tensor -> (run start, address)
    runs: list[tuple[int, int, int, int]] = []
    nxt = [0] * g.n_tensors  # index into ev[t] of the next event not yet passed

    def next_use(t, s):
        e = ev[t]
        while nxt[t] < len(e) and e[nxt[t]] < s:
            nxt[t] += 1
        return e[nxt[t]] if nxt[t] < len(e) else None

    def evict(t, s):
        start, addr = where.pop(t)
        arena.remove(t)
        if start < s:  # a run that began at this very step was never used: drop it and re-place the tensor
            runs.append((t, start, s - 1, addr))

    def allocate(t, s, needed):
        size = g.sizes[t]
        while (addr := arena.best_fit(size)) is None:
            victims = [u for u in where if u not in needed]
            if victims:
                far = max(victims, key=lambda u: (next_use(u, s) is None, next_use(u, s) or 0, g.sizes[u]))
                evict(far, s)
                continue
            # fragmentation among this operator's own operands: evict them all and re-place them from 0 up
            mine = [u for u in where]
            for u in mine:
                evict(u, s)
            for u in sorted(mine + [t], key=lambda u: -g.sizes[u]):
                a = arena.best_fit(g.sizes[u])
                arena.place(a, g.sizes[u], u)
                where[u] = (s, a)
            return
        arena.place(addr, size, t)
        where[t] = (s, addr)

    for s, o in enumerate(order):
        ins, outs = list(dict.fromkeys(g.op_inputs[o])), list(g.op_outputs[o])
        needed = set(ins) | set(outs)
        for t in ins:
            if t not in where:
                allocate(t, s, needed)
        for t in outs:
            allocate(t, s, needed)
        for t in list(where):  # free what nobody reads any more
            if ev[t][-1] <= s:
                start, addr = where.pop(t)
                arena.remove(t)
                runs.append((t, start, s, addr))
    for t, (start, addr) in where.items():
        runs.append((t, start, len(order) - 1, addr))
    _, _, total = runs_to_traffic(g.sizes, [g.in_dram(t) for t in range(g.n_tensors)], runs)
    return Plan(g.name, budget, order, sorted(runs), name, objective=total, status="heuristic",
                solve_s=time.perf_counter() - t0)
