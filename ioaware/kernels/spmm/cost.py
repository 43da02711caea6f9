"""spmm's cost from the packed format's byte formula (format.packed_nbytes), registered with the iomodel.

HBM traffic: the packed weight once (values + index + row offsets), x once (N K), y once (N M); split-K partials
(fp32, written and re-read by the last split) are counted too, since they reach L2 and, for large M, HBM.
FLOPs: 2 N nnz useful; the tensor cores execute 2 * max(16, N) * M * K (zeros and padded rows included), reported
as `executed_flops` in the label because the roofline should judge the useful work.
"""

from __future__ import annotations

from ...iomodel import Cost, register
from .format import choose_index, packed_nbytes


@register("spmm")
def spmm_cost(N: int, M: int, K: int, sparsity: float, elem_bytes: int = 2, index: str = "auto",
              split_k: int = 1) -> Cost:
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"spmm cost: sparsity must be in [0, 1), got {sparsity}")
    nnz = round((1.0 - sparsity) * M * K)
    index = choose_index(M, K, nnz) if index == "auto" else index
    w = packed_nbytes(M, K, nnz, elem_bytes, index)
    partial = 2 * 4 * N * M * (split_k - 1) if split_k > 1 else 0  # fp32 partials written, then read
    read = w + N * K * elem_bytes + partial / 2
    write = N * M * elem_bytes + partial / 2
    return Cost.of(2.0 * N * nnz, label=f"spmm {index} N={N} {M}x{K} s={sparsity:g} "
                   f"(executed {2 * max(16, N) * M * K:.3g} tensor-core FLOPs)", hbm=(read, write))


@register("dense_linear")
def dense_linear_cost(N: int, M: int, K: int, elem_bytes: int = 2) -> Cost:
    """y = x W^T with W dense: the baseline spmm is compared with (cuBLAS reads W once)."""
    return Cost.of(2.0 * N * M * K, label=f"dense linear N={N} {M}x{K}",
                   hbm=((M * K + N * K) * elem_bytes, N * M * elem_bytes))
