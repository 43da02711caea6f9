"""flat_linear's GEMV and flat-GEMM kernels on CPU through Triton's interpreter, and the dataflow table."""

import json

import pytest
import torch

from ioaware.errors import DTypeError, ShapeError
from ioaware.kernels import last_backend
from ioaware.kernels.gemm.flat import choose, flat_linear
from ioaware.kernels.gemm.flat import interface as flat_iface


@pytest.mark.parametrize("M", [1, 3, 16, 33])
@pytest.mark.parametrize("path,params", [("flat", {}), ("gemv", {}), ("flat", {"split_k": 3}),
                                         ("gemv", {"split_k": 2, "bn": 32, "bk": 64})],
                         ids=["flat", "gemv", "flat-splitk3", "gemv-splitk2"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
def test_flat_linear(M, path, params, dtype, poison):
    g = torch.Generator().manual_seed(M)
    x = torch.randn(M, 200, generator=g).to(dtype)
    w = torch.randn(150, 200, generator=g).to(dtype)
    y = flat_linear(x, w, path, **params)
    assert last_backend("flat_linear") == f"interpret:{path}"
    ref = x.double() @ w.double().T
    base = (x @ w.T).double() if dtype != torch.float32 else ref  # plain PyTorch in the same dtype
    err, err_pt = (y.double() - ref).abs().max().item(), (base - ref).abs().max().item()
    rounding = 2 * (ref.to(dtype) + 0.3 - 0.3 - ref.to(dtype)).abs().max().item() if dtype != torch.float32 else 1e-4
    assert err <= 2 * err_pt + rounding


def test_dataflow_table(tmp_path, monkeypatch):
    table = {"card": "test", "shapes": {"4096,4096": [{"max_m": 2, "path": "gemv", "params": {"bn": 32}},
                                                      {"max_m": 16, "path": "flat", "params": {"split_k": 2}}]}}
    (tmp_path / "dataflow_test.json").write_text(json.dumps(table))
    monkeypatch.setattr(flat_iface, "_DATA", tmp_path)
    flat_iface.tile_table.cache_clear()
    assert choose(1, 4096, 4096, "test") == ("gemv", {"bn": 32})
    assert choose(16, 4096, 4096, "test") == ("flat", {"split_k": 2})
    assert choose(17, 4096, 4096, "test") == ("torch", {})
    assert choose(1, 1024, 4096, "test") == ("torch", {})  # an unmeasured shape falls back to cuBLAS
    flat_iface.tile_table.cache_clear()


def test_errors():
    with pytest.raises(ShapeError, match="\\(M, K\\)"):
        flat_linear(torch.zeros(2, 3), torch.zeros(4, 5))
    with pytest.raises(DTypeError):
        flat_linear(torch.zeros(2, 3), torch.zeros(4, 3, dtype=torch.float16))
    with pytest.raises(ValueError, match="path"):
        flat_linear(torch.zeros(2, 3), torch.zeros(4, 3), path="cutlass")
