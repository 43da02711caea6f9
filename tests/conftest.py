import os

import pytest
import torch


def pytest_configure(config):
    # The kernels' CPU tests run through Triton's interpreter; it must be on before triton is imported.
    # A GPU run (`pytest -m gpu`) compiles the kernels instead.
    markexpr = config.getoption("markexpr") or ""
    gpu_run = "gpu" in markexpr.replace("not gpu", "")
    if not gpu_run:
        os.environ.setdefault("IOAWARE_INTERPRET", "1")


@pytest.fixture
def poison(monkeypatch):
    """Fresh allocations come back full of NaN, so an output element a kernel never writes fails the test."""
    real_empty, real_empty_like = torch.empty, torch.empty_like

    def _fill(t):
        if t.is_floating_point():
            t.fill_(float("nan"))
        return t

    monkeypatch.setattr(torch, "empty", lambda *a, **k: _fill(real_empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: _fill(real_empty_like(*a, **k)))
    yield


def rel_rms(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt().clamp_min(1e-30)).item()
