"""SpMM, y = x W^T with W packed, in plain PyTorch: unpack, then a dense fp32 matmul.

x: (N, K) with N small (1-64 rows: the tokens of one decoding step or a small batch); W: (M, K) packed.
HBM traffic of the kernel this mirrors (kernel.py), for density d and fp16 values:
  read the packed weight: 2 d M K (values) + M K / 8 (bitmap) or d M K (csl) + M K / 64 (row offsets)
  read x once per row block: N K per block of 64 rows from L2; once, N K, from HBM
  write y: N M
against 2 M K for the dense weight. The reference itself materialises W (M K writes and reads): it is a spec,
not a fast path.
"""

import torch

from .format import PackedWeight, unpack


def spmm_ref(x: torch.Tensor, w: PackedWeight) -> torch.Tensor:
    """x (N, K) @ W^T in fp32 through the dense W, returned in x's dtype: the definition `matmul` is checked against.

    Examples:
        >>> import torch, ioaware
        >>> W = torch.randn(64, 32) * (torch.rand(64, 32) < 0.5); x = torch.randn(2, 32)
        >>> torch.allclose(spmm_ref(x, ioaware.spmm.pack(W)), x @ W.T, atol=1e-5)
        True
    """
    return (x.float() @ unpack(w).float().T).to(x.dtype)
