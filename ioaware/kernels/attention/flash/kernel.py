"""FlashAttention-2 in Triton: forward and backward, GQA, causal (bottom-right), any head dim <= 256.

Forward: one program per (query block, batch x query head). Q stays on chip; K and V stream through in
blocks of BN rows; the softmax is computed online (running max m, running sum l, rescaled accumulator),
and only O and the row log-sum-exp are written. Blocks that no mask touches run a loop without mask
arithmetic; the diagonal and ragged-tail blocks run the masked loop.

Backward (recomputation, no S or P in HBM):
  1. delta = rowsum(dO * O)                       per query row
  2. dK, dV: one program per (key block, batch x KV head); it walks the query blocks of every query head
     of its group and accumulates in registers, so GQA needs no atomics and the result is deterministic.
  3. dQ: one program per (query block, batch x query head); it walks the key blocks.
Exponentials are taken base 2 with the scale folded in (scale * log2 e); the LSE is stored in natural log.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from ....env import settings
from ..._dispatch import interpreting
from ...triton_utils import LOG2E, upcast


# ----------------------------------------------------------------------------------------------- forward
@triton.jit
def _flash_attn_fwd_inner(b_acc, b_m, b_l, b_q, k_base, v_base, s_kt, s_vt, o_m, o_n, o_d, lo, hi, Tk, offset,
                          scale_log2, D: tl.constexpr, BD: tl.constexpr, BN: tl.constexpr, IS_CAUSAL: tl.constexpr,
                          MASK: tl.constexpr, PRECISION: tl.constexpr,
                          UPCAST: tl.constexpr):
    m_d = o_d < D
    for start_n in range(lo, hi, BN):
        o_k = start_n + o_n
        if MASK:
            m_k = o_k < Tk
            b_kt = upcast(tl.load(k_base + o_k[None, :] * s_kt + o_d[:, None],
                mask=m_k[None, :] & m_d[:, None], other=0.0), UPCAST)
        elif D == BD:
            b_kt = upcast(tl.load(k_base + o_k[None, :] * s_kt + o_d[:, None]), UPCAST)
        else:
            b_kt = upcast(tl.load(k_base + o_k[None, :] * s_kt + o_d[:, None], mask=m_d[:, None], other=0.0), UPCAST)
        b_s = tl.dot(b_q, b_kt, input_precision=PRECISION) * scale_log2  # (BM, BN), log2 units
        if MASK:
            m_s = m_k[None, :]
            if IS_CAUSAL:
                m_s = m_s & (o_k[None, :] <= o_m[:, None] + offset)
            b_s = tl.where(m_s, b_s, float("-inf"))
            b_m_new = tl.maximum(b_m, tl.max(b_s, 1))
            b_m_use = tl.where(b_m_new == float("-inf"), 0.0, b_m_new)  # rows that have seen no key yet
        else:
            b_m_new = tl.maximum(b_m, tl.max(b_s, 1))
            b_m_use = b_m_new
        b_p = tl.math.exp2(b_s - b_m_use[:, None])
        b_alpha = tl.math.exp2(b_m - b_m_use)
        b_l = b_l * b_alpha + tl.sum(b_p, 1)
        b_acc = b_acc * b_alpha[:, None]
        if MASK:
            b_v = upcast(tl.load(v_base + o_k[:, None] * s_vt + o_d[None, :],
                mask=m_k[:, None] & m_d[None, :], other=0.0), UPCAST)
        elif D == BD:
            b_v = upcast(tl.load(v_base + o_k[:, None] * s_vt + o_d[None, :]), UPCAST)
        else:
            b_v = upcast(tl.load(v_base + o_k[:, None] * s_vt + o_d[None, :], mask=m_d[None, :], other=0.0), UPCAST)
        b_acc = tl.dot(b_p.to(b_v.dtype), b_v, b_acc, input_precision=PRECISION)
        b_m = b_m_new
    return b_acc, b_m, b_l


@triton.jit
def _query_program(HQ: tl.constexpr, GROUP: tl.constexpr, REV: tl.constexpr):
    """(query block, batch x head, batch, head, KV head) of a program over the grid (query blocks, batch x heads):
    neighbouring programs share one head's K and V, which then come from L2 (swapping the axes cost 25-45% at
    T <= 4k, see dev/attention/NOTES.md). With a causal mask the last query blocks carry the most work; REV
    dispatches them first (a tuning choice: it shortens the tail)."""
    i_m = tl.num_programs(0) - 1 - tl.program_id(0) if REV else tl.program_id(0)
    i_bh = tl.program_id(1)
    i_b = (i_bh // HQ).to(tl.int64)
    i_h = i_bh % HQ
    i_hk = i_h // GROUP
    return i_m, i_bh, i_b, i_h, i_hk


@triton.jit
def _flash_attn_fwd_kernel(Q, K, V, O, LSE,
                           s_qb, s_qt, s_qh, s_kb, s_kt, s_kh, s_vb, s_vt, s_vh, s_ob, s_ot, s_oh,
                           Tq, Tk, scale_log2, T_BUCKET, W_BUCKET,
                           HQ: tl.constexpr, GROUP: tl.constexpr, D: tl.constexpr, BD: tl.constexpr,
                           BM: tl.constexpr, BN: tl.constexpr, IS_CAUSAL: tl.constexpr, PRECISION: tl.constexpr,
                           UPCAST: tl.constexpr, REV: tl.constexpr):
    i_m, i_bh, i_b, i_h, i_hk = _query_program(HQ, GROUP, REV)
    o_m = i_m * BM + tl.arange(0, BM)
    o_n = tl.arange(0, BN)
    o_d = tl.arange(0, BD)
    m_m = o_m < Tq
    m_d = o_d < D
    p_q = Q + i_b * s_qb + i_h * s_qh + o_m[:, None] * s_qt + o_d[None, :]
    b_q = upcast(tl.load(p_q, mask=m_m[:, None] & m_d[None, :], other=0.0), UPCAST)
    k_base = K + i_b * s_kb + i_hk * s_kh
    v_base = V + i_b * s_vb + i_hk * s_vh
    b_m = tl.full([BM], float("-inf"), tl.float32)
    b_l = tl.zeros([BM], tl.float32)
    b_acc = tl.zeros([BM, BD], tl.float32)
    offset = Tk - Tq  # causal: row r sees keys c <= r + offset
    if IS_CAUSAL:
        hi = tl.maximum(tl.minimum(Tk, (i_m + 1) * BM + offset), 0)
        # key blocks that every row of this query block sees in full need no mask
        lo_mask = tl.maximum(tl.minimum((i_m * BM + offset + 1) // BN * BN, (Tk // BN) * BN), 0)
    else:
        hi = Tk
        lo_mask = (Tk // BN) * BN
    b_acc, b_m, b_l = _flash_attn_fwd_inner(b_acc, b_m, b_l, b_q, k_base, v_base, s_kt, s_vt, o_m, o_n, o_d,
                                            0, lo_mask, Tk, offset, scale_log2, D, BD, BN,
                                            IS_CAUSAL, False, PRECISION, UPCAST)
    b_acc, b_m, b_l = _flash_attn_fwd_inner(b_acc, b_m, b_l, b_q, k_base, v_base, s_kt, s_vt, o_m, o_n, o_d,
                                            lo_mask, hi, Tk, offset, scale_log2, D, BD, BN,
                                            IS_CAUSAL, True, PRECISION, UPCAST)
    b_empty = b_l == 0.0  # a row that saw no key: output 0, LSE -inf
    b_o = b_acc / tl.where(b_empty, 1.0, b_l)[:, None]
    b_lse = tl.where(b_empty, float("-inf"), (b_m + tl.math.log2(tl.where(b_empty, 1.0, b_l))) * 0.6931471805599453)
    p_o = O + i_b * s_ob + i_h * s_oh + o_m[:, None] * s_ot + o_d[None, :]
    tl.store(p_o, b_o.to(O.dtype.element_ty), mask=m_m[:, None] & m_d[None, :])
    tl.store(LSE + i_bh.to(tl.int64) * Tq + o_m, b_lse, mask=m_m)


# ---------------------------------------------------------------------------------------------- backward
@triton.jit
def _flash_attn_bwd_preprocess_kernel(O, DO, DELTA, s_ob, s_ot, s_oh, s_db, s_dt, s_dh, Tq,
                                      HQ: tl.constexpr, D: tl.constexpr, BD: tl.constexpr, BM: tl.constexpr):
    i_m = tl.program_id(0)
    i_bh = tl.program_id(1)
    i_b = (i_bh // HQ).to(tl.int64)
    i_h = i_bh % HQ
    o_m = i_m * BM + tl.arange(0, BM)
    o_d = tl.arange(0, BD)
    m = (o_m < Tq)[:, None] & (o_d < D)[None, :]
    b_o = tl.load(O + i_b * s_ob + i_h * s_oh + o_m[:, None] * s_ot + o_d[None, :], mask=m, other=0.0)
    b_do = tl.load(DO + i_b * s_db + i_h * s_dh + o_m[:, None] * s_dt + o_d[None, :], mask=m, other=0.0)
    b_delta = tl.sum(b_o.to(tl.float32) * b_do.to(tl.float32), 1)
    tl.store(DELTA + i_bh.to(tl.int64) * Tq + o_m, b_delta, mask=o_m < Tq)


@triton.jit
def _load_query_rows(q_base, do_base, lse_base, delta_base, s_qt, s_dot, o_m, o_d, Tq, D: tl.constexpr,
                     MASK: tl.constexpr, UPCAST: tl.constexpr):
    """One query block's operands for the dK/dV loop: Q transposed (BD, BM), dO (BM, BD), LSE and delta (BM,);
    rows past Tq (MASK) and columns past D read as zero."""
    m_d = o_d < D
    if MASK:
        m_m = o_m < Tq
        b_qt = upcast(tl.load(q_base + o_m[None, :] * s_qt + o_d[:, None], mask=m_m[None, :] & m_d[:, None], other=0.0),
                   UPCAST)
        b_do = upcast(tl.load(do_base + o_m[:, None] * s_dot + o_d[None, :], mask=m_m[:, None] & m_d[None, :],
                           other=0.0), UPCAST)
        b_lse = tl.load(lse_base + o_m, mask=m_m, other=0.0)
        b_delta = tl.load(delta_base + o_m, mask=m_m, other=0.0)
    else:
        b_qt = upcast(tl.load(q_base + o_m[None, :] * s_qt + o_d[:, None], mask=m_d[:, None], other=0.0), UPCAST)
        b_do = upcast(tl.load(do_base + o_m[:, None] * s_dot + o_d[None, :], mask=m_d[None, :], other=0.0), UPCAST)
        b_lse = tl.load(lse_base + o_m)
        b_delta = tl.load(delta_base + o_m)
    return b_qt, b_do, b_lse, b_delta


@triton.jit
def _flash_attn_bwd_dkdv_inner(b_dk, b_dv, b_k, b_v, q_base, do_base, lse_base, delta_base, s_qt, s_dot,
                               o_n, o_m0, o_d, lo, hi, Tq, offset, scale_log2,
                               D: tl.constexpr, BD: tl.constexpr, BM: tl.constexpr, IS_CAUSAL: tl.constexpr,
                               MASK: tl.constexpr, PRECISION: tl.constexpr,
                          UPCAST: tl.constexpr):
    for start_m in range(lo, hi, BM):
        o_m = start_m + o_m0
        b_qt, b_do, b_lse, b_delta = _load_query_rows(q_base, do_base, lse_base, delta_base, s_qt, s_dot, o_m, o_d,
                                                      Tq, D, MASK, UPCAST)
        b_st = tl.dot(b_k, b_qt, input_precision=PRECISION) * scale_log2  # (BN, BM)
        b_pt = tl.math.exp2(b_st - b_lse[None, :] * 1.4426950408889634)
        if MASK:
            m_s = (o_m < Tq)[None, :]
            if IS_CAUSAL:
                m_s = m_s & (o_n[:, None] <= o_m[None, :] + offset)
            b_pt = tl.where(m_s, b_pt, 0.0)
        b_dv = tl.dot(b_pt.to(b_do.dtype), b_do, b_dv, input_precision=PRECISION)
        b_dpt = tl.dot(b_v, tl.trans(b_do), input_precision=PRECISION)  # (BN, BM)
        b_dst = b_pt * (b_dpt - b_delta[None, :])
        b_dk = tl.dot(b_dst.to(b_qt.dtype), tl.trans(b_qt), b_dk, input_precision=PRECISION)
    return b_dk, b_dv


@triton.jit
def _flash_attn_bwd_dkdv_kernel(Q, K, V, DO, DK, DV, LSE, DELTA,
                                s_qb, s_qt, s_qh, s_kb, s_kt, s_kh, s_vb, s_vt, s_vh, s_db, s_dt, s_dh,
                                s_dkb, s_dkt, s_dkh, s_dvb, s_dvt, s_dvh,
                                Tq, Tk, scale, scale_log2, T_BUCKET, W_BUCKET,
                                HQ: tl.constexpr, HKV: tl.constexpr, GROUP: tl.constexpr, D: tl.constexpr,
                                BD: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, IS_CAUSAL: tl.constexpr,
                                PRECISION: tl.constexpr,
                          UPCAST: tl.constexpr):
    i_n = tl.program_id(0)  # with a causal mask the first key blocks carry the most work; they go first
    i_bh = tl.program_id(1)
    i_b = (i_bh // HKV).to(tl.int64)
    i_hk = i_bh % HKV
    o_n = i_n * BN + tl.arange(0, BN)
    o_m0 = tl.arange(0, BM)
    o_d = tl.arange(0, BD)
    m_kd = (o_n < Tk)[:, None] & (o_d < D)[None, :]
    b_k = upcast(tl.load(K + i_b * s_kb + i_hk * s_kh + o_n[:, None] * s_kt + o_d[None, :], mask=m_kd, other=0.0),
                 UPCAST)
    b_v = upcast(tl.load(V + i_b * s_vb + i_hk * s_vh + o_n[:, None] * s_vt + o_d[None, :], mask=m_kd, other=0.0),
                 UPCAST)
    b_dk = tl.zeros([BN, BD], tl.float32)
    b_dv = tl.zeros([BN, BD], tl.float32)
    offset = Tk - Tq
    if IS_CAUSAL:
        # the first query row that sees this block's first key, and the first that sees all of its keys
        lo = tl.maximum(i_n * BN - offset, 0) // BM * BM
        lo_full = tl.minimum(tl.maximum((i_n * BN + BN - 1 - offset + BM - 1) // BM * BM, lo), Tq // BM * BM)
        lo_full = tl.maximum(lo_full, lo)
    else:
        lo = 0
        lo_full = 0
    hi_full = Tq // BM * BM
    for g in range(GROUP):
        i_h = i_hk * GROUP + g
        q_base = Q + i_b * s_qb + i_h * s_qh
        do_base = DO + i_b * s_db + i_h * s_dh
        lse_base = LSE + (i_b * HQ + i_h) * Tq
        delta_base = DELTA + (i_b * HQ + i_h) * Tq
        # the diagonal blocks (causal only), then the blocks every key sees in full, then the ragged tail
        b_dk, b_dv = _flash_attn_bwd_dkdv_inner(b_dk, b_dv, b_k, b_v, q_base, do_base, lse_base, delta_base,
                                                s_qt, s_dt, o_n, o_m0, o_d, lo, lo_full, Tq, offset, scale_log2,
                                                D, BD, BM, IS_CAUSAL, True, PRECISION, UPCAST)
        b_dk, b_dv = _flash_attn_bwd_dkdv_inner(b_dk, b_dv, b_k, b_v, q_base, do_base, lse_base, delta_base,
                                                s_qt, s_dt, o_n, o_m0, o_d, lo_full, hi_full, Tq, offset, scale_log2,
                                                D, BD, BM, IS_CAUSAL, False, PRECISION, UPCAST)
        b_dk, b_dv = _flash_attn_bwd_dkdv_inner(b_dk, b_dv, b_k, b_v, q_base, do_base, lse_base, delta_base,
                                                s_qt, s_dt, o_n, o_m0, o_d, tl.maximum(hi_full, lo_full), Tq, Tq,
                                                offset, scale_log2, D, BD, BM, IS_CAUSAL, True, PRECISION, UPCAST)
    b_dk = b_dk * scale
    tl.store(DK + i_b * s_dkb + i_hk * s_dkh + o_n[:, None] * s_dkt + o_d[None, :], b_dk.to(DK.dtype.element_ty),
             mask=m_kd)
    tl.store(DV + i_b * s_dvb + i_hk * s_dvh + o_n[:, None] * s_dvt + o_d[None, :], b_dv.to(DV.dtype.element_ty),
             mask=m_kd)


@triton.jit
def _flash_attn_bwd_dq_inner(b_dq, b_q, b_do, b_lse2, b_delta, k_base, v_base, s_kt, s_vt, o_m, o_n0, o_d,
                             lo, hi, Tk, offset, scale_log2, D: tl.constexpr, BD: tl.constexpr, BN: tl.constexpr,
                             IS_CAUSAL: tl.constexpr, MASK: tl.constexpr, PRECISION: tl.constexpr,
                          UPCAST: tl.constexpr):
    m_d = o_d < D
    for start_n in range(lo, hi, BN):
        o_n = start_n + o_n0
        if MASK:
            m_n = o_n < Tk
            b_kt = upcast(tl.load(k_base + o_n[None, :] * s_kt + o_d[:, None],
                mask=m_n[None, :] & m_d[:, None], other=0.0), UPCAST)
            b_vt = upcast(tl.load(v_base + o_n[None, :] * s_vt + o_d[:, None],
                mask=m_n[None, :] & m_d[:, None], other=0.0), UPCAST)
        else:
            b_kt = upcast(tl.load(k_base + o_n[None, :] * s_kt + o_d[:, None], mask=m_d[:, None], other=0.0), UPCAST)
            b_vt = upcast(tl.load(v_base + o_n[None, :] * s_vt + o_d[:, None], mask=m_d[:, None], other=0.0), UPCAST)
        b_s = tl.dot(b_q, b_kt, input_precision=PRECISION) * scale_log2  # (BM, BN)
        b_p = tl.math.exp2(b_s - b_lse2[:, None])
        if MASK:
            m_s = m_n[None, :]
            if IS_CAUSAL:
                m_s = m_s & (o_n[None, :] <= o_m[:, None] + offset)
            b_p = tl.where(m_s, b_p, 0.0)
        b_dp = tl.dot(b_do, b_vt, input_precision=PRECISION)
        b_ds = b_p * (b_dp - b_delta[:, None])
        b_dq = tl.dot(b_ds.to(b_kt.dtype), tl.trans(b_kt), b_dq, input_precision=PRECISION)
    return b_dq


@triton.jit
def _flash_attn_bwd_dq_kernel(Q, K, V, DO, DQ, LSE, DELTA,
                              s_qb, s_qt, s_qh, s_kb, s_kt, s_kh, s_vb, s_vt, s_vh, s_db, s_dt, s_dh,
                              s_dqb, s_dqt, s_dqh, Tq, Tk, scale, scale_log2, T_BUCKET, W_BUCKET,
                              HQ: tl.constexpr, GROUP: tl.constexpr, D: tl.constexpr, BD: tl.constexpr,
                              BM: tl.constexpr, BN: tl.constexpr, IS_CAUSAL: tl.constexpr, PRECISION: tl.constexpr,
                           UPCAST: tl.constexpr, REV: tl.constexpr):
    i_m, i_bh, i_b, i_h, i_hk = _query_program(HQ, GROUP, REV)
    o_m = i_m * BM + tl.arange(0, BM)
    o_n0 = tl.arange(0, BN)
    o_d = tl.arange(0, BD)
    m_m = o_m < Tq
    m_qd = m_m[:, None] & (o_d < D)[None, :]
    b_q = upcast(tl.load(Q + i_b * s_qb + i_h * s_qh + o_m[:, None] * s_qt + o_d[None, :], mask=m_qd, other=0.0),
                 UPCAST)
    b_do = upcast(tl.load(DO + i_b * s_db + i_h * s_dh + o_m[:, None] * s_dt + o_d[None, :], mask=m_qd, other=0.0),
                  UPCAST)
    b_lse2 = tl.load(LSE + i_bh.to(tl.int64) * Tq + o_m, mask=m_m, other=0.0) * 1.4426950408889634
    b_delta = tl.load(DELTA + i_bh.to(tl.int64) * Tq + o_m, mask=m_m, other=0.0)
    b_dq = tl.zeros([BM, BD], tl.float32)
    k_base = K + i_b * s_kb + i_hk * s_kh
    v_base = V + i_b * s_vb + i_hk * s_vh
    offset = Tk - Tq
    if IS_CAUSAL:
        hi = tl.maximum(tl.minimum(Tk, (i_m + 1) * BM + offset), 0)
        lo_mask = tl.maximum(tl.minimum((i_m * BM + offset + 1) // BN * BN, (Tk // BN) * BN), 0)
    else:
        hi = Tk
        lo_mask = (Tk // BN) * BN
    b_dq = _flash_attn_bwd_dq_inner(b_dq, b_q, b_do, b_lse2, b_delta, k_base, v_base, s_kt, s_vt, o_m, o_n0, o_d,
                                    0, lo_mask, Tk, offset, scale_log2, D, BD, BN, IS_CAUSAL, False, PRECISION, UPCAST)
    b_dq = _flash_attn_bwd_dq_inner(b_dq, b_q, b_do, b_lse2, b_delta, k_base, v_base, s_kt, s_vt, o_m, o_n0, o_d,
                                    lo_mask, hi, Tk, offset, scale_log2, D, BD, BN, IS_CAUSAL, True, PRECISION, UPCAST)
    b_dq = b_dq * scale
    tl.store(DQ + i_b * s_dqb + i_h * s_dqh + o_m[:, None] * s_dqt + o_d[None, :], b_dq.to(DQ.dtype.element_ty),
             mask=m_qd)


# ---------------------------------------------------------------------------------------------- launchers
def _configs(pairs, D: int, orders=(None,)):
    """Tile configurations for the autotuner; big head dims drop the tiles that cannot fit in SRAM. `orders`
    adds the dispatch order (REV) as a tuning choice for the kernels that have one."""
    out = []
    for bm, bn, warps, stages in pairs:
        if D > 128 and bm * bn > 64 * 64:
            continue
        for rev in orders:
            extra = {} if rev is None else {"REV": rev}
            out.append(triton.Config({"BM": bm, "BN": bn, **extra}, num_warps=warps, num_stages=stages))
    return out


def _prune(configs, named_args, **kwargs):
    """Reversed dispatch only matters with a causal mask."""
    causal = kwargs.get("IS_CAUSAL", named_args.get("IS_CAUSAL"))
    return [c for c in configs if causal or not c.kwargs.get("REV", False)]


_FWD_TILES = [(128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 3), (128, 128, 8, 4), (128, 64, 4, 4), (64, 64, 4, 3),
              (64, 128, 4, 3), (64, 32, 4, 2), (64, 64, 4, 4), (128, 64, 8, 2), (128, 32, 4, 4)]
_DKDV_TILES = [(32, 128, 4, 3), (32, 128, 4, 4), (64, 128, 8, 3), (64, 128, 4, 3), (32, 64, 4, 3), (64, 64, 4, 3),
               (64, 64, 4, 4), (16, 64, 4, 2)]
_DQ_TILES = [(128, 32, 4, 3), (128, 32, 4, 4), (128, 64, 8, 3), (128, 64, 4, 3), (64, 64, 4, 3), (64, 128, 4, 3),
             (64, 32, 4, 2)]
_INTERPRET_TILE = {"BM": 32, "BN": 32}
_TUNED: dict = {}


def _tuned(kernel, tiles, D: int):
    """The autotuned launcher of `kernel` for head-dim bucket D (made lazily: autotune only exists on GPU)."""
    key = (kernel.fn.__name__ if hasattr(kernel, "fn") else str(kernel), D > 128)
    if key not in _TUNED:
        has_rev = kernel is not _flash_attn_bwd_dkdv_kernel
        configs = _configs(tiles, D, (False, True) if has_rev else (None,))
        _TUNED[key] = triton.autotune(configs=configs, key=["T_BUCKET", "W_BUCKET", "D", "GROUP", "IS_CAUSAL"],
                                      prune_configs_by={"early_config_prune": _prune} if has_rev else None)(kernel)
    return _TUNED[key]


# Tiles measured best on an H100 SXM (bf16, B*T = 16k, H*D = 2048), picked from the autotuned runs, the table
# runs and a sweep recorded in dev/attention/NOTES.md; keyed by head dim, sequence length and causal. At T = 1k
# some tiles are bimodal between runs (the same config at 140 or 298 TFLOP/s), so the table prefers tiles that
# were good in every run. REV (heaviest query blocks first) helps dQ with a causal mask; only dQ uses it.
# Used unless IOAWARE_AUTOTUNE=1: a first call then compiles three kernels instead of benchmarking dozens.
def tile_table(op: str, D: int, T: int, causal: bool) -> dict:
    short = T < 2048
    rev = False
    if op == "fwd":
        if D <= 64:
            t = (128, 64, 8, 4) if causal and short else (128, 64, 8, 3)
        elif D <= 128:
            t = (128, 64, 8, 3) if short else (128, 128, 8, 3)
        else:
            t = (64, 64, 4, 2)
    elif op == "dkdv":
        if D <= 64:
            t = (32, 128, 4, 3) if causal and short else (64, 128, 4, 3)
        elif D <= 128:
            t = (64, 128, 8, 3)
        else:
            t = (16, 64, 4, 2)
    else:
        rev = causal
        if D <= 64:
            t = (128, 64, 8, 3)
        elif D <= 128:
            # (128, 32, 4 warps) spilled 48 registers at causal T >= 4k and was 2-3% slower (dev/iomodel/tile_spills.py)
            t = (128, 64, 8, 3)
        else:
            t = (64, 32, 4, 2)
    return {"BM": t[0], "BN": t[1], "num_warps": t[2], "num_stages": t[3], "REV": rev}


def _launch(kernel, tiles, grid_fn, head_dim: int, seqlen: int, *args, **kw):
    has_rev = kernel is not _flash_attn_bwd_dkdv_kernel
    if interpreting():
        rev = {"REV": kw["IS_CAUSAL"]} if has_rev else {}
        kernel[grid_fn(_INTERPRET_TILE)](*args, **kw, **_INTERPRET_TILE, **rev)
    elif settings().autotune:
        _tuned(kernel, tiles, head_dim)[grid_fn](*args, **kw)
    else:
        op = "fwd" if kernel is _flash_attn_fwd_kernel else "dkdv" if kernel is _flash_attn_bwd_dkdv_kernel else "dq"
        cfg = tile_table(op, head_dim, seqlen, kw["IS_CAUSAL"])
        if not has_rev:
            cfg.pop("REV")
        kernel[grid_fn(cfg)](*args, **kw, **cfg)


def _bucket(t: int) -> int:
    return 1 << max(int(t) - 1, 0).bit_length()


def _head_dim_block(D: int) -> int:
    return max(16, triton.next_power_of_2(D))


def _precision(dtype: torch.dtype) -> str:
    # fp32 inputs get true fp32 products (as plain PyTorch does); tf32 would be 8x less precise
    return "ieee" if dtype == torch.float32 else "tf32"


def _upcast(dtype: torch.dtype) -> bool:
    return interpreting() and dtype == torch.bfloat16


# The Hopper forward (hopper.py: TMA, warp specialisation) runs where it was measured faster than the kernel above
# on an H100 (dev/attention/NOTES.md, "Hopper forward (TMA/WS)", runs H2-H3): D = 128, fp16/bf16, Tq == Tk, and
# T >= 1024 without a mask (+2% to +20%), T >= 16384 with a causal one (+3%, +14%; at T = 4096 it was a tie).
HOPPER_MIN_T = {False: 1024, True: 16384}


@functools.cache
def _sm_major_of(index: int) -> int:
    return torch.cuda.get_device_capability(index)[0]


def _sm_major(device: torch.device) -> int:
    """The compute capability's major number of a CUDA device (looked up once per device)."""
    return _sm_major_of(device.index if device.index is not None else torch.cuda.current_device())


