"""Attention for a fast memory smaller than d^2 words (Saha & Ye, arXiv:2402.07443, the M < d^2 regime).

When M < d^2 FlashAttention cannot keep even d rows of Q next to d rows of K: its blocks shrink below d and its
traffic, ~8 N^2 d^2 / M, exceeds the N^2 d / sqrt(M) that blocked matrix multiplication achieves. The paper's
algorithm is attention as two blocked matmuls with sqrt(M)-sized tiles:

  phase 1  S = Q K^T / sqrt(d) in (b x b) tiles, the inner dimension d streamed `chunk` columns at a time; the
           row max m and row sum l of exp(S - m) are kept on chip across a row of tiles (online softmax); S
           is written to slow memory (N^2 words, which is less than N^2 d / b when b < d).
  phase 2  O = softmax(S) V in (b x b) tiles of O, streaming panels of S and V; P = exp(S - m) / l is formed
           on chip from the S panel and never stored.

Words moved: d (N tj + Nk ti) + Nk (N td + d ti) + N Nk + N d + stats = Theta(N^2 d / b) with b ~ sqrt(M);
`ioaware.iomodel.bounds.small_sram_io` is the exact count, checked against this code by the tests.

Why there is no Triton kernel: the regime does not arise on a GPU. An H100 SM has 228 KB of shared memory
(A100: 164 KB) plus a 256 KB register file, so M >= 80K bf16 words > 256^2 = 65536 = d^2 for every head dim
up to 256; FlashAttention is already optimal there (the M >= d^2 bound). Only head dims beyond ~300 (MLA's
d_qk = 576 per SM) or much smaller on-chip memories (an NPU's buffer, a microcontroller) reach M < d^2.
"""

from __future__ import annotations

import numpy as np

from .attention import STAT, _blocks
from .cache import TwoLevelMemory


def run_small_sram(q, k, v, block: int, M: int, *, chunk: int = 1, elem: int = 2):
    """Exact (non-causal) attention through a fast memory of M words; returns (O, LSE) and the memory."""
    Nq, d = q.shape
    Nk = k.shape[0]
    mem = TwoLevelMemory(M)
    for name, a in (("q", q), ("k", k), ("v", v)):
        mem.put(name, a, elem)
    mem.empty("s", (Nq, Nk), elem)
    mem.empty("o", (Nq, d), elem)
    mem.empty("m", Nq, STAT)
    mem.empty("l", Nq, STAT)
    for r in _blocks(Nq, block):  # phase 1: S = QK^T with the softmax statistics alongside
        m, l = mem.scratch(r.stop - r.start, -np.inf), mem.scratch(r.stop - r.start)
        for c in _blocks(Nk, block):
            s = mem.scratch((r.stop - r.start, c.stop - c.start))
            for cc in _blocks(d, chunk):
                qp, kp = mem.load("q", (r, cc)), mem.load("k", (c, cc))
                s += qp @ kp.T
                mem.free(qp, kp)
            s /= np.sqrt(d)
            m_new = np.maximum(m, s.max(1))
            l[...] = l * np.exp(m - m_new) + np.exp(s - m_new[:, None]).sum(1)  # row temporaries
            m[...] = m_new
            mem.store("s", (r, c), s)
            mem.free(s)
        mem.store("m", r, m)
        mem.store("l", r, l)
        mem.free(m, l)
    for r in _blocks(Nq, block):  # phase 2: O = P V, P formed on chip from S, m, l
        for dc in _blocks(d, block):
            m, l = mem.load("m", r), mem.load("l", r)
            acc = mem.scratch((r.stop - r.start, dc.stop - dc.start))
            for kc in _blocks(Nk, chunk):
                sp, vp, p = mem.load("s", (r, kc)), mem.load("v", (kc, dc)), mem.scratch((r.stop - r.start,
                                                                                          kc.stop - kc.start))
                p[...] = np.exp(sp - m[:, None]) / l[:, None]
                acc += p @ vp
                mem.free(sp, vp, p)
            mem.store("o", (r, dc), acc)
            mem.free(m, l, acc)
    return (mem.get("o"), mem.get("m") + np.log(mem.get("l"))), mem
