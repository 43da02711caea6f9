"""The layer rule (docs/ARCHITECTURE.md, "Layers"): every import inside ioaware points down or sideways within its
own layer, never up, no private name crosses packages, and the modules form no import cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "ioaware"

# lower number = lower layer; a module may import its own layer or any lower one
LAYER = {"env": 0, "errors": 0, "files": 0, "units": 0, "report": 0,
         "hardware": 1, "iomodel": 2, "kernels": 3, "flash_attn_interface": 3, "nn": 4, "rnn": 4,
         "runtime": 5, "distributed": 5, "sim": 6, "plan": 6, "bench": 7, "cli": 8}
FACADES = {"__init__", "__main__"}  # ioaware/__init__.py re-exports the public names; the package's own entry


def _module(path: Path) -> list[str]:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return parts[:-1] if parts[-1] == "__init__" else parts


def _imports(path: Path):
    """(line, imported module as parts under ioaware, names imported) for every ioaware import in the file."""
    mod = _module(path)
    pkg = mod if path.name == "__init__.py" else mod[:-1]
    for n in ast.walk(ast.parse(path.read_text())):
        if isinstance(n, ast.ImportFrom):
            if n.level:
                base = pkg[: len(pkg) - (n.level - 1)]
                target = base + (n.module.split(".") if n.module else [])
            elif n.module and (n.module == "ioaware" or n.module.startswith("ioaware.")):
                target = n.module.split(".")[1:]
            else:
                continue
            yield n.lineno, target, [a.name for a in n.names]
        elif isinstance(n, ast.Import):
            for a in n.names:
                if a.name.startswith("ioaware."):
                    yield n.lineno, a.name.split(".")[1:], []


def _files():
    return sorted(ROOT.rglob("*.py"))


def _is_module(parts: list[str]) -> bool:
    p = ROOT.joinpath(*parts)
    return p.with_suffix(".py").exists() or (p / "__init__.py").exists()


def test_every_top_level_name_has_a_layer():
    tops = {p.relative_to(ROOT).parts[0].removesuffix(".py") for p in _files()}
    assert tops - set(LAYER) - FACADES == set(), "a new top-level module needs a layer in LAYER and the docs"


def test_imports_point_down():
    up = []
    for f in _files():
        me = _module(f)
        if not me or me[0] in FACADES:
            continue
        for line, target, _ in _imports(f):
            if target and target[0] in LAYER and LAYER[target[0]] > LAYER[me[0]]:
                up.append(f"{f.relative_to(ROOT.parent)}:{line} {me[0]} -> {target[0]}")
    assert up == [], "imports that point up the layers:\n" + "\n".join(up)


def test_no_private_name_crosses_packages():
    bad = []
    for f in _files():
        me = _module(f)
        my_pkg = me if f.name == "__init__.py" else me[:-1]
        for line, target, names in _imports(f):
            tpkg = target if (ROOT.joinpath(*target) / "__init__.py").exists() else target[:-1]
            if tpkg == my_pkg:
                continue
            private = [n for n in names if n.startswith("_") and not n.startswith("__")
                       and not _is_module(target + [n])]
            if private:
                bad.append(f"{f.relative_to(ROOT.parent)}:{line} imports {private} from {'.'.join(target)}")
    assert bad == [], "\n".join(bad)


def _graph() -> dict[str, set[str]]:
    g: dict[str, set[str]] = {}
    for f in _files():
        me = ".".join(_module(f))
        g.setdefault(me, set())
        for _, target, names in _imports(f):
            for n in names or [None]:
                full = target + [n] if n and _is_module(target + [n]) else target
                if _is_module(full) and ".".join(full) != me:
                    g[me].add(".".join(full))
    return g


def _cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), i.e. import cycles. A package's
    __init__ importing its own children is not a cycle of concern, so package -> child edges are dropped."""
    g = {a: {b for b in bs if not b.startswith(a + ".") and not (a == "" and b)} for a, bs in g.items()}
    index, low, stack, on, out, i = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = i[0]
        i[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in list(g):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    assert _cycles(_graph()) == []


@pytest.mark.parametrize("edges,expect", [
    ({"a": {"b"}, "b": {"a"}}, [["a", "b"]]),
    ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
    ({"p": {"p.x"}, "p.x": set()}, []),
], ids=["two-cycle", "chain", "package-child"])
def test_cycle_finder_finds_cycles(edges, expect):
    assert _cycles(edges) == expect
