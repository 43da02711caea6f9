"""Native Sparse Attention's definition in plain PyTorch: every branch materialised, the reference the kernels are
checked against.

q: (B, T, Hq, D); k, v: (B, T, Hkv, D), Hq a multiple of Hkv (a GQA group of G = Hq / Hkv query heads per KV head);
gates g_cmp, g_slc, g_swa: (B, T, Hq). Token positions are 0..T-1 (self-attention over one sequence: training and
prefill). With l = block_size, d = stride, l' = select_size, n = select_blocks, w = window:

  compression  the keys (and values) of tokens [c d, c d + l) are compressed into one: K_cmp[c] = phi(K[c d : c d + l])
               for c = 0 .. Nc - 1, Nc = (T - l) // d + 1 (0 when T < l); phi is mean-pooling unless given.
               Query t sees compressed key c iff its block has ended: c d + l - 1 <= t (causal; every c otherwise).
  selection    importance of selection block j (tokens [j l', (j + 1) l')) for query t and KV head h:
                   imp[t, j] = sum over h's G query heads, sum over c of p_cmp[t, c] |[c d, c d + l) & block j| / d
               (p_cmp: the compressed branch's attention probabilities). With d | l and d | l' the weights are NSA's
               eq. 9 (l = 32, d = 16, l' = 64 gives 1, 2, 2, 2, 1 over c = 4j - 1 .. 4j + 3). Candidates: blocks that
               start at or before t (causal; all blocks otherwise). The first `init_blocks` blocks and the
               `local_blocks` blocks ending with t's own are always kept; the rest of the n slots go to the highest
               importance among candidates with importance > 0; unused slots are -1. Indices are sorted ascending.
  selected     attention over the raw tokens of the selected blocks (keys <= t when causal).
  window       attention over keys t - w < s <= t (causal), |t - s| < w otherwise.
  output       o = g_cmp * o_cmp + g_slc * o_slc + g_swa * o_swa, per query head and token.

A row that sees no key (the compressed branch for t < l - 1) gives 0 and LSE = -inf. NSA is exact with respect to
this definition: the kernels compute the same three attentions; the only approximation is NSA's own (attending to a
subset of keys), and the selection is a discrete choice, so near-ties in importance may pick different blocks in
different precisions (the tests compare at fixed indices, and the selection itself up to such near-ties).

HBM traffic if run as written, per (batch, query head), elements (T tokens, Nc compressed, D head dim):
    k_cmp, v_cmp = phi(K), phi(V)  # read 2 T D (mean-pool: each token read once), write 2 Nc D (per KV head)
    s_cmp = q k_cmp^T, p_cmp        # read T D + Nc D, write T Nc; softmax: read T Nc, write T Nc
    o_cmp = p_cmp v_cmp             # read T Nc + Nc D, write T D
    imp = group-sum(p_cmp) W        # read T Nc, write T Ns (Ns = T / l'); top-n: read T Ns, write T n
    o_slc: masked dense attention   # 2 T D + 2 T D + 4 T^2 (S, P, mask materialised: what the kernels remove)
    o_swa: masked dense attention   # same, 4 T^2
    gates                           # read 3 T D + 3 T, write T D
    total: about 8 T^2 + 5 T Nc + 2 T Ns + O(T D); the kernels move O(T D n l' / BM + T n D) instead (cost.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

Compress = Callable[[torch.Tensor], torch.Tensor]


def num_compressed(T: int, block_size: int, stride: int) -> int:
    """Nc: how many compressed tokens a sequence of T tokens has (blocks of block_size every stride tokens)."""
    return 0 if T < block_size else (T - block_size) // stride + 1


def num_blocks(T: int, select_size: int) -> int:
    """Ns: how many selection blocks cover T tokens (the last one may be partial)."""
    return -(-T // select_size)


def compress_blocks(x: torch.Tensor, block_size: int, stride: int) -> torch.Tensor:
    """(B, T, H, D) -> (B, Nc, block_size, H, D): the tokens of every compression block (a strided view)."""
    B, T, H, D = x.shape
    nc = num_compressed(T, block_size, stride)
    if nc == 0:
        return x.new_zeros(B, 0, block_size, H, D)
    return x.unfold(1, block_size, stride).permute(0, 1, 4, 2, 3)  # (B, Nc, H, D, l) -> (B, Nc, l, H, D)


def mean_pool(blocks: torch.Tensor) -> torch.Tensor:
    """The default compression: the mean of each block's tokens. (B, Nc, l, H, D) -> (B, Nc, H, D)."""
    return blocks.mean(2)


def compress_fns(compress) -> tuple[Compress, Compress]:
    """None -> mean-pool for both; one callable -> both; a pair -> (keys, values)."""
    if compress is None:
        return mean_pool, mean_pool
    if isinstance(compress, (tuple, list)):
        return compress[0], compress[1]
    return compress, compress


