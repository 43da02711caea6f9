"""`ioaware.flash_attn`: validation, autograd and dispatch for FlashAttention-2.

The forward and backward are registered as torch.library custom ops (`ioaware::flash_attn_fwd`,
`ioaware::flash_attn_bwd`), so autograd works and torch.compile traces around them without graph breaks.
"""

from __future__ import annotations

import math

import torch

from ....errors import ShapeError, UnsupportedError
from ..._dispatch import backend_for, load_kernel_module, record
from ..._validate import check_dtypes_and_device
from .reference import attention_ref

MAX_HEAD_DIM = 256
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


@torch.library.custom_op("ioaware::flash_attn_fwd", mutates_args=())
def _flash_attn_fwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
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
    if backend == "reference":
        with torch.enable_grad():
            qq, kk, vv = (t.detach().requires_grad_() for t in (q, k, v))
            out, _ = attention_ref(qq, kk, vv, causal, softmax_scale)
            dq, dk, dv = torch.autograd.grad(out, (qq, kk, vv), do)
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


def flash_attn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
               softmax_scale: float | None = None, return_lse: bool = False):
    """Exact attention softmax(q k^T * scale) v without materialising the Tq x Tk matrix.

    Args:
        q: (batch, seqlen_q, heads_q, head_dim); k, v: (batch, seqlen_k, heads_kv, head_dim), heads_q a
           multiple of heads_kv (GQA/MQA). float16, bfloat16 or float32; head_dim up to 256.
        causal: mask aligned bottom-right: query row r sees keys c <= r + seqlen_k - seqlen_q.
        softmax_scale: defaults to 1 / sqrt(head_dim).
        return_lse: also return the row log-sum-exp (batch, heads_q, seqlen_q), fp32, natural log; -inf for
           rows that see no key (their output is 0). The LSE is not differentiable.

    Example:
        >>> import torch, ioaware
        >>> q = torch.randn(1, 97, 4, 59); k = v = torch.randn(1, 97, 2, 59)
        >>> ioaware.flash_attn(q, k, v, causal=True).shape
        torch.Size([1, 97, 4, 59])
    """
    _check(q, k, v)
    scale = float(softmax_scale) if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    if not math.isfinite(scale):
        raise ValueError(f"flash_attn: softmax_scale must be finite, got {softmax_scale}")
    q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
    o, lse = _flash_attn_fwd_op(q, k, v, bool(causal), scale)
    return (o, lse) if return_lse else o
