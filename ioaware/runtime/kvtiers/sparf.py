"""Attention over the SSD tier read straight from the KV file: exact, or InstInfer's flash-aware SparF.

SparF (InstInfer §SparF, a flash-aware SparQ), for one tier holding L tokens:
  1. per (row, KV head) pick the top-r channels of |q| (summed over the head's query heads, since the reads are
     shared) and read those channel rows K[:, i] from the channel-major copy of K (r*L elements, contiguous);
  2. approximate scores  ŝ = q_r K_r^T / sqrt(D * |q_r|_1 / |q|_1)  (SparQ's temperature fix), p̂ = softmax(ŝ);
  3. skip whole 16-token flash pages first: keep the n_pages pages with the most p̂ mass, read their K and V rows
     token-major (16*D contiguous elements each), then keep the top-k tokens of those by p̂ (default: all of them);
  4. out = α · softmax(q K_j^T * scale) V_j + (1 - α) · v̄,  α = Σ_j p̂_j  (the paper's mean-value correction,
     v̄ the mean of V over the tier, kept in memory); the partial's lse is lse_j - log α, so it merges with the
     other tiers' partials by log-sum-exp like an exact one.
Bytes read are counted as what was asked of the file, and n_pages is chosen so the total stays within
`bytes_frac` of the exact read (K and V token-major).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...errors import UnsupportedError
from .partial import partial_attention
from .ssd import Segment, _pad, read_ranges, read_segment

PAGE = 16  # tokens per flash page (InstInfer: 16 tokens x 128 fp16 channels = 4 KiB)


@dataclass
class SparFConfig:
    bytes_frac: float = 0.125  # of the exact read of the tier (K + V token-major)
    r: int = 0  # channels per KV head; 0: head_dim // 8 (at least 1)
    top_k: int = 0  # tokens kept of the read pages per KV head; 0: all of them

    def channels(self, D: int) -> int:
        return self.r or max(1, D // 8)

    def n_pages(self, L: int, D: int) -> int:
        """Pages that fit the byte budget after the channel reads (per KV head: r*L + 2*16*D*n <= frac*2*L*D)."""
        r = self.channels(D)
        n = int((self.bytes_frac * 2 * L * D - r * L) // (2 * PAGE * D))
        if n < 1:
            raise UnsupportedError(f"SparF: {self.bytes_frac:.3g} of the KV bytes cannot hold r={r} channel rows and "
                                   f"one page at L={L}, D={D}; raise bytes_frac or lower r")
        return min(n, L // PAGE)


def _group(q: torch.Tensor, Hkv: int) -> torch.Tensor:
    """(B, Tq, Hq, D) -> (B, Hkv, g*Tq, D): the query rows that share a KV head."""
    B, Tq, Hq, D = q.shape
    g = Hq // Hkv
    return q.float().view(B, Tq, Hkv, g, D).permute(0, 2, 3, 1, 4).reshape(B, Hkv, g * Tq, D)


def _ungroup(o: torch.Tensor, lse: torch.Tensor, Tq: int) -> tuple[torch.Tensor, torch.Tensor]:
    B, Hkv, R, D = o.shape
    g = R // Tq
    return (o.view(B, Hkv, g, Tq, D).permute(0, 3, 1, 2, 4).reshape(B, Tq, Hkv * g, D),
            lse.view(B, Hkv, g, Tq).reshape(B, Hkv * g, Tq))


def exact_from_file(fd: int, segs: list[Segment], meta: dict, q: torch.Tensor, scale: float):
    """Exact partial over every segment (one read each): (out, lse, bytes_read)."""
    B, Hkv, D, dt = meta["batch"], meta["n_kv_heads"], meta["head_dim"], meta["dtype"]
    ks, vs, nbytes = [], [], 0
    for s in segs:
        k, v = read_segment(fd, s, B, Hkv, D, dt)
        ks.append(k)
        vs.append(v)
        nbytes += 2 * _pad(k.numel() * k.element_size())
    k = torch.cat(ks, dim=2).transpose(1, 2)  # (B, L, Hkv, D)
    v = torch.cat(vs, dim=2).transpose(1, 2)
    out, lse = partial_attention(q, k, v, scale)
    return out, lse, nbytes


def sparf_from_file(fd: int, segs: list[Segment], meta: dict, q: torch.Tensor, scale: float,
                    v_mean: torch.Tensor, cfg: SparFConfig):
    """SparF partial over the segments. v_mean: (B, Hkv, D) fp32. Returns (out, lse, bytes_read)."""
    B, Hkv, D, dt = meta["batch"], meta["n_kv_heads"], meta["head_dim"], meta["dtype"]
    es = torch.empty(0, dtype=dt).element_size()
    Tq = q.shape[1]
    L = sum(s.tokens for s in segs)
    r, n_pages = cfg.channels(D), cfg.n_pages(L, D)
    qg = _group(q, Hkv)  # (B, Hkv, R, D)
    ch = qg.abs().sum(dim=2).topk(r, dim=-1).indices.sort(dim=-1).values  # (B, Hkv, r): shared by the group
    # 1. channel rows, every segment: K_ch[b, h, c, :S] is S*es contiguous bytes
    ranges = []
    for s in segs:
        kch = s.regions(B, Hkv, D, es)[2]
        for b in range(B):
            for h in range(Hkv):
                for c in ch[b, h].tolist():
                    ranges.append((kch + ((b * Hkv + h) * D + c) * s.tokens * es, s.tokens * es))
    buf, starts, nbytes = read_ranges(fd, ranges)
    flat = torch.frombuffer(buf, dtype=dt).float()  # ranges back to back, in the order asked
    parts, pos = [], 0
    for s in segs:  # (B, Hkv, r, S) per segment
        n = B * Hkv * r * s.tokens
        parts.append(flat[pos: pos + n].view(B, Hkv, r, s.tokens))
        pos += n
    k_r = torch.cat(parts, dim=-1)  # (B, Hkv, r, L)
    # 2. approximate scores with SparQ's temperature: |q_r|_1 / |q|_1 of the key's share of the dot product
    q_r = torch.gather(qg, 3, ch[:, :, None, :].expand(-1, -1, qg.shape[2], -1))  # (B, Hkv, R, r)
    share = q_r.abs().sum(-1, keepdim=True) / qg.abs().sum(-1, keepdim=True).clamp_min(1e-30)  # (B, Hkv, R, 1)
    s_hat = torch.matmul(q_r, k_r) * (scale / share.clamp_min(1e-30).sqrt())  # (B, Hkv, R, L)
    p_hat = torch.softmax(s_hat, dim=-1)
    # 3. whole pages first (by p̂ mass summed over the group's rows), then tokens within them
    n_full = L // PAGE
    page_mass = p_hat.sum(dim=2)[..., : n_full * PAGE].view(B, Hkv, n_full, PAGE).sum(-1)  # (B, Hkv, n_full)
    pages = page_mass.topk(n_pages, dim=-1).indices.sort(dim=-1).values  # (B, Hkv, n_pages)
    seg_of_page, first = [], 0  # page index -> (segment, page within it)
    for s in segs:
        seg_of_page += [(s, p) for p in range(s.tokens // PAGE)]
        first += s.tokens
    ranges = []
    for b in range(B):
        for h in range(Hkv):
            for p in pages[b, h].tolist():
                s, pi = seg_of_page[p]
                kt, vt, _ = s.regions(B, Hkv, D, es)
                rel = ((b * Hkv + h) * s.tokens + pi * PAGE) * D * es
                ranges += [(kt + rel, PAGE * D * es), (vt + rel, PAGE * D * es)]
    buf, _, nb2 = read_ranges(fd, ranges)
    nbytes += nb2
    kv = torch.frombuffer(buf, dtype=dt).float().view(B, Hkv, n_pages, 2, PAGE, D)
    k_sel = kv[:, :, :, 0].reshape(B, Hkv, n_pages * PAGE, D)
    v_sel = kv[:, :, :, 1].reshape(B, Hkv, n_pages * PAGE, D)
    tok = (pages[..., None] * PAGE + torch.arange(PAGE)).reshape(B, Hkv, n_pages * PAGE)  # tier token index
    if cfg.top_k and cfg.top_k < n_pages * PAGE:
        keep = torch.gather(p_hat.sum(2), 2, tok).topk(cfg.top_k, dim=-1).indices  # (B, Hkv, k)
        tok = torch.gather(tok, 2, keep)
        k_sel = torch.gather(k_sel, 2, keep[..., None].expand(-1, -1, -1, D))
        v_sel = torch.gather(v_sel, 2, keep[..., None].expand(-1, -1, -1, D))
    # 4. exact attention over the kept tokens, corrected toward the tier's mean value by the missing mass
    alpha = torch.gather(p_hat, 3, tok[:, :, None, :].expand(-1, -1, p_hat.shape[2], -1)).sum(-1)  # (B, Hkv, R)
    alpha = alpha.clamp(1e-12, 1.0)
    s = torch.matmul(qg, k_sel.transpose(-1, -2)) * scale  # (B, Hkv, R, n)
    lse = torch.logsumexp(s, dim=-1)
    o = torch.matmul(torch.exp(s - lse[..., None]), v_sel)  # (B, Hkv, R, D)
    o = alpha[..., None] * o + (1 - alpha[..., None]) * v_mean.float()[:, :, None, :]
    out, lse = _ungroup(o, lse - alpha.log(), Tq)
    return out, lse, nbytes


def exact_bytes(L: int, B: int, Hkv: int, D: int, esize: int) -> int:
    """Bytes an exact read of the tier's K and V takes (token-major, unpadded)."""
    return 2 * B * Hkv * L * D * esize