TRITON_HOPPER_MIN = (3, 4)  # tl.make_tensor_descriptor and tl.range(warp_specialize=...): hopper.py's needs


@functools.cache
def triton_has_hopper_api() -> bool:
    """Whether this Triton can build hopper.py's kernels; older ones fall back to this file's portable kernels
    (with a warning once, so a slower run is never silent)."""
    ver = tuple(int(x) for x in triton.__version__.split("+")[0].split(".")[:2] if x.isdigit())
    ok = ver >= TRITON_HOPPER_MIN and hasattr(tl, "make_tensor_descriptor")
    if not ok:
        import warnings

        warnings.warn(f"triton {triton.__version__} lacks what the Hopper attention kernels need (>= "
                      f"{'.'.join(map(str, TRITON_HOPPER_MIN))}); using the portable kernels", stacklevel=3)
    return ok


def hopper_eligible(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, min_t: int) -> bool:
    """The tensor side of every Hopper dispatch (here and in masked.py): D = 128 on an sm_90 device, T >= min_t,
    not interpreting, and what hopper.py's TMA descriptors need (`hopper_supported`)."""
    if interpreting() or q.device.type != "cuda" or q.shape[-1] != 128 or q.shape[1] < min_t:
        return False
    if _sm_major(q.device) != 9 or not triton_has_hopper_api():
        return False
    from .hopper import hopper_supported

    return hopper_supported(q, k, v)


