"""LongConv (smoothing, squash, cached k_f) and FlashButterfly (learnable block FFT) on CPU."""

import pytest
import torch

from ioaware.kernels.conv import fftconv_ref
from ioaware.kernels.conv.butterfly import BlockFFT, butterfly_conv
from ioaware.nn import LongConv, LongConvKernel, smooth, squash


def test_squash():
    k = torch.randn(4, 300)
    for lam in (0.0, 0.1, 0.5):
        s = squash(k, lam)
        assert (s.abs() <= k.abs()).all()
        assert (s[k.abs() <= lam] == 0).all()
        assert (torch.sign(s[s != 0]) == torch.sign(k[s != 0])).all()
    assert torch.equal(squash(k, 0.0), k)


def test_smooth():
    k = torch.full((2, 50), 3.0)
    s = smooth(k, 7)
    assert s.shape == k.shape
    assert torch.allclose(s[:, 3:-3], k[:, 3:-3])  # a constant interior is unchanged
    assert torch.allclose(smooth(k, 1), k)


def test_longconv_kernel_order():
    m = LongConvKernel(3, 64, lam=0.01, ma_window_len=5)
    want = squash(smooth(m.weight, 5), 0.01)
    assert torch.equal(m(), want)


def test_longconv_matches_definition():
    torch.manual_seed(0)
    m = LongConv(4, 128, channels=2, postact=None, activation="id", lam=0.001)
    u = torch.randn(3, 4, 100)
    y = m(u)
    k = m.kernel()[:, :100]
    conv = fftconv_ref(u.repeat(1, 2, 1), k).view(3, 2, 4, 100) + u[:, None] * m.D[None, :, :, None]
    want = m.out_linear(conv.reshape(3, 8, 100).transpose(1, 2)).transpose(1, 2)
    assert torch.allclose(y, want, atol=1e-5)


def test_longconv_caches_spectrum_and_trains():
    torch.manual_seed(0)
    m = LongConv(4, 256)
    u = torch.randn(2, 4, 256)
    m(u)
    m(u)
    assert m.cache_hits == 1  # weights unchanged: k_f reused
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    loss = m(u).square().mean()
    loss.backward()
    assert m.kernel.weight.grad is not None and m.kernel.weight.grad.abs().sum() > 0
    opt.step()
    hits = m.cache_hits
    m(u)
    assert m.cache_hits == hits  # the step changed the weights: recomputed


def test_longconv_bidirectional_and_shorter_input():
    torch.manual_seed(0)
    m = LongConv(3, 64, bidirectional=True)
    assert m(torch.randn(2, 3, 64)).shape == (2, 3, 64)
    m2 = LongConv(3, 64)
    assert m2(torch.randn(2, 3, 40)).shape == (2, 3, 40)
    with pytest.raises(ValueError):
        m2(torch.randn(2, 3, 65))


@pytest.mark.parametrize("N", [2, 16, 64, 512, 4096])
def test_blockfft_is_fft_at_init(N):
    b = BlockFFT(N, 16, learn=True, dtype=torch.float64)
    x = torch.randn(3, N, dtype=torch.complex128)
    assert (b(x) - torch.fft.fft(x)).abs().max() < 1e-9
    assert (b(b(x), inverse=True) - x).abs().max() < 1e-12


def test_blockfft_learnable_conv():
    torch.manual_seed(0)
    u = torch.randn(2, 4, 100)
    k = torch.randn(4, 100) * 0.1
    b = BlockFFT(256, 16, learn=True)
    assert (butterfly_conv(u, k, b) - fftconv_ref(u, k)).abs().max() < 1e-4
    m = LongConv(4, 100, block_fft=True)
    m(u).square().mean().backward()
    assert all(p.grad is not None for p in m.bfft.blocks)


def test_synthetic_task_batch():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "dev" / "fftconv" / "synthetic_task.py"
    spec = importlib.util.spec_from_file_location("synthetic_task", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    g = torch.Generator().manual_seed(0)
    x, y = mod.make_batch(4, 512, 16, 32, g, "cpu")
    assert x.shape == (4, 512) and y.shape == (4, 32)
    assert torch.equal(y, x[:, :32]) and x.max() < 16
    model = mod.Model(16, 16, 512, 1, 0.003, 0.02)
    assert model(x).shape == (4, 512, 16)
