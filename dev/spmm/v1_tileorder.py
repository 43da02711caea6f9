"""v1: tile-ordered values + in-thread prefix ranks (dev/spmm/NOTES.md, entry 1).

Two changes against kernel.py as of 2026-12-02:
- values stored in (row block, 32-column tile, row, column) order with one int32 offset per tile, so the 8 rows a
  warp gathers from sit in ~100 contiguous bytes (1-2 L1 wavefronts per gather instead of ~8);
- each thread owns 8 *consecutive* columns of a row (one byte of the mask word), so an element's rank is
  popc(word below the byte), once per 8 elements, + an in-thread running sum of bits (tl.cumsum over an in-thread
  axis): no quarter-rate popc per element.
Row starts inside a tile: ROWS="scan" (cumsum of the rows' popcounts, no extra bytes) or "table" (int16 per tile
row, 1/16 B per weight).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

try:
    from triton.language.extra import libdevice
except ImportError:  # pragma: no cover
    libdevice = None

TM, TK = 64, 32


def pack_v2(W: torch.Tensor) -> dict:
    M, K = W.shape
    Mt, Kt = triton.cdiv(M, TM), triton.cdiv(K, TK)
    wp = torch.zeros(Mt * TM, Kt * TK, dtype=W.dtype, device=W.device)
    wp[:M, :K] = W
    t = wp.view(Mt, TM, Kt, TK).permute(0, 2, 1, 3)  # (Mt, Kt, 64, 32)
    nz = t != 0
    values = t[nz].contiguous()
    per_row = nz.sum(3, dtype=torch.int32)  # (Mt, Kt, 64)
    per_tile = per_row.sum(2).flatten().long()
    tileoff = torch.zeros(Mt * Kt + 1, dtype=torch.int64, device=W.device)
    tileoff[1:] = per_tile.cumsum(0)
    rowstart = (per_row.cumsum(2) - per_row).to(torch.int16).contiguous()
    w = (nz.long() << torch.arange(TK, device=W.device)).sum(-1)
    masks = torch.where(w >= 2**31, w - 2**32, w).to(torch.int32).contiguous()
    return {"shape": (M, K), "values": values, "masks": masks, "tileoff": tileoff.to(torch.int32),
            "rowstart": rowstart, "nbytes_scan": values.numel() * values.element_size() + masks.numel() * 4
            + tileoff.numel() * 4}


@triton.jit
def _popc(x, HW_POPC: tl.constexpr):
    if HW_POPC:
        return libdevice.popc(x)
    else:
        u = x.to(tl.uint32, bitcast=True)
        u = u - ((u >> 1) & 0x55555555)
        u = (u & 0x33333333) + ((u >> 2) & 0x33333333)
        u = (u + (u >> 4)) & 0x0F0F0F0F
        return ((u * 0x01010101) >> 24).to(tl.int32)


@triton.jit
def _spmm_v2_kernel(X, V, MASKS, TILEOFF, ROWSTART, OUT, WS, CNT, N, M, K, Kt, s_xn, s_on, st_split,
                    TM: tl.constexpr, GS: tl.constexpr, BN: tl.constexpr, NS: tl.constexpr,
                    ROWS: tl.constexpr, RANK: tl.constexpr, HW_POPC: tl.constexpr):
    i_m = tl.program_id(0)
    i_s = tl.program_id(1)
    i_n = tl.program_id(2)
    o_r = tl.arange(0, TM)
    o_t = tl.arange(0, GS)
    o_j = tl.arange(0, 8)
    o_c = tl.arange(0, 4)
    o_n = i_n * BN + tl.arange(0, BN)
    m_n = o_n < N
    steps = tl.cdiv(Kt, GS)
    s0 = i_s * st_split
    s1 = tl.minimum(s0 + st_split, steps)
    b_acc = tl.zeros([TM, BN], tl.float32)
    c4 = o_c[None, None, None, :]  # (1, 1, 1, 4) byte of the word
    j4 = o_j[None, :, None, None]  # (1, 8, 1, 1) bit of the byte
    for s in range(s0, s1):
        kt = s * GS
        m_t = kt + o_t < Kt  # (GS,)
        tile = i_m * Kt + kt + o_t  # (GS,)
        b_w = tl.load(MASKS + tile[:, None] * TM + o_r[None, :], mask=m_t[:, None], other=0)  # (GS, TM)
        b_base = tl.load(TILEOFF + tile, mask=m_t, other=0)  # (GS,)
        if ROWS == "scan":
            b_cnt = _popc(b_w, HW_POPC)
            b_start = b_base[:, None] + tl.cumsum(b_cnt, 1) - b_cnt  # (GS, TM)
        else:
            b_start = b_base[:, None] + tl.load(ROWSTART + tile[:, None] * TM + o_r[None, :], mask=m_t[:, None],
                                                other=0).to(tl.int32)
        w4 = b_w[:, None, :, None]  # (GS, 1, TM, 1)
        if RANK == "scan":
            b_below = _popc(w4 & ((1 << (8 * c4)) - 1), HW_POPC)  # (GS, 1, TM, 4): set bits before the byte
            b_byte = (w4 >> (8 * c4)) & 0xFF  # (GS, 1, TM, 4): this lane's byte; then shifts by constants
            b_bit = (b_byte >> j4) & 1  # (GS, 8, TM, 4)
            b_idx = (b_start[:, None, :, None] + b_below - 1) + tl.cumsum(b_bit, 1)
            b_v = tl.load(V + b_idx, mask=b_bit != 0, other=0.0)
        else:
            b_sh = w4 << (31 - (8 * c4 + j4))
            b_v = tl.load(V + b_start[:, None, :, None] + _popc(b_sh, HW_POPC) - 1, mask=b_sh < 0, other=0.0)
        b_dense = tl.reshape(tl.permute(b_v, (2, 0, 3, 1)), (TM, GS * 32))  # column = 32 t + 8 c + j
        o_k = kt * 32 + tl.arange(0, GS * 32)
        b_x = tl.load(X + o_n[None, :] * s_xn + o_k[:, None], mask=(o_k < K)[:, None] & m_n[None, :], other=0.0)
        b_acc = tl.dot(b_dense, b_x, b_acc)
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


def spmm_v2(x, p, split_k=None, gs=4, num_warps=4, num_stages=2, per_sm=4, rows="scan", rank="scan",
            hw_popc=True):
    N, K = x.shape
    M = p["shape"][0]
    Mt, Kt = triton.cdiv(M, TM), triton.cdiv(K, TK)
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
    key = x.device
    if key not in _CNT or _CNT[key].numel() < Mt * n_blocks:
        _CNT[key] = torch.zeros(max(8192, Mt * n_blocks), device=x.device, dtype=torch.int32)
    cnt = _CNT[key]
    _spmm_v2_kernel[(Mt, ns, n_blocks)](
        x, p["values"], p["masks"], p["tileoff"], p["rowstart"], out, ws, cnt, N, M, K, Kt, x.stride(0),
        out.stride(0), st_split, TM=TM, GS=gs, BN=bn, NS=ns, ROWS=rows, RANK=rank, HW_POPC=hw_popc,
        num_warps=num_warps, num_stages=num_stages)
    return out


if __name__ == "__main__":  # CPU check under the interpreter: TRITON_INTERPRET=1 python dev/spmm/v1_tileorder.py
    torch.manual_seed(0)
    for M, K, N, s in [(130, 300, 3, 0.8), (64, 256, 17, 0.5), (100, 96, 1, 0.0)]:
        w = torch.randn(M, K)
        w = (w * (torch.rand(M, K) >= s)).float()
        x = torch.randn(N, K)
        p = pack_v2(w)
        ref = x.double() @ w.double().T
        for rows in ("scan", "table"):
            for rank in ("scan", "popc"):
                for split in (1, 3):
                    y = spmm_v2(x, p, split_k=split, gs=2, rows=rows, rank=rank, hw_popc=False)
                    e = ((y.double() - ref).norm() / ref.norm()).item()
                    print(M, K, N, s, rows, rank, split, f"{e:.1e}")
                    assert e < 1e-2
