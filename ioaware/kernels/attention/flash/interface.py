"""`ioaware.flash_attn`: validation, autograd and dispatch for FlashAttention-2.

The forward and backward are registered as torch.library custom ops (`ioaware::flash_attn_fwd`,
`ioaware::flash_attn_bwd`), so autograd works and torch.compile traces around them without graph breaks. A forward
that needs neither (no input requires grad or grad mode is off, and nothing is tracing) calls the same body
directly: the custom op's dispatch costs tens of microseconds of host time per call, which a short kernel
(a sliding window's band, a sparse block mask) cannot hide (dev/attention/NOTES.md, runs S3-S4).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal, overload

import torch

from ....errors import DeviceError, DTypeError, ShapeError, UnsupportedError
from ..._dispatch import backend_for, load_kernel_module, record
from ..._validate import check_dtypes_and_device
from .reference import attention_masked_ref, attention_ref, attention_varlen_ref

MAX_HEAD_DIM = 256
# a forward: the custom op, or its body called directly (_direct); both return (out, lse)
_Fwd = Callable[..., tuple[torch.Tensor, torch.Tensor]]
_KERNEL = "ioaware.kernels.attention.flash.kernel"


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"flash_attn: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ShapeError(f"flash_attn: {name} must be 4-D (batch, seqlen, heads, head_dim), got shape "
                             f"{tuple(t.shape)}")
    check_dtypes_and_device("flash_attn", {"q": q, "k": k, "v": v})
    B, Tq, Hq, D = q.shape
    if k.shape != v.shape:
        raise ShapeError(f"flash_attn: k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    Bk, Tk, Hkv, Dk = k.shape
    if Bk != B:
        raise ShapeError(f"flash_attn: batch sizes differ: q has {B}, k and v have {Bk}")
    if Dk != D:
        raise ShapeError(f"flash_attn: head dims differ: q has {D}, k and v have {Dk}")
    if not 1 <= D <= MAX_HEAD_DIM:
        raise UnsupportedError(f"flash_attn: head_dim {D} is not supported; it must be between 1 and {MAX_HEAD_DIM}")
    if Hkv == 0 or Hq % Hkv != 0:
        raise ShapeError(f"flash_attn: query heads ({Hq}) must be a multiple of key/value heads ({Hkv}) for GQA/MQA")
    if min(B, Tq, Tk) == 0:
        raise ShapeError(f"flash_attn: empty input: batch={B}, seqlen_q={Tq}, seqlen_k={Tk}")
    if q.device.type == "cuda" and B * Hq > 65535:
        raise UnsupportedError(f"flash_attn: batch x heads = {B * Hq} exceeds the grid limit 65535; split the batch")


def _last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _direct(*ts: torch.Tensor | None) -> bool:
    """True when the forward may skip the custom op: no autograd graph to record and no tracer watching."""
    if torch.compiler.is_compiling():
        return False
    return not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in ts))


@torch.library.custom_op("ioaware::flash_attn_fwd", mutates_args=())
def _flash_attn_fwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
                       softmax_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    return _flash_attn_fwd_impl(q, k, v, causal, softmax_scale)


def _flash_attn_fwd_impl(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
                         softmax_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    backend = backend_for(q.device.type)
    record("flash_attn", backend)
    if backend == "reference":
        o, lse = attention_ref(q, k, v, causal, softmax_scale)
        return o.contiguous(), lse.contiguous()
    return load_kernel_module(_KERNEL).flash_attn_fwd(q, k, v, causal, softmax_scale)


@_flash_attn_fwd_op.register_fake
def _(q, k, v, causal, softmax_scale):
    B, Tq, Hq, _ = q.shape
    return torch.empty_like(q), q.new_empty((B, Hq, Tq), dtype=torch.float32)


@torch.library.custom_op("ioaware::flash_attn_bwd", mutates_args=())
def _flash_attn_bwd_op(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
                       lse: torch.Tensor, causal: bool, softmax_scale: float) -> tuple[torch.Tensor, torch.Tensor,
                                                                                      torch.Tensor]:
    backend = backend_for(q.device.type)
    record("flash_attn_bwd", backend)
    if backend == "reference":  # torch.func: autograd's dispatch key is excluded inside a custom op
        # torch.func.vjp's result is (output, vjp_fn[, aux]); its annotation does not say which, so index it
        vjp = torch.func.vjp(lambda q, k, v: attention_ref(q, k, v, causal, softmax_scale)[0], q, k, v)[1]
        dq, dk, dv = (g.contiguous() for g in vjp(do))
        return dq, dk, dv
    return load_kernel_module(_KERNEL).flash_attn_bwd(do, q, k, v, o, lse, causal, softmax_scale)


@_flash_attn_bwd_op.register_fake
def _(do, q, k, v, o, lse, causal, softmax_scale):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output):
    q, k, v, causal, softmax_scale = inputs
    o, lse = output
    ctx.save_for_backward(q, k, v, o, lse)
    ctx.causal, ctx.softmax_scale = causal, softmax_scale
    ctx.mark_non_differentiable(lse)


def _backward(ctx, do, dlse):
    q, k, v, o, lse = ctx.saved_tensors
    dq, dk, dv = _flash_attn_bwd_op(do, q, k, v, o, lse, ctx.causal, ctx.softmax_scale)
    return dq, dk, dv, None, None


_flash_attn_fwd_op.register_autograd(_backward, setup_context=_setup_context)

# ------------------------------------------------------------------------------ options: masks, varlen, sparse
_MASKED = "ioaware.kernels.attention.flash.masked"


def _spec(cu_q: torch.Tensor | None, cu_k: torch.Tensor | None, max_q: int, max_k: int, batch: int, scale: float,
          causal: bool, wl: int, wr: int, alibi: torch.Tensor | None, softcap: float, dropout_p: float, seed: int,
          prefix: torch.Tensor | None, block_mask: torch.Tensor | None, bq: int, bk: int) -> dict[str, Any]:
    return dict(cu_q=cu_q, cu_k=cu_k, max_q=max_q, max_k=max_k, batch=batch, scale=scale, causal=causal, wl=wl,
                wr=wr, alibi=alibi, softcap=softcap, dropout_p=dropout_p, seed=seed, prefix=prefix,
                block_mask=block_mask, block_size=(bq, bk))


def _masked_ref(q, k, v, spec):
    """The reference backend: the same math with an explicit mask; dropout from torch's generator seeded with
    `seed` (reproducible and the same in forward and backward, but not the kernels' Philox stream)."""
    p = spec["dropout_p"]
    kw = dict(causal=spec["causal"], softmax_scale=spec["scale"], window_size=(spec["wl"], spec["wr"]),
              alibi_slopes=spec["alibi"], softcap=spec["softcap"], prefix_lens=spec["prefix"], dropout_p=p)
    Hq = q.shape[2]
    if spec["cu_q"] is not None:
        keep = None
        if p > 0:
            g = torch.Generator(q.device).manual_seed(spec["seed"])
            keep = torch.rand((Hq, q.shape[1], spec["max_k"]), generator=g, device=q.device) >= p
        o, lse = attention_varlen_ref(q[0], k[0], v[0], spec["cu_q"], spec["cu_k"], keep=keep, **kw)
        return o[None], lse[None]
    keep = None
    if p > 0:
        g = torch.Generator(q.device).manual_seed(spec["seed"])
        keep = torch.rand((q.shape[0], Hq, q.shape[1], k.shape[1]), generator=g, device=q.device) >= p
    return attention_masked_ref(q, k, v, block_mask=spec["block_mask"], block_size=spec["block_size"], keep=keep,
                                **kw)


@torch.library.custom_op("ioaware::flash_attn_masked_fwd", mutates_args=())
def _flash_attn_masked_fwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_q: torch.Tensor | None,
                              cu_k: torch.Tensor | None, max_q: int, max_k: int, batch: int, scale: float,
                              causal: bool, wl: int, wr: int, alibi: torch.Tensor | None, softcap: float,
                              dropout_p: float, seed: int, prefix: torch.Tensor | None,
                              block_mask: torch.Tensor | None, bq: int, bk: int) -> tuple[torch.Tensor, torch.Tensor]:
    return _flash_attn_masked_fwd_impl(q, k, v, cu_q, cu_k, max_q, max_k, batch, scale, causal, wl, wr, alibi, softcap,
                                       dropout_p, seed, prefix, block_mask, bq, bk)