def _use_hopper(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> bool:
    return hopper_eligible(q, k, v, HOPPER_MIN_T[causal])


# The Hopper dK/dV kernel (hopper.py, TMA for Q and dO, 3-stage pipelined loop) runs where it was measured faster than
# kernel.py's on sm_90 (dev/attention/NOTES.md, "Hopper backward (dK/dV)"): D = 128, fp16/bf16, Tq == Tk, contiguous,
# T >= 2048, causal or not (whole backward +7-13% at T = 2048, 4096 and 16384 on an H200, runs B1-B2). T < 2048 was
# not timed.
HOPPER_BWD_MIN_T = 2048


def _use_hopper_bwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, do: torch.Tensor, lse: torch.Tensor) -> bool:
    if not hopper_eligible(q, k, v, HOPPER_BWD_MIN_T):
        return False
    from .hopper import hopper_supported

    return hopper_supported(do, k, v) and lse.is_contiguous()


def _gluon_takes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether the Gluon forward (gluon_fwd.py, never imported otherwise) runs for these inputs (IOAWARE_GLUON:
    auto at the head dims measured faster; 1 wherever the gate allows; 0, the default, never). Under 1 a refusal is
    warned once per reason, so a forced run that falls back to the kernels here is never silent; under auto the
    fallback is the plan, and silent."""
    mode = settings().gluon
    if mode == "0":
        return False
    from .gluon_gate import GLUON_AUTO_HEAD_DIMS, gluon_refusal

    if mode == "auto" and q.shape[-1] not in GLUON_AUTO_HEAD_DIMS:
        return False
    reason = gluon_refusal(q, k, v)
    if reason is not None and mode == "1":
        _warn_once(reason + "; using the Triton kernels")
    return reason is None


@functools.cache
def _warn_once(message: str) -> None:
    import warnings

    warnings.warn(message, stacklevel=4)


def flash_attn_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
                   softmax_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the forward kernel. Returns out (B, Tq, Hq, D) and lse (B, Hq, Tq) fp32 (natural log)."""
    if _gluon_takes(q, k, v):  # IOAWARE_GLUON=auto: sm_90 + Triton 3.6 at D 128 (measured faster); =1: wherever
        from . import gluon_fwd

        return gluon_fwd.gluon_flash_attn_fwd(q, k, v, causal, softmax_scale)
    if _use_hopper(q, k, v, causal):
        from . import hopper

        return hopper.hopper_flash_attn_fwd(q, k, v, causal, softmax_scale)
    B, Tq, Hq, D = q.shape
    Tk, Hkv = k.shape[1], k.shape[2]
    o = torch.empty_like(q)
    lse = torch.empty((B, Hq, Tq), device=q.device, dtype=torch.float32)
    grid = lambda meta: (triton.cdiv(Tq, meta["BM"]), B * Hq)
    _launch(_flash_attn_fwd_kernel, _FWD_TILES, grid, D, max(Tq, Tk),
            q, k, v, o, lse, q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2), o.stride(0), o.stride(1), o.stride(2),
            Tq, Tk, softmax_scale * LOG2E, _bucket(max(Tq, Tk)), _bucket(B * Hq),
            HQ=Hq, GROUP=Hq // Hkv, D=D, BD=_head_dim_block(D), IS_CAUSAL=causal, PRECISION=_precision(q.dtype),
            UPCAST=_upcast(q.dtype))
    return o, lse


