"""SparF on the DRAM tier, transport "uva": the selection and the attention as Triton kernels that read the pinned
host pool straight through UVA (no gather into a device buffer). Forward only (inference).

  1. `_sparf_page_stats_fwd_kernel`, one program per (row b, KV head, chunk of CP pages): the head's top-r channels
     of |q| (summed over the group's query rows; ties to the lower channel, as a stable argsort) and SparQ's
     temperature, computed in registers from q; then the chosen channel rows of the chunk's tokens (read once, from
     the channel-major K in host memory), the approximate scores, and per query row and page the chunk-local
     softmax numerator Σ exp(ŝ - m_chunk) (the tier's first `ns` tokens, the sinks, are outside the softmax, as in
     sparf.py); per chunk and row its max and sum.
  2. `_sparf_page_mass_fwd_kernel`: each row's log-sum-exp from the chunks' (max, sum), then p̂'s mass per page
     summed over the group's rows; the forced pages (sinks, recent) get +inf so the top-k keeps them.
  3. `_uva_paged_partial_fwd_kernel`, flash-decode style, one program per (b, KV head, split of the head's chosen
     pages): each page's 16 K and V rows read from the token-major pinned pool (ring slot = page + the tier's head,
     mod the ring), online softmax in fp32, unnormalised (acc, max, sum) per split;
     `_uva_paged_combine_fwd_kernel` merges the splits into (out (B, Tq, Hq, D), lse (B, Hq, Tq)) fp32, the format
     of partial.py and the exact tiers.
Query rows of one KV head are (g_i, t) for g_i < Hq/Hkv, t < Tq, g-major (dram_sparf.group's order).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

PAGE = 16


@triton.jit
def _sparf_page_stats_fwd_kernel(q, kc, E, M, S, scale, head_tok, L, cap, ns, r,
                                 sqb, sqt, sqh, Tq, R, g, Hkv, D, NC,
                                 CP: tl.constexpr, RR: tl.constexpr, RP: tl.constexpr, DD: tl.constexpr,
                                 P: tl.constexpr):
    bh = tl.program_id(0)
    c = tl.program_id(1)
    b = bh // Hkv
    h = bh % Hkv
    rows = tl.arange(0, RR)
    d = tl.arange(0, DD)
    rm = rows < R
    dm = d < D
    qoff = b.to(tl.int64) * sqb + (rows % Tq) * sqt + (h * g + rows // Tq) * sqh  # (RR,)
    qa = tl.abs(tl.load(q + qoff[:, None] + d[None, :], mask=rm[:, None] & dm[None, :], other=0.0).to(tl.float32))
    # the head's channels: rank of each by |q| summed over the rows (larger first, ties to the lower channel)
    a = tl.where(dm, tl.sum(qa, 0), -1.0)  # (DD,); padding never chosen
    ci = d[:, None]
    cj = d[None, :]
    before = (a[None, :] > a[:, None]) | ((a[None, :] == a[:, None]) & (cj < ci))
    sel = tl.sum(before.to(tl.int32), 1) < r  # (DD,)
    pos = tl.sum((sel[None, :] & (cj < ci)).to(tl.int32), 1)  # rank among the chosen, ascending channel order
    i = tl.arange(0, RP)
    im = i < r
    idx = tl.sum(tl.where(sel[None, :] & (pos[None, :] == i[:, None]), cj, 0), 1)  # (RP,) the chosen, ascending
    share = tl.sum(tl.where(sel[None, :], qa, 0.0), 1) / tl.maximum(tl.sum(qa, 1), 1e-30)  # (RR,)
    fac = scale / tl.sqrt(tl.maximum(share, 1e-30))  # SparQ's temperature
    qr = tl.load(q + qoff[:, None] + idx[None, :], mask=rm[:, None] & im[None, :], other=0.0).to(tl.float32)
    # the chunk's tokens: tier token j is ring token (head_tok + j) mod cap; pages are whole and 16-aligned
    j = c * (CP * P) + tl.arange(0, CP * P)
    jm = j < L
    ring = head_tok + j
    ring = tl.where(ring >= cap, ring - cap, ring)
    ring = tl.max_contiguous(tl.multiple_of(ring, P), P)
    row0 = tl.multiple_of((bh.to(tl.int64) * D + idx) * cap, P)  # (RP,) channel row starts in kc
    kr = tl.load(kc + row0[:, None] + ring[None, :], mask=im[:, None] & jm[None, :], other=0.0).to(tl.float32)
    s = tl.sum(qr[:, :, None] * kr[None, :, :], 1) * fac[:, None]  # (RR, CP*P)
    s = tl.where(((j >= ns) & jm)[None, :], s, float("-inf"))
    m = tl.max(s, 1)
    e = tl.exp(s - tl.where(m == float("-inf"), 0.0, m)[:, None])  # 0 outside the softmax
    ep = tl.sum(tl.reshape(e, (RR, CP, P)), 2)  # (RR, CP): per page
    pg = c * CP + tl.arange(0, CP)
    NF = NC * CP
    tl.store(E + (bh * R + rows[:, None]) * NF + pg[None, :], ep, mask=rm[:, None])
    tl.store(M + (bh * R + rows) * NC + c, m, mask=rm)
    tl.store(S + (bh * R + rows) * NC + c, tl.sum(e, 1), mask=rm)


@triton.jit
def _sparf_page_mass_fwd_kernel(E, M, S, mass, R, n_full, NC, n_sink, n_recent,
                                CP: tl.constexpr, RR: tl.constexpr, NCP: tl.constexpr, BP: tl.constexpr):
    bh = tl.program_id(0)
    rows = tl.arange(0, RR)
    rm = rows < R
    cc = tl.arange(0, NCP)
    mk = rm[:, None] & (cc < NC)[None, :]
    base = (bh * R + rows[:, None]) * NC
    m = tl.load(M + base + cc[None, :], mask=mk, other=float("-inf"))
    sm = tl.load(S + base + cc[None, :], mask=mk, other=0.0)
    mx = tl.max(m, 1)
    mxs = tl.where(mx == float("-inf"), 0.0, mx)
    lse = mxs + tl.log(tl.maximum(tl.sum(sm * tl.exp(m - mxs[:, None]), 1), 1e-30))  # >= 1 if any token
    p = tl.program_id(1) * BP + tl.arange(0, BP)
    pm = p < n_full
    mk2 = rm[:, None] & pm[None, :]
    mp = tl.load(M + base + (p // CP)[None, :], mask=mk2, other=float("-inf"))
    e = tl.load(E + (bh * R + rows[:, None]) * (NC * CP) + p[None, :], mask=mk2, other=0.0)
    w = tl.where(mp > float("-inf"), tl.exp(mp - tl.where(mp > float("-inf"), lse[:, None], 0.0)), 0.0)
    out = tl.sum(e * w, 0)  # (BP,)
    out = tl.where((p < n_sink) | (p >= n_full - n_recent), float("inf"), out)
    tl.store(mass + bh * n_full + p, out, mask=pm)


@triton.jit
def _uva_paged_partial_fwd_kernel(q, kp, vp, pages, O, Mo, So, scale, head_page, nd, n, pps,
                                  sqb, sqt, sqh, Tq, R, g, Hkv, D, NS,
                                  PB: tl.constexpr, RR: tl.constexpr, DD: tl.constexpr, P: tl.constexpr,
                                  ALIGN: tl.constexpr):
    bh = tl.program_id(0)
    sp = tl.program_id(1)
    b = bh // Hkv
    h = bh % Hkv
    rows = tl.arange(0, RR)
    d = tl.arange(0, DD)
    rm = rows < R
    dm = d < D
    qoff = b.to(tl.int64) * sqb + (rows % Tq) * sqt + (h * g + rows // Tq) * sqh
    qt = tl.load(q + qoff[:, None] + d[None, :], mask=rm[:, None] & dm[None, :], other=0.0).to(tl.float32)
    m_i = tl.full((RR,), float("-inf"), tl.float32)
    l_i = tl.zeros((RR,), tl.float32)
    acc = tl.zeros((RR, DD), tl.float32)
    tok = tl.arange(0, PB * P)
    j0 = sp * pps
    j1 = tl.minimum(j0 + pps, n)
    for jb in range(j0, j1, PB):
        jj = jb + tok // P
        tm = jj < j1
        pg = tl.load(pages + bh.to(tl.int64) * n + jj, mask=tm, other=0)
        slot = pg + head_page
        slot = tl.where(slot >= nd, slot - nd, slot)  # the ring slot of the tier's page
        roff = ((b * nd + slot).to(tl.int64) * P + tok % P) * (Hkv * D) + h * D  # (PB*P,) rows in the pool
        roff = tl.multiple_of(roff, ALIGN)
        kvm = tm[:, None] & dm[None, :]
        k = tl.load(kp + roff[:, None] + d[None, :], mask=kvm, other=0.0).to(tl.float32)
        v = tl.load(vp + roff[:, None] + d[None, :], mask=kvm, other=0.0).to(tl.float32)
        s = tl.dot(qt, tl.trans(k), input_precision="ieee") * scale  # (RR, PB*P) fp32
        s = tl.where(tm[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p, v, input_precision="ieee")
        m_i = m_new
    o = (bh * NS + sp) * R + rows
    tl.store(O + o[:, None] * D + d[None, :], acc, mask=rm[:, None] & dm[None, :])
    tl.store(Mo + o, m_i, mask=rm)
    tl.store(So + o, l_i, mask=rm)


@triton.jit
def _uva_paged_combine_fwd_kernel(O, Mo, So, out, lse, NS, R, Tq, g, Hkv, D, sob, sot, soh, slb, slh,
                                  NSP: tl.constexpr, DD: tl.constexpr):
    bh = tl.program_id(0)
    row = tl.program_id(1)
    b = bh // Hkv
    h = bh % Hkv
    s = tl.arange(0, NSP)
    sm = s < NS
    d = tl.arange(0, DD)
    dm = d < D
    o = (bh * NS + s) * R + row
    m = tl.load(Mo + o, mask=sm, other=float("-inf"))
    l_ = tl.load(So + o, mask=sm, other=0.0)
    mx = tl.max(m, 0)
    w = tl.where(sm, tl.exp(m - mx), 0.0)
    tot = tl.sum(l_ * w, 0)
    acc = tl.load(O + o[:, None] * D + d[None, :], mask=sm[:, None] & dm[None, :], other=0.0)
    res = tl.sum(acc * w[:, None], 0) / tot
    gi = row // Tq
    t = row % Tq
    tl.store(out + b * sob + t * sot + (h * g + gi) * soh + d, res, mask=dm)
    tl.store(lse + b * slb + (h * g + gi) * slh + t, mx + tl.log(tot))


def _p2(x: int, lo: int = 1) -> int:
    return max(lo, triton.next_power_of_2(max(int(x), 1)))


def sparf_page_mass_fwd(q: torch.Tensor, kc, Hkv: int, head_tok: int, L: int, cap: int, ns: int, r: int,
                        scale: float, n_sink: int, n_recent: int) -> torch.Tensor:
    """q (B, Tq, Hq, D) on the compute device; kc the tier's channel-major K (B, Hkv, D, cap) (pinned host memory,
    or a HostPointer to it; any tensor under the interpreter). The tier holds L tokens (whole pages) from ring token
    head_tok on. -> p̂'s mass per page (B, Hkv, L // 16) fp32, +inf on the first n_sink and last n_recent pages."""
    B, Tq, Hq, D = q.shape
    g, n_full = Hq // Hkv, L // PAGE
    R = g * Tq
    RR, RP, DD = _p2(R), _p2(r), _p2(D, 16)
    CP = 1  # pages per program: up to 16, keeping the (rows, channels, tokens) product in registers
    while CP < 16 and 2 * CP * RR * RP * PAGE <= 16384:
        CP *= 2
    CP = min(CP, _p2(n_full))
    NC = triton.cdiv(n_full, CP)
    dev = q.device
    E = torch.empty(B * Hkv, R, NC * CP, dtype=torch.float32, device=dev)
    M = torch.empty(B * Hkv, R, NC, dtype=torch.float32, device=dev)
    S = torch.empty_like(M)
    _sparf_page_stats_fwd_kernel[(B * Hkv, NC)](q, kc, E, M, S, scale, head_tok, L, cap, ns, r, q.stride(0),
                                                q.stride(1), q.stride(2), Tq, R, g, Hkv, D, NC, CP=CP, RR=RR,
                                                RP=RP, DD=DD, P=PAGE, num_warps=8 if DD >= 128 else 4)
    mass = torch.empty(B, Hkv, n_full, dtype=torch.float32, device=dev)
    BP = min(256, _p2(n_full))
    _sparf_page_mass_fwd_kernel[(B * Hkv, triton.cdiv(n_full, BP))](E, M, S, mass, R, n_full, NC, n_sink, n_recent,
                                                                    CP=CP, RR=RR, NCP=_p2(NC), BP=BP, num_warps=4)
    return mass


