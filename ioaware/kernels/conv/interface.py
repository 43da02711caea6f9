"""`ioaware.fftconv`: validation, kernel-spectrum preparation, autograd and dispatch of the FFT long convolution."""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch

from ...errors import DTypeError, ShapeError, UnsupportedError
from .._dispatch import backend_for, load_kernel_module, record
from .._validate import check_dtypes_and_device
from .reference import (
    NMAX,
    NMAX_FUSED,
    Plan,
    fft_size,
    fftconv_ref,
    frequency_mask,
    kept_columns,
    layout_to_spectrum,
    make_plan,
    outer_spectrum_to_layout,
    pad_kernel,
    spectrum_to_layout,
)

_KERNEL = "ioaware.kernels.conv.monarch"


@dataclass
class KernelSpectrum:
    """A kernel prepared for one sequence length: its spectrum in the kernel's layout (fp32 planes), cacheable
    across calls while the kernel's weights do not change (`ioaware.nn.LongConv` does this).

    kpad is the padded time-domain kernel (differentiable: gradients reach k through it); kf is detached.

    Examples:
        >>> import torch
        >>> from ioaware.kernels.conv import prepare_kernel
        >>> ks = prepare_kernel(torch.randn(4, 100) * 0.01, L=100)
        >>> ks.H, ks.L, ks.N          # 4 heads, length-100 inputs, an FFT grid of N >= 2L (here the smallest one)
        (4, 100, 512)
    """

    L: int
    N: int
    causal: bool
    plan: Plan
    kpad: torch.Tensor  # (H, N) fp32
    kf: torch.Tensor  # fused: (H, 2, *layout); outer: (H, P/2+1, 2, *inner layout)
    keep: torch.Tensor | None  # kept spectrum columns (frequency-sparse), else None
    mask: torch.Tensor | None  # (N,) bool mask on the FFT grid (frequency-sparse), else None

    @property
    def H(self) -> int:
        """The number of heads (channels) the kernel has."""
        return self.kpad.shape[0]


def _keep_cols(plan: Plan, freq_keep: float) -> int:
    if not 0.0 < freq_keep <= 1.0:
        raise ValueError(f"fftconv: freq_keep must be in (0, 1], got {freq_keep}")
    cols = 16
    while cols < plan.M and cols < freq_keep * plan.M:
        cols *= 2
    return min(cols, plan.M)


def sparse_plan(N: int, dtype: torch.dtype | None = None) -> Plan:
    """The order-2 fused plan used by the frequency-sparse variant (it skips columns of the [k1, k'] layout)."""
    plan = make_plan(N, dtype=dtype) if N <= NMAX_FUSED else None
    if plan is None or plan.kind != "fused" or plan.N3 != 1:
        raise UnsupportedError(f"fftconv: freq_keep needs a fused order-2 plan: FFT size ≤ {NMAX_FUSED} "
                               f"(L ≤ {NMAX_FUSED // 2}; fp32 inputs: L ≤ 512); this L needs {N}")
    return plan


def prepare_kernel(k: torch.Tensor, L: int, causal: bool = True, freq_keep: float | None = None,
                   plan: Plan | None = None, dtype: torch.dtype = torch.bfloat16) -> KernelSpectrum:
    """Pad k (H, Lk) to the FFT grid of length L and compute its spectrum / N in the kernel's layout.

    freq_keep: the frequency-sparse variant; keep about this fraction of the spectrum (rounded up to whole
    columns of the [k1, k'] layout, at least 16 of them): the lowest frequencies and their mirrors. The exact
    mask is `.mask` (N bins).

    Examples:
        >>> import torch, ioaware
        >>> from ioaware.kernels.conv import prepare_kernel
        >>> u, k = torch.randn(2, 4, 100), torch.randn(4, 100) * 0.01
        >>> ks = prepare_kernel(k, L=100)                       # once per kernel, reused while k is unchanged
        >>> torch.allclose(ioaware.fftconv(u, ks), ioaware.fftconv(u, k), atol=1e-6)
        True
    """
    if k.dim() != 2:
        raise ShapeError(f"fftconv: k must be 2-D (heads, taps), got shape {tuple(k.shape)}")
    if not k.is_floating_point():
        raise DTypeError(f"fftconv: k must be a float tensor, got {k.dtype}")
    Lk = k.shape[1]
    if Lk == 0:
        raise ShapeError("fftconv: k has no taps")
    if causal and Lk > L:
        raise ShapeError(f"fftconv: a causal kernel has at most L = {L} taps, got {Lk}")
    if not causal and Lk > 2 * L:
        raise ShapeError(f"fftconv: a non-causal kernel has at most 2L = {2 * L} taps, got {Lk}")
    N = fft_size(L)
    if N > NMAX:
        raise UnsupportedError(f"fftconv: L = {L} needs an FFT of {N} > {NMAX}")
    if plan is None:
        plan = sparse_plan(N, dtype) if freq_keep is not None else make_plan(N, dtype=dtype)
    if plan.N < N or plan.N & (plan.N - 1):
        raise ValueError(f"fftconv: plan of FFT size {plan.N} given for L = {L}, which needs a power of two ≥ {N}")
    N = plan.N
    kpad = pad_kernel(k.float(), L, N, causal)
    with torch.no_grad():
        spec = torch.fft.fft(kpad.detach(), n=N) / N
        keep = mask = None
        if freq_keep is not None:
            cols = _keep_cols(plan, freq_keep)
            keep = kept_columns(plan, cols)
            mask = frequency_mask(N, plan, cols).to(spec.device)
            spec = spec * mask
        if plan.kind == "fused":
            lay = spectrum_to_layout(spec, plan)
            if keep is not None:
                lay = lay[..., keep.to(lay.device)]
            kf = torch.stack([lay.real, lay.imag], 1)
        else:
            lay = outer_spectrum_to_layout(spec, plan)
            kf = torch.stack([lay.real, lay.imag], 2)
        kf = kf.float().contiguous()
    return KernelSpectrum(L, N, causal, plan, kpad, kf, keep, mask)


