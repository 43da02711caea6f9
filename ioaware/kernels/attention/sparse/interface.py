"""`ioaware.nsa`: validation, autograd and dispatch for Native Sparse Attention.

The three branches run as: compression in PyTorch (mean-pool, or the caller's function, e.g. NSAttention's MLP;
autograd reaches its parameters), compressed attention and the block scores in Triton (compressed.py), top-n with
torch.topk, the selected branch in Triton in FSA's or NSA's loop order (kernel.py), the sliding window through
ioaware.flash_attn's in-kernel window, and the gates in PyTorch. CUDA tensors run the kernels; CPU tensors run them
under Triton's interpreter with IOAWARE_INTERPRET=1, else the PyTorch reference (reference.nsa_ref).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal, TypeAlias, overload

import torch

from ....errors import DeviceError, DTypeError, ShapeError, UnsupportedError
from ..._dispatch import backend_for, load_kernel_module, record
from ..._validate import check_dtypes_and_device
from ..flash import flash_attn
from .reference import (
    compress_kv,
    masked_attention,
    nsa_ref,
    num_blocks,
    num_compressed,
    select_ref,
    selected_mask,
    top_blocks,
)

MAX_HEAD_DIM = 256
# NSA's compression function phi: blocks (B, n_cmp, block_size, Hkv, D) -> (B, n_cmp, Hkv, D); a pair = (keys, values)
_Phi: TypeAlias = Callable[[torch.Tensor], torch.Tensor]
Compress: TypeAlias = _Phi | tuple[_Phi, _Phi] | None
ORDERS = ("auto", "fsa", "nsa")
_KERNEL = "ioaware.kernels.attention.sparse.kernel"
_COMPRESSED = "ioaware.kernels.attention.sparse.compressed"
_TOPK = "ioaware.kernels.attention.sparse.topk"


# ------------------------------------------------------------------------------------------------ validation
def _int(op: str, name: str, x: object, lo: int) -> int:
    if isinstance(x, bool) or not isinstance(x, int):
        raise TypeError(f"{op}: {name} must be an int, got {x!r}")
    if x < lo:
        raise ValueError(f"{op}: {name} must be >= {lo}, got {x}")
    return x


def _check_qkv(op: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ShapeError(f"{op}: {name} must be 4-D (batch, seqlen, heads, head_dim), got shape {tuple(t.shape)}")
    check_dtypes_and_device(op, {"q": q, "k": k, "v": v})
    B, T, Hq, D = q.shape
    if k.shape != v.shape:
        raise ShapeError(f"{op}: k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    Bk, Tk, Hkv, Dk = k.shape
    if Bk != B or Tk != T:
        raise ShapeError(f"{op}: q is (batch={B}, seqlen={T}) but k and v are (batch={Bk}, seqlen={Tk}); NSA here is "
                         f"self-attention over one sequence (training and prefill), so they must match")
    if Dk != D:
        raise ShapeError(f"{op}: head dims differ: q has {D}, k and v have {Dk}")
    if not 1 <= D <= MAX_HEAD_DIM:
        raise UnsupportedError(f"{op}: head_dim {D} is not supported; it must be between 1 and {MAX_HEAD_DIM}")
    if Hkv == 0 or Hq % Hkv != 0:
        raise ShapeError(f"{op}: query heads ({Hq}) must be a multiple of key/value heads ({Hkv}) for GQA")
    if min(B, T) == 0:
        raise ShapeError(f"{op}: empty input: batch={B}, seqlen={T}")
    if q.device.type == "cuda" and B * Hq > 65535:
        raise UnsupportedError(f"{op}: batch x heads = {B * Hq} exceeds the grid limit 65535; split the batch")


def _check_select_size(op: str, select_size: int) -> None:
    _int(op, "select_size", select_size, 1)
    if select_size & (select_size - 1) or not 16 <= select_size <= 256:
        raise UnsupportedError(f"{op}: select_size must be a power of two from 16 to 256 (a selected block is one "
                               f"kernel tile), got {select_size}")


def _check_indices(op: str, idx: object, B: int, T: int, Hkv: int, n: int, ns: int, device: torch.device,
                   values: bool = True) -> torch.Tensor:
    if not isinstance(idx, torch.Tensor) or idx.dtype not in (torch.int32, torch.int64):
        raise DTypeError(f"{op}: block_indices must be an int32 or int64 tensor, got "
                         f"{getattr(idx, 'dtype', type(idx).__name__)}")
    if tuple(idx.shape) != (B, T, Hkv, n):
        raise ShapeError(f"{op}: block_indices must have shape (batch, seqlen, kv_heads, select_blocks) = "
                         f"({B}, {T}, {Hkv}, {n}), got {tuple(idx.shape)}")
    if idx.device != device:
        raise DeviceError(f"{op}: block_indices is on {idx.device}, q on {device}")
    # one device sync for both checks; skipped while tracing, where a graph cannot branch on values
    if values and not torch.compiler.is_compiling():
        s = idx.sort(-1).values
        bad_range, repeats = torch.stack([((s < -1) | (s >= ns)).any(),
                                          ((s[..., 1:] == s[..., :-1]) & (s[..., 1:] >= 0)).any()]).tolist()
        if bad_range:
            lo, hi = int(idx.min()), int(idx.max())
            raise ValueError(f"{op}: block_indices must lie in [-1, {ns - 1}] (-1 = unused slot; {ns} blocks of "
                             f"select_size cover seqlen {T}), got values from {lo} to {hi}")
        if repeats:
            raise ValueError(f"{op}: block_indices repeats a block within one (token, kv head) row; each selected "
                             f"block must appear once (-1 marks unused slots)")
    return idx.to(torch.int32).contiguous()


def _check(q, k, v, gates, block_size, stride, select_blocks, select_size, window, init_blocks, local_blocks,
           block_indices, order, compress, check_indices=True):
    op = "nsa"
    _check_qkv(op, q, k, v)
    B, T, Hq, _ = q.shape
    Hkv = k.shape[2]
    for name, g in zip(("g_cmp", "g_slc", "g_swa"), gates, strict=True):
        if not isinstance(g, torch.Tensor) or not g.is_floating_point():
            got = getattr(g, "dtype", type(g).__name__)
            raise DTypeError(f"{op}: {name} must be a floating-point tensor, got {got}")
        if tuple(g.shape) != (B, T, Hq):
            raise ShapeError(f"{op}: {name} must have shape (batch, seqlen, heads_q) = ({B}, {T}, {Hq}), got "
                             f"{tuple(g.shape)}")
        if g.device != q.device:
            raise DeviceError(f"{op}: {name} is on {g.device}, q on {q.device}")
    _int(op, "block_size", block_size, 1)
    _int(op, "stride", stride, 1)
    _check_select_size(op, select_size)
    _int(op, "window", window, 1)
    _int(op, "init_blocks", init_blocks, 0)
    _int(op, "local_blocks", local_blocks, 0)
    _int(op, "select_blocks", select_blocks, 1)
    if block_size % stride or select_size % stride:
        raise ValueError(f"{op}: stride ({stride}) must divide block_size ({block_size}) and select_size "
                         f"({select_size}): compressed blocks are mapped onto selection blocks in stride-sized chunks")
    ns = num_blocks(T, select_size)
    if select_blocks > ns:
        raise ValueError(f"{op}: select_blocks={select_blocks} but seqlen {T} has only {ns} blocks of select_size "
                         f"{select_size}; use select_blocks <= {ns}")
    if init_blocks + local_blocks > select_blocks:
        raise ValueError(f"{op}: init_blocks + local_blocks ({init_blocks} + {local_blocks}) are always kept, so "
                         f"select_blocks ({select_blocks}) must be at least their sum")
    if order not in ORDERS:
        raise ValueError(f"{op}: order must be one of {ORDERS}, got {order!r}")
    if compress is not None and not callable(compress) and not (
            isinstance(compress, (tuple, list)) and len(compress) == 2 and all(map(callable, compress))):
        raise TypeError(f"{op}: compress must be None (mean-pool), a callable, or a pair (keys, values) of callables")
    if block_indices is not None:
        block_indices = _check_indices(op, block_indices, B, T, Hkv, select_blocks, ns, q.device, check_indices)
    return block_indices


def _scale(softmax_scale: float | None, D: int) -> float:
    scale = float(softmax_scale) if softmax_scale is not None else 1.0 / math.sqrt(D)
    if not math.isfinite(scale):
        raise ValueError(f"nsa: softmax_scale must be finite, got {softmax_scale}")
    return scale


def _contig(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


# -------------------------------------------------------------------------------------------------- autograd
class NSACompressedFunction(torch.autograd.Function):
    """(q, k_cmp, v_cmp) -> (o_cmp, lse_cmp): attention over the compressed keys; the LSE feeds the selection."""

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k_cmp: torch.Tensor, v_cmp: torch.Tensor, block_size: int, stride: int,
                causal: bool, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        o, lse = load_kernel_module(_COMPRESSED).nsa_cmp_fwd(q, k_cmp, v_cmp, block_size, stride, causal, scale)
        ctx.save_for_backward(q, k_cmp, v_cmp, o, lse)
        ctx.args = (block_size, stride, causal, scale)
        ctx.mark_non_differentiable(lse)
        return o, lse

    @staticmethod
    def backward(ctx, do, dlse):
        q, k_cmp, v_cmp, o, lse = ctx.saved_tensors
        record("nsa_bwd", backend_for(q.device.type))
        dq, dk, dv = load_kernel_module(_COMPRESSED).nsa_cmp_bwd(do, q, k_cmp, v_cmp, o, lse, *ctx.args)
        return dq, dk, dv, None, None, None, None


class NSASelectedFunction(torch.autograd.Function):
    """(q, k, v, block_indices) -> o_slc: attention over each token's selected blocks, in FSA's or NSA's order."""

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, idx: torch.Tensor, select_size: int,
                causal: bool, scale: float, order: str) -> torch.Tensor:
        kern = load_kernel_module(_KERNEL)
        o, lse, lists = kern.nsa_slc_fwd(q, k, v, idx, select_size, causal, scale, order)
        keep = () if lists is None else (lists["tok"], lists["pos"], lists["cnt"], lists["start"])
        ctx.save_for_backward(q, k, v, o, lse, idx, *keep)
        ctx.args = (select_size, causal, scale, order)
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse, idx, *keep = ctx.saved_tensors
        select_size, causal, scale, order = ctx.args
        record("nsa_bwd", backend_for(q.device.type))
        lists = None
        if keep:  # the forward's block lists (FSA order), reused rather than sorted again
            lists = dict(zip(("tok", "pos", "cnt", "start"), keep, strict=True))
            lists.update(npair=idx.shape[1] * idx.shape[3], ns=-(-q.shape[1] // select_size))
        dq, dk, dv = load_kernel_module(_KERNEL).nsa_slc_bwd(do, q, k, v, o, lse, idx, select_size, causal, scale,
                                                             order, lists)
        return dq, dk, dv, None, None, None, None, None


def _select(q: torch.Tensor, k_cmp: torch.Tensor, lse_cmp: torch.Tensor, *, block_size: int, stride: int,
            select_size: int, select_blocks: int, init_blocks: int, local_blocks: int, causal: bool,
            scale: float) -> torch.Tensor:
    kw = dict(block_size=block_size, stride=stride, select_size=select_size, init_blocks=init_blocks,
              local_blocks=local_blocks, causal=causal, scale=scale)
    with torch.no_grad():
        fused = load_kernel_module(_TOPK)
        if fused.topk_fits(block_size, stride, select_size, select_blocks):
            # scores and a running top-n in one kernel: the (B, Hkv, T, Ns) score tensor is never written.
            # Same indices as the path below (tests/kernels/test_nsa_fused_topk.py); 1.8-4.9x faster and 1.4 GiB
            # less at 64k on the H200 (dev/nsa/nsa-topk-h200-2026-12-03.json)
            return fused.nsa_topk(q, k_cmp, lse_cmp, select_blocks=select_blocks, **kw)
        scores = load_kernel_module(_COMPRESSED).nsa_select_scores(q, k_cmp, lse_cmp, **kw)
        return top_blocks(scores, select_blocks)


# ---------------------------------------------------------------------------------------------------- public
# Overloads so a type checker knows the result from `return_indices` (a tensor, or (out, indices)).
@overload
def nsa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g_cmp: torch.Tensor, g_slc: torch.Tensor,
        g_swa: torch.Tensor, *, block_size: int = ..., stride: int = ..., select_blocks: int = ...,
        select_size: int = ..., window: int = ..., causal: bool = ..., softmax_scale: float | None = ...,
        compress: Compress = ..., block_indices: torch.Tensor | None = ..., init_blocks: int = ...,
        local_blocks: int = ..., order: str = ..., return_indices: Literal[False] = ...,
        check_indices: bool = ...) -> torch.Tensor: ...
@overload
def nsa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g_cmp: torch.Tensor, g_slc: torch.Tensor,
        g_swa: torch.Tensor, *, block_size: int = ..., stride: int = ..., select_blocks: int = ...,
        select_size: int = ..., window: int = ..., causal: bool = ..., softmax_scale: float | None = ...,
        compress: Compress = ..., block_indices: torch.Tensor | None = ..., init_blocks: int = ...,
        local_blocks: int = ..., order: str = ..., return_indices: Literal[True],
        check_indices: bool = ...) -> tuple[torch.Tensor, torch.Tensor]: ...
