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
    # Under pytest-xdist each worker gets its share of the cores for torch's intra-op threads (and so do the child
    # processes tests start, through OMP_NUM_THREADS): two workers of two OpenMP threads each on 2 cores spin against
    # each other, and SmolLM2's 32-token greedy test took 17-41 s against 3.4 s at one thread (2026-12-03).
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        threads = os.environ.setdefault("OMP_NUM_THREADS", str(max(1, cores // workers)))
        torch.set_num_threads(int(threads))


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
