"""`ioaware.flat_linear(x, w)`: y = x W^T for decoding, with a heuristic dataflow (FlashDecoding++).

For each (N, K) weight shape the dispatcher picks GEMV (CUDA cores), flat GEMM (tensor cores, M padded to 16)
or torch.matmul (cuBLAS) by M, from switch points measured per GPU and stored as data (`dataflow_<card>.json`,
written by `ioaware bench gemm`). Shapes or GPUs without a measurement use torch.matmul.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import torch

from ....errors import ShapeError
from ..._dispatch import backend_for, load_kernel_module, record
from ..._validate import check_dtypes_and_device
from .reference import linear_ref

_KERNEL = "ioaware.kernels.gemm.flat.kernel"
_DATA = Path(__file__).parent


@functools.cache
def tile_table(card: str) -> dict[str, list[dict[str, Any]]]:
    """{"N,K": [{"max_m": int, "path": str, "params": {...}}, ...]} for a card, or {} if not measured.

    Examples:
        >>> tile_table("no-such-card")
        {}
    """
    f = _DATA / f"dataflow_{card}.json"
    return json.loads(f.read_text())["shapes"] if f.exists() else {}


@functools.cache
def _card(index: int) -> str:
    name = torch.cuda.get_device_name(index).lower()
    return "h100" if "h100" in name else "h200" if "h200" in name else name.replace(" ", "_")


def choose(M: int, N: int, K: int, card: str) -> tuple[str, dict[str, Any]]:
    """The path ('gemv', 'flat' or 'torch') and its tile parameters for an (M, N, K) product on `card`, from the
    card's measured table; 'torch' (cuBLAS) where the table has no rule."""
    for rule in tile_table(card).get(f"{N},{K}", []):
        if M <= rule["max_m"]:
            return rule["path"], rule.get("params", {})
    return "torch", {}


def flat_linear(x: torch.Tensor, w: torch.Tensor, path: str | None = None, **params: int) -> torch.Tensor:
    """y = x @ w.T for x (M, K), w (N, K); `path` forces 'gemv', 'flat' or 'torch'.

    On CUDA the path and its tiles come from the card's measured table (`choose`); `params` override the tiles
    of a forced path (the kernel's bn, bk, split_k, num_stages, num_warps).

    Examples:
        >>> import torch, ioaware
        >>> x, w = torch.randn(3, 64), torch.randn(32, 64)
        >>> torch.allclose(ioaware.flat_linear(x, w), x @ w.T, atol=1e-4)
        True
    """
    if x.dim() != 2 or w.dim() != 2 or x.shape[1] != w.shape[1]:
        raise ShapeError(f"flat_linear: x must be (M, K) and w (N, K), got {tuple(x.shape)} and {tuple(w.shape)}")
    check_dtypes_and_device("flat_linear", {"x": x, "w": w})
    if path not in (None, "gemv", "flat", "torch"):
        raise ValueError(f"flat_linear: path must be 'gemv', 'flat' or 'torch', got {path!r}")
    x = x if x.stride(-1) == 1 else x.contiguous()
    w = w if w.stride(-1) == 1 else w.contiguous()
    backend = backend_for(x.device.type)
    if path is None:
        path, params = choose(x.shape[0], w.shape[0], w.shape[1], _card(x.device.index or 0)) \
            if x.device.type == "cuda" else ("flat", params)
    if backend == "reference" or path == "torch":
        record("flat_linear", "torch" if path == "torch" else "reference")
        return x @ w.T if path == "torch" else linear_ref(x, w)
    record("flat_linear", f"{backend}:{path}")
    return load_kernel_module(_KERNEL).flat_gemm(x, w, gemv=path == "gemv", **params)
