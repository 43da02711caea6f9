"""The README's Python quickstart runs as written, on CPU tensors (the PyTorch references: `device="cuda"` becomes
`"cpu"`, the interpreter is switched off because the shapes are the README's, not test-sized)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest


def test_readme_quickstart_runs_on_cpu(monkeypatch):
    torch = pytest.importorskip("torch")
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert blocks, "the README has no python quickstart"
    code = blocks[0].replace('device="cuda"', 'device="cpu"')
    assert "cuda" not in code, "a CUDA-only line in the quickstart the CPU run cannot follow"
    monkeypatch.delenv("IOAWARE_INTERPRET", raising=False)
    torch.manual_seed(0)
    ns: dict = {}
    exec(compile(code, "README.md quickstart", "exec"), ns)  # noqa: S102 - our own README
    assert ns["o"].shape == (2, 1024, 16, 128) and torch.isfinite(ns["o"]).all()
    assert ns["q"].grad is not None and torch.isfinite(ns["q"].grad).all()
    assert ns["y"].shape == (4, 768, 4096) and torch.isfinite(ns["y"]).all()
    assert ns["out"].shape == (2, 1, 16, 128) and torch.isfinite(ns["out"]).all()
