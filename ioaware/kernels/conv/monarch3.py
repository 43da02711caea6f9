"""FlashFFTConv, Monarch order 3: the row DFT of length M = N2·N3 split once more (m = N3·n2 + n3).

The block of R spectrum rows is held as [N3, R, N2]: the N2 DFT is a right multiply on [N3·R, N2], the N3 DFT a left
multiply on [N3, R·N2], and the first and last DFTs (over n1) are batched 3-D matmuls over n3. FLOPs per pair of
rows 8N·N1 + 16N·(N2 + N3), a third of order 2's at N = 16k; the 3-D matmuls lower to mma.sync on Hopper (see
dev/fftconv/NOTES.md). Selected by a plan with N3 > 1.
"""

import triton
import triton.language as tl

from ._common import _cdot_l, _cdot_r, _cmul, _ld2, _store_gated


@triton.jit
def _conv3_pair_kernel(X, G_IN, O1, G_O1, O2, G_O2, KF, F1, F2, F3, TW, TW2, B, L, KF_H, NPAIR,
                       H: tl.constexpr, N1: tl.constexpr, NIN: tl.constexpr, N2: tl.constexpr, N3: tl.constexpr,
                       R: tl.constexpr, HAS_GIN: tl.constexpr, HAS_GO1: tl.constexpr, HAS_O2: tl.constexpr,
                       REV: tl.constexpr, DT: tl.constexpr, PREC: tl.constexpr, STAGES: tl.constexpr):
    """Order 3: M = N2·N3, m = N3·n2 + n3; blocks held as [N3, R, N2]. Tables: F1 [N1, NIN]; F2 [N2, N2];
    F3 [N3, N3]; TW [N3, N1, N2]; TW2 [N3, N2]; KF per head [2, N3, N1, N2] (k3, k1, k2)."""
    M: tl.constexpr = N2 * N3
    pid = tl.program_id(0)
    i_p = pid % NPAIR
    i_h = pid // NPAIR
    b0 = 2 * i_p
    row0 = (b0 * H + i_h).to(tl.int64) * L
    row1 = row0 + H * L
    o_3 = tl.arange(0, N3)
    o_2 = tl.arange(0, N2)
    o_in = tl.arange(0, NIN)
    o_r = tl.arange(0, R)
    # [N3, NIN, N2]: element (n3, n1, n2) is sample n1·M + N3·n2 + n3
    o_n = o_3[:, None, None] + o_in[None, :, None] * M + o_2[None, None, :] * N3
    m_n = o_n < L
    m_1 = o_n < tl.where(b0 + 1 < B, L, 0)
    t = L - 1 - o_n if REV else o_n
    ar = tl.load(X + row0 + t, mask=m_n, other=0.0).to(tl.float32)
    ai = tl.load(X + row1 + t, mask=m_1, other=0.0).to(tl.float32)
    if HAS_GIN:
        ar = ar * tl.load(G_IN + row0 + t, mask=m_n, other=0.0).to(tl.float32)
        ai = ai * tl.load(G_IN + row1 + t, mask=m_1, other=0.0).to(tl.float32)
    ar = ar.to(DT)
    ai = ai.to(DT)
    accr = tl.zeros([N3, NIN, N2], tl.float32)
    acci = tl.zeros([N3, NIN, N2], tl.float32)
    kf_r = KF + i_h.to(tl.int64) * (2 * KF_H)
    kf_i = kf_r + KF_H
    for r0 in tl.range(0, N1, R, num_stages=STAGES):
        kr = r0 + o_r
        f2r, f2i = _ld2(F2, o_2[:, None] * N2 + o_2[None, :])
        f3r, f3i = _ld2(F3, o_3[:, None] * N3 + o_3[None, :])
        tw2r, tw2i = _ld2(TW2, o_3[:, None, None] * N2 + o_2[None, None, :])
        f1r, f1i = _ld2(F1, kr[:, None] * NIN + o_in[None, :])
        b1r = tl.broadcast_to(f1r[None, :, :], [N3, R, NIN])
        b1i = tl.broadcast_to(f1i[None, :, :], [N3, R, NIN])
        xr = tl.zeros([N3, R, N2], tl.float32)
        xi = tl.zeros([N3, R, N2], tl.float32)
        xr, xi = _cdot_l(b1r, b1i, ar, ai, xr, xi, False, PREC)  # batched over n3: contract n1
        twr, twi = _ld2(TW, (o_3[:, None, None] * N1 + kr[None, :, None]) * N2 + o_2[None, None, :])
        xr, xi = _cmul(xr, xi, twr, twi)
        # contract n2 (last axis): [N3·R, N2] @ F2
        yr = tl.zeros([N3 * R, N2], tl.float32)
        yi = tl.zeros([N3 * R, N2], tl.float32)
        yr, yi = _cdot_r(tl.reshape(xr.to(DT), [N3 * R, N2]), tl.reshape(xi.to(DT), [N3 * R, N2]), f2r, f2i,
                         yr, yi, False, PREC)
        xr, xi = _cmul(tl.reshape(yr, [N3, R, N2]), tl.reshape(yi, [N3, R, N2]), tw2r, tw2i)
        # contract n3 (first axis): F3 @ [N3, R·N2]
        yr = tl.zeros([N3, R * N2], tl.float32)
        yi = tl.zeros([N3, R * N2], tl.float32)
        yr, yi = _cdot_l(f3r, f3i, tl.reshape(xr.to(DT), [N3, R * N2]), tl.reshape(xi.to(DT), [N3, R * N2]),
                         yr, yi, False, PREC)
        p_k = (o_3[:, None, None] * N1 + kr[None, :, None]) * N2 + o_2[None, None, :]
        xr, xi = _cmul(tl.reshape(yr, [N3, R, N2]), tl.reshape(yi, [N3, R, N2]), tl.load(kf_r + p_k),
                       tl.load(kf_i + p_k))
        # inverse: k3 -> n3 (left, conj F3), conj TW2, k2 -> n2 (right, conj F2), conj TW
        yr = tl.zeros([N3, R * N2], tl.float32)
        yi = tl.zeros([N3, R * N2], tl.float32)
        yr, yi = _cdot_l(f3r, f3i, tl.reshape(xr.to(DT), [N3, R * N2]), tl.reshape(xi.to(DT), [N3, R * N2]),
                         yr, yi, True, PREC)
        xr, xi = _cmul(tl.reshape(yr, [N3, R, N2]), tl.reshape(yi, [N3, R, N2]), tw2r, -tw2i)
        yr = tl.zeros([N3 * R, N2], tl.float32)
        yi = tl.zeros([N3 * R, N2], tl.float32)
        yr, yi = _cdot_r(tl.reshape(xr.to(DT), [N3 * R, N2]), tl.reshape(xi.to(DT), [N3 * R, N2]), f2r, f2i,
                         yr, yi, True, PREC)
        xr, xi = _cmul(tl.reshape(yr, [N3, R, N2]), tl.reshape(yi, [N3, R, N2]), twr, -twi)
        c1r = tl.broadcast_to(tl.trans(f1r)[None, :, :], [N3, NIN, R])
        c1i = tl.broadcast_to(tl.trans(f1i)[None, :, :], [N3, NIN, R])
        accr, acci = _cdot_l(c1r, c1i, xr.to(DT), xi.to(DT), accr, acci, True, PREC)
    _store_gated(O1, G_O1, O2, G_O2, accr, acci, row0, row1, t, m_n, m_1, HAS_GO1, HAS_O2)
