"""A DNN as COSMA sees it: operators that create tensors (int8, so a tensor's size in bytes is its element count),
run one per time step; the budgets M_R, M_H, M_P; schedules and the live bytes they imply.

Graphs come from `graphs/*.json`, written by `extract_graphs.py` from torchvision / timm architectures (read that
file's docstring for how a PyTorch graph becomes operators and tensors). Every tensor has exactly one producer; the
network inputs are made by pseudo-operators `input` (a compulsory load), the outputs are written out once created.
"""

from __future__ import annotations

import heapq
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

GRAPH_DIR = Path(__file__).resolve().parent / "graphs"
# the paper's ten human-designed networks (§V-A), then the NAS graphs timm has
PAPER_NETWORKS = ["resnet50", "densenet121", "resnext50", "r2plus1d", "s3d", "fcn", "lraspp", "deeplabv3",
                  "transformer", "vit_b_16"]
NAS_NETWORKS = ["nasnet_a", "pnasnet5"]
IN_DRAM = ("input", "param")  # tensors that already have a copy in DRAM: dropping them costs no spill write


@dataclass(frozen=True)
class Graph:
    name: str
    sizes: tuple[int, ...]  # bytes per tensor
    kinds: tuple[str, ...]  # "input" | "activation" | "output" | "param"
    op_inputs: tuple[tuple[int, ...], ...]
    op_outputs: tuple[tuple[int, ...], ...]
    op_names: tuple[str, ...] = ()
    op_types: tuple[str, ...] = ()
    param_bytes: tuple[int, ...] = ()
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self):
        n_t, n_o = len(self.sizes), len(self.op_inputs)
        if len(self.kinds) != n_t or len(self.op_outputs) != n_o:
            raise ValueError(f"graph {self.name}: {n_t} sizes vs {len(self.kinds)} kinds, "
                             f"{n_o} input lists vs {len(self.op_outputs)} output lists")
        made = [t for outs in self.op_outputs for t in outs]
        if sorted(made) != list(range(n_t)):
            raise ValueError(f"graph {self.name}: every tensor needs exactly one producing operator")
        if any(s <= 0 for s in self.sizes):
            raise ValueError(f"graph {self.name}: tensor sizes must be positive bytes")
        for o, ins in enumerate(self.op_inputs):
            if any(not 0 <= t < n_t for t in ins):
                raise ValueError(f"graph {self.name}: operator {o} reads a tensor that does not exist")
        _ = self.default_order  # raises on a cycle

    @property
    def n_ops(self) -> int:
        return len(self.op_inputs)

    @property
    def n_tensors(self) -> int:
        return len(self.sizes)

    @cached_property
    def producer(self) -> tuple[int, ...]:
        p = [0] * self.n_tensors
        for o, outs in enumerate(self.op_outputs):
            for t in outs:
                p[t] = o
        return tuple(p)

    @cached_property
    def consumers(self) -> tuple[tuple[int, ...], ...]:
        c = [[] for _ in range(self.n_tensors)]
        for o, ins in enumerate(self.op_inputs):
            for t in ins:
                c[t].append(o)
        return tuple(tuple(x) for x in c)

    @cached_property
    def preds(self) -> tuple[tuple[int, ...], ...]:
        return tuple(tuple(sorted({self.producer[t] for t in ins})) for ins in self.op_inputs)

    @cached_property
    def succs(self) -> tuple[tuple[int, ...], ...]:
        s = [set() for _ in range(self.n_ops)]
        for o, ps in enumerate(self.preds):
            for p in ps:
                s[p].add(o)
        return tuple(tuple(sorted(x)) for x in s)

    @cached_property
    def default_order(self) -> tuple[int, ...]:
        """The file's operator order when it is topological (the framework's own schedule), else Kahn's order."""
        pos = {o: i for i, o in enumerate(range(self.n_ops))}
        if all(pos[p] < pos[o] for o in range(self.n_ops) for p in self.preds[o]):
            return tuple(range(self.n_ops))
        return self.topological(key=lambda o: o)

    def topological(self, key) -> tuple[int, ...]:
        indeg = [len(p) for p in self.preds]
        ready = [(key(o), o) for o in range(self.n_ops) if indeg[o] == 0]
        heapq.heapify(ready)
        out = []
        while ready:
            _, o = heapq.heappop(ready)
            out.append(o)
            for s in self.succs[o]:
                indeg[s] -= 1
                if indeg[s] == 0:
                    heapq.heappush(ready, (key(s), s))
        if len(out) != self.n_ops:
            raise ValueError(f"graph {self.name} has a cycle")
        return tuple(out)

    def in_dram(self, t: int) -> bool:
        return self.kinds[t] in IN_DRAM

    def op_bytes(self, o: int) -> int:
        return sum(self.sizes[t] for t in set(self.op_inputs[o]) | set(self.op_outputs[o]))

    @cached_property
    def m_r(self) -> int:
        """M_R: the largest single operator's inputs plus outputs; operators are atomic, so no plan fits below it."""
        return max(self.op_bytes(o) for o in range(self.n_ops))

    def with_params(self) -> Graph:
        """The activations + parameters setting: each operator's parameters become one more tensor it creates (a
        compulsory load from DRAM) and nobody else reads, so they occupy the scratchpad during that step only."""
        sizes, kinds, outs = list(self.sizes), list(self.kinds), [list(x) for x in self.op_outputs]
        for o, pb in enumerate(self.param_bytes or [0] * self.n_ops):
            if pb > 0:
                outs[o].append(len(sizes))
                sizes.append(int(pb))
                kinds.append("param")
        return Graph(self.name + "+params", tuple(sizes), tuple(kinds), self.op_inputs, tuple(map(tuple, outs)),
                     self.op_names, self.op_types, self.param_bytes, dict(self.meta, params=True))


