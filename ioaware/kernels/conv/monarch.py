"""FlashFFTConv in Triton: the Monarch FFT convolution as chains of small complex matmuls on tensor cores.

Fused kernel (FFT size N ≤ 16k), one program per (pair of batch rows, head):
    A = (u ∘ pre)[b] + i·(u ∘ pre)[b+1]              [N1/2, M]   (two real rows packed as one complex row;
                                                                  rows n1 ≥ N1/2 are the causal zero padding)
    for each block r of R spectrum rows k1:
        X = F1[r, :N1/2] @ A                          [R, M]      first DFT, half of F1 (padding)
        X = ((X ∘ TW[r]) @ F2) ∘ K[r]                             twiddle, row DFT, × kernel spectrum / N
        X = (X @ conj(F2)ᵀ) ∘ conj(TW[r])                         inverse row DFT, inverse twiddle
        acc += conj(F1)[r, :N1/2]ᵀ @ X                [N1/2, M]   this block's share of the last inverse DFT
    y[b] = Re(acc) ∘ post[b];  y[b+1] = Im(acc) ∘ post[b+1]
Order 3 (`monarch3.py`) splits the row DFT M = N2·N3. `_rows2t` is the same loop transposed (the sequence axis
as the rows of every matmul, so all of them run as Hopper warpgroup MMAs); the default from FFT size 2048 on.

Outer plan (N > 16k, N = P·M): `_outer_fwd_kernel` (radix-P DFT across the rows of x, twiddle; rows
k1 ≤ P/2 only, the rest are their conjugate mirrors) → `_conv2_cplx_kernel` (the fused kernel on each
complex row of length M, full rows) → `_outer_inv_kernel` (inverse radix-P DFT to the real output, gated).

Backward (`_spec_kernel`): dk needs Σ_b DC_b·conj(V_b). With z1 = v_a + i·v_b and z2 = rdc_a − i·rdc_b
(rdc: the output gradient reversed in time), Re(ifft(Σ Z1∘Z2)) = Σ v_a⊛rdc_a + v_b⊛rdc_b, whose reversed
first samples are dk. The kernel accumulates Σ Z1∘Z2 per head in the kernel layout; the input gradient is a
forward run on reversed data (correlation = convolution of the time-reversed signal).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._dispatch import interpreting
from ._common import _cdot_l, _cdot_r, _cmul, _ld2, _store_gated
from .monarch3 import _conv3_pair_kernel
from .reference import Plan, _tables_cpu


# ----------------------------------------------------------------------------------------------- order 2
@triton.jit
def _rows2(ar, ai, accr, acci, kf_r, kf_i, F1, F2, TW, N1: tl.constexpr, NIN: tl.constexpr, M: tl.constexpr,
           MK: tl.constexpr, R: tl.constexpr, S: tl.constexpr, DT: tl.constexpr, PREC: tl.constexpr,
           STAGES: tl.constexpr, RELOAD_TW: tl.constexpr = True):
    """The block loop of the order-2 fused kernel for S problems side by side (columns s·M + m; all S share one
    kernel spectrum). Tables interleaved [.., 2]: F1 [N1, NIN] = F1[k1, n1] (DT); F2 [M, MK] = F2[n2, kept k2]
    (DT); TW [N1, M] = ω_N^{k1 m} (fp32). kf_r/kf_i: the spectrum / N, [N1, MK] fp32 planes. The row DFTs run
    on [R·S, M] (rows k1·S + s); the inverse DFTs reuse the same tiles transposed and conjugated."""
    o_r = tl.arange(0, R)
    o_in = tl.arange(0, NIN)
    o_m = tl.arange(0, M)
    o_k = tl.arange(0, MK)
    m_c = tl.arange(0, S * M) % M
    rs = tl.arange(0, R * S) // S
    for r0 in tl.range(0, N1, R, num_stages=STAGES):
        kr = r0 + o_r
        f1r, f1i = _ld2(F1, kr[:, None] * NIN + o_in[None, :])
        xr = tl.zeros([R, S * M], tl.float32)
        xi = tl.zeros([R, S * M], tl.float32)
        xr, xi = _cdot_l(f1r, f1i, ar, ai, xr, xi, False, PREC)
        twr, twi = _ld2(TW, kr[:, None] * M + m_c[None, :])
        xr, xi = _cmul(xr, xi, twr, twi)
        f2r, f2i = _ld2(F2, o_m[:, None] * MK + o_k[None, :])
        yr = tl.zeros([R * S, MK], tl.float32)
        yi = tl.zeros([R * S, MK], tl.float32)
        yr, yi = _cdot_r(tl.reshape(xr.to(DT), [R * S, M]), tl.reshape(xi.to(DT), [R * S, M]), f2r, f2i, yr, yi,
                         False, PREC)
        p_k = (r0 + rs)[:, None] * MK + o_k[None, :]
        yr, yi = _cmul(yr, yi, tl.load(kf_r + p_k), tl.load(kf_i + p_k))
        zr = tl.zeros([R * S, M], tl.float32)
        zi = tl.zeros([R * S, M], tl.float32)
        zr, zi = _cdot_r(yr.to(DT), yi.to(DT), tl.trans(f2r), tl.trans(f2i), zr, zi, True, PREC)
        if RELOAD_TW:  # reloading (L1/L2) rather than holding the twiddle tile live frees registers
            twr, twi = _ld2(TW, kr[:, None] * M + m_c[None, :])
        xr, xi = _cmul(tl.reshape(zr, [R, S * M]), tl.reshape(zi, [R, S * M]), twr, -twi)
        accr, acci = _cdot_l(tl.trans(f1r), tl.trans(f1i), xr.to(DT), xi.to(DT), accr, acci, True, PREC)
    return accr, acci


@triton.jit
def _conv2_pair_kernel(X, G_IN, O1, G_O1, O2, G_O2, KF, F1, F2, TW, B, L, KF_H, NGRP,
                       H: tl.constexpr, N1: tl.constexpr, NIN: tl.constexpr, M: tl.constexpr, MK: tl.constexpr,
                       R: tl.constexpr, S: tl.constexpr, HAS_GIN: tl.constexpr, HAS_GO1: tl.constexpr,
                       HAS_O2: tl.constexpr, REV: tl.constexpr, DT: tl.constexpr, PREC: tl.constexpr,
                       STAGES: tl.constexpr):
    """Real rows in, real rows out: S pairs of batch rows of one head per program, each pair one complex problem
    (column block s). Reads X (∘ G_IN), writes O1 = c ∘ G_O1 and optionally O2 = c ∘ G_O2; REV: time index
    L-1-n (the backward's correlation)."""
    pid = tl.program_id(0)
    i_g = pid % NGRP  # neighbouring programs share one head's spectrum (L2)
    i_h = pid // NGRP
    o_c = tl.arange(0, S * M)
    b0 = 2 * (i_g * S + o_c // M)  # [S·M]: first batch row of the column's pair
    row0 = (b0 * H + i_h).to(tl.int64) * L
    row1 = row0 + H * L
    o_n = tl.arange(0, NIN)[:, None] * M + (o_c % M)[None, :]
    m_n = o_n < tl.where(b0 < B, L, 0)[None, :]
    m_1 = o_n < tl.where(b0 + 1 < B, L, 0)[None, :]  # the second row of the pair exists
    t = L - 1 - o_n if REV else o_n
    p0 = row0[None, :] + t
    p1 = row1[None, :] + t
    ar = tl.load(X + p0, mask=m_n, other=0.0).to(tl.float32)
    ai = tl.load(X + p1, mask=m_1, other=0.0).to(tl.float32)
    if HAS_GIN:
        ar = ar * tl.load(G_IN + p0, mask=m_n, other=0.0).to(tl.float32)
        ai = ai * tl.load(G_IN + p1, mask=m_1, other=0.0).to(tl.float32)
    accr = tl.zeros([NIN, S * M], tl.float32)
    acci = tl.zeros([NIN, S * M], tl.float32)
    kf_r = KF + i_h.to(tl.int64) * (2 * KF_H)
    accr, acci = _rows2(ar.to(DT), ai.to(DT), accr, acci, kf_r, kf_r + KF_H, F1, F2, TW,
                        N1, NIN, M, MK, R, S, DT, PREC, STAGES)
    _store_gated(O1, G_O1, O2, G_O2, accr, acci, p0, p1, 0, m_n, m_1, HAS_GO1, HAS_O2)  # offsets p0/p1 + 0


@triton.jit
def _rows2t(atr, ati, accr, acci, kf_r, kf_i, F1, F2, TW, N1: tl.constexpr, NIN: tl.constexpr, M: tl.constexpr,
            MK: tl.constexpr, R: tl.constexpr, DT: tl.constexpr, PREC: tl.constexpr, STAGES: tl.constexpr):
    """The order-2 block loop, transposed: the sequence axis m is the rows of every matmul (M-dim = M or MK ≥ 64,
    what Hopper's warpgroup MMA wants), the spectrum rows k1 of the block are the columns.
        Xᵀ [M, R] = Aᵀ [M, NIN] @ F1[r, :NIN]ᵀ;  Xᵀ ∘= TWᵀ;  Yᵀ [MK, R] = F2ᵀ @ Xᵀ;  Yᵀ ∘= Kᵀ/N
        Zᵀ [M, R] = conj(F2) @ Yᵀ;  Zᵀ ∘= conj TWᵀ;  accᵀ [M, NIN] += Zᵀ @ conj(F1[r, :NIN])
    Same tables as `_rows2` (read transposed through their pointers)."""
    o_r = tl.arange(0, R)
    o_in = tl.arange(0, NIN)
    o_m = tl.arange(0, M)
    o_k = tl.arange(0, MK)
    for r0 in tl.range(0, N1, R, num_stages=STAGES):
        kr = r0 + o_r
        f1r, f1i = _ld2(F1, kr[None, :] * NIN + o_in[:, None])  # [NIN, R]
        xr = tl.zeros([M, R], tl.float32)
        xi = tl.zeros([M, R], tl.float32)
        xr, xi = _cdot_r(atr, ati, f1r, f1i, xr, xi, False, PREC)
        twr, twi = _ld2(TW, kr[None, :] * M + o_m[:, None])  # [M, R]
        xr, xi = _cmul(xr, xi, twr, twi)
        f2r, f2i = _ld2(F2, o_m[None, :] * MK + o_k[:, None])  # [MK, M] = F2[:, keep]ᵀ
        yr = tl.zeros([MK, R], tl.float32)
        yi = tl.zeros([MK, R], tl.float32)
        yr, yi = _cdot_l(f2r, f2i, xr.to(DT), xi.to(DT), yr, yi, False, PREC)
        p_k = kr[None, :] * MK + o_k[:, None]
        yr, yi = _cmul(yr, yi, tl.load(kf_r + p_k), tl.load(kf_i + p_k))
        zr = tl.zeros([M, R], tl.float32)
        zi = tl.zeros([M, R], tl.float32)
        zr, zi = _cdot_l(tl.trans(f2r), tl.trans(f2i), yr.to(DT), yi.to(DT), zr, zi, True, PREC)
        twr, twi = _ld2(TW, kr[None, :] * M + o_m[:, None])
        zr, zi = _cmul(zr, zi, twr, -twi)
        accr, acci = _cdot_r(zr.to(DT), zi.to(DT), tl.trans(f1r), tl.trans(f1i), accr, acci, True, PREC)
    return accr, acci


@triton.jit
def _conv2t_pair_kernel(X, G_IN, O1, G_O1, O2, G_O2, KF, F1, F2, TW, B, L, KF_H, NGRP,
                        H: tl.constexpr, N1: tl.constexpr, NIN: tl.constexpr, M: tl.constexpr, MK: tl.constexpr,
                        R: tl.constexpr, HAS_GIN: tl.constexpr, HAS_GO1: tl.constexpr, HAS_O2: tl.constexpr,
                        REV: tl.constexpr, DT: tl.constexpr, PREC: tl.constexpr, STAGES: tl.constexpr):
    """`_conv2_pair_kernel` with the transposed block loop (`_rows2t`): one pair of rows per program, held as
    [M, NIN] (element (m, n1) is time n1·M + m)."""
    pid = tl.program_id(0)
    i_p = pid % NGRP
    i_h = pid // NGRP
    b0 = 2 * i_p
    row0 = (b0 * H + i_h).to(tl.int64) * L
    row1 = row0 + H * L
    o_n = tl.arange(0, M)[:, None] + tl.arange(0, NIN)[None, :] * M
    m_n = o_n < L
    m_1 = o_n < tl.where(b0 + 1 < B, L, 0)
    t = L - 1 - o_n if REV else o_n
    ar = tl.load(X + row0 + t, mask=m_n, other=0.0).to(tl.float32)
    ai = tl.load(X + row1 + t, mask=m_1, other=0.0).to(tl.float32)
    if HAS_GIN:
        ar = ar * tl.load(G_IN + row0 + t, mask=m_n, other=0.0).to(tl.float32)
        ai = ai * tl.load(G_IN + row1 + t, mask=m_1, other=0.0).to(tl.float32)
    accr = tl.zeros([M, NIN], tl.float32)
    acci = tl.zeros([M, NIN], tl.float32)
    kf_r = KF + i_h.to(tl.int64) * (2 * KF_H)
    accr, acci = _rows2t(ar.to(DT), ai.to(DT), accr, acci, kf_r, kf_r + KF_H, F1, F2, TW,
                         N1, NIN, M, MK, R, DT, PREC, STAGES)
    _store_gated(O1, G_O1, O2, G_O2, accr, acci, row0, row1, t, m_n, m_1, HAS_GO1, HAS_O2)


@triton.jit
def _conv2t_cplx_kernel(Y, KF, F1, F2, TW, KF_H, H: tl.constexpr, PR: tl.constexpr, N1: tl.constexpr,
                        M: tl.constexpr, R: tl.constexpr, DT: tl.constexpr, PREC: tl.constexpr,
                        STAGES: tl.constexpr):
    """`_conv2_cplx_kernel` with the transposed block loop: row k1 of one sequence, held as [M, N1]."""
    pid = tl.program_id(0)
    i_k = pid % PR
    i_s = pid // PR
    i_h = i_s % H
    base = Y + (i_s.to(tl.int64) * PR + i_k) * (2 * N1 * M)
    o_n = tl.arange(0, M)[:, None] + tl.arange(0, N1)[None, :] * M
    ar = tl.load(base + o_n)
    ai = tl.load(base + N1 * M + o_n)
    accr = tl.zeros([M, N1], tl.float32)
    acci = tl.zeros([M, N1], tl.float32)
    kf_r = KF + (i_h.to(tl.int64) * PR + i_k) * (2 * KF_H)
    accr, acci = _rows2t(ar.to(DT), ai.to(DT), accr, acci, kf_r, kf_r + KF_H, F1, F2, TW,
                         N1, N1, M, M, R, DT, PREC, STAGES)
    tl.store(base + o_n, accr)
    tl.store(base + N1 * M + o_n, acci)


@triton.jit
def _conv2_cplx_kernel(Y, KF, F1, F2, TW, KF_H, NSEQ, NGRP, H: tl.constexpr, PR: tl.constexpr, N1: tl.constexpr,
                       M: tl.constexpr, R: tl.constexpr, S: tl.constexpr, DT: tl.constexpr, PREC: tl.constexpr,
                       STAGES: tl.constexpr):
    """The middle pass of an outer plan: row k1 of S sequences of one head (s = (g·S + j)·H + h), complex [N1, M]
    each, in place (Y: [NSEQ, PR, 2, N1·M] fp32), full rows in and out; KF [H, PR, 2, N1, M] (the row's bins / N
    in the inner layout)."""
    pid = tl.program_id(0)
    i_k = pid % PR
    rest = pid // PR
    i_g = rest % NGRP
    i_h = rest // NGRP
    o_c = tl.arange(0, S * M)
    seq = (i_g * S + o_c // M) * H + i_h  # [S·M]
    ok = seq < NSEQ
    base = Y + (seq.to(tl.int64) * PR + i_k) * (2 * N1 * M)
    p = base[None, :] + tl.arange(0, N1)[:, None] * M + (o_c % M)[None, :]
    m = ok[None, :] & (tl.arange(0, N1)[:, None] < N1)
    ar = tl.load(p, mask=m, other=0.0)
    ai = tl.load(p + N1 * M, mask=m, other=0.0)
    accr = tl.zeros([N1, S * M], tl.float32)
    acci = tl.zeros([N1, S * M], tl.float32)
    kf_r = KF + (i_h.to(tl.int64) * PR + i_k) * (2 * KF_H)
    accr, acci = _rows2(ar.to(DT), ai.to(DT), accr, acci, kf_r, kf_r + KF_H, F1, F2, TW,
                        N1, N1, M, M, R, S, DT, PREC, STAGES)
    tl.store(p, accr, mask=m)
    tl.store(p + N1 * M, acci, mask=m)


@triton.jit
def _spec2_kernel(U, G_U, D, G_D, SPEC, B, L, NPAIR, G, F1, F2, TW,
                  H: tl.constexpr, N1: tl.constexpr, NIN: tl.constexpr, M: tl.constexpr, R: tl.constexpr,
                  HAS_GU: tl.constexpr, HAS_GD: tl.constexpr, DT: tl.constexpr, PREC: tl.constexpr):
    """dk's spectrum: SPEC[g, h] (fp32 planes [2, N1, M], zero-initialised) += Σ over this program's pairs of
    Z1 ∘ Z2, Z1 = spectrum(v_a + i v_b), Z2 = spectrum(rdc_a - i rdc_b), v = U ∘ G_U, dc = D ∘ G_D."""
    i_h = tl.program_id(0)
    i_g = tl.program_id(1)
    o_r = tl.arange(0, R)
    o_in = tl.arange(0, NIN)
    o_m = tl.arange(0, M)
    o_n = o_in[:, None] * M + o_m[None, :]
    m_n = o_n < L
    t_rev = L - 1 - o_n
    sp = SPEC + (i_g.to(tl.int64) * H + i_h) * (2 * N1 * M)
    for i_p in range(i_g, NPAIR, G):
        b0 = 2 * i_p
        row0 = (b0 * H + i_h).to(tl.int64) * L
        row1 = row0 + H * L
        m_1 = o_n < tl.where(b0 + 1 < B, L, 0)
        vr = tl.load(U + row0 + o_n, mask=m_n, other=0.0).to(tl.float32)
        vi = tl.load(U + row1 + o_n, mask=m_1, other=0.0).to(tl.float32)
        dr = tl.load(D + row0 + t_rev, mask=m_n, other=0.0).to(tl.float32)
        di = tl.load(D + row1 + t_rev, mask=m_1, other=0.0).to(tl.float32)
        if HAS_GU:
            vr = vr * tl.load(G_U + row0 + o_n, mask=m_n, other=0.0).to(tl.float32)
            vi = vi * tl.load(G_U + row1 + o_n, mask=m_1, other=0.0).to(tl.float32)
        if HAS_GD:
            dr = dr * tl.load(G_D + row0 + t_rev, mask=m_n, other=0.0).to(tl.float32)
            di = di * tl.load(G_D + row1 + t_rev, mask=m_1, other=0.0).to(tl.float32)
        vr = vr.to(DT)
        vi = vi.to(DT)
        dr = dr.to(DT)
        di = (-di).to(DT)
        for r0 in range(0, N1, R):
            kr = r0 + o_r
            f1r, f1i = _ld2(F1, kr[:, None] * NIN + o_in[None, :])
            twr, twi = _ld2(TW, kr[:, None] * M + o_m[None, :])
            f2r, f2i = _ld2(F2, o_m[:, None] * M + o_m[None, :])
            x1r = tl.zeros([R, M], tl.float32)
            x1i = tl.zeros([R, M], tl.float32)
            x1r, x1i = _cdot_l(f1r, f1i, vr, vi, x1r, x1i, False, PREC)
            x1r, x1i = _cmul(x1r, x1i, twr, twi)
            z1r = tl.zeros([R, M], tl.float32)
            z1i = tl.zeros([R, M], tl.float32)
            z1r, z1i = _cdot_r(x1r.to(DT), x1i.to(DT), f2r, f2i, z1r, z1i, False, PREC)
            x2r = tl.zeros([R, M], tl.float32)
            x2i = tl.zeros([R, M], tl.float32)
            x2r, x2i = _cdot_l(f1r, f1i, dr, di, x2r, x2i, False, PREC)
            x2r, x2i = _cmul(x2r, x2i, twr, twi)
            z2r = tl.zeros([R, M], tl.float32)
            z2i = tl.zeros([R, M], tl.float32)
            z2r, z2i = _cdot_r(x2r.to(DT), x2i.to(DT), f2r, f2i, z2r, z2i, False, PREC)
            pr, pi = _cmul(z1r, z1i, z2r, z2i)
            p_s = sp + kr[:, None] * M + o_m[None, :]
            tl.store(p_s, tl.load(p_s) + pr)
            tl.store(p_s + N1 * M, tl.load(p_s + N1 * M) + pi)


# ----------------------------------------------------------------------------------------------- outer passes
@triton.jit
def _outer_fwd_kernel(X, G_IN, Y, FO, TWO, L, M, NMB, PH: tl.constexpr, PPAD: tl.constexpr, KP: tl.constexpr,
                      KPAD: tl.constexpr, MB: tl.constexpr, HAS_GIN: tl.constexpr, REV: tl.constexpr,
                      DT: tl.constexpr, PREC: tl.constexpr):
    """Y[s, k1, m] = ω_N^{m k1} Σ_{p < PH} ω_P^{p k1} x[s, p·M + m] for k1 < KP = P/2 + 1; Y fp32 [S, KP, 2, M].
    FO [KPAD, PPAD, 2] (zero beyond KP, PH); TWO [KPAD, M, 2]."""
    pid = tl.program_id(0)
    i_s = pid // NMB
    i_mb = pid % NMB
    o_p = tl.arange(0, PPAD)
    o_k = tl.arange(0, KPAD)
    o_m = i_mb * MB + tl.arange(0, MB)
    row = i_s.to(tl.int64) * L
    o_n = o_p[:, None] * M + o_m[None, :]
    m_n = (o_n < L) & (o_p[:, None] < PH)
    t = L - 1 - o_n if REV else o_n
    x = tl.load(X + row + t, mask=m_n, other=0.0).to(tl.float32)
    if HAS_GIN:
        x = x * tl.load(G_IN + row + t, mask=m_n, other=0.0).to(tl.float32)
    fr, fi = _ld2(FO, o_k[:, None] * PPAD + o_p[None, :])
    yr = tl.dot(fr, x.to(DT), input_precision=PREC)
    yi = tl.dot(fi, x.to(DT), input_precision=PREC)
    p_tw = TWO + (o_k[:, None] * M + o_m[None, :]) * 2
    yr, yi = _cmul(yr, yi, tl.load(p_tw), tl.load(p_tw + 1))
    p_y = Y + (i_s.to(tl.int64) * KP + o_k[:, None]) * (2 * M) + o_m[None, :]
    m_y = o_k[:, None] < KP
    tl.store(p_y, yr, mask=m_y)
    tl.store(p_y + M, yi, mask=m_y)


@triton.jit
def _outer_inv_kernel(Y, O1, G_O1, O2, G_O2, GO, TWO, L, M, NMB, PH: tl.constexpr, PPAD: tl.constexpr,
                      KP: tl.constexpr, KPAD: tl.constexpr, MB: tl.constexpr, HAS_GO1: tl.constexpr,
                      HAS_O2: tl.constexpr, REV: tl.constexpr, DT: tl.constexpr, PREC: tl.constexpr):
    """o[s, p·M + m] = Re Σ_{k1 ≤ P/2} GO[p, k1] · conj(ω_N^{m k1}) · Y[s, k1, m] for p < PH, gated.
    GO [PPAD, KPAD, 2] = w_k1 ω_P^{-p k1} (w = 1 at k1 = 0, P/2, else 2: the mirrored rows)."""
    pid = tl.program_id(0)
    i_s = pid // NMB
    i_mb = pid % NMB
    o_p = tl.arange(0, PPAD)
    o_k = tl.arange(0, KPAD)
    o_m = i_mb * MB + tl.arange(0, MB)
    p_y = Y + (i_s.to(tl.int64) * KP + o_k[:, None]) * (2 * M) + o_m[None, :]
    m_y = o_k[:, None] < KP
    yr = tl.load(p_y, mask=m_y, other=0.0)
    yi = tl.load(p_y + M, mask=m_y, other=0.0)
    p_tw = TWO + (o_k[:, None] * M + o_m[None, :]) * 2
    yr, yi = _cmul(yr, yi, tl.load(p_tw), -tl.load(p_tw + 1))
    gr, gi = _ld2(GO, o_p[:, None] * KPAD + o_k[None, :])
    c = tl.dot(gr, yr.to(DT), input_precision=PREC)
    c = tl.dot(-gi, yi.to(DT), c, input_precision=PREC)
    row = i_s.to(tl.int64) * L
    o_n = o_p[:, None] * M + o_m[None, :]
    m_n = (o_n < L) & (o_p[:, None] < PH)
    t = L - 1 - o_n if REV else o_n
    o1 = c
    if HAS_GO1:
        o1 = o1 * tl.load(G_O1 + row + t, mask=m_n, other=0.0).to(tl.float32)
    tl.store(O1 + row + t, o1.to(O1.dtype.element_ty), mask=m_n)
    if HAS_O2:
        o2 = c * tl.load(G_O2 + row + t, mask=m_n, other=0.0).to(tl.float32)
        tl.store(O2 + row + t, o2.to(O2.dtype.element_ty), mask=m_n)


# ----------------------------------------------------------------------------------------------- tables on device
_DEV_TABLES: dict = {}


def _ri(z: torch.Tensor, dtype, device) -> torch.Tensor:
    """complex128 [...] -> [..., 2] (re, im) in dtype on device."""
    return torch.stack([z.real, z.imag], -1).to(dtype).to(device).contiguous()


def op_dtype(dtype: torch.dtype):
    """(torch dtype of the matmul operands, Triton dtype, input_precision)."""
    if interpreting():
        # Triton's interpreter returns garbage for tl.dot on bf16 tiles (see kernels/attention/flash/kernel.py);
        # CPU runs check the algorithm in fp32.
        return torch.float32, tl.float32, "ieee"
    if dtype == torch.float32:
        return torch.float32, tl.float32, "tf32x3"
    return torch.bfloat16, tl.bfloat16, "tf32"


def tables(plan: Plan, dtype: torch.dtype, device, nin: int, keep: torch.Tensor | None = None) -> dict:
    """Device tables of a fused plan for input rows nin (N1/2 for real pairs, N1 for complex rows)."""
    odt = op_dtype(dtype)[0]
    key = (plan.N, plan.N1, plan.N2, plan.N3, odt, str(device), nin,
           None if keep is None else tuple(keep.tolist()))
    if key in _DEV_TABLES:
        return _DEV_TABLES[key]
    t = _tables_cpu(plan)
    out = {"F1": _ri(t["F1"][:, :nin], odt, device), "TW": _ri(t["TW"], torch.float32, device)}
    if plan.N3 == 1:
        out["F2"] = _ri(t["F2"] if keep is None else t["F2"][:, keep], odt, device)
    else:
        out.update(F2=_ri(t["F2"], odt, device), F3=_ri(t["F3"], odt, device),
                   TW2=_ri(t["TW2"], torch.float32, device))
    _DEV_TABLES[key] = out
    return out


def outer_tables(plan: Plan, dtype, device) -> dict:
    import math

    odt = op_dtype(dtype)[0]
    key = ("outer", plan.N, plan.P, odt, str(device))
    if key in _DEV_TABLES:
        return _DEV_TABLES[key]
    P, M, N = plan.P, plan.M, plan.N
    PH, KP = P // 2, P // 2 + 1
    PPAD, KPAD = max(16, PH), max(16, triton.next_power_of_2(KP))
    k1 = torch.arange(KPAD)[:, None]
    p = torch.arange(PPAD)[None, :]
    FO = torch.exp(-2j * math.pi * ((k1 * p) % P).double() / P) * ((k1 < KP) & (p < PH))
    w = torch.where((k1 == 0) | (k1 == PH), 1.0, 2.0).double()
    GO = (torch.exp(2j * math.pi * ((k1 * p) % P).double() / P) * w * ((k1 < KP) & (p < PH))).T
    m = torch.arange(M)[None, :]
    TWO = torch.exp(-2j * math.pi * ((k1 * m) % N).double() / N) * (k1 < KP)
    out = {"FO": _ri(FO, odt, device), "GO": _ri(GO, odt, device), "TWO": _ri(TWO, torch.float32, device),
           "PH": PH, "KP": KP, "PPAD": PPAD, "KPAD": KPAD}
    _DEV_TABLES[key] = out
    return out


# ----------------------------------------------------------------------------------------------- launchers
def conv_pair(x, kf, plan: Plan, *, g_in=None, o1=None, g_o1=None, o2=None, g_o2=None, rev=False, keep=None):
    """Fused kernel on real rows: x (B, H, L) contiguous; kf: the kernel layout planes (H, 2, ...) fp32.
    Writes o1 = conv(x ∘ g_in) ∘ g_o1 (and o2 = conv(...) ∘ g_o2)."""
    B, H, L = x.shape
    _, tdt, prec = op_dtype(x.dtype)
    nin = plan.N1 // 2
    t = tables(plan, x.dtype, x.device, nin, keep)
    o1 = torch.empty_like(x) if o1 is None else o1
    dummy = x
    npair = (B + 1) // 2
    S = min(plan.S, triton.next_power_of_2(npair)) if plan.N3 == 1 and not plan.T else 1
    ngrp = triton.cdiv(npair, S)
    grid = (ngrp * H,)
    common = dict(HAS_GIN=g_in is not None, HAS_GO1=g_o1 is not None, HAS_O2=o2 is not None, REV=rev, DT=tdt,
                  PREC=prec, STAGES=plan.stages, num_warps=plan.warps)
    ptrs = (x, g_in if g_in is not None else dummy, o1, g_o1 if g_o1 is not None else dummy,
            o2 if o2 is not None else dummy, g_o2 if g_o2 is not None else dummy, kf)
    kf_h = kf[0, 0].numel()
    if plan.N3 == 1 and plan.T:
        mk = plan.M if keep is None else len(keep)
        _conv2t_pair_kernel[grid](*ptrs, t["F1"], t["F2"], t["TW"], B, L, kf_h, ngrp, H=H, N1=plan.N1, NIN=nin,
                                  M=plan.M, MK=mk, R=plan.R, **common)
    elif plan.N3 == 1:
        mk = plan.M if keep is None else len(keep)
        _conv2_pair_kernel[grid](*ptrs, t["F1"], t["F2"], t["TW"], B, L, kf_h, ngrp, H=H, N1=plan.N1, NIN=nin,
                                 M=plan.M, MK=mk, R=plan.R, S=S, **common)
    else:
        _conv3_pair_kernel[grid](*ptrs, t["F1"], t["F2"], t["F3"], t["TW"], t["TW2"], B, L, kf_h, ngrp, H=H,
                                 N1=plan.N1, NIN=nin, N2=plan.N2, N3=plan.N3, R=plan.R, **common)
    return o1


def spectrum_pairs(u, g_u, d, g_d, plan: Plan, groups: int) -> torch.Tensor:
    """Σ over batch of Z1∘Z2 (see `_spec2_kernel`), (groups, H, 2, N1, M) fp32; the caller sums groups."""
    assert plan.N3 == 1
    B, H, L = u.shape
    _, tdt, prec = op_dtype(u.dtype)
    nin = plan.N1 // 2
    t = tables(plan, u.dtype, u.device, nin)
    npair = (B + 1) // 2
    groups = max(1, min(groups, npair))
    spec = torch.zeros(groups, H, 2, plan.N1, plan.M, device=u.device, dtype=torch.float32)
    _spec2_kernel[(H, groups)](u, g_u if g_u is not None else u, d, g_d if g_d is not None else d, spec, B, L,
                               npair, groups, t["F1"], t["F2"], t["TW"], H=H, N1=plan.N1, NIN=nin, M=plan.M,
                               R=plan.R, HAS_GU=g_u is not None, HAS_GD=g_d is not None, DT=tdt, PREC=prec,
                               num_warps=8 if plan.N >= 8192 else 4, num_stages=1)
    return spec


def conv_outer(x, kf_rows, plan: Plan, *, g_in=None, o1=None, g_o1=None, o2=None, g_o2=None, rev=False,
               chunk_bytes: int = 1 << 30):
    """Outer plan on real rows: radix-P pass, fused middle pass on the P/2+1 complex rows, inverse radix-P.
    kf_rows (H, P/2+1, 2, N1, M) fp32. Sequences go through in chunks whose fp32 intermediate ≤ chunk_bytes."""
    B, H, L = x.shape
    inner = plan.inner
    _, tdt, prec = op_dtype(x.dtype)
    ot = outer_tables(plan, x.dtype, x.device)
    it = tables(inner, x.dtype, x.device, inner.N1)
    M, KP = plan.M, ot["KP"]
    MB = min(256, M)
    S = B * H
    o1 = torch.empty_like(x) if o1 is None else o1
    per_seq = KP * 2 * M * 4
    cs = max(H, (chunk_bytes // per_seq) // H * H)  # whole heads per chunk keeps h = s % H
    buf = torch.empty(min(cs, S) * KP * 2 * M, device=x.device, dtype=torch.float32)
    kf_h = kf_rows[0, 0, 0].numel()
    flat = lambda t: None if t is None else t.reshape(S, L)  # noqa: E731
    xs, os1, gi, go1, o2f, go2 = flat(x), flat(o1), flat(g_in), flat(g_o1), flat(o2), flat(g_o2)
    for s0 in range(0, S, cs):
        s1 = min(S, s0 + cs)
        n = s1 - s0
        y = buf[: n * KP * 2 * M]
        xx, oo = xs[s0:s1], os1[s0:s1]
        pick = lambda t, d, s0=s0, s1=s1: d if t is None else t[s0:s1]  # noqa: E731
        _outer_fwd_kernel[(n * (M // MB),)](xx, pick(gi, xx), y, ot["FO"], ot["TWO"], L, M, M // MB, PH=ot["PH"],
                                            PPAD=ot["PPAD"], KP=KP, KPAD=ot["KPAD"], MB=MB, HAS_GIN=gi is not None,
                                            REV=rev, DT=tdt, PREC=prec, num_warps=4)
        if inner.T:
            _conv2t_cplx_kernel[(KP * n,)](y, kf_rows, it["F1"], it["F2"], it["TW"], kf_h, H=H, PR=KP, N1=inner.N1,
                                           M=inner.M, R=inner.R, DT=tdt, PREC=prec, STAGES=inner.stages,
                                           num_warps=inner.warps)
        else:
            nb = n // H  # whole heads per chunk: sequences (b·H + h), b < nb
            Sx = min(inner.S, triton.next_power_of_2(nb))
            ngrp = triton.cdiv(nb, Sx)
            _conv2_cplx_kernel[(KP * ngrp * H,)](y, kf_rows, it["F1"], it["F2"], it["TW"], kf_h, n, ngrp, H=H,
                                                 PR=KP, N1=inner.N1, M=inner.M, R=inner.R, S=Sx, DT=tdt, PREC=prec,
                                                 STAGES=inner.stages, num_warps=inner.warps)
        _outer_inv_kernel[(n * (M // MB),)](y, oo, pick(go1, oo), pick(o2f, oo), pick(go2, oo), ot["GO"], ot["TWO"],
                                            L, M, M // MB, PH=ot["PH"], PPAD=ot["PPAD"], KP=KP, KPAD=ot["KPAD"],
                                            MB=MB, HAS_GO1=go1 is not None, HAS_O2=o2f is not None, REV=rev, DT=tdt,
                                            PREC=prec, num_warps=4)
    return o1
