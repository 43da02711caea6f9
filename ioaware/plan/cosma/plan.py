"""A scratchpad plan: the schedule, and for each tensor the runs of steps it stays on chip at one address.

A tensor's first run starts at its creation step; every later run starts with a retrieval from DRAM (non-compulsory
bytes: its size), and the end of a run that a later run follows is a spill (its size once, unless the tensor already
has a DRAM copy: network inputs and parameters). This is the paper's C/P/S/R per step, written as runs: P joins two
steps of a run, R starts a later run, S ends the first run that is not the last.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ...files import write_json_atomic


@dataclass
class Plan:
    graph: str
    budget: int
    order: list[int]
    runs: list[tuple[int, int, int, int]]  # (tensor, first step, last step, address), steps inclusive
    method: str
    objective: int | None = None  # the non-compulsory bytes the method claims (the validator recomputes them)
    bound: float | None = None  # a proven lower bound on the objective, when the solver gives one
    status: str = ""
    solve_s: float = 0.0
    info: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["runs"] = [list(r) for r in self.runs]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Plan:
        d = dict(d)
        d["runs"] = [tuple(int(x) for x in r) for r in d["runs"]]
        return cls(**d)

    def save(self, path: str | Path) -> None:
        write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        return cls.from_dict(json.loads(Path(path).read_text()))


def runs_to_traffic(sizes, in_dram, runs) -> tuple[int, int, int]:
    """(spilled bytes, retrieved bytes, total) implied by runs; used by the solvers to report what they chose."""
    n = {}
    for t, *_ in runs:
        n[t] = n.get(t, 0) + 1
    spill = sum(sizes[t] for t, k in n.items() if k > 1 and not in_dram[t])
    retrieve = sum(sizes[t] * (k - 1) for t, k in n.items())
    return spill, retrieve, spill + retrieve


def pack_addresses(runs: list[tuple[int, int, int, float]], sizes) -> list[tuple[int, int, int, int]]:
    """Integer addresses that keep the vertical order of fractional ones (an LP's): each run, taken from the lowest
    fractional address up, sits on top of the highest run below it that shares a step. The result is never higher
    than the fractional address (up to the solver's tolerance), so a budget the fractional plan met still holds."""
    order = sorted(range(len(runs)), key=lambda i: (runs[i][3], runs[i][1], runs[i][0]))
    placed: list[tuple[int, int, int, int]] = []
    by_step: dict[int, list[int]] = {}
    out = [None] * len(runs)
    for i in order:
        t, a, b, _ = runs[i]
        top = 0
        for s in range(a, b + 1):
            for j in by_step.get(s, ()):
                top = max(top, placed[j][3] + sizes[placed[j][0]])
        placed.append((t, a, b, top))
        k = len(placed) - 1
        for s in range(a, b + 1):
            by_step.setdefault(s, []).append(k)
        out[i] = (t, a, b, top)
    return out
