"""v4 (dev/spmm/NOTES.md, entry 4; NOT measured): kernel.py's bitmap path (format version 1) + L2 prefetches.

Entry 3 found the loop latency-bound: each step waits for its masks from HBM, then for its gathers (whose values
also come from HBM the first time). In format 1 a column group's values for a row block are one contiguous range,
rowoff[group row 0] .. rowoff[next group row 0], and its masks are 8 x 64 contiguous words, so at the start of a
group the program can ask the L2 for the *next* group's values and masks (prefetch.global.L2, one per 128-byte line,
one per thread: up to 16 KB of values, a 64 x 256 group at <= 50% density). The gathers and mask loads of the next
group should then wait for L2 (~0.3 us) rather than HBM (~0.8 us or more). PREFETCH=False is kernel.py's loop.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ioaware.kernels.spmm.format import GROUP_TILES, TILE_K, TILE_M
from ioaware.kernels.spmm.kernel import _expand, _popc, _x_tile, choose_split


@triton.jit
def _prefetch_l2(ptrs, ok):
    """prefetch.global.L2 for each pointer where ok (inline PTX: Triton has no prefetch op)."""
    return tl.inline_asm_elementwise(
        "{ .reg .pred p; setp.ne.s32 p, $2, 0; @p prefetch.global.L2 [$1]; mov.u32 $0, 0; }",
        "=r,l,r", [ptrs, ok.to(tl.int32)], dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def _spmm_v4_kernel(X, V, MASKS, ROWOFF, OUT, WS, CNT, N, M, K, Kt, Kg, s_xn, s_on, st_split, NS,
                    TM: tl.constexpr, TK: tl.constexpr, G: tl.constexpr, GS: tl.constexpr, BN: tl.constexpr,
                    SPLIT: tl.constexpr, HW_POPC: tl.constexpr, PREFETCH: tl.constexpr, NT: tl.constexpr):
    tl.static_assert(GS == 4, "4 tiles per step, as kernel.py's default")
    SPG: tl.constexpr = G // GS
    i_m = tl.program_id(0)
    i_s = tl.program_id(1)
    i_n = tl.program_id(2)
    o_r = tl.arange(0, TM)
    o_c = tl.arange(0, TK)
    o_n = i_n * BN + tl.arange(0, BN)
    m_n = o_n < N
    o_p = tl.arange(0, NT)  # one prefetch per thread
    s0 = i_s * st_split
    s1 = tl.minimum(s0 + st_split, tl.cdiv(Kt, GS))
    b_acc = tl.zeros([TM, BN], tl.float32)
    b_ptr = tl.zeros([TM], tl.int32)
    for s in range(s0, s1):
        g = s // SPG
        p_row = ROWOFF + (i_m * Kg + g) * TM + o_r
        b_ptr = tl.where(s % SPG == 0, tl.load(p_row), b_ptr)
        kt = s * GS
        if PREFETCH:
            if (s % SPG == 0) & (g + 1 < Kg):
                # the next group's values [v0, v1) (contiguous in format 1) and its 8 x 64 mask words
                v0 = tl.load(ROWOFF + (i_m * Kg + g + 1) * TM)
                v1 = tl.load(ROWOFF + (i_m * Kg + g + 2) * TM)
                off = v0 + o_p * 64  # 64 fp16 = one 128-byte line
                _prefetch_l2(V + off, off < v1)
                mw = o_p * 32  # 32 int32 words = one line; a group's masks are 8 * 64 words = 16 lines
                _prefetch_l2(MASKS + (i_m * Kt + (g + 1) * G) * TM + mw, (mw < G * TM) & ((g + 1) * G < Kt))
        p_m = MASKS + (i_m * Kt + kt) * TM + o_r
        m0 = tl.load(p_m)
        m1 = tl.load(p_m + TM, mask=o_r * 0 + kt + 1 < Kt, other=0)
        m2 = tl.load(p_m + 2 * TM, mask=o_r * 0 + kt + 2 < Kt, other=0)
        m3 = tl.load(p_m + 3 * TM, mask=o_r * 0 + kt + 3 < Kt, other=0)
        c0 = _popc(m0, HW_POPC)
        c1 = _popc(m1, HW_POPC)
        c2 = _popc(m2, HW_POPC)
        c3 = _popc(m3, HW_POPC)
        w0 = _expand(V, m0, b_ptr, HW_POPC)
        w1 = _expand(V, m1, b_ptr + c0, HW_POPC)
        w2 = _expand(V, m2, b_ptr + c0 + c1, HW_POPC)
        w3 = _expand(V, m3, b_ptr + c0 + c1 + c2, HW_POPC)
        o_k = kt * TK + o_c
        b_acc = tl.dot(w0, _x_tile(X, o_n, m_n, s_xn, o_k, K), b_acc)
        b_acc = tl.dot(w1, _x_tile(X, o_n, m_n, s_xn, o_k + TK, K), b_acc)
        b_acc = tl.dot(w2, _x_tile(X, o_n, m_n, s_xn, o_k + 2 * TK, K), b_acc)
        b_acc = tl.dot(w3, _x_tile(X, o_n, m_n, s_xn, o_k + 3 * TK, K), b_acc)
        b_ptr += c0 + c1 + c2 + c3
    o_m = i_m * TM + o_r
    m_y = (o_m < M)[:, None] & m_n[None, :]
    p_y = o_n[None, :] * s_on + o_m[:, None]
    if not SPLIT:
        tl.store(OUT + p_y, b_acc.to(OUT.dtype.element_ty), mask=m_y)
    else:
        n_rows = tl.num_programs(2) * BN
        tl.store(WS + i_s * n_rows * M + p_y, b_acc, mask=m_y)
        tl.debug_barrier()
        i_t = i_n * tl.num_programs(0) + i_m
        done = tl.atomic_add(CNT + i_t, 1, sem="acq_rel")
        if done == NS - 1:
            b_sum = tl.zeros([TM, BN], tl.float32)
            for j in range(NS):
                b_sum += tl.load(WS + j * n_rows * M + p_y, mask=m_y, other=0.0)
            tl.store(OUT + p_y, b_sum.to(OUT.dtype.element_ty), mask=m_y)
            tl.atomic_xchg(CNT + i_t, 0)


_CNT: dict = {}


def spmm_v4(x, w, split_k=None, num_warps=4, num_stages=2, per_sm=4, prefetch=True, hw_popc=True):
    """x (N, K) fp16/bf16 @ W^T for a bitmap PackedWeight of format version 1 (ioaware.kernels.spmm.pack)."""
    assert w.index == "bitmap"
    N, K = x.shape
    M = w.shape[0]
    Mt, Kt, Kg = w.grid
    gs = 4
    bn = max(16, triton.next_power_of_2(min(N, 64)))
    n_blocks = triton.cdiv(N, bn)
    if split_k is None:
        sms = torch.cuda.get_device_properties(x.device).multi_processor_count if x.is_cuda else 4
        split_k = choose_split(Mt, Kg, n_blocks, sms, per_sm)
    g_split = triton.cdiv(Kg, max(1, min(split_k, Kg)))
    ns = triton.cdiv(Kg, g_split)
    out = torch.empty((N, M), device=x.device, dtype=x.dtype)
    ws = torch.empty((ns, n_blocks * bn, M), device=x.device, dtype=torch.float32) if ns > 1 else out
    if x.device not in _CNT or _CNT[x.device].numel() < Mt * n_blocks:
        _CNT[x.device] = torch.zeros(max(8192, Mt * n_blocks), device=x.device, dtype=torch.int32)
    _spmm_v4_kernel[(Mt, ns, n_blocks)](
        x, w.values, w.masks, w.rowoff, out, ws, _CNT[x.device], N, M, K, Kt, Kg, x.stride(0), out.stride(0),
        g_split * (GROUP_TILES // gs), ns, TM=TILE_M, TK=TILE_K, G=GROUP_TILES, GS=gs, BN=bn, SPLIT=ns > 1,
        HW_POPC=hw_popc, PREFETCH=prefetch, NT=32 * num_warps, num_warps=num_warps, num_stages=num_stages)
    return out


if __name__ == "__main__":  # TRITON_INTERPRET=1 python dev/spmm/v4_prefetch.py (prefetch off: no inline PTX there)
    from ioaware.kernels.spmm import pack

    torch.manual_seed(0)
    for M, K, N, s in [(130, 600, 3, 0.8), (64, 256, 17, 0.5), (100, 1000, 1, 0.9)]:
        w = (torch.randn(M, K) * (torch.rand(M, K) >= s)).float()
        x = torch.randn(N, K)
        ref = x.double() @ w.double().T
        for split in (1, 3):
            y = spmm_v4(x, pack(w, "bitmap"), split_k=split, prefetch=False, hw_popc=False)
            e = ((y.double() - ref).norm() / ref.norm()).item()
            assert e < 1e-5, (M, K, N, s, split, e)
    print("ok")
