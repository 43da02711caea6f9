"""FlashAttention's definition in plain PyTorch: the readable reference every kernel is checked against.

q: (B, Tq, Hq, D); k, v: (B, Tk, Hkv, D) with Hq a multiple of Hkv (GQA/MQA).
Causal masks are aligned bottom-right (query row r sees keys c <= r + Tk - Tq), as flash-attn does, so a
query block appended to a KV cache attends to the whole cache. A row that sees no key outputs zeros
and has LSE = -inf.

HBM traffic if run as written, per (batch, head), elements (n = Tq, m = Tk, d = D):
    s = q @ k^T          # read nd + md, write nm
    s = masked_fill(s)   # read nm, write nm (causal only)
    p = softmax(s)       # read nm, write nm
    o = p @ v            # read nm + md, write nd
    total: 2nd + 2md + 4nm (6nm causal), the quadratic term is what FlashAttention removes.
"""

from __future__ import annotations

import math

import torch


def causal_mask(Tq: int, Tk: int, device=None) -> torch.Tensor:
    """(Tq, Tk) bool, True where query row r may see key c: c <= r + Tk - Tq."""
    r = torch.arange(Tq, device=device)[:, None]
    c = torch.arange(Tk, device=device)[None, :]
    return c <= r + (Tk - Tq)


def attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                  softmax_scale: float | None = None, upcast: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (out (B, Tq, Hq, D) in q's dtype, lse (B, Hq, Tq) fp32).

    upcast=True computes in fp32 (fp64 stays fp64): the reference. upcast=False computes in the inputs'
    own precision: the "plain PyTorch" baseline whose error sets the tolerance rule.
    """
    B, Tq, Hq, D = q.shape
    Tk, Hkv = k.shape[1], k.shape[2]
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(D)
    dtype_out = q.dtype
    if upcast and q.dtype in (torch.float16, torch.bfloat16):
        q, k, v = q.float(), k.float(), v.float()
    if Hq != Hkv:  # every KV head serves Hq // Hkv query heads
        k = k.repeat_interleave(Hq // Hkv, dim=2)
        v = v.repeat_interleave(Hq // Hkv, dim=2)
    s = torch.einsum("bqhd,bkhd->bhqk", q, k) * scale  # (B, Hq, Tq, Tk)
    if causal:
        s = s.masked_fill(~causal_mask(Tq, Tk, q.device), float("-inf"))
    lse = torch.logsumexp(s.float(), dim=-1)  # (B, Hq, Tq); -inf on rows that see no key
    p = torch.softmax(s, dim=-1)
    p = torch.nan_to_num(p, nan=0.0)  # empty rows: softmax of all -inf is NaN; define it as 0
    o = torch.einsum("bhqk,bkhd->bqhd", p.to(v.dtype), v)  # (B, Tq, Hq, D)
    return o.to(dtype_out), lse
