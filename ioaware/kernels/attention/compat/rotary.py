"""Rotary position embedding as flash-attn's kvcache call applies it: in PyTorch, before the attention kernel.

cos, sin: (seqlen_ro, rotary_dim / 2); the first rotary_dim features of each head are rotated, the rest pass
through. Interleaved (GPT-J) pairs features (0, 1), (2, 3), ...; non-interleaved (GPT-NeoX) pairs i with
i + rotary_dim / 2. The rotation runs in fp32 and the result is cast back to x's dtype, so a bf16/fp16 input is
rounded once, as a fused kernel would round it.
"""

from __future__ import annotations

import torch


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor,
                 interleaved: bool) -> torch.Tensor:
    """x (B, T, H, D) rotated at positions (B, T) (int64 row indices into cos and sin). Returns a new tensor.

    cos, sin: (seqlen_ro, rotary_dim / 2); the first rotary_dim features rotate, pairs (2i, 2i+1) when interleaved
    (GPT-J), else (i, i + rotary_dim/2) (GPT-NeoX); the rest pass through.

    Examples:
        >>> import torch
        >>> from ioaware.kernels.attention.compat import apply_rotary
        >>> x = torch.randn(1, 3, 2, 8); ang = torch.rand(16, 2)
        >>> pos = torch.arange(3)[None]
        >>> y = apply_rotary(x, ang.cos(), ang.sin(), pos, interleaved=False)
        >>> torch.allclose(y[..., :4].norm(dim=-1), x[..., :4].norm(dim=-1)), torch.equal(y[..., 4:], x[..., 4:])
        (True, True)
    """
    rd = 2 * cos.shape[1]
    c = cos[positions].float()[:, :, None, :]  # (B, T, 1, rd/2)
    s = sin[positions].float()[:, :, None, :]
    xr = x[..., :rd].float()
    if interleaved:
        x1, x2 = xr[..., 0::2], xr[..., 1::2]
        rot = torch.stack((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1).flatten(-2)
    else:
        x1, x2 = xr[..., : rd // 2], xr[..., rd // 2:]
        rot = torch.cat((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1)
    return torch.cat((rot.to(x.dtype), x[..., rd:]), dim=-1)
