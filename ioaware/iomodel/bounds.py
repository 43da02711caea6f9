"""Exact word counts of attention schedules in a two-level memory, and the I/O lower bounds.

The model is the one of "The I/O Complexity of Attention" (Saha & Ye, arXiv:2402.07443): a fast memory of
M words, a slow memory (HBM) of unbounded size, and a cost equal to the words moved between them. Every
count here is per (batch, head) and is *exact* for the schedule it names: `ioaware.sim` runs each schedule
through a simulated fast memory and the tests assert equality on a grid of sizes, ragged blocks included.

Weights: a count is `elem * (matrix words) + stat * (row-statistic words)`. With the defaults (1, 1) it is
words; with `elem=2, stat=4` it is the bytes of a bf16 kernel whose LSE/l/m/delta are fp32, which is how
`flash_attention_cost` counts (a test checks the two agree).

Schedules (N queries, Nk keys, head dim d, query block bq, key block bk; causal aligned bottom-right):
  standard   three kernels S = QK^T, P = softmax(S), O = PV; the matmuls tiled (bq x bk), softmax one row at
             a time (a row of Nk words must fit), S and P round-trip HBM.
  FA1        FlashAttention Algorithm 1: O, l, m initialised in HBM; outer loop over K/V blocks, inner over
             the Q blocks that see the K/V block; Q_i, O_i, l_i, m_i read and O_i, l_i, m_i written per visit.
  FA2 fwd    ioaware's forward: one program per query block reads Q_i once and every K/V block it sees.
  FA2 bwd    delta = rowsum(dO * O); a dK/dV kernel walking query blocks; a dQ kernel walking key blocks.
  decode     Tq = g query rows (a GQA group served by one program), split-KV into s chunks: every split
             reads q and its K/V chunk and writes an fp32 partial O and its LSE; a combine reads them back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .cost import Traffic


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def kv_rows_seen(Nq: int, Nk: int, bq: int, bk: int, causal: bool) -> list[int]:
    """Key rows loaded for each query block: the key blocks holding any unmasked entry, clipped to Nk."""
    out = []
    for i in range(_cdiv(Nq, bq)):
        if not causal:
            out.append(Nk)
            continue
        need = min(max(min((i + 1) * bq, Nq) - 1 + Nk - Nq + 1, 0), Nk)  # keys the block's last row sees
        out.append(min(_cdiv(need, bk) * bk, Nk))
    return out


def q_rows_seen(Nq: int, Nk: int, bq: int, bk: int, causal: bool) -> list[int]:
    """Query rows loaded for each key block: the query blocks holding any unmasked entry."""
    out = []
    for j in range(_cdiv(Nk, bk)):
        first_row = max(j * bk - (Nk - Nq), 0)  # row r sees keys <= r + Nk - Nq
        out.append(Nq if not causal else (Nq - (first_row // bq) * bq if first_row < Nq else 0))
    return out


def standard_attention_io(Nq: int, d: int, *, Nk: int | None = None, block_q: int | None = None,
                          block_k: int | None = None, elem: int = 1) -> Traffic:
    """Standard attention's forward traffic with tiled matmuls; untiled (block = N) gives the 4Nd + 4N^2 count.

    Causal masking does not change it: the three kernels still read and write the whole S and P.

    Examples:
        >>> t = standard_attention_io(1024, 64)                # untiled: 4Nd + 4N^2 words
        >>> t.total == 4 * 1024 * 64 + 4 * 1024 ** 2
        True
    """
    Nk = Nk or Nq
    bq, bk = block_q or Nq, block_k or Nk
    tq, tk = _cdiv(Nq, bq), _cdiv(Nk, bk)
    # S = QK^T: tile (i, j) reads Q_i and K_j | softmax reads S | O_i = sum_j P_ij V_j reads P_ij and V_j
    read = (tk * Nq * d + tq * Nk * d) + Nq * Nk + (Nq * Nk + tq * Nk * d)
    write = Nq * Nk + Nq * Nk + Nq * d
    return Traffic(elem * read, elem * write)


def fa1_forward_io(Nq: int, d: int, block_q: int, block_k: int, *, Nk: int | None = None, causal: bool = False,
                   elem: int = 1, stat: int = 1) -> Traffic:
    """FlashAttention-1 (Algorithm 1): K, V read once; Q_i, O_i, l_i, m_i per (K/V block, Q block) visit.

    Examples:
        >>> fa1, fa2 = fa1_forward_io(4096, 128, 128, 64), fa2_forward_io(4096, 128, 128, 64)
        >>> fa1.total > fa2.total                             # FA-1 re-reads and re-writes O per K/V block
        True
    """
    Nk = Nk or Nq
    visits = sum(q_rows_seen(Nq, Nk, block_q, block_k, causal))  # query rows touched, summed over K/V blocks
    read = elem * (2 * Nk * d + 2 * d * visits) + stat * 2 * visits
    write = elem * (Nq * d + d * visits) + stat * (2 * Nq + 2 * visits)  # the initialisation, then every visit
    return Traffic(read, write)


def fa2_forward_io(Nq: int, d: int, block_q: int, block_k: int, *, Nk: int | None = None, causal: bool = False,
                   elem: int = 1, stat: int = 1) -> Traffic:
    """FlashAttention-2 forward: Q once, K and V once per query block that sees them, O and LSE once.

    Examples:
        >>> fa2_forward_io(4096, 128, 128, 64)                 # words; 32 query blocks each read all of K and V
        Traffic(read=34078720, write=528384)
    """
    Nk = Nk or Nq
    kv = sum(kv_rows_seen(Nq, Nk, block_q, block_k, causal))
    return Traffic(elem * (Nq * d + 2 * d * kv), elem * Nq * d + stat * Nq)


def fa2_backward_io(Nq: int, d: int, block_q: int, block_k: int, *, Nk: int | None = None, causal: bool = False,
                    elem: int = 1, stat: int = 1) -> Traffic:
    """FlashAttention-2 backward as ioaware runs it: delta preprocess, dK/dV kernel, dQ kernel.

    Examples:
        >>> bwd, fwd = fa2_backward_io(4096, 128, 64, 64), fa2_forward_io(4096, 128, 64, 64)
        >>> 2 < bwd.total / fwd.total < 3
        True
    """
    Nk = Nk or Nq
    qv = sum(q_rows_seen(Nq, Nk, block_q, block_k, causal))
    kv = sum(kv_rows_seen(Nq, Nk, block_q, block_k, causal))
    pre = Traffic(elem * 2 * Nq * d, stat * Nq)  # read O, dO; write delta
    dkdv = Traffic(elem * (2 * Nk * d + 2 * d * qv) + stat * 2 * qv, elem * 2 * Nk * d)  # + Q, dO, LSE, delta
    dq = Traffic(elem * (2 * Nq * d + 2 * d * kv) + stat * 2 * Nq, elem * Nq * d)
    return pre + dkdv + dq


def decode_io(Nk: int, d: int, *, group: int = 1, splits: int = 1, elem: int = 1, stat: int = 1) -> Traffic:
    """Decoding (Tq = 1 per query head; `group` query heads share one K/V head and one program).

    One split: read q and K, V; write o and LSE. `splits` > 1: each split also writes an fp32 partial o (counted
    with `stat`) and its LSE, and a combine kernel reads those back and writes o.

    Examples:
        >>> decode_io(4096, 128)                               # reading K and V is all of it
        Traffic(read=1048704, write=129)
    """
    s = min(max(splits, 1), Nk)
    kv = 2 * Nk * d
    if s == 1:
        return Traffic(elem * (group * d + kv), elem * group * d + stat * group)
    partial = stat * group * s * (d + 1)
    return Traffic(elem * (s * group * d + kv) + partial, partial + elem * group * d)


def small_sram_io(Nq: int, d: int, block: int, *, Nk: int | None = None, elem: int = 1, stat: int = 1) -> Traffic:
    """The small-memory (M < d^2) algorithm of `ioaware.sim.attention_small_sram`: two blocked matmuls.

    Phase 1 computes S = QK^T in (block x block) tiles with the inner dimension d streamed `chunk` columns at a
    time, keeping the row max and sum on chip, and writes S. Phase 2 computes O = softmax(S) V in
    (block x block) tiles of O, streaming S and V `chunk` keys at a time. Each is Theta(N^2 d / block); the
    count does not depend on `chunk` (only the footprint does).

    Examples:
        >>> small_sram_io(1024, 128, 8).total > standard_attention_io(1024, 128).total   # M < d^2 costs more
        True
    """
    Nk = Nk or Nq
    ti, tj, td = _cdiv(Nq, block), _cdiv(Nk, block), _cdiv(d, block)
    read = elem * (d * (tj * Nq + ti * Nk)  # phase 1: Q rows per key tile, K rows per query tile
                   + Nk * (td * Nq + ti * d)) + stat * 2 * td * Nq  # phase 2: S per d-tile, V per query tile; m, l
    write = elem * (Nq * Nk + Nq * d) + stat * 2 * Nq
    return Traffic(read, write)


# -- fast-memory footprints (words) of the simulator's schedules: what must fit in M ------------------------

def standard_footprint(d: int, block_q: int, block_k: int, Nk: int) -> int:
    """max(QK^T tile: Q_i, K_j, S_ij; softmax: a row of S and of P; PV: P_ij, V_j, O_i accumulator)."""
    return max(block_q * d + block_k * d + block_q * block_k, 2 * Nk, block_q * block_k + block_k * d + block_q * d)


def fa1_footprint(d: int, block_q: int, block_k: int) -> int:
    """K_j, V_j, Q_i, O_i, S/P tile, l_i, m_i."""
    return 2 * block_k * d + 2 * block_q * d + block_q * block_k + 2 * block_q


def fa2_forward_footprint(d: int, block_q: int, block_k: int) -> int:
    """Q_i, O_i accumulator, m_i, l_i, K_j, V_j, S/P tile."""
    return 2 * block_q * d + 2 * block_q + 2 * block_k * d + block_q * block_k


def fa2_backward_footprint(d: int, block_q: int, block_k: int) -> int:
    """max over the kernels; dK/dV holds K_j, V_j, dK_j, dV_j plus Q_i, dO_i, LSE_i, delta_i, P and dP tiles."""
    pre = 2 * block_q * d + block_q
    dkdv = 4 * block_k * d + 2 * block_q * d + 2 * block_q + 2 * block_q * block_k
    dq = 3 * block_q * d + 2 * block_q + 2 * block_k * d + 2 * block_q * block_k  # Q_i, dO_i, dQ_i, stats, K, V
    return max(pre, dkdv, dq)


def small_sram_footprint(block: int, chunk: int = 1) -> int:
    """An output tile (block^2), two streamed (block x chunk) panels and the P panel, the row max and sum."""
    return block * block + 3 * block * chunk + 2 * block


def small_sram_block(M: int, chunk: int = 1) -> int:
    """The largest block whose footprint fits M words (about sqrt(M))."""
    b = max(1, math.isqrt(M))
    while b > 1 and small_sram_footprint(b, chunk) > M:
        b -= 1
    if small_sram_footprint(b, chunk) > M:
        raise ValueError(f"M={M} words cannot hold even a 1x1 tile of the small-memory algorithm")
    return b


def fa2_forward_blocks(M: int, d: int) -> tuple[int, int]:
    """Blocks for FA2's forward in M words: K/V blocks of up to d rows, query blocks as large as fit.

    The K/V re-reads scale as 1/bq, so bq gets the memory; capping bk at d keeps the S tile (bq x bk) no larger
    than the Q tile, which is FlashAttention-1's Br = min(M/4d, d) with the loop roles swapped.
    """
    bk = max(1, min(d, M // (8 * d)))
    bq = 0
    while fa2_forward_footprint(d, bq + 1, bk) <= M:
        bq += 1
    if bq == 0:
        raise ValueError(f"M={M} words cannot hold one row each of Q, O, K, V (4d = {4 * d}) for FlashAttention")
    return bq, bk


# -- lower bounds ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class IOBound:
    """A lower bound on words moved. `compulsory` is proved with constant 1 (inputs read, outputs written once);
    `asymptotic` is the paper's Theta term written with constant 1 (the paper proves it up to a constant it does
    not state); `words` = max of the two, the reference curve to compare schedules against.

    Examples:
        >>> IOBound("M >= d^2", asymptotic=100.0, compulsory=250).words
        250.0
    """

    regime: str
    asymptotic: float
    compulsory: int

    @property
    def words(self) -> float:
        """max(asymptotic, compulsory)."""
        return max(self.asymptotic, float(self.compulsory))


def attention_io_lower_bound(Nq: int, d: int, M: float, *, Nk: int | None = None, backward: bool = False) -> IOBound:
    """Saha & Ye (forward) and Li et al. (arXiv:2410.09397, backward); continuous at M = d^2.

    forward:  M >= d^2: N^2 d^2 / M          M < d^2: N^2 d / sqrt(M)
    backward: M >= d^2: (N^2 d^2 + N d^3) / M  M < d^2: (N^2 d + N d^2) / sqrt(M)
    with N^2 read as Nq * Nk and N as max(Nq, Nk).

    Examples:
        >>> b = attention_io_lower_bound(4096, 128, M=228 * 1024 / 2)    # words, an H100 SM's SRAM in bf16
        >>> b.regime, b.compulsory, fa2_forward_io(4096, 128, 128, 64).total > b.words
        ('M >= d^2', 2097152, True)
    """
    Nk = Nk or Nq
    nn, n = Nq * Nk, max(Nq, Nk)
    large = M >= d * d
    if not backward:
        asym = nn * d * d / M if large else nn * d / math.sqrt(M)
        compulsory = (Nq + 2 * Nk) * d + Nq * d  # read Q, K, V; write O
    else:
        asym = (nn * d * d + n * d**3) / M if large else (nn * d + n * d * d) / math.sqrt(M)
        compulsory = 2 * (Nq + Nk) * d + (Nq + 2 * Nk) * d  # read Q, K, V, dO; write dQ, dK, dV
    return IOBound("M >= d^2" if large else "M < d^2", asym, compulsory)


def fa2_backward_blocks(M: int, d: int) -> tuple[int, int]:
    """Square blocks for the backward in M words (one tile pair serves both the dK/dV and the dQ kernel).

    Square tiles keep both kernels' re-reads at N/b, but the two (b x b) P and dP tiles cap b near sqrt(M/2):
    for M up to ~16 d^2 that is within a constant of M/d; beyond, per-kernel tiles (dK/dV: bk ~ M/d, dQ:
    bq ~ M/d) are what reach the N^2 d^2 / M bound.
    """
    b = 0
    while fa2_backward_footprint(d, b + 1, b + 1) <= M:
        b += 1
    if b == 0:
        raise ValueError(f"M={M} words cannot hold the backward's tiles for d={d}")
    return b, b
