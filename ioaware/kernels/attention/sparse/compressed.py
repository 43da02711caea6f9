"""NSA's compressed branch and its block selection in Triton.

Compressed attention is attention over Nc = (T - l) // d + 1 compressed keys with a stepped causal mask (query t
sees compressed key c iff c d + l - 1 <= t), written in the FlashAttention-2 way: forward with an online softmax
(O and the LSE only), backward by recomputation (dK/dV: one program per compressed-key block walking every query
head of its group; dQ: one program per query block).

The selection kernel recomputes the compressed probabilities p = 2^(s - LSE) of every query head of one KV group,
sums them over the group, and maps compressed tokens onto selection blocks with one small matmul per tile: a tile
of BC compressed tokens starting at c0 = j0 S - (L - 1) covers NJ = (BC - L + 1) // S whole selection blocks
j0 .. j0 + NJ - 1 (L = l / d, S = l' / d, in stride-sized chunks), and imp = p_group (BM, BC) @ W (BC, BJ) with
W[c, j] = the chunks token c shares with block j. It writes the block scores (+inf kept, -inf not a candidate);
torch.topk then takes the top n.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..._dispatch import interpreting
from ...triton_utils import LOG2E, upcast

LN2 = tl.constexpr(0.6931471805599453)  # a constexpr: jit code may read only constexpr globals


# ----------------------------------------------------------------------------------------------- forward
@triton.jit
def _nsa_cmp_fwd_kernel(Q, K, V, O, LSE, s_qb, s_qt, s_qh, s_kb, s_kt, s_kh, s_ob, s_ot, s_oh, T, NC, scale_log2,
                        HQ: tl.constexpr, GROUP: tl.constexpr, D: tl.constexpr, BD: tl.constexpr, BM: tl.constexpr,
                        BN: tl.constexpr, STRIDE: tl.constexpr, BLOCK: tl.constexpr, IS_CAUSAL: tl.constexpr,
                        PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    i_m = tl.program_id(0)
    i_bh = tl.program_id(1)
    i_b = (i_bh // HQ).to(tl.int64)
    i_h = i_bh % HQ
    i_hk = i_h // GROUP
    o_m = i_m * BM + tl.arange(0, BM)
    o_n0 = tl.arange(0, BN)
    o_d = tl.arange(0, BD)
    m_m = o_m < T
    m_d = o_d < D
    b_q = upcast(tl.load(Q + i_b * s_qb + i_h * s_qh + o_m[:, None] * s_qt + o_d[None, :],
                         mask=m_m[:, None] & m_d[None, :], other=0.0), UPCAST)
    k_base = K + i_b * s_kb + i_hk * s_kh
    v_base = V + i_b * s_kb + i_hk * s_kh
    b_m = tl.full([BM], float("-inf"), tl.float32)
    b_l = tl.zeros([BM], tl.float32)
    b_acc = tl.zeros([BM, BD], tl.float32)
    if IS_CAUSAL:  # the last compressed key the block's last row sees (a loop bound only; the mask is exact)
        hi = tl.minimum(tl.maximum((i_m * BM + BM - BLOCK) // STRIDE + 1, 0), NC)
    else:
        hi = NC
    for start_n in range(0, hi, BN):
        o_n = start_n + o_n0
        m_n = o_n < NC
        b_kt = upcast(tl.load(k_base + o_n[None, :] * s_kt + o_d[:, None], mask=m_n[None, :] & m_d[:, None],
                              other=0.0), UPCAST)
        b_s = tl.dot(b_q, b_kt, input_precision=PRECISION) * scale_log2
        m_s = m_n[None, :]
        if IS_CAUSAL:
            m_s = m_s & (o_n[None, :] * STRIDE + BLOCK - 1 <= o_m[:, None])
        b_s = tl.where(m_s, b_s, float("-inf"))
        b_m_new = tl.maximum(b_m, tl.max(b_s, 1))
        b_mu = tl.where(b_m_new == float("-inf"), 0.0, b_m_new)
        b_p = tl.math.exp2(b_s - b_mu[:, None])
        b_alpha = tl.math.exp2(b_m - b_mu)
        b_l = b_l * b_alpha + tl.sum(b_p, 1)
        b_v = upcast(tl.load(v_base + o_n[:, None] * s_kt + o_d[None, :], mask=m_n[:, None] & m_d[None, :],
                             other=0.0), UPCAST)
        b_acc = tl.dot(b_p.to(b_v.dtype), b_v, b_acc * b_alpha[:, None], input_precision=PRECISION)
        b_m = b_m_new
    b_empty = b_l == 0.0
    b_o = b_acc / tl.where(b_empty, 1.0, b_l)[:, None]
    b_lse = tl.where(b_empty, float("-inf"), (b_m + tl.math.log2(tl.where(b_empty, 1.0, b_l))) * LN2)
    tl.store(O + i_b * s_ob + i_h * s_oh + o_m[:, None] * s_ot + o_d[None, :], b_o.to(O.dtype.element_ty),
             mask=m_m[:, None] & m_d[None, :])
    tl.store(LSE + i_bh.to(tl.int64) * T + o_m, b_lse, mask=m_m)


# ---------------------------------------------------------------------------------------------- backward
@triton.jit
def _nsa_cmp_bwd_dkdv_kernel(Q, K, V, DO, LSE, DELTA, DK, DV, s_qb, s_qt, s_qh, s_kb, s_kt, s_kh, s_db, s_dt, s_dh,
                             T, NC, scale, scale_log2, HQ: tl.constexpr, HKV: tl.constexpr, GROUP: tl.constexpr,
                             D: tl.constexpr, BD: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                             STRIDE: tl.constexpr, BLOCK: tl.constexpr, IS_CAUSAL: tl.constexpr,
                             PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    i_n = tl.program_id(0)
    i_bh = tl.program_id(1)
    i_b = (i_bh // HKV).to(tl.int64)
    i_hk = i_bh % HKV
    o_n = i_n * BN + tl.arange(0, BN)
    o_m0 = tl.arange(0, BM)
    o_d = tl.arange(0, BD)
    m_n = o_n < NC
    m_d = o_d < D
    m_kd = m_n[:, None] & m_d[None, :]
    p_kv = i_b * s_kb + i_hk * s_kh + o_n[:, None] * s_kt + o_d[None, :]
    b_k = upcast(tl.load(K + p_kv, mask=m_kd, other=0.0), UPCAST)
    b_v = upcast(tl.load(V + p_kv, mask=m_kd, other=0.0), UPCAST)
    b_dk = tl.zeros([BN, BD], tl.float32)
    b_dv = tl.zeros([BN, BD], tl.float32)
    lo = (i_n * BN * STRIDE + BLOCK - 1) // BM * BM if IS_CAUSAL else 0  # the first query that sees this block
    for g in range(GROUP):
        i_h = i_hk * GROUP + g
        q_base = Q + i_b * s_qb + i_h * s_qh
        do_base = DO + i_b * s_db + i_h * s_dh
        row_base = (i_b * HQ + i_h) * T
        for start_m in range(lo, T, BM):
            o_m = start_m + o_m0
            m_m = o_m < T
            b_qt = upcast(tl.load(q_base + o_m[None, :] * s_qt + o_d[:, None], mask=m_m[None, :] & m_d[:, None],
                                  other=0.0), UPCAST)
            b_do = upcast(tl.load(do_base + o_m[:, None] * s_dt + o_d[None, :], mask=m_m[:, None] & m_d[None, :],
                                  other=0.0), UPCAST)
            b_lse2 = tl.load(LSE + row_base + o_m, mask=m_m, other=0.0) * 1.4426950408889634
            b_delta = tl.load(DELTA + row_base + o_m, mask=m_m, other=0.0)
            b_st = tl.dot(b_k, b_qt, input_precision=PRECISION) * scale_log2  # (BN, BM)
            m_s = m_n[:, None] & m_m[None, :]
            if IS_CAUSAL:
                m_s = m_s & (o_n[:, None] * STRIDE + BLOCK - 1 <= o_m[None, :])
            b_pt = tl.where(m_s, tl.math.exp2(b_st - b_lse2[None, :]), 0.0)
            b_dv = tl.dot(b_pt.to(b_do.dtype), b_do, b_dv, input_precision=PRECISION)
            b_dpt = tl.dot(b_v, tl.trans(b_do), input_precision=PRECISION)
            b_dst = b_pt * (b_dpt - b_delta[None, :])
            b_dk = tl.dot(b_dst.to(b_qt.dtype), tl.trans(b_qt), b_dk, input_precision=PRECISION)
    tl.store(DK + p_kv, (b_dk * scale).to(DK.dtype.element_ty), mask=m_kd)
    tl.store(DV + p_kv, b_dv.to(DV.dtype.element_ty), mask=m_kd)


@triton.jit
def _nsa_cmp_bwd_dq_kernel(Q, K, V, DO, LSE, DELTA, DQ, s_qb, s_qt, s_qh, s_kb, s_kt, s_kh, s_db, s_dt, s_dh,
                           T, NC, scale, scale_log2, HQ: tl.constexpr, GROUP: tl.constexpr, D: tl.constexpr,
                           BD: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, STRIDE: tl.constexpr,
                           BLOCK: tl.constexpr, IS_CAUSAL: tl.constexpr, PRECISION: tl.constexpr,
                           UPCAST: tl.constexpr):
    i_m = tl.program_id(0)
    i_bh = tl.program_id(1)
    i_b = (i_bh // HQ).to(tl.int64)
    i_h = i_bh % HQ
    i_hk = i_h // GROUP
    o_m = i_m * BM + tl.arange(0, BM)
    o_n0 = tl.arange(0, BN)
    o_d = tl.arange(0, BD)
    m_m = o_m < T
    m_d = o_d < D
    m_qd = m_m[:, None] & m_d[None, :]
    b_q = upcast(tl.load(Q + i_b * s_qb + i_h * s_qh + o_m[:, None] * s_qt + o_d[None, :], mask=m_qd, other=0.0),
                 UPCAST)
    b_do = upcast(tl.load(DO + i_b * s_db + i_h * s_dh + o_m[:, None] * s_dt + o_d[None, :], mask=m_qd, other=0.0),
                  UPCAST)
    b_lse2 = tl.load(LSE + i_bh.to(tl.int64) * T + o_m, mask=m_m, other=0.0) * 1.4426950408889634
    b_delta = tl.load(DELTA + i_bh.to(tl.int64) * T + o_m, mask=m_m, other=0.0)
    b_dq = tl.zeros([BM, BD], tl.float32)
    k_base = K + i_b * s_kb + i_hk * s_kh
    v_base = V + i_b * s_kb + i_hk * s_kh
    if IS_CAUSAL:
        hi = tl.minimum(tl.maximum((i_m * BM + BM - BLOCK) // STRIDE + 1, 0), NC)
    else:
        hi = NC
    for start_n in range(0, hi, BN):
        o_n = start_n + o_n0
        m_n = o_n < NC
        m_t = m_n[None, :] & m_d[:, None]
        b_kt = upcast(tl.load(k_base + o_n[None, :] * s_kt + o_d[:, None], mask=m_t, other=0.0), UPCAST)
        b_vt = upcast(tl.load(v_base + o_n[None, :] * s_kt + o_d[:, None], mask=m_t, other=0.0), UPCAST)
        b_s = tl.dot(b_q, b_kt, input_precision=PRECISION) * scale_log2
        m_s = m_n[None, :] & m_m[:, None]
        if IS_CAUSAL:
            m_s = m_s & (o_n[None, :] * STRIDE + BLOCK - 1 <= o_m[:, None])
        b_p = tl.where(m_s, tl.math.exp2(b_s - b_lse2[:, None]), 0.0)
        b_dp = tl.dot(b_do, b_vt, input_precision=PRECISION)
        b_ds = b_p * (b_dp - b_delta[:, None])
        b_dq = tl.dot(b_ds.to(b_kt.dtype), tl.trans(b_kt), b_dq, input_precision=PRECISION)
    tl.store(DQ + i_b * s_qb + i_h * s_qh + o_m[:, None] * s_qt + o_d[None, :], (b_dq * scale).to(DQ.dtype.element_ty),
             mask=m_qd)


# --------------------------------------------------------------------------------------------- selection
@triton.jit
def _nsa_select_scores_kernel(Q, K, LSE, SCORE, s_qb, s_qt, s_qh, s_kb, s_kt, s_kh, T, NC, NS, scale_log2,
                              HQ: tl.constexpr, HKV: tl.constexpr, GROUP: tl.constexpr, D: tl.constexpr,
                              BD: tl.constexpr, BM: tl.constexpr, BC: tl.constexpr, BJ: tl.constexpr,
                              NJ: tl.constexpr, STRIDE: tl.constexpr, BLOCK: tl.constexpr, SEL: tl.constexpr,
                              L: tl.constexpr, S: tl.constexpr, INIT: tl.constexpr, LOCAL: tl.constexpr,
                              IS_CAUSAL: tl.constexpr, PRECISION: tl.constexpr, W_PRECISION: tl.constexpr,
                              UPCAST: tl.constexpr):
    # L = BLOCK / STRIDE: the stride-chunks a compressed token spans; S = SEL / STRIDE: those of a selection block
    i_m = tl.program_id(0)
    i_bh = tl.program_id(1)
    i_b = (i_bh // HKV).to(tl.int64)
    i_hk = i_bh % HKV
    o_m = i_m * BM + tl.arange(0, BM)
    o_d = tl.arange(0, BD)
    o_c0 = tl.arange(0, BC)
    o_j0 = tl.arange(0, BJ)
    m_m = o_m < T
    m_d = o_d < D
    cur = o_m // SEL  # the query's own selection block
    j_hi = tl.minimum((i_m * BM + BM - 1) // SEL + 1, NS) if IS_CAUSAL else NS
    for j0 in range(0, j_hi, NJ):
        o_c = j0 * S - (L - 1) + o_c0
        m_c = (o_c >= 0) & (o_c < NC)
        b_kt = upcast(tl.load(K + i_b * s_kb + i_hk * s_kh + o_c[None, :] * s_kt + o_d[:, None],
                              mask=m_c[None, :] & m_d[:, None], other=0.0), UPCAST)
        m_s = m_m[:, None] & m_c[None, :]
        if IS_CAUSAL:
            m_s = m_s & (o_c[None, :] * STRIDE + BLOCK - 1 <= o_m[:, None])
        b_pg = tl.zeros([BM, BC], tl.float32)
        for g in range(GROUP):
            i_h = i_hk * GROUP + g
            b_q = upcast(tl.load(Q + i_b * s_qb + i_h * s_qh + o_m[:, None] * s_qt + o_d[None, :],
                                 mask=m_m[:, None] & m_d[None, :], other=0.0), UPCAST)
            b_lse2 = tl.load(LSE + (i_b * HQ + i_h) * T + o_m, mask=m_m, other=0.0) * 1.4426950408889634
            b_s = tl.dot(b_q, b_kt, input_precision=PRECISION) * scale_log2
            b_pg += tl.where(m_s, tl.math.exp2(b_s - b_lse2[:, None]), 0.0)
        o_j = j0 + o_j0
        lo = tl.maximum(o_c[:, None], o_j[None, :] * S)
        hi = tl.minimum(o_c[:, None] + L, o_j[None, :] * S + S)
        b_w = tl.maximum(hi - lo, 0).to(tl.float32)  # (BC, BJ) chunks shared
        b_imp = tl.dot(b_pg, b_w, input_precision=W_PRECISION)  # (BM, BJ)
        m_j = (o_j0 < NJ) & (o_j < NS)
        cand = m_j[None, :] & m_m[:, None]
        if IS_CAUSAL:
            cand = cand & (o_j[None, :] <= cur[:, None])
        kept = cand & ((o_j[None, :] < INIT) | ((o_j[None, :] <= cur[:, None]) & (o_j[None, :] > cur[:, None] - LOCAL)))
        b_sc = tl.where(cand & (b_imp > 0), b_imp, float("-inf"))
        b_sc = tl.where(kept, float("inf"), b_sc)
        tl.store(SCORE + i_bh.to(tl.int64) * T * NS + o_m[:, None] * NS + o_j[None, :], b_sc,
                 mask=m_m[:, None] & m_j[None, :])


# ---------------------------------------------------------------------------------------------- launchers
def _precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"


def _upcast(dtype: torch.dtype) -> bool:
    return interpreting() and dtype == torch.bfloat16


def _bd(D: int) -> int:
    return max(16, triton.next_power_of_2(D))


# Tiles: (BM, BN, warps, stages). The compressed keys number T / 16, so these kernels are a small part of NSA;
# the FlashAttention-2 tiles measured on the H100 (flash/kernel.py's table) are the starting point, 64 x 64 for
# D <= 128 and 32 x 64 above. Under the interpreter 32 x 32 (fewer Python-level programs).
def tile_table(op: str, D: int) -> dict:
    if interpreting():
        return {"BM": 32, "BN": 32}
    if op == "select":
        return {"BM": 64, "num_warps": 4, "num_stages": 2}
    bm, bn = (64, 64) if D <= 128 else (32, 64)
    return {"BM": bm, "BN": bn, "num_warps": 4 if D <= 64 else 8, "num_stages": 2}


def nsa_cmp_fwd(q: torch.Tensor, k_cmp: torch.Tensor, v_cmp: torch.Tensor, block_size: int, stride: int,
                causal: bool, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Compressed attention forward: o (B, T, Hq, D), lse (B, Hq, T) fp32 (natural log; -inf where nothing seen)."""
    B, T, Hq, D = q.shape
    NC, Hkv = k_cmp.shape[1], k_cmp.shape[2]
    if NC == 0:  # T < block_size: no compressed key exists yet
        return torch.zeros_like(q), torch.full((B, Hq, T), float("-inf"), device=q.device)
    o = torch.empty_like(q)
    lse = torch.empty((B, Hq, T), device=q.device, dtype=torch.float32)
    cfg = tile_table("fwd", D)
    _nsa_cmp_fwd_kernel[(triton.cdiv(T, cfg["BM"]), B * Hq)](
        q, k_cmp, v_cmp, o, lse, q.stride(0), q.stride(1), q.stride(2), k_cmp.stride(0), k_cmp.stride(1),
        k_cmp.stride(2), o.stride(0), o.stride(1), o.stride(2), T, NC, scale * LOG2E,
        HQ=Hq, GROUP=Hq // Hkv, D=D, BD=_bd(D), STRIDE=stride, BLOCK=block_size, IS_CAUSAL=causal,
        PRECISION=_precision(q.dtype), UPCAST=_upcast(q.dtype), **cfg)
    return o, lse


