"""`ioaware.spmm.matmul(x, Wp)`: y = x W^T for a weight packed by `ioaware.spmm.pack` (Flash-LLM's SpMM).

CUDA tensors run the Triton kernel (kernel.py); CPU tensors run it under Triton's interpreter with
IOAWARE_INTERPRET=1, else the reference (unpack + dense matmul). `ioaware.last_backend("spmm")` says which ran.
"""

from __future__ import annotations

import torch

from ...errors import DeviceError, DTypeError, ShapeError
from .._dispatch import backend_for, load_kernel_module, record
from .format import FORMAT_VERSION, PackedWeight
from .reference import spmm_ref

_KERNEL = "ioaware.kernels.spmm.kernel"


def matmul(x: torch.Tensor, w: PackedWeight, *, split_k: int | None = None) -> torch.Tensor:
    """x (..., K) @ W^T -> (..., M) for W (M, K) packed; x's dtype must be the packed values' (float16, bfloat16
    or float32). split_k: column-group splits (default: enough programs for about 2 per SM).

    Examples:
        >>> import torch, ioaware
        >>> W = torch.randn(64, 256) * (torch.rand(64, 256) < 0.3)
        >>> x = torch.randn(4, 256)
        >>> torch.allclose(ioaware.spmm.matmul(x, ioaware.spmm.pack(W)), x @ W.T, atol=1e-4)
        True
    """
    if not isinstance(w, PackedWeight):
        raise TypeError(f"spmm.matmul: w must be a PackedWeight from ioaware.spmm.pack, got {type(w).__name__}")
    if w.version != FORMAT_VERSION:
        raise ValueError(f"spmm.matmul: w was packed with spmm format version {w.version}, this ioaware reads "
                         f"version {FORMAT_VERSION}; re-pack the weight")
    if not isinstance(x, torch.Tensor) or x.dim() < 1:
        raise ShapeError("spmm.matmul: x must be a tensor (..., K)")
    M, K = w.shape
    if x.shape[-1] != K:
        raise ShapeError(f"spmm.matmul: x has {x.shape[-1]} features in its last dimension, the weight {tuple(w.shape)}"
                         f" takes K = {K}")
    if x.dtype != w.dtype:
        raise DTypeError(f"spmm.matmul: x is {x.dtype} but the packed values are {w.dtype}; cast x or re-pack "
                         "(Wp.to(dtype=...))")
    if x.device != w.device:
        raise DeviceError(f"spmm.matmul: x is on {x.device} but the packed weight on {w.device}; move one "
                          "(Wp.to(device))")
    if x.device.type not in ("cuda", "cpu"):
        raise DeviceError(f"spmm.matmul: device {x.device} is not supported; use a CUDA GPU or the CPU")
    if split_k is not None and split_k < 1:
        raise ValueError(f"spmm.matmul: split_k must be >= 1, got {split_k}")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, K)
    if x2.shape[0] == 0:
        return x.new_zeros(*lead, M)
    x2 = x2 if x2.stride(-1) == 1 else x2.contiguous()
    backend = backend_for(x.device.type)
    record("spmm", backend)
    if backend == "reference":
        y = spmm_ref(x2, w)
    else:
        y = load_kernel_module(_KERNEL).spmm_lscd(x2, w, split_k=split_k)
    return y.view(*lead, M)