def flash_attn_bwd(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
                   lse: torch.Tensor, causal: bool, softmax_scale: float) -> tuple[torch.Tensor, ...]:
    """Launch the three backward kernels. Returns dq, dk, dv in the inputs' shapes and dtypes."""
    B, Tq, Hq, D = q.shape
    Tk, Hkv = k.shape[1], k.shape[2]
    BD = _head_dim_block(D)
    do = do if do.stride(-1) == 1 else do.contiguous()
    delta = torch.empty((B, Hq, Tq), device=q.device, dtype=torch.float32)
    bm_pre = 64 if not interpreting() else 32
    _flash_attn_bwd_preprocess_kernel[(triton.cdiv(Tq, bm_pre), B * Hq)](
        o, do, delta, o.stride(0), o.stride(1), o.stride(2), do.stride(0), do.stride(1), do.stride(2), Tq,
        HQ=Hq, D=D, BD=BD, BM=bm_pre)
    dq = torch.empty_like(q)
    prec = _precision(q.dtype)
    common = (q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
              v.stride(0), v.stride(1), v.stride(2), do.stride(0), do.stride(1), do.stride(2))
    bucket = _bucket(max(Tq, Tk))
    if _use_hopper_bwd(q, k, v, do, lse):
        from . import hopper

        dk, dv = hopper.hopper_flash_attn_bwd_dkdv(q, k, v, do, lse, delta, causal, softmax_scale)
    else:
        dk = torch.empty_like(k)
        dv = torch.empty_like(v)
        grid_dkdv = lambda meta: (triton.cdiv(Tk, meta["BN"]), B * Hkv)
        _launch(_flash_attn_bwd_dkdv_kernel, _DKDV_TILES, grid_dkdv, D, max(Tq, Tk),
                q, k, v, do, dk, dv, lse, delta, *common, dk.stride(0), dk.stride(1), dk.stride(2),
                dv.stride(0), dv.stride(1), dv.stride(2), Tq, Tk, softmax_scale, softmax_scale * LOG2E, bucket,
                _bucket(B * Hq),
                HQ=Hq, HKV=Hkv, GROUP=Hq // Hkv, D=D, BD=BD, IS_CAUSAL=causal, PRECISION=prec, UPCAST=_upcast(q.dtype))
    _launch(_flash_attn_bwd_dq_kernel, _DQ_TILES, lambda meta: (triton.cdiv(Tq, meta["BM"]), B * Hq), D, max(Tq, Tk),
            q, k, v, do, dq, lse, delta, *common, dq.stride(0), dq.stride(1), dq.stride(2),
            Tq, Tk, softmax_scale, softmax_scale * LOG2E, bucket, _bucket(B * Hq),
            HQ=Hq, GROUP=Hq // Hkv, D=D, BD=BD, IS_CAUSAL=causal, PRECISION=prec, UPCAST=_upcast(q.dtype))
    return dq, dk, dv


__all__ = ["flash_attn_bwd", "flash_attn_fwd"]
