"""`NSAttention`: Native Sparse Attention (Yuan et al., arXiv:2502.11089) as a drop-in attention layer over ioaware.nsa.

x (B, T, d_model) -> q, k, v projections (GQA: n_kv_heads KV heads) -> ioaware.nsa with per-head gates
sigmoid(gate_proj(x)) and a learned compression of keys and values -> o_proj. The compression is NSA's MLP with an
intra-block position encoding, one per KV head, written as a residual on mean-pooling:

    phi(block) = mean(block) + W2 act(W1 flatten(block + pe) + b1)        block: (block_size, head_dim)

W2 starts at zero, so a new layer compresses by mean-pooling (the default of ioaware.nsa) and learns away from it;
starting from a random MLP made the compressed keys, and with them the block selection, noise at the start of
training. Positional encoding of q and k (RoPE) is the caller's: this layer has none.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..kernels.attention.sparse import nsa


class CompressionMLP(nn.Module):
    """phi: (B, Nc, block_size, H, D) -> (B, Nc, H, D), one MLP per head, with a learned position encoding.

    Examples:
        >>> import torch
        >>> phi = CompressionMLP(block_size=16, head_dim=8, heads=2)
        >>> phi(torch.randn(1, 3, 16, 2, 8)).shape
        torch.Size([1, 3, 2, 8])
    """

    def __init__(self, block_size: int, head_dim: int, heads: int, hidden: int | None = None):
        super().__init__()
        hidden = hidden or head_dim
        self.pe = nn.Parameter(torch.randn(block_size, heads, head_dim) * 0.02)  # intra-block position encoding
        self.w1 = nn.Parameter(torch.randn(heads, block_size * head_dim, hidden) / math.sqrt(block_size * head_dim))
        self.b1 = nn.Parameter(torch.zeros(heads, hidden))
        self.w2 = nn.Parameter(torch.zeros(heads, hidden, head_dim))  # zero: the layer starts as mean-pooling
        self.act = nn.GELU()

    def forward(self, blocks: torch.Tensor) -> torch.Tensor:
        """Compress each block of block_size tokens to one key (or value) per head."""
        B, nc, l, H, D = blocks.shape
        x = (blocks + self.pe.to(blocks.dtype)).permute(0, 1, 3, 2, 4).reshape(B, nc, H, l * D)
        h = self.act(torch.einsum("bnhi,hio->bnho", x, self.w1.to(x.dtype)) + self.b1.to(x.dtype))
        return blocks.mean(2) + torch.einsum("bnho,hod->bnhd", h, self.w2.to(x.dtype))


class NSAttention(nn.Module):
    """Native Sparse Attention layer: (B, T, d_model) -> (B, T, d_model).

    Args:
        d_model, n_heads, n_kv_heads, head_dim: widths; n_kv_heads < n_heads is GQA (default n_heads), head_dim
            defaults to d_model / n_heads;
        block_size, stride: compression blocks.
        select_size, select_blocks: selection blocks and how many each query attends (init_blocks first and
            local_blocks local ones always kept).
        window: sliding window.
        compress_hidden: the compression MLP's hidden width (default head_dim); causal.

    The defaults are NSA's (l = 32, d = 16, l' = 64, n = 16, w = 512).

    Examples:
        >>> import torch
        >>> attn = NSAttention(32, n_heads=4, n_kv_heads=1, block_size=16, select_size=16, select_blocks=3,
        ...                    window=16)
        >>> attn(torch.randn(1, 48, 32)).shape
        torch.Size([1, 48, 32])
    """

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int | None = None, head_dim: int | None = None, *,
                 block_size: int = 32, stride: int = 16, select_size: int = 64, select_blocks: int = 16,
                 window: int = 512, init_blocks: int = 1, local_blocks: int = 2, compress_hidden: int | None = None,
                 causal: bool = True, bias: bool = False, order: str = "auto"):
        super().__init__()
        n_kv_heads = n_kv_heads or n_heads
        if n_heads % n_kv_heads:
            raise ValueError(f"NSAttention: n_heads ({n_heads}) must be a multiple of n_kv_heads ({n_kv_heads})")
        head_dim = head_dim or d_model // n_heads
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
        self.nsa_args: dict[str, Any] = dict(block_size=block_size, stride=stride, select_size=select_size,
                             select_blocks=select_blocks, window=window, init_blocks=init_blocks,
                             local_blocks=local_blocks, causal=causal, order=order)
        self.q_proj = nn.Linear(d_model, n_heads * head_dim, bias=bias)
        self.k_proj = nn.Linear(d_model, n_kv_heads * head_dim, bias=bias)
        self.v_proj = nn.Linear(d_model, n_kv_heads * head_dim, bias=bias)
        self.gate_proj = nn.Linear(d_model, 3 * n_heads, bias=True)
        self.o_proj = nn.Linear(n_heads * head_dim, d_model, bias=bias)
        self.compress_k = CompressionMLP(block_size, head_dim, n_kv_heads, compress_hidden)
        self.compress_v = CompressionMLP(block_size, head_dim, n_kv_heads, compress_hidden)

    def forward(self, x: torch.Tensor,
                return_indices: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, d_model) -> y (B, T, d_model); with return_indices also the selected blocks
        (B, T, n_kv_heads, select_blocks), as ioaware.nsa returns them."""
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim)  # (B, T, Hq, D)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim)  # (B, T, Hkv, D)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim)
        g_cmp, g_slc, g_swa = torch.sigmoid(self.gate_proj(x)).to(q.dtype).chunk(3, dim=-1)  # (B, T, Hq) each
        args = dict(self.nsa_args)
        # a sequence shorter than select_blocks blocks keeps all of them (nsa() itself refuses n > blocks)
        n = min(args["select_blocks"], -(-T // args["select_size"]))
        args["init_blocks"] = min(args["init_blocks"], n)
        args["local_blocks"] = min(args["local_blocks"], n - args["init_blocks"])
        args["select_blocks"] = n
        o, idx = nsa(q, k, v, g_cmp.contiguous(), g_slc.contiguous(), g_swa.contiguous(),
                     compress=(self.compress_k, self.compress_v), return_indices=True, **args)
        y = self.o_proj(o.reshape(B, T, self.n_heads * self.head_dim))
        return (y, idx) if return_indices else y


__all__ = ["CompressionMLP", "NSAttention"]