@overload
def nsa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g_cmp: torch.Tensor, g_slc: torch.Tensor,
        g_swa: torch.Tensor, *, block_size: int = ..., stride: int = ..., select_blocks: int = ...,
        select_size: int = ..., window: int = ..., causal: bool = ..., softmax_scale: float | None = ...,
        compress: Compress = ..., block_indices: torch.Tensor | None = ..., init_blocks: int = ...,
        local_blocks: int = ..., order: str = ..., return_indices: bool,
        check_indices: bool = ...) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]: ...
def nsa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g_cmp: torch.Tensor, g_slc: torch.Tensor,
        g_swa: torch.Tensor, *, block_size: int = 64, stride: int = 16, select_blocks: int = 16, select_size: int = 64,
        window: int = 512, causal: bool = True, softmax_scale: float | None = None, compress: Compress = None,
        block_indices: torch.Tensor | None = None, init_blocks: int = 1, local_blocks: int = 2, order: str = "auto",
        return_indices: bool = False, check_indices: bool = True) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Native Sparse Attention (Yuan et al., arXiv:2502.11089): o = g_cmp o_cmp + g_slc o_slc + g_swa o_swa.

    Args:
        q: (batch, seqlen, heads_q, head_dim); k, v: (batch, seqlen, heads_kv, head_dim), heads_q a multiple of
            heads_kv (GQA: the query heads of a KV head share its selected blocks). float16, bfloat16 or float32.
        g_cmp, g_slc, g_swa: per-head gates (batch, seqlen, heads_q), e.g. sigmoid outputs.
        block_size, stride: compression blocks of block_size tokens every stride tokens (stride divides both
            block_size and select_size). compress: the compression function phi, called on the blocks
            (batch, n_cmp, block_size, heads_kv, head_dim) -> (batch, n_cmp, heads_kv, head_dim); None = mean-pool;
            a pair = (keys, values). select_size (power of two, 16..256), select_blocks: n blocks per query,
            including init_blocks first and local_blocks local (ending with the query's own) blocks always kept.
        window: sliding-window length (keys t - window < s <= t when causal). causal: False lets every query see
            every compressed key and block, and the window |t - s| < window.
        block_indices: (batch, seqlen, heads_kv, select_blocks) int, -1 for unused slots: reuse a selection instead
            of computing one (no gradient flows through the selection either way). return_indices: also return the
            indices used (int32, ascending, -1 last). check_indices=False skips the value checks of block_indices
            (range, repeats: one device sync) for indices this library made.
        order: the selected branch's loop order: "fsa" (KV-block-outer), "nsa" (query-outer) or "auto".

    NSA is exact with respect to its definition (reference.py): each branch is exact attention over its keys; the
    sparsity is NSA's own choice of keys, not an approximation of the kernels. Rows that see no key (the compressed
    branch before the first block ends) contribute 0.

    Examples:
        >>> import torch, ioaware
        >>> q = torch.randn(1, 64, 4, 16); k = v = torch.randn(1, 64, 1, 16)
        >>> g = torch.full((1, 64, 4), 1 / 3)
        >>> o, idx = ioaware.nsa(q, k, v, g, g, g, block_size=16, stride=16, select_size=16, select_blocks=3,
        ...                      window=16, return_indices=True)
        >>> o.shape, idx.shape
        (torch.Size([1, 64, 4, 16]), torch.Size([1, 64, 1, 3]))
    """
    block_indices = _check(q, k, v, (g_cmp, g_slc, g_swa), block_size, stride, select_blocks, select_size, window,
                           init_blocks, local_blocks, block_indices, order, compress, check_indices)
    B, T, Hq, D = q.shape
    Hkv = k.shape[2]
    scale = _scale(softmax_scale, D)
    kw: dict[str, Any] = dict(block_size=block_size, stride=stride, select_blocks=select_blocks,
                              select_size=select_size, window=window, causal=bool(causal), softmax_scale=scale,
                              init_blocks=init_blocks, local_blocks=local_blocks)
    backend = backend_for(q.device.type)
    record("nsa", backend)
    if backend == "reference":
        o, idx = nsa_ref(q, k, v, g_cmp, g_slc, g_swa, compress=compress, block_indices=block_indices, **kw)
        return (o, idx) if return_indices else o
    q, k, v = (_contig(t) for t in (q, k, v))
    k_cmp, v_cmp = compress_kv(k, v, block_size, stride, compress)
    want = (B, num_compressed(T, block_size, stride), Hkv, D)
    for name, t in (("keys", k_cmp), ("values", v_cmp)):
        if tuple(t.shape) != want:
            raise ShapeError(f"nsa: the compression function returned {name} of shape {tuple(t.shape)}; expected "
                             f"(batch, n_cmp, heads_kv, head_dim) = {want}")
    k_cmp, v_cmp = k_cmp.to(q.dtype).contiguous(), v_cmp.to(q.dtype).contiguous()
    o_cmp, lse_cmp = NSACompressedFunction.apply(q, k_cmp, v_cmp, block_size, stride, bool(causal), scale)
    if block_indices is None:
        block_indices = _select(q.detach(), k_cmp.detach(), lse_cmp, block_size=block_size, stride=stride,
                                select_size=select_size, select_blocks=select_blocks, init_blocks=init_blocks,
                                local_blocks=local_blocks, causal=bool(causal), scale=scale)
    o_slc = NSASelectedFunction.apply(q, k, v, block_indices, select_size, bool(causal), scale, order)
    o_swa = flash_attn(q, k, v, causal=bool(causal), softmax_scale=scale,
                       window_size=(window - 1, 0 if causal else window - 1))
    o = g_cmp.unsqueeze(-1) * o_cmp + g_slc.unsqueeze(-1) * o_slc + g_swa.unsqueeze(-1) * o_swa
    o = o.to(q.dtype)
    return (o, block_indices) if return_indices else o


def nsa_selected(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_indices: torch.Tensor, *,
                 select_size: int = 64, causal: bool = True, softmax_scale: float | None = None,
                 order: str = "auto", check_indices: bool = True) -> torch.Tensor:
    """NSA's selected branch alone: attention of every query over the raw tokens of its KV head's selected blocks
    (block_indices (batch, seqlen, heads_kv, n), -1 unused; keys <= t when causal). Differentiable in q, k, v.
    check_indices=False skips the indices' value checks (one device sync), as in nsa().

    Examples:
        >>> import torch
        >>> from ioaware.kernels.attention.sparse import nsa_selected
        >>> q = k = v = torch.randn(1, 32, 1, 16)
        >>> idx = torch.tensor([0, 1], dtype=torch.int32).view(1, 1, 1, 2).expand(1, 32, 1, 2).contiguous()
        >>> nsa_selected(q, k, v, idx, select_size=16).shape          # every query sees blocks 0 and 1 (causally)
        torch.Size([1, 32, 1, 16])
    """
    op = "nsa_selected"
    _check_qkv(op, q, k, v)
    _check_select_size(op, select_size)
    if order not in ORDERS:
        raise ValueError(f"{op}: order must be one of {ORDERS}, got {order!r}")
    B, T, _, D = q.shape
    n = block_indices.shape[-1] if isinstance(block_indices, torch.Tensor) and block_indices.dim() == 4 else -1
    idx = _check_indices(op, block_indices, B, T, k.shape[2], max(n, 1), num_blocks(T, select_size), q.device,
                         check_indices)
    scale = _scale(softmax_scale, D)
    backend = backend_for(q.device.type)
    record(op, backend)
    if backend == "reference":
        hi = q.dtype if q.dtype == torch.float64 else torch.float32
        o, _ = masked_attention(q.to(hi), k.to(hi), v.to(hi), selected_mask(idx, T, select_size, causal), scale)
        return o.to(q.dtype)
    q, k, v = (_contig(t) for t in (q, k, v))
    return NSASelectedFunction.apply(q, k, v, idx, select_size, bool(causal), scale, order)


def nsa_select(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, block_size: int = 64, stride: int = 16,
               select_blocks: int = 16, select_size: int = 64, causal: bool = True,
               softmax_scale: float | None = None, compress: Compress = None, init_blocks: int = 1,
               local_blocks: int = 2) -> torch.Tensor:
    """NSA's block selection alone: the indices (batch, seqlen, heads_kv, select_blocks) int32 nsa() would use.

    Examples:
        >>> import torch
        >>> from ioaware.kernels.attention.sparse import nsa_select
        >>> q = torch.randn(1, 64, 2, 16); k = v = torch.randn(1, 64, 1, 16)
        >>> idx = nsa_select(q, k, v, block_size=16, stride=16, select_size=16, select_blocks=3)
        >>> idx.shape, idx[0, -1, 0].tolist()[0]       # the first block is always kept (init_blocks=1)
        (torch.Size([1, 64, 1, 3]), 0)
    """
    ones = q.new_ones(q.shape[:3])
    _check(q, k, v, (ones, ones, ones), block_size, stride, select_blocks, select_size, 1, init_blocks,
           local_blocks, None, "auto", compress)
    scale = _scale(softmax_scale, q.shape[-1])
    kw: dict[str, Any] = dict(block_size=block_size, stride=stride, select_size=select_size,
                              select_blocks=select_blocks, init_blocks=init_blocks, local_blocks=local_blocks,
                              causal=bool(causal))
    with torch.no_grad():
        k_cmp, _ = compress_kv(k, v, block_size, stride, compress)
        backend = backend_for(q.device.type)
        record("nsa_select", backend)
        if backend == "reference":
            hi = q.dtype if q.dtype == torch.float64 else torch.float32
            return select_ref(q.to(hi), k_cmp.to(hi), softmax_scale=scale, **kw)[0]
        q, k_cmp = _contig(q), k_cmp.to(q.dtype).contiguous()
        _, lse = load_kernel_module(_COMPRESSED).nsa_cmp_fwd(q, k_cmp, k_cmp, block_size, stride, bool(causal), scale)
        return _select(q, k_cmp, lse, scale=scale, **kw)
