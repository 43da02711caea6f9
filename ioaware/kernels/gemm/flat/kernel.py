"""Flat GEMM and GEMV for decoding (FlashDecoding++): M <= 64 rows against a large weight matrix.

Flat GEMM: M is padded to 16 (the tensor-core minimum), not to 64; one program owns BN output columns and a
1/SPLIT_K slice of K, streams W in (BN, BK) tiles with NUM_STAGES-deep software pipelining (Triton's double
buffering), and multiplies on the tensor cores. SPLIT_K > 1 (so a small N still fills the GPU) writes fp32
partials; the last split of each column tile to finish (an atomic counter, reset by that program) sums them and
writes the output, so split-K costs no extra launches — a decode step is launch-bound.
GEMV (M <= 4): no tensor cores; each program multiplies its W tile by the M rows on the CUDA cores.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..._dispatch import interpreting
from ...triton_utils import upcast


@triton.jit
def _flat_gemm_kernel(X, W, Y, OUT, CNT, M, N, K, s_xm, s_wn, s_ys, s_ym, s_om, k_split, BM: tl.constexpr,
                      BN: tl.constexpr, BK: tl.constexpr, NS: tl.constexpr, DOT: tl.constexpr, UPCAST: tl.constexpr,
                      PRECISION: tl.constexpr):
    i_n = tl.program_id(0)
    i_s = tl.program_id(1)
    o_m = tl.arange(0, BM)
    o_n = i_n * BN + tl.arange(0, BN)
    o_k = tl.arange(0, BK)
    m_m = o_m < M
    m_n = o_n < N
    k0 = i_s * k_split
    k1 = tl.minimum(k0 + k_split, K)
    b_acc = tl.zeros([BM, BN], tl.float32)
    for k in range(k0, k1, BK):
        m_k = (k + o_k) < k1
        b_x = upcast(tl.load(X + o_m[:, None] * s_xm + (k + o_k)[None, :], mask=m_m[:, None] & m_k[None, :],
                          other=0.0), UPCAST)
        b_w = upcast(tl.load(W + o_n[:, None] * s_wn + (k + o_k)[None, :], mask=m_n[:, None] & m_k[None, :],
                          other=0.0), UPCAST)
        if DOT:
            b_acc = tl.dot(b_x, tl.trans(b_w), b_acc, input_precision=PRECISION)
        else:  # GEMV: (BM, 1, BK) * (1, BN, BK) summed over K on the CUDA cores
            b_acc += tl.sum(b_x.to(tl.float32)[:, None, :] * b_w.to(tl.float32)[None, :, :], 2)
    m_y = m_m[:, None] & m_n[None, :]
    if NS == 1:
        tl.store(OUT + o_m[:, None] * s_om + o_n[None, :], b_acc.to(OUT.dtype.element_ty), mask=m_y)
    else:
        tl.store(Y + i_s * s_ys + o_m[:, None] * s_ym + o_n[None, :], b_acc, mask=m_y)
        # barrier + acq_rel: all of this program's partial is visible before the count moves (release is
        # cumulative over what the barrier ordered); the last split to arrive sees every partial
        tl.debug_barrier()
        done = tl.atomic_add(CNT + i_n, 1, sem="acq_rel")
        if done == NS - 1:
            b_sum = tl.zeros([BM, BN], tl.float32)
            for j in range(NS):
                b_sum += tl.load(Y + j * s_ys + o_m[:, None] * s_ym + o_n[None, :], mask=m_y, other=0.0)
            tl.store(OUT + o_m[:, None] * s_om + o_n[None, :], b_sum.to(OUT.dtype.element_ty), mask=m_y)
            tl.atomic_xchg(CNT + i_n, 0)  # ready for the next call: the counters are never re-zeroed by a launch


_COUNTERS: dict = {}


def _counters(device: torch.device, n: int) -> torch.Tensor:
    """Per-column-tile arrival counters, zero between calls (each call's last split resets its own).
    Allocated once per device and grown; a CUDA graph captures the same buffer."""
    c = _COUNTERS.get(device)
    if c is None or c.numel() < n:
        c = torch.zeros(max(n, 4096), device=device, dtype=torch.int32)
        _COUNTERS[device] = c
    return c


def flat_gemm(x: torch.Tensor, w: torch.Tensor, *, bn: int = 64, bk: int = 128, split_k: int = 1,
              num_stages: int = 4, num_warps: int = 4, gemv: bool = False) -> torch.Tensor:
    M, K = x.shape
    N = w.shape[0]
    bm = max(16, triton.next_power_of_2(M)) if not gemv else max(1, triton.next_power_of_2(M))
    k_split = triton.cdiv(triton.cdiv(K, split_k), bk) * bk
    n_split = triton.cdiv(K, k_split)
    out = torch.empty((M, N), device=x.device, dtype=x.dtype)
    y = torch.empty((n_split, M, N), device=x.device, dtype=torch.float32) if n_split > 1 else out
    n_tiles = triton.cdiv(N, bn)
    cnt = _counters(x.device, n_tiles) if n_split > 1 else out
    _flat_gemm_kernel[(n_tiles, n_split)](
        x, w, y, out, cnt, M, N, K, x.stride(0), w.stride(0), y.stride(0), y.stride(1), out.stride(0), k_split,
        BM=bm, BN=bn, BK=bk, NS=n_split, DOT=not gemv, UPCAST=interpreting() and x.dtype == torch.bfloat16,
        PRECISION="ieee" if x.dtype == torch.float32 else "tf32",
        num_stages=num_stages, num_warps=num_warps)
    return out
