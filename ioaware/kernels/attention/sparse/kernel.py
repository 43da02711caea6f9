"""NSA's selected branch in Triton, in both loop orders, forward and backward.

Every query t of KV head h attends to the raw tokens of its n selected blocks (indices (B, T, Hkv, n), -1 unused).

NSA order (query-outer, `nsa`): one program per (token, batch x KV head) loads the G query heads of the group as
one (GP, D) tile, GP = max(16, G) (tensor-core tiles need 16 rows), and walks the token's n blocks with an online
softmax. For G < 16 most of the tile is padding: wasted FLOPs, and every block's K and V are loaded once per token.

FSA order (KV-block-outer, `fsa`, Flash Sparse Attention, arXiv:2508.18224): the (token, slot) pairs are sorted by
block (block_lists), so each block knows the tokens that picked it. One program per work item (batch x KV head,
block, up to W of its tokens) loads the block's K and V once and walks its tokens in tiles of BM rows for every
query head of the group: no padding whatever G is. A token's n partial results live in different programs, so each
writes a partial output normalised by its own softmax sum, with its base-2 LSE, to a buffer at the pair's sorted
position; a combine kernel then merges each token's n partials by their LSEs, in slot order (no atomics: the
result is deterministic).

Backward (by recomputation, with the final LSE and delta = rowsum(dO * O)): the FSA-order kernel accumulates the
block's dK and dV over its tokens (one partial per work item, summed per block by a reduce kernel) and, in FSA order,
writes each pair's dQ partial (summed per token by another reduce kernel); in NSA order a query-outer kernel
computes dQ instead and the FSA-order kernel only dK and dV (a query-outer dK/dV would need atomics).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..._dispatch import interpreting
from ...triton_utils import LOG2E, upcast
from .compressed import row_delta

LN2 = tl.constexpr(0.6931471805599453)  # a constexpr: jit code may read only constexpr globals


# ----------------------------------------------------------------------------------- FSA order: forward
@triton.jit
def _nsa_slc_fsa_fwd_kernel(Q, K, V, OP, LP, TOK, START, CNT, SEG, CHUNK, s_qb, s_qt, s_qh, s_kb, s_kt, s_kh,
                            T, NPAIR, scale_log2, HKV: tl.constexpr, NS: tl.constexpr, GROUP: tl.constexpr,
                            D: tl.constexpr, BD: tl.constexpr, BM: tl.constexpr, BS: tl.constexpr, W: tl.constexpr,
                            IS_CAUSAL: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    i_w = tl.program_id(0)
    seg = tl.load(SEG + i_w)
    if seg < 0:  # past the last work item (the grid is an upper bound, sized without a device sync)
        return
    i_bh = (seg // NS).to(tl.int64)
    i_j = seg % NS
    i_b = i_bh // HKV
    i_hk = i_bh % HKV
    start = tl.load(START + seg)
    c0 = tl.load(CHUNK + i_w) * W
    c1 = tl.minimum(c0 + W, tl.load(CNT + seg))
    o_k = i_j * BS + tl.arange(0, BS)
    o_d = tl.arange(0, BD)
    m_k = o_k < T
    m_d = o_d < D
    p_kv = i_b * s_kb + i_hk * s_kh
    b_kt = upcast(tl.load(K + p_kv + o_k[None, :] * s_kt + o_d[:, None], mask=m_k[None, :] & m_d[:, None], other=0.0),
                  UPCAST)
    b_v = upcast(tl.load(V + p_kv + o_k[:, None] * s_kt + o_d[None, :], mask=m_k[:, None] & m_d[None, :], other=0.0),
                 UPCAST)
    for c in range(c0, c1, BM):
        o_p = c + tl.arange(0, BM)
        m_p = o_p < c1
        b_t = tl.load(TOK + i_bh * NPAIR + start + o_p, mask=m_p, other=0)
        m_s = m_p[:, None] & m_k[None, :]
        if IS_CAUSAL:
            m_s = m_s & (o_k[None, :] <= b_t[:, None])
        row = (i_bh * NPAIR + start + o_p) * GROUP
        for g in range(GROUP):
            i_h = i_hk * GROUP + g
            b_q = upcast(tl.load(Q + i_b * s_qb + i_h * s_qh + b_t[:, None] * s_qt + o_d[None, :],
                                 mask=m_p[:, None] & m_d[None, :], other=0.0), UPCAST)
            b_s = tl.where(m_s, tl.dot(b_q, b_kt, input_precision=PRECISION) * scale_log2, float("-inf"))
            b_m = tl.max(b_s, 1)
            b_mu = tl.where(b_m == float("-inf"), 0.0, b_m)
            b_p = tl.math.exp2(b_s - b_mu[:, None])
            b_l = tl.sum(b_p, 1)
            b_empty = b_l == 0.0
            b_o = tl.dot(b_p.to(b_v.dtype), b_v, input_precision=PRECISION) / tl.where(b_empty, 1.0, b_l)[:, None]
            b_lp = tl.where(b_empty, float("-inf"), b_mu + tl.math.log2(tl.where(b_empty, 1.0, b_l)))
            tl.store(OP + (row + g)[:, None] * BD + o_d[None, :], b_o.to(OP.dtype.element_ty), mask=m_p[:, None])
            tl.store(LP + row + g, b_lp, mask=m_p)


@triton.jit
def _nsa_slc_fsa_combine_kernel(OP, LP, POS, IDX, O, LSE, s_ib, s_it, s_ih, s_ob, s_ot, s_oh, T, NPAIR,
                                HQ: tl.constexpr, HKV: tl.constexpr, GROUP: tl.constexpr, NSEL: tl.constexpr,
                                D: tl.constexpr, BD: tl.constexpr, BM: tl.constexpr):
    i_m = tl.program_id(0)
    i_bhq = tl.program_id(1)
    i_b = (i_bhq // HQ).to(tl.int64)
    i_h = i_bhq % HQ
    i_hk = i_h // GROUP
    g = i_h % GROUP
    i_bh = i_b * HKV + i_hk
    o_m = i_m * BM + tl.arange(0, BM)
    o_d = tl.arange(0, BD)
    m_m = o_m < T
    m_d = o_d < D
    b_m = tl.full([BM], float("-inf"), tl.float32)
    b_l = tl.zeros([BM], tl.float32)
    b_acc = tl.zeros([BM, BD], tl.float32)
    for s in range(NSEL):  # slot order: a fixed summation order, so the result is deterministic
        b_j = tl.load(IDX + i_b * s_ib + o_m * s_it + i_hk * s_ih + s, mask=m_m, other=-1)
        m_ok = b_j >= 0
        b_pos = tl.load(POS + i_bh * NPAIR + o_m * NSEL + s, mask=m_ok, other=0)
        row = (i_bh * NPAIR + b_pos) * GROUP + g
        b_lp = tl.load(LP + row, mask=m_ok, other=float("-inf"))
        b_op = tl.load(OP + row[:, None] * BD + o_d[None, :], mask=m_ok[:, None], other=0.0).to(tl.float32)
        b_m_new = tl.maximum(b_m, b_lp)
        b_mu = tl.where(b_m_new == float("-inf"), 0.0, b_m_new)
        b_a = tl.math.exp2(b_m - b_mu)
        b_w = tl.math.exp2(b_lp - b_mu)
        b_l = b_l * b_a + b_w
        b_acc = b_acc * b_a[:, None] + b_w[:, None] * b_op
        b_m = b_m_new
    b_empty = b_l == 0.0
    b_o = b_acc / tl.where(b_empty, 1.0, b_l)[:, None]
    b_lse = tl.where(b_empty, float("-inf"), (b_m + tl.math.log2(tl.where(b_empty, 1.0, b_l))) * LN2)
    tl.store(O + i_b * s_ob + i_h * s_oh + o_m[:, None] * s_ot + o_d[None, :], b_o.to(O.dtype.element_ty),
             mask=m_m[:, None] & m_d[None, :])
    tl.store(LSE + i_bhq.to(tl.int64) * T + o_m, b_lse, mask=m_m)


# ----------------------------------------------------------------------------------- NSA order: forward
@triton.jit
def _nsa_slc_fwd_kernel(Q, K, V, O, LSE, IDX, s_qb, s_qt, s_qh, s_kb, s_kt, s_kh, s_ib, s_it, s_ih, T,
                        scale_log2, HQ: tl.constexpr, HKV: tl.constexpr, GROUP: tl.constexpr, GP: tl.constexpr,
                        NSEL: tl.constexpr, D: tl.constexpr, BD: tl.constexpr, BS: tl.constexpr,
                        IS_CAUSAL: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    i_t = tl.program_id(0)
    i_bh = tl.program_id(1)
    i_b = (i_bh // HKV).to(tl.int64)
    i_hk = i_bh % HKV
    o_g = tl.arange(0, GP)
    o_d = tl.arange(0, BD)
    o_s = tl.arange(0, BS)
    m_g = o_g < GROUP
    m_d = o_d < D
    i_h = i_hk * GROUP + o_g
    m_qd = m_g[:, None] & m_d[None, :]
    b_q = upcast(tl.load(Q + i_b * s_qb + i_t * s_qt + i_h[:, None] * s_qh + o_d[None, :], mask=m_qd, other=0.0),
                 UPCAST)
    p_kv = K + i_b * s_kb + i_hk * s_kh
    p_vv = V + i_b * s_kb + i_hk * s_kh
    b_m = tl.full([GP], float("-inf"), tl.float32)
    b_l = tl.zeros([GP], tl.float32)
    b_acc = tl.zeros([GP, BD], tl.float32)
    for s in range(NSEL):
        i_j = tl.load(IDX + i_b * s_ib + i_t * s_it + i_hk * s_ih + s)
        if i_j >= 0:
            o_k = i_j * BS + o_s
            m_k = o_k < T
            if IS_CAUSAL:
                m_k = m_k & (o_k <= i_t)
            b_kt = upcast(tl.load(p_kv + o_k[None, :] * s_kt + o_d[:, None], mask=m_k[None, :] & m_d[:, None],
                                  other=0.0), UPCAST)
            b_s = tl.where(m_k[None, :], tl.dot(b_q, b_kt, input_precision=PRECISION) * scale_log2, float("-inf"))
            b_m_new = tl.maximum(b_m, tl.max(b_s, 1))
            b_mu = tl.where(b_m_new == float("-inf"), 0.0, b_m_new)
            b_p = tl.math.exp2(b_s - b_mu[:, None])
            b_a = tl.math.exp2(b_m - b_mu)
            b_l = b_l * b_a + tl.sum(b_p, 1)
            b_v = upcast(tl.load(p_vv + o_k[:, None] * s_kt + o_d[None, :], mask=m_k[:, None] & m_d[None, :],
                                 other=0.0), UPCAST)
            b_acc = tl.dot(b_p.to(b_v.dtype), b_v, b_acc * b_a[:, None], input_precision=PRECISION)
            b_m = b_m_new
    b_empty = b_l == 0.0
    b_o = b_acc / tl.where(b_empty, 1.0, b_l)[:, None]
    b_lse = tl.where(b_empty, float("-inf"), (b_m + tl.math.log2(tl.where(b_empty, 1.0, b_l))) * LN2)
    tl.store(O + i_b * s_qb + i_t * s_qt + i_h[:, None] * s_qh + o_d[None, :], b_o.to(O.dtype.element_ty), mask=m_qd)
    tl.store(LSE + (i_b * HQ + i_h) * T + i_t, b_lse, mask=m_g)


# ---------------------------------------------------------------------------------------------- backward
@triton.jit
def _nsa_slc_fsa_bwd_kernel(Q, K, V, DO, LSE, DELTA, DQP, DKP, DVP, TOK, START, CNT, SEG, CHUNK,
                            s_qb, s_qt, s_qh, s_kb, s_kt, s_kh, s_db, s_dt, s_dh, T, NPAIR, scale_log2,
                            HQ: tl.constexpr, HKV: tl.constexpr, NS: tl.constexpr, GROUP: tl.constexpr,
                            D: tl.constexpr, BD: tl.constexpr, BM: tl.constexpr, BS: tl.constexpr, W: tl.constexpr,
                            WRITE_DQ: tl.constexpr, IS_CAUSAL: tl.constexpr, PRECISION: tl.constexpr,
                            UPCAST: tl.constexpr):
    i_w = tl.program_id(0)
    seg = tl.load(SEG + i_w)
    if seg < 0:
        return
    i_bh = (seg // NS).to(tl.int64)
    i_j = seg % NS
    i_b = i_bh // HKV
    i_hk = i_bh % HKV
    start = tl.load(START + seg)
    c0 = tl.load(CHUNK + i_w) * W
    c1 = tl.minimum(c0 + W, tl.load(CNT + seg))
    o_k = i_j * BS + tl.arange(0, BS)
    o_d = tl.arange(0, BD)
    m_k = o_k < T
    m_d = o_d < D
    p_kv = i_b * s_kb + i_hk * s_kh + o_k[:, None] * s_kt + o_d[None, :]
    m_kd = m_k[:, None] & m_d[None, :]
    b_k = upcast(tl.load(K + p_kv, mask=m_kd, other=0.0), UPCAST)
    b_v = upcast(tl.load(V + p_kv, mask=m_kd, other=0.0), UPCAST)
    b_dk = tl.zeros([BS, BD], tl.float32)
    b_dv = tl.zeros([BS, BD], tl.float32)
    for c in range(c0, c1, BM):
        o_p = c + tl.arange(0, BM)
        m_p = o_p < c1
        b_t = tl.load(TOK + i_bh * NPAIR + start + o_p, mask=m_p, other=0)
        m_s = m_k[:, None] & m_p[None, :]
        if IS_CAUSAL:
            m_s = m_s & (o_k[:, None] <= b_t[None, :])
        row = (i_bh * NPAIR + start + o_p) * GROUP
        for g in range(GROUP):
            i_h = i_hk * GROUP + g
            b_qt = upcast(tl.load(Q + i_b * s_qb + i_h * s_qh + b_t[None, :] * s_qt + o_d[:, None],
                                  mask=m_p[None, :] & m_d[:, None], other=0.0), UPCAST)
            b_do = upcast(tl.load(DO + i_b * s_db + i_h * s_dh + b_t[:, None] * s_dt + o_d[None, :],
                                  mask=m_p[:, None] & m_d[None, :], other=0.0), UPCAST)
            b_lse2 = tl.load(LSE + (i_b * HQ + i_h) * T + b_t, mask=m_p, other=0.0) * 1.4426950408889634
            b_delta = tl.load(DELTA + (i_b * HQ + i_h) * T + b_t, mask=m_p, other=0.0)
            b_st = tl.dot(b_k, b_qt, input_precision=PRECISION) * scale_log2  # (BS, BM)
            b_pt = tl.where(m_s, tl.math.exp2(b_st - b_lse2[None, :]), 0.0)
            b_dv = tl.dot(b_pt.to(b_do.dtype), b_do, b_dv, input_precision=PRECISION)
            b_dpt = tl.dot(b_v, tl.trans(b_do), input_precision=PRECISION)
            b_dst = b_pt * (b_dpt - b_delta[None, :])
            b_dk = tl.dot(b_dst.to(b_qt.dtype), tl.trans(b_qt), b_dk, input_precision=PRECISION)
            if WRITE_DQ:
                b_dq = tl.dot(tl.trans(b_dst).to(b_k.dtype), b_k, input_precision=PRECISION)  # (BM, BD)
                tl.store(DQP + (row + g)[:, None] * BD + o_d[None, :], b_dq, mask=m_p[:, None])
    p_part = i_w.to(tl.int64) * BS * BD + tl.arange(0, BS)[:, None] * BD + o_d[None, :]
    tl.store(DKP + p_part, b_dk)
    tl.store(DVP + p_part, b_dv)


@triton.jit
def _nsa_slc_dkdv_reduce_kernel(DKP, DVP, DK, DV, FIRST, NITEM, s_kb, s_kt, s_kh, T, scale, HKV: tl.constexpr,
                                NS: tl.constexpr, D: tl.constexpr, BD: tl.constexpr, BS: tl.constexpr):
    i_j = tl.program_id(0)
    i_bh = tl.program_id(1)
    seg = i_bh * NS + i_j
    first = tl.load(FIRST + seg)
    n = tl.load(NITEM + seg)
    o_r = tl.arange(0, BS)
    o_d = tl.arange(0, BD)
    b_dk = tl.zeros([BS, BD], tl.float32)
    b_dv = tl.zeros([BS, BD], tl.float32)
    base = first.to(tl.int64) * BS * BD + o_r[:, None] * BD + o_d[None, :]
    for i in range(0, n):  # a block's work items in order: deterministic
        p = base + i * BS * BD
        b_dk += tl.load(DKP + p)
        b_dv += tl.load(DVP + p)
    o_k = i_j * BS + o_r
    m = (o_k < T)[:, None] & (o_d < D)[None, :]
    p_out = (i_bh // HKV).to(tl.int64) * s_kb + (i_bh % HKV) * s_kh + o_k[:, None] * s_kt + o_d[None, :]
    tl.store(DK + p_out, (b_dk * scale).to(DK.dtype.element_ty), mask=m)
    tl.store(DV + p_out, b_dv.to(DV.dtype.element_ty), mask=m)


@triton.jit
def _nsa_slc_dq_reduce_kernel(DQP, POS, IDX, DQ, s_ib, s_it, s_ih, s_qb, s_qt, s_qh, T, NPAIR, scale,
                              HQ: tl.constexpr, HKV: tl.constexpr, GROUP: tl.constexpr, NSEL: tl.constexpr,
                              D: tl.constexpr, BD: tl.constexpr, BM: tl.constexpr):
    i_m = tl.program_id(0)
    i_bhq = tl.program_id(1)
    i_b = (i_bhq // HQ).to(tl.int64)
    i_h = i_bhq % HQ
    i_hk = i_h // GROUP
    i_bh = i_b * HKV + i_hk
    o_m = i_m * BM + tl.arange(0, BM)
    o_d = tl.arange(0, BD)
    m_m = o_m < T
    b_dq = tl.zeros([BM, BD], tl.float32)
    for s in range(NSEL):
        b_j = tl.load(IDX + i_b * s_ib + o_m * s_it + i_hk * s_ih + s, mask=m_m, other=-1)
        m_ok = b_j >= 0
        b_pos = tl.load(POS + i_bh * NPAIR + o_m * NSEL + s, mask=m_ok, other=0)
        row = (i_bh * NPAIR + b_pos) * GROUP + i_h % GROUP
        b_dq += tl.load(DQP + row[:, None] * BD + o_d[None, :], mask=m_ok[:, None], other=0.0)
    tl.store(DQ + i_b * s_qb + i_h * s_qh + o_m[:, None] * s_qt + o_d[None, :], (b_dq * scale).to(DQ.dtype.element_ty),
             mask=m_m[:, None] & (o_d < D)[None, :])


# Its prologue (program ids, the query tile and its block list) repeats _nsa_slc_fwd_kernel's: the two kernels take
# different pointer sets, and a shared @triton.jit helper returning a dozen tensors reads worse than the lines.
@triton.jit
def _nsa_slc_bwd_dq_kernel(Q, K, V, DO, LSE, DELTA, DQ, IDX, s_qb, s_qt, s_qh, s_kb, s_kt, s_kh, s_db, s_dt, s_dh,
                           s_ib, s_it, s_ih, T, scale, scale_log2, HQ: tl.constexpr, HKV: tl.constexpr,
                           GROUP: tl.constexpr, GP: tl.constexpr, NSEL: tl.constexpr, D: tl.constexpr,
                           BD: tl.constexpr, BS: tl.constexpr, IS_CAUSAL: tl.constexpr, PRECISION: tl.constexpr,
                           UPCAST: tl.constexpr):
    i_t = tl.program_id(0)
    i_bh = tl.program_id(1)
    i_b = (i_bh // HKV).to(tl.int64)
    i_hk = i_bh % HKV
    o_g = tl.arange(0, GP)
    o_d = tl.arange(0, BD)
    o_s = tl.arange(0, BS)
    m_g = o_g < GROUP
    m_d = o_d < D
    i_h = i_hk * GROUP + o_g
    m_qd = m_g[:, None] & m_d[None, :]
    b_q = upcast(tl.load(Q + i_b * s_qb + i_t * s_qt + i_h[:, None] * s_qh + o_d[None, :], mask=m_qd, other=0.0),
                 UPCAST)
    b_do = upcast(tl.load(DO + i_b * s_db + i_t * s_dt + i_h[:, None] * s_dh + o_d[None, :], mask=m_qd, other=0.0),
                  UPCAST)
    b_lse2 = tl.load(LSE + (i_b * HQ + i_h) * T + i_t, mask=m_g, other=0.0) * 1.4426950408889634
    b_delta = tl.load(DELTA + (i_b * HQ + i_h) * T + i_t, mask=m_g, other=0.0)
    b_dq = tl.zeros([GP, BD], tl.float32)
    p_kv = i_b * s_kb + i_hk * s_kh
    for s in range(NSEL):
        i_j = tl.load(IDX + i_b * s_ib + i_t * s_it + i_hk * s_ih + s)
        if i_j >= 0:
            o_k = i_j * BS + o_s
            m_k = o_k < T
            if IS_CAUSAL:
                m_k = m_k & (o_k <= i_t)
            m_t = m_k[None, :] & m_d[:, None]
            b_kt = upcast(tl.load(K + p_kv + o_k[None, :] * s_kt + o_d[:, None], mask=m_t, other=0.0), UPCAST)
            b_vt = upcast(tl.load(V + p_kv + o_k[None, :] * s_kt + o_d[:, None], mask=m_t, other=0.0), UPCAST)
            b_s = tl.dot(b_q, b_kt, input_precision=PRECISION) * scale_log2
            b_p = tl.where(m_k[None, :] & m_g[:, None], tl.math.exp2(b_s - b_lse2[:, None]), 0.0)
            b_dp = tl.dot(b_do, b_vt, input_precision=PRECISION)
            b_ds = b_p * (b_dp - b_delta[:, None])
            b_dq = tl.dot(b_ds.to(b_kt.dtype), tl.trans(b_kt), b_dq, input_precision=PRECISION)
    tl.store(DQ + i_b * s_qb + i_t * s_qt + i_h[:, None] * s_qh + o_d[None, :], (b_dq * scale).to(DQ.dtype.element_ty),
             mask=m_qd)


# ---------------------------------------------------------------------------------------------- host side
def block_lists(idx: torch.Tensor, ns: int) -> dict:
    """The block -> tokens map of FSA, built with one stable sort (no device sync).

    idx (B, T, Hkv, n) -> tok (BH, T n) the token of each (token, slot) pair sorted by block (ascending tokens within
    a block; unused slots last), pos (BH, T n) the sorted position of pair t n + s, cnt and start (BH Ns) each
    block's pair count and first sorted position."""
    B, T, Hkv, n = idx.shape
    bh = B * Hkv
    key = idx.permute(0, 2, 1, 3).reshape(bh, T * n).long()
    key = torch.where(key >= 0, key, ns)
    _, perm = torch.sort(key, dim=1, stable=True)
    tok = (perm // n).to(torch.int32)
    pos = torch.empty_like(perm)
    pos.scatter_(1, perm, torch.arange(T * n, device=idx.device).expand(bh, -1))
    cnt = torch.zeros(bh, ns + 1, dtype=torch.long, device=idx.device)
    cnt.scatter_add_(1, key, torch.ones_like(key))
    cnt = cnt[:, :ns]
    start = cnt.cumsum(1) - cnt
    return {"tok": tok.contiguous(), "pos": pos.to(torch.int32).contiguous(), "cnt": cnt.reshape(-1).to(torch.int32),
            "start": start.reshape(-1).to(torch.int32), "npair": T * n, "ns": ns}


def work_items(lists: dict, w: int) -> dict:
    """Split every block's token list into work items of at most w tokens: seg (block id bh Ns + j, -1 past the
    end) and chunk (which w-slice) per program, plus each block's first item and item count. The grid is the upper
    bound BH (ceil(T n / w) + Ns), so no device sync is needed to size it."""
    cnt = lists["cnt"].long()
    nitem = (cnt + w - 1) // w
    cum = nitem.cumsum(0)
    first = cum - nitem
    nseg = cnt.numel()
    bh = nseg // lists["ns"]
    total_max = bh * (-(-lists["npair"] // w) + lists["ns"])
    item = torch.arange(total_max, device=cnt.device)
    seg = torch.searchsorted(cum, item, right=True)
    segc = seg.clamp(max=nseg - 1)
    chunk = item - first[segc]
    seg = torch.where(seg < nseg, seg, -1)
    return {"seg": seg.to(torch.int32), "chunk": chunk.to(torch.int32), "first": first.to(torch.int32),
            "nitem": nitem.to(torch.int32), "grid": total_max}


def _precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"


def _upcast(dtype: torch.dtype) -> bool:
    return interpreting() and dtype == torch.bfloat16


def _bd(D: int) -> int:
    return max(16, triton.next_power_of_2(D))


# Tiles. FSA order: BM query rows per tile (64 fills a Hopper wgmma M), W = BM x CH tokens per work item: K and V
# (2 l' D elements) are loaded once per item, so the items must be long enough that this is small beside the W G D
# query elements they serve, and many enough to fill 132 SMs (at T = 64k, n = 16, W = 256 there are 4096 items per
# KV head). NSA order: GP = max(16, G) rows, one token per program. Under the interpreter, small tiles that still
# give several items per block and several tiles per item, so every code path runs.
def tile_table(op: str, D: int, G: int) -> dict:
    if interpreting():
        return {"fsa_fwd": {"BM": 16, "CH": 2}, "fsa_bwd": {"BM": 16, "CH": 2}}.get(op, {})
    warps = 4 if D <= 64 else 8
    if op == "fsa_fwd":
        return {"BM": 64, "CH": 4, "num_warps": warps, "num_stages": 2}
    if op == "fsa_bwd":
        return {"BM": 64 if D <= 128 else 32, "CH": 8, "num_warps": warps, "num_stages": 2}
    if op == "reduce":
        return {"BM": 64, "num_warps": 4}
    return {"num_warps": 4, "num_stages": 2}  # NSA order


# Which order runs when the caller says "auto": FSA's own rule (its README: the KV-outer kernel for GQA groups up to 8,
# the NSA kernel above, where a group already fills 16 rows). It is the starting point until `ioaware bench nsa`
# measures the crossover on the device; the bench reports both orders and this choice side by side.
# Backward: FSA's order won at every measured group and length on the H200 (nsa-h200-2026-12-03.json: 2.6-8.0x at
# G <= 4, 1.07-1.11x at G = 16, T = 8k-64k), while the NSA-order forward stays ahead at G = 16 (by 3-6%).
FSA_MAX_GROUP = 8


def choose_order(order: str, G: int, T: int, backward: bool = False) -> str:
    if order != "auto":
        return order
    if backward:
        return "fsa"
    return "fsa" if G <= FSA_MAX_GROUP else "nsa"


def _strides(*ts):
    return tuple(s for t in ts for s in (t.stride(0), t.stride(1), t.stride(2)))


def nsa_slc_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, idx: torch.Tensor, select_size: int, causal: bool,
                scale: float, order: str = "auto") -> tuple[torch.Tensor, torch.Tensor, dict | None]:
    """Selected-branch forward: o (B, T, Hq, D), lse (B, Hq, T) fp32, and the block lists (FSA order; else None)."""
    B, T, Hq, D = q.shape
    Hkv, n = k.shape[2], idx.shape[-1]
    G = Hq // Hkv
    ns = -(-T // select_size)
    o = torch.empty_like(q)
    lse = torch.empty((B, Hq, T), device=q.device, dtype=torch.float32)
    common = dict(D=D, BD=_bd(D), BS=select_size, IS_CAUSAL=causal, PRECISION=_precision(q.dtype),
                  UPCAST=_upcast(q.dtype))
    if choose_order(order, G, T) == "nsa":
        _nsa_slc_fwd_kernel[(T, B * Hkv)](q, k, v, o, lse, idx, *_strides(q, k, idx), T, scale * LOG2E, HQ=Hq, HKV=Hkv,
                                          GROUP=G, GP=max(16, triton.next_power_of_2(G)), NSEL=n, **common,
                                          **tile_table("nsa", D, G))
        return o, lse, None
    lists = block_lists(idx, ns)
    cfg = tile_table("fsa_fwd", D, G)
    bm, ch = cfg.pop("BM"), cfg.pop("CH")
    items = work_items(lists, bm * ch)
    npair = lists["npair"]
    # partial outputs in the inputs' precision (fp32 for fp32): each is one normalised attention output, rounded once
    op = torch.empty((B * Hkv, npair, G, _bd(D)), device=q.device, dtype=q.dtype)
    lp = torch.empty((B * Hkv, npair, G), device=q.device, dtype=torch.float32)
    _nsa_slc_fsa_fwd_kernel[(items["grid"],)](
        q, k, v, op, lp, lists["tok"], lists["start"], lists["cnt"], items["seg"], items["chunk"], *_strides(q, k),
        T, npair, scale * LOG2E, HKV=Hkv, NS=ns, GROUP=G, BM=bm, W=bm * ch, **common, **cfg)
    bmr = 64 if not interpreting() else 32
    _nsa_slc_fsa_combine_kernel[(triton.cdiv(T, bmr), B * Hq)](
        op, lp, lists["pos"], idx, o, lse, *_strides(idx, o), T, npair, HQ=Hq, HKV=Hkv, GROUP=G, NSEL=n, D=D, BD=_bd(D),
        BM=bmr)
    return o, lse, lists


def nsa_slc_bwd(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
                lse: torch.Tensor, idx: torch.Tensor, select_size: int, causal: bool, scale: float,
                order: str = "auto", lists: dict | None = None):
    """Selected-branch backward: dq, dk, dv."""
    B, T, Hq, D = q.shape
    Hkv, n = k.shape[2], idx.shape[-1]
    G = Hq // Hkv
    ns = -(-T // select_size)
    do = do.contiguous()
    delta = row_delta(o, do)
    order = choose_order(order, G, T, backward=True)
    lists = lists if lists is not None else block_lists(idx, ns)
    cfg = tile_table("fsa_bwd", D, G)
    bm, ch = cfg.pop("BM"), cfg.pop("CH")
    items = work_items(lists, bm * ch)
    npair, bd = lists["npair"], _bd(D)
    prec, up = _precision(q.dtype), _upcast(q.dtype)
    write_dq = order == "fsa"
    dqp = torch.empty((B * Hkv, npair, G, bd) if write_dq else (1,), device=q.device, dtype=torch.float32)
    dkp = torch.empty((items["grid"], select_size, bd), device=q.device, dtype=torch.float32)
    dvp = torch.empty_like(dkp)
    _nsa_slc_fsa_bwd_kernel[(items["grid"],)](
        q, k, v, do, lse, delta, dqp, dkp, dvp, lists["tok"], lists["start"], lists["cnt"], items["seg"],
        items["chunk"], *_strides(q, k, do), T, npair, scale * LOG2E, HQ=Hq, HKV=Hkv, NS=ns, GROUP=G, D=D, BD=bd,
        BM=bm, BS=select_size, W=bm * ch, WRITE_DQ=write_dq, IS_CAUSAL=causal, PRECISION=prec, UPCAST=up, **cfg)
    dk, dv = torch.empty_like(k), torch.empty_like(v)
    _nsa_slc_dkdv_reduce_kernel[(ns, B * Hkv)](dkp, dvp, dk, dv, items["first"], items["nitem"], *_strides(k), T,
                                               scale, HKV=Hkv, NS=ns, D=D, BD=bd, BS=select_size)
    dq = torch.empty_like(q)
    if write_dq:
        bmr = 64 if not interpreting() else 32
        _nsa_slc_dq_reduce_kernel[(triton.cdiv(T, bmr), B * Hq)](
            dqp, lists["pos"], idx, dq, *_strides(idx, dq), T, npair, scale, HQ=Hq, HKV=Hkv, GROUP=G, NSEL=n, D=D,
            BD=bd, BM=bmr)
    else:
        _nsa_slc_bwd_dq_kernel[(T, B * Hkv)](
            q, k, v, do, lse, delta, dq, idx, *_strides(q, k, do, idx), T, scale, scale * LOG2E, HQ=Hq, HKV=Hkv,
            GROUP=G, GP=max(16, triton.next_power_of_2(G)), NSEL=n, D=D, BD=bd, BS=select_size, IS_CAUSAL=causal,
            PRECISION=prec, UPCAST=up, **tile_table("nsa", D, G))
    return dq, dk, dv


__all__ = ["block_lists", "choose_order", "nsa_slc_bwd", "nsa_slc_fwd", "work_items"]