def _flash_attn_masked_fwd_impl(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_q: torch.Tensor | None,
                                cu_k: torch.Tensor | None, max_q: int, max_k: int, batch: int, scale: float,
                                causal: bool, wl: int, wr: int, alibi: torch.Tensor | None, softcap: float,
                                dropout_p: float, seed: int, prefix: torch.Tensor | None,
                                block_mask: torch.Tensor | None, bq: int, bk: int) -> tuple[torch.Tensor, torch.Tensor]:
    spec = _spec(cu_q, cu_k, max_q, max_k, batch, scale, causal, wl, wr, alibi, softcap, dropout_p, seed, prefix,
                 block_mask, bq, bk)
    backend = backend_for(q.device.type)
    record("flash_attn", backend)
    if backend == "reference":
        o, lse = _masked_ref(q, k, v, spec)
        return o.contiguous(), lse.contiguous()
    return load_kernel_module(_MASKED).flash_attn_masked_fwd(q, k, v, spec)


@_flash_attn_masked_fwd_op.register_fake
def _(q, k, v, cu_q, cu_k, max_q, max_k, batch, scale, causal, wl, wr, alibi, softcap, dropout_p, seed, prefix,
      block_mask, bq, bk):
    return torch.empty_like(q), q.new_empty((q.shape[0], q.shape[2], q.shape[1]), dtype=torch.float32)


