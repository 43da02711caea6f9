"""Complex-matmul and table helpers shared by the Monarch kernels (order 2 in monarch.py, order 3 in monarch3.py)."""

import triton
import triton.language as tl


@triton.jit
def _cdot_r(ar, ai, br, bi, cr, ci, CONJ: tl.constexpr, PREC: tl.constexpr):
    """(a) @ (b), or (a) @ conj(b) with CONJ, added to (cr, ci); b is the table on the right (shared memory),
    the negation falls on a's registers."""
    if CONJ:
        cr = tl.dot(ar, br, cr, input_precision=PREC)
        cr = tl.dot(ai, bi, cr, input_precision=PREC)
        ci = tl.dot(ai, br, ci, input_precision=PREC)
        ci = tl.dot(-ar, bi, ci, input_precision=PREC)
    else:
        cr = tl.dot(ar, br, cr, input_precision=PREC)
        cr = tl.dot(-ai, bi, cr, input_precision=PREC)
        ci = tl.dot(ar, bi, ci, input_precision=PREC)
        ci = tl.dot(ai, br, ci, input_precision=PREC)
    return cr, ci


@triton.jit
def _cdot_l(tr, ti, xr, xi, cr, ci, CONJ: tl.constexpr, PREC: tl.constexpr):
    """(t) @ (x), or conj(t) @ (x) with CONJ, added to (cr, ci); t is the table on the left."""
    if CONJ:
        cr = tl.dot(tr, xr, cr, input_precision=PREC)
        cr = tl.dot(ti, xi, cr, input_precision=PREC)
        ci = tl.dot(tr, xi, ci, input_precision=PREC)
        ci = tl.dot(-ti, xr, ci, input_precision=PREC)
    else:
        cr = tl.dot(tr, xr, cr, input_precision=PREC)
        cr = tl.dot(-ti, xi, cr, input_precision=PREC)
        ci = tl.dot(tr, xi, ci, input_precision=PREC)
        ci = tl.dot(ti, xr, ci, input_precision=PREC)
    return cr, ci


@triton.jit
def _cmul(ar, ai, br, bi):
    return ar * br - ai * bi, ar * bi + ai * br


@triton.jit
def _ld2(base, offs):
    """Load the (re, im) planes of a complex table stored interleaved as [..., 2]."""
    return tl.load(base + offs * 2), tl.load(base + offs * 2 + 1)
