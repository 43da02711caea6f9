"""S_dmask for return_attn_probs=True with dropout: the attention probabilities with the dropped entries negated,
flash-attn's testing convention ("negative means that location was dropped").

The kernels never hold the Tq x Tk matrix, so it is rebuilt here for testing: scores in fp32 with the same options,
normalised by the LSE the kernel returned, and the keep mask the forward drew: the Triton kernels' Philox stream
(`masked.dropout_keep_mask`, row ids as the kernels number them), or, on the PyTorch reference backend, torch's
generator seeded with the same seed and drawn in the same shape as the reference does. O(Tq x Tk) memory per call.
"""

from __future__ import annotations

import torch

from ..._dispatch import backend_for, load_kernel_module
from ..flash.reference import visible_mask

_MASKED = "ioaware.kernels.attention.flash.masked"


def _probs(q, k, lse, scale, causal, window, slopes, softcap):
    """One sequence: q (Tq, Hq, D), k (Tk, Hkv, D), lse (Hq, Tq) -> P (Hq, Tq, Tk) fp32, 0 where not visible."""
    Tq, Hq = q.shape[:2]
    Tk, Hkv = k.shape[:2]
    s = torch.einsum("qhd,khd->hqk", q.float(), k.float().repeat_interleave(Hq // Hkv, 1)) * scale
    if softcap > 0:
        s = softcap * torch.tanh(s / softcap)
    if slopes is not None:
        dist = (torch.arange(Tq, device=q.device)[:, None] + Tk - Tq - torch.arange(Tk, device=q.device)).abs()
        s = s - slopes.float()[:, None, None] * dist
    s = s.masked_fill(~visible_mask(Tq, Tk, causal, window, None, q.device), float("-inf"))
    return torch.exp(s - lse.float()[..., None]).nan_to_num(0.0)


def _keep(device: torch.device, shape: tuple[int, ...], rows: int, max_k: int, dropout_p: float,
          seed: int) -> torch.Tensor:
    if backend_for(device.type) == "reference":  # as the reference backend draws its mask
        g = torch.Generator(device).manual_seed(seed)
        return torch.rand(shape, generator=g, device=device) >= dropout_p
    return load_kernel_module(_MASKED).dropout_keep_mask(rows, max_k, max_k, dropout_p, seed, device).view(shape)


def _slopes(alibi, b):
    return None if alibi is None else (alibi[b] if alibi.dim() == 2 else alibi)


def dropout_probs(q: torch.Tensor, k: torch.Tensor, lse: torch.Tensor, scale: float, causal: bool,
                  window: tuple[int, int], alibi: torch.Tensor | None, softcap: float, dropout_p: float,
                  seed: int) -> torch.Tensor:
    """Batched: q (B, Tq, Hq, D), k (B, Tk, Hkv, D), lse (B, Hq, Tq) -> S_dmask (B, Hq, Tq, Tk) in q's dtype."""
    B, Tq, Hq = q.shape[:3]
    Tk = k.shape[1]
    keep = _keep(q.device, (B, Hq, Tq, Tk), B * Hq * Tq, Tk, dropout_p, seed)
    p = torch.stack([_probs(q[b], k[b], lse[b], scale, causal, window, _slopes(alibi, b), softcap) for b in range(B)])
    return torch.where(keep, p, -p).to(q.dtype)


def dropout_probs_varlen(q: torch.Tensor, k: torch.Tensor, lse: torch.Tensor, cu_q: torch.Tensor, cu_k: torch.Tensor,
                         max_q: int, max_k: int, scale: float, causal: bool, window: tuple[int, int],
                         alibi: torch.Tensor | None, softcap: float, dropout_p: float, seed: int) -> torch.Tensor:
    """Packed: q (total_q, Hq, D), k (total_k, Hkv, D), lse (Hq, total_q) -> S_dmask (B, Hq, max_q, max_k),
    sequence b in its top-left corner, zeros around it."""
    total_q, Hq = q.shape[:2]
    B = cu_q.shape[0] - 1
    keep = _keep(q.device, (Hq, total_q, max_k), Hq * total_q, max_k, dropout_p, seed)
    out = torch.zeros(B, Hq, max_q, max_k, dtype=q.dtype, device=q.device)
    for b in range(B):
        q0, q1, k0, k1 = int(cu_q[b]), int(cu_q[b + 1]), int(cu_k[b]), int(cu_k[b + 1])
        p = _probs(q[q0:q1], k[k0:k1], lse[:, q0:q1], scale, causal, window, _slopes(alibi, b), softcap)
        out[b, :, : q1 - q0, : k1 - k0] = torch.where(keep[:, q0:q1, : k1 - k0], p, -p).to(q.dtype)
    return out