@torch.library.custom_op("ioaware::flash_attn_masked_bwd", mutates_args=())
def _flash_attn_masked_bwd_op(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
                              lse: torch.Tensor, cu_q: torch.Tensor | None, cu_k: torch.Tensor | None, max_q: int,
                              max_k: int, batch: int, scale: float, causal: bool, wl: int, wr: int,
                              alibi: torch.Tensor | None, softcap: float, dropout_p: float, seed: int,
                              prefix: torch.Tensor | None, block_mask: torch.Tensor | None, bq: int,
                              bk: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    spec = _spec(cu_q, cu_k, max_q, max_k, batch, scale, causal, wl, wr, alibi, softcap, dropout_p, seed, prefix,
                 block_mask, bq, bk)
    backend = backend_for(q.device.type)
    record("flash_attn_bwd", backend)
    if backend == "reference":
        vjp = torch.func.vjp(lambda q, k, v: _masked_ref(q, k, v, spec)[0], q, k, v)[1]  # (output, vjp_fn)
        dq, dk, dv = (g.contiguous() for g in vjp(do))
        return dq, dk, dv
    return load_kernel_module(_MASKED).flash_attn_masked_bwd(do, q, k, v, o, lse, spec)


@_flash_attn_masked_bwd_op.register_fake
def _(do, q, k, v, o, lse, *args):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _masked_setup_context(ctx, inputs, output):
    q, k, v = inputs[:3]
    o, lse = output
    ctx.save_for_backward(q, k, v, o, lse)
    ctx.args = inputs[3:]
    ctx.mark_non_differentiable(lse)


def _masked_backward(ctx, do, dlse):
    q, k, v, o, lse = ctx.saved_tensors
    dq, dk, dv = _flash_attn_masked_bwd_op(do, q, k, v, o, lse, *ctx.args)
    return (dq, dk, dv) + (None,) * len(ctx.args)


_flash_attn_masked_fwd_op.register_autograd(_masked_backward, setup_context=_masked_setup_context)


# Overloads so a type checker knows the result from `return_lse` (a tensor, or (out, lse)); the implementation
# below is the one definition that runs.
@overload
def flash_attn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = ...,
               softmax_scale: float | None = ..., return_lse: Literal[False] = ..., window_size: tuple[int, int] = ...,
               alibi_slopes: torch.Tensor | None = ..., softcap: float = ..., dropout_p: float = ...,
               seed: int | None = ..., deterministic: bool = ..., prefix_lens: int | torch.Tensor | None = ...,
               block_mask: torch.Tensor | None = ..., block_size: tuple[int, int] = ...) -> torch.Tensor: ...
@overload
def flash_attn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = ...,
               softmax_scale: float | None = ..., return_lse: Literal[True], window_size: tuple[int, int] = ...,
               alibi_slopes: torch.Tensor | None = ..., softcap: float = ..., dropout_p: float = ...,
               seed: int | None = ..., deterministic: bool = ..., prefix_lens: int | torch.Tensor | None = ...,
               block_mask: torch.Tensor | None = ..., block_size: tuple[int, int] = ...
               ) -> tuple[torch.Tensor, torch.Tensor]: ...
