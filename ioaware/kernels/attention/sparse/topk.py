"""NSA's block selection with the top-n fused into the scores kernel (FSA's way): no (B, Hkv, T, Ns) score tensor.

Today's path (compressed.py `_nsa_select_scores_kernel`, then reference.top_blocks) writes every query row's block
scores, fp32, (B, Hkv, T, Ns) - 1 GiB at T = 64k, Hkv = 4, l' = 64 - and torch.topk + sort + where + permute read
it back: 7.8 ms on the H200 at every group size (dev/nsa/NOTES.md, entry 1). `_nsa_topk_fwd_kernel` computes the
same scores tile by tile, with the same arithmetic in the same order (the scores kernel's loop, tiles and dots,
unchanged), and keeps a running top-n per row in registers; it writes only the indices (B, T, Hkv, n) int32.

The running top-n. Each (row, block) becomes one int64 key, high word the score's fp32 bits (scores are > 0, +inf
for the always-kept blocks, so their bits order as the floats do; a block that is no candidate gets 0), low word
Ns - 1 - j. Keys are distinct, larger key = better block, and among equal scores the lower block index wins. A row
keeps its best NP keys sorted descending (NP = max(BJ, next_pow2(n)) >= n); per tile the new keys are sorted
ascending, the elementwise max of the two lists holds exactly the best NP of their union and is bitonic, so one
bitonic merge (log2 NP compare-and-swap steps) restores the order. At the end the first n keys that
name a candidate become block indices, sorted ascending, -1 for unused slots: reference.top_blocks' output.

Exactness: the scores are bit-for-bit those of `nsa_select_scores` (same tiles, same ops); the selection is the
top n of them with one deterministic tie rule (lower index first). torch.topk's choice among equal scores is not
specified (on CPU it does not take the lower index), so against `top_blocks` the indices are identical wherever
the n-th and (n+1)-th best scores differ, and otherwise the chosen scores are (tests/kernels/test_nsa_fused_topk.py).

Not wired into ioaware.nsa yet: the default path stays until this is measured on the device (dev/nsa/v1_fused_topk.py).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.standard import _sum_combine  # tl.sum's combine: tl.reduce with it skips a nested jit call

from ....errors import DeviceError, DTypeError, ShapeError, UnsupportedError
from ...triton_utils import LOG2E, upcast
from .compressed import _bd, _precision, _upcast, select_tiles, tile_table


# ----------------------------------------------------------------------------------- a bitonic network on rows
# tl.sort would do, but its compare-and-swap finds each element's partner with xor_sum, a reduction with a custom
# combine that Triton's interpreter runs element by element (~1 s per program-tile here, too slow for CPU tests).
# The same network with the partner taken as (pair sum) - self reduces with tl.sum's combine, which compiles to the
# same one-axis reduction and runs as np.sum under the interpreter. int64 sums wrap alike on the GPU and in numpy,
# and modular arithmetic gives the partner exactly. The merge-only mode (one bitonic merge) keeps the per-tile cost
# low: log2(NP) steps instead of a full sort of the union.
@triton.jit
def _sort_rows(x, DESC: tl.constexpr, FIRST: tl.constexpr, LOGW: tl.constexpr, R: tl.constexpr):
    # x (R, 2^LOGW): bitonic stages FIRST..LOGW sort every row (FIRST = 1: a full sort; FIRST = LOGW: one merge, for
    # rows that are already bitonic). Flat, without nested jit helpers: the interpreter re-patches Triton on every
    # nested call. Each compare-and-swap at distance 2^b views x as (R 2^(LOGW-b-1), 2, 2^b): partners on axis 1.
    for s in tl.static_range(FIRST, LOGW + 1):
        for i in tl.static_range(s):  # b = s - 1 - i
            h = tl.reshape(x, (R * 2 ** (LOGW - s + i), 2, 2 ** (s - 1 - i)))
            y = tl.reduce(h, 1, _sum_combine, keep_dims=True) - h  # the partner: pair sum - self
            right = tl.arange(0, 2)[None, :, None]
            if s < LOGW:  # runs of 2^s in alternating directions: bit s of the column = bit i of axis 0's index
                flip = (tl.arange(0, R * 2 ** (LOGW - s + i))[:, None, None] >> i) & 1
            else:
                flip = tl.full([1, 1, 1], DESC, tl.int32)
            h = tl.where((flip ^ right) != 0, tl.maximum(h, y), tl.minimum(h, y))
            x = tl.reshape(h, (R, 2 ** LOGW))
    return x


@triton.jit
def _nsa_topk_fwd_kernel(Q, K, LSE, IDX, s_qb, s_qt, s_qh, s_kb, s_kt, s_kh, s_ib, s_it, s_ih, T, NC, NS, scale_log2,
                         HQ: tl.constexpr, HKV: tl.constexpr, GROUP: tl.constexpr, D: tl.constexpr, BD: tl.constexpr,
                         BM: tl.constexpr, BC: tl.constexpr, BJ: tl.constexpr, NJ: tl.constexpr, N: tl.constexpr,
                         NP: tl.constexpr, STRIDE: tl.constexpr, BLOCK: tl.constexpr, SEL: tl.constexpr,
                         L: tl.constexpr, S: tl.constexpr, INIT: tl.constexpr, LOCAL: tl.constexpr,
                         IS_CAUSAL: tl.constexpr, PRECISION: tl.constexpr, W_PRECISION: tl.constexpr,
                         UPCAST: tl.constexpr, LOGW: tl.constexpr, LIBSORT: tl.constexpr):
    # Up to b_sc this is _nsa_select_scores_kernel line for line (the scores must be the same bits).
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
    b_top = tl.full([BM, NP], -1, tl.int64)  # the best NP keys so far, descending; -1 = empty
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
        # The running top-n: keys (score bits, Ns - 1 - j); a non-candidate keeps a key (high word 0) so that the
        # list's order is total, and is turned into an unused slot at the end.
        b_bits = tl.where(b_sc == float("-inf"), 0, b_sc.to(tl.int32, bitcast=True))
        b_key = (b_bits.to(tl.int64) << 32) + (NS - 1 - o_j)[None, :].to(tl.int64)
        b_key = tl.where(m_j[None, :], b_key, -1)  # padding columns never enter
        if NP >= 2 * BJ:  # n > BJ: widen the tile's keys with empty ones (join interleaves; the sort reorders)
            b_key = tl.reshape(tl.join(b_key, tl.full([BM, BJ], -1, tl.int64)), [BM, 2 * BJ])
        if NP >= 4 * BJ:
            b_key = tl.reshape(tl.join(b_key, tl.full([BM, 2 * BJ], -1, tl.int64)), [BM, 4 * BJ])
        if LIBSORT:  # Triton's own network (full sorts): the device comparison for the one above
            b_top = tl.sort(tl.maximum(b_top, tl.sort(b_key, dim=1)), dim=1, descending=True)
        else:
            b_key = _sort_rows(b_key, 0, 1, LOGW, BM)  # ascending
            b_top = tl.maximum(b_top, b_key)  # desc vs asc: the best NP of the union, as a bitonic sequence
            b_top = _sort_rows(b_top, 1, LOGW, LOGW, BM)  # one merge: descending again
    o_s = tl.arange(0, NP)
    b_hi = b_top >> 32
    b_j = (NS - 1 - (b_top - (b_hi << 32))).to(tl.int32)
    b_j = tl.where((b_hi > 0) & (o_s[None, :] < N), b_j, NS)  # NS sorts after every block: the unused slots
    if LIBSORT:
        b_j = tl.sort(b_j, dim=1)
    else:
        b_j = _sort_rows(b_j, 0, 1, LOGW, BM)
    b_j = tl.where(b_j == NS, -1, b_j)
    tl.store(IDX + i_b * s_ib + i_hk * s_ih + o_m[:, None].to(tl.int64) * s_it + o_s[None, :], b_j,
             mask=m_m[:, None] & (o_s[None, :] < N))


def topk_fits(block_size: int, stride: int, select_size: int, select_blocks: int) -> bool:
    """Whether a row's running top-n (at most 4 tiles' worth of slots) can hold `select_blocks`; otherwise the
    caller takes the scores-then-top_blocks path."""
    _, _, bj = select_tiles(block_size, stride, select_size)
    return max(bj, triton.next_power_of_2(select_blocks)) <= 4 * bj


def nsa_topk(q: torch.Tensor, k_cmp: torch.Tensor, lse_cmp: torch.Tensor, *, block_size: int, stride: int,
             select_size: int, select_blocks: int, init_blocks: int, local_blocks: int, causal: bool, scale: float,
             tiles: dict | None = None, network: str = "bitonic") -> torch.Tensor:
    """NSA's selected block indices (B, T, Hkv, n) int32, ascending, -1 for unused slots: the top `select_blocks`
    of `nsa_select_scores`' scores (ties: lower index first), computed without writing the scores.

    q (B, T, Hq, D) contiguous in D; k_cmp (B, Nc, Hkv, D) in q's dtype; lse_cmp (B, Hq, T) fp32, the compressed
    branch's natural-log LSE (nsa_cmp_fwd). tiles overrides the launch config ({"BM", "num_warps", "num_stages"};
    the dev timing script's sweep; BM a power of two). network="tl.sort" sorts with Triton's tl.sort instead of
    this file's bitonic merge (same result; for the device comparison, slow under the interpreter)."""
    if q.dim() != 4 or k_cmp.dim() != 4:
        raise ShapeError(f"nsa_topk: q and k_cmp must be 4-D, got {tuple(q.shape)} and {tuple(k_cmp.shape)}")
    B, T, Hq, D = q.shape
    NC, Hkv = k_cmp.shape[1], k_cmp.shape[2]
    if k_cmp.shape[0] != B or k_cmp.shape[3] != D or Hkv == 0 or Hq % Hkv:
        raise ShapeError(f"nsa_topk: k_cmp {tuple(k_cmp.shape)} does not fit q {tuple(q.shape)} (batch, GQA heads, "
                         f"head_dim)")
    if k_cmp.dtype != q.dtype:
        raise DTypeError(f"nsa_topk: k_cmp is {k_cmp.dtype} but q is {q.dtype}; compress in q's dtype")
    if k_cmp.device != q.device or lse_cmp.device != q.device:
        raise DeviceError(f"nsa_topk: q on {q.device}, k_cmp on {k_cmp.device}, lse_cmp on {lse_cmp.device}")
    if tuple(lse_cmp.shape) != (B, Hq, T) or lse_cmp.dtype != torch.float32:
        raise ShapeError(f"nsa_topk: lse_cmp must be ({B}, {Hq}, {T}) float32, got {tuple(lse_cmp.shape)} "
                         f"{lse_cmp.dtype}")
    NS = -(-T // select_size)
    n = select_blocks
    if not 1 <= n <= NS or init_blocks + local_blocks > n:
        raise ValueError(f"nsa_topk: select_blocks={n} must be in [init_blocks + local_blocks = "
                         f"{init_blocks + local_blocks}, {NS} blocks]")
    if network not in ("bitonic", "tl.sort"):
        raise ValueError(f"nsa_topk: network must be 'bitonic' or 'tl.sort', got {network!r}")
    bc, nj, bj = select_tiles(block_size, stride, select_size)
    bn = max(bj, triton.next_power_of_2(n))
    if bn > 4 * bj:
        raise UnsupportedError(f"nsa_topk: select_blocks={n} exceeds the {4 * bj} slots a row's running top-n holds")
    lse_cmp = lse_cmp.contiguous()
    idx = torch.empty((B, T, Hkv, n), device=q.device, dtype=torch.int32)
    cfg = {k: v for k, v in tile_table("select", D).items() if k != "BN"}  # BN: the interpreter's other tile
    cfg.update(tiles or {})
    if NC == 0:  # no compressed key: the kept blocks only (k_cmp has no rows to read; q stands in, as there)
        k_cmp = q
    _nsa_topk_fwd_kernel[(triton.cdiv(T, cfg["BM"]), B * Hkv)](
        q, k_cmp, lse_cmp, idx, q.stride(0), q.stride(1), q.stride(2), k_cmp.stride(0), k_cmp.stride(1),
        k_cmp.stride(2), idx.stride(0), idx.stride(1), idx.stride(2), T, NC, NS, scale * LOG2E,
        HQ=Hq, HKV=Hkv, GROUP=Hq // Hkv, D=D, BD=_bd(D), BC=bc, BJ=bj, NJ=nj, N=n, NP=bn, STRIDE=stride,
        BLOCK=block_size, SEL=select_size, L=block_size // stride, S=select_size // stride, INIT=init_blocks,
        LOCAL=local_blocks, IS_CAUSAL=causal, PRECISION=_precision(q.dtype), W_PRECISION=_precision(q.dtype),
        UPCAST=_upcast(q.dtype), LOGW=bn.bit_length() - 1,
        LIBSORT=network == "tl.sort", **cfg)
    return idx


__all__ = ["nsa_topk", "topk_fits"]