def compress_kv(k: torch.Tensor, v: torch.Tensor, block_size: int, stride: int, compress=None):
    """k_cmp, v_cmp (B, Nc, Hkv, D): the compressed keys and values."""
    fk, fv = compress_fns(compress)
    return fk(compress_blocks(k, block_size, stride)), fv(compress_blocks(v, block_size, stride))


def cmp_visible(T: int, nc: int, block_size: int, stride: int, causal: bool, device=None) -> torch.Tensor:
    """(T, Nc) bool: query t sees compressed key c iff its block has ended, c * stride + block_size - 1 <= t."""
    t = torch.arange(T, device=device)[:, None]
    c = torch.arange(nc, device=device)[None, :]
    m = c * stride + block_size - 1 <= t
    return m if causal else torch.ones_like(m)


def overlap_weights(nc: int, ns: int, block_size: int, stride: int, select_size: int, device=None,
                    dtype=torch.float64) -> torch.Tensor:
    """(Nc, Ns): how many stride-chunks compressed token c shares with selection block j (NSA's eq. 9 weights)."""
    c = torch.arange(nc, device=device)[:, None]
    j = torch.arange(ns, device=device)[None, :]
    lo = torch.maximum(c * stride, j * select_size)
    hi = torch.minimum(c * stride + block_size, (j + 1) * select_size)
    return ((hi - lo).clamp_min(0) / stride).to(dtype)


def block_scores(imp: torch.Tensor, select_size: int, init_blocks: int, local_blocks: int,
                 causal: bool) -> torch.Tensor:
    """imp (B, Hkv, T, Ns) -> scores: +inf for the always-kept blocks, -inf for blocks that are not candidates
    (after t when causal, or with no importance), the importance otherwise."""
    T, ns = imp.shape[2], imp.shape[3]
    t = torch.arange(T, device=imp.device)[:, None]
    j = torch.arange(ns, device=imp.device)[None, :]
    cur = t // select_size
    valid = (j <= cur) if causal else torch.ones_like(j <= cur)
    forced = valid & ((j < init_blocks) | ((j <= cur) & (j > cur - local_blocks)))
    s = torch.where(imp > 0, imp.float(), torch.full_like(imp, float("-inf"), dtype=torch.float32))
    s = torch.where(valid, s, float("-inf"))
    return torch.where(forced, float("inf"), s)


def top_blocks(scores: torch.Tensor, select_blocks: int) -> torch.Tensor:
    """scores (B, Hkv, T, Ns) -> indices (B, T, Hkv, n) int32, ascending, -1 for unused slots (at the end)."""
    vals, idx = scores.topk(select_blocks, dim=-1)
    big = scores.shape[-1]
    idx = torch.where(vals == float("-inf"), big, idx)
    idx = idx.sort(-1).values
    idx = torch.where(idx == big, -1, idx)
    return idx.permute(0, 2, 1, 3).to(torch.int32).contiguous()


