"""FlashAttention-2 with masks and score modifiers computed tile by tile: the kernels behind flash_attn's options.

The plain path (no option, or causal only) runs kernel.py unchanged; every option here is a constexpr flag of
one more general kernel, so each combination compiles only the arithmetic it uses.

Which keys a query row r (0-based within its sequence, Tq rows, Tk keys, off = Tk - Tq) sees:
    right_r = r + off + WR          (causal: WR = 0; window right: WR = right)      HAS_RIGHT
    right_r = max(right_r, P - 1)   (prefix-LM: the first P keys are seen by every row)   HAS_PREFIX
    left_r  = r + off - WL          (window left)                                     HAS_LEFT
    visible: left_r <= c <= right_r and c < Tk; with a block mask, only the non-empty blocks are visited.
Both bounds grow with r, so for a tile of rows the visible keys form one band: key tiles outside the band are
never loaded (skipped, not zeroed), tiles inside it for every row run without mask arithmetic, and only the two
edges are masked. The backward's dK/dV kernel walks the same band transposed (rows that see a key tile).
Score modifiers: softcap s = cap * tanh(x / cap) (x = q.k * scale), ALiBi s -= slope * |r + off - c|; dropout
keeps an element when Philox(seed, row id * max_seqlen_k + c) >= p, and the backward regenerates the same mask.
Block-sparse: the per-row lists of non-empty blocks are built (and cached per mask) on the host by block_lists.py.
Varlen (IS_VARLEN): q, k, v are packed [1, total, H, D]; the batch index of a program selects the sequence's
rows from cu_seqlens, and programs past a sequence's end return at once.
The backward is deterministic: dK/dV and dQ are each written by exactly one program, with no atomics.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..._dispatch import interpreting
from ...triton_utils import LOG2E, upcast
from .block_lists import sparse_args
from .kernel import (
    _flash_attn_bwd_preprocess_kernel,
    _head_dim_block,
    _load_query_rows,
    _precision,
    _upcast,
    hopper_eligible,
    tile_table,
)

BIG = 1 << 30  # "no bound": a window side of -1 (row and key indices stay far below it)


@triton.jit
def _tanh(x):
    # tanh from exp (no libdevice, so the interpreter runs it too): saturates to +-1 without NaN
    return 1.0 - 2.0 / (tl.math.exp(2.0 * x) + 1.0)


@triton.jit
def _scores(b_raw, b_r, b_c, off, qk_scale, cap_log2, slope_log2, HAS_ALIBI: tl.constexpr, SOFTCAP: tl.constexpr):
    """Scores in log2 units from the raw q.k tile; b_r / b_c broadcast to the tile (either orientation).
    Returns (scores, tanh) - the tanh is the softcap's, needed by the backward (0 without softcap)."""
    if SOFTCAP:
        b_t = _tanh(b_raw * qk_scale)  # qk_scale = scale / cap
        b_s = b_t * cap_log2
    else:
        b_t = b_raw * 0.0
        b_s = b_raw * qk_scale  # qk_scale = scale * log2 e
    if HAS_ALIBI:
        b_s = b_s - slope_log2 * tl.abs(b_r + off - b_c).to(tl.float32)
    return b_s, b_t


@triton.jit
def _visible(b_r, b_c, Tq, Tk, off, WL, WR, P, CHECK_ROWS: tl.constexpr, HAS_LEFT: tl.constexpr,
             HAS_RIGHT: tl.constexpr, HAS_PREFIX: tl.constexpr):
    m = b_c < Tk
    if CHECK_ROWS:
        m = m & (b_r < Tq)
    if HAS_RIGHT:
        right = b_r + off + WR
        if HAS_PREFIX:
            right = tl.maximum(right, P - 1)
        m = m & (b_c <= right)
    if HAS_LEFT:
        m = m & (b_c >= b_r + off - WL)
    return m


@triton.jit
def _keep(seed, drop_p, rng_row0, b_r, b_c, MK):
    # one Philox stream per element: row id (unique over batch, head, row) * max_seqlen_k + key index
    return tl.rand(seed, (rng_row0 + b_r).to(tl.int64) * MK + b_c) >= drop_p


@triton.jit
def _band(i0, N, TILE: tl.constexpr, lo_a, lo_f, hi_f, hi_a, HAS_LO: tl.constexpr,
          HAS_HI: tl.constexpr):
    """Tiles [lo, hi) that intersect the band and [lo_full, hi_full) that lie inside it for every row of the
    program's rows (or, transposed, columns). lo_a/hi_a: the band's first/last+1 index for the program's first/last row,
    lo_f/hi_f: the same for the row that limits the full range. Every division is of a non-negative number."""
    if HAS_LO:
        lo = tl.maximum(lo_a, 0) // TILE * TILE
        lo_full = (tl.maximum(lo_f, 0) + TILE - 1) // TILE * TILE
    else:
        lo = i0 * 0
        lo_full = i0 * 0
    if HAS_HI:
        hi = tl.minimum(tl.maximum(hi_a, 0), N)
        hi_full = tl.minimum(tl.maximum(hi_f, 0), N) // TILE * TILE
    else:
        hi = N
        hi_full = N // TILE * TILE
    lo_full = tl.maximum(lo_full, lo)
    hi_full = tl.maximum(tl.minimum(hi_full, hi), lo_full)
    return lo, lo_full, hi_full, hi


