"""Decoding attention's definition in plain PyTorch: a few new query tokens against a (paged) KV cache.

q: (B, Tq, Hq, D) with Tq from 1 (decode) to 16 (speculative verification); the cache holds L_b tokens for
batch row b (new tokens already appended). Contiguous caches are (B, S, Hkv, D); paged caches are
(num_pages, page_size, Hkv, D) with block_table (B, max_pages) naming the page of each page_size-token span.
Causal: query token t of Tq sees keys c <= L_b - Tq + t (the new tokens are the last Tq of the cache).

HBM traffic per batch row, elements: read K and V of L_b tokens (2 L_b Hkv D), q and o (2 Tq Hq D): decoding is
bound by reading the cache once.
"""

from __future__ import annotations

import math

import torch

from ..flash.reference import attention_ref


def gather_cache(cache: torch.Tensor, b: int, L: int, block_table: torch.Tensor | None) -> torch.Tensor:
    """The first L tokens of batch row b as (L, Hkv, D), from a contiguous (B, S, Hkv, D) cache or a paged one
    (num_pages, page_size, Hkv, D) through `block_table`.

    Examples:
        >>> pages = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 2, 1, 1)   # page p holds the value p
        >>> gather_cache(pages, 0, 3, torch.tensor([[2, 0]])).flatten().tolist()
        [2.0, 2.0, 0.0]
    """
    if block_table is None:
        return cache[b, :L]
    page = cache.shape[1]
    pos = torch.arange(L, device=cache.device)
    pages = block_table[b, pos // page].long()
    return cache[pages, pos % page]


def decode_ref(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, seqlens: torch.Tensor,
               block_table: torch.Tensor | None = None, softmax_scale: float | None = None,
               causal: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns out (B, Tq, Hq, D) in q's dtype and lse (B, Hq, Tq) fp32. seqlens counts the tokens in the cache.

    Examples:
        >>> q = torch.randn(2, 1, 4, 8); kc = torch.randn(2, 16, 2, 8); vc = torch.randn(2, 16, 2, 8)
        >>> out, lse = decode_ref(q, kc, vc, torch.tensor([5, 16]))
        >>> out.shape, lse.shape
        (torch.Size([2, 1, 4, 8]), torch.Size([2, 4, 1]))
    """
    B, Tq, Hq, D = q.shape
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(D)
    outs, lses = [], []
    for b in range(B):
        L = int(seqlens[b])
        k = gather_cache(k_cache, b, L, block_table)[None]  # (1, L, Hkv, D)
        v = gather_cache(v_cache, b, L, block_table)[None]
        if L == 0:
            outs.append(torch.zeros_like(q[b:b + 1]))
            lses.append(torch.full((1, Hq, Tq), float("-inf"), device=q.device))
            continue
        o, lse = attention_ref(q[b:b + 1], k, v, causal=causal, softmax_scale=scale)
        outs.append(o)
        lses.append(lse)
    return torch.cat(outs), torch.cat(lses)
