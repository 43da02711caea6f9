"""Attention over the SSD tier read straight from the KV file: exact, or InstInfer's flash-aware SparF.

SparF (InstInfer §SparF, a flash-aware SparQ), for one tier holding L tokens, per (row, KV head):
  1. pick channels of |q| (summed over the head's query heads, since the reads are shared): the top r, or with
     `r_share` SparQ's rule (the fewest channels holding that share of |q|'s L1 norm); read those channel rows
     K[:, i] from the channel-major copy of K (r*L elements, contiguous);
  2. approximate scores  ŝ = q_r K_r^T / sqrt(D * |q_r|_1 / |q|_1)  (SparQ's temperature fix), p̂ = softmax(ŝ);
  3. whole 16-token flash pages: first the tier's first `sink_pages` (the SSD tier holds the oldest tokens, so
     these are the context's first tokens: StreamingLLM's attention sinks), then its last `recent_pages`, then the
     pages with the most p̂ mass, until the byte budget is spent; read their K and V rows token-major (16*D
     contiguous elements each); keep the top-k tokens of those by p̂ (default: all of them);
  4. exact attention over the kept tokens. `correction="mean"` adds the paper's mean-value correction:
     out = α · softmax(q K_j^T * scale) V_j + (1 - α) · v̄,  α = Σ_j p̂_j over the non-sink tokens (p̂ renormalised
     over them, v̄ their mean, from the tier's mean kept in memory), lse = lse_j - log α; the sink pages are then a
     partial of their own, merged by LSE. `correction="none"` (the default) renormalises over the kept tokens: on
     SmolLM2's activations α̂ overestimates the kept mass (p̂ is sharper than the true scores) and v̄ is a worse
     stand-in for the missed tokens than the kept ones are (README, Measured). Either way the partial's (out, lse)
     merges with the other tiers' partials by log-sum-exp like an exact one.
Bytes read are counted as what was asked of the file; per KV head, r channel rows and the pages stay within
`bytes_frac` of the exact read (K and V token-major).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...errors import ShapeError, UnsupportedError
from .partial import partial_attention
from .ssd import Segment, _pad, read_ranges, read_segment

PAGE = 16  # tokens per flash page (InstInfer: 16 tokens x 128 fp16 channels = 4 KiB)
CORRECTIONS = ("none", "mean")


@dataclass
class SparFConfig:
    bytes_frac: float = 0.125  # of the exact read of the tier (K + V token-major)
    r: int = 0  # channels per KV head (the most, with r_share); 0: head_dim // 16 (at least 1)
    top_k: int = 0  # tokens kept of the read pages per KV head; 0: all of them
    sink_pages: int = 1  # first pages of the tier always read (attention sinks)
    recent_pages: int = 2  # last pages of the tier always read (local attention, if the newer tiers are short)
    correction: str = "none"  # "mean": the paper's mean-value correction; "none": renormalise over what was read
    r_share: float = 0.0  # > 0: per KV head, the fewest channels holding this share of |q|'s L1 norm (at most r)

    def __post_init__(self):
        if self.correction not in CORRECTIONS:
            raise UnsupportedError(f"SparF: correction must be one of {', '.join(CORRECTIONS)}, not "
                                   f"{self.correction!r}")
        if not 0 < self.bytes_frac or min(self.r, self.top_k, self.sink_pages, self.recent_pages) < 0 \
                or not 0 <= self.r_share <= 1:
            raise ShapeError(f"SparF: needs bytes_frac > 0, r/top_k/sink_pages/recent_pages >= 0 and 0 <= r_share "
                             f"<= 1; got {self}")

    def channels(self, D: int) -> int:
        return min(D, self.r or max(1, D // 16))

    def n_pages(self, L: int, D: int, r: int | None = None) -> int:
        """Pages that fit the byte budget after the channel reads (per KV head: r*L + 2*16*D*n <= frac*2*L*D)."""
        r = self.channels(D) if r is None else r
        n = int((self.bytes_frac * 2 * L * D - r * L) // (2 * PAGE * D))
        if n < 1:
            raise UnsupportedError(f"SparF: {self.bytes_frac:.3g} of the KV bytes cannot hold r={r} channel rows and "
                                   f"one page at L={L}, D={D}; raise bytes_frac or lower r")
        return min(n, L // PAGE)

    def head_channels(self, q_abs: torch.Tensor) -> list[int]:
        """q_abs (D,): |q| summed over a KV head's query rows -> the head's channels, ascending (file order)."""
        D = q_abs.shape[0]
        order = q_abs.argsort(descending=True, stable=True)
        r = self.channels(D)
        if self.r_share > 0:  # SparQ: enough channels for r_share of |q|_1, at most r
            cum = q_abs[order].double().cumsum(0) / q_abs.double().sum().clamp_min(1e-30)
            r = min(r, int((cum < self.r_share).sum().item()) + 1)
        return sorted(order[:r].tolist())


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


def _select_pages(cfg: SparFConfig, page_mass: torch.Tensor, n: int) -> torch.Tensor:
    """page_mass (n_full,) -> the n pages read, ascending: the sink pages, the recent pages newest first (as many of
    them as n holds, sinks first: a young tier's budget may hold a single page), then the most massive."""
    n_full = page_mass.shape[0]
    sinks = list(range(min(cfg.sink_pages, n_full)))
    forced = (sinks + list(range(n_full - 1, max(len(sinks), n_full - cfg.recent_pages) - 1, -1)))[:n]
    pm = page_mass.clone()
    pm[forced] = -float("inf")
    rest = pm.topk(n - len(forced)).indices
    return torch.cat([torch.tensor(forced, dtype=torch.long), rest]).sort().values


def _attend(cfg: SparFConfig, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, tok: torch.Tensor,
            p_rest: torch.Tensor, ns: int, v_rest: torch.Tensor, scale: float):
    """One KV head: q (R, D), the kept tokens' k/v (n, D) at tier indices tok (n,). Returns (o (R, D), lse (R,))."""
    s = q @ k.T * scale  # (R, n)
    if cfg.correction == "none":
        lse = torch.logsumexp(s, dim=-1)
        return torch.exp(s - lse[:, None]) @ v, lse
    sink = tok < ns
    parts = []
    if sink.any():  # the sink pages: exact, a partial of their own
        ss = s[:, sink]
        ls = torch.logsumexp(ss, dim=-1)
        parts.append((torch.exp(ss - ls[:, None]) @ v[sink], ls))
    rest = ~sink
    if rest.any():  # the rest: corrected toward the mean of the tokens SparF did not read, by p̂'s missing mass
        sr = s[:, rest]
        lr = torch.logsumexp(sr, dim=-1)
        alpha = p_rest[:, tok[rest] - ns].sum(-1).clamp(1e-12, 1.0)  # (R,)
        o = torch.exp(sr - lr[:, None]) @ v[rest]
        parts.append((alpha[:, None] * o + (1 - alpha[:, None]) * v_rest, lr - alpha.log()))
    if len(parts) == 1:
        return parts[0]
    (o1, l1), (o2, l2) = parts
    lse = torch.logaddexp(l1, l2)
    return torch.exp(l1 - lse)[:, None] * o1 + torch.exp(l2 - lse)[:, None] * o2, lse


def sparf_from_file(fd: int, segs: list[Segment], meta: dict, q: torch.Tensor, scale: float,
                    v_mean: torch.Tensor, cfg: SparFConfig, stats: dict | None = None):
    """SparF partial over the segments. v_mean: (B, Hkv, D) fp32, V's mean over the tier. Returns (out, lse,
    bytes_read). stats, if given, gets per (b, h) the tier indices of the kept tokens ("tokens") and p̂'s mass on
    the kept non-sink tokens, renormalised over the non-sink ones ("alpha_hat", (R,)): the correction's α."""
    B, Hkv, D, dt = meta["batch"], meta["n_kv_heads"], meta["head_dim"], meta["dtype"]
    es = torch.empty(0, dtype=dt).element_size()
    Tq = q.shape[1]
    L = sum(s.tokens for s in segs)
    n_full = L // PAGE
    ns = min(cfg.sink_pages, n_full) * PAGE  # sink tokens
    qg = _group(q, Hkv)  # (B, Hkv, R, D)
    q_abs = qg.abs().sum(dim=2)  # (B, Hkv, D): the group's rows share the reads
    heads = [(b, h) for b in range(B) for h in range(Hkv)]
    chans = {bh: cfg.head_channels(q_abs[bh]) for bh in heads}
    n_pages = {bh: cfg.n_pages(L, D, len(chans[bh])) for bh in heads}  # refuses a too-small budget before reading
    # 1. channel rows, every segment: K_ch[b, h, c, :S] is S*es contiguous bytes
    ranges = []
    for s in segs:
        kch = s.regions(B, Hkv, D, es)[2]
        for b, h in heads:
            for c in chans[b, h]:
                ranges.append((kch + ((b * Hkv + h) * D + c) * s.tokens * es, s.tokens * es))
    buf, _, nbytes = read_ranges(fd, ranges)
    flat = torch.frombuffer(buf, dtype=dt).float()  # ranges back to back, in the order asked
    k_r, pos = {bh: [] for bh in heads}, 0
    for s in segs:
        for bh in heads:
            n = len(chans[bh]) * s.tokens
            k_r[bh].append(flat[pos: pos + n].view(len(chans[bh]), s.tokens))
            pos += n
    # 2-3. approximate scores with SparQ's temperature, then the pages (by p̂ mass summed over the group's rows)
    p_rest, pages = {}, {}
    for bh in heads:
        kr = torch.cat(k_r[bh], dim=-1)  # (r, L)
        qr = qg[bh][:, chans[bh]]  # (R, r)
        share = qr.abs().sum(-1, keepdim=True) / qg[bh].abs().sum(-1, keepdim=True).clamp_min(1e-30)
        s_hat = (qr @ kr) * (scale / share.clamp_min(1e-30).sqrt())  # (R, L)
        p_rest[bh] = torch.softmax(s_hat[:, ns:], dim=-1)  # over the non-sink tokens (sinks are read anyway)
        mass = torch.cat([torch.zeros(ns), p_rest[bh].sum(0)])[: n_full * PAGE].view(n_full, PAGE).sum(-1)
        pages[bh] = _select_pages(cfg, mass, n_pages[bh])
    seg_of_page = [(s, p) for s in segs for p in range(s.tokens // PAGE)]  # page index -> (segment, page in it)
    ranges = []
    for b, h in heads:
        for p in pages[b, h].tolist():
            s, pi = seg_of_page[p]
            kt, vt, _ = s.regions(B, Hkv, D, es)
            rel = ((b * Hkv + h) * s.tokens + pi * PAGE) * D * es
            ranges += [(kt + rel, PAGE * D * es), (vt + rel, PAGE * D * es)]
    buf, _, nb2 = read_ranges(fd, ranges)
    nbytes += nb2
    kv = torch.frombuffer(buf, dtype=dt).float()
    # 4. exact attention over the kept tokens (with the mean-value correction if asked)
    o = torch.empty(B, Hkv, qg.shape[2], D)
    lse = torch.empty(B, Hkv, qg.shape[2])
    pos = 0
    if stats is not None:
        stats.update(tokens={}, alpha_hat={})
    for b, h in heads:
        n = len(pages[b, h])
        blk = kv[pos: pos + n * 2 * PAGE * D].view(n, 2, PAGE, D)
        pos += n * 2 * PAGE * D
        k_sel, v_sel = blk[:, 0].reshape(n * PAGE, D), blk[:, 1].reshape(n * PAGE, D)
        tok = (pages[b, h][:, None] * PAGE + torch.arange(PAGE)).reshape(-1)  # tier token index
        pr = p_rest[b, h]
        if cfg.top_k and cfg.top_k < tok.numel():  # sink tokens first, then the recent pages', then by p̂
            prio = pr.sum(0)[(tok - ns).clamp_min(0)].double()
            prio = prio + 1e6 * (tok >= (n_full - cfg.recent_pages) * PAGE) + 2e6 * (tok < ns)
            keep = prio.topk(cfg.top_k).indices.sort().values
            tok, k_sel, v_sel = tok[keep], k_sel[keep], v_sel[keep]
        v_rest = v_mean[b, h].float()
        if ns:  # v̄ over the non-sink tokens: the tier's mean less the sink pages' values (they were read)
            v_rest = (v_mean[b, h].double() * L - v_sel[tok < ns].double().sum(0)) / max(L - ns, 1)
        o[b, h], lse[b, h] = _attend(cfg, qg[b, h], k_sel, v_sel, tok, pr, ns, v_rest.float(), scale)
        if stats is not None:
            stats["tokens"][b, h] = tok
            stats["alpha_hat"][b, h] = pr[:, tok[tok >= ns] - ns].sum(-1)
    out, lse = _ungroup(o, lse, Tq)
    return out, lse, nbytes


def exact_bytes(L: int, B: int, Hkv: int, D: int, esize: int) -> int:
    """Bytes an exact read of the tier's K and V takes (token-major, unpadded)."""
    return 2 * B * Hkv * L * D * esize
