"""dev/spmm entry 4 (NOTES.md): kernel.py rewritten for tile-ordered values (format version 2, v3_format.py), row
starts by a cross-warp scan, the split count a run-time argument. Measured slower than kernel.py (0.39x against
0.66x cuBLAS on Llama-3-8B gate+up, N = 16, 80%): kept here as the record, not in the library.

Flash-LLM's "load as sparse, compute as dense" SpMM in Triton: y = x W^T for skinny x (N = 1..64 rows).

One program owns a row block of TILE_M = 64 weight rows (the dot's M: one wgmma) and a range of 256-column groups
(split-K), for one block of BN <= 64 rows of x. A loop step handles GS = 4 tiles of 64 x 32; for each tile it

1. loads the tile's 64 mask words (bitmap) or builds them from the rows' next column indices (csl);
2. finds where each row's values start: bitmap (format version 2) stores a tile's values contiguously, so the
   start is the tile's offset + the exclusive prefix sum of the rows' popcounts (tl.cumsum over the 64 rows);
   csl keeps one running pointer per row, advanced by the popcount of its word;
3. expands the tile in registers: element (r, c) is non-zero iff bit c of row r's word is set, and its value sits
   at start[r] + popcount(word << (31 - c)) - 1 (the popcount counts the set bits at columns <= c). The value is
   gathered from the compressed stream (L1/L2 serve the re-reads; HBM sees each compressed byte once). With
   tile-ordered values the 8 rows a warp gathers from lie in ~100 bytes (80% sparsity): one or two L1 wavefronts
   per gather, where row-ordered values (format 1) cost ~8 and bounded the kernel (dev/spmm/NOTES.md);
4. multiplies the dense tile by x's (32, BN) slice on the tensor cores (tl.dot, fp32 accumulation); zeros cost
   MACs, which are free in this memory-bound regime.

Flash-LLM scatters words into shared memory instead; Triton cannot address shared memory, so the expansion is a
gather, and every element pays a shift, a popcount and a predicated load rather than every non-zero a store.

Split-K (NS > 1) writes fp32 partials; the last split of each output tile to arrive (an atomic counter, reset by
that program) sums them, so split-K adds no launch (the same scheme as kernels/gemm/flat).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
from v3_format import GROUP_TILES, TILE_K, TILE_M, PackedWeight

from ioaware.kernels._dispatch import interpreting
from ioaware.kernels.triton_utils import upcast

try:  # hardware popcount on CUDA; the interpreter has no libdevice, so it counts bits with shifts and masks
    from triton.language.extra import libdevice
except ImportError:  # pragma: no cover - every Triton 3.x ships it
    libdevice = None


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
def _expand(V, b_mask, b_start, HW_POPC: tl.constexpr):
    """The dense (TM, 32) tile of one 32-column tile: b_mask (TM,) words, b_start (TM,) where each row's values
    start. Computed as (8, TM, 4), column = 4 j + c, because Triton then spreads a warp over 8 rows x 4 columns:
    a warp's gather touches ~8 rows' values (8 L1 wavefronts) instead of 32 (TM along the lanes), and a thread
    holds 2 rows instead of 16 (32 columns along the lanes: every per-row load and popcount replicated 16 times,
    17 SASS instructions per element against 10.6 here; README.md has the measurements)."""
    o_j = tl.arange(0, 8)
    o_c = tl.arange(0, 4)
    sh = 31 - (o_j[:, None, None] * 4 + o_c[None, None, :])  # (8, 1, 4): moves bit 4j+c to the sign bit
    b_sh = b_mask[None, :, None] << sh  # (8, TM, 4): sign bit = non-zero, popcount = rank in the row + 1
    b_w = tl.load(V + b_start[None, :, None] + _popc(b_sh, HW_POPC) - 1, mask=b_sh < 0, other=0.0)
    return tl.reshape(tl.permute(b_w, (1, 0, 2)), (b_mask.shape[0], 32))


@triton.jit
def _csl_word(b_tile, b_bit, t: tl.constexpr):
    """(TM,) mask word of the step's tile t from the rows' column entries; distinct bits, so the int64 sum is
    their OR, truncated to the int32 word."""
    return tl.sum(tl.where(b_tile == t, b_bit, 0), 1).to(tl.int32)


@triton.jit
def _tile_starts(ROWOFF, tile, last, b_mask, HW_POPC: tl.constexpr):
    """(TM,) where each row's values start in a tile-ordered (bitmap) weight: the tile's offset + the exclusive
    prefix sum of the rows' popcounts (a scan across the program's warps, once per 32 columns: no per-row offset
    table in memory)."""
    b_cnt = _popc(b_mask, HW_POPC)
    return tl.load(ROWOFF + tl.minimum(tile, last)) + tl.cumsum(b_cnt, 0) - b_cnt


@triton.jit
def _x_tile(X, o_n, m_n, s_xn, o_k, K):
    return tl.load(X + o_n[None, :] * s_xn + o_k[:, None], mask=(o_k < K)[:, None] & m_n[None, :], other=0.0)


@triton.jit
def _spmm_lscd_kernel(X, V, MASKS, COLS, ROWOFF, OUT, WS, CNT, N, M, K, Kt, Kg, s_xn, s_on, st_split, NS,
                      TM: tl.constexpr, TK: tl.constexpr, G: tl.constexpr, GS: tl.constexpr, BN: tl.constexpr,
                      CSL: tl.constexpr, SPLIT: tl.constexpr, HW_POPC: tl.constexpr, UPCAST: tl.constexpr,
                      PRECISION: tl.constexpr):
    # A step expands GS (1, 2 or 4) tiles before their dots, so GS * TM * TK gathers are in flight together: with
    # one tile per step the loop was latency-bound (mask load -> gather -> dot: 0.3x cuBLAS on an H200).
    SPG: tl.constexpr = G // GS  # steps per column group; a step never straddles two groups
    i_m = tl.program_id(0)
    i_s = tl.program_id(1)
    i_n = tl.program_id(2)
    o_r = tl.arange(0, TM)
    o_c = tl.arange(0, TK)
    o_n = i_n * BN + tl.arange(0, BN)
    m_n = o_n < N
    tl.static_assert(TK == 32, "one 32-bit mask word per tile row")
    s0 = i_s * st_split
    s1 = tl.minimum(s0 + st_split, tl.cdiv(Kt, GS))
    b_acc = tl.zeros([TM, BN], tl.float32)
    b_ptr = tl.zeros([TM], tl.int32)
    last = tl.num_programs(0) * Kt  # the bitmap offsets' sentinel: a step's tail tiles (zero words) clamp to it
    for s in range(s0, s1):
        kt = s * GS
        if CSL:
            p_row = ROWOFF + (i_m * Kg + s // SPG) * TM + o_r
            b_ptr = tl.where(s % SPG == 0, tl.load(p_row), b_ptr)  # (TM,) each row's next value, reset per group
            # words from column indices: a row has at most GS * TK entries in the step; of its next GS * TK
            # entries, those with a column inside the step belong to it (earlier ones were consumed)
            b_end = tl.load(p_row + 1)  # (TM,) the next row's start
            o_j = tl.arange(0, GS * TK)
            p_j = b_ptr[:, None] + o_j[None, :]  # (TM, GS*TK)
            m_j = p_j < b_end[:, None]
            b_col = tl.load(COLS + p_j, mask=m_j, other=0).to(tl.int32) - (s % SPG) * (GS * TK)
            m_j = m_j & (b_col < GS * TK)
            b_bit = tl.where(m_j, tl.full([TM, GS * TK], 1, tl.int64) << (b_col % TK).to(tl.int64), 0)
            b_tile = b_col // TK
            m0 = _csl_word(b_tile, b_bit, 0)
            c0 = _popc(m0, HW_POPC)
            st0 = b_ptr
        else:
            t0 = i_m * Kt + kt  # tile-ordered values: each tile's start + the prefix sum of its rows' counts
            p_m = MASKS + t0 * TM + o_r
            m0 = tl.load(p_m)  # (TM,) int32 words
            st0 = _tile_starts(ROWOFF, t0, last, m0, HW_POPC)
        w0 = _expand(V, m0, st0, HW_POPC)
        if GS >= 2:
            if CSL:
                m1 = _csl_word(b_tile, b_bit, 1)
                c1 = _popc(m1, HW_POPC)
                st1 = st0 + c0
            else:
                m1 = tl.load(p_m + TM, mask=o_r * 0 + kt + 1 < Kt, other=0)
                st1 = _tile_starts(ROWOFF, t0 + 1, last, m1, HW_POPC)
            w1 = _expand(V, m1, st1, HW_POPC)
        if GS >= 4:
            if CSL:
                m2 = _csl_word(b_tile, b_bit, 2)
                m3 = _csl_word(b_tile, b_bit, 3)
                c2 = _popc(m2, HW_POPC)
                c3 = _popc(m3, HW_POPC)
                st2 = st1 + c1
                st3 = st2 + c2
                b_ptr = st3 + c3
            else:
                m2 = tl.load(p_m + 2 * TM, mask=o_r * 0 + kt + 2 < Kt, other=0)
                m3 = tl.load(p_m + 3 * TM, mask=o_r * 0 + kt + 3 < Kt, other=0)
                st2 = _tile_starts(ROWOFF, t0 + 2, last, m2, HW_POPC)
                st3 = _tile_starts(ROWOFF, t0 + 3, last, m3, HW_POPC)
            w2 = _expand(V, m2, st2, HW_POPC)
            w3 = _expand(V, m3, st3, HW_POPC)
        elif GS == 2:
            if CSL:
                b_ptr = st1 + c1
        elif CSL:
            b_ptr = st0 + c0
        # the dense tiles times x's (TK, BN) slices on the tensor cores
        o_k = kt * TK + o_c
        b_acc = tl.dot(upcast(w0, UPCAST), upcast(_x_tile(X, o_n, m_n, s_xn, o_k, K), UPCAST), b_acc,
                       input_precision=PRECISION)
        if GS >= 2:
            b_acc = tl.dot(upcast(w1, UPCAST), upcast(_x_tile(X, o_n, m_n, s_xn, o_k + TK, K), UPCAST), b_acc,
                           input_precision=PRECISION)
        if GS >= 4:
            b_acc = tl.dot(upcast(w2, UPCAST), upcast(_x_tile(X, o_n, m_n, s_xn, o_k + 2 * TK, K), UPCAST), b_acc,
                           input_precision=PRECISION)
            b_acc = tl.dot(upcast(w3, UPCAST), upcast(_x_tile(X, o_n, m_n, s_xn, o_k + 3 * TK, K), UPCAST), b_acc,
                           input_precision=PRECISION)
    o_m = i_m * TM + o_r
    m_y = (o_m < M)[:, None] & m_n[None, :]
    p_y = o_n[None, :] * s_on + o_m[:, None]  # (TM, BN) into y (N, M): the TM axis is contiguous
    if not SPLIT:  # NS (the number of splits) is a run-time value: one compiled kernel serves every split
        tl.store(OUT + p_y, b_acc.to(OUT.dtype.element_ty), mask=m_y)
    else:
        n_rows = tl.num_programs(2) * BN
        tl.store(WS + i_s * n_rows * M + p_y, b_acc, mask=m_y)
        # barrier + acq_rel: this program's partial is visible before the count moves; the last split to arrive
        # therefore sees every partial
        tl.debug_barrier()
        i_t = i_n * tl.num_programs(0) + i_m
        done = tl.atomic_add(CNT + i_t, 1, sem="acq_rel")
        if done == NS - 1:
            b_sum = tl.zeros([TM, BN], tl.float32)
            for j in range(NS):
                b_sum += tl.load(WS + j * n_rows * M + p_y, mask=m_y, other=0.0)
            tl.store(OUT + p_y, b_sum.to(OUT.dtype.element_ty), mask=m_y)
            tl.atomic_xchg(CNT + i_t, 0)  # ready for the next call: launches never re-zero the counters


_COUNTERS: dict = {}


def _counters(device: torch.device, n: int) -> torch.Tensor:
    """Per-output-tile arrival counters, zero between calls (each call's last split resets its own). Allocated
    once per device and grown, so a CUDA graph captures a buffer that stays valid."""
    c = _COUNTERS.get(device)
    if c is None or c.numel() < n:
        c = torch.zeros(max(n, 8192), device=device, dtype=torch.int32)
        _COUNTERS[device] = c
    return c


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def choose_split(Mt: int, Kg: int, n_blocks: int, sms: int, per_sm: int = 4) -> int:
    """Column-group splits so the grid holds about `per_sm` programs per SM: at small N the row blocks alone
    leave SMs idle (Llama-3-8B's O projection has 64 row blocks for 132 SMs), and each resident program adds
    gathers in flight, which is what a memory-latency-bound loop needs."""
    programs = Mt * n_blocks
    return max(1, min(Kg, -(-per_sm * sms // programs)))


def spmm_lscd(x: torch.Tensor, w: PackedWeight, split_k: int | None = None, gs: int = 4, num_warps: int = 4,
              num_stages: int = 2, per_sm: int = 4) -> torch.Tensor:
    """y (N, M) = x (N, K) @ W^T for a packed W; x contiguous in its last dimension, dtype = w.dtype.
    gs: 32-column tiles expanded per step (1, 2, 4 or 8)."""
    N, K = x.shape
    M = w.shape[0]
    Mt, Kt, Kg = w.grid
    bn = max(16, triton.next_power_of_2(min(N, 64)))
    n_blocks = triton.cdiv(N, bn)
    if split_k is None:
        sms = 4 if x.device.type != "cuda" else _sm_count(x.device.index or 0)
        split_k = choose_split(Mt, Kg, n_blocks, sms, per_sm)
    g_split = triton.cdiv(Kg, max(1, min(split_k, Kg)))
    ns = triton.cdiv(Kg, g_split)
    out = torch.empty((N, M), device=x.device, dtype=x.dtype)
    ws = torch.empty((ns, n_blocks * bn, M), device=x.device, dtype=torch.float32) if ns > 1 else out
    cnt = _counters(x.device, Mt * n_blocks) if ns > 1 else out
    csl = w.index == "csl"
    idx = w.cols if csl else w.masks
    _spmm_lscd_kernel[(Mt, ns, n_blocks)](
        x, w.values, idx, idx, w.rowoff, out, ws, cnt, N, M, K, Kt, Kg, x.stride(0), out.stride(0),
        g_split * (GROUP_TILES // gs), ns, TM=TILE_M, TK=TILE_K, G=GROUP_TILES, GS=gs, BN=bn, CSL=csl, SPLIT=ns > 1,
        HW_POPC=not interpreting(), UPCAST=interpreting() and x.dtype == torch.bfloat16,
        PRECISION="ieee" if x.dtype == torch.float32 else "tf32", num_warps=num_warps, num_stages=num_stages)
    return out
