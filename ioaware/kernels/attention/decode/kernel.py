"""Split-KV flash decoding in Triton: GQA heads packed, contiguous or paged cache, FlashDecoding++'s unified max.

Split kernel: one program per (batch x KV head, split of the key range). The query rows of every head that
shares the KV head (GROUP heads x Tq tokens) are packed into one tile, so each K/V byte is read once for all of
them. Keys stream through in blocks of BN; in a paged cache each key's page comes from the block table.
Each program writes a normalised partial output and its log-sum-exp; the combine kernel merges the splits
exactly (weights 2^(lse_s - lse)).

Unified max (FlashDecoding++): with UNIFIED, a split accumulates sum 2^(s - phi) v and sum 2^(s - phi) against a
fixed phi instead of a running max, so no rescaling happens inside the loop. If a row's largest score leaves
[phi - LO, phi + HI] (overflow of P in its dtype, or underflow of the whole row), the split is recomputed with
the exact online softmax; the number of such fallbacks is written to FALLBACK. Either way the result is exact.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from ..._dispatch import interpreting
from ...triton_utils import LOG2E, upcast


@triton.jit
def _decode_loop(b_q, K, V, BT, i_b, i_hk, s_kb, s_kt, s_kh, s_vb, s_vt, s_vh, s_btb, start, end, L, o_t, phi,
                 TQ: tl.constexpr, scale_log2, D: tl.constexpr, BD: tl.constexpr, BM: tl.constexpr,
                 BN: tl.constexpr, PAGED: tl.constexpr, PAGE: tl.constexpr, IS_CAUSAL: tl.constexpr,
                 UNIFIED: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    o_d = tl.arange(0, BD)
    m_d = o_d < D
    b_acc = tl.zeros([BM, BD], tl.float32)
    b_l = tl.zeros([BM], tl.float32)
    b_m = tl.full([BM], float("-inf"), tl.float32)  # online: running max; unified: largest score seen
    for n in range(start, end, BN):
        o_k = n + tl.arange(0, BN)
        m_k = o_k < end
        if PAGED:
            b_page = tl.load(BT + i_b * s_btb + o_k // PAGE, mask=m_k, other=0).to(tl.int64)
            k_off = b_page * s_kb + (o_k % PAGE) * s_kt
            v_off = b_page * s_vb + (o_k % PAGE) * s_vt
        else:
            k_off = i_b * s_kb + o_k * s_kt
            v_off = i_b * s_vb + o_k * s_vt
        b_kt = upcast(tl.load(K + k_off[None, :] + i_hk * s_kh + o_d[:, None], mask=m_k[None, :] & m_d[:, None],
                           other=0.0), UPCAST)
        b_s = tl.dot(b_q, b_kt, input_precision=PRECISION) * scale_log2  # (BM, BN)
        m_s = m_k[None, :]
        if IS_CAUSAL:
            m_s = m_s & (o_k[None, :] <= (L - TQ + o_t)[:, None])
        b_s = tl.where(m_s, b_s, float("-inf"))
        b_v = upcast(tl.load(V + v_off[:, None] + i_hk * s_vh + o_d[None, :], mask=m_k[:, None] & m_d[None, :],
                          other=0.0), UPCAST)
        if UNIFIED:
            b_m = tl.maximum(b_m, tl.max(b_s, 1))
            b_p = tl.math.exp2(b_s - phi)
            b_l += tl.sum(b_p, 1)
            b_acc = tl.dot(b_p.to(b_v.dtype), b_v, b_acc, input_precision=PRECISION)
        else:
            b_m_new = tl.maximum(b_m, tl.max(b_s, 1))
            b_m_use = tl.where(b_m_new == float("-inf"), 0.0, b_m_new)
            b_p = tl.math.exp2(b_s - b_m_use[:, None])
            b_alpha = tl.math.exp2(b_m - b_m_use)
            b_l = b_l * b_alpha + tl.sum(b_p, 1)
            b_acc = tl.dot(b_p.to(b_v.dtype), b_v, b_acc * b_alpha[:, None], input_precision=PRECISION)
            b_m = b_m_new
    return b_acc, b_l, b_m


@triton.jit
def _flash_decode_split_kernel(Q, K, V, BT, SEQLENS, O_PART, LSE_PART, FALLBACK, O, LSE,
                               s_qb, s_qt, s_qh, s_kb, s_kt, s_kh, s_vb, s_vt, s_vh, s_btb, s_ob, s_ot, s_oh,
                               split_len, scale_log2, phi, lo_safe, hi_safe, TNEW: tl.constexpr, HQ: tl.constexpr,
                               TQ: tl.constexpr, HKV: tl.constexpr, GROUP: tl.constexpr, NS: tl.constexpr,
                               D: tl.constexpr, BD: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                               PAGED: tl.constexpr, PAGE: tl.constexpr, IS_CAUSAL: tl.constexpr,
                               UNIFIED: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    i_bh = tl.program_id(0)
    i_s = tl.program_id(1)
    i_b = (i_bh // HKV).to(tl.int64)
    i_hk = i_bh % HKV
    L = tl.load(SEQLENS + i_b).to(tl.int32) + TNEW  # keys cached before this call, plus the appended ones
    # packed rows: row r is query token t = r % TQ of head hk * GROUP + r // TQ
    o_r = tl.arange(0, BM)
    o_t = o_r % TQ
    o_h = i_hk * GROUP + o_r // TQ
    m_r = o_r < GROUP * TQ
    o_d = tl.arange(0, BD)
    b_q = upcast(tl.load(Q + i_b * s_qb + o_t[:, None] * s_qt + o_h[:, None] * s_qh + o_d[None, :],
                      mask=m_r[:, None] & (o_d < D)[None, :], other=0.0), UPCAST)
    start = i_s * split_len
    end = tl.minimum(start + split_len, L)
    if UNIFIED:
        b_acc, b_l, b_m = _decode_loop(b_q, K, V, BT, i_b, i_hk, s_kb, s_kt, s_kh, s_vb, s_vt, s_vh, s_btb, start,
                                       end, L, o_t, phi, TQ, scale_log2, D, BD, BM, BN, PAGED, PAGE, IS_CAUSAL,
                                       True, PRECISION, UPCAST)
        # a row whose largest score left the safe range around phi: its P overflowed or vanished
        b_bad = m_r & (b_m > float("-inf")) & ((b_m - phi > hi_safe) | (b_m - phi < -lo_safe))
        n_bad = tl.sum(b_bad.to(tl.int32), 0)
        if n_bad > 0:
            b_acc, b_l, b_m = _decode_loop(b_q, K, V, BT, i_b, i_hk, s_kb, s_kt, s_kh, s_vb, s_vt, s_vh, s_btb,
                                           start, end, L, o_t, phi, TQ, scale_log2, D, BD, BM, BN, PAGED, PAGE,
                                           IS_CAUSAL, False, PRECISION, UPCAST)
            tl.atomic_add(FALLBACK, 1)
        else:
            b_m = tl.where(b_m > float("-inf"), phi, b_m)  # unified sums are relative to phi
    else:
        b_acc, b_l, b_m = _decode_loop(b_q, K, V, BT, i_b, i_hk, s_kb, s_kt, s_kh, s_vb, s_vt, s_vh, s_btb, start,
                                       end, L, o_t, phi, TQ, scale_log2, D, BD, BM, BN, PAGED, PAGE, IS_CAUSAL,
                                       False, PRECISION, UPCAST)
    b_empty = b_l == 0.0
    b_o = b_acc / tl.where(b_empty, 1.0, b_l)[:, None]
    b_lse = tl.where(b_empty, float("-inf"), b_m + tl.math.log2(tl.where(b_empty, 1.0, b_l)))  # log2 units
    if NS == 1:  # one split: it is the whole row, so write the output here and skip the combine launch
        tl.store(O + i_b * s_ob + o_t[:, None] * s_ot + o_h[:, None] * s_oh + o_d[None, :],
                 b_o.to(O.dtype.element_ty), mask=m_r[:, None] & (o_d < D)[None, :])
        tl.store(LSE + (i_b * HQ + o_h) * TQ + o_t, b_lse * 0.6931471805599453, mask=m_r)
    else:
        base = (i_bh.to(tl.int64) * NS + i_s) * BM
        tl.store(O_PART + (base + o_r)[:, None] * BD + o_d[None, :], b_o)
        tl.store(LSE_PART + base + o_r, b_lse)


@triton.jit
def _append_kernel(KN, VN, K, V, BT, SEQLENS, s_knb, s_knt, s_knh, s_vnb, s_vnt, s_vnh,
                   s_kb, s_kt, s_kh, s_vb, s_vt, s_vh, s_btb,
                   HKV: tl.constexpr, D: tl.constexpr, BH: tl.constexpr, BD: tl.constexpr,
                   PAGED: tl.constexpr, PAGE: tl.constexpr):
    """k_new/v_new[b, t] -> cache position seqlens[b] + t, both in one launch (one program per (b, t))."""
    i_b = tl.program_id(0).to(tl.int64)
    i_t = tl.program_id(1)
    pos = tl.load(SEQLENS + i_b).to(tl.int64) + i_t
    o_h = tl.arange(0, BH)
    o_d = tl.arange(0, BD)
    m = (o_h < HKV)[:, None] & (o_d < D)[None, :]
    if PAGED:
        page = tl.load(BT + i_b * s_btb + pos // PAGE).to(tl.int64)
        k_row = page * s_kb + (pos % PAGE) * s_kt
        v_row = page * s_vb + (pos % PAGE) * s_vt
    else:
        k_row = i_b * s_kb + pos * s_kt
        v_row = i_b * s_vb + pos * s_vt
    b_k = tl.load(KN + i_b * s_knb + i_t * s_knt + o_h[:, None] * s_knh + o_d[None, :], mask=m)
    b_v = tl.load(VN + i_b * s_vnb + i_t * s_vnt + o_h[:, None] * s_vnh + o_d[None, :], mask=m)
    tl.store(K + k_row + o_h[:, None] * s_kh + o_d[None, :], b_k.to(K.dtype.element_ty), mask=m)
    tl.store(V + v_row + o_h[:, None] * s_vh + o_d[None, :], b_v.to(V.dtype.element_ty), mask=m)


def append_kv(k_cache, v_cache, k_new, v_new, cache_seqlens, block_table) -> None:
    """Write k_new/v_new (B, Tnew, Hkv, D) at positions cache_seqlens[b] + t, in place (one launch)."""
    B, Tn, Hkv, D = k_new.shape
    paged = block_table is not None
    bt = block_table if paged else cache_seqlens
    kn = k_new if k_new.stride(-1) == 1 else k_new.contiguous()
    vn = v_new if v_new.stride(-1) == 1 else v_new.contiguous()
    _append_kernel[(B, Tn)](
        kn, vn, k_cache, v_cache, bt, cache_seqlens, kn.stride(0), kn.stride(1), kn.stride(2), vn.stride(0),
        vn.stride(1), vn.stride(2), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), v_cache.stride(0),
        v_cache.stride(1), v_cache.stride(2), bt.stride(0) if paged else 0, HKV=Hkv, D=D,
        BH=triton.next_power_of_2(Hkv), BD=triton.next_power_of_2(D), PAGED=paged,
        PAGE=k_cache.shape[1] if paged else 1, num_warps=1)


@triton.jit
def _flash_decode_combine_kernel(O_PART, LSE_PART, O, LSE, s_ob, s_ot, s_oh, TQ: tl.constexpr, HQ: tl.constexpr,
                                 HKV: tl.constexpr, GROUP: tl.constexpr, NS: tl.constexpr, BS: tl.constexpr,
                                 D: tl.constexpr, BD: tl.constexpr, BM: tl.constexpr):
    i_bh = tl.program_id(0)
    i_r = tl.program_id(1)  # packed row
    i_b = (i_bh // HKV).to(tl.int64)
    i_hk = i_bh % HKV
    o_s = tl.arange(0, BS)
    m_s = o_s < NS
    o_d = tl.arange(0, BD)
    base = (i_bh.to(tl.int64) * NS + o_s) * BM + i_r
    b_lse = tl.load(LSE_PART + base, mask=m_s, other=float("-inf"))  # (BS,)
    b_max = tl.max(b_lse, 0)
    b_max_use = tl.where(b_max == float("-inf"), 0.0, b_max)
    b_w = tl.math.exp2(b_lse - b_max_use)  # empty splits weigh 0
    b_sum = tl.sum(b_w, 0)
    b_op = tl.load(O_PART + base[:, None] * BD + o_d[None, :], mask=m_s[:, None], other=0.0)
    b_o = tl.sum(b_op * b_w[:, None], 0) / tl.where(b_sum == 0.0, 1.0, b_sum)
    t = i_r % TQ
    h = i_hk * GROUP + i_r // TQ
    tl.store(O + i_b * s_ob + t * s_ot + h * s_oh + o_d, b_o.to(O.dtype.element_ty), mask=o_d < D)
    b_lse_tot = tl.where(b_sum == 0.0, float("-inf"), (b_max_use + tl.math.log2(b_sum)) * 0.6931471805599453)
    tl.store(LSE + (i_b * HQ + h) * TQ + t, b_lse_tot)


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _num_splits(B: int, Hkv: int, L_max: int, BN: int, sms: int) -> int:
    """The largest power of two that keeps (B x Hkv x splits) programs within two waves of the GPU, and at
    least BN*4 keys per split. Measured on the H100 (dev/decode/sweep.py): more splits than two waves lose
    2-6% (wave tails, bigger combine); e.g. B=8, Hkv=8, L=32k: 4 splits 2.99 TB/s, 8 2.92, 16 2.89."""
    want = max(1, 2 * sms // max(B * Hkv, 1))
    want = 1 << (want.bit_length() - 1)
    return max(1, min(want, -(-L_max // (4 * BN)), 64))


def flash_decode_fwd(q, k_cache, v_cache, seqlens, block_table, softmax_scale: float, causal: bool,
                     unified_max: float | None, max_seqlen: int, num_splits: int | None = None, tnew: int = 0,
                     bn: int | None = None, num_warps: int = 4, num_stages: int | None = None):
    """Launch split + combine (the split alone when there is one). Attention covers seqlens[b] + tnew keys.
    Returns out (B, Tq, Hq, D), lse (B, Hq, Tq) fp32, fallback count (int tensor)."""
    B, Tq, Hq, D = q.shape
    Hkv = k_cache.shape[2]
    group = Hq // Hkv
    BD = max(16, triton.next_power_of_2(D))
    BM = max(16, triton.next_power_of_2(group * Tq))
    BN = bn or (32 if interpreting() else (64 if D <= 128 else 32))
    paged = block_table is not None
    page = k_cache.shape[1] if paged else 1
    if num_splits is None:
        sms = 132 if q.device.type != "cuda" else _sm_count(q.device.index or 0)
        num_splits = _num_splits(B, Hkv, max_seqlen, BN, sms)
    split_len = -(-max(max_seqlen, 1) // num_splits)
    split_len = -(-split_len // BN) * BN
    out = torch.empty_like(q)
    lse = torch.empty((B, Hq, Tq), device=q.device, dtype=torch.float32)
    o_part = torch.empty((B * Hkv, num_splits, BM, BD), device=q.device, dtype=torch.float32) if num_splits > 1 \
        else out
    lse_part = torch.empty((B * Hkv, num_splits, BM), device=q.device, dtype=torch.float32) if num_splits > 1 \
        else lse
    # the fallback counter needs zeroing (a kernel launch) only when the unified path can write it
    fallback = torch.zeros(1, device=q.device, dtype=torch.int32) if unified_max is not None else seqlens
    bt = block_table if paged else seqlens  # any int tensor: not read when PAGED is False
    # safe range of s - phi (log2 units): P is cast to the cache dtype before the P V product
    hi, lo = (14.0, 10.0) if q.dtype == torch.float16 else (100.0, 100.0)
    phi = float(unified_max * LOG2E) if unified_max is not None else 0.0
    extra = {"num_stages": num_stages} if num_stages else {}
    _flash_decode_split_kernel[(B * Hkv, num_splits)](
        q, k_cache, v_cache, bt, seqlens, o_part, lse_part, fallback, out, lse,
        q.stride(0), q.stride(1), q.stride(2), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), bt.stride(0) if paged else 0,
        out.stride(0), out.stride(1), out.stride(2),
        split_len, softmax_scale * LOG2E, phi, lo, hi, TNEW=tnew, HQ=Hq,
        TQ=Tq, HKV=Hkv, GROUP=group, NS=num_splits, D=D, BD=BD, BM=BM, BN=BN, PAGED=paged, PAGE=page,
        IS_CAUSAL=causal, UNIFIED=unified_max is not None, PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        UPCAST=interpreting() and q.dtype == torch.bfloat16, num_warps=num_warps, **extra)
    if num_splits > 1:
        _flash_decode_combine_kernel[(B * Hkv, group * Tq)](
            o_part, lse_part, out, lse, out.stride(0), out.stride(1), out.stride(2), TQ=Tq, HQ=Hq, HKV=Hkv,
            GROUP=group, NS=num_splits, BS=max(2, triton.next_power_of_2(num_splits)), D=D, BD=BD, BM=BM)
    return out, lse, fallback
