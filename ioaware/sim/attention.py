"""Attention schedules executed through `TwoLevelMemory`: every tile they touch is loaded and stored through it.

Each `run_*` places its inputs in slow memory, runs the schedule (real float64 arithmetic on the tiles), and
returns the outputs and the memory, whose `words`/`bytes`/`peak` are what the schedule moved and held. The
closed forms in `ioaware.iomodel.bounds` must equal these counts exactly, and `*_footprint` the peak.

Which blocks a program visits is decided here from the mask itself (a tile is visited iff it holds an unmasked
entry), independently of the closed forms' row arithmetic. Row vectors of temporaries (a new row max, a
rescale factor: O(block) words that live in registers) are not charged to the fast memory.
Causal masks are aligned bottom-right (row r sees keys c <= r + Nk - Nq), as in ioaware's kernels.
"""

from __future__ import annotations

import numpy as np

from .cache import TwoLevelMemory

STAT = 4  # row statistics (LSE, l, m, delta) and split-KV partials are fp32


def allowed(Nq: int, Nk: int, causal: bool) -> np.ndarray:
    if not causal:
        return np.ones((Nq, Nk), dtype=bool)
    return np.arange(Nk)[None, :] <= np.arange(Nq)[:, None] + (Nk - Nq)


def reference_forward(q, k, v, causal=False):
    """float64 softmax attention: O and the natural-log LSE (rows with no key give O = 0, LSE = -inf)."""
    s = q @ k.T / np.sqrt(q.shape[1])
    s = np.where(allowed(q.shape[0], k.shape[0], causal), s, -np.inf)
    m = s.max(1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    p = np.exp(s - m)
    l = p.sum(1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        o = np.where(l > 0, p @ v / l, 0.0)
        lse = (m + np.log(l))[:, 0]
    return o, lse


def reference_backward(q, k, v, do, causal=False):
    """dQ, dK, dV of softmax attention in float64."""
    scale = 1 / np.sqrt(q.shape[1])
    o, lse = reference_forward(q, k, v, causal)
    p = np.where(allowed(q.shape[0], k.shape[0], causal), np.exp(q @ k.T * scale - lse[:, None]), 0.0)
    dp = do @ v.T
    ds = p * (dp - (do * o).sum(1, keepdims=True))
    return ds @ k * scale, ds.T @ q * scale, p.T @ do


def _blocks(n: int, b: int):
    return [slice(s, min(s + b, n)) for s in range(0, n, b)]


def _memory(M: int, lru: bool, elem: int, **arrays) -> TwoLevelMemory:
    mem = TwoLevelMemory(M, lru=lru)
    for name, a in arrays.items():
        mem.put(name, a, STAT if name in ("lse", "delta") else elem)
    return mem


def _online_update(s: np.ndarray, m: np.ndarray, l: np.ndarray) -> np.ndarray:
    """Turn the score tile s into exp(s - m_new) in place, update m and l; return the rescale factor."""
    m_new = np.maximum(m, s.max(1))
    safe = np.where(np.isfinite(m_new), m_new, 0.0)  # a row with no key yet: keep exp(-inf) = 0, no NaN
    alpha = np.exp(m - safe)
    np.exp(s - safe[:, None], out=s)
    l *= alpha
    l += s.sum(1)
    m[...] = m_new
    return alpha


def run_standard(q, k, v, block_q, block_k, M, *, causal=False, elem=2):
    """Three kernels: S = QK^T tile by tile, softmax row by row, O = PV; S and P live in slow memory."""
    Nq, d = q.shape
    Nk = k.shape[0]
    mem = _memory(M, False, elem, q=q, k=k, v=v)
    for name, shape in (("s", (Nq, Nk)), ("p", (Nq, Nk)), ("o", (Nq, d))):
        mem.empty(name, shape, elem)
    ok = allowed(Nq, Nk, causal)
    for r in _blocks(Nq, block_q):
        for c in _blocks(Nk, block_k):
            qi, kj, s = mem.load("q", r), mem.load("k", c), mem.scratch((r.stop - r.start, c.stop - c.start))
            s[...] = np.where(ok[r, c], qi @ kj.T / np.sqrt(d), -np.inf)
            mem.store("s", (r, c), s)
            mem.free(qi, kj, s)
    for i in range(Nq):
        row, p = mem.load("s", i), mem.scratch(Nk)
        p[...] = np.exp(row - row.max())
        p /= p.sum()
        mem.store("p", i, p)
        mem.free(row, p)
    for r in _blocks(Nq, block_q):
        acc = mem.scratch((r.stop - r.start, d))
        for c in _blocks(Nk, block_k):
            pij, vj = mem.load("p", (r, c)), mem.load("v", c)
            acc += pij @ vj
            mem.free(pij, vj)
        mem.store("o", r, acc)
        mem.free(acc)
    return mem.get("o"), mem


def run_fa1_forward(q, k, v, block_q, block_k, M, *, causal=False, lru=False, elem=2):
    """FlashAttention Algorithm 1: O, l, m start in slow memory; outer K/V blocks, inner Q blocks."""
    Nq, d = q.shape
    Nk = k.shape[0]
    mem = _memory(M, lru, elem, q=q, k=k, v=v)
    mem.empty("o", (Nq, d), elem)
    mem.empty("l", Nq, STAT)
    mem.empty("m", Nq, STAT)
    ok = allowed(Nq, Nk, causal)
    for r in _blocks(Nq, block_q):  # line 2: initialise O = 0, l = 0, m = -inf in HBM
        n = r.stop - r.start
        for name, shape, fill in (("o", (n, d), 0.0), ("l", n, 0.0), ("m", n, -np.inf)):
            t = mem.scratch(shape, fill)
            mem.store(name, r, t)
            mem.free(t)
    for c in _blocks(Nk, block_k):
        kj, vj = mem.load("k", c), mem.load("v", c)
        for r in _blocks(Nq, block_q):
            if not ok[r, c].any():
                continue
            qi, oi, li, mi = mem.load("q", r), mem.load("o", r), mem.load("l", r), mem.load("m", r)
            s = mem.scratch((r.stop - r.start, c.stop - c.start))
            s[...] = np.where(ok[r, c], qi @ kj.T / np.sqrt(d), -np.inf)
            l_old = li.copy()  # a row temporary
            alpha = _online_update(s, mi, li)
            with np.errstate(invalid="ignore", divide="ignore"):  # O is kept normalised, as in the paper
                oi[...] = np.where(li[:, None] > 0, (oi * (l_old * alpha)[:, None] + s @ vj) / li[:, None], 0.0)
            for name, t in (("o", oi), ("l", li), ("m", mi)):
                mem.store(name, r, t)
            mem.free(qi, oi, li, mi, s)
        mem.free(kj, vj)
    mem.flush() if lru else None
    return mem.get("o"), mem


def run_fa2_forward(q, k, v, block_q, block_k, M, *, causal=False, lru=False, elem=2):
    """ioaware's forward: one program per query block keeps Q_i and the O_i accumulator on chip."""
    Nq, d = q.shape
    Nk = k.shape[0]
    mem = _memory(M, lru, elem, q=q, k=k, v=v)
    mem.empty("o", (Nq, d), elem)
    mem.empty("lse", Nq, STAT)
    ok = allowed(Nq, Nk, causal)
    for r in _blocks(Nq, block_q):
        n = r.stop - r.start
        qi, acc, m, l = mem.load("q", r), mem.scratch((n, d)), mem.scratch(n, -np.inf), mem.scratch(n)
        for c in _blocks(Nk, block_k):
            if not ok[r, c].any():
                continue
            kj, vj, s = mem.load("k", c), mem.load("v", c), mem.scratch((n, c.stop - c.start))
            s[...] = np.where(ok[r, c], qi @ kj.T / np.sqrt(d), -np.inf)
            alpha = _online_update(s, m, l)
            acc *= alpha[:, None]
            acc += s @ vj
            mem.free(kj, vj, s)
        with np.errstate(invalid="ignore", divide="ignore"):
            acc[...] = np.where(l[:, None] > 0, acc / l[:, None], 0.0)
            l[...] = m + np.log(l)  # l now holds the LSE
        mem.store("o", r, acc)
        mem.store("lse", r, l)
        mem.free(qi, acc, m, l)
    mem.flush() if lru else None
    return (mem.get("o"), mem.get("lse")), mem


def run_fa2_backward(q, k, v, do, block_q, block_k, M, *, causal=False, elem=2):
    """ioaware's backward: delta = rowsum(dO * O); dK/dV per key block; dQ per query block."""
    Nq, d = q.shape
    Nk = k.shape[0]
    o, lse = reference_forward(q, k, v, causal)
    mem = _memory(M, False, elem, q=q, k=k, v=v, do=do, o=o, lse=lse)
    mem.empty("delta", Nq, STAT)
    for name, n in (("dq", Nq), ("dk", Nk), ("dv", Nk)):
        mem.empty(name, (n, d), elem)
    ok = allowed(Nq, Nk, causal)
    scale = 1 / np.sqrt(d)

    def probs(qi, kj, lse_i, r, c):  # P_ij recomputed from the saved LSE, into a fresh scratch tile
        p = mem.scratch((r.stop - r.start, c.stop - c.start))
        p[...] = np.where(ok[r, c], np.exp(qi @ kj.T * scale - lse_i[:, None]), 0.0)
        return p

    for r in _blocks(Nq, block_q):
        oi, doi, delta = mem.load("o", r), mem.load("do", r), mem.scratch(r.stop - r.start)
        delta[...] = (oi * doi).sum(1)
        mem.store("delta", r, delta)
        mem.free(oi, doi, delta)
    for c in _blocks(Nk, block_k):
        n = c.stop - c.start
        kj, vj, dk, dv = mem.load("k", c), mem.load("v", c), mem.scratch((n, d)), mem.scratch((n, d))
        for r in _blocks(Nq, block_q):
            if not ok[r, c].any():
                continue
            qi, doi, lse_i, dl_i = mem.load("q", r), mem.load("do", r), mem.load("lse", r), mem.load("delta", r)
            p, dp = probs(qi, kj, lse_i, r, c), mem.scratch((r.stop - r.start, n))
            dv += p.T @ doi
            dp[...] = p * (doi @ vj.T - dl_i[:, None])  # dS
            dk += dp.T @ qi * scale
            mem.free(qi, doi, lse_i, dl_i, p, dp)
        mem.store("dk", c, dk)
        mem.store("dv", c, dv)
        mem.free(kj, vj, dk, dv)
    for r in _blocks(Nq, block_q):
        qi, doi, lse_i, dl_i = mem.load("q", r), mem.load("do", r), mem.load("lse", r), mem.load("delta", r)
        dq = mem.scratch((r.stop - r.start, d))
        for c in _blocks(Nk, block_k):
            if not ok[r, c].any():
                continue
            kj, vj = mem.load("k", c), mem.load("v", c)
            p, dp = probs(qi, kj, lse_i, r, c), mem.scratch((r.stop - r.start, c.stop - c.start))
            dp[...] = p * (doi @ vj.T - dl_i[:, None])
            dq += dp @ kj * scale
            mem.free(kj, vj, p, dp)
        mem.store("dq", r, dq)
        mem.free(qi, doi, lse_i, dl_i, dq)
    return (mem.get("dq"), mem.get("dk"), mem.get("dv")), mem


def run_decode(q, k, v, block_k, M, *, splits=1, elem=2):
    """Decoding: q is (g, d), the g query heads of one K/V head; split-KV over `splits` key ranges + combine."""
    g, d = q.shape
    Nk = k.shape[0]
    s_n = min(max(splits, 1), Nk)
    mem = _memory(M, False, elem, q=q, k=k, v=v)
    mem.empty("o", (g, d), elem)
    if s_n == 1:
        mem.empty("lse", g, STAT)
    else:
        mem.empty("op", (s_n, g, d), STAT)  # fp32 partial outputs and their LSEs
        mem.empty("lp", (s_n, g), STAT)
    everything = slice(0, g)
    for t in range(s_n):
        keys = slice(t * Nk // s_n, (t + 1) * Nk // s_n)
        qi, acc, m, l = mem.load("q", everything), mem.scratch((g, d)), mem.scratch(g, -np.inf), mem.scratch(g)
        for c in _blocks(keys.stop - keys.start, block_k):
            c = slice(c.start + keys.start, c.stop + keys.start)
            kj, vj, s = mem.load("k", c), mem.load("v", c), mem.scratch((g, c.stop - c.start))
            s[...] = qi @ kj.T / np.sqrt(d)
            acc *= _online_update(s, m, l)[:, None]
            acc += s @ vj
            mem.free(kj, vj, s)
        acc /= l[:, None]
        l[...] = m + np.log(l)
        mem.store("o", everything, acc) if s_n == 1 else mem.store("op", t, acc)
        mem.store("lse", everything, l) if s_n == 1 else mem.store("lp", t, l)
        mem.free(qi, acc, m, l)
    if s_n > 1:  # combine: O = sum_t exp(lse_t - lse) O_t
        op, lp, o = mem.load("op", slice(0, s_n)), mem.load("lp", slice(0, s_n)), mem.scratch((g, d))
        w = np.exp(lp - lp.max(0))
        o[...] = (w[:, :, None] * op).sum(0) / w.sum(0)[:, None]
        mem.store("o", everything, o)
        mem.free(op, lp, o)
    return mem.get("o"), mem
