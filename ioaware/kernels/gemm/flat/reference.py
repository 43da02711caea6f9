"""The decode-phase linear layer, y = x W^T, in plain PyTorch.

x: (M, K) with M small (1-64 rows: the tokens of one decoding step); W: (N, K) (nn.Linear's layout).
HBM traffic: read N K (the weights) + M K, write M N: at M <= 64 the weights dominate, so a flat GEMM is bound by
reading W once; the FLOPs (2 M N K) are far below the tensor cores' rate.
"""

import torch


def linear_ref(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return (x.float() @ w.float().T).to(x.dtype)