# ------------------------------------------------------------------------------------------------ autograd
def _conv(mod: ModuleType, x: torch.Tensor, ks: KernelSpectrum, **kw: Any) -> Any:
    if ks.plan.kind == "fused":
        return mod.conv_pair(x, ks.kf, ks.plan, keep=ks.keep, **kw)
    return mod.conv_outer(x, ks.kf, ks.plan, **kw)


def _dk_torch(u, pre, dy, post, N, L, chunk=64):
    """Σ_b conj(rfft(v_b)) · rfft(dc_b) → dk_pad, through torch.fft a few batch rows at a time (outer plans)."""
    B, H, _ = u.shape
    acc = torch.zeros(H, N // 2 + 1, dtype=torch.complex64, device=u.device)
    for b0 in range(0, B, chunk):
        sl = slice(b0, b0 + chunk)
        v = u[sl].float() if pre is None else u[sl].float() * pre[sl].float()
        dc = dy[sl].float() if post is None else dy[sl].float() * post[sl].float()
        acc += (torch.fft.rfft(v, n=N).conj() * torch.fft.rfft(dc, n=N)).sum(0)
    return acc


class FFTConvFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, u: torch.Tensor, kpad: torch.Tensor, pre: torch.Tensor | None, post: torch.Tensor | None,
                ks: KernelSpectrum) -> torch.Tensor:
        mod = load_kernel_module(_KERNEL)
        y = _conv(mod, u, ks, g_in=pre, g_o1=post)
        ctx.save_for_backward(u, pre, post)
        ctx.ks = ks
        return y

    @staticmethod
    def backward(ctx, dy):
        u, pre, post = ctx.saved_tensors
        ks: KernelSpectrum = ctx.ks
        mod = load_kernel_module(_KERNEL)
        need_u, need_k, need_pre, need_post = ctx.needs_input_grad[:4]
        dy = dy.contiguous()
        du = dk = dpre = dpost = None
        record("fftconv_bwd", backend_for(u.device.type))
        if post is not None and need_post:
            dpost = _conv(mod, u, ks, g_in=pre, g_o1=dy)  # conv(u ∘ pre, k) ∘ dy
        if need_u or (pre is not None and need_pre):
            # dv = corr(dy ∘ post, k): the convolution of the time-reversed signal, written back reversed
            du = torch.empty_like(u)
            dpre = torch.empty_like(u) if (pre is not None and need_pre) else None
            _conv(mod, dy, ks, g_in=post, o1=du, g_o1=pre, o2=dpre, g_o2=u if dpre is not None else None, rev=True)
            if not need_u:
                du = None
        if need_k:
            N, L = ks.N, ks.L
            if ks.plan.kind == "fused" and ks.plan.N3 == 1:
                groups = max(1, -(-4 * _sm_count(u.device) // ks.H))
                spec = mod.spectrum_pairs(u, pre, dy, post, ks.plan, groups).sum(0)  # (H, 2, N1, M)
                s_nat = layout_to_spectrum(torch.complex(spec[:, 0], spec[:, 1]), ks.plan)
                if ks.mask is not None:
                    s_nat = s_nat * ks.mask
                s = torch.fft.ifft(s_nat).real  # Σ v ⊛ rdc
                idx = (L - 1 - torch.arange(N, device=s.device)) % N
                dk = s[:, idx]
            else:
                acc = _dk_torch(u, pre, dy, post, N, L)
                if ks.mask is not None:
                    acc = acc * ks.mask[: N // 2 + 1]
                dk = torch.fft.irfft(acc, n=N)
        return du, dk, dpre, dpost, None


def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4


# ------------------------------------------------------------------------------------------------ public
def fftconv(u: torch.Tensor, k: torch.Tensor | KernelSpectrum, causal: bool = True,
            pre_gate: torch.Tensor | None = None, post_gate: torch.Tensor | None = None,
            freq_keep: float | None = None) -> torch.Tensor:
    """Long convolution of each row of u with its head's kernel, by FFT (Monarch matmuls on tensor cores).

        y = (irfft(rfft(u ∘ pre_gate, 2L) · rfft(k, 2L))[..., :L]) ∘ post_gate

    Args:
        u: (batch, heads, L), float16, bfloat16 or float32; any L ≥ 1 (padded inside to a power-of-two FFT).
        k: (heads, Lk) kernel, any float dtype (used in fp32); causal: Lk ≤ L, the causal linear convolution
            (a partial kernel Lk < L is a shorter filter); non-causal: Lk ≤ 2L, taps j ≥ L act on the future
            (safari's bidirectional long conv). Or a `KernelSpectrum` from `prepare_kernel` (cached spectrum).
        pre_gate, post_gate: optional (batch, heads, L) in u's dtype, multiplied in on chip.
        freq_keep: frequency-sparse variant: keep about this fraction of the spectrum (lowest frequencies);
            the kernel skips the other column blocks (needs L ≤ 8192). See `prepare_kernel`.

    Differentiable in u, k and both gates. CUDA tensors run the Triton kernels; CPU tensors the torch.fft
    reference (or the kernels under Triton's interpreter with IOAWARE_INTERPRET=1).

    Examples:
        >>> import torch, ioaware
        >>> u = torch.randn(2, 4, 1000); k = torch.randn(4, 1000) * 0.01
        >>> ioaware.fftconv(u, k).shape
        torch.Size([2, 4, 1000])
    """
    if not isinstance(u, torch.Tensor):
        raise TypeError(f"fftconv: u must be a torch.Tensor, got {type(u).__name__}")
    if u.dim() != 3:
        raise ShapeError(f"fftconv: u must be 3-D (batch, heads, L), got shape {tuple(u.shape)}")
    B, H, L = u.shape
    if min(B, H, L) == 0:
        raise ShapeError(f"fftconv: empty input: batch={B}, heads={H}, L={L}")
    gates = {n: g for n, g in (("pre_gate", pre_gate), ("post_gate", post_gate)) if g is not None}
    check_dtypes_and_device("fftconv", {"u": u, **gates})
    for n, g in gates.items():
        if g.shape != u.shape:
            raise ShapeError(f"fftconv: {n} must have u's shape {tuple(u.shape)}, got {tuple(g.shape)}")
    ks = k if isinstance(k, KernelSpectrum) else None
    if ks is None:
        if not isinstance(k, torch.Tensor):
            raise TypeError(f"fftconv: k must be a torch.Tensor or KernelSpectrum, got {type(k).__name__}")
        if k.dim() != 2 or k.shape[0] != H:
            raise ShapeError(f"fftconv: k must be (heads={H}, taps), got shape {tuple(k.shape)}")
        if k.device != u.device:
            raise ShapeError(f"fftconv: k is on {k.device}, u on {u.device}")
    else:
        if ks.L != L or ks.H != H or ks.causal != bool(causal):
            raise ShapeError(f"fftconv: the KernelSpectrum was prepared for L={ks.L}, heads={ks.H}, "
                             f"causal={ks.causal}; got L={L}, heads={H}, causal={bool(causal)}")
    backend = backend_for(u.device.type)
    record("fftconv", backend)
    if backend == "reference":
        if ks is not None:
            return fftconv_ref(u, ks.kpad, True, pre_gate, post_gate, freq_mask=ks.mask, fft_size=ks.N)
        assert isinstance(k, torch.Tensor)  # checked above; tells the type checker which branch this is
        if freq_keep is not None:
            ks = prepare_kernel(k, L, causal, freq_keep)
            return fftconv_ref(u, ks.kpad, True, pre_gate, post_gate, freq_mask=ks.mask, fft_size=ks.N)
        return fftconv_ref(u, k, causal, pre_gate, post_gate)
    if ks is None:
        assert isinstance(k, torch.Tensor)  # checked above; tells the type checker which branch this is
        ks = prepare_kernel(k, L, causal, freq_keep, dtype=u.dtype)
    u = u.contiguous()
    pre = pre_gate.contiguous() if pre_gate is not None else None
    post = post_gate.contiguous() if post_gate is not None else None
    return FFTConvFunction.apply(u, ks.kpad, pre, post, ks)