def row_delta(o: torch.Tensor, do: torch.Tensor) -> torch.Tensor:
    """delta = rowsum(dO * O) as (B, H, T) fp32, the softmax backward's per-row term."""
    return (o.float() * do.float()).sum(-1).transpose(1, 2).contiguous()


def nsa_cmp_bwd(do: torch.Tensor, q: torch.Tensor, k_cmp: torch.Tensor, v_cmp: torch.Tensor, o: torch.Tensor,
                lse: torch.Tensor, block_size: int, stride: int, causal: bool, scale: float):
    """Compressed attention backward: dq, dk_cmp, dv_cmp."""
    B, T, Hq, D = q.shape
    NC, Hkv = k_cmp.shape[1], k_cmp.shape[2]
    if NC == 0:
        return torch.zeros_like(q), torch.zeros_like(k_cmp), torch.zeros_like(v_cmp)
    do = do.contiguous()
    delta = row_delta(o, do)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k_cmp), torch.empty_like(v_cmp)
    prec, up, cfg = _precision(q.dtype), _upcast(q.dtype), tile_table("bwd", D)
    common = dict(D=D, BD=_bd(D), STRIDE=stride, BLOCK=block_size, IS_CAUSAL=causal, PRECISION=prec, UPCAST=up, **cfg)
    strides = (q.stride(0), q.stride(1), q.stride(2), k_cmp.stride(0), k_cmp.stride(1), k_cmp.stride(2),
               do.stride(0), do.stride(1), do.stride(2))
    _nsa_cmp_bwd_dkdv_kernel[(triton.cdiv(NC, cfg["BN"]), B * Hkv)](
        q, k_cmp, v_cmp, do, lse, delta, dk, dv, *strides, T, NC, scale, scale * LOG2E,
        HQ=Hq, HKV=Hkv, GROUP=Hq // Hkv, **common)
    _nsa_cmp_bwd_dq_kernel[(triton.cdiv(T, cfg["BM"]), B * Hq)](
        q, k_cmp, v_cmp, do, lse, delta, dq, *strides, T, NC, scale, scale * LOG2E, HQ=Hq, GROUP=Hq // Hkv, **common)
    return dq, dk, dv


def select_tiles(block_size: int, stride: int, select_size: int) -> tuple[int, int, int]:
    """(BC, NJ, BJ): compressed tokens per tile, whole selection blocks they cover, that count padded for tl.dot."""
    L, S = block_size // stride, select_size // stride
    bc = max(16 if interpreting() else 64, triton.next_power_of_2(S + L - 1))
    nj = (bc - L + 1) // S
    return bc, nj, max(16, triton.next_power_of_2(nj))


def nsa_select_scores(q: torch.Tensor, k_cmp: torch.Tensor, lse_cmp: torch.Tensor, *, block_size: int, stride: int,
                      select_size: int, init_blocks: int, local_blocks: int, causal: bool,
                      scale: float) -> torch.Tensor:
    """Block scores (B, Hkv, T, Ns) fp32: the group-summed compressed probabilities mapped onto selection blocks,
    +inf for the always-kept blocks, -inf for blocks that are not candidates (reference.block_scores)."""
    B, T, Hq, D = q.shape
    NC, Hkv = k_cmp.shape[1], k_cmp.shape[2]
    NS = -(-T // select_size)
    scores = torch.full((B, Hkv, T, NS), float("-inf"), device=q.device, dtype=torch.float32)
    bc, nj, bj = select_tiles(block_size, stride, select_size)
    cfg = tile_table("select", D)
    if NC == 0:  # no compressed key: still mark the kept blocks (k_cmp has no rows to read; pass q as a stand-in)
        k_cmp = q
    _nsa_select_scores_kernel[(triton.cdiv(T, cfg["BM"]), B * Hkv)](
        q, k_cmp, lse_cmp, scores, q.stride(0), q.stride(1), q.stride(2), k_cmp.stride(0), k_cmp.stride(1),
        k_cmp.stride(2), T, NC, NS, scale * LOG2E, HQ=Hq, HKV=Hkv, GROUP=Hq // Hkv, D=D, BD=_bd(D), BC=bc, BJ=bj,
        NJ=nj, STRIDE=stride, BLOCK=block_size, SEL=select_size, L=block_size // stride,
        S=select_size // stride, INIT=init_blocks, LOCAL=local_blocks,
        IS_CAUSAL=causal, PRECISION=_precision(q.dtype), W_PRECISION=_precision(q.dtype), UPCAST=_upcast(q.dtype),
        **cfg)
    return scores


__all__ = ["nsa_cmp_bwd", "nsa_cmp_fwd", "nsa_select_scores", "row_delta", "select_tiles"]
