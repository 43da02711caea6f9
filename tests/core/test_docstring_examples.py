"""The typed public API (issue #26, item 4): every public name has type hints and a docstring with an example, and
every example runs (on CPU, small shapes; under IOAWARE_INTERPRET=1 the kernels' examples run Triton's interpreter).

The public surface checked here is the one the README and the docs' API reference present: what `ioaware/__init__.py`
exports, `ioaware.flash_attn_interface`, `ioaware.rnn`, `ioaware.spmm`, `ioaware.nn`, `ioaware.iomodel`,
`ioaware.hardware`, the runtime's loading and `generate`, and the bottom layer (errors, units, files, report, env).
The same modules are the ones mypy checks (pyproject.toml, [tool.mypy] files). Not covered yet: ioaware.sim,
ioaware.plan, ioaware.distributed, and the runtime's other names (Transformer, ModelArgs, Tokenizer, kvtiers,
offload, compress).
"""

from __future__ import annotations

import doctest
import importlib
import inspect
import types
from collections.abc import Callable

import pytest
import torch

import ioaware

# Modules whose docstring examples run. Each holds (defines) public names listed in PUBLIC below.
DOCTEST_MODULES = [
    "ioaware.errors", "ioaware.units", "ioaware.files", "ioaware.report", "ioaware.env", "ioaware.kernels._dispatch",
    "ioaware.kernels.attention.flash.interface", "ioaware.kernels.attention.flash.reference",
    "ioaware.kernels.attention.decode.interface", "ioaware.kernels.attention.decode.reference",
    "ioaware.kernels.attention.sparse.interface", "ioaware.kernels.conv.interface",
    "ioaware.kernels.gemm.flat.interface", "ioaware.kernels.lowrank.interface", "ioaware.kernels.spmm.interface",
    "ioaware.kernels.spmm.format", "ioaware.kernels.spmm.reference", "ioaware.kernels.rnn.interface",
    "ioaware.kernels.rnn.reference", "ioaware.kernels.rnn.tiles", "ioaware.rnn",
    "ioaware.kernels.attention.compat.interface", "ioaware.kernels.attention.compat.kvcache",
    "ioaware.kernels.attention.compat.hf", "ioaware.kernels.attention.compat.rotary",
    "ioaware.runtime.llm.generate", "ioaware.runtime.llm.checkpoint", "ioaware.nn.longconv", "ioaware.nn.nsa",
    "ioaware.iomodel", "ioaware.iomodel.cost", "ioaware.iomodel.roofline", "ioaware.iomodel.attention",
    "ioaware.iomodel.bounds", "ioaware.iomodel.io", "ioaware.hardware.specs", "ioaware.hardware.detect",
    "ioaware.hardware.probe_results",
]

# namespace -> the public names promised typed and documented with an example (None: the namespace's __all__)
PUBLIC: dict[str, list[str] | None] = {
    "ioaware": [n for n in ioaware.__all__ if n not in ioaware._SUBMODULES and n not in ("spmm", "__version__")],
    "ioaware.spmm": None,
    "ioaware.flash_attn_interface": None,
    "ioaware.rnn": None,
    "ioaware.units": ["human_bytes", "size_unit", "in_unit", "parse_bytes"],
    "ioaware.files": ["write_json_atomic", "direct_io_supported", "tmp_name", "remove_orphans"],
    "ioaware.report": ["set_json_stream", "emit_json", "print_table"],
    "ioaware.env": ["Settings", "settings"],
    "ioaware.runtime": ["generate", "SamplingConfig", "GenerationResult", "load_checkpoint", "build_model",
                        "choose_weights", "default_model_path", "Checkpoint"],
    "ioaware.nn": None,
    "ioaware.iomodel": None,
    "ioaware.hardware": None,
}


def _public_objects() -> list[tuple[str, object]]:
    out = []
    for ns, names in PUBLIC.items():
        mod = importlib.import_module(ns) if ns != "ioaware.spmm" else ioaware.spmm
        for name in names if names is not None else mod.__all__:
            obj = getattr(mod, name)
            if isinstance(obj, type | types.FunctionType):
                out.append((f"{ns}.{name}", obj))
    return out


def _unannotated(fn: Callable[..., object], skip_first: bool) -> list[str]:
    """Parameters (and 'return') of fn without a type annotation."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return []
    params = list(sig.parameters.values())[1 if skip_first else 0:]
    missing = [p.name for p in params if p.annotation is inspect.Parameter.empty]
    if sig.return_annotation is inspect.Signature.empty and getattr(fn, "__name__", "") != "__init__":
        missing.append("return")
    return missing


def _class_problems(cls: type) -> list[str]:
    problems = []
    for name, member in vars(cls).items():
        if name.startswith("_") and name != "__init__":
            continue
        fn = member.fget if isinstance(member, property) else getattr(member, "__func__", member)
        if not isinstance(fn, types.FunctionType):
            continue
        static = isinstance(member, staticmethod)
        if name != "__init__" and not inspect.getdoc(fn):
            problems.append(f"{cls.__name__}.{name}: no docstring")
        if missing := _unannotated(fn, skip_first=not static):
            problems.append(f"{cls.__name__}.{name}: no type hint for {', '.join(missing)}")
    return problems


@pytest.mark.parametrize("qualname,obj", _public_objects(), ids=lambda x: x if isinstance(x, str) else "")
def test_public_name_is_typed_and_has_an_example(qualname: str, obj: object) -> None:
    doc = inspect.getdoc(obj) or ""
    problems = [] if ">>>" in doc else [f"{qualname}: its docstring has no example (>>>)"]
    if isinstance(obj, type):
        if not issubclass(obj, BaseException):  # exceptions take the message; nothing to annotate
            problems += _class_problems(obj)
    elif callable(obj) and (missing := _unannotated(obj, skip_first=False)):
        problems.append(f"{qualname}: no type hint for {', '.join(missing)}")
    assert not problems, "\n".join(problems)


def test_every_public_name_is_checked() -> None:
    """The list above is not empty by accident: the top-level kernels and the flash-attn functions are in it."""
    names = {q for q, _ in _public_objects()}
    assert {"ioaware.flash_attn", "ioaware.flash_decode", "ioaware.flash_attn_interface.flash_attn_with_kvcache",
            "ioaware.rnn.LSTM", "ioaware.spmm.pack", "ioaware.runtime.generate"} <= names
    assert len(names) >= 50


# examples that load the real model (SmolLM2) are left out of `make test-fast`
REAL_MODEL_EXAMPLES = {"ioaware.runtime.llm.generate"}


@pytest.mark.parametrize("module", [pytest.param(m, marks=pytest.mark.slow) if m in REAL_MODEL_EXAMPLES else m
                                    for m in DOCTEST_MODULES])
def test_docstring_examples_run(module: str) -> None:
    mod = importlib.import_module(module)
    tests = doctest.DocTestFinder().find(mod, module)
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    runner = doctest.DocTestRunner(optionflags=flags)
    ran = 0
    failures: list[str] = []
    for t in tests:
        if not t.examples:
            continue
        torch.manual_seed(0)
        out: list[str] = []
        result = runner.run(t, out=out.append, clear_globs=True)
        ran += result.attempted
        if result.failed:
            failures.append("".join(out))
    assert ran > 0, f"{module} has no docstring examples"
    assert not failures, "\n".join(failures)
