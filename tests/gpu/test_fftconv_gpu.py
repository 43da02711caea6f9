"""fftconv on a CUDA GPU at real sizes (run on the device machine: `pytest -m gpu tests/gpu`).

Tolerances: the kernels multiply bf16 operands on tensor cores (fp32 accumulation) through four DFT stages, for
fp16 inputs too (bf16's range is safe for unnormalised DFTs); measured against an fp64 reference, the relative
error is ~5e-3 (torch.fft in fp32 with the output rounded to bf16: ~1.7e-3). The bound is 4x that of torch.fft
in fp32 rounded to bf16 plus a floor of 2e-3. fp32 inputs use 3xTF32 matmuls (bound 1e-4).
"""

import pytest
import torch

import ioaware
from ioaware.kernels.conv import fftconv_ref, prepare_kernel
from ioaware.kernels.conv.reference import fftconv_torch, make_plan

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def _inputs(B, H, L, Lk, dt, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    u = torch.randn(B, H, L, device="cuda", generator=g).to(dt)
    pre = torch.randn(B, H, L, device="cuda", generator=g).to(dt)
    post = torch.randn(B, H, L, device="cuda", generator=g).to(dt)
    k = torch.randn(H, Lk, device="cuda", generator=g) / Lk**0.5
    return u, k, pre, post


def _bound(dt, err_pt_bf16):
    return 1e-4 if dt == torch.float32 else 4 * err_pt_bf16 + 2e-3


@pytest.mark.parametrize("B,H,L,Lk,causal,dt", [
    pytest.param(4, 64, 1024, 1024, True, torch.bfloat16, id="L1k-bf16"),
    pytest.param(3, 33, 999, 500, True, torch.bfloat16, id="L999-partial-oddB-oddH"),
    pytest.param(2, 16, 1, 1, True, torch.bfloat16, id="L1"),
    pytest.param(2, 16, 4096, 4096, True, torch.float16, id="L4k-fp16"),
    pytest.param(2, 8, 3000, 6000, False, torch.float32, id="L3000-noncausal-fp32"),
    pytest.param(2, 8, 8192, 8192, True, torch.bfloat16, id="L8k"),
    pytest.param(1, 8, 12345, 12345, True, torch.bfloat16, id="L12345-outer"),
    pytest.param(1, 4, 32768, 32768, True, torch.bfloat16, id="L32k-outer"),
])
def test_fftconv_forward(B, H, L, Lk, causal, dt):
    u, k, pre, post = _inputs(B, H, L, Lk, dt)
    y = ioaware.fftconv(u, k, causal, pre, post)
    assert ioaware.last_backend("fftconv") == "triton"
    ref = fftconv_ref(u.double(), k.double(), causal, pre.double(), post.double())
    err = rel(y, ref)
    # torch.fft in fp32, output rounded to bf16 (our operands are bf16 for fp16 inputs too)
    err_pt = rel(fftconv_ref(u, k, causal, pre, post).to(torch.bfloat16), ref)
    assert err <= _bound(dt, err_pt), (err, err_pt)


@pytest.mark.parametrize("B,H,L,dt,plan", [
    pytest.param(3, 16, 2000, torch.bfloat16, None, id="L2000-bf16"),
    pytest.param(2, 8, 5000, torch.float32, None, id="L5000-fp32"),
    pytest.param(2, 4, 4096, torch.bfloat16, (32, 16, 16, 16, 8, 2), id="L4096-order3"),
    pytest.param(2, 4, 9000, torch.bfloat16, None, id="L9000-outer"),
])
def test_fftconv_backward(B, H, L, dt, plan):
    u, k, pre, post = _inputs(B, H, L, L, dt, seed=1)
    ins = [t.clone().requires_grad_() for t in (u, k, pre, post)]
    if plan is not None:
        from ioaware.kernels.conv.reference import fft_size

        ks = prepare_kernel(ins[1], L, plan=make_plan(fft_size(L), {fft_size(L): plan}))
        y = ioaware.fftconv(ins[0], ks, True, ins[2], ins[3])
    else:
        y = ioaware.fftconv(ins[0], ins[1], True, ins[2], ins[3])
    g = torch.randn_like(y)
    grads = torch.autograd.grad(y, ins, g)
    ref_in = [t.double().requires_grad_() for t in (u, k, pre, post)]
    ref = fftconv_ref(ref_in[0], ref_in[1], True, ref_in[2], ref_in[3])
    ref_g = torch.autograd.grad(ref, ref_in, g.double())
    pt_in = [t.clone().requires_grad_() for t in (u, k, pre, post)]
    pt_g = torch.autograd.grad(fftconv_ref(*pt_in[:2], True, *pt_in[2:]), pt_in, g)
    for name, a, b, c in zip(("u", "k", "pre", "post"), grads, ref_g, pt_g):
        err, err_pt = rel(a, b), rel(c.to(torch.bfloat16) if dt != torch.float32 else c, b)
        assert err <= _bound(dt, err_pt) * 2, (name, err, err_pt)


@pytest.mark.parametrize("freq_keep", [0.1, 0.5])
def test_fftconv_frequency_sparse(freq_keep):
    u, k, pre, post = _inputs(4, 32, 4000, 4000, torch.bfloat16, seed=2)
    ks = prepare_kernel(k, 4000, freq_keep=freq_keep)
    y = ioaware.fftconv(u, ks, True, pre, post)
    ref = fftconv_ref(u.double(), ks.kpad.double(), True, pre.double(), post.double(), freq_mask=ks.mask,
                      fft_size=ks.N)
    err = rel(y, ref)
    assert err < 2e-2, (freq_keep, int(ks.mask.sum()), ks.N, err)


def test_fftconv_matches_torch_baseline_bf16():
    """Same inputs, the users' torch.fft code and ours: the two differ by about the bf16 rounding."""
    u, k, pre, post = _inputs(8, 128, 2048, 2048, torch.bfloat16, seed=3)
    a = ioaware.fftconv(u, k, True, pre, post)
    b = fftconv_torch(u, k, pre, post)
    assert rel(a, b) < 2e-2


def test_longconv_layer_gpu():
    from ioaware.nn import LongConv

    torch.manual_seed(0)
    m = LongConv(64, 2048).cuda()
    x = torch.randn(4, 64, 2048, device="cuda", dtype=torch.bfloat16)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = m(x)
    y.float().square().mean().backward()
    assert m.kernel.weight.grad is not None and torch.isfinite(m.kernel.weight.grad).all()