def _scale(softmax_scale, D: int) -> float:
    return softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(D)


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                     scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q k^T scale, where mask) v with GQA. mask broadcasts to (B, Hkv, Tq, Tk) or (B, Hq, Tq, Tk).
    Returns out (B, Tq, Hq, D) and lse (B, Hq, Tq) (-inf and 0 output for rows that see nothing)."""
    Hq, Hkv = q.shape[2], k.shape[2]
    G = Hq // Hkv
    if Hq != Hkv:
        k = k.repeat_interleave(G, dim=2)
        v = v.repeat_interleave(G, dim=2)
        if mask.dim() == 4 and mask.shape[1] == Hkv:
            mask = mask.repeat_interleave(G, dim=1)
    s = torch.einsum("bqhd,bkhd->bhqk", q, k) * scale  # (B, Hq, Tq, Tk)
    s = s.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(s.float(), dim=-1)
    p = torch.nan_to_num(torch.softmax(s, dim=-1), nan=0.0)
    return torch.einsum("bhqk,bkhd->bqhd", p.to(v.dtype), v), lse


def cmp_probs(q: torch.Tensor, k_cmp: torch.Tensor, block_size: int, stride: int, causal: bool,
              scale: float) -> torch.Tensor:
    """The compressed branch's attention probabilities p_cmp (B, Hq, T, Nc), 0 where not visible."""
    T, nc, Hq, Hkv = q.shape[1], k_cmp.shape[1], q.shape[2], k_cmp.shape[2]
    kk = k_cmp.repeat_interleave(Hq // Hkv, dim=2)
    s = torch.einsum("bqhd,bkhd->bhqk", q, kk) * scale
    s = s.masked_fill(~cmp_visible(T, nc, block_size, stride, causal, q.device), float("-inf"))
    return torch.nan_to_num(torch.softmax(s, dim=-1), nan=0.0)


def importance(p_cmp: torch.Tensor, Hkv: int, block_size: int, stride: int, select_size: int) -> torch.Tensor:
    """(B, Hq, T, Nc) -> (B, Hkv, T, Ns): probabilities summed over each GQA group, mapped onto selection blocks."""
    B, Hq, T, nc = p_cmp.shape
    grp = p_cmp.reshape(B, Hkv, Hq // Hkv, T, nc).sum(2)
    w = overlap_weights(nc, num_blocks(T, select_size), block_size, stride, select_size, p_cmp.device, p_cmp.dtype)
    return grp @ w


def select_ref(q: torch.Tensor, k_cmp: torch.Tensor, *, block_size: int, stride: int, select_size: int,
               select_blocks: int, init_blocks: int = 1, local_blocks: int = 2, causal: bool = True,
               softmax_scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The selection: (indices (B, T, Hkv, n) int32, scores (B, Hkv, T, Ns) fp32 with +-inf as block_scores)."""
    scale = _scale(softmax_scale, q.shape[-1])
    p = cmp_probs(q, k_cmp, block_size, stride, causal, scale)
    imp = importance(p, k_cmp.shape[2], block_size, stride, select_size)
    scores = block_scores(imp, select_size, init_blocks, local_blocks, causal)
    return top_blocks(scores, select_blocks), scores


def selected_mask(idx: torch.Tensor, T: int, select_size: int, causal: bool) -> torch.Tensor:
    """indices (B, T, Hkv, n) -> (B, Hkv, T, T) bool: the keys each query sees in the selected branch."""
    B, _, Hkv, _ = idx.shape
    ns = num_blocks(T, select_size)
    sel = torch.zeros(B, T, Hkv, ns + 1, dtype=torch.bool, device=idx.device)
    sel.scatter_(-1, torch.where(idx >= 0, idx, ns).long(), True)
    m = sel[..., :ns].repeat_interleave(select_size, dim=-1)[..., :T]  # (B, T, Hkv, T)
    m = m.permute(0, 2, 1, 3)
    if causal:
        t = torch.arange(T, device=idx.device)
        m = m & (t[None, :] <= t[:, None])
    return m


def window_mask(T: int, window: int, causal: bool, device=None) -> torch.Tensor:
    t = torch.arange(T, device=device)[:, None]
    s = torch.arange(T, device=device)[None, :]
    if causal:
        return (s <= t) & (s > t - window)
    return (s - t).abs() < window


def nsa_ref(q, k, v, g_cmp, g_slc, g_swa, *, block_size: int = 64, stride: int = 16, select_blocks: int = 16,
            select_size: int = 64, window: int = 512, causal: bool = True, softmax_scale: float | None = None,
            compress=None, block_indices: torch.Tensor | None = None, init_blocks: int = 1, local_blocks: int = 2,
            upcast: bool = True, return_parts: bool = False):
    """NSA with every branch materialised. upcast=True computes in fp32 (fp64 stays fp64): the reference;
    upcast=False in the inputs' precision: the "plain PyTorch" baseline of the tolerance rule.

    Returns o (B, T, Hq, D) in q's dtype and the indices used (B, T, Hkv, n); with return_parts also a dict of
    the branch outputs (o_cmp, o_slc, o_swa) and LSEs."""
    dtype_out = q.dtype
    B, T, Hq, D = q.shape
    scale = _scale(softmax_scale, D)
    if upcast and q.dtype in (torch.float16, torch.bfloat16):
        q, k, v = q.float(), k.float(), v.float()
    g_cmp, g_slc, g_swa = (g.to(q.dtype) for g in (g_cmp, g_slc, g_swa))
    k_cmp, v_cmp = compress_kv(k, v, block_size, stride, compress)
    k_cmp, v_cmp = k_cmp.to(q.dtype), v_cmp.to(q.dtype)
    nc = k_cmp.shape[1]
    o_cmp, lse_cmp = masked_attention(q, k_cmp, v_cmp, cmp_visible(T, nc, block_size, stride, causal, q.device),
                                      scale)
    if block_indices is None:
        with torch.no_grad():
            block_indices, _ = select_ref(q, k_cmp, block_size=block_size, stride=stride, select_size=select_size,
                                          select_blocks=select_blocks, init_blocks=init_blocks,
                                          local_blocks=local_blocks, causal=causal, softmax_scale=scale)
    o_slc, lse_slc = masked_attention(q, k, v, selected_mask(block_indices, T, select_size, causal), scale)
    o_swa, lse_swa = masked_attention(q, k, v, window_mask(T, window, causal, q.device), scale)
    o = g_cmp[..., None] * o_cmp + g_slc[..., None] * o_slc + g_swa[..., None] * o_swa
    o = o.to(dtype_out)
    if return_parts:
        parts = {"o_cmp": o_cmp, "o_slc": o_slc, "o_swa": o_swa, "lse_cmp": lse_cmp, "lse_slc": lse_slc,
                 "lse_swa": lse_swa, "k_cmp": k_cmp, "v_cmp": v_cmp}
        return o, block_indices, parts
    return o, block_indices
