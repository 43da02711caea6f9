"""FlashSVD's rank-aware kernels in Triton (forward): low-rank attention and the low-rank SwiGLU FFN.

Attention (`lowrank_attn_fwd`). One program per (query block, batch x query head), as FlashAttention-2. The query
tile is rebuilt on chip from its rank-R activation, Q_i = P_q[i] V_q[h] (BM x R times R x D), and, with RoPE,
rotated there: rotate_half(P V) = P rot(V), where rot(V) permutes V's columns, so the rotation costs a second
small product and two table loads, never a full-size pass. The program keeps its KV head's V_k, V_v (and rot(V_k))
on chip for the whole key loop; each key block's K_j = P_k[j] V_k and V_j = P_v[j] V_v are rebuilt from the
rank-R rows, used by the online softmax, and dropped. Full-size Q, K and V never exist in HBM: the kernel reads
R instead of D numbers per key and head, and pays R/BM extra FLOPs per key (the rebuild) for it.

SwiGLU (`lowrank_swiglu_fwd`), two schedules for s = (silu(P_g V_g) * (P_u V_u)) U_2:
  fused (FlashSVD): one program per (row block, R2 block of s). It walks the FFN width F in chunks of BF: the
      chunk's gate and up tiles are rebuilt from the rank activations, passed through SiLU and the product, and
      multiplied into the program's (BM, BR2) accumulator at once. Nothing F-wide reaches HBM. When R2 spans
      several blocks each of them rebuilds the same gate/up tiles, so the FLOPs grow by (R2 / BR2) x 2(Rg+Ru) F
      per row: the schedule pays when R2 fits one block (small ranks, the paper's regime).
  slab: rows in slabs of `slab_rows`. A kernel writes the slab's h = silu(P_g V_g) * (P_u V_u) (the gate and up
      tiles stay on chip; only h, slab_rows x F, is written), then cuBLAS multiplies h U_2 into s. The [T, F]
      intermediate never exists, a slab of it does; no FLOP is repeated.
Accumulation in fp32; tiles enter the tensor cores in the inputs' dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._dispatch import interpreting
from ..triton_utils import upcast


# ------------------------------------------------------------------------------------------------ attention
@triton.jit
def _load_factor(v_base, s_vr, o_r, o_d, R, D: tl.constexpr, HALF: tl.constexpr, ROT: tl.constexpr,
                 UPCAST: tl.constexpr):
    """A (BR, BD) tile of one head's expansion factor V (R, D). ROT: the tile of rot(V), whose column d is
    -V[:, d + D/2] for d < D/2 and V[:, d - D/2] above, so that P @ rot(V) = rotate_half(P @ V)."""
    m = (o_r < R)[:, None] & (o_d < D)[None, :]
    if ROT:
        src = tl.where(o_d < HALF, o_d + HALF, o_d - HALF)
        # upcast before negating: the interpreter keeps bf16 as raw 16-bit words, which `-` would corrupt
        b = upcast(tl.load(v_base + o_r[:, None] * s_vr + src[None, :], mask=m, other=0.0), UPCAST)
        return tl.where((o_d < HALF)[None, :], -b, b)
    return upcast(tl.load(v_base + o_r[:, None] * s_vr + o_d[None, :], mask=m, other=0.0), UPCAST)


@triton.jit
def _rope(b_x, b_xr, COS, SIN, s_c, o_pos, m_pos, o_d, D: tl.constexpr, HALF: tl.constexpr):
    """x * cos + rotate_half(x) * sin for a (rows, BD) fp32 tile at positions o_pos; the tables hold one angle
    per frequency (S, D/2), so column d reads frequency d mod D/2."""
    o_f = o_d % HALF
    m = m_pos[:, None] & (o_d < D)[None, :]
    b_c = tl.load(COS + o_pos[:, None] * s_c + o_f[None, :], mask=m, other=0.0).to(tl.float32)
    b_s = tl.load(SIN + o_pos[:, None] * s_c + o_f[None, :], mask=m, other=0.0).to(tl.float32)
    return b_x * b_c + b_xr * b_s


# The online-softmax update below is flash/kernel.py's _attn_fwd_inner step for step; what differs is that the key
# and value tiles are rebuilt on chip from the rank-r factors (and rotated) first. Triton cannot pass the tile loads
# in as a function, so the two loops stay separate.
@triton.jit
def _lowrank_attn_fwd_inner(b_acc, b_m, b_l, b_q, pk_base, pv_base, s_pkt, s_pvt, b_vk, b_vkr, b_vv, CK, SK, s_c,
                            o_m, o_n, o_d, o_rk, o_rv, lo, hi, tk, offset, scale_log2,
                            RK: tl.constexpr, RV: tl.constexpr, D: tl.constexpr, HALF: tl.constexpr,
                            BN: tl.constexpr, IS_CAUSAL: tl.constexpr, MASK: tl.constexpr, ROPE: tl.constexpr,
                            PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    m_rk = o_rk < RK
    m_rv = o_rv < RV
    for start_n in range(lo, hi, BN):
        o_k = start_n + o_n
        m_k = o_k < tk
        if MASK:
            b_pk = upcast(tl.load(pk_base + o_k[:, None] * s_pkt + o_rk[None, :], mask=m_k[:, None] & m_rk[None, :],
                                  other=0.0), UPCAST)
        else:
            b_pk = upcast(tl.load(pk_base + o_k[:, None] * s_pkt + o_rk[None, :], mask=m_rk[None, :], other=0.0),
                          UPCAST)
        b_k = tl.dot(b_pk, b_vk, input_precision=PRECISION)  # (BN, BD) fp32: the key block, rebuilt on chip
        if ROPE:
            b_k = _rope(b_k, tl.dot(b_pk, b_vkr, input_precision=PRECISION), CK, SK, s_c, o_k, m_k, o_d, D, HALF)
        b_s = tl.dot(b_q, tl.trans(b_k.to(b_q.dtype)), input_precision=PRECISION) * scale_log2  # (BM, BN)
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
            b_pv = upcast(tl.load(pv_base + o_k[:, None] * s_pvt + o_rv[None, :], mask=m_k[:, None] & m_rv[None, :],
                                  other=0.0), UPCAST)
        else:
            b_pv = upcast(tl.load(pv_base + o_k[:, None] * s_pvt + o_rv[None, :], mask=m_rv[None, :], other=0.0),
                          UPCAST)
        b_v = tl.dot(b_pv, b_vv, input_precision=PRECISION).to(b_q.dtype)  # (BN, BD): the value block
        b_acc = tl.dot(b_p.to(b_q.dtype), b_v, b_acc, input_precision=PRECISION)
        b_m = b_m_new
    return b_acc, b_m, b_l


@triton.jit
def _lowrank_attn_fwd_kernel(PQ, VQ, PK, VK, PV, VV, COS, SIN, SEQLENS, O,
                             s_pqb, s_pqt, s_pqh, s_vqh, s_vqr, s_pkb, s_pkt, s_pkh, s_vkh, s_vkr,
                             s_pvb, s_pvt, s_pvh, s_vvh, s_vvr, s_c, s_ob, s_ot, s_oh,
                             Tq, Tk, scale_log2,
                             HQ: tl.constexpr, GROUP: tl.constexpr, RQ: tl.constexpr, RK: tl.constexpr,
                             RV: tl.constexpr, BRQ: tl.constexpr, BRK: tl.constexpr, BRV: tl.constexpr,
                             D: tl.constexpr, HALF: tl.constexpr, BD: tl.constexpr, BM: tl.constexpr,
                             BN: tl.constexpr, IS_CAUSAL: tl.constexpr, ROPE: tl.constexpr,
                             HAS_SEQLENS: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    i_m = tl.program_id(0)
    i_bh = tl.program_id(1)
    i_b = (i_bh // HQ).to(tl.int64)
    i_h = i_bh % HQ
    i_hk = i_h // GROUP
    o_m = i_m * BM + tl.arange(0, BM)
    o_n = tl.arange(0, BN)
    o_d = tl.arange(0, BD)
    o_rq = tl.arange(0, BRQ)
    o_rk = tl.arange(0, BRK)
    o_rv = tl.arange(0, BRV)
    m_m = o_m < Tq
    if HAS_SEQLENS:
        tk = tl.load(SEQLENS + i_b).to(tl.int32)
    else:
        tk = Tk
    offset = tk - Tq  # query row r sits at position r + offset and (causal) sees keys c <= r + offset
    # the query block, rebuilt (and rotated) on chip: (BM, R) x (R, D)
    b_pq = upcast(tl.load(PQ + i_b * s_pqb + i_h * s_pqh + o_m[:, None] * s_pqt + o_rq[None, :],
                          mask=m_m[:, None] & (o_rq < RQ)[None, :], other=0.0), UPCAST)
    vq_base = VQ + i_h * s_vqh
    b_q = tl.dot(b_pq, _load_factor(vq_base, s_vqr, o_rq, o_d, RQ, D, HALF, False, UPCAST), input_precision=PRECISION)
    if ROPE:
        b_qr = tl.dot(b_pq, _load_factor(vq_base, s_vqr, o_rq, o_d, RQ, D, HALF, True, UPCAST),
                      input_precision=PRECISION)
        b_q = _rope(b_q, b_qr, COS, SIN, s_c, o_m + offset, m_m & (o_m + offset >= 0), o_d, D, HALF)
    b_q = b_q.to(b_pq.dtype)
    # this KV head's expansion factors stay on chip for the whole key loop
    b_vk = _load_factor(VK + i_hk * s_vkh, s_vkr, o_rk, o_d, RK, D, HALF, False, UPCAST)
    if ROPE:
        b_vkr = _load_factor(VK + i_hk * s_vkh, s_vkr, o_rk, o_d, RK, D, HALF, True, UPCAST)
    else:
        b_vkr = b_vk
    b_vv = _load_factor(VV + i_hk * s_vvh, s_vvr, o_rv, o_d, RV, D, HALF, False, UPCAST)
    pk_base = PK + i_b * s_pkb + i_hk * s_pkh
    pv_base = PV + i_b * s_pvb + i_hk * s_pvh
    b_m = tl.full([BM], float("-inf"), tl.float32)
    b_l = tl.zeros([BM], tl.float32)
    b_acc = tl.zeros([BM, BD], tl.float32)
    if IS_CAUSAL:
        hi = tl.maximum(tl.minimum(tk, (i_m + 1) * BM + offset), 0)
        lo_mask = tl.maximum(tl.minimum((i_m * BM + offset + 1) // BN * BN, (tk // BN) * BN), 0)
    else:
        hi = tk
        lo_mask = (tk // BN) * BN
    b_acc, b_m, b_l = _lowrank_attn_fwd_inner(b_acc, b_m, b_l, b_q, pk_base, pv_base, s_pkt, s_pvt, b_vk, b_vkr,
                                              b_vv, COS, SIN, s_c, o_m, o_n, o_d, o_rk, o_rv, 0, lo_mask, tk, offset,
                                              scale_log2, RK, RV, D, HALF, BN, IS_CAUSAL, False, ROPE, PRECISION,
                                              UPCAST)
    b_acc, b_m, b_l = _lowrank_attn_fwd_inner(b_acc, b_m, b_l, b_q, pk_base, pv_base, s_pkt, s_pvt, b_vk, b_vkr,
                                              b_vv, COS, SIN, s_c, o_m, o_n, o_d, o_rk, o_rv, lo_mask, hi, tk,
                                              offset, scale_log2, RK, RV, D, HALF, BN, IS_CAUSAL, True, ROPE,
                                              PRECISION, UPCAST)
    b_empty = b_l == 0.0  # a row that saw no key: output 0
    b_o = b_acc / tl.where(b_empty, 1.0, b_l)[:, None]
    p_o = O + i_b * s_ob + i_h * s_oh + o_m[:, None] * s_ot + o_d[None, :]
    tl.store(p_o, b_o.to(O.dtype.element_ty), mask=m_m[:, None] & (o_d < D)[None, :])


def _pow2(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


# Tiles for the GPU: NOT yet measured (no GPU run was made for this op; README, "Status"). They follow the
# FlashAttention kernel's measured choice for D = 128 (BM 128, BN 64, 8 warps) and keep the SwiGLU kernels' shared
# memory under 130 KB at two stages; `ioaware bench lowrank` sweeps alternatives (its 'tiles' table) to replace
# them. The interpreter pays per program and per op, not per element: 32-wide tiles run the CPU tests 30x faster than
# 16-wide ones while odd test shapes still span several tiles.
INTERP_TILE = 32
ATTN_TILES = {"block_m": 128, "block_n": 64, "num_warps": 8, "num_stages": 2}


def attn_num_warps(D: int) -> int:
    """Warps for the fused attention kernel at head dim D. At D <= 64 it is 4: Triton 3.6 on the H200 miscompiles
    the kernel at D 64 with 8 warps (BM 128, BN 64) for some ranks (38 faults; 32, 48, 64 run) and RoPE table
    dtypes, an "out-of-range shared or local address" at the first key-tile product (compute-sanitizer), while 4
    warps ran every failing variant (dev/compress/diag_lowrank.py; kernels/lowrank/README.md, 2026-12-03). Four
    warps are also FlashAttention's choice at D 64."""
    return 4 if D <= 64 else ATTN_TILES["num_warps"]


