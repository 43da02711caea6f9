"""Partial attention over one tier's tokens, and the exact log-sum-exp merge of the partials.

A tier holds a set of keys/values; attention over the union of tiers is recovered exactly from each tier's
(out_i, lse_i):  lse = log Σ exp(lse_i),  out = Σ exp(lse_i - lse) · out_i.  Softmax is order-free, so a tier may
keep its tokens in any slot order (rings, files) as long as positions were baked in by RoPE before it stored them.

Shapes follow flash_decode: q (B, Tq, Hq, D), k/v (B, L, Hkv, D), out (B, Tq, Hq, D) fp32, lse (B, Hq, Tq) fp32.
"""

from __future__ import annotations

import torch

CHUNK = 1024  # keys widened to fp32 at a time on the CPU: a chunk's copy stays in cache, not a second DRAM pass


def partial_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                      causal: bool = False, chunk: int = CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of q against k/v with its log-sum-exp, vectorised torch (runs on the CPU's threads or any device).

    causal: bottom-right aligned (query t of Tq sees keys c <= L - Tq + t), as for the newest tokens; a lower tier's
    tokens are all older than every query, so it passes causal=False. Accumulates in fp32 whatever the storage
    dtype (the tiers store what the model computes; bf16 pages are widened here, one read)."""
    B, Tq, Hq, D = q.shape
    L, Hkv = k.shape[1], k.shape[2]
    g = Hq // Hkv
    if not causal and L > chunk and k.dtype != torch.float32:  # bf16/fp16 pages: widen and attend chunk by chunk
        return lse_merge([partial_attention(q, k[:, i:i + chunk], v[:, i:i + chunk], scale, chunk=chunk)
                          for i in range(0, L, chunk)])
    if L == 0:
        return q.new_zeros(B, Tq, Hq, D, dtype=torch.float32), q.new_full((B, Hq, Tq), float("-inf"),
                                                                           dtype=torch.float32)
    # query heads of one KV head side by side: (B, Hkv, g*Tq, D) against (B, Hkv, L, D); one batched matmul
    qf = q.float().view(B, Tq, Hkv, g, D).permute(0, 2, 3, 1, 4).reshape(B, Hkv, g * Tq, D)
    kf = k.float().transpose(1, 2)  # (B, Hkv, L, D)
    vf = v.float().transpose(1, 2)
    s = torch.matmul(qf, kf.transpose(-1, -2)) * scale  # (B, Hkv, g*Tq, L)
    if causal and Tq > 1:
        t = torch.arange(Tq, device=q.device).repeat(g)  # (g*Tq,) query index of each row
        allowed = torch.arange(L, device=q.device)[None, :] <= (L - Tq + t)[:, None]  # (g*Tq, L)
        s = s.masked_fill(~allowed, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)  # (B, Hkv, g*Tq)
    p = torch.exp(s - lse[..., None])
    o = torch.matmul(p, vf)  # (B, Hkv, g*Tq, D)
    o = o.view(B, Hkv, g, Tq, D).permute(0, 3, 1, 2, 4).reshape(B, Tq, Hq, D)
    lse = lse.view(B, Hkv, g, Tq).reshape(B, Hq, Tq)
    return o, lse


def lse_merge(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge partial attentions [(out (B, Tq, Hq, D), lse (B, Hq, Tq)), ...] exactly. A part with lse = -inf (an
    empty tier) weighs nothing. Returns (out fp32, lse fp32)."""
    if not parts:
        raise ValueError("lse_merge needs at least one partial attention")
    dev = parts[0][0].device
    lses = torch.stack([lse.to(dev, torch.float32) for _, lse in parts])  # (P, B, Hq, Tq)
    m = lses.max(dim=0).values
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))  # all-empty rows: weights 0, not NaN
    w = torch.exp(lses - m)  # (P, B, Hq, Tq)
    tot = w.sum(dim=0)
    out = sum(o.to(dev, torch.float32) * (wi / tot.clamp_min(1e-38)).transpose(1, 2)[..., None]
              for (o, _), wi in zip(parts, w, strict=True))  # (B, Tq, Hq, D)
    return out, m + torch.log(tot)
