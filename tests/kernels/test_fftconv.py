"""fftconv on CPU: the Monarch tables and layouts against torch.fft (complex128), then the Triton kernels through
Triton's interpreter against an fp64 reference: small and odd L, odd batch, partial and non-causal kernels, gates,
order 2 and 3, the outer (three-pass) plan, the frequency-sparse variant, every gradient, and input errors."""

import pytest
import torch

import ioaware
from ioaware.errors import DTypeError, ShapeError, UnsupportedError
from ioaware.kernels.conv import fftconv_ref, prepare_kernel
from ioaware.kernels.conv.reference import (
    Plan,
    fft_size,
    fftconv_torch,
    frequency_mask,
    layout_to_spectrum,
    make_plan,
    monarch_conv_emulate,
    spectrum_to_layout,
)


def rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


# ------------------------------------------------------------------------------------------------ the math
@pytest.mark.parametrize("plan", [
    Plan(512, "fused", 32, 16), Plan(2048, "fused", 64, 32), Plan(8192, "fused", 128, 64),
    Plan(8192, "fused", 32, 16, 16), Plan(16384, "fused", 64, 16, 16),
], ids=lambda p: f"N{p.N}-{p.N1}x{p.N2}x{p.N3}")
def test_monarch_dataflow_equals_fft(plan):
    """The kernels' dataflow (first DFT on half of F1, twiddles, row DFT(s), × K, inverses) in complex128 equals
    the zero-padded circular convolution; full rows in and out (the outer plan's middle pass) too."""
    g = torch.Generator().manual_seed(plan.N)
    N = plan.N
    z = torch.randn(2, N // 2, dtype=torch.complex128, generator=g)
    kk = torch.randn(N, dtype=torch.complex128, generator=g)
    kf = spectrum_to_layout(torch.fft.fft(kk) / N, plan)
    ref = torch.fft.ifft(torch.fft.fft(torch.cat([z, torch.zeros_like(z)], 1)) * torch.fft.fft(kk))[:, : N // 2]
    out = monarch_conv_emulate(z, kf, plan, plan.N1 // 2, plan.N1 // 2)
    assert (out - ref).abs().max().item() < 1e-9
    z2 = torch.randn(2, N, dtype=torch.complex128, generator=g)
    ref2 = torch.fft.ifft(torch.fft.fft(z2) * torch.fft.fft(kk))
    assert (monarch_conv_emulate(z2, kf, plan, plan.N1, plan.N1) - ref2).abs().max().item() < 1e-9


def test_layout_round_trip():
    for plan in (Plan(2048, "fused", 64, 32), Plan(8192, "fused", 32, 16, 16)):
        s = torch.randn(3, plan.N, dtype=torch.complex128)
        assert torch.equal(layout_to_spectrum(spectrum_to_layout(s, plan), plan), s)


def test_frequency_mask_is_hermitian_low_pass():
    plan = make_plan(4096)
    m = frequency_mask(4096, plan, 16)
    f = torch.arange(4096)
    assert torch.equal(m, m[(-f) % 4096])
    assert m[: plan.N1 * 8].all() and not m[4096 // 2]
    assert 0.1 < m.float().mean() < 0.3


def test_reference_properties():
    """The definition: equals np.convolve truncated, impulse gives k, causal, linear in u and k."""
    g = torch.Generator().manual_seed(0)
    u = torch.randn(2, 3, 50, dtype=torch.float64, generator=g)
    k = torch.randn(3, 50, dtype=torch.float64, generator=g)
    y = fftconv_ref(u, k)
    direct = torch.stack([torch.stack([torch.tensor(
        [sum(k[h, j] * u[b, h, t - j] for j in range(t + 1)) for t in range(50)]) for h in range(3)])
        for b in range(2)])
    assert (y - direct).abs().max() < 1e-10
    delta = torch.zeros(1, 3, 50, dtype=torch.float64)
    delta[..., 0] = 1
    assert (fftconv_ref(delta, k)[0] - k).abs().max() < 1e-12
    u2 = u.clone()
    u2[..., 30] += 5
    assert (fftconv_ref(u2, k)[..., :30] - y[..., :30]).abs().max() < 1e-12
    assert (fftconv_ref(2 * u + u2, k) - 2 * y - fftconv_ref(u2, k)).abs().max() < 1e-10


# ------------------------------------------------------------------------------------------------ the kernels
def _check(B, H, L, Lk, causal, dt, plan=None, freq_keep=None, grads=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(B, H, L, generator=g).to(dt).requires_grad_()
    k = (torch.randn(H, Lk, generator=g) / Lk**0.5).requires_grad_()
    pre = torch.randn(B, H, L, generator=g).to(dt).requires_grad_()
    post = torch.randn(B, H, L, generator=g).to(dt).requires_grad_()
    if plan is not None or freq_keep is not None:
        ks = prepare_kernel(k, L, causal, freq_keep, plan=plan)
        y = ioaware.fftconv(u, ks, causal, pre, post)
        ref = fftconv_ref(u.double(), ks.kpad.double(), True, pre.double(), post.double(), freq_mask=ks.mask,
                          fft_size=ks.N)
    else:
        y = ioaware.fftconv(u, k, causal, pre, post)
        ref = fftconv_ref(u.double(), k.double(), causal, pre.double(), post.double())
    assert ioaware.last_backend("fftconv") == "interpret"
    assert y.dtype == dt and y.shape == u.shape
    tol = 1e-5 if dt == torch.float32 else 1e-2  # the interpreter multiplies in fp32 (see monarch.op_dtype)
    assert rel(y, ref) < tol
    if grads:
        gy = torch.randn_like(ref)
        got = torch.autograd.grad(y, (u, k, pre, post), gy.to(dt))
        want = torch.autograd.grad(ref, (u, k, pre, post), gy)
        for name, a, b in zip(("u", "k", "pre", "post"), got, want):
            assert rel(a, b) < tol, name


CASES = [
    pytest.param(3, 2, 200, 200, True, torch.float32, id="L200-oddB"),
    pytest.param(2, 3, 1, 1, True, torch.float32, id="L1"),
    pytest.param(1, 2, 97, 13, True, torch.float32, id="L97-partial-k"),
    pytest.param(2, 3, 300, 600, False, torch.float32, id="L300-noncausal-2L-taps"),
    pytest.param(2, 2, 257, 100, False, torch.float32, id="L257-noncausal-short-k"),
    pytest.param(2, 2, 1000, 1000, True, torch.bfloat16, id="L1000-bf16"),
    pytest.param(3, 1, 700, 700, True, torch.float16, id="L700-fp16"),
]


@pytest.mark.parametrize("B,H,L,Lk,causal,dt", CASES)
def test_fftconv_interpreter(B, H, L, Lk, causal, dt, poison):
    _check(B, H, L, Lk, causal, dt)


@pytest.mark.parametrize("plan", [
    Plan(4096, "fused", 128, 32, R=32), Plan(8192, "fused", 32, 16, 16), Plan(2048, "fused", 32, 64, stages=1),
], ids=lambda p: f"N{p.N}-{p.N1}x{p.N2}x{p.N3}-R{p.R}")
def test_fftconv_plans(plan, poison):
    _check(2, 2, plan.N // 2 - 5, plan.N // 2 - 5, True, torch.float32, plan=plan)


def test_fftconv_outer_plan(poison):
    """N = P·M three-pass plan (radix-P passes over HBM, fused middle pass on complex rows), forced at small N."""
    L = 3000
    plan = make_plan(fft_size(L), {"outer_M": 512, ("inner", 512): (16, 32, 1, 16, 4)})
    assert plan.kind == "outer" and plan.P == 16
    _check(3, 1, L, 2000, True, torch.float32, plan=plan)
    _check(2, 1, 2000, 3000, False, torch.float32, grads=False,
           plan=make_plan(4096, {"outer_M": 256, ("inner", 256): (16, 16, 1, 16, 4)}))


@pytest.mark.parametrize("freq_keep", [0.1, 0.6])
def test_fftconv_frequency_sparse(freq_keep, poison):
    _check(2, 2, 1500, 1500, True, torch.float32, freq_keep=freq_keep)


def test_fftconv_frequency_sparse_spectrum():
    """The output's spectrum (on the FFT grid) is zero outside the kept bins."""
    L = 4000
    k = torch.randn(1, L, dtype=torch.float64)
    ks = prepare_kernel(k, L, freq_keep=0.1)
    delta = torch.zeros(1, 1, L, dtype=torch.float64)
    delta[..., 0] = 1
    h = fftconv_ref(delta, ks.kpad.double(), True, freq_mask=ks.mask, fft_size=ks.N)
    assert ks.mask.sum() < 0.3 * ks.N
    # the impulse response of the masked operator is the masked kernel: its spectrum vanishes off the mask
    full = torch.fft.ifft(torch.fft.fft(ks.kpad.double()) * ks.mask).real
    assert (h[0, 0] - full[0, :L]).abs().max() < 1e-10


def test_kernel_spectrum_reuse():
    u = torch.randn(2, 3, 400)
    k = torch.randn(3, 400) * 0.05
    ks = prepare_kernel(k, 400)
    a = ioaware.fftconv(u, ks)
    b = ioaware.fftconv(u, k)
    assert rel(a, b) < 1e-5
    with pytest.raises(ShapeError):
        ioaware.fftconv(torch.randn(2, 3, 300), ks)


def test_fftconv_reference_backend(monkeypatch):
    """Without IOAWARE_INTERPRET, CPU tensors run torch.fft (and stay differentiable)."""
    monkeypatch.setenv("IOAWARE_INTERPRET", "0")
    u = torch.randn(2, 2, 100, requires_grad=True)
    k = torch.randn(2, 60)
    y = ioaware.fftconv(u, k)
    assert ioaware.last_backend("fftconv") == "reference"
    y.sum().backward()
    assert u.grad is not None
    assert rel(y, fftconv_torch(u, k)) < 1e-6


def test_fftconv_errors():
    u = torch.randn(2, 3, 10)
    with pytest.raises(ShapeError):
        ioaware.fftconv(u[0], torch.randn(3, 10))
    with pytest.raises(ShapeError):
        ioaware.fftconv(u, torch.randn(4, 10))
    with pytest.raises(ShapeError):
        ioaware.fftconv(u, torch.randn(3, 11))  # causal: at most L taps
    with pytest.raises(ShapeError):
        ioaware.fftconv(u, torch.randn(3, 21), causal=False)  # at most 2L
    with pytest.raises(DTypeError):
        ioaware.fftconv(u.long(), torch.randn(3, 10))
    with pytest.raises(DTypeError):
        ioaware.fftconv(u, torch.randn(3, 10), pre_gate=torch.randn(2, 3, 10, dtype=torch.float64))
    with pytest.raises(ShapeError):
        ioaware.fftconv(u, torch.randn(3, 10), post_gate=torch.randn(2, 3, 9))
    with pytest.raises(UnsupportedError):
        prepare_kernel(torch.randn(3, 20000), 20000, freq_keep=0.5)
    with pytest.raises(ValueError):
        prepare_kernel(torch.randn(3, 10), 10, freq_keep=0.0)