def events(g: Graph, order) -> list[list[int]]:
    """Per tensor, the sorted distinct steps it must be resident at: its creation, then every step that reads it."""
    pos = positions(order)
    return [sorted({pos[g.producer[t]], *(pos[c] for c in g.consumers[t])}) for t in range(g.n_tensors)]


def positions(order) -> list[int]:
    pos = [0] * len(order)
    for s, o in enumerate(order):
        pos[o] = s
    return pos


def check_order(g: Graph, order) -> None:
    order = list(order)
    if sorted(order) != list(range(g.n_ops)):
        raise ValueError(f"schedule for {g.name} is not a permutation of its {g.n_ops} operators")
    pos = positions(order)
    bad = [(p, o) for o in range(g.n_ops) for p in g.preds[o] if pos[p] >= pos[o]]
    if bad:
        raise ValueError(f"schedule for {g.name} runs operator {bad[0][1]} before its producer {bad[0][0]}")


def live_bytes(g: Graph, order) -> list[int]:
    """Bytes that must be on chip at each step when nothing is spilled: every tensor from creation to last read."""
    ev = events(g, order)
    diff = [0] * (g.n_ops + 1)
    for t, e in enumerate(ev):
        diff[e[0]] += g.sizes[t]
        diff[e[-1] + 1] -= g.sizes[t]
    out, acc = [], 0
    for s in range(g.n_ops):
        acc += diff[s]
        out.append(acc)
    return out


def peak_bytes(g: Graph, order) -> int:
    return max(live_bytes(g, order))


def asap_alap(g: Graph) -> tuple[list[int], list[int]]:
    """Earliest and latest step of each operator under any topological schedule with one operator per step."""
    order = g.default_order
    asap = [0] * g.n_ops
    for o in order:
        asap[o] = max((asap[p] + 1 for p in g.preds[o]), default=0)
    # the number of descendants bounds how late an operator can run better than the longest path does
    desc = [set() for _ in range(g.n_ops)]
    for o in reversed(order):
        for s in g.succs[o]:
            desc[o] |= desc[s] | {s}
    anc = [set() for _ in range(g.n_ops)]
    for o in order:
        for p in g.preds[o]:
            anc[o] |= anc[p] | {p}
    asap = [max(asap[o], len(anc[o])) for o in range(g.n_ops)]
    alap = [g.n_ops - 1 - len(desc[o]) for o in range(g.n_ops)]
    return asap, alap


def load_graph(name: str) -> Graph:
    """A graph by name (graphs/<name>.json; `name+params` adds the parameters) or by path to such a file."""
    params = name.endswith("+params")
    base = name.removesuffix("+params")
    path = Path(base) if base.endswith(".json") else GRAPH_DIR / f"{base}.json"
    if not path.exists():
        raise ValueError(f"no graph {base!r}: choose one of {', '.join(available())} or a path to a graph JSON")
    g = from_dict(json.loads(path.read_text()))
    return g.with_params() if params else g


def from_dict(d: dict) -> Graph:
    ops = d["ops"]
    return Graph(name=d["name"], sizes=tuple(int(t["bytes"]) for t in d["tensors"]),
                 kinds=tuple(t.get("kind", "activation") for t in d["tensors"]),
                 op_inputs=tuple(tuple(o["inputs"]) for o in ops), op_outputs=tuple(tuple(o["outputs"]) for o in ops),
                 op_names=tuple(o.get("name", f"op{i}") for i, o in enumerate(ops)),
                 op_types=tuple(o.get("type", "") for o in ops),
                 param_bytes=tuple(int(o.get("param_bytes", 0)) for o in ops),
                 meta={k: d[k] for k in ("source", "torch", "command", "input_shapes") if k in d})


def available() -> list[str]:
    return sorted(p.stem for p in GRAPH_DIR.glob("*.json"))


def chain_graph(sizes: list[int], skips: list[tuple[int, int]] = (), name: str = "chain") -> Graph:
    """A small synthetic graph for tests: op i makes tensor i from tensor i-1; skips (i, j) make op j also read
    tensor i (a residual). Op 0 is the input load."""
    n = len(sizes)
    ins = [[] if i == 0 else [i - 1] for i in range(n)]
    for i, j in skips:
        if not 0 <= i < j - 1 < n - 1:
            raise ValueError(f"skip ({i}, {j}) must jump forward over at least one operator")
        ins[j].append(i)
    kinds = ["input"] + ["activation"] * (n - 2) + ["output"]
    return Graph(name, tuple(sizes), tuple(kinds[:n]), tuple(tuple(x) for x in ins), tuple((i,) for i in range(n)))
