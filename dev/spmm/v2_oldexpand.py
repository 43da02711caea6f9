"""v2: kernel.py's expansion ((8, TM, 4) layout, popcount per element, column 4 j + c) on tile-ordered values
(dev/spmm/NOTES.md, entry 2). Only the row starts change: tileoff[tile] + the row's start inside the tile, from an
int16 table (ROWS="table") or a cumsum of the rows' popcounts (ROWS="scan"). Format: v1_tileorder.pack_v2."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ioaware.kernels.spmm.kernel import _expand as _expand_full
from ioaware.kernels.spmm.kernel import _popc, _x_tile

TM = 64


@triton.jit
def _expand(V, b_mask, b_start, HW_POPC: tl.constexpr, MODE: tl.constexpr):
    """MODE "full": kernel.py's expansion; the two others are wrong on purpose, to time parts of the loop:
    "nogather" keeps the shifts, popcounts and predicates but loads nothing (the dense tile is the mask as 0/1),
    "skeleton" expands nothing (the mask word's sign broadcast to the tile)."""
    if MODE == "full":
        return _expand_full(V, b_mask, b_start, HW_POPC)
    elif MODE == "nogather":
        o_j = tl.arange(0, 8)
        o_c = tl.arange(0, 4)
        sh = 31 - (o_j[:, None, None] * 4 + o_c[None, None, :])
        b_sh = b_mask[None, :, None] << sh
        b_w = tl.where(b_sh < 0, (b_start[None, :, None] + _popc(b_sh, HW_POPC)).to(tl.float16), 0.0)
        return tl.reshape(tl.permute(b_w, (1, 0, 2)), (b_mask.shape[0], 32))
    else:
        return tl.zeros([b_mask.shape[0], 32], tl.float16) + (b_mask[:, None] + b_start[:, None]).to(tl.float16)


@triton.jit
def _start(TILEOFF, ROWSTART, tile, last, o_r, b_w, ROWS: tl.constexpr, HW_POPC: tl.constexpr):
    # tiles past the weight's last column (a step's tail) have zero masks: clamp, so no mask is needed
    tile = tl.minimum(tile, last)
    base = tl.load(TILEOFF + tile)
    if ROWS == "scan":
        c = _popc(b_w, HW_POPC)
        return base + tl.cumsum(c, 0) - c
    else:
        return base + tl.load(ROWSTART + tile * 64 + o_r, ).to(tl.int32)


@triton.jit
def _spmm_v3_kernel(X, V, MASKS, TILEOFF, ROWSTART, OUT, WS, CNT, N, M, K, Kt, s_xn, s_on, st_split,
                    TM: tl.constexpr, GS: tl.constexpr, BN: tl.constexpr, NS: tl.constexpr,
                    ROWS: tl.constexpr, HW_POPC: tl.constexpr, MODE: tl.constexpr):
    i_m = tl.program_id(0)
    i_s = tl.program_id(1)
    i_n = tl.program_id(2)
    o_r = tl.arange(0, TM)
    o_c = tl.arange(0, 32)
    o_n = i_n * BN + tl.arange(0, BN)
    m_n = o_n < N
    steps = tl.cdiv(Kt, GS)
    s0 = i_s * st_split
    s1 = tl.minimum(s0 + st_split, steps)
    b_acc = tl.zeros([TM, BN], tl.float32)
    last = tl.num_programs(0) * Kt - 1
    for s in range(s0, s1):
        kt = s * GS
        t0 = i_m * Kt + kt
        m0 = tl.load(MASKS + t0 * TM + o_r)
        w0 = _expand(V, m0, _start(TILEOFF, ROWSTART, t0, last, o_r, m0, ROWS, HW_POPC), HW_POPC, MODE)
        if GS >= 2:
            m1 = tl.load(MASKS + (t0 + 1) * TM + o_r, mask=(o_r * 0 + kt + 1) < Kt, other=0)
            w1 = _expand(V, m1, _start(TILEOFF, ROWSTART, t0 + 1, last, o_r, m1, ROWS, HW_POPC), HW_POPC, MODE)
        if GS >= 4:
            m2 = tl.load(MASKS + (t0 + 2) * TM + o_r, mask=(o_r * 0 + kt + 2) < Kt, other=0)
            m3 = tl.load(MASKS + (t0 + 3) * TM + o_r, mask=(o_r * 0 + kt + 3) < Kt, other=0)
            w2 = _expand(V, m2, _start(TILEOFF, ROWSTART, t0 + 2, last, o_r, m2, ROWS, HW_POPC), HW_POPC, MODE)
            w3 = _expand(V, m3, _start(TILEOFF, ROWSTART, t0 + 3, last, o_r, m3, ROWS, HW_POPC), HW_POPC, MODE)
        o_k = kt * 32 + o_c
        b_acc = tl.dot(w0, _x_tile(X, o_n, m_n, s_xn, o_k, K), b_acc)
        if GS >= 2:
            b_acc = tl.dot(w1, _x_tile(X, o_n, m_n, s_xn, o_k + 32, K), b_acc)
        if GS >= 4:
            b_acc = tl.dot(w2, _x_tile(X, o_n, m_n, s_xn, o_k + 64, K), b_acc)
            b_acc = tl.dot(w3, _x_tile(X, o_n, m_n, s_xn, o_k + 96, K), b_acc)
    o_m = i_m * TM + o_r
    m_y = (o_m < M)[:, None] & m_n[None, :]
    p_y = o_n[None, :] * s_on + o_m[:, None]
    if NS == 1:
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


def spmm_v3(x, p, split_k=None, gs=4, num_warps=4, num_stages=2, per_sm=4, rows="table", hw_popc=True,
            mode="full"):
    N, K = x.shape
    M = p["shape"][0]
    Mt, Kt = triton.cdiv(M, TM), triton.cdiv(K, 32)
    bn = max(16, triton.next_power_of_2(min(N, 64)))
    n_blocks = triton.cdiv(N, bn)
    steps = triton.cdiv(Kt, gs)
    if split_k is None:
        sms = torch.cuda.get_device_properties(x.device).multi_processor_count if x.is_cuda else 4
        split_k = max(1, min(steps, -(-per_sm * sms // (Mt * n_blocks))))
    st_split = triton.cdiv(steps, split_k)
    ns = triton.cdiv(steps, st_split)
    out = torch.empty((N, M), device=x.device, dtype=x.dtype)
    ws = torch.empty((ns, n_blocks * bn, M), device=x.device, dtype=torch.float32) if ns > 1 else out
    if x.device not in _CNT or _CNT[x.device].numel() < Mt * n_blocks:
        _CNT[x.device] = torch.zeros(max(8192, Mt * n_blocks), device=x.device, dtype=torch.int32)
    _spmm_v3_kernel[(Mt, ns, n_blocks)](
        x, p["values"], p["masks"], p["tileoff"], p["rowstart"], out, ws, _CNT[x.device], N, M, K, Kt,
        x.stride(0), out.stride(0), st_split, TM=TM, GS=gs, BN=bn, NS=ns, ROWS=rows, HW_POPC=hw_popc, MODE=mode,
        num_warps=num_warps, num_stages=num_stages)
    return out


if __name__ == "__main__":  # TRITON_INTERPRET=1 python dev/spmm/v2_oldexpand.py
    import sys

    sys.path.insert(0, "dev/spmm")
    from v1_tileorder import pack_v2

    torch.manual_seed(0)
    for M, K, N, s in [(130, 300, 3, 0.8), (64, 256, 17, 0.5), (100, 96, 1, 0.0)]:
        w = (torch.randn(M, K) * (torch.rand(M, K) >= s)).float()
        x = torch.randn(N, K)
        p = pack_v2(w)
        ref = x.double() @ w.double().T
        for rows in ("scan", "table"):
            for gs in (1, 2, 4):
                for split in (1, 3):
                    y = spmm_v3(x, p, split_k=split, gs=gs, rows=rows, hw_popc=False)
                    e = ((y.double() - ref).norm() / ref.norm()).item()
                    assert e < 1e-5, (M, K, N, s, rows, gs, split, e)
    print("ok")