@overload
def flash_attn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = ...,
               softmax_scale: float | None = ..., return_lse: bool, window_size: tuple[int, int] = ...,
               alibi_slopes: torch.Tensor | None = ..., softcap: float = ..., dropout_p: float = ...,
               seed: int | None = ..., deterministic: bool = ..., prefix_lens: int | torch.Tensor | None = ...,
               block_mask: torch.Tensor | None = ..., block_size: tuple[int, int] = ...
               ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]: ...
def flash_attn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
               softmax_scale: float | None = None, return_lse: bool = False, window_size: tuple[int, int] = (-1, -1),
               alibi_slopes: torch.Tensor | None = None, softcap: float = 0.0, dropout_p: float = 0.0,
               seed: int | None = None, deterministic: bool = False, prefix_lens: int | torch.Tensor | None = None,
               block_mask: torch.Tensor | None = None, block_size: tuple[int, int] = (128, 128)
               ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Exact attention softmax(q k^T * scale) v without materialising the Tq x Tk matrix.

    Every option is keyword-only: flash-attn's flash_attn_func takes dropout_p fourth, so a positional port
    (`flash_attn(q, k, v, 0.1)`) fails here instead of running causal attention; ported code should import
    `ioaware.flash_attn_interface` instead.

    Args:
        q: (batch, seqlen_q, heads_q, head_dim); k, v: (batch, seqlen_k, heads_kv, head_dim), heads_q a
            multiple of heads_kv (GQA/MQA). float16, bfloat16 or float32; head_dim up to 256.
        causal: mask aligned bottom-right: query row r sees keys c <= r + seqlen_k - seqlen_q.
        softmax_scale: defaults to 1 / sqrt(head_dim).
        return_lse: also return the row log-sum-exp (batch, heads_q, seqlen_q), fp32, natural log; -inf for
            rows that see no key (their output is 0). The LSE is not differentiable.
        window_size: (left, right) local attention: row r sees keys r + off - left .. r + off + right
            (off = seqlen_k - seqlen_q); -1 = unbounded on that side. With causal, right is 0.
        alibi_slopes: fp32 (heads_q,) or (batch, heads_q): score -= slope * |r + off - c|.
        softcap: > 0 caps the scaled scores: s = softcap * tanh(s / softcap) (with its backward).
        dropout_p, seed: dropout on the attention probabilities, drawn in the kernel (Philox, counter = element);
            the backward regenerates the same mask. seed=None draws one from torch's default generator.
        deterministic: accepted for flash-attn compatibility; the backward is always bitwise reproducible (every
            dQ, dK, dV element is written by one program, in a fixed order, without atomics).
        prefix_lens: prefix-LM (needs causal=True): the first prefix_lens[b] keys are seen by every query of
            sequence b (an int for all). block_mask: block-sparse attention, bool (batch|1, heads_q|1,
            cdiv(seqlen_q, bq), cdiv(seqlen_k, bk)) for block_size=(bq, bk) (powers of two, 16..128); only the
            non-empty blocks are loaded and computed, forward and backward; combines with every other option.

    Masks are a fixed vocabulary (causal, window, prefix-LM, document boundaries through flash_attn_varlen,
    block mask, ALiBi, softcap), not FlexAttention-style callables: each kind is a constexpr flag, so the
    kernel knows from the mask's algebra which key tiles a query tile can see (the band between the row's left
    and right bounds) and skips the rest without evaluating anything, runs the tiles inside the band without mask
    arithmetic, and writes the backward (softcap's tanh', dropout's regenerated mask) by hand. A callable would
    need a block-mask pass over the whole Tq x Tk grid to find the empty tiles, autograd through user code in the
    kernel, and a compiler front end; arbitrary patterns are covered, at block granularity, by block_mask.

    Examples:
        >>> import torch, ioaware
        >>> q = torch.randn(1, 97, 4, 59); k = v = torch.randn(1, 97, 2, 59)
        >>> ioaware.flash_attn(q, k, v, causal=True).shape
        torch.Size([1, 97, 4, 59])
    """
    _check(q, k, v)
    scale = _scale(softmax_scale, q.shape[-1])
    B, Tq, Hq, _ = q.shape
    Tk = k.shape[1]
    opts = _options("flash_attn", q, B, Hq, causal, window_size, alibi_slopes, softcap, dropout_p, seed,
                    deterministic, prefix_lens)
    if block_mask is not None:
        block_mask, block_size = _check_block_mask(block_mask, block_size, B, Hq, Tq, Tk, q.device)
    q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
    direct = _direct(q, k, v)
    if opts is None and block_mask is None:  # plain or causal: kernel.py, unchanged
        plain: _Fwd = _flash_attn_fwd_impl if direct else _flash_attn_fwd_op
        o, lse = plain(q, k, v, bool(causal), scale)
        return (o, lse) if return_lse else o
    opts = opts or _options("flash_attn", q, B, Hq, causal, (-1, -1), None, 0.0, 0.0, None, False, None, force=True)
    bq, bk = block_size if block_mask is not None else (0, 0)
    fwd: _Fwd = _flash_attn_masked_fwd_impl if direct else _flash_attn_masked_fwd_op
    o, lse = fwd(q, k, v, None, None, Tq, Tk, B, scale, *opts, block_mask, bq, bk)
    return (o, lse) if return_lse else o


@overload
def flash_attn_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
                      cu_seqlens_k: torch.Tensor, max_seqlen_q: int, max_seqlen_k: int, *, causal: bool = ...,
                      softmax_scale: float | None = ..., return_lse: Literal[False] = ...,
                      window_size: tuple[int, int] = ..., alibi_slopes: torch.Tensor | None = ...,
                      softcap: float = ..., dropout_p: float = ..., seed: int | None = ..., deterministic: bool = ...,
                      prefix_lens: int | torch.Tensor | None = ...) -> torch.Tensor: ...
@overload
def flash_attn_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
                      cu_seqlens_k: torch.Tensor, max_seqlen_q: int, max_seqlen_k: int, *, causal: bool = ...,
                      softmax_scale: float | None = ..., return_lse: Literal[True],
                      window_size: tuple[int, int] = ..., alibi_slopes: torch.Tensor | None = ...,
                      softcap: float = ..., dropout_p: float = ..., seed: int | None = ..., deterministic: bool = ...,
                      prefix_lens: int | torch.Tensor | None = ...) -> tuple[torch.Tensor, torch.Tensor]: ...
@overload
def flash_attn_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
                      cu_seqlens_k: torch.Tensor, max_seqlen_q: int, max_seqlen_k: int, *, causal: bool = ...,
                      softmax_scale: float | None = ..., return_lse: bool,
                      window_size: tuple[int, int] = ..., alibi_slopes: torch.Tensor | None = ...,
                      softcap: float = ..., dropout_p: float = ..., seed: int | None = ..., deterministic: bool = ...,
                      prefix_lens: int | torch.Tensor | None = ...) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    ...
def flash_attn_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
                      cu_seqlens_k: torch.Tensor, max_seqlen_q: int, max_seqlen_k: int, *, causal: bool = False,
                      softmax_scale: float | None = None, return_lse: bool = False,
                      window_size: tuple[int, int] = (-1, -1), alibi_slopes: torch.Tensor | None = None,
                      softcap: float = 0.0, dropout_p: float = 0.0, seed: int | None = None,
                      deterministic: bool = False, prefix_lens: int | torch.Tensor | None = None
                      ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """flash_attn on packed sequences without padding: q (total_q, heads_q, head_dim), k, v (total_k, heads_kv,
    head_dim); sequence b is rows cu_seqlens_q[b]:cu_seqlens_q[b+1] of q and cu_seqlens_k[b]:cu_seqlens_k[b+1] of
    k and v (int32, length batch + 1, starting at 0). With causal=True and the same cu_seqlens for q and k this is
    document-causal attention over a packed batch. Every option of flash_attn except block_mask; the LSE is
    (heads_q, total_q). Masks are per sequence (bottom-right aligned within each).

    Examples:
        >>> import torch, ioaware
        >>> cu = torch.tensor([0, 5, 12], dtype=torch.int32); q = k = v = torch.randn(12, 2, 16)
        >>> ioaware.flash_attn_varlen(q, k, v, cu, cu, 7, 7, causal=True).shape
        torch.Size([12, 2, 16])
    """
    _check_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)
    scale = _scale(softmax_scale, q.shape[-1])
    B, Hq = cu_seqlens_q.shape[0] - 1, q.shape[1]
    opts = _options("flash_attn_varlen", q, B, Hq, causal, window_size, alibi_slopes, softcap, dropout_p, seed,
                    deterministic, prefix_lens, force=True)
    q, k, v = (_last_dim_contiguous(t)[None] for t in (q, k, v))
    fwd: _Fwd = _flash_attn_masked_fwd_impl if _direct(q, k, v) else _flash_attn_masked_fwd_op
    o, lse = fwd(q, k, v, cu_seqlens_q, cu_seqlens_k, int(max_seqlen_q), int(max_seqlen_k), B, scale, *opts, None, 0, 0)
    return (o[0], lse[0]) if return_lse else o[0]


def _scale(softmax_scale: float | None, D: int) -> float:
    scale = float(softmax_scale) if softmax_scale is not None else 1.0 / math.sqrt(D)
    if not math.isfinite(scale):
        raise ValueError(f"flash_attn: softmax_scale must be finite, got {softmax_scale}")
    return scale


def _options(op, q, B, Hq, causal, window_size, alibi_slopes, softcap, dropout_p, seed, deterministic,
             prefix_lens, force=False):
    """Validated options as the masked op's arguments (causal, wl, wr, alibi, softcap, dropout_p, seed, prefix),
    or None when there is none beyond causal (the plain kernel runs)."""
    if not isinstance(deterministic, bool):
        raise TypeError(f"{op}: deterministic must be a bool, got {deterministic!r}")
    try:
        wl, wr = (int(w) for w in window_size)
    except (TypeError, ValueError):
        raise ValueError(f"{op}: window_size must be a pair of ints (left, right), got {window_size!r}") from None
    if wl < -1 or wr < -1:
        raise ValueError(f"{op}: window_size sides must be >= 0, or -1 for unbounded; got {window_size!r}")
    if causal and wr > 0:
        raise ValueError(f"{op}: causal=True already sets the window's right side to 0; got window_size={window_size!r}"
                         f" (use (left, 0) or (left, -1), or causal=False for a window that looks ahead)")
    if causal:
        wr = 0
    if alibi_slopes is not None:
        if not isinstance(alibi_slopes, torch.Tensor) or alibi_slopes.dtype != torch.float32:
            raise DTypeError(f"{op}: alibi_slopes must be a float32 tensor, got "
                             f"{getattr(alibi_slopes, 'dtype', type(alibi_slopes).__name__)}")
        if tuple(alibi_slopes.shape) not in ((Hq,), (B, Hq)):
            raise ShapeError(f"{op}: alibi_slopes must have shape ({Hq},) or ({B}, {Hq}), got "
                             f"{tuple(alibi_slopes.shape)}")
        if alibi_slopes.device != q.device:
            raise DeviceError(f"{op}: alibi_slopes is on {alibi_slopes.device}, q on {q.device}")
        alibi_slopes = alibi_slopes.contiguous()
    softcap = float(softcap)
    if not (math.isfinite(softcap) and softcap >= 0):
        raise ValueError(f"{op}: softcap must be finite and >= 0 (0 = off), got {softcap}")
    dropout_p = float(dropout_p)
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"{op}: dropout_p must be in [0, 1), got {dropout_p}")
    if dropout_p > 0 and seed is None:
        seed = int(torch.randint(0, 2**62, (1,)).item())
    seed = int(seed or 0)
    if prefix_lens is not None:
        if not causal:
            raise UnsupportedError(f"{op}: prefix_lens (prefix-LM) needs causal=True: without it every key is "
                                   f"already visible")
        if wl >= 0:
            raise UnsupportedError(f"{op}: prefix_lens with a left window (window_size[0] >= 0) is not supported")
        if isinstance(prefix_lens, int):
            prefix_lens = torch.full((B,), prefix_lens, dtype=torch.int32, device=q.device)
        if not isinstance(prefix_lens, torch.Tensor) or prefix_lens.dtype not in (torch.int32, torch.int64):
            raise DTypeError(f"{op}: prefix_lens must be an int or an int32/int64 tensor of shape ({B},)")
        if tuple(prefix_lens.shape) != (B,):
            raise ShapeError(f"{op}: prefix_lens must have shape ({B},), got {tuple(prefix_lens.shape)}")
        if prefix_lens.device != q.device:
            raise DeviceError(f"{op}: prefix_lens is on {prefix_lens.device}, q on {q.device}")
        prefix_lens = prefix_lens.to(torch.int32).contiguous()
    plain = wl < 0 and (causal or wr < 0) and alibi_slopes is None and softcap == 0 and dropout_p == 0 \
        and prefix_lens is None
    if plain and not force:
        return None
    return bool(causal), wl, wr, alibi_slopes, softcap, dropout_p, seed, prefix_lens


def _check_block_mask(block_mask, block_size, B, Hq, Tq, Tk, device):
    try:
        bq, bk = (int(b) for b in block_size)
    except (TypeError, ValueError):
        raise ValueError(f"flash_attn: block_size must be a pair of ints, got {block_size!r}") from None
    for b in (bq, bk):
        if b not in (16, 32, 64, 128):
            raise UnsupportedError(f"flash_attn: block_size sides must be 16, 32, 64 or 128, got {block_size!r}")
    if not isinstance(block_mask, torch.Tensor) or block_mask.dtype != torch.bool:
        raise DTypeError(f"flash_attn: block_mask must be a bool tensor, got "
                         f"{getattr(block_mask, 'dtype', type(block_mask).__name__)}")
    want = (-(-Tq // bq), -(-Tk // bk))
    if block_mask.dim() != 4 or block_mask.shape[0] not in (1, B) or block_mask.shape[1] not in (1, Hq) \
            or tuple(block_mask.shape[2:]) != want:
        raise ShapeError(f"flash_attn: block_mask must have shape ({B} or 1, {Hq} or 1, {want[0]}, {want[1]}) for "
                         f"block_size {(bq, bk)}, got {tuple(block_mask.shape)}")
    if block_mask.device != device:
        raise DeviceError(f"flash_attn: block_mask is on {block_mask.device}, q on {device}")
    return block_mask, (bq, bk)


def _check_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_q: torch.Tensor, cu_k: torch.Tensor,
                  max_q: int, max_k: int) -> None:
    for name, t in (("q", q), ("k", k), ("v", v), ("cu_seqlens_q", cu_q), ("cu_seqlens_k", cu_k)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"flash_attn_varlen: {name} must be a torch.Tensor, got {type(t).__name__}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 3:
            raise ShapeError(f"flash_attn_varlen: {name} must be 3-D (total_tokens, heads, head_dim), got shape "
                             f"{tuple(t.shape)}")
    _check(q[None], k[None], v[None])
    for name, t in (("cu_seqlens_q", cu_q), ("cu_seqlens_k", cu_k)):
        if t.dtype != torch.int32 or t.dim() != 1 or t.shape[0] < 2:
            raise ShapeError(f"flash_attn_varlen: {name} must be a 1-D int32 tensor of batch + 1 offsets, got "
                             f"{t.dtype} {tuple(t.shape)}")
        if t.device != q.device:
            raise DeviceError(f"flash_attn_varlen: {name} is on {t.device}, q on {q.device}")
    if cu_q.shape != cu_k.shape:
        raise ShapeError(f"flash_attn_varlen: cu_seqlens_q and cu_seqlens_k give different batch sizes: "
                         f"{cu_q.shape[0] - 1} and {cu_k.shape[0] - 1}")
    for name, m in (("max_seqlen_q", max_q), ("max_seqlen_k", max_k)):
        if int(m) < 1:
            raise ValueError(f"flash_attn_varlen: {name} must be >= 1, got {m}")
    # checking CUDA offsets would synchronise (flash-attn trusts them too); a traced graph cannot branch on them
    if q.device.type == "cpu" and not torch.compiler.is_compiling():
        for name, cu, total, m in (("q", cu_q, q.shape[0], max_q), ("k", cu_k, k.shape[0], max_k)):
            lens = cu[1:] - cu[:-1]
            if int(cu[0]) != 0 or int(cu[-1]) != total or bool((lens < 0).any()):
                raise ShapeError(f"flash_attn_varlen: cu_seqlens_{name} must rise from 0 to {name}.shape[0] = {total},"
                                 f" got {cu.tolist()}")
            if int(lens.max()) > int(m):
                raise ShapeError(f"flash_attn_varlen: a sequence of {name} has {int(lens.max())} tokens, more than "
                                 f"max_seqlen_{name} = {m}")
