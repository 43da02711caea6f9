"""flash-attn 2's public functions (`flash_attn.flash_attn_interface`) on ioaware's kernels.

Same names, same positional order, same defaults, same return conventions as flash-attn 2.x, so code written for
flash-attn runs unchanged after `from ioaware.flash_attn_interface import flash_attn_func` (or the other six).
Differences, each a superset: fp32 inputs are accepted, any head_dim up to 256 (flash-attn pads to a multiple of
8 itself, invisibly), and the varlen functions take a paged KV cache (`block_table`) by gathering it. What we cannot
do raises a one-line `ioaware.UnsupportedError` naming the argument.

flash-attn's semantics that the translation keeps:
- causal masks are bottom-right aligned; with causal=True the window's right side is 0 whatever was passed;
- window_size (left, right), -1 (any negative) = unbounded on that side;
- return_attn_probs=True returns (out, softmax_lse, S_dmask); S_dmask holds probabilities only when dropout_p > 0
  (flash-attn returns an empty tensor otherwise, and so do we): the normalised probabilities, negated where the
  forward dropped them, (batch, nheads, seqlen_q, seqlen_k) without flash-attn's padding to multiples of 128
  (varlen: (batch, nheads, max_seqlen_q, max_seqlen_k), each sequence top-left). Rebuilt for testing (probs.py).
"""

from __future__ import annotations

from typing import TypeAlias

import torch

from ....errors import DeviceError, ShapeError
from ..flash import flash_attn, flash_attn_varlen
from .probs import dropout_probs, dropout_probs_varlen

# out, or (out, softmax_lse, S_dmask) with return_attn_probs=True: flash-attn's return convention
AttnOutput: TypeAlias = torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _window(op: str, causal: bool, window_size: tuple[int, int]) -> tuple[int, int]:
    """flash-attn's window convention as ours: any negative side is unbounded (-1); causal forces right = 0, which
    our flash_attn sets itself when the right side is -1 (it rejects an explicit right > 0 with causal)."""
    try:
        wl, wr = (int(w) for w in window_size)
    except (TypeError, ValueError):
        raise ValueError(f"{op}: window_size must be a pair of ints (left, right), got {window_size!r}") from None
    wl, wr = max(wl, -1), max(wr, -1)
    return (wl, -1) if causal else (wl, wr)


def _seed(return_attn_probs: bool, dropout_p: float) -> int | None:
    """A seed we know, so S_dmask can redraw the forward's keep mask; None lets flash_attn draw its own."""
    if return_attn_probs and dropout_p > 0:
        return int(torch.randint(0, 2**62, (1,)).item())
    return None


def _scale(softmax_scale: float | None, q: torch.Tensor) -> float:
    return float(softmax_scale) if softmax_scale is not None else q.shape[-1] ** -0.5


def _dense(op, q, k, v, dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes, deterministic,
           return_attn_probs):
    window = _window(op, causal, window_size)
    seed = _seed(return_attn_probs, dropout_p)
    out, lse = flash_attn(q, k, v, causal=bool(causal), softmax_scale=softmax_scale, return_lse=True,
                          window_size=window, alibi_slopes=alibi_slopes, softcap=softcap, dropout_p=dropout_p,
                          seed=seed, deterministic=bool(deterministic))
    if not return_attn_probs:
        return out
    # flash-attn returns an empty S_dmask when dropout is off (return_softmax = return_attn_probs and dropout_p > 0)
    if dropout_p == 0:
        return out, lse, q.new_empty((0,))
    assert seed is not None  # _seed draws one whenever probabilities come with dropout
    s_dmask = dropout_probs(q.detach(), k.detach(), lse, _scale(softmax_scale, q), bool(causal), window, alibi_slopes,
                            float(softcap), float(dropout_p), seed)
    return out, lse, s_dmask


