"""FlashAttention-2 forward for Hopper (sm_90): K and V tiles arrive by TMA (the bulk tensor copy engine).

Same function as `_flash_attn_fwd_kernel` in kernel.py (online softmax, exp2 with the scale folded in, a
mask-free interior loop and a masked loop for the diagonal or the ragged tail), restricted to what the
copy engine can address: contiguous (B, T, H, D) fp16/bf16 tensors, D in {64, 128}, Tq == Tk.

The tensors are seen as 2-D (B*T, H*D) row-major matrices; one TMA box is (rows, D) at column head*D. A box
that runs past a batch's last row reads the next batch's first rows (or zeros past the tensor's end); those
keys are masked out of the scores. Q and O move once per program, by masked pointer loads and stores.

The loop is a `tl.range` whose `num_stages` sets how many K/V tiles are in flight (the pipeliner allocates
the shared-memory ring and the mbarriers); with WS the loop is warp-specialised (Triton's Hopper pass: a
producer warp group issues the TMA loads, consumer warp groups run the wgmma and the softmax).

With HAS_LEFT the forward is a causal sliding window (row r sees keys r - WL .. r): the key loop covers only the band
of key blocks, masked at its left edge and on the diagonal (dev/attention/NOTES.md, "Hopper windowed forward").

`_hopper_flash_attn_bwd_dkdv_kernel` is the same treatment for kernel.py's dK/dV kernel: Q and dO tiles by TMA in a
pipelined query loop past the program's K and V, LSE and delta by pointers (dev/attention/NOTES.md, "Hopper backward
(dK/dV)").
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634


@triton.jit
def _hopper_fwd_inner(b_acc, b_m, b_l, b_q, desc_k, desc_v, row0, col_kv, o_m, o_n, lo, hi, T, scale_log2, WL,
                      BN: tl.constexpr, IS_CAUSAL: tl.constexpr, MASK: tl.constexpr, STAGES: tl.constexpr,
                      WS: tl.constexpr, HAS_LEFT: tl.constexpr):
    for start_n in tl.range(lo, hi, BN, num_stages=STAGES, warp_specialize=WS):
        start_n = tl.multiple_of(start_n, BN)
        b_k = desc_k.load([row0 + start_n, col_kv])  # (BN, D) by TMA
        b_s = tl.dot(b_q, b_k.T)  # (BM, BN) fp32, unscaled
        if MASK:
            o_k = start_n + o_n
            m_s = o_k[None, :] < T
            if IS_CAUSAL:
                m_s = m_s & (o_k[None, :] <= o_m[:, None])
            if HAS_LEFT:  # sliding window: row r sees keys r - WL .. r
                m_s = m_s & (o_k[None, :] >= o_m[:, None] - WL)
            b_s = tl.where(m_s, b_s * scale_log2, float("-inf"))
            b_m_new = tl.maximum(b_m, tl.max(b_s, 1))
            if HAS_LEFT:
                # the window's left edge block comes first: a row may have seen no key yet (m = -inf)
                b_m_use = tl.where(b_m_new == float("-inf"), 0.0, b_m_new)
            else:
                b_m_use = b_m_new
            b_s = b_s - b_m_use[:, None]
        else:
            # scale folded into the max and the exponent's argument: one FMA per element
            b_m_new = tl.maximum(b_m, tl.max(b_s, 1) * scale_log2)
            b_m_use = b_m_new
            b_s = b_s * scale_log2 - b_m_new[:, None]
        b_p = tl.math.exp2(b_s)
        b_alpha = tl.math.exp2(b_m - b_m_use)
        b_l = b_l * b_alpha + tl.sum(b_p, 1)
        b_acc = b_acc * b_alpha[:, None]
        b_v = desc_v.load([row0 + start_n, col_kv])  # (BN, D) by TMA
        b_acc = tl.dot(b_p.to(b_v.dtype), b_v, b_acc)
        b_m = b_m_new
    return b_acc, b_m, b_l


@triton.jit
def _hopper_fwd_sparse_inner(b_acc, b_m, b_l, b_q, desc_k, desc_v, row0, col_kv, o_n, p_idx, n, T, scale_log2,
                             BN: tl.constexpr, SK: tl.constexpr, MASK: tl.constexpr, STAGES: tl.constexpr,
                             WS: tl.constexpr):
    # block-sparse: step j visits key tile j % NSUB of the (j // NSUB)-th non-empty key block of this query block's row
    # of the block mask (masked.py's per-row lists); one flat loop, so WS can take it
    NSUB: tl.constexpr = SK // BN
    for j in tl.range(0, n, num_stages=STAGES, warp_specialize=WS):
        if NSUB == 1:  # compile-time
            start_n = tl.load(p_idx + j) * SK
        else:
            start_n = tl.load(p_idx + j // NSUB) * SK + (j % NSUB) * BN
        start_n = tl.multiple_of(start_n, BN)
        b_k = desc_k.load([row0 + start_n, col_kv])  # (BN, D) by TMA at the block's offset
        b_s = tl.dot(b_q, b_k.T)
        if MASK:  # ragged T only: keys past T (the next batch's rows or TMA zeros) are not seen
            b_s = tl.where((start_n + o_n)[None, :] < T, b_s * scale_log2, float("-inf"))
            # a tile wholly past T can only follow a valid one (its block's first tile), so m stays finite
            b_m_new = tl.maximum(b_m, tl.max(b_s, 1))
            b_s = b_s - b_m_new[:, None]
        else:
            b_m_new = tl.maximum(b_m, tl.max(b_s, 1) * scale_log2)
            b_s = b_s * scale_log2 - b_m_new[:, None]
        b_p = tl.math.exp2(b_s)
        b_alpha = tl.math.exp2(b_m - b_m_new)
        b_l = b_l * b_alpha + tl.sum(b_p, 1)
        b_acc = b_acc * b_alpha[:, None]
        b_v = desc_v.load([row0 + start_n, col_kv])
        b_acc = tl.dot(b_p.to(b_v.dtype), b_v, b_acc)
        b_m = b_m_new
    return b_acc, b_m, b_l


@triton.jit
def _hopper_flash_attn_fwd_kernel(Q, desc_k, desc_v, O, LSE, T, NROWS, scale_log2, WL, BLK_CNT, BLK_IDX,
                                  s_cb, s_ch, s_cm, s_ib, s_ih, s_im,
                                  HQ: tl.constexpr, GROUP: tl.constexpr, D: tl.constexpr,
                                  BM: tl.constexpr, BN: tl.constexpr, IS_CAUSAL: tl.constexpr,
                                  STAGES: tl.constexpr, WS: tl.constexpr, REV: tl.constexpr, EVEN_M: tl.constexpr,
                                  EVEN_N: tl.constexpr, ONE_LOOP: tl.constexpr, HAS_LEFT: tl.constexpr,
                                  SPARSE: tl.constexpr = False, SQ: tl.constexpr = 128, SK: tl.constexpr = 128,
                                  SPARSE_MASK: tl.constexpr = False):
    # grid (query blocks, batch x heads) as in kernel.py: neighbouring programs share one head's K and V in L2
    i_m = tl.num_programs(0) - 1 - tl.program_id(0) if REV else tl.program_id(0)
    i_bh = tl.program_id(1)
    i_b = i_bh // HQ
    i_h = i_bh % HQ
    row0 = i_b * T  # first row of this batch in the (B*T, H*D) view
    col_q = i_h * D
    col_kv = (i_h // GROUP) * D
    o_m = i_m * BM + tl.arange(0, BM)
    o_n = tl.arange(0, BN)
    o_d = tl.arange(0, D)
    m_m = o_m < T
    # Q by a descriptor made in the kernel: Triton's Hopper warp specialisation splits the (BM, D) tile between two
    # consumer warp groups of BM/2 rows, and rewrites an in-kernel descriptor's box to match; a host descriptor keeps
    # its BM-row box, so each half-copy would move twice the bytes its barrier expects (seen in the TTGIR; a hang).
    # A pointer load of Q is no way out: the pass then fails (WSLowerToken assertion).
    desc_q = tl.make_tensor_descriptor(Q, shape=[NROWS, HQ * D], strides=[HQ * D, 1], block_shape=[BM, D])
    b_q = desc_q.load([row0 + i_m * BM, col_q])  # (BM, D)
    b_m = tl.full([BM], float("-inf"), tl.float32)
    b_l = tl.zeros([BM], tl.float32)
    b_acc = tl.zeros([BM, D], tl.float32)
    if SPARSE:
        # block-sparse (masked.py's block_mask, no other option): only the non-empty key blocks of this query block's
        # row, each by TMA at its offset; mask arithmetic only for a ragged T (SPARSE_MASK)
        i_sq = i_m * BM // SQ
        cnt = tl.load(BLK_CNT + i_b * s_cb + i_h * s_ch + i_sq * s_cm)
        p_idx = BLK_IDX + i_b * s_ib + i_h * s_ih + i_sq * s_im
        b_acc, b_m, b_l = _hopper_fwd_sparse_inner(b_acc, b_m, b_l, b_q, desc_k, desc_v, row0, col_kv, o_n, p_idx,
                                                   cnt * (SK // BN), T, scale_log2, BN, SK, SPARSE_MASK, STAGES, WS)
    else:
        if IS_CAUSAL:
            # Tq == Tk: row r sees keys c <= r. Blocks left of the diagonal are seen in full by every row.
            lo_mask = i_m * BM
            hi = tl.minimum(T, (i_m + 1) * BM)
        else:
            lo_mask = T // BN * BN
            hi = T
        if HAS_LEFT:
            # sliding window (causal, Tq == Tk, masked.py's window_size=(WL, 0)): row r sees keys r - WL .. r. The band
            # of key blocks starts at the first row's left bound (rounded down to a block); blocks from the last row's
            # left bound (rounded up) to the diagonal are seen in full by every row; blocks left of the band are never
            # loaded. Only the left edge block(s) and the diagonal block(s) are masked.
            lo = tl.maximum(i_m * BM - WL, 0) // BN * BN
            lo_full = (tl.maximum(i_m * BM + BM - 1 - WL, 0) + BN - 1) // BN * BN
            lo_full = tl.minimum(tl.maximum(lo_full, lo), lo_mask)
        else:
            lo = 0
            lo_full = 0
        if ONE_LOOP:
            # one loop, masked throughout when a mask is needed at all: Triton 3.6's Hopper warp specialisation fails
            # to compile a function with two loops (an MLIR dominance assertion, seen 2026-11-26)
            b_acc, b_m, b_l = _hopper_fwd_inner(b_acc, b_m, b_l, b_q, desc_k, desc_v, row0, col_kv, o_m, o_n, lo, hi,
                                                T, scale_log2, WL, BN, IS_CAUSAL, IS_CAUSAL or not EVEN_N, STAGES, WS,
                                                HAS_LEFT)
        else:
            if HAS_LEFT:  # the window's left edge
                b_acc, b_m, b_l = _hopper_fwd_inner(b_acc, b_m, b_l, b_q, desc_k, desc_v, row0, col_kv, o_m, o_n, lo,
                                                    lo_full, T, scale_log2, WL, BN, IS_CAUSAL, True, STAGES, WS,
                                                    HAS_LEFT)
            b_acc, b_m, b_l = _hopper_fwd_inner(b_acc, b_m, b_l, b_q, desc_k, desc_v, row0, col_kv, o_m, o_n, lo_full,
                                                lo_mask, T, scale_log2, WL, BN, IS_CAUSAL, False, STAGES, WS, HAS_LEFT)
            if IS_CAUSAL or not EVEN_N:  # compile-time: with T % BN == 0 and no causal mask no block needs a mask
                b_acc, b_m, b_l = _hopper_fwd_inner(b_acc, b_m, b_l, b_q, desc_k, desc_v, row0, col_kv, o_m, o_n,
                                                    lo_mask, hi, T, scale_log2, WL, BN, IS_CAUSAL, True, STAGES, WS,
                                                    HAS_LEFT)
    if SPARSE:  # a row of an empty block row saw no key: output 0, LSE -inf (masked.py's convention)
        b_empty = b_l == 0.0
        b_o = (b_acc / tl.where(b_empty, 1.0, b_l)[:, None]).to(O.dtype.element_ty)
        b_lse = tl.where(b_empty, float("-inf"),
                         (b_m + tl.math.log2(tl.where(b_empty, 1.0, b_l))) * 0.6931471805599453)
    else:
        # every stored row saw at least its own key (Tq == Tk; causal or window), so l > 0 and m is finite
        b_o = (b_acc / b_l[:, None]).to(O.dtype.element_ty)
        b_lse = (b_m + tl.math.log2(b_l)) * 0.6931471805599453
    tl.store(LSE + i_bh.to(tl.int64) * T + o_m, b_lse, mask=m_m)
    p_o = O + (row0 + o_m).to(tl.int64)[:, None] * (HQ * D) + col_q + o_d[None, :]
    if EVEN_M:
        tl.store(p_o, b_o)
    else:  # a ragged last block: its rows past T belong to the next batch
        tl.store(p_o, b_o, mask=m_m[:, None])


@triton.jit
def _hopper_bwd_dkdv_inner(b_dk, b_dv, b_k, b_v, desc_q, desc_do, LSE, DELTA, i_b, i_h0, row0, o_n, o_m0, lo, hi, T,
                           scale_log2, HQ: tl.constexpr, D: tl.constexpr, BM: tl.constexpr, NG: tl.constexpr,
                           IS_CAUSAL: tl.constexpr, MASK: tl.constexpr, STAGES: tl.constexpr, WS: tl.constexpr):
    # NG > 1 flattens the walk over the group's query heads into this one loop (WS compiles one loop only)
    nblk = (hi - lo + BM - 1) // BM
    for j in tl.range(0, nblk * NG, num_stages=STAGES, warp_specialize=WS):
        if NG == 1:  # compile-time
            i_h = i_h0
            start_m = lo + j * BM
        else:
            g = j // nblk
            i_h = i_h0 + g
            start_m = lo + (j - g * nblk) * BM
        o_m = start_m + o_m0
        b_q = desc_q.load([row0 + start_m, i_h * D])  # (BM, D) by TMA
        b_do = desc_do.load([row0 + start_m, i_h * D])  # (BM, D) by TMA
        off = (i_b * HQ + i_h).to(tl.int64) * T
        if MASK:
            m_m = o_m < T
            b_lse2 = tl.load(LSE + off + o_m, mask=m_m, other=0.0) * 1.4426950408889634
            b_delta = tl.load(DELTA + off + o_m, mask=m_m, other=0.0)
        else:
            b_lse2 = tl.load(LSE + off + o_m) * 1.4426950408889634
            b_delta = tl.load(DELTA + off + o_m)
        b_st = tl.dot(b_k, b_q.T) * scale_log2  # (BN, BM)
        b_pt = tl.math.exp2(b_st - b_lse2[None, :])
        if MASK:
            # rows past T belong to the next batch (or are TMA zeros): their P^T columns are zeroed, so is dS^T
            m_s = m_m[None, :]
            if IS_CAUSAL:  # Tq == Tk: key c is seen by rows r >= c
                m_s = m_s & (o_n[:, None] <= o_m[None, :])
            b_pt = tl.where(m_s, b_pt, 0.0)
        b_dv = tl.dot(b_pt.to(b_do.dtype), b_do, b_dv)
        b_dpt = tl.dot(b_v, b_do.T)  # (BN, BM)
        b_dst = b_pt * (b_dpt - b_delta[None, :])
        b_dk = tl.dot(b_dst.to(b_q.dtype), b_q, b_dk)
    return b_dk, b_dv


@triton.jit
def _hopper_bwd_dkdv_sparse_inner(b_dk, b_dv, b_k, b_v, desc_q, desc_do, LSE, DELTA, i_b, i_h, row0, o_m0, p_idx, n,
                                  T, scale_log2, HQ: tl.constexpr, D: tl.constexpr, BM: tl.constexpr,
                                  SQ: tl.constexpr, MASK: tl.constexpr, STAGES: tl.constexpr, WS: tl.constexpr):
    # block-sparse: step j visits query tile j % NSUB of the (j // NSUB)-th query block that sees this key block (the
    # transposed block mask's list, masked.py's). Every row of a listed query block sees at least this block, so its
    # LSE is finite; only a ragged T needs a mask (rows past T)
    NSUB: tl.constexpr = SQ // BM
    off = (i_b * HQ + i_h).to(tl.int64) * T
    for j in tl.range(0, n, num_stages=STAGES, warp_specialize=WS):
        if NSUB == 1:  # compile-time
            start_m = tl.load(p_idx + j) * SQ
        else:
            start_m = tl.load(p_idx + j // NSUB) * SQ + (j % NSUB) * BM
        start_m = tl.multiple_of(start_m, BM)
        o_m = start_m + o_m0
        b_q = desc_q.load([row0 + start_m, i_h * D])  # (BM, D) by TMA at the block's offset
        b_do = desc_do.load([row0 + start_m, i_h * D])
        if MASK:
            m_m = o_m < T
            b_lse2 = tl.load(LSE + off + o_m, mask=m_m, other=0.0) * 1.4426950408889634
            b_delta = tl.load(DELTA + off + o_m, mask=m_m, other=0.0)
        else:
            b_lse2 = tl.load(LSE + off + o_m) * 1.4426950408889634
            b_delta = tl.load(DELTA + off + o_m)
        b_st = tl.dot(b_k, b_q.T) * scale_log2  # (BN, BM)
        b_pt = tl.math.exp2(b_st - b_lse2[None, :])
        if MASK:
            b_pt = tl.where(m_m[None, :], b_pt, 0.0)
        b_dv = tl.dot(b_pt.to(b_do.dtype), b_do, b_dv)
        b_dpt = tl.dot(b_v, b_do.T)
        b_dst = b_pt * (b_dpt - b_delta[None, :])
        b_dk = tl.dot(b_dst.to(b_q.dtype), b_q, b_dk)
    return b_dk, b_dv


@triton.jit
def _hopper_flash_attn_bwd_dkdv_kernel(Q, K, V, DO, DK, DV, LSE, DELTA, T, NROWS, scale, scale_log2,
                                       BLK_CNT, BLK_IDX, s_cb, s_ch, s_cm, s_ib, s_ih, s_im,
                                       HQ: tl.constexpr, HKV: tl.constexpr, GROUP: tl.constexpr, D: tl.constexpr,
                                       BM: tl.constexpr, BN: tl.constexpr, IS_CAUSAL: tl.constexpr,
                                       STAGES: tl.constexpr, WS: tl.constexpr, EVEN_M: tl.constexpr,
                                       ONE_LOOP: tl.constexpr, SPARSE: tl.constexpr = False, SQ: tl.constexpr = 128,
                                       SK: tl.constexpr = 128, SPARSE_MASK: tl.constexpr = False):
    # grid (key blocks, batch x kv heads) as kernel.py's dK/dV kernel: K and V of the block stay on chip, Q and dO
    # of every query head of the group stream past them by TMA
    i_n = tl.program_id(0)
    i_bh = tl.program_id(1)
    i_b = i_bh // HKV
    i_hk = i_bh % HKV
    row0 = i_b * T
    o_n = i_n * BN + tl.arange(0, BN)
    o_m0 = tl.arange(0, BM)
    o_d = tl.arange(0, D)
    # every descriptor made in the kernel: WS partitions the BN key rows between its consumer groups and rewrites an
    # in-kernel descriptor's box to match (the forward's finding for Q); a key block past T reads the next batch's
    # rows (or zeros), which only reach dK/dV rows that are not stored
    desc_k = tl.make_tensor_descriptor(K, shape=[NROWS, HKV * D], strides=[HKV * D, 1], block_shape=[BN, D])
    desc_v = tl.make_tensor_descriptor(V, shape=[NROWS, HKV * D], strides=[HKV * D, 1], block_shape=[BN, D])
    desc_q = tl.make_tensor_descriptor(Q, shape=[NROWS, HQ * D], strides=[HQ * D, 1], block_shape=[BM, D])
    desc_do = tl.make_tensor_descriptor(DO, shape=[NROWS, HQ * D], strides=[HQ * D, 1], block_shape=[BM, D])
    b_k = desc_k.load([row0 + i_n * BN, i_hk * D])  # (BN, D)
    b_v = desc_v.load([row0 + i_n * BN, i_hk * D])  # (BN, D)
    b_dk = tl.zeros([BN, D], tl.float32)
    b_dv = tl.zeros([BN, D], tl.float32)
    i_h0 = i_hk * GROUP
    if SPARSE:
        # block-sparse: per query head of the group, the query blocks that see this key block (one loop each; the WS
        # variant needs GROUP == 1)
        i_sk = i_n * BN // SK
        for g in range(GROUP):
            cnt = tl.load(BLK_CNT + i_b * s_cb + (i_h0 + g) * s_ch + i_sk * s_cm)
            p_idx = BLK_IDX + i_b * s_ib + (i_h0 + g) * s_ih + i_sk * s_im
            b_dk, b_dv = _hopper_bwd_dkdv_sparse_inner(b_dk, b_dv, b_k, b_v, desc_q, desc_do, LSE, DELTA, i_b,
                                                       i_h0 + g, row0, o_m0, p_idx, cnt * (SQ // BM), T, scale_log2,
                                                       HQ, D, BM, SQ, SPARSE_MASK, STAGES, WS)
    else:
        if IS_CAUSAL:
            # the first query block that sees this key block, and the first that sees all of its keys
            lo = (i_n * BN) // BM * BM
            lo_full = tl.minimum((i_n * BN + BN - 1 + BM - 1) // BM * BM, T // BM * BM)
            lo_full = tl.maximum(lo_full, lo)
        else:
            lo = 0
            lo_full = 0
        hi_full = T // BM * BM
        if ONE_LOOP:
            b_dk, b_dv = _hopper_bwd_dkdv_inner(b_dk, b_dv, b_k, b_v, desc_q, desc_do, LSE, DELTA, i_b, i_h0, row0, o_n,
                                                o_m0, lo, T, T, scale_log2, HQ, D, BM, GROUP, IS_CAUSAL,
                                                IS_CAUSAL or not EVEN_M, STAGES, WS)
        else:
            for g in range(GROUP):
                # the diagonal blocks (causal only), then the blocks every key sees in full, then the ragged tail
                if IS_CAUSAL:
                    b_dk, b_dv = _hopper_bwd_dkdv_inner(b_dk, b_dv, b_k, b_v, desc_q, desc_do, LSE, DELTA, i_b,
                                                        i_h0 + g, row0, o_n, o_m0, lo, lo_full, T, scale_log2, HQ, D,
                                                        BM, 1, IS_CAUSAL, True, STAGES, WS)
                b_dk, b_dv = _hopper_bwd_dkdv_inner(b_dk, b_dv, b_k, b_v, desc_q, desc_do, LSE, DELTA, i_b, i_h0 + g,
                                                    row0, o_n, o_m0, lo_full, hi_full, T, scale_log2, HQ, D, BM, 1,
                                                    IS_CAUSAL, False, STAGES, WS)
                if not EVEN_M:
                    b_dk, b_dv = _hopper_bwd_dkdv_inner(b_dk, b_dv, b_k, b_v, desc_q, desc_do, LSE, DELTA, i_b,
                                                        i_h0 + g, row0, o_n, o_m0, tl.maximum(hi_full, lo_full), T,
                                                        T, scale_log2, HQ, D, BM, 1, IS_CAUSAL, True, STAGES, WS)
    b_dk = b_dk * scale
    m_n = (o_n < T)[:, None]
    p_dk = DK + (row0 + o_n).to(tl.int64)[:, None] * (HKV * D) + i_hk * D + o_d[None, :]
    p_dv = DV + (row0 + o_n).to(tl.int64)[:, None] * (HKV * D) + i_hk * D + o_d[None, :]
    tl.store(p_dk, b_dk.to(DK.dtype.element_ty), mask=m_n)
    tl.store(p_dv, b_dv.to(DV.dtype.element_ty), mask=m_n)


# Tiles per (head dim, causal): (BM, BN, num_warps, loop stages, WS). Measured on an H100 SXM (dev/attention/NOTES.md,
# "Hopper forward (TMA/WS)", run H2): D128 non-causal is fastest warp-specialised (one TMA producer group and two
# consumer groups of 64 rows; WS needs num_warps=4 and launches 12), D128 causal without WS (the WS kernel must mask
# every block, its single loop cannot skip the mask). With WS, 3 loop stages gave NaN (Triton 3.6), so 2. kernel.py
# dispatches here only where these tiles beat its own (HOPPER_MIN_T there).
# D64 is not dispatched here (no tile beat kernel.py's by more than noise); its entries are the best new tiles.
def _hopper_table(D: int, T: int, causal: bool) -> dict:
    if D <= 64:
        t = (128, 64, 4, 3, False) if causal else (128, 128, 4, 2, True)
    else:
        t = (128, 128, 8, 3, False) if causal else (128, 128, 4, 2, True)
    return {"BM": t[0], "BN": t[1], "num_warps": t[2], "STAGES": t[3], "WS": t[4], "ONE_LOOP": t[4], "REV": causal}


# Sliding-window tiles (left window, causal). Measured on an H100 SXM at D128, window 1023, T = 2048 / 4096 / 16384
# (dev/attention/NOTES.md, "Hopper windowed forward", run W1): 64x64, 4 warps, 3 loop stages was fastest everywhere
# (113 KB of shared memory: two CTAs an SM, one's softmax and prologue overlap the other's wgmma); the 128-row tiles,
# WS included, were 5-15% slower than masked.py's portable kernel (short ~9-block loops); 4 stages (one CTA an SM) 1.5x
# slower.
def _hopper_window_table(D: int, T: int) -> dict:
    return {"BM": 64, "BN": 64, "num_warps": 4, "STAGES": 3, "WS": False, "ONE_LOOP": False, "REV": False}


# Block-sparse forward tiles (block mask of 128 x 128 blocks, no other option). Measured on an H100 SXM at B2 T8192 H16
# D128 bf16, 25% / 50% of the blocks (dev/attention/NOTES.md, "Hopper block-sparse", run S1): WS 128x128 at 2 stages
# (one flat loop over the row's non-empty blocks, no mask arithmetic for T a multiple of the block) 0.57 / 1.06 ms,
# the non-WS 128x128 w8 tiles 0.68-0.69 / 1.23-1.25, 64x64 w4 0.65-0.73 / 1.24-1.31, masked.py's portable 0.69 / 1.29.
def _hopper_sparse_table(D: int, T: int) -> dict:
    t = (128, 128, 4, 2, True)
    return {"BM": t[0], "BN": t[1], "num_warps": t[2], "STAGES": t[3], "WS": t[4], "ONE_LOOP": t[4], "REV": False}


def _scratch(size: int, alignment: int, stream):
    # global memory for the kernel's in-kernel TMA descriptor (128 bytes a program), from torch's caching allocator
    return torch.empty(size, dtype=torch.int8, device="cuda")


def _ensure_allocator() -> None:
    """tl.make_tensor_descriptor needs a Triton allocator; set ours only where the caller has set none."""
    from triton.runtime import _allocation

    if isinstance(_allocation._allocator.get(), _allocation.NullAllocator):
        triton.set_allocator(_scratch)


def _launch_config(q: torch.Tensor, config: dict | None, table: dict) -> tuple[int, int, int, dict]:
    """(BM, BN, num_warps, the kernel's other constexprs) from `config` (dev sweeps) or the launch table; sets up
    the allocator the in-kernel descriptors need."""
    cfg = dict(config) if config is not None else table
    if q.device.type == "cuda":
        _ensure_allocator()
    return cfg.pop("BM"), cfg.pop("BN"), cfg.pop("num_warps"), cfg


def hopper_supported(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether `hopper_flash_attn_fwd` can take these inputs (the caller checks the GPU and the interpreter)."""
    B, Tq, Hq, D = q.shape
    Tk = k.shape[1]
    return (q.dtype in (torch.float16, torch.bfloat16) and D in (64, 128) and Tq == Tk
            and all(t.is_contiguous() and t.data_ptr() % 16 == 0 for t in (q, k, v)))


def _sparse_launch(sparse, BM: int, BN: int, q: torch.Tensor) -> tuple[tuple, dict]:
    """The kernels' block-sparse arguments from masked.py's (count, indices, count strides, index strides, block
    size) - or dummies - and the constexprs; the tiles must divide the blocks."""
    if sparse is None:
        return (q, q, 0, 0, 0, 0, 0, 0), {}
    cnt, idx, c_str, i_str, (SQ, SK) = sparse
    assert SQ % BM == 0 and SK % BN == 0, ((SQ, SK), (BM, BN))
    T = q.shape[1]
    return (cnt, idx, *c_str, *i_str), dict(SPARSE=True, SQ=SQ, SK=SK, SPARSE_MASK=T % SQ != 0 or T % SK != 0)


def hopper_flash_attn_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, softmax_scale: float,
                          config: dict | None = None, window_left: int = -1,
                          sparse: tuple | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward on sm_90 by TMA. q: (B, T, Hq, D), k, v: (B, T, Hkv, D), contiguous. Returns o (B, T, Hq, D)
    and lse (B, Hq, T) fp32 (natural log). `config` overrides the tile table (for the dev sweeps).
    window_left >= 0 (with causal): a sliding window, row r sees keys r - window_left .. r (flash-attn's
    window_size=(window_left, 0)); only the band of key blocks is visited.
    sparse (not causal, no window): block-sparse attention from masked.py's per-row lists of the block mask, a tuple
    (count, indices, count strides (b, h, row), index strides (b, h, row), (block_q, block_k)) as block_lists.py's
    `sparse_args` returns them; only the non-empty key blocks are visited, an empty row gives 0 and LSE -inf."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    B, T, Hq, D = q.shape
    Hkv = k.shape[2]
    window = window_left >= 0
    assert causal or not window, "a left window is supported with causal=True (right side 0) only"
    assert sparse is None or not (causal or window), "block-sparse runs with no other mask"
    table = (_hopper_window_table(D, T) if window else _hopper_sparse_table(D, T) if sparse is not None
             else _hopper_table(D, T, causal))
    BM, BN, num_warps, cfg = _launch_config(q, config, table)
    sp_args, sp_cfg = _sparse_launch(sparse, BM, BN, q)
    # causal: the mask-free loop ends at the query block's first row, which must be a multiple of BN
    assert not causal or BM % BN == 0 or cfg["ONE_LOOP"], (BM, BN)
    o = torch.empty_like(q)
    lse = torch.empty((B, Hq, T), device=q.device, dtype=torch.float32)
    k2, v2 = k.view(B * T, Hkv * D), v.view(B * T, Hkv * D)
    desc_k = TensorDescriptor.from_tensor(k2, [BN, D])
    desc_v = TensorDescriptor.from_tensor(v2, [BN, D])
    grid = (triton.cdiv(T, BM), B * Hq)
    _hopper_flash_attn_fwd_kernel[grid](q, desc_k, desc_v, o, lse, T, B * T, softmax_scale * LOG2E,
                                        max(window_left, 0), *sp_args, HQ=Hq, GROUP=Hq // Hkv, D=D, BM=BM, BN=BN,
                                        IS_CAUSAL=causal, EVEN_M=T % BM == 0, EVEN_N=T % BN == 0, HAS_LEFT=window,
                                        num_warps=num_warps, **sp_cfg, **cfg)
    return o, lse


# dK/dV tiles (BM query rows a step, BN keys a program). Measured at D128 (dev/attention/NOTES.md, "Hopper backward
# (dK/dV)", runs B1-B2 on an H200): 64x128, 8 warps, no WS, 3 loop stages was best or within 1% (whole backward
# +7-13% over kernel.py's dK/dV at T = 2048-16384); 4 stages the same; WS (one loop, 12 warps) at 2 stages +6-11%,
# at 3 stages NaN (as in the forward). BM128 spills.
# D64 is not dispatched here and was not timed.
def _hopper_bwd_table(D: int, T: int, causal: bool) -> dict:
    return {"BM": 64, "BN": 128, "num_warps": 8, "STAGES": 3, "WS": False, "ONE_LOOP": False}


# Block-sparse dK/dV (the transposed block lists; 128 x 128 blocks): 64 query rows a step inside each 128-row query
# block, 8 warps. 5 loop stages: the pipeliner gives the index load a stage of its own, so 5 stages = 3 Q/dO buffers
# (165 KB, the dense table's 3-stage ring); 3 stages = 2 buffers. Run S1 (H100, B2 T8192 H16, whole backward with
# masked.py's dQ): s5 2.02 / 3.78 ms at 25% / 50%, s3 2.11 / 3.86, portable 2.17 / 3.95.
def _hopper_sparse_bwd_table(D: int, T: int) -> dict:
    return {"BM": 64, "BN": 128, "num_warps": 8, "STAGES": 5, "WS": False, "ONE_LOOP": False}


def hopper_flash_attn_bwd_dkdv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, do: torch.Tensor,
                               lse: torch.Tensor, delta: torch.Tensor, causal: bool, softmax_scale: float,
                               config: dict | None = None,
                               sparse: tuple | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """dK, dV on sm_90 by TMA. q, do: (B, T, Hq, D), k, v: (B, T, Hkv, D), contiguous; lse, delta (B, Hq, T) fp32.
    Returns dk, dv like k, v. `config` overrides the tile table (for the dev sweeps). sparse (not causal): the
    TRANSPOSED block mask's lists from block_lists.py's `sparse_args` (per key block, the query blocks that see it),
    with the block size (block_q, block_k); only those query blocks are visited."""
    B, T, Hq, D = q.shape
    Hkv = k.shape[2]
    assert sparse is None or not causal, "block-sparse runs with no other mask"
    table = _hopper_sparse_bwd_table(D, T) if sparse is not None else _hopper_bwd_table(D, T, causal)
    BM, BN, num_warps, cfg = _launch_config(q, config, table)
    if sparse is None:
        sp_args, sp_cfg = (q, q, 0, 0, 0, 0, 0, 0), {}
    else:  # the kernel walks query tiles of BM inside query blocks of SQ, in key programs of BN inside blocks of SK
        cnt, idx, c_str, i_str, (SQ, SK) = sparse
        assert SQ % BM == 0 and SK % BN == 0 and not cfg.get("ONE_LOOP"), ((SQ, SK), (BM, BN), cfg)
        sp_args = (cnt, idx, *c_str, *i_str)
        sp_cfg = dict(SPARSE=True, SQ=SQ, SK=SK, SPARSE_MASK=T % SQ != 0 or T % SK != 0)
    # causal: the diagonal's masked loop must start on a query block boundary that a key block's start lies in
    assert not causal or BN % BM == 0 or cfg["ONE_LOOP"], (BM, BN)
    dk = torch.empty_like(k)
    dv = torch.empty_like(v)
    grid = (triton.cdiv(T, BN), B * Hkv)
    _hopper_flash_attn_bwd_dkdv_kernel[grid](q, k, v, do, dk, dv, lse, delta, T, B * T, softmax_scale,
                                             softmax_scale * LOG2E, *sp_args, HQ=Hq, HKV=Hkv, GROUP=Hq // Hkv, D=D,
                                             BM=BM, BN=BN, IS_CAUSAL=causal, EVEN_M=T % BM == 0, num_warps=num_warps,
                                             **sp_cfg, **cfg)
    return dk, dv


__all__ = ["hopper_flash_attn_bwd_dkdv", "hopper_flash_attn_fwd", "hopper_supported"]
