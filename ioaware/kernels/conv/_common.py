"""Complex-matmul, table and epilogue helpers shared by the Monarch kernels (order 2 in monarch.py, order 3 in
monarch3.py)."""

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


# _cdot_l is _cdot_r's mirror (the table on the other side of the product, and the conjugate on the table rather
# than on a's registers); one function with a SIDE flag would read worse than the two four-line bodies.
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


@triton.jit
def _store_gated(O1, G_O1, O2, G_O2, accr, acci, r0, r1, t, m_0, m_1, HAS_GO1: tl.constexpr, HAS_O2: tl.constexpr):
    """The pair kernels' epilogue: Re/Im of acc to rows r0/r1 (element offsets r + t, masks m_0/m_1) of O1 ∘ G_O1
    (gate with HAS_GO1) and, with HAS_O2, of O2 ∘ G_O2."""
    o1r = accr
    o1i = acci
    if HAS_GO1:
        o1r = o1r * tl.load(G_O1 + r0 + t, mask=m_0, other=0.0).to(tl.float32)
        o1i = o1i * tl.load(G_O1 + r1 + t, mask=m_1, other=0.0).to(tl.float32)
    tl.store(O1 + r0 + t, o1r.to(O1.dtype.element_ty), mask=m_0)
    tl.store(O1 + r1 + t, o1i.to(O1.dtype.element_ty), mask=m_1)
    if HAS_O2:
        o2r = accr * tl.load(G_O2 + r0 + t, mask=m_0, other=0.0).to(tl.float32)
        o2i = acci * tl.load(G_O2 + r1 + t, mask=m_1, other=0.0).to(tl.float32)
        tl.store(O2 + r0 + t, o2r.to(O2.dtype.element_ty), mask=m_0)
        tl.store(O2 + r1 + t, o2i.to(O2.dtype.element_ty), mask=m_1)