def _varlen(op, q, k, v, cu_q, cu_k, max_q, max_k, dropout_p, softmax_scale, causal, window_size, softcap,
            alibi_slopes, deterministic, return_attn_probs):
    window = _window(op, causal, window_size)
    seed = _seed(return_attn_probs, dropout_p)
    out, lse = flash_attn_varlen(q, k, v, cu_q, cu_k, max_q, max_k, causal=bool(causal), softmax_scale=softmax_scale,
                                 return_lse=True, window_size=window, alibi_slopes=alibi_slopes, softcap=softcap,
                                 dropout_p=dropout_p, seed=seed, deterministic=bool(deterministic))
    if not return_attn_probs:
        return out
    if dropout_p == 0:
        return out, lse, q.new_empty((0,))
    assert seed is not None  # as in _dense
    s_dmask = dropout_probs_varlen(q.detach(), k.detach(), lse, cu_q, cu_k, int(max_q), int(max_k),
                                   _scale(softmax_scale, q), bool(causal), window, alibi_slopes, float(softcap),
                                   float(dropout_p), seed)
    return out, lse, s_dmask


def _unpack(op: str, packed: torch.Tensor, n: int, dims: int, what: str) -> tuple[torch.Tensor, ...]:
    if not isinstance(packed, torch.Tensor):
        raise TypeError(f"{op}: {what} must be a torch.Tensor, got {type(packed).__name__}")
    axis = dims - 3  # the packing axis sits just before (heads, head_dim)
    if packed.dim() != dims or packed.shape[axis] != n:
        layout = "(batch, seqlen, " if dims == 5 else "(total, "
        raise ShapeError(f"{op}: {what} must be {dims}-D {layout}{n}, heads, head_dim), got shape "
                         f"{tuple(packed.shape)}")
    return packed.unbind(axis)


def flash_attn_func(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0,
                    softmax_scale: float | None = None, causal: bool = False, window_size: tuple[int, int] = (-1, -1),
                    softcap: float = 0.0, alibi_slopes: torch.Tensor | None = None, deterministic: bool = False,
                    return_attn_probs: bool = False) -> AttnOutput:
    """flash-attn 2's `flash_attn_func`: q (batch, seqlen_q, nheads, headdim), k and v (batch, seqlen_k, nheads_k,
    headdim), nheads a multiple of nheads_k. Returns out, or (out, softmax_lse (batch, nheads, seqlen_q), S_dmask)
    with return_attn_probs=True. Differentiable (ioaware's Triton backward).

    Examples:
        >>> import torch
        >>> from ioaware.flash_attn_interface import flash_attn_func
        >>> q = torch.randn(1, 9, 4, 16); k = v = torch.randn(1, 9, 2, 16)
        >>> flash_attn_func(q, k, v, 0.0, None, True).shape
        torch.Size([1, 9, 4, 16])
    """
    op = "flash_attn_func"
    return _dense(op, q, k, v, dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes, deterministic,
                  return_attn_probs)


def flash_attn_qkvpacked_func(qkv: torch.Tensor, dropout_p: float = 0.0, softmax_scale: float | None = None,
                              causal: bool = False, window_size: tuple[int, int] = (-1, -1), softcap: float = 0.0,
                              alibi_slopes: torch.Tensor | None = None, deterministic: bool = False,
                              return_attn_probs: bool = False) -> AttnOutput:
    """flash-attn 2's `flash_attn_qkvpacked_func`: qkv (batch, seqlen, 3, nheads, headdim); gradients flow back
    into qkv. Returns as flash_attn_func.

    Examples:
        >>> import torch
        >>> from ioaware.flash_attn_interface import flash_attn_qkvpacked_func
        >>> flash_attn_qkvpacked_func(torch.randn(2, 7, 3, 2, 8), causal=True).shape
        torch.Size([2, 7, 2, 8])
    """
    op = "flash_attn_qkvpacked_func"
    q, k, v = _unpack(op, qkv, 3, 5, "qkv")
    return _dense(op, q, k, v, dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes, deterministic,
                  return_attn_probs)