# ----------------------------------------------------------------------------------------------- forward
@triton.jit
def _fwd_tile(b_acc, b_m, b_l, b_q, k_base, v_base, s_kt, s_vt, o_m, start_n, o_n0, o_d, Tq, Tk, off, WL, WR, P,
              qk_scale, cap_log2, slope_log2, seed, drop_p, drop_scale, rng_row0, MK,
              D: tl.constexpr, BD: tl.constexpr, MASK: tl.constexpr, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr,
              HAS_PREFIX: tl.constexpr, HAS_ALIBI: tl.constexpr, SOFTCAP: tl.constexpr, IS_DROPOUT: tl.constexpr,
              PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    o_n = start_n + o_n0
    m_d = o_d < D
    if MASK:
        m_k = o_n < Tk
        b_kt = upcast(tl.load(k_base + o_n[None, :] * s_kt + o_d[:, None], mask=m_k[None, :] & m_d[:, None], other=0.0),
                   UPCAST)
        b_v = upcast(tl.load(v_base + o_n[:, None] * s_vt + o_d[None, :], mask=m_k[:, None] & m_d[None, :], other=0.0),
                  UPCAST)
    elif D == BD:
        b_kt = upcast(tl.load(k_base + o_n[None, :] * s_kt + o_d[:, None]), UPCAST)
        b_v = upcast(tl.load(v_base + o_n[:, None] * s_vt + o_d[None, :]), UPCAST)
    else:
        b_kt = upcast(tl.load(k_base + o_n[None, :] * s_kt + o_d[:, None], mask=m_d[:, None], other=0.0), UPCAST)
        b_v = upcast(tl.load(v_base + o_n[:, None] * s_vt + o_d[None, :], mask=m_d[None, :], other=0.0), UPCAST)
    b_s, b_t = _scores(tl.dot(b_q, b_kt, input_precision=PRECISION), o_m[:, None], o_n[None, :], off, qk_scale,
                       cap_log2, slope_log2, HAS_ALIBI, SOFTCAP)
    if MASK:
        m_s = _visible(o_m[:, None], o_n[None, :], Tq, Tk, off, WL, WR, P, False, HAS_LEFT, HAS_RIGHT, HAS_PREFIX)
        b_s = tl.where(m_s, b_s, float("-inf"))
        b_m_new = tl.maximum(b_m, tl.max(b_s, 1))
        b_m_use = tl.where(b_m_new == float("-inf"), 0.0, b_m_new)  # rows that have seen no key yet
    else:
        b_m_new = tl.maximum(b_m, tl.max(b_s, 1))
        b_m_use = b_m_new
    b_p = tl.math.exp2(b_s - b_m_use[:, None])
    b_alpha = tl.math.exp2(b_m - b_m_use)
    b_l = b_l * b_alpha + tl.sum(b_p, 1)  # the normaliser counts dropped elements too
    if IS_DROPOUT:
        b_p = tl.where(_keep(seed, drop_p, rng_row0, o_m[:, None], o_n[None, :], MK), b_p * drop_scale, 0.0)
    b_acc = tl.dot(b_p.to(b_v.dtype), b_v, b_acc * b_alpha[:, None], input_precision=PRECISION)
    return b_acc, b_m_new, b_l


@triton.jit
def _seq_bounds(CU_Q, CU_K, i_b, Tq_all, Tk_all, IS_VARLEN: tl.constexpr):
    """Row i_b's first query/key offsets in the packed tensors and its lengths (varlen), or 0 and the padded ones."""
    if IS_VARLEN:
        bos_q = tl.load(CU_Q + i_b).to(tl.int64)
        bos_k = tl.load(CU_K + i_b).to(tl.int64)
        Tq = (tl.load(CU_Q + i_b + 1) - bos_q).to(tl.int32)
        Tk = (tl.load(CU_K + i_b + 1) - bos_k).to(tl.int32)
    else:
        bos_q = i_b.to(tl.int64) * 0
        bos_k = bos_q
        Tq = Tq_all
        Tk = Tk_all
    return bos_q, bos_k, Tq, Tk


@triton.jit
def _q_program(CU_Q, CU_K, Tq_all, Tk_all, HQ: tl.constexpr, GROUP: tl.constexpr, IS_VARLEN: tl.constexpr):
    """The forward's and dQ's program: query block, batch, head, kv head, and the sequence's bounds (_seq_bounds)."""
    i_m = tl.program_id(0)
    i_bh = tl.program_id(1)
    i_b = i_bh // HQ
    i_h = i_bh % HQ
    i_hk = i_h // GROUP
    bos_q, bos_k, Tq, Tk = _seq_bounds(CU_Q, CU_K, i_b, Tq_all, Tk_all, IS_VARLEN)
    return i_m, i_b, i_h, i_hk, bos_q, bos_k, Tq, Tk


@triton.jit
def _flash_attn_masked_fwd_kernel(Q, K, V, O, LSE, CU_Q, CU_K, PREFIX, ALIBI, BLK_CNT, BLK_IDX,
                                  s_qb, s_qt, s_qh, s_kb, s_kt, s_kh, s_vb, s_vt, s_vh, s_ob, s_ot, s_oh,
                                  s_lb, s_lh, s_ab, s_ah, s_cb, s_ch, s_cm, s_ib, s_ih, s_im,
                                  Tq_all, Tk_all, MK, qk_scale, cap_log2, WL, WR, seed, drop_p, drop_scale,
                                  HQ: tl.constexpr, GROUP: tl.constexpr, D: tl.constexpr, BD: tl.constexpr,
                                  BM: tl.constexpr, BN: tl.constexpr, SQ: tl.constexpr, SK: tl.constexpr,
                                  HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, HAS_PREFIX: tl.constexpr,
                                  HAS_ALIBI: tl.constexpr, SOFTCAP: tl.constexpr, IS_DROPOUT: tl.constexpr,
                                  IS_VARLEN: tl.constexpr, IS_BLOCK_SPARSE: tl.constexpr,
                                  SPARSE_MASK: tl.constexpr, PRECISION: tl.constexpr,
                                  UPCAST: tl.constexpr):
    i_m, i_b, i_h, i_hk, bos_q, bos_k, Tq, Tk = _q_program(CU_Q, CU_K, Tq_all, Tk_all, HQ, GROUP, IS_VARLEN)
    if i_m * BM >= Tq:
        return
    o_m = i_m * BM + tl.arange(0, BM)
    o_n0 = tl.arange(0, BN)
    o_d = tl.arange(0, BD)
    m_m = o_m < Tq
    m_d = o_d < D
    p_q = Q + i_b.to(tl.int64) * s_qb + bos_q * s_qt + i_h * s_qh + o_m[:, None] * s_qt + o_d[None, :]
    b_q = upcast(tl.load(p_q, mask=m_m[:, None] & m_d[None, :], other=0.0), UPCAST)
    k_base = K + i_b.to(tl.int64) * s_kb + bos_k * s_kt + i_hk * s_kh
    v_base = V + i_b.to(tl.int64) * s_vb + bos_k * s_vt + i_hk * s_vh
    lse_row0 = i_b.to(tl.int64) * s_lb + i_h * s_lh + bos_q  # also the dropout stream's row id
    off = Tk - Tq
    P = tl.load(PREFIX + i_b) if HAS_PREFIX else 0
    slope_log2 = tl.load(ALIBI + i_b * s_ab + i_h * s_ah) * 1.4426950408889634 if HAS_ALIBI else 0.0
    b_m = tl.full([BM], float("-inf"), tl.float32)
    b_l = tl.zeros([BM], tl.float32)
    b_acc = tl.zeros([BM, BD], tl.float32)
    if IS_BLOCK_SPARSE:
        # only the non-empty key blocks of this query block's row of the block mask; masked only if a band or a
        # ragged edge needs it
        i_sq = i_m * BM // SQ
        cnt = tl.load(BLK_CNT + i_b * s_cb + i_h * s_ch + i_sq * s_cm)
        p_idx = BLK_IDX + i_b * s_ib + i_h * s_ih + i_sq * s_im
        for j in range(0, cnt):
            kb = tl.load(p_idx + j)
            for sub in range(0, SK, BN):
                b_acc, b_m, b_l = _fwd_tile(b_acc, b_m, b_l, b_q, k_base, v_base, s_kt, s_vt, o_m, kb * SK + sub,
                                            o_n0, o_d, Tq, Tk, off, WL, WR, P, qk_scale, cap_log2, slope_log2, seed,
                                            drop_p, drop_scale, lse_row0, MK, D, BD, SPARSE_MASK, HAS_LEFT, HAS_RIGHT,
                                            HAS_PREFIX, HAS_ALIBI, SOFTCAP, IS_DROPOUT, PRECISION, UPCAST)
    else:
        r0 = i_m * BM
        r1 = r0 + BM - 1
        right0 = r0 + off + WR
        right1 = r1 + off + WR
        if HAS_PREFIX:
            right0 = tl.maximum(right0, P - 1)
            right1 = tl.maximum(right1, P - 1)
        lo, lo_full, hi_full, hi = _band(i_m, Tk, BN, r0 + off - WL, r1 + off - WL, right0 + 1, right1 + 1,
                                         HAS_LEFT, HAS_RIGHT)
        for start_n in range(lo, lo_full, BN):
            b_acc, b_m, b_l = _fwd_tile(b_acc, b_m, b_l, b_q, k_base, v_base, s_kt, s_vt, o_m, start_n, o_n0, o_d,
                                        Tq, Tk, off, WL, WR, P, qk_scale, cap_log2, slope_log2, seed, drop_p,
                                        drop_scale, lse_row0, MK, D, BD, True, HAS_LEFT, HAS_RIGHT, HAS_PREFIX,
                                        HAS_ALIBI, SOFTCAP, IS_DROPOUT, PRECISION, UPCAST)
        for start_n in range(lo_full, hi_full, BN):
            b_acc, b_m, b_l = _fwd_tile(b_acc, b_m, b_l, b_q, k_base, v_base, s_kt, s_vt, o_m, start_n, o_n0, o_d,
                                        Tq, Tk, off, WL, WR, P, qk_scale, cap_log2, slope_log2, seed, drop_p,
                                        drop_scale, lse_row0, MK, D, BD, False, HAS_LEFT, HAS_RIGHT, HAS_PREFIX,
                                        HAS_ALIBI, SOFTCAP, IS_DROPOUT, PRECISION, UPCAST)
        for start_n in range(hi_full, hi, BN):
            b_acc, b_m, b_l = _fwd_tile(b_acc, b_m, b_l, b_q, k_base, v_base, s_kt, s_vt, o_m, start_n, o_n0, o_d,
                                        Tq, Tk, off, WL, WR, P, qk_scale, cap_log2, slope_log2, seed, drop_p,
                                        drop_scale, lse_row0, MK, D, BD, True, HAS_LEFT, HAS_RIGHT, HAS_PREFIX,
                                        HAS_ALIBI, SOFTCAP, IS_DROPOUT, PRECISION, UPCAST)
    b_empty = b_l == 0.0  # a row that saw no key: output 0, LSE -inf
    b_o = b_acc / tl.where(b_empty, 1.0, b_l)[:, None]
    b_lse = tl.where(b_empty, float("-inf"), (b_m + tl.math.log2(tl.where(b_empty, 1.0, b_l))) * 0.6931471805599453)
    p_o = O + i_b.to(tl.int64) * s_ob + bos_q * s_ot + i_h * s_oh + o_m[:, None] * s_ot + o_d[None, :]
    tl.store(p_o, b_o.to(O.dtype.element_ty), mask=m_m[:, None] & m_d[None, :])
    tl.store(LSE + lse_row0 + o_m, b_lse, mask=m_m)


# ---------------------------------------------------------------------------------------------- backward
@triton.jit
def _dkdv_tile(b_dk, b_dv, b_k, b_v, q_base, do_base, lse_base, delta_base, s_qt, s_dot, o_n, start_m, o_m0, o_d,
               Tq, Tk, off, WL, WR, P, qk_scale, cap_log2, slope_log2, seed, drop_p, drop_scale, rng_row0, MK,
               D: tl.constexpr, MASK: tl.constexpr, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr,
               HAS_PREFIX: tl.constexpr, HAS_ALIBI: tl.constexpr, SOFTCAP: tl.constexpr, IS_DROPOUT: tl.constexpr,
               PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    o_m = start_m + o_m0
    b_qt, b_do, b_lse, b_delta = _load_query_rows(q_base, do_base, lse_base, delta_base, s_qt, s_dot, o_m, o_d, Tq,
                                                  D, MASK, UPCAST)
    b_lse2 = tl.where(b_lse == float("-inf"), float("inf"), b_lse * 1.4426950408889634)  # empty rows: P = 0
    b_st, b_tt = _scores(tl.dot(b_k, b_qt, input_precision=PRECISION), o_m[None, :], o_n[:, None], off, qk_scale,
                         cap_log2, slope_log2, HAS_ALIBI, SOFTCAP)  # (BN, BM)
    b_pt = tl.math.exp2(b_st - b_lse2[None, :])
    if MASK:
        m_s = _visible(o_m[None, :], o_n[:, None], Tq, Tk, off, WL, WR, P, True, HAS_LEFT, HAS_RIGHT, HAS_PREFIX)
        b_pt = tl.where(m_s, b_pt, 0.0)
    b_dpt = tl.dot(b_v, tl.trans(b_do), input_precision=PRECISION)  # (BN, BM)
    if IS_DROPOUT:
        keep = _keep(seed, drop_p, rng_row0, o_m[None, :], o_n[:, None], MK)
        b_dv = tl.dot(tl.where(keep, b_pt * drop_scale, 0.0).to(b_do.dtype), b_do, b_dv, input_precision=PRECISION)
        b_dpt = tl.where(keep, b_dpt * drop_scale, 0.0)
    else:
        b_dv = tl.dot(b_pt.to(b_do.dtype), b_do, b_dv, input_precision=PRECISION)
    b_dst = b_pt * (b_dpt - b_delta[None, :])
    if SOFTCAP:
        b_dst = b_dst * (1.0 - b_tt * b_tt)
    b_dk = tl.dot(b_dst.to(b_qt.dtype), tl.trans(b_qt), b_dk, input_precision=PRECISION)
    return b_dk, b_dv


@triton.jit
def _flash_attn_masked_bwd_dkdv_kernel(Q, K, V, DO, DK, DV, LSE, DELTA, CU_Q, CU_K, PREFIX, ALIBI, BLK_CNT, BLK_IDX,
                                       s_qb, s_qt, s_qh, s_kb, s_kt, s_kh, s_vb, s_vt, s_vh, s_db, s_dt, s_dh,
                                       s_dkb, s_dkt, s_dkh, s_dvb, s_dvt, s_dvh,
                                       s_lb, s_lh, s_ab, s_ah, s_cb, s_ch, s_cm, s_ib, s_ih, s_im,
                                       Tq_all, Tk_all, MK, scale, qk_scale, cap_log2, WL, WR, seed, drop_p, drop_scale,
                                       HQ: tl.constexpr, HKV: tl.constexpr, GROUP: tl.constexpr, D: tl.constexpr,
                                       BD: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, SQ: tl.constexpr,
                                       SK: tl.constexpr, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr,
                                       HAS_PREFIX: tl.constexpr, HAS_ALIBI: tl.constexpr, SOFTCAP: tl.constexpr,
                                       IS_DROPOUT: tl.constexpr, IS_VARLEN: tl.constexpr,
                                       IS_BLOCK_SPARSE: tl.constexpr,
                                       SPARSE_MASK: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    i_n = tl.program_id(0)
    i_bh = tl.program_id(1)
    i_b = i_bh // HKV
    i_hk = i_bh % HKV
    bos_q, bos_k, Tq, Tk = _seq_bounds(CU_Q, CU_K, i_b, Tq_all, Tk_all, IS_VARLEN)
    if i_n * BN >= Tk:
        return
    o_n = i_n * BN + tl.arange(0, BN)
    o_m0 = tl.arange(0, BM)
    o_d = tl.arange(0, BD)
    m_kd = (o_n < Tk)[:, None] & (o_d < D)[None, :]
    p_k = K + i_b.to(tl.int64) * s_kb + bos_k * s_kt + i_hk * s_kh + o_n[:, None] * s_kt + o_d[None, :]
    p_v = V + i_b.to(tl.int64) * s_vb + bos_k * s_vt + i_hk * s_vh + o_n[:, None] * s_vt + o_d[None, :]
    b_k = upcast(tl.load(p_k, mask=m_kd, other=0.0), UPCAST)
    b_v = upcast(tl.load(p_v, mask=m_kd, other=0.0), UPCAST)
    b_dk = tl.zeros([BN, BD], tl.float32)
    b_dv = tl.zeros([BN, BD], tl.float32)
    off = Tk - Tq
    P = tl.load(PREFIX + i_b) if HAS_PREFIX else 0
    # the query rows that see some key of this tile, and those that see all of them (the band, transposed)
    c0 = i_n * BN
    c1 = c0 + BN - 1
    r_lo = c0 - off - WR
    r_lo_full = c1 - off - WR
    if HAS_PREFIX:
        r_lo = tl.where(c0 < P, 0, r_lo)
        r_lo_full = tl.where(c1 < P, 0, r_lo_full)
    lo, lo_full, hi_full, hi = _band(i_n, Tq, BM, r_lo, r_lo_full, c0 - off + WL + 1, c1 - off + WL + 1,
                                     HAS_RIGHT, HAS_LEFT)
    hi_full = tl.maximum(tl.minimum(hi_full, Tq // BM * BM), lo_full)
    for g in range(GROUP):
        i_h = i_hk * GROUP + g
        q_base = Q + i_b.to(tl.int64) * s_qb + bos_q * s_qt + i_h * s_qh
        do_base = DO + i_b.to(tl.int64) * s_db + bos_q * s_dt + i_h * s_dh
        lse_row0 = i_b.to(tl.int64) * s_lb + i_h * s_lh + bos_q
        slope_log2 = tl.load(ALIBI + i_b * s_ab + i_h * s_ah) * 1.4426950408889634 if HAS_ALIBI else 0.0
        if IS_BLOCK_SPARSE:
            # BLK_* hold the transposed block mask here: the non-empty query blocks of this key block's column
            i_sk = i_n * BN // SK
            cnt = tl.load(BLK_CNT + i_b * s_cb + i_h * s_ch + i_sk * s_cm)
            p_idx = BLK_IDX + i_b * s_ib + i_h * s_ih + i_sk * s_im
            for j in range(0, cnt):
                qb = tl.load(p_idx + j)
                for sub in range(0, SQ, BM):
                    b_dk, b_dv = _dkdv_tile(b_dk, b_dv, b_k, b_v, q_base, do_base, LSE + lse_row0, DELTA + lse_row0,
                                            s_qt, s_dt, o_n, qb * SQ + sub, o_m0, o_d, Tq, Tk, off, WL, WR, P,
                                            qk_scale, cap_log2, slope_log2, seed, drop_p, drop_scale, lse_row0, MK,
                                            D, SPARSE_MASK, HAS_LEFT, HAS_RIGHT, HAS_PREFIX, HAS_ALIBI, SOFTCAP,
                                            IS_DROPOUT,
                                            PRECISION, UPCAST)
        else:
            for start_m in range(lo, lo_full, BM):
                b_dk, b_dv = _dkdv_tile(b_dk, b_dv, b_k, b_v, q_base, do_base, LSE + lse_row0, DELTA + lse_row0,
                                        s_qt, s_dt, o_n, start_m, o_m0, o_d, Tq, Tk, off, WL, WR, P, qk_scale,
                                        cap_log2, slope_log2, seed, drop_p, drop_scale, lse_row0, MK, D, True,
                                        HAS_LEFT, HAS_RIGHT, HAS_PREFIX, HAS_ALIBI, SOFTCAP, IS_DROPOUT, PRECISION,
                                        UPCAST)
            for start_m in range(lo_full, hi_full, BM):
                b_dk, b_dv = _dkdv_tile(b_dk, b_dv, b_k, b_v, q_base, do_base, LSE + lse_row0, DELTA + lse_row0,
                                        s_qt, s_dt, o_n, start_m, o_m0, o_d, Tq, Tk, off, WL, WR, P, qk_scale,
                                        cap_log2, slope_log2, seed, drop_p, drop_scale, lse_row0, MK, D, False,
                                        HAS_LEFT, HAS_RIGHT, HAS_PREFIX, HAS_ALIBI, SOFTCAP, IS_DROPOUT, PRECISION,
                                        UPCAST)
            for start_m in range(hi_full, hi, BM):
                b_dk, b_dv = _dkdv_tile(b_dk, b_dv, b_k, b_v, q_base, do_base, LSE + lse_row0, DELTA + lse_row0,
                                        s_qt, s_dt, o_n, start_m, o_m0, o_d, Tq, Tk, off, WL, WR, P, qk_scale,
                                        cap_log2, slope_log2, seed, drop_p, drop_scale, lse_row0, MK, D, True,
                                        HAS_LEFT, HAS_RIGHT, HAS_PREFIX, HAS_ALIBI, SOFTCAP, IS_DROPOUT, PRECISION,
                                        UPCAST)
    b_dk = b_dk * scale
    p_dk = DK + i_b.to(tl.int64) * s_dkb + bos_k * s_dkt + i_hk * s_dkh + o_n[:, None] * s_dkt + o_d[None, :]
    p_dv = DV + i_b.to(tl.int64) * s_dvb + bos_k * s_dvt + i_hk * s_dvh + o_n[:, None] * s_dvt + o_d[None, :]
    tl.store(p_dk, b_dk.to(DK.dtype.element_ty), mask=m_kd)
    tl.store(p_dv, b_dv.to(DV.dtype.element_ty), mask=m_kd)


@triton.jit
def _dq_tile(b_dq, b_q, b_do, b_lse2, b_delta, k_base, v_base, s_kt, s_vt, o_m, start_n, o_n0, o_d, Tq, Tk, off,
             WL, WR, P, qk_scale, cap_log2, slope_log2, seed, drop_p, drop_scale, rng_row0, MK,
             D: tl.constexpr, MASK: tl.constexpr, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr,
             HAS_PREFIX: tl.constexpr, HAS_ALIBI: tl.constexpr, SOFTCAP: tl.constexpr, IS_DROPOUT: tl.constexpr,
             PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    o_n = start_n + o_n0
    m_d = o_d < D
    if MASK:
        m_n = o_n < Tk
        b_kt = upcast(tl.load(k_base + o_n[None, :] * s_kt + o_d[:, None], mask=m_n[None, :] & m_d[:, None], other=0.0),
                   UPCAST)
        b_vt = upcast(tl.load(v_base + o_n[None, :] * s_vt + o_d[:, None], mask=m_n[None, :] & m_d[:, None], other=0.0),
                   UPCAST)
    else:
        b_kt = upcast(tl.load(k_base + o_n[None, :] * s_kt + o_d[:, None], mask=m_d[:, None], other=0.0), UPCAST)
        b_vt = upcast(tl.load(v_base + o_n[None, :] * s_vt + o_d[:, None], mask=m_d[:, None], other=0.0), UPCAST)
    b_s, b_t = _scores(tl.dot(b_q, b_kt, input_precision=PRECISION), o_m[:, None], o_n[None, :], off, qk_scale,
                       cap_log2, slope_log2, HAS_ALIBI, SOFTCAP)
    b_p = tl.math.exp2(b_s - b_lse2[:, None])
    if MASK:
        m_s = _visible(o_m[:, None], o_n[None, :], Tq, Tk, off, WL, WR, P, False, HAS_LEFT, HAS_RIGHT, HAS_PREFIX)
        b_p = tl.where(m_s, b_p, 0.0)
    b_dp = tl.dot(b_do, b_vt, input_precision=PRECISION)
    if IS_DROPOUT:
        b_dp = tl.where(_keep(seed, drop_p, rng_row0, o_m[:, None], o_n[None, :], MK), b_dp * drop_scale, 0.0)
    b_ds = b_p * (b_dp - b_delta[:, None])
    if SOFTCAP:
        b_ds = b_ds * (1.0 - b_t * b_t)
    return tl.dot(b_ds.to(b_kt.dtype), tl.trans(b_kt), b_dq, input_precision=PRECISION)


# Its argument list and first lines repeat the forward's (plus DO, DQ, DELTA): a Triton kernel's signature cannot be
# shared, and the common prologue is already one helper (_q_program); the rest is a handful of offset lines.
@triton.jit
def _flash_attn_masked_bwd_dq_kernel(Q, K, V, DO, DQ, LSE, DELTA, CU_Q, CU_K, PREFIX, ALIBI, BLK_CNT, BLK_IDX,
                                     s_qb, s_qt, s_qh, s_kb, s_kt, s_kh, s_vb, s_vt, s_vh, s_db, s_dt, s_dh,
                                     s_dqb, s_dqt, s_dqh, s_lb, s_lh, s_ab, s_ah, s_cb, s_ch, s_cm, s_ib, s_ih, s_im,
                                     Tq_all, Tk_all, MK, scale, qk_scale, cap_log2, WL, WR, seed, drop_p, drop_scale,
                                     HQ: tl.constexpr, GROUP: tl.constexpr, D: tl.constexpr, BD: tl.constexpr,
                                     BM: tl.constexpr, BN: tl.constexpr, SQ: tl.constexpr, SK: tl.constexpr,
                                     HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, HAS_PREFIX: tl.constexpr,
                                     HAS_ALIBI: tl.constexpr, SOFTCAP: tl.constexpr, IS_DROPOUT: tl.constexpr,
                                     IS_VARLEN: tl.constexpr, IS_BLOCK_SPARSE: tl.constexpr,
                                     SPARSE_MASK: tl.constexpr, PRECISION: tl.constexpr,
                                     UPCAST: tl.constexpr):
    i_m, i_b, i_h, i_hk, bos_q, bos_k, Tq, Tk = _q_program(CU_Q, CU_K, Tq_all, Tk_all, HQ, GROUP, IS_VARLEN)
    if i_m * BM >= Tq:
        return
    o_m = i_m * BM + tl.arange(0, BM)
    o_n0 = tl.arange(0, BN)
    o_d = tl.arange(0, BD)
    m_m = o_m < Tq
    m_qd = m_m[:, None] & (o_d < D)[None, :]
    row = i_b.to(tl.int64) * s_qb + bos_q * s_qt + i_h * s_qh + o_m[:, None] * s_qt + o_d[None, :]
    b_q = upcast(tl.load(Q + row, mask=m_qd, other=0.0), UPCAST)
    b_do = upcast(tl.load(DO + i_b.to(tl.int64) * s_db + bos_q * s_dt + i_h * s_dh + o_m[:, None] * s_dt + o_d[None, :],
                       mask=m_qd, other=0.0), UPCAST)
    lse_row0 = i_b.to(tl.int64) * s_lb + i_h * s_lh + bos_q
    b_lse = tl.load(LSE + lse_row0 + o_m, mask=m_m, other=0.0)
    b_lse2 = tl.where(b_lse == float("-inf"), float("inf"), b_lse * 1.4426950408889634)
    b_delta = tl.load(DELTA + lse_row0 + o_m, mask=m_m, other=0.0)
    b_dq = tl.zeros([BM, BD], tl.float32)
    k_base = K + i_b.to(tl.int64) * s_kb + bos_k * s_kt + i_hk * s_kh
    v_base = V + i_b.to(tl.int64) * s_vb + bos_k * s_vt + i_hk * s_vh
    off = Tk - Tq
    P = tl.load(PREFIX + i_b) if HAS_PREFIX else 0
    slope_log2 = tl.load(ALIBI + i_b * s_ab + i_h * s_ah) * 1.4426950408889634 if HAS_ALIBI else 0.0
    if IS_BLOCK_SPARSE:
        i_sq = i_m * BM // SQ
        cnt = tl.load(BLK_CNT + i_b * s_cb + i_h * s_ch + i_sq * s_cm)
        p_idx = BLK_IDX + i_b * s_ib + i_h * s_ih + i_sq * s_im
        for j in range(0, cnt):
            kb = tl.load(p_idx + j)
            for sub in range(0, SK, BN):
                b_dq = _dq_tile(b_dq, b_q, b_do, b_lse2, b_delta, k_base, v_base, s_kt, s_vt, o_m, kb * SK + sub,
                                o_n0, o_d, Tq, Tk, off, WL, WR, P, qk_scale, cap_log2, slope_log2, seed, drop_p,
                                drop_scale, lse_row0, MK, D, SPARSE_MASK, HAS_LEFT, HAS_RIGHT, HAS_PREFIX, HAS_ALIBI,
                                SOFTCAP, IS_DROPOUT, PRECISION, UPCAST)
    else:
        r0 = i_m * BM
        r1 = r0 + BM - 1
        right0 = r0 + off + WR
        right1 = r1 + off + WR
        if HAS_PREFIX:
            right0 = tl.maximum(right0, P - 1)
            right1 = tl.maximum(right1, P - 1)
        lo, lo_full, hi_full, hi = _band(i_m, Tk, BN, r0 + off - WL, r1 + off - WL, right0 + 1, right1 + 1,
                                         HAS_LEFT, HAS_RIGHT)
        for start_n in range(lo, lo_full, BN):
            b_dq = _dq_tile(b_dq, b_q, b_do, b_lse2, b_delta, k_base, v_base, s_kt, s_vt, o_m, start_n, o_n0, o_d,
                            Tq, Tk, off, WL, WR, P, qk_scale, cap_log2, slope_log2, seed, drop_p, drop_scale,
                            lse_row0, MK, D, True, HAS_LEFT, HAS_RIGHT, HAS_PREFIX, HAS_ALIBI, SOFTCAP, IS_DROPOUT,
                            PRECISION, UPCAST)
        for start_n in range(lo_full, hi_full, BN):
            b_dq = _dq_tile(b_dq, b_q, b_do, b_lse2, b_delta, k_base, v_base, s_kt, s_vt, o_m, start_n, o_n0, o_d,
                            Tq, Tk, off, WL, WR, P, qk_scale, cap_log2, slope_log2, seed, drop_p, drop_scale,
                            lse_row0, MK, D, False, HAS_LEFT, HAS_RIGHT, HAS_PREFIX, HAS_ALIBI, SOFTCAP, IS_DROPOUT,
                            PRECISION, UPCAST)
        for start_n in range(hi_full, hi, BN):
            b_dq = _dq_tile(b_dq, b_q, b_do, b_lse2, b_delta, k_base, v_base, s_kt, s_vt, o_m, start_n, o_n0, o_d,
                            Tq, Tk, off, WL, WR, P, qk_scale, cap_log2, slope_log2, seed, drop_p, drop_scale,
                            lse_row0, MK, D, True, HAS_LEFT, HAS_RIGHT, HAS_PREFIX, HAS_ALIBI, SOFTCAP, IS_DROPOUT,
                            PRECISION, UPCAST)
    b_dq = b_dq * scale
    p_dq = DQ + i_b.to(tl.int64) * s_dqb + bos_q * s_dqt + i_h * s_dqh + o_m[:, None] * s_dqt + o_d[None, :]
    tl.store(p_dq, b_dq.to(DQ.dtype.element_ty), mask=m_qd)


@triton.jit
def _dropout_mask_kernel(KEEP, seed, drop_p, MK, Tk, BN: tl.constexpr):
    # the forward's keep mask for row id i_r (as the kernels number rows), for tests: keep[i_r, c]
    i_r = tl.program_id(0)
    o_n = tl.program_id(1) * BN + tl.arange(0, BN)
    keep = _keep(seed, drop_p, i_r.to(tl.int64), 0, o_n, MK)
    tl.store(KEEP + i_r.to(tl.int64) * Tk + o_n, keep.to(tl.int8), mask=o_n < Tk)


# ---------------------------------------------------------------------------------------------- launchers
def _tiles(op: str, D: int, T: int, banded: bool, block: tuple[int, int] | None, window: bool = False) -> dict:
    """The plain kernel's measured tiles (the band behaves like a causal mask); a block-sparse run's tiles must
    divide the mask's blocks. A sliding window (left bound) at D <= 128 has short key loops: 64 x 64 forward tiles
    and 128 x 64 dQ tiles measured best there (dev/attention/sweep_masks-h100-2026-11-26.json: window 1024 at
    T = 16k, fwd 0.376 vs 0.441 ms, backward 1.28 vs 1.43 ms with the dQ tile)."""
    cfg = {"BM": 32, "BN": 32} if interpreting() else tile_table(op, D, T, banded)
    cfg.pop("REV", None)
    if window and not interpreting() and 64 < D <= 128 and T >= 2048 and op in ("fwd", "dq"):
        bm, bn, w, st = (64, 64, 4, 3) if op == "fwd" else (128, 64, 8, 3)
        cfg.update(BM=bm, BN=bn, num_warps=w, num_stages=st)
    if block is not None:
        cfg["BM"], cfg["BN"] = min(cfg["BM"], block[0]), min(cfg["BN"], block[1])
    return cfg


def _common(q, k, spec):
    """Arguments every masked kernel shares: pointers to the option tensors and their strides, bounds, flags."""
    B = spec["batch"]
    Hq = q.shape[2]
    dummy = q
    alibi = spec["alibi"]
    if alibi is not None:
        alibi = alibi.reshape(-1, Hq) if alibi.dim() == 2 else alibi.reshape(1, Hq)
    a_str = (0, 0) if alibi is None else ((0 if alibi.shape[0] == 1 else alibi.stride(0)), alibi.stride(1))
    cap = spec["softcap"]
    scale = spec["scale"]
    flags = dict(HAS_LEFT=spec["wl"] >= 0, HAS_RIGHT=spec["wr"] >= 0, HAS_PREFIX=spec["prefix"] is not None,
                 HAS_ALIBI=alibi is not None, SOFTCAP=cap > 0, IS_DROPOUT=spec["dropout_p"] > 0,
                 IS_VARLEN=spec["cu_q"] is not None, IS_BLOCK_SPARSE=spec["block_mask"] is not None)
    # block-sparse tiles run without mask arithmetic when no band limits them and the blocks tile q and k exactly
    bq, bk = spec["block_size"]
    flags["SPARSE_MASK"] = flags["HAS_LEFT"] or flags["HAS_RIGHT"] or flags["IS_VARLEN"] or bq == 0 \
        or q.shape[1] % bq != 0 or k.shape[1] % bk != 0
    p = spec["dropout_p"]
    scalars = dict(qk_scale=(scale / cap) if cap > 0 else scale * LOG2E, cap_log2=cap * LOG2E,
                   WL=spec["wl"] if spec["wl"] >= 0 else BIG, WR=spec["wr"] if spec["wr"] >= 0 else BIG,
                   seed=int(spec["seed"]), drop_p=float(p), drop_scale=1.0 / (1.0 - p) if p < 1 else 0.0)
    ptrs = (spec["cu_q"] if spec["cu_q"] is not None else dummy, spec["cu_k"] if spec["cu_k"] is not None else dummy,
            spec["prefix"] if spec["prefix"] is not None else dummy, alibi if alibi is not None else dummy)
    return B, flags, scalars, ptrs, a_str


# A causal sliding window (window_size=(left, 0), no other option) at D = 128 on sm_90 runs hopper.py's TMA forward
# with the same band of key blocks (dev/attention/NOTES.md, "Hopper windowed forward"); the backward stays here.
HOPPER_WINDOW_MIN_T = 2048


def _no_other_option(spec: dict) -> bool:
    """No packed sequences, ALiBi, softcap, dropout or prefix-LM: what the Hopper kernels leave out."""
    return (spec["cu_q"] is None and spec["alibi"] is None and spec["softcap"] == 0 and spec["dropout_p"] == 0
            and spec["prefix"] is None)


def _hopper_window_spec(spec: dict) -> bool:
    """A left window with right side 0 (causal or not: with Tq == Tk the same mask) and no other option."""
    return spec["wl"] >= 0 and spec["wr"] == 0 and spec["block_mask"] is None and _no_other_option(spec)


def _use_hopper_window(q, k, v, spec: dict) -> bool:
    """Whether the forward of this call runs hopper.py's windowed kernel instead of the one below."""
    return _hopper_window_spec(spec) and hopper_eligible(q, k, v, HOPPER_WINDOW_MIN_T)


# Block-sparse attention (block_mask of 128 x 128 blocks, no other option) at D = 128 on sm_90 runs hopper.py's TMA
# kernels over the same per-row block lists (forward) and their transpose (dK/dV); dQ stays here
# (dev/attention/NOTES.md, "Hopper block-sparse", run S1): faster at T = 8192 (fwd 1.21x, bwd 1.04-1.07x), slower at
# B8 T2048 (4 blocks a row: the per-program prologue dominates); T = 4096 not measured, so T < 8192 stays here.
HOPPER_SPARSE_MIN_T = 8192
HOPPER_SPARSE_BLOCK = (128, 128)


def _hopper_sparse_spec(spec: dict) -> bool:
    """A block mask with 128 x 128 blocks (the Hopper tiles divide them) and no other option (causal included)."""
    return (spec["block_mask"] is not None and tuple(spec["block_size"]) == HOPPER_SPARSE_BLOCK
            and not spec.get("causal", False) and spec["wl"] < 0 and spec["wr"] < 0 and _no_other_option(spec))


def _use_hopper_sparse(q, k, v, spec: dict) -> bool:
    """Whether this block-sparse call runs hopper.py's kernels (forward, and dK/dV in the backward)."""
    return _hopper_sparse_spec(spec) and hopper_eligible(q, k, v, HOPPER_SPARSE_MIN_T)


def _hopper_sparse_lists(blk: torch.Tensor, dummy: torch.Tensor, block: tuple[int, int]) -> tuple:
    """The block lists the kernels here walk (`block_lists.sparse_args`) and the block size, as hopper.py takes them."""
    return (*sparse_args(blk, dummy), tuple(block))


def flash_attn_masked_fwd(q, k, v, spec: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """q (B, Tq, Hq, D) or, varlen, (1, total_q, Hq, D). Returns out like q and lse (B, Hq, Tq) fp32 (varlen:
    (1, Hq, total_q))."""
    if _use_hopper_window(q, k, v, spec):
        from . import hopper

        # window_size=(wl, 0) with Tq == Tk is the causal mask with a left bound, whether or not causal was passed
        return hopper.hopper_flash_attn_fwd(q, k, v, True, spec["scale"], window_left=spec["wl"])
    if _use_hopper_sparse(q, k, v, spec):
        from . import hopper

        sparse = _hopper_sparse_lists(spec["block_mask"], q, spec["block_size"])
        return hopper.hopper_flash_attn_fwd(q, k, v, False, spec["scale"], sparse=sparse)
    _, Tq_all, Hq, D = q.shape
    Tk_all, Hkv = k.shape[1], k.shape[2]
    B, flags, sc, ptrs, a_str = _common(q, k, spec)
    sb = lambda t: 0 if flags["IS_VARLEN"] else t.stride(0)  # varlen: the program's batch index is the sequence
    MQ, MK = spec["max_q"], spec["max_k"]
    o = torch.empty_like(q)
    lse = torch.empty((q.shape[0], Hq, Tq_all), device=q.device, dtype=torch.float32)
    s_lb = 0 if flags["IS_VARLEN"] else lse.stride(0)
    blk = spec["block_mask"]
    cnt, idx, c_str, i_str = sparse_args(blk, q)
    block = spec["block_size"] if blk is not None else None
    cfg = _tiles("fwd", D, max(MQ, MK), flags["HAS_LEFT"] or flags["HAS_RIGHT"], block, flags["HAS_LEFT"])
    SQ, SK = block if block is not None else (cfg["BM"], cfg["BN"])
    grid = (triton.cdiv(MQ, cfg["BM"]), B * Hq)
    _flash_attn_masked_fwd_kernel[grid](
        q, k, v, o, lse, *ptrs, cnt, idx, sb(q), q.stride(1), q.stride(2), sb(k), k.stride(1), k.stride(2),
        sb(v), v.stride(1), v.stride(2), sb(o), o.stride(1), o.stride(2), s_lb, lse.stride(1), *a_str,
        *c_str, *i_str, Tq_all, Tk_all, MK, sc["qk_scale"], sc["cap_log2"], sc["WL"], sc["WR"], sc["seed"],
        sc["drop_p"], sc["drop_scale"], HQ=Hq, GROUP=Hq // Hkv, D=D, BD=_head_dim_block(D), SQ=SQ, SK=SK, **flags,
        PRECISION=_precision(q.dtype), UPCAST=_upcast(q.dtype), **cfg)
    return o, lse


def flash_attn_masked_bwd(do, q, k, v, o, lse, spec: dict) -> tuple[torch.Tensor, ...]:
    _, Tq_all, Hq, D = q.shape
    Tk_all, Hkv = k.shape[1], k.shape[2]
    B, flags, sc, ptrs, a_str = _common(q, k, spec)
    sb = lambda t: 0 if flags["IS_VARLEN"] else t.stride(0)  # varlen: the program's batch index is the sequence
    MQ, MK = spec["max_q"], spec["max_k"]
    BD = _head_dim_block(D)
    do = do if do.stride(-1) == 1 else do.contiguous()
    delta = torch.empty_like(lse)
    bm_pre = 64 if not interpreting() else 32
    _flash_attn_bwd_preprocess_kernel[(triton.cdiv(Tq_all, bm_pre), q.shape[0] * Hq)](
        o, do, delta, sb(o), o.stride(1), o.stride(2), sb(do), do.stride(1), do.stride(2), Tq_all,
        HQ=Hq, D=D, BD=BD, BM=bm_pre)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    s_lb = 0 if flags["IS_VARLEN"] else lse.stride(0)
    common = (sb(q), q.stride(1), q.stride(2), sb(k), k.stride(1), k.stride(2),
              sb(v), v.stride(1), v.stride(2), sb(do), do.stride(1), do.stride(2))
    tail = (sc["qk_scale"], sc["cap_log2"], sc["WL"], sc["WR"], sc["seed"], sc["drop_p"], sc["drop_scale"])
    prec, up = _precision(q.dtype), _upcast(q.dtype)
    banded = flags["HAS_LEFT"] or flags["HAS_RIGHT"]
    blk = spec["block_mask"]
    block = spec["block_size"] if blk is not None else None
    cnt, idx, c_str, i_str = sparse_args(blk, q)
    cnt_t, idx_t, ct_str, it_str = sparse_args(blk.transpose(-1, -2) if blk is not None else None, q)
    if _use_hopper_sparse(q, k, v, spec) and do.is_contiguous() and do.data_ptr() % 16 == 0:
        from . import hopper

        # the transposed lists above, walked by hopper.py's TMA dK/dV kernel (the dense backward's)
        dk, dv = hopper.hopper_flash_attn_bwd_dkdv(q, k, v, do, lse, delta, False, spec["scale"],
                                                   sparse=(cnt_t, idx_t, ct_str, it_str, tuple(block)))
    else:
        cfg = _tiles("dkdv", D, max(MQ, MK), banded, block)
        SQ, SK = block if block is not None else (cfg["BM"], cfg["BN"])
        _flash_attn_masked_bwd_dkdv_kernel[(triton.cdiv(MK, cfg["BN"]), B * Hkv)](
            q, k, v, do, dk, dv, lse, delta, *ptrs, cnt_t, idx_t, *common, sb(dk), dk.stride(1), dk.stride(2),
            sb(dv), dv.stride(1), dv.stride(2), s_lb, lse.stride(1), *a_str, *ct_str, *it_str, Tq_all, Tk_all, MK,
            spec["scale"], *tail, HQ=Hq, HKV=Hkv, GROUP=Hq // Hkv, D=D, BD=BD, SQ=SQ, SK=SK, **flags,
            PRECISION=prec, UPCAST=up, **cfg)
    cfg = _tiles("dq", D, max(MQ, MK), banded, block, flags["HAS_LEFT"])
    SQ, SK = block if block is not None else (cfg["BM"], cfg["BN"])
    _flash_attn_masked_bwd_dq_kernel[(triton.cdiv(MQ, cfg["BM"]), B * Hq)](
        q, k, v, do, dq, lse, delta, *ptrs, cnt, idx, *common, sb(dq), dq.stride(1), dq.stride(2),
        s_lb, lse.stride(1), *a_str, *c_str, *i_str, Tq_all, Tk_all, MK, spec["scale"], *tail, HQ=Hq,
        GROUP=Hq // Hkv, D=D, BD=BD, SQ=SQ, SK=SK, **flags, PRECISION=prec, UPCAST=up, **cfg)
    return dq, dk, dv


def dropout_keep_mask(n_rows: int, max_seqlen_k: int, Tk: int, dropout_p: float, seed: int,
                      device) -> torch.Tensor:
    """The keep mask the kernels draw, (n_rows, Tk) bool, row i_r = the kernels' row id (batched:
    (b * H + h) * Tq + r; varlen: h * total_q + global row). For tests and debugging."""
    keep = torch.empty((n_rows, Tk), dtype=torch.int8, device=device)
    _dropout_mask_kernel[(n_rows, triton.cdiv(Tk, 64))](keep, int(seed), float(dropout_p), max_seqlen_k, Tk, BN=64)
    return keep.bool()


__all__ = ["dropout_keep_mask", "flash_attn_masked_bwd", "flash_attn_masked_fwd"]
