"""`lowrank_attn`, `lowrank_swiglu`, `lowrank_ffn`: validation and dispatch for FlashSVD's rank-aware kernels.

CUDA tensors run the Triton kernels (kernel.py); CPU tensors run them under Triton's interpreter with
IOAWARE_INTERPRET=1, else the PyTorch reference. The kernels are forward-only: a call that autograd must record
(an input requires grad and grad mode is on) runs the reference, whose backward is PyTorch's (FlashSVD targets
inference; training through the factors is what the reference path is for).
"""

from __future__ import annotations

import math

import torch

from ...errors import DTypeError, ShapeError, UnsupportedError
from .._dispatch import backend_for, load_kernel_module, record
from .._validate import check_dtypes_and_device
from .reference import lowrank_attn_ref, lowrank_swiglu_ref

_KERNEL = "ioaware.kernels.lowrank.kernel"
MAX_HEAD_DIM = 256
MAX_HEAD_RANK = 256  # a head's rank-R tile and its (R, D) factors stay on chip for the whole key loop
SCHEDULES = ("fused", "slab")
SLAB_BYTES = 256 * 2**20  # the attention slab schedule's Q, K, V, O buffers for a group of KV heads, at most


def _needs_grad(*ts: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in ts)


def _dims(name: str, t: object, n: int, what: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != n:
        raise ShapeError(f"{name} must be {n}-D {what}, got shape {tuple(t.shape)}")


def _check_attn(pq: torch.Tensor, vq: torch.Tensor, pk: torch.Tensor, vk: torch.Tensor, pv: torch.Tensor,
                vv: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None,
                cache_seqlens: torch.Tensor | None) -> None:
    for n, t in (("pq", pq), ("pk", pk), ("pv", pv)):
        _dims(f"lowrank_attn: {n}", t, 4, "(batch, seqlen, heads, rank)")
    for n, t in (("vq", vq), ("vk", vk), ("vv", vv)):
        _dims(f"lowrank_attn: {n}", t, 3, "(heads, rank, head_dim)")
    check_dtypes_and_device("lowrank_attn", {"pq": pq, "vq": vq, "pk": pk, "vk": vk, "pv": pv, "vv": vv})
    B, Tq, Hq, Rq = pq.shape
    _, Tk, Hkv, Rk = pk.shape
    for n, p, v, h in (("q", pq, vq, Hq), ("k", pk, vk, Hkv), ("v", pv, vv, Hkv)):
        if v.shape[0] != h or v.shape[1] != p.shape[3]:
            raise ShapeError(f"lowrank_attn: v{n} must be ({h}, {p.shape[3]}, head_dim) to expand p{n} "
                             f"{tuple(p.shape)}, got {tuple(v.shape)}")
        if not 1 <= p.shape[3] <= MAX_HEAD_RANK:
            raise UnsupportedError(f"lowrank_attn: rank {p.shape[3]} of p{n} is not supported; per-head ranks must "
                                   f"be between 1 and {MAX_HEAD_RANK}")
    if pv.shape[:3] != pk.shape[:3] or pk.shape[0] != B:
        raise ShapeError(f"lowrank_attn: pk {tuple(pk.shape)} and pv {tuple(pv.shape)} must share (batch, seqlen, "
                         f"heads), with batch {B} as pq")
    D = vq.shape[2]
    if vk.shape[2] != D or vv.shape[2] != D:
        raise ShapeError(f"lowrank_attn: head dims differ: vq {D}, vk {vk.shape[2]}, vv {vv.shape[2]}")
    if not 1 <= D <= MAX_HEAD_DIM:
        raise UnsupportedError(f"lowrank_attn: head_dim {D} is not supported; it must be between 1 and {MAX_HEAD_DIM}")
    if Hq % Hkv:
        raise ShapeError(f"lowrank_attn: query heads ({Hq}) must be a multiple of key/value heads ({Hkv})")
    if min(B, Tq, Tk) == 0:
        raise ShapeError(f"lowrank_attn: empty input: batch={B}, seqlen_q={Tq}, seqlen_k={Tk}")
    if rope is not None:
        if not (isinstance(rope, (tuple, list)) and len(rope) == 2):
            raise TypeError("lowrank_attn: rope must be a (cos, sin) pair of (positions, head_dim/2) tables")
        cos, sin = rope
        if D % 2:
            raise ShapeError(f"lowrank_attn: RoPE needs an even head_dim, got {D}")
        for n, t in (("cos", cos), ("sin", sin)):
            _dims(f"lowrank_attn: rope {n}", t, 2, "(positions, head_dim/2)")
            if t.shape[1] != D // 2 or t.shape[0] < Tk or t.stride(1) != 1:
                raise ShapeError(f"lowrank_attn: rope {n} must be (>= {Tk}, {D // 2}) with unit column stride, got "
                                 f"{tuple(t.shape)}")
            if t.device != pq.device or not t.is_floating_point():
                raise DTypeError(f"lowrank_attn: rope {n} must be a float tensor on {pq.device}")
        if cos.stride() != sin.stride():
            raise ShapeError("lowrank_attn: rope cos and sin must share strides")
    if cache_seqlens is not None:
        if cache_seqlens.shape != (B,) or cache_seqlens.dtype not in (torch.int32, torch.int64):
            raise ShapeError(f"lowrank_attn: cache_seqlens must be ({B},) int32/int64, got "
                             f"{tuple(cache_seqlens.shape)} {cache_seqlens.dtype}")
        if cache_seqlens.device != pq.device:
            raise ShapeError(f"lowrank_attn: cache_seqlens must be on {pq.device}")


def _unit_last(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def choose_attn_schedule(Tq: int, cache_seqlens: torch.Tensor | None = None) -> str:
    """'slab' when the queries span more than one query tile of the fused kernel (each of its programs would
    rebuild and rotate every key tile again: README, "Attention, two schedules"), else 'fused' (decode steps,
    short prompts, and any call with cache_seqlens, which only the fused kernel takes).

    Examples:
        >>> from ioaware.kernels.lowrank import choose_attn_schedule
        >>> choose_attn_schedule(1), choose_attn_schedule(8192)
        ('fused', 'slab')
    """
    from .kernel import ATTN_TILES

    return "slab" if cache_seqlens is None and Tq > ATTN_TILES["block_m"] else "fused"


def slab_kv_heads(B: int, Tq: int, Tk: int, Hq: int, Hkv: int, D: int, itemsize: int,
                  budget: int = SLAB_BYTES) -> int:
    """KV heads per slab: as many as keep the slab's Q, K, V and O buffers within `budget` bytes (at least 1)."""
    per_kv = B * D * itemsize * (2 * (Hq // Hkv) * Tq + 2 * Tk)  # q and o for the group's query heads; k, v
    return max(1, min(Hkv, budget // per_kv))


def _attn_slab(pq, vq, pk, vk, pv, vv, causal, scale, rope, slab_heads, tiles):
    """The slab schedule: for a group of KV heads at a time, expand (and rotate) the group's Q, K and V once each
    into slab buffers (one Triton pass), run flash attention on them and copy the output into place. Full-size
    Q, K, V exist only for the group (SLAB_BYTES); no key tile is rebuilt twice."""
    from ..attention import flash_attn

    K = load_kernel_module(_KERNEL)
    B, Tq, Hq, _ = pq.shape
    Tk, Hkv = pk.shape[1], pk.shape[2]
    D = vq.shape[2]
    group = Hq // Hkv
    n = slab_heads or slab_kv_heads(B, Tq, Tk, Hq, Hkv, D, pq.element_size())
    o = torch.empty((B, Tq, Hq, D), device=pq.device, dtype=pq.dtype)

    def buf(T, heads):
        return torch.empty((B, T, heads, D), device=pq.device, dtype=pq.dtype)

    for k0 in range(0, Hkv, n):
        g = min(n, Hkv - k0)
        q = K.lowrank_expand_fwd(pq, vq, k0 * group, buf(Tq, g * group), rope, Tk - Tq, **tiles)
        k = K.lowrank_expand_fwd(pk, vk, k0, buf(Tk, g), rope, 0, **tiles)
        v = K.lowrank_expand_fwd(pv, vv, k0, buf(Tk, g), None, 0, **tiles)
        o[:, :, k0 * group:(k0 + g) * group] = flash_attn(q, k, v, causal=causal, softmax_scale=scale)
        del q, k, v
    return o


def lowrank_attn(pq: torch.Tensor, vq: torch.Tensor, pk: torch.Tensor, vk: torch.Tensor, pv: torch.Tensor,
                 vv: torch.Tensor, causal: bool = True, softmax_scale: float | None = None,
                 rope: tuple[torch.Tensor, torch.Tensor] | None = None, cache_seqlens: torch.Tensor | None = None,
                 schedule: str | None = None, slab_heads: int | None = None, **tiles: int) -> torch.Tensor:
    """Attention whose queries, keys and values come from per-head low-rank factors, rebuilt tile by tile on chip.

    pq (B, Tq, Hq, Rq) = x U_q and vq (Hq, Rq, D): head h's query is pq[:, :, h] @ vq[h]; likewise pk, vk and
    pv, vv with Hkv heads (GQA when Hq > Hkv). rope = (cos, sin), each (S >= Tk, D/2), one angle per frequency
    (rotate-half layout): keys sit at positions 0..L-1 and queries at L-Tq..L-1, L = Tk or cache_seqlens[b]
    (then keys at or past it are ignored; a static-shape decode step passes the cache and its fill).
    Causal masks are aligned bottom-right, as flash_attn. Returns o (B, Tq, Hq, D) in the inputs' dtype.
    schedule: 'fused' (FlashSVD's: Q, K, V rebuilt tile by tile inside the attention kernel, never in HBM),
    'slab' (a group of `slab_heads` KV heads at a time: its Q, K, V expanded once into slab buffers, then flash
    attention; no cache_seqlens) or None (choose_attn_schedule). `tiles` override the kernels' tile sizes.

    Examples:
        >>> import torch, ioaware
        >>> B, T, H, R, D = 1, 8, 2, 4, 16
        >>> pq, pk, pv = (torch.randn(B, T, H, R) for _ in range(3))
        >>> vq, vk, vv = (torch.randn(H, R, D) / 4 for _ in range(3))
        >>> o = ioaware.lowrank_attn(pq, vq, pk, vk, pv, vv)
        >>> q, k, v = (torch.einsum("bthr,hrd->bthd", p, w) for p, w in ((pq, vq), (pk, vk), (pv, vv)))
        >>> torch.allclose(o, ioaware.flash_attn(q, k, v, causal=True), atol=1e-4)   # the same attention
        True
    """
    _check_attn(pq, vq, pk, vk, pv, vv, rope, cache_seqlens)
    if schedule not in (None, *SCHEDULES):
        raise ValueError(f"lowrank_attn: schedule must be one of {', '.join(SCHEDULES)} (or None), got {schedule!r}")
    if schedule == "slab" and cache_seqlens is not None:
        raise UnsupportedError("lowrank_attn: the 'slab' schedule takes no cache_seqlens; use 'fused' (or None)")
    if slab_heads is not None and not 1 <= slab_heads <= pk.shape[2]:
        raise ValueError(f"lowrank_attn: slab_heads must be in [1, {pk.shape[2]}] (KV heads), got {slab_heads}")
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(vq.shape[2])
    backend = backend_for(pq.device.type)
    if backend == "reference" or _needs_grad(pq, vq, pk, vk, pv, vv):
        record("lowrank_attn", "reference")
        return lowrank_attn_ref(pq, vq, pk, vk, pv, vv, causal, scale, rope, cache_seqlens)
    schedule = schedule or choose_attn_schedule(pq.shape[1], cache_seqlens)
    record("lowrank_attn", backend)
    record("lowrank_attn_schedule", schedule)  # a separate key: callers match lowrank_attn's backend exactly
    if rope is not None and pq.dtype != torch.float32 and rope[0].dtype == torch.float32:
        # fp16 tables halve what every program reads per key; their rounding (2^-11) is below the inputs' own
        rope = (rope[0].half(), rope[1].half())
    pq, pk, pv = _unit_last(pq), _unit_last(pk), _unit_last(pv)
    vq, vk, vv = vq.contiguous(), vk.contiguous(), vv.contiguous()
    if schedule == "slab":
        return _attn_slab(pq, vq, pk, vk, pv, vv, causal, scale, rope, slab_heads, tiles)
    return load_kernel_module(_KERNEL).lowrank_attn_fwd(pq, vq, pk, vk, pv, vv, causal, scale, rope, cache_seqlens,
                                                        **tiles)


def _check_swiglu(pg: torch.Tensor, pu: torch.Tensor, vg: torch.Tensor, vu: torch.Tensor, u2: torch.Tensor,
                  schedule: str | None, slab_rows: int | None) -> None:
    for n, t in (("pg", pg), ("pu", pu), ("vg", vg), ("vu", vu), ("u2", u2)):
        _dims(f"lowrank_swiglu: {n}", t, 2, "matrix")
    check_dtypes_and_device("lowrank_swiglu", {"pg": pg, "pu": pu, "vg": vg, "vu": vu, "u2": u2})
    M, RG = pg.shape
    if pu.shape[0] != M:
        raise ShapeError(f"lowrank_swiglu: pg and pu must have the same rows, got {M} and {pu.shape[0]}")
    if vg.shape[0] != RG or vu.shape[0] != pu.shape[1]:
        raise ShapeError(f"lowrank_swiglu: vg {tuple(vg.shape)} and vu {tuple(vu.shape)} must have as many rows as "
                         f"pg and pu have columns ({RG}, {pu.shape[1]})")
    if vg.shape[1] != vu.shape[1] or u2.shape[0] != vg.shape[1]:
        raise ShapeError(f"lowrank_swiglu: the FFN widths differ: vg {vg.shape[1]}, vu {vu.shape[1]}, u2 rows "
                         f"{u2.shape[0]}")
    if min(M, RG, pu.shape[1], u2.shape[1]) == 0:
        raise ShapeError(f"lowrank_swiglu: empty input: rows={M}, ranks=({RG}, {pu.shape[1]}, {u2.shape[1]})")
    if schedule not in (None, *SCHEDULES):
        raise ValueError(f"lowrank_swiglu: schedule must be one of {', '.join(SCHEDULES)} (or None), got {schedule!r}")
    if slab_rows is not None and slab_rows < 1:
        raise ValueError(f"lowrank_swiglu: slab_rows must be >= 1, got {slab_rows}")


def choose_schedule(R2: int) -> str:
    """'fused' when the rank-space output fits one tile of the fused kernel (no gate/up tile is rebuilt twice),
    else 'slab' (the fused kernel would rebuild them once per R2 tile; README, "Schedules").

    Examples:
        >>> from ioaware.kernels.lowrank import choose_schedule
        >>> choose_schedule(16), choose_schedule(4096)
        ('fused', 'slab')
    """
    from .kernel import FUSED_TILES

    return "fused" if R2 <= FUSED_TILES["block_r2"] else "slab"


def lowrank_swiglu(pg: torch.Tensor, pu: torch.Tensor, vg: torch.Tensor, vu: torch.Tensor, u2: torch.Tensor,
                   schedule: str | None = None, slab_rows: int | None = None, **tiles: int) -> torch.Tensor:
    """s = (silu(pg vg) * (pu vu)) u2 without the (M, F) gate, up or hidden tensors in HBM.

    pg (M, Rg) = x U_g, pu (M, Ru) = x U_u (column slices of one (M, Rg + Ru) product are fine), vg (Rg, F),
    vu (Ru, F), u2 (F, R2). schedule: 'fused' (FlashSVD's, nothing F-wide in HBM), 'slab' (h for `slab_rows` rows
    at a time, then cuBLAS) or None (choose_schedule). Returns s (M, R2); the FFN's output is s @ v2.
    `tiles` override the kernel's tile sizes (kernel.py).

    Examples:
        >>> import torch, ioaware
        >>> pg, pu = torch.randn(5, 8), torch.randn(5, 8)
        >>> vg, vu, u2 = torch.randn(8, 64) / 3, torch.randn(8, 64) / 3, torch.randn(64, 4) / 8
        >>> s = ioaware.lowrank_swiglu(pg, pu, vg, vu, u2)
        >>> torch.allclose(s, (torch.nn.functional.silu(pg @ vg) * (pu @ vu)) @ u2, atol=1e-4)
        True
    """
    _check_swiglu(pg, pu, vg, vu, u2, schedule, slab_rows)
    backend = backend_for(pg.device.type)
    if backend == "reference" or _needs_grad(pg, pu, vg, vu, u2):
        record("lowrank_swiglu", "reference")
        return lowrank_swiglu_ref(pg, pu, vg, vu, u2)
    schedule = schedule or choose_schedule(u2.shape[1])
    record("lowrank_swiglu", f"{backend}:{schedule}")
    pg, pu = _unit_last(pg), _unit_last(pu)
    vg, vu, u2 = _unit_last(vg), _unit_last(vu), _unit_last(u2)
    return load_kernel_module(_KERNEL).lowrank_swiglu_fwd(pg, pu, vg, vu, u2, schedule, slab_rows, **tiles)


def lowrank_ffn(x: torch.Tensor, u13: torch.Tensor, vg: torch.Tensor, vu: torch.Tensor, u2: torch.Tensor,
                v2: torch.Tensor, schedule: str | None = None, slab_rows: int | None = None) -> torch.Tensor:
    """The low-rank SwiGLU FFN, y = ((silu((x Ug) Vg) * ((x Uu) Vu)) U2) V2, for x (..., d).

    u13 = [Ug | Uu] (d, Rg + Ru): both rank activations come from one GEMM; the middle runs in lowrank_swiglu;
    the two thin products (x u13 and s v2) are cuBLAS's.

    Examples:
        >>> import torch
        >>> from ioaware.kernels.lowrank import lowrank_ffn
        >>> x, u13 = torch.randn(2, 3, 32), torch.randn(32, 16) / 6
        >>> vg, vu, u2, v2 = torch.randn(8, 64) / 3, torch.randn(8, 64) / 3, torch.randn(64, 4) / 8, torch.randn(4, 32)
        >>> lowrank_ffn(x, u13, vg, vu, u2, v2).shape
        torch.Size([2, 3, 32])
    """
    _dims("lowrank_ffn: u13", u13, 2, "(dim, rank_gate + rank_up)")
    _dims("lowrank_ffn: u2", u2, 2, "(ffn, rank_down)")
    _dims("lowrank_ffn: v2", v2, 2, "(rank_down, dim)")
    if x.shape[-1] != u13.shape[0] or v2.shape[0] != u2.shape[1]:
        raise ShapeError(f"lowrank_ffn: x {tuple(x.shape)}, u13 {tuple(u13.shape)}, u2 {tuple(u2.shape)} and v2 "
                         f"{tuple(v2.shape)} do not chain")
    if u13.shape[1] != vg.shape[0] + vu.shape[0]:
        raise ShapeError(f"lowrank_ffn: u13 has {u13.shape[1]} columns but the gate and up ranks are "
                         f"{vg.shape[0]} + {vu.shape[0]}")
    xf = x.reshape(-1, x.shape[-1])
    p = xf @ u13  # (M, Rg + Ru), the rank activations
    rg = vg.shape[0]
    s = lowrank_swiglu(p[:, :rg], p[:, rg:], vg, vu, u2, schedule, slab_rows)  # (M, R2)
    return (s @ v2).reshape(*x.shape[:-1], v2.shape[1])