def flash_attn_kvpacked_func(q: torch.Tensor, kv: torch.Tensor, dropout_p: float = 0.0,
                             softmax_scale: float | None = None, causal: bool = False,
                             window_size: tuple[int, int] = (-1, -1), softcap: float = 0.0,
                             alibi_slopes: torch.Tensor | None = None, deterministic: bool = False,
                             return_attn_probs: bool = False) -> AttnOutput:
    """flash-attn 2's `flash_attn_kvpacked_func`: q (batch, seqlen_q, nheads, headdim), kv (batch, seqlen_k, 2,
    nheads_k, headdim). Returns as flash_attn_func.

    Examples:
        >>> import torch
        >>> from ioaware.flash_attn_interface import flash_attn_kvpacked_func
        >>> flash_attn_kvpacked_func(torch.randn(1, 5, 4, 8), torch.randn(1, 6, 2, 2, 8)).shape
        torch.Size([1, 5, 4, 8])
    """
    op = "flash_attn_kvpacked_func"
    k, v = _unpack(op, kv, 2, 5, "kv")
    return _dense(op, q, k, v, dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes, deterministic,
                  return_attn_probs)


def _gather_paged(op: str, k: torch.Tensor, v: torch.Tensor, cu_seqlens_k: torch.Tensor,
                  block_table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed (total_k, nheads_k, headdim) keys and values of a paged cache: sequence b's token t lives at
    k[block_table[b, t // page], t % page]. Reads the offsets on the host (one sync on a GPU), which also lets
    every index be checked before anything is read."""
    if not isinstance(block_table, torch.Tensor) or block_table.dtype not in (torch.int32, torch.int64) \
            or block_table.dim() != 2:
        raise ShapeError(f"{op}: block_table must be a 2-D int32 tensor (batch, max_num_blocks_per_seq), got "
                         f"{getattr(block_table, 'dtype', type(block_table).__name__)} "
                         f"{tuple(getattr(block_table, 'shape', ()))}")
    for name, t in (("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise ShapeError(f"{op}: with block_table, {name} must be 4-D (num_blocks, page_block_size, nheads_k, "
                             f"headdim), got {tuple(getattr(t, 'shape', ()))}")
    if k.shape != v.shape:
        raise ShapeError(f"{op}: k {tuple(k.shape)} and v {tuple(v.shape)} differ")
    if not isinstance(cu_seqlens_k, torch.Tensor) or cu_seqlens_k.dim() != 1:
        raise ShapeError(f"{op}: cu_seqlens_k must be a 1-D int32 tensor of batch + 1 offsets")
    B = cu_seqlens_k.shape[0] - 1
    if block_table.shape[0] != B:
        raise ShapeError(f"{op}: block_table has {block_table.shape[0]} rows, cu_seqlens_k gives batch {B}")
    if block_table.device != k.device or cu_seqlens_k.device != k.device:
        raise DeviceError(f"{op}: block_table, cu_seqlens_k and k must be on one device")
    n_pages, page = k.shape[:2]
    lens = (cu_seqlens_k[1:] - cu_seqlens_k[:-1]).long()
    cap = block_table.shape[1] * page
    if B and (int(lens.min()) < 0 or int(lens.max()) > cap):
        raise ShapeError(f"{op}: a sequence of cu_seqlens_k has {int(lens.max())} tokens (or fewer than 0); "
                         f"block_table addresses at most {cap} ({block_table.shape[1]} pages of {page})")
    used = torch.arange(block_table.shape[1], device=k.device)[None, :] < (-(-lens // page))[:, None]
    if bool((used & ((block_table < 0) | (block_table >= n_pages))).any()):
        raise ShapeError(f"{op}: block_table names a page outside 0..{n_pages - 1} for a token that is read")
    total = int(lens.sum())
    b_idx = torch.repeat_interleave(torch.arange(B, device=k.device), lens, output_size=total)
    pos = torch.arange(total, device=k.device) - cu_seqlens_k.long()[b_idx]
    pages = block_table.long()[b_idx, pos // page]
    return k[pages, pos % page], v[pages, pos % page]


def flash_attn_varlen_func(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
                           cu_seqlens_k: torch.Tensor, max_seqlen_q: int, max_seqlen_k: int, dropout_p: float = 0.0,
                           softmax_scale: float | None = None, causal: bool = False,
                           window_size: tuple[int, int] = (-1, -1), softcap: float = 0.0,
                           alibi_slopes: torch.Tensor | None = None, deterministic: bool = False,
                           return_attn_probs: bool = False, block_table: torch.Tensor | None = None) -> AttnOutput:
    """flash-attn 2's `flash_attn_varlen_func` on packed sequences: q (total_q, nheads, headdim), k and v (total_k,
    nheads_k, headdim), cu_seqlens_* int32 (batch + 1,). softmax_lse is (nheads, total_q). With block_table
    (batch, max_num_blocks_per_seq), k and v are a paged cache (num_blocks, page_block_size, nheads_k, headdim) and
    sequence b's keys are its first cu_seqlens_k[b+1] - cu_seqlens_k[b] tokens (gathered, then attended).

    Examples:
        >>> import torch
        >>> from ioaware.flash_attn_interface import flash_attn_varlen_func
        >>> cu = torch.tensor([0, 3, 8], dtype=torch.int32); q = k = v = torch.randn(8, 2, 16)
        >>> flash_attn_varlen_func(q, k, v, cu, cu, 5, 5, causal=True).shape
        torch.Size([8, 2, 16])
    """
    op = "flash_attn_varlen_func"
    if block_table is not None:
        k, v = _gather_paged(op, k, v, cu_seqlens_k, block_table)
    return _varlen(op, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p, softmax_scale,
                   causal, window_size, softcap, alibi_slopes, deterministic, return_attn_probs)


def flash_attn_varlen_qkvpacked_func(qkv: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int,
                                     dropout_p: float = 0.0, softmax_scale: float | None = None, causal: bool = False,
                                     window_size: tuple[int, int] = (-1, -1), softcap: float = 0.0,
                                     alibi_slopes: torch.Tensor | None = None, deterministic: bool = False,
                                     return_attn_probs: bool = False) -> AttnOutput:
    """flash-attn 2's `flash_attn_varlen_qkvpacked_func`: qkv (total, 3, nheads, headdim), one cu_seqlens for
    queries and keys. Returns as flash_attn_varlen_func.

    Examples:
        >>> import torch
        >>> from ioaware.flash_attn_interface import flash_attn_varlen_qkvpacked_func
        >>> cu = torch.tensor([0, 4, 9], dtype=torch.int32)
        >>> flash_attn_varlen_qkvpacked_func(torch.randn(9, 3, 2, 8), cu, 5, causal=True).shape
        torch.Size([9, 2, 8])
    """
    op = "flash_attn_varlen_qkvpacked_func"
    q, k, v = _unpack(op, qkv, 3, 4, "qkv")
    return _varlen(op, q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, dropout_p, softmax_scale, causal,
                   window_size, softcap, alibi_slopes, deterministic, return_attn_probs)


def flash_attn_varlen_kvpacked_func(q: torch.Tensor, kv: torch.Tensor, cu_seqlens_q: torch.Tensor,
                                    cu_seqlens_k: torch.Tensor, max_seqlen_q: int, max_seqlen_k: int,
                                    dropout_p: float = 0.0, softmax_scale: float | None = None, causal: bool = False,
                                    window_size: tuple[int, int] = (-1, -1), softcap: float = 0.0,
                                    alibi_slopes: torch.Tensor | None = None, deterministic: bool = False,
                                    return_attn_probs: bool = False) -> AttnOutput:
    """flash-attn 2's `flash_attn_varlen_kvpacked_func`: q (total_q, nheads, headdim), kv (total_k, 2, nheads_k,
    headdim). Returns as flash_attn_varlen_func.

    Examples:
        >>> import torch
        >>> from ioaware.flash_attn_interface import flash_attn_varlen_kvpacked_func
        >>> cu = torch.tensor([0, 2, 5], dtype=torch.int32)
        >>> flash_attn_varlen_kvpacked_func(torch.randn(5, 4, 8), torch.randn(5, 2, 2, 8), cu, cu, 3, 3).shape
        torch.Size([5, 4, 8])
    """
    op = "flash_attn_varlen_kvpacked_func"
    k, v = _unpack(op, kv, 2, 4, "kv")
    return _varlen(op, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p, softmax_scale,
                   causal, window_size, softcap, alibi_slopes, deterministic, return_attn_probs)
