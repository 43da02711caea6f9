"""`ioaware.flash_decode`: attention of a few new tokens against a KV cache, contiguous or paged.

The cache is updated in place when k_new / v_new are given (written at positions cache_seqlens ..
cache_seqlens + Tnew - 1); attention then covers cache_seqlens + Tnew tokens. Inference only (no autograd).
"""

from __future__ import annotations

import math
from typing import Literal, overload

import torch

from ....errors import ShapeError, UnsupportedError
from ..._dispatch import backend_for, load_kernel_module, record
from ..._validate import check_dtypes_and_device
from .reference import decode_ref

_KERNEL = "ioaware.kernels.attention.decode.kernel"
# unified-max splits that fell back to the exact online softmax, last call
stats: dict[str, int | torch.Tensor] = {"fallbacks": 0}


def _check(q, k_cache, v_cache, cache_seqlens, block_table, k_new, v_new):
    for name, t in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise ShapeError(f"flash_decode: {name} must be a 4-D tensor, got "
                             f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
    check_dtypes_and_device("flash_decode", {"q": q, "k_cache": k_cache, "v_cache": v_cache},
                            also_on_device={"cache_seqlens": cache_seqlens})
    B, Tq, Hq, D = q.shape
    if k_cache.shape != v_cache.shape:
        raise ShapeError(f"flash_decode: k_cache {tuple(k_cache.shape)} and v_cache {tuple(v_cache.shape)} differ")
    _, S, Hkv, Dk = k_cache.shape
    if Dk != D:
        raise ShapeError(f"flash_decode: head dims differ: q has {D}, the cache {Dk}")
    if not 1 <= D <= 256:
        raise UnsupportedError(f"flash_decode: head_dim {D} is not supported (1..256)")
    if not 1 <= Tq <= 16:
        raise UnsupportedError(f"flash_decode: {Tq} query tokens; flash_decode takes 1 to 16 (use flash_attn for "
                               "prefill)")
    if Hq % Hkv:
        raise ShapeError(f"flash_decode: query heads ({Hq}) must be a multiple of KV heads ({Hkv})")
    if cache_seqlens.shape != (B,) or cache_seqlens.dtype not in (torch.int32, torch.int64):
        raise ShapeError(f"flash_decode: cache_seqlens must be an int32/int64 tensor of shape ({B},), got "
                         f"{tuple(cache_seqlens.shape)} {cache_seqlens.dtype}")
    if block_table is None and k_cache.shape[0] != B:
        raise ShapeError(f"flash_decode: a contiguous cache needs batch {B} in dim 0, got {k_cache.shape[0]}")
    if block_table is not None:
        if block_table.dim() != 2 or block_table.shape[0] != B or block_table.dtype not in (torch.int32, torch.int64):
            raise ShapeError(f"flash_decode: block_table must be int32/int64 (B={B}, max_pages), got "
                             f"{tuple(block_table.shape)} {block_table.dtype}")
        if not 1 <= S <= 256:
            raise UnsupportedError(f"flash_decode: page size {S} is not supported (1..256)")
    if (k_new is None) != (v_new is None):
        raise ShapeError("flash_decode: give both k_new and v_new, or neither")
    if k_new is not None and (k_new.shape != v_new.shape or k_new.shape[0] != B or k_new.shape[2:] != (Hkv, D)):
        raise ShapeError(f"flash_decode: k_new/v_new must be (B={B}, Tnew, Hkv={Hkv}, D={D}), got "
                         f"{tuple(k_new.shape)} and {tuple(v_new.shape)}")


def _capacity(k_cache, block_table):
    if block_table is None:
        return k_cache.shape[1]
    return block_table.shape[1] * k_cache.shape[1]


def _append(cache: torch.Tensor, new: torch.Tensor, seqlens: torch.Tensor, block_table: torch.Tensor | None) -> None:
    """Write new (B, Tnew, Hkv, D) at positions seqlens[b] + t of each row, in place."""
    B, Tn = new.shape[:2]
    pos = seqlens.long()[:, None] + torch.arange(Tn, device=new.device)[None, :]  # (B, Tn)
    if block_table is None:
        cache[torch.arange(B, device=new.device)[:, None], pos] = new.to(cache.dtype)
    else:
        page = cache.shape[1]
        pages = torch.gather(block_table.long(), 1, pos // page)
        cache[pages, pos % page] = new.to(cache.dtype)


def _check_values(k_cache: torch.Tensor, cache_seqlens: torch.Tensor, block_table: torch.Tensor | None, Tnew: int,
                  cap: int, B: int) -> int:
    lens = cache_seqlens.detach()
    if int(lens.min()) < 0 or int(lens.max()) + Tnew > cap:
        raise ShapeError(f"flash_decode: cache_seqlens + Tnew exceeds the cache capacity {cap} (or is negative): "
                         f"max length {int(lens.max()) + Tnew}")
    if block_table is not None:
        pages_needed = -(-(lens + Tnew) // k_cache.shape[1])
        for b in range(B):
            used = block_table[b, : int(pages_needed[b])]
            if len(used) and (int(used.min()) < 0 or int(used.max()) >= k_cache.shape[0]):
                raise ShapeError(f"flash_decode: block_table row {b} names a page outside 0..{k_cache.shape[0] - 1}")
    return int(lens.max()) + Tnew


# A custom op, so torch.compile traces a decode step through it (one opaque node that mutates the cache)
@torch.library.custom_op("ioaware::flash_decode", mutates_args=("k_cache", "v_cache"))
def _flash_decode_op(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, cache_seqlens: torch.Tensor,
                     block_table: torch.Tensor | None, k_new: torch.Tensor | None, v_new: torch.Tensor | None,
                     scale: float, causal: bool, unified_max: float | None, max_len: int,
                     num_splits: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns out, lse and the unified-max fallback count ((1,) int32; (0,) when unified_max is None)."""
    Tnew = 0 if k_new is None else k_new.shape[1]
    backend = backend_for(q.device.type)
    record("flash_decode", backend)
    if backend == "reference":
        if k_new is not None:
            assert v_new is not None  # _check: both or neither
            _append(k_cache, k_new, cache_seqlens, block_table)
            _append(v_cache, v_new, cache_seqlens, block_table)
        seqlens = (cache_seqlens + Tnew).to(torch.int32)
        out, lse = decode_ref(q, k_cache, v_cache, seqlens, block_table, scale, causal)
        return out.contiguous(), lse.contiguous(), _no_count(q, unified_max)
    # two launches in all (append, split; a combine only when the keys are split): a decode step of a small
    # model is launch-bound, so every small kernel the step avoids is time saved
    kern = load_kernel_module(_KERNEL)
    if k_new is not None:
        kern.append_kv(k_cache, v_cache, k_new, v_new, cache_seqlens, block_table)
    out, lse, fb = kern.flash_decode_fwd(q, k_cache, v_cache, cache_seqlens, block_table, scale, causal,
                                         unified_max, max_len, num_splits, tnew=Tnew)
    return out, lse, fb if unified_max is not None else _no_count(q, None)


def _no_count(q: torch.Tensor, unified_max: float | None) -> torch.Tensor:
    return torch.zeros(1 if unified_max is not None else 0, dtype=torch.int32, device=q.device)


@_flash_decode_op.register_fake
def _(q, k_cache, v_cache, cache_seqlens, block_table, k_new, v_new, scale, causal, unified_max, max_len,
      num_splits):
    B, Tq, Hq, _ = q.shape
    return (torch.empty_like(q), q.new_empty((B, Hq, Tq), dtype=torch.float32),
            q.new_empty((1 if unified_max is not None else 0,), dtype=torch.int32))


# Overloads so a type checker knows the result from `return_lse` (a tensor, or (out, lse)); return_lse=True is
# written as a keyword in practice, so the overloads take it as one.
@overload
def flash_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, cache_seqlens: torch.Tensor,
                 block_table: torch.Tensor | None = ..., k_new: torch.Tensor | None = ...,
                 v_new: torch.Tensor | None = ..., softmax_scale: float | None = ..., causal: bool = ...,
                 unified_max: float | None = ..., num_splits: int | None = ...,
                 return_lse: Literal[False] = ...) -> torch.Tensor: ...
@overload
def flash_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, cache_seqlens: torch.Tensor,
                 block_table: torch.Tensor | None = ..., k_new: torch.Tensor | None = ...,
                 v_new: torch.Tensor | None = ..., softmax_scale: float | None = ..., causal: bool = ...,
                 unified_max: float | None = ..., num_splits: int | None = ..., *,
                 return_lse: Literal[True]) -> tuple[torch.Tensor, torch.Tensor]: ...
@overload
def flash_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, cache_seqlens: torch.Tensor,
                 block_table: torch.Tensor | None = ..., k_new: torch.Tensor | None = ...,
                 v_new: torch.Tensor | None = ..., softmax_scale: float | None = ..., causal: bool = ...,
                 unified_max: float | None = ..., num_splits: int | None = ..., *,
                 return_lse: bool) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]: ...
def flash_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, cache_seqlens: torch.Tensor,
                 block_table: torch.Tensor | None = None, k_new: torch.Tensor | None = None,
                 v_new: torch.Tensor | None = None, softmax_scale: float | None = None, causal: bool = True,
                 unified_max: float | None = None, num_splits: int | None = None,
                 return_lse: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Attention of q (B, Tq <= 16, Hq, D) against a KV cache, split over the key sequence.

    Args:
        k_cache, v_cache: (B, S, Hkv, D) contiguous, or (num_pages, page_size, Hkv, D) with block_table
            (B, max_pages) giving each row's pages in order.
        cache_seqlens: (B,) tokens already in the cache per row.
        k_new, v_new: (B, Tnew, Hkv, D) appended in place before attending (Tnew is usually Tq).
        causal: query token t sees keys up to position L - Tq + t (L = cache_seqlens + Tnew).
        unified_max: FlashDecoding++'s fixed max phi (natural-log units of the scaled scores), e.g. from
            calibration; splits whose scores leave the safe range around it are recomputed exactly
            (`ioaware.kernels.attention.decode.interface.stats["fallbacks"]` counts them).
        num_splits: how many programs share one row's keys (default: enough to fill the GPU).

    Examples:
        >>> import torch, ioaware
        >>> kc = torch.zeros(2, 64, 2, 32); vc = torch.zeros(2, 64, 2, 32)
        >>> q = torch.randn(2, 1, 4, 32); lens = torch.tensor([10, 3], dtype=torch.int32)
        >>> out = ioaware.flash_decode(q, kc, vc, lens, k_new=torch.randn(2, 1, 2, 32), v_new=torch.randn(2, 1, 2, 32))
        >>> out.shape
        torch.Size([2, 1, 4, 32])
    """
    _check(q, k_cache, v_cache, cache_seqlens, block_table, k_new, v_new)
    Tnew = 0 if k_new is None else k_new.shape[1]
    cap = _capacity(k_cache, block_table)
    # Values are checked where that costs no device sync (CPU tensors); on a GPU, reading cache_seqlens back
    # would stall every decoding step, so there the caller owns them (as with flash-attn's kvcache API).
    max_len = cap
    if q.device.type == "cpu" and not torch.compiler.is_compiling():  # a traced step cannot read values either
        max_len = _check_values(k_cache, cache_seqlens, block_table, Tnew, cap, q.shape[0])
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    q = q if q.stride(-1) == 1 else q.contiguous()
    out, lse, fb = _flash_decode_op(q, k_cache, v_cache, cache_seqlens, block_table, k_new, v_new, scale, causal,
                                    unified_max, max_len, num_splits)
    stats["fallbacks"] = fb if fb.numel() else 0
    return (out, lse) if return_lse else out
