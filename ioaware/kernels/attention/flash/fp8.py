"""FP8 (e4m3) attention forward, FlashAttention-3's block quantisation and incoherent processing, in Triton.

    x = quantize_fp8(q, k, v, hadamard=True)       # once per (q, k, v): a memory-bound pass
    out, lse = flash_attn_fp8(x, causal=True)       # (B, Tq, Hq, D) bf16, (B, Hq, Tq) fp32

Quantisation (`quantize_fp8`), e4m3 (max 448):
- Q and K: one scale per block of `SCALE_BLOCK` = 128 rows of one head (amax / 448). The kernel multiplies each
  fp32 S tile by q_scale x k_scale, so a block's outliers cost only that block's resolution.
- V: one scale per channel of one head. O = P V contracts over the sequence, so a channel's scale factors out of
  the sum exactly and is applied once to the output.
- `hadamard=True` (FA3's incoherent processing): Q and K are multiplied by the same random orthogonal matrix
  R = diag(random signs) · H_D / sqrt(D) along the head dim before quantising. Q Kᵀ is unchanged in exact arithmetic
  (R Rᵀ = I), but an outlier channel is spread over all D channels, so the per-block amax, and with it the rounding
  step, shrinks. D must be a power of two for it.
- V is stored transposed, (B, Hkv, D, Tk): the P·V product then reads V with the contracted (sequence) dimension
  contiguous, the operand order Hopper's FP8 wgmma needs (it takes only K-major operands).

Forward kernel (`_fp8_fwd_kernel`): FlashAttention-2's schedule (kernel.py) with fp8 tiles: S = Q8 K8ᵀ accumulates in
fp32; the online softmax runs in fp32; P is scaled by 256 (exact, a power of two, so that the small probabilities
keep e4m3's mantissa instead of falling into its subnormals) and cast to e4m3 for P8 V8; the output is divided by
256 · l and multiplied by V's channel scales. The row sum l is taken from the fp32 P.

This is an approximation: its error against fp64 attention is measured in tests/kernels/test_flash_attn_fp8.py
(CPU, interpreter) and on the device (dev/attention/fp8_bench.py), beside the error of bf16 attention.
Under Triton's interpreter the fp8 tiles are widened to fp32 after loading (EMULATE), with P rounded through e4m3
exactly as the compiled kernel rounds it, so CI checks the same arithmetic.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ....env import settings
from ....errors import DeviceError, DTypeError, ShapeError, UnsupportedError
from ..._dispatch import interpreting
from ...triton_utils import LOG2E

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0
SCALE_BLOCK = 128  # rows of Q / K per scale; the kernel's BM and BN divide it
P_SCALE = 256.0  # P (in [0, 1]) times this before the e4m3 cast: <= 256 < 448, and a power of two (exact)
_TINY = 1e-12  # an all-zero block gets this amax (its scale then turns zeros into zeros)


@dataclass(frozen=True)
class Fp8QKV:
    """Quantised attention inputs. q8 (B, Tq, Hq, D) and k8 (B, Tk, Hkv, D) e4m3; vt8 (B, Hkv, D, Tk_pad) e4m3
    (V transposed, the sequence padded to 16 for aligned rows; only the first Tk columns are read); q_scale
    (B, Hq, ceil(Tq / 128)), k_scale (B, Hkv, ceil(Tk / 128)), v_scale (B, Hkv, D) fp32; rotation (D, D) fp32 when
    Q and K were rotated (Hadamard), else None."""

    q8: torch.Tensor
    k8: torch.Tensor
    vt8: torch.Tensor
    q_scale: torch.Tensor
    k_scale: torch.Tensor
    v_scale: torch.Tensor
    tk: int
    rotation: torch.Tensor | None = None

    @property
    def shape(self) -> tuple[int, int, int, int, int, int]:
        """(B, Tq, Hq, D, Tk, Hkv)."""
        B, Tq, Hq, D = self.q8.shape
        return B, Tq, Hq, D, self.tk, self.k8.shape[2]


@functools.cache
def hadamard_rotation(D: int, seed: int = 0) -> torch.Tensor:
    """R = diag(s) · H_D / sqrt(D), s random signs from `seed`: orthogonal (R Rᵀ = I), fp32 (D, D) on CPU."""
    if D < 1 or D & (D - 1):
        raise UnsupportedError(f"flash_attn_fp8: hadamard=True needs a power-of-two head dim, got {D}; "
                               "pass hadamard=False")
    from scipy.linalg import hadamard

    g = torch.Generator().manual_seed(seed)
    signs = torch.randint(0, 2, (D,), generator=g).float() * 2 - 1
    return signs[:, None] * torch.from_numpy(hadamard(D)).float() / math.sqrt(D)


def _block_quant(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (B, T, H, D) -> e4m3 (B, T, H, D) and scales (B, H, ceil(T / SCALE_BLOCK)) fp32, amax / 448 per block."""
    B, T, H, D = x.shape
    nb = -(-T // SCALE_BLOCK)
    xf = x.float()
    pad = nb * SCALE_BLOCK - T
    xp = torch.nn.functional.pad(xf, (0, 0, 0, 0, 0, pad)) if pad else xf
    amax = xp.view(B, nb, SCALE_BLOCK, H, D).abs().amax(dim=(2, 4))  # (B, nb, H)
    scale = (amax.clamp_min(_TINY) / FP8_MAX).transpose(1, 2).contiguous()  # (B, H, nb)
    per_row = scale.transpose(1, 2).repeat_interleave(SCALE_BLOCK, dim=1)[:, :T]  # (B, T, H)
    return (xf / per_row[..., None]).to(FP8), scale


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"quantize_fp8: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ShapeError(f"quantize_fp8: {name} must be 4-D (batch, seqlen, heads, head_dim), got {tuple(t.shape)}")
        if t.dtype not in (torch.float16, torch.bfloat16, torch.float32):
            raise DTypeError(f"quantize_fp8: {name} must be float16, bfloat16 or float32, got {t.dtype}")
        if t.device != q.device:
            raise DeviceError(f"quantize_fp8: q is on {q.device} but {name} is on {t.device}")
    if k.shape != v.shape:
        raise ShapeError(f"quantize_fp8: k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    B, Tq, Hq, D = q.shape
    Bk, Tk, Hkv, Dk = k.shape
    if Bk != B or Dk != D:
        raise ShapeError(f"quantize_fp8: q {tuple(q.shape)} and k {tuple(k.shape)} differ in batch or head dim")
    if D not in (16, 32, 64, 128, 256):
        raise UnsupportedError(f"flash_attn_fp8: head_dim {D} is not supported; it must be 16, 32, 64, 128 or 256 "
                               "(whole FP8 tensor-core tiles)")
    if Hkv == 0 or Hq % Hkv:
        raise ShapeError(f"quantize_fp8: query heads ({Hq}) must be a multiple of key/value heads ({Hkv})")
    if min(B, Tq, Tk) == 0:
        raise ShapeError(f"quantize_fp8: empty input: batch={B}, seqlen_q={Tq}, seqlen_k={Tk}")


def quantize_fp8(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, hadamard: bool = False,
                 seed: int = 0) -> Fp8QKV:
    """Quantise (B, T, H, D) q, k, v to e4m3 with the scales described in the module docstring."""
    _check(q, k, v)
    rot = None
    if hadamard:
        rot = hadamard_rotation(q.shape[-1], seed).to(q.device)
        q, k = q.float() @ rot, k.float() @ rot
    q8, qs = _block_quant(q)
    k8, ks = _block_quant(k)
    B, Tk, Hkv, D = v.shape
    vs = (v.float().abs().amax(dim=1).clamp_min(_TINY) / FP8_MAX)  # (B, Hkv, D)
    tkp = -(-Tk // 16) * 16
    vt8 = torch.zeros((B, Hkv, D, tkp), dtype=FP8, device=v.device)
    vt8[..., :Tk] = (v.float() / vs[:, None]).permute(0, 2, 3, 1).to(FP8)
    return Fp8QKV(q8, k8, vt8, qs, ks, vs.contiguous(), Tk, rot)


def dequantize_fp8(x: Fp8QKV) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fp32 (q, k, v) that the quantised values stand for (rotated back when a rotation was applied)."""
    def rows(t8: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        per_row = s.transpose(1, 2).repeat_interleave(SCALE_BLOCK, dim=1)[:, :t8.shape[1]]
        return t8.float() * per_row[..., None]

    q, k = rows(x.q8, x.q_scale), rows(x.k8, x.k_scale)
    if x.rotation is not None:
        q, k = q @ x.rotation.T, k @ x.rotation.T
    v = (x.vt8[..., :x.tk].float() * x.v_scale[..., None]).permute(0, 3, 1, 2)
    return q, k, v


# ----------------------------------------------------------------------------------------------------- kernel
@triton.jit
def _round_e4m3(x):
    """x (>= 0, < 448) rounded to the nearest e4m3 value, in fp32: the interpreter's own fp32 -> e4m3 cast (Triton
    3.9) halves a value whose rounding carries into the next binade (127.9 -> 64), so EMULATE rounds by hand: a step
    of 2^(e - 3) in binade e, 2^-9 below 2^-6 (subnormals). Ties round up instead of to even (rare in fp32 data)."""
    e = tl.floor(tl.math.log2(tl.maximum(x, 0.015625)))
    step = tl.math.exp2(e - 3.0)
    return tl.floor(x / step + 0.5) * step


@triton.jit
def _fp8_inner(b_acc, b_m, b_l, b_q, b_qs, k_base, vt_base, ks_base, s_kt, s_vd, o_m, o_n, o_d, lo, hi, Tk, offset,
               scale_log2, BN: tl.constexpr, SB: tl.constexpr, IS_CAUSAL: tl.constexpr, MASK: tl.constexpr,
               EMULATE: tl.constexpr):
    for start_n in range(lo, hi, BN):
        o_k = start_n + o_n
        b_ks = tl.load(ks_base + start_n // SB)
        if MASK:
            m_k = o_k < Tk
            b_kt = tl.load(k_base + o_k[None, :] * s_kt + o_d[:, None], mask=m_k[None, :], other=0.0)
            b_v = tl.load(vt_base + o_k[:, None] + o_d[None, :] * s_vd, mask=m_k[:, None], other=0.0)
        else:
            b_kt = tl.load(k_base + o_k[None, :] * s_kt + o_d[:, None])
            b_v = tl.load(vt_base + o_k[:, None] + o_d[None, :] * s_vd)
        if EMULATE:
            b_kt = b_kt.to(tl.float32)
            b_v = b_v.to(tl.float32)
        b_s = tl.dot(b_q, b_kt) * (b_qs * b_ks * scale_log2)  # (BM, BN) fp32, log2 units
        if MASK:
            m_s = m_k[None, :]
            if IS_CAUSAL:
                m_s = m_s & (o_k[None, :] <= o_m[:, None] + offset)
            b_s = tl.where(m_s, b_s, float("-inf"))
            b_m_new = tl.maximum(b_m, tl.max(b_s, 1))
            b_m_use = tl.where(b_m_new == float("-inf"), 0.0, b_m_new)
        else:
            b_m_new = tl.maximum(b_m, tl.max(b_s, 1))
            b_m_use = b_m_new
        b_p = tl.math.exp2(b_s - b_m_use[:, None])
        b_alpha = tl.math.exp2(b_m - b_m_use)
        b_l = b_l * b_alpha + tl.sum(b_p, 1)
        b_acc = b_acc * b_alpha[:, None]
        if EMULATE:
            b_acc = tl.dot(_round_e4m3(b_p * 256.0), b_v, b_acc)  # P_SCALE
        else:
            b_acc = tl.dot((b_p * 256.0).to(tl.float8e4nv), b_v, b_acc)
        b_m = b_m_new
    return b_acc, b_m, b_l


@triton.jit
def _fp8_fwd_kernel(Q, K, VT, QS, KS, VS, O, LSE,
                    s_qb, s_qt, s_qh, s_kb, s_kt, s_kh, s_vb, s_vh, s_vd, s_ob, s_ot, s_oh,
                    Tq, Tk, NQB, NKB, scale_log2, T_BUCKET,
                    HQ: tl.constexpr, HKV: tl.constexpr, GROUP: tl.constexpr, D: tl.constexpr,
                    BM: tl.constexpr, BN: tl.constexpr, SB: tl.constexpr, IS_CAUSAL: tl.constexpr,
                    REV: tl.constexpr, EMULATE: tl.constexpr):
    i_m = tl.num_programs(0) - 1 - tl.program_id(0) if REV else tl.program_id(0)
    i_bh = tl.program_id(1)
    i_b = (i_bh // HQ).to(tl.int64)
    i_h = i_bh % HQ
    i_hk = i_h // GROUP
    o_m = i_m * BM + tl.arange(0, BM)
    o_n = tl.arange(0, BN)
    o_d = tl.arange(0, D)
    m_m = o_m < Tq
    b_q = tl.load(Q + i_b * s_qb + i_h * s_qh + o_m[:, None] * s_qt + o_d[None, :], mask=m_m[:, None], other=0.0)
    if EMULATE:
        b_q = b_q.to(tl.float32)
    b_qs = tl.load(QS + (i_b * HQ + i_h) * NQB + (i_m * BM) // SB)
    k_base = K + i_b * s_kb + i_hk * s_kh
    vt_base = VT + i_b * s_vb + i_hk * s_vh
    ks_base = KS + (i_b * HKV + i_hk) * NKB
    b_m = tl.full([BM], float("-inf"), tl.float32)
    b_l = tl.zeros([BM], tl.float32)
    b_acc = tl.zeros([BM, D], tl.float32)
    offset = Tk - Tq
    if IS_CAUSAL:
        hi = tl.maximum(tl.minimum(Tk, (i_m + 1) * BM + offset), 0)
        lo_mask = tl.maximum(tl.minimum((i_m * BM + offset + 1) // BN * BN, (Tk // BN) * BN), 0)
    else:
        hi = Tk
        lo_mask = (Tk // BN) * BN
    b_acc, b_m, b_l = _fp8_inner(b_acc, b_m, b_l, b_q, b_qs, k_base, vt_base, ks_base, s_kt, s_vd, o_m, o_n, o_d,
                                 0, lo_mask, Tk, offset, scale_log2, BN, SB, IS_CAUSAL, False, EMULATE)
    b_acc, b_m, b_l = _fp8_inner(b_acc, b_m, b_l, b_q, b_qs, k_base, vt_base, ks_base, s_kt, s_vd, o_m, o_n, o_d,
                                 lo_mask, hi, Tk, offset, scale_log2, BN, SB, IS_CAUSAL, True, EMULATE)
    b_empty = b_l == 0.0
    b_vs = tl.load(VS + (i_b * HKV + i_hk) * D + o_d)
    b_o = b_acc * (b_vs[None, :] / (256.0 * tl.where(b_empty, 1.0, b_l)[:, None]))  # P_SCALE
    b_lse = tl.where(b_empty, float("-inf"), (b_m + tl.math.log2(tl.where(b_empty, 1.0, b_l))) * 0.6931471805599453)
    tl.store(O + i_b * s_ob + i_h * s_oh + o_m[:, None] * s_ot + o_d[None, :], b_o.to(O.dtype.element_ty),
             mask=m_m[:, None])
    tl.store(LSE + i_bh.to(tl.int64) * Tq + o_m, b_lse, mask=m_m)


# (BM, BN, warps, stages): the autotuner's candidates (IOAWARE_AUTOTUNE=1); FP8_TILE is the default without it
_FP8_TILES = [(128, 128, 8, 3), (128, 128, 8, 4), (128, 64, 8, 3), (128, 64, 4, 3), (128, 128, 4, 3), (64, 128, 4, 3),
              (128, 64, 8, 4), (64, 64, 4, 3)]
FP8_TILE = {"BM": 128, "BN": 128, "num_warps": 8, "num_stages": 3}
FP8_TILE_D256 = {"BM": 64, "BN": 64, "num_warps": 8, "num_stages": 2}  # D 256: the least spilling (fp8_aot.py)
_INTERPRET_TILE = {"BM": 32, "BN": 32}
_TUNED: dict = {}


def _autotuned():
    if "fwd" not in _TUNED:
        configs = [triton.Config({"BM": bm, "BN": bn}, num_warps=w, num_stages=s) for bm, bn, w, s in _FP8_TILES]
        _TUNED["fwd"] = triton.autotune(configs=configs, key=["T_BUCKET", "D", "GROUP", "IS_CAUSAL"])(_fp8_fwd_kernel)
    return _TUNED["fwd"]


def flash_attn_fp8(x: Fp8QKV, causal: bool = False, softmax_scale: float | None = None,
                   out_dtype: torch.dtype = torch.bfloat16) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention over quantised inputs. Returns out (B, Tq, Hq, D) in `out_dtype` and lse (B, Hq, Tq) fp32 (natural
    log). `causal` is bottom-right aligned, as in `ioaware.flash_attn`. Runs on CUDA (sm_89+: e4m3 tensor cores) or
    under Triton's interpreter; `flash_attn_fp8_ref` is the same arithmetic in PyTorch for any device."""
    if not isinstance(x, Fp8QKV):
        raise TypeError(f"flash_attn_fp8: expects quantize_fp8(q, k, v)'s result, got {type(x).__name__}")
    B, Tq, Hq, D, Tk, Hkv = x.shape
    dev = x.q8.device
    emulate = interpreting()
    if dev.type != "cuda" and not emulate:
        raise DeviceError(f"flash_attn_fp8: the kernel needs CUDA tensors (or TRITON_INTERPRET=1), got {dev.type}; "
                          "flash_attn_fp8_ref runs anywhere")
    if dev.type == "cuda" and not emulate and torch.cuda.get_device_capability(dev)[0] * 10 + \
            torch.cuda.get_device_capability(dev)[1] < 89:
        raise UnsupportedError("flash_attn_fp8: e4m3 tensor cores need sm_89 or newer (Ada, Hopper)")
    if B * Hq > 65535:
        raise UnsupportedError(f"flash_attn_fp8: batch x heads = {B * Hq} exceeds the grid limit 65535")
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(D)
    o = torch.empty((B, Tq, Hq, D), dtype=out_dtype, device=dev)
    lse = torch.empty((B, Hq, Tq), dtype=torch.float32, device=dev)
    q8, k8, vt8 = x.q8, x.k8, x.vt8
    args = (q8, k8, vt8, x.q_scale, x.k_scale, x.v_scale, o, lse,
            q8.stride(0), q8.stride(1), q8.stride(2), k8.stride(0), k8.stride(1), k8.stride(2),
            vt8.stride(0), vt8.stride(1), vt8.stride(2), o.stride(0), o.stride(1), o.stride(2),
            Tq, Tk, x.q_scale.shape[-1], x.k_scale.shape[-1], scale * LOG2E, 1 << max(Tk - 1, 0).bit_length())
    kw = dict(HQ=Hq, HKV=Hkv, GROUP=Hq // Hkv, D=D, SB=SCALE_BLOCK, IS_CAUSAL=causal, REV=causal, EMULATE=emulate)
    if emulate:
        _fp8_fwd_kernel[(triton.cdiv(Tq, 32), B * Hq)](*args, **kw, **_INTERPRET_TILE)
    elif settings().autotune:
        _autotuned()[lambda meta: (triton.cdiv(Tq, meta["BM"]), B * Hq)](*args, **kw)
    else:
        tile = FP8_TILE if D <= 128 else FP8_TILE_D256
        _fp8_fwd_kernel[(triton.cdiv(Tq, tile["BM"]), B * Hq)](*args, **kw, **tile)
    return o, lse  # a rotation (hadamard=True) turned Q and K together: Q Kᵀ, so the output, needs no correction


def flash_attn_fp8_ref(x: Fp8QKV, causal: bool = False, softmax_scale: float | None = None) -> torch.Tensor:
    """The kernel's arithmetic in fp32 PyTorch (no tiling): S from the dequantised e4m3 Q and K, P rounded through
    e4m3 after scaling by 256 per row maximum, V from its e4m3 values times the channel scales. Tiles make the
    kernel's P rounding differ (its running maximum is per tile), so kernel and reference agree to e4m3's step,
    not bit for bit. Returns (B, Tq, Hq, D) fp32."""
    B, Tq, Hq, D, Tk, Hkv = x.shape
    qd, kd, _ = dequantize_fp8(x)
    if x.rotation is not None:  # the kernel works in the rotated basis
        qd, kd = qd @ x.rotation, kd @ x.rotation
    g = Hq // Hkv
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(D)
    kd = kd.repeat_interleave(g, dim=2)
    v8 = x.vt8[..., :Tk].float().repeat_interleave(g, dim=1)  # (B, Hq, D, Tk)
    s = torch.einsum("bqhd,bkhd->bhqk", qd, kd) * scale
    if causal:
        mask = torch.ones(Tq, Tk, dtype=torch.bool, device=s.device).tril(Tk - Tq)
        s = s.masked_fill(~mask, float("-inf"))
    m = s.amax(-1, keepdim=True)
    m = torch.where(torch.isinf(m), torch.zeros_like(m), m)
    p = torch.exp(s - m)
    l = p.sum(-1, keepdim=True)
    p8 = (p * P_SCALE).to(FP8).float()
    o = torch.einsum("bhqk,bhdk->bhqd", p8, v8) / (P_SCALE * l.clamp_min(1e-30))
    o = o * x.v_scale.repeat_interleave(g, dim=1)[:, :, None, :]
    return torch.where(l > 0, o, torch.zeros_like(o)).transpose(1, 2)