def split_pages(n: int, heads: int, pb: int = 2, target: int = 1024) -> int:
    """Pages per program of the paged kernel: a multiple of pb (pages per loop step), about `target` programs in all
    (many independent reads in flight over PCIe)."""
    pps = max(1, triton.cdiv(n * heads, target))
    return triton.cdiv(pps, pb) * pb


def uva_paged_partial_fwd(q: torch.Tensor, kp, vp, pages: torch.Tensor, Hkv: int, head_page: int, nd: int,
                          scale: float, pb: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact attention of q (B, Tq, Hq, D) over each KV head's chosen pages (B, Hkv, n) (tier page indices) of the
    token-major pool kp/vp (B, nd*16, Hkv, D) (pinned host memory or HostPointers), ring head at page head_page.
    -> (out (B, Tq, Hq, D) fp32, lse (B, Hq, Tq) fp32)."""
    B, Tq, Hq, D = q.shape
    g, n = Hq // Hkv, pages.shape[-1]
    R = g * Tq
    RR, DD = _p2(R, 16), _p2(D, 16)
    pps = split_pages(n, B * Hkv, pb)
    NS = triton.cdiv(n, pps)
    dev = q.device
    O = torch.empty(B * Hkv, NS, R, D, dtype=torch.float32, device=dev)
    Mo = torch.empty(B * Hkv, NS, R, dtype=torch.float32, device=dev)
    So = torch.empty_like(Mo)
    pages = pages.contiguous()
    align = 16 if D % 16 == 0 else (8 if D % 8 == 0 else 1)
    _uva_paged_partial_fwd_kernel[(B * Hkv, NS)](q, kp, vp, pages, O, Mo, So, scale, head_page, nd, n, pps,
                                                 q.stride(0), q.stride(1), q.stride(2), Tq, R, g, Hkv, D, NS,
                                                 PB=pb, RR=RR, DD=DD, P=PAGE, ALIGN=align, num_warps=4)
    out = torch.empty(B, Tq, Hq, D, dtype=torch.float32, device=dev)
    lse = torch.empty(B, Hq, Tq, dtype=torch.float32, device=dev)
    _uva_paged_combine_fwd_kernel[(B * Hkv, R)](O, Mo, So, out, lse, NS, R, Tq, g, Hkv, D, out.stride(0),
                                                out.stride(1), out.stride(2), lse.stride(0), lse.stride(1),
                                                NSP=_p2(NS), DD=DD, num_warps=4)
    return out, lse