def lowrank_attn_fwd(pq, vq, pk, vk, pv, vv, causal: bool, softmax_scale: float, rope=None, cache_seqlens=None,
                     block_m: int | None = None, block_n: int | None = None, num_warps: int | None = None,
                     num_stages: int | None = None) -> torch.Tensor:
    B, Tq, Hq, Rq = pq.shape
    Tk, Hkv, Rk = pk.shape[1], pk.shape[2], pk.shape[3]
    Rv, D = pv.shape[3], vq.shape[2]
    interp = interpreting()
    bm = block_m or (INTERP_TILE if interp else ATTN_TILES["block_m"] if Tq > 64 else 16)
    bn = block_n or (16 if interp else ATTN_TILES["block_n"])
    o = torch.empty((B, Tq, Hq, D), device=pq.device, dtype=pq.dtype)
    cos, sin = rope if rope is not None else (o, o)
    seqlens = cache_seqlens if cache_seqlens is not None else o
    grid = (triton.cdiv(Tq, bm), B * Hq)
    _lowrank_attn_fwd_kernel[grid](
        pq, vq, pk, vk, pv, vv, cos, sin, seqlens, o,
        pq.stride(0), pq.stride(1), pq.stride(2), vq.stride(0), vq.stride(1),
        pk.stride(0), pk.stride(1), pk.stride(2), vk.stride(0), vk.stride(1),
        pv.stride(0), pv.stride(1), pv.stride(2), vv.stride(0), vv.stride(1),
        cos.stride(0) if rope is not None else 0, o.stride(0), o.stride(1), o.stride(2),
        Tq, Tk, softmax_scale * 1.4426950408889634,
        HQ=Hq, GROUP=Hq // Hkv, RQ=Rq, RK=Rk, RV=Rv, BRQ=_pow2(Rq), BRK=_pow2(Rk), BRV=_pow2(Rv), D=D,
        HALF=max(D // 2, 1), BD=_pow2(D),
        BM=bm, BN=bn, IS_CAUSAL=causal, ROPE=rope is not None, HAS_SEQLENS=cache_seqlens is not None,
        PRECISION="ieee" if pq.dtype == torch.float32 else "tf32",
        UPCAST=interp and pq.dtype == torch.bfloat16,
        num_warps=num_warps or attn_num_warps(D), num_stages=num_stages or ATTN_TILES["num_stages"])
    return o


# ------------------------------------------------------------------------------------ attention, slab schedule
@triton.jit
def _lowrank_expand_fwd_kernel(P, V, COS, SIN, OUT, s_pb, s_pt, s_ph, s_vh, s_vr, s_c, s_ob, s_ot, s_oh,
                               T, pos0, H0, G: tl.constexpr, R: tl.constexpr, BR: tl.constexpr, D: tl.constexpr,
                               HALF: tl.constexpr, BD: tl.constexpr, BT: tl.constexpr, ROPE: tl.constexpr,
                               PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """OUT[b, t, g] = rope(P[b, t, H0 + g] V[H0 + g]) at position t + pos0, for one (BT, D) tile: heads H0..H0+G-1
    of the rank activations expanded (and rotated) once, into a slab buffer (B, T, G, D)."""
    i_t = tl.program_id(0)
    i_bg = tl.program_id(1)
    i_b = (i_bg // G).to(tl.int64)
    i_g = i_bg % G
    i_h = H0 + i_g
    o_t = i_t * BT + tl.arange(0, BT)
    o_r = tl.arange(0, BR)
    o_d = tl.arange(0, BD)
    m_t = o_t < T
    b_p = upcast(tl.load(P + i_b * s_pb + i_h * s_ph + o_t[:, None] * s_pt + o_r[None, :],
                         mask=m_t[:, None] & (o_r < R)[None, :], other=0.0), UPCAST)
    v_base = V + i_h * s_vh
    b_x = tl.dot(b_p, _load_factor(v_base, s_vr, o_r, o_d, R, D, HALF, False, UPCAST), input_precision=PRECISION)
    if ROPE:
        b_xr = tl.dot(b_p, _load_factor(v_base, s_vr, o_r, o_d, R, D, HALF, True, UPCAST), input_precision=PRECISION)
        b_x = _rope(b_x, b_xr, COS, SIN, s_c, o_t + pos0, m_t & (o_t + pos0 >= 0), o_d, D, HALF)
    p_o = OUT + i_b * s_ob + i_g * s_oh + o_t[:, None].to(tl.int64) * s_ot + o_d[None, :]
    tl.store(p_o, b_x.to(OUT.dtype.element_ty), mask=m_t[:, None] & (o_d < D)[None, :])


# unmeasured: a (64, R) x (R, D) product and its rotated twin, two fp32 (64, 128) accumulators in 4 warps (64
# registers each per thread; 128 rows would need 256 and spill). The pass writes D numbers per row: memory-bound.
EXPAND_TILES = {"block_t": 64, "num_warps": 4, "num_stages": 2}


def lowrank_expand_fwd(p, v, h0: int, out, rope=None, pos0: int = 0, block_t: int | None = None,
                       num_warps: int | None = None, num_stages: int | None = None) -> torch.Tensor:
    """Write heads h0 .. h0 + G - 1 of p (B, T, H, R) expanded by v (H, R, D), rotated at positions pos0 .. pos0 +
    T - 1 when `rope` (cos, sin) is given, into `out` (B, T, G, D) (contiguous)."""
    B, T, _, R = p.shape
    G, D = out.shape[2], v.shape[2]
    interp = interpreting()
    bt = block_t or (INTERP_TILE if interp else EXPAND_TILES["block_t"])
    cos, sin = rope if rope is not None else (out, out)
    _lowrank_expand_fwd_kernel[(triton.cdiv(T, bt), B * G)](
        p, v, cos, sin, out, p.stride(0), p.stride(1), p.stride(2), v.stride(0), v.stride(1),
        cos.stride(0) if rope is not None else 0, out.stride(0), out.stride(1), out.stride(2), T, pos0, h0,
        G=G, R=R, BR=_pow2(R), D=D, HALF=max(D // 2, 1), BD=_pow2(D), BT=bt, ROPE=rope is not None,
        PRECISION="ieee" if p.dtype == torch.float32 else "tf32", UPCAST=interp and p.dtype == torch.bfloat16,
        num_warps=num_warps or EXPAND_TILES["num_warps"], num_stages=num_stages or EXPAND_TILES["num_stages"])
    return out


# ---------------------------------------------------------------------------------------------------- SwiGLU
@triton.jit
def _swiglu_tile(PG, PU, VG, VU, s_pg, s_pu, s_vg, s_vu, o_m, m_m, o_f, m_f, RG, RU, RMAX,
                 BM: tl.constexpr, BF: tl.constexpr, BK: tl.constexpr, PRECISION: tl.constexpr,
                 UPCAST: tl.constexpr):
    """h = silu(PG[rows] VG[:, cols]) * (PU[rows] VU[:, cols]) for one (BM, BF) tile, fp32, on chip: the gate and
    up tiles are summed over the ranks in BK steps (one loop for both; the smaller rank's tail loads zeros)."""
    b_g = tl.zeros([BM, BF], tl.float32)
    b_u = tl.zeros([BM, BF], tl.float32)
    o_k0 = tl.arange(0, BK)
    for k in range(0, RMAX, BK):
        o_k = k + o_k0
        m_kg = o_k < RG
        m_ku = o_k < RU
        b_pg = upcast(tl.load(PG + o_m[:, None] * s_pg + o_k[None, :], mask=m_m[:, None] & m_kg[None, :], other=0.0),
                      UPCAST)
        b_vg = upcast(tl.load(VG + o_k[:, None] * s_vg + o_f[None, :], mask=m_kg[:, None] & m_f[None, :], other=0.0),
                      UPCAST)
        b_g = tl.dot(b_pg, b_vg, b_g, input_precision=PRECISION)
        b_pu = upcast(tl.load(PU + o_m[:, None] * s_pu + o_k[None, :], mask=m_m[:, None] & m_ku[None, :], other=0.0),
                      UPCAST)
        b_vu = upcast(tl.load(VU + o_k[:, None] * s_vu + o_f[None, :], mask=m_ku[:, None] & m_f[None, :], other=0.0),
                      UPCAST)
        b_u = tl.dot(b_pu, b_vu, b_u, input_precision=PRECISION)
    return b_g * tl.sigmoid(b_g) * b_u


@triton.jit
def _lowrank_swiglu_slab_kernel(PG, PU, VG, VU, H, s_pg, s_pu, s_vg, s_vu, s_h, M, F, RG, RU, RMAX,
                                BM: tl.constexpr, BF: tl.constexpr, BK: tl.constexpr, PRECISION: tl.constexpr,
                                UPCAST: tl.constexpr):
    o_m = tl.program_id(0) * BM + tl.arange(0, BM)
    o_f = tl.program_id(1) * BF + tl.arange(0, BF)
    m_m = o_m < M
    m_f = o_f < F
    b_h = _swiglu_tile(PG, PU, VG, VU, s_pg, s_pu, s_vg, s_vu, o_m, m_m, o_f, m_f, RG, RU, RMAX, BM, BF, BK,
                       PRECISION, UPCAST)
    tl.store(H + o_m[:, None].to(tl.int64) * s_h + o_f[None, :], b_h.to(H.dtype.element_ty),
             mask=m_m[:, None] & m_f[None, :])


@triton.jit
def _lowrank_swiglu_fused_kernel(PG, PU, VG, VU, U2, S, s_pg, s_pu, s_vg, s_vu, s_u2, s_s, M, F, RG, RU, RMAX, R2,
                                 BM: tl.constexpr, BF: tl.constexpr, BK: tl.constexpr, BR2: tl.constexpr,
                                 PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    o_m = tl.program_id(0) * BM + tl.arange(0, BM)
    o_r = tl.program_id(1) * BR2 + tl.arange(0, BR2)
    m_m = o_m < M
    m_r = o_r < R2
    b_s = tl.zeros([BM, BR2], tl.float32)
    o_f0 = tl.arange(0, BF)
    for f in range(0, F, BF):
        o_f = f + o_f0
        m_f = o_f < F
        b_h = _swiglu_tile(PG, PU, VG, VU, s_pg, s_pu, s_vg, s_vu, o_m, m_m, o_f, m_f, RG, RU, RMAX, BM, BF, BK,
                           PRECISION, UPCAST)
        b_u2 = upcast(tl.load(U2 + o_f[:, None] * s_u2 + o_r[None, :], mask=m_f[:, None] & m_r[None, :], other=0.0),
                      UPCAST)
        b_s = tl.dot(b_h.to(b_u2.dtype), b_u2, b_s, input_precision=PRECISION)  # the chunk of h, used and dropped
    tl.store(S + o_m[:, None].to(tl.int64) * s_s + o_r[None, :], b_s.to(S.dtype.element_ty),
             mask=m_m[:, None] & m_r[None, :])


# unmeasured defaults (see ATTN_TILES): slab = the h kernel's (BM, BF, BK); fused adds BR2
SLAB_TILES = {"block_m": 128, "block_f": 128, "block_k": 64, "num_warps": 8, "num_stages": 2}
FUSED_TILES = {"block_m": 64, "block_f": 64, "block_k": 64, "block_r2": 128, "num_warps": 4, "num_stages": 2}
SLAB_ROWS = 4096  # rows per slab: h for a slab of Llama-2-7B (F = 11008, bf16) is 90 MB, 1/16 of the batch's 1.4 GB


def _common(pg, pu, vg, vu):
    M, RG = pg.shape
    RU = pu.shape[1]
    interp = interpreting()
    return M, vg.shape[1], RG, RU, max(RG, RU), ("ieee" if pg.dtype == torch.float32 else "tf32"), interp, \
        interp and pg.dtype == torch.bfloat16


def swiglu_hidden_fwd(pg, pu, vg, vu, block_m=None, block_f=None, block_k=None, num_warps=None,
                      num_stages=None) -> torch.Tensor:
    """h = silu(pg vg) * (pu vu), (M, F), gate and up kept on chip (the slab schedule's kernel)."""
    M, F, RG, RU, RMAX, prec, interp, up = _common(pg, pu, vg, vu)
    t = SLAB_TILES
    bm = block_m or (INTERP_TILE if interp else t["block_m"] if M > 64 else 16)
    bf = block_f or (INTERP_TILE if interp else t["block_f"])
    bk = block_k or (INTERP_TILE if interp else t["block_k"])
    h = torch.empty((M, F), device=pg.device, dtype=pg.dtype)
    _lowrank_swiglu_slab_kernel[(triton.cdiv(M, bm), triton.cdiv(F, bf))](
        pg, pu, vg, vu, h, pg.stride(0), pu.stride(0), vg.stride(0), vu.stride(0), h.stride(0), M, F, RG, RU, RMAX,
        BM=bm, BF=bf, BK=bk, PRECISION=prec, UPCAST=up, num_warps=num_warps or t["num_warps"],
        num_stages=num_stages or t["num_stages"])
    return h


def lowrank_swiglu_fwd(pg, pu, vg, vu, u2, schedule: str, slab_rows: int | None = None, out=None,
                       **tiles) -> torch.Tensor:
    """s = (silu(pg vg) * (pu vu)) u2, (M, R2), by the 'fused' or the 'slab' schedule (module docstring)."""
    M, F, RG, RU, RMAX, prec, interp, up = _common(pg, pu, vg, vu)
    R2 = u2.shape[1]
    s = out if out is not None else torch.empty((M, R2), device=pg.device, dtype=pg.dtype)
    if schedule == "slab":
        rows = slab_rows or SLAB_ROWS
        h_tiles = {k: v for k, v in tiles.items() if k != "block_r2"}
        for r0 in range(0, M, rows):
            r1 = min(M, r0 + rows)
            h = swiglu_hidden_fwd(pg[r0:r1], pu[r0:r1], vg, vu, **h_tiles)  # (rows, F): the only F-wide buffer
            torch.mm(h, u2, out=s[r0:r1])
            del h
        return s
    t = FUSED_TILES
    bm = tiles.get("block_m") or (INTERP_TILE if interp else t["block_m"] if M > 32 else 16)
    bf = tiles.get("block_f") or (INTERP_TILE if interp else t["block_f"])
    bk = tiles.get("block_k") or (INTERP_TILE if interp else t["block_k"])
    br2 = tiles.get("block_r2") or (INTERP_TILE if interp else min(t["block_r2"], _pow2(R2)))
    _lowrank_swiglu_fused_kernel[(triton.cdiv(M, bm), triton.cdiv(R2, br2))](
        pg, pu, vg, vu, u2, s, pg.stride(0), pu.stride(0), vg.stride(0), vu.stride(0), u2.stride(0), s.stride(0),
        M, F, RG, RU, RMAX, R2, BM=bm, BF=bf, BK=bk, BR2=br2, PRECISION=prec, UPCAST=up,
        num_warps=tiles.get("num_warps") or t["num_warps"], num_stages=tiles.get("num_stages") or t["num_stages"])
    return s
