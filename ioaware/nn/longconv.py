"""Long convolution layers of "Simple Hardware-Efficient Long Convolutions" (Fu et al., ICML'23) on ioaware.fftconv.

The kernel is a raw parameter (C·H, Lk), regularised on every call by
  smooth: a moving average in time, window 2p+1 (default 7), zero-padded, same length;
  squash: soft-thresholding k ← sign(k)·max(|k| − λ, 0) (λ = lam; 0 turns it off);
then kernel dropout. The convolution's kernel spectrum k_f is cached between calls while the parameter is unchanged
(its version counter and storage; never while kernel dropout is active in training); the padded kernel is rebuilt
each call, so gradients still reach the parameter.
"""

from __future__ import annotations

import torch
from torch import nn

from ..kernels.conv import KernelSpectrum, fftconv, prepare_kernel
from ..kernels.conv.butterfly import BlockFFT, butterfly_conv


def smooth(k: torch.Tensor, window: int = 7) -> torch.Tensor:
    """Moving average in time over `window` (odd) taps with zero padding; keeps the length.

    Examples:
        >>> import torch
        >>> smooth(torch.tensor([[0.0, 3.0, 0.0, 0.0]]), window=3)
        tensor([[1., 1., 1., 0.]])
    """
    if window <= 1:
        return k
    p = window // 2
    return torch.nn.functional.avg_pool1d(k.unsqueeze(1), window, stride=1, padding=p).squeeze(1)


def squash(k: torch.Tensor, lam: float) -> torch.Tensor:
    """Soft threshold sign(k)·max(|k| − λ, 0).

    Examples:
        >>> import torch
        >>> squash(torch.tensor([0.5, -0.05, -2.0]), lam=0.1)
        tensor([ 0.4000, -0.0000, -1.9000])
    """
    if lam <= 0:
        return k
    return torch.sign(k) * torch.relu(k.abs() - lam)


class LongConvKernel(nn.Module):
    """The kernel parameter of a long conv and its regularisation (smooth → squash → dropout).

    Examples:
        >>> kern = LongConvKernel(H=4, L=32, channels=2)
        >>> kern().shape                                   # (channels * H, L) taps
        torch.Size([8, 32])
    """

    def __init__(self, H: int, L: int, channels: int = 1, lam: float = 0.003, kernel_dropout: float = 0.0,
                 smoothing: bool = True, ma_window_len: int = 7, bidirectional: bool = False,
                 init_scale: float = 0.02):
        super().__init__()
        self.H, self.L, self.channels, self.lam = H, L, channels, lam
        self.bidirectional = bidirectional
        self.window = ma_window_len if smoothing else 1
        # safari initialises randn·0.002; after the 7-tap average its std is ~0.0008, below the default λ = 0.003,
        # so squash would zero every tap and its gradient. 0.02 keeps most taps alive at the start.
        self.weight = nn.Parameter(torch.randn(channels * H, 2 * L if bidirectional else L) * init_scale)
        self.drop = nn.Dropout(kernel_dropout)

    def forward(self) -> torch.Tensor:
        """The regularised kernel (channels * H, L), or (channels * H, 2L) when bidirectional."""
        return self.drop(squash(smooth(self.weight, self.window), self.lam))


class LongConv(nn.Module):
    """y = out_linear(act(Σ_c conv(u, k_c) + D·u)): input and output (B, H, L), as safari's LongConv.

    Args:
        d_model, l_max: H, and the longest L (shorter inputs use the first L taps of a causal kernel);
        channels: independent kernels per head, mixed by the output linear;
        lam: squash threshold (0: off); smoothing, ma_window_len: the moving average; kernel_dropout;
        bidirectional: a non-causal kernel of 2L taps; block_fft: run the convolution through the learnable
        FlashButterfly `BlockFFT` (PyTorch matmuls) instead of the fused kernel; postact: 'glu' or None.

    Examples:
        >>> import torch
        >>> layer = LongConv(d_model=8, l_max=64)
        >>> layer(torch.randn(2, 8, 50)).shape                # any L <= l_max
        torch.Size([2, 8, 50])
    """

    def __init__(self, d_model: int, l_max: int, channels: int = 1, lam: float = 0.003, kernel_dropout: float = 0.0,
                 smoothing: bool = True, ma_window_len: int = 7, bidirectional: bool = False, dropout: float = 0.0,
                 activation: str = "gelu", postact: str | None = "glu", block_fft: bool = False,
                 learn_butterfly: bool = True, butterfly_radix: int = 16, init_scale: float = 0.02):
        super().__init__()
        self.H, self.L, self.C = d_model, l_max, channels
        self.bidirectional = bidirectional
        self.kernel = LongConvKernel(d_model, l_max, channels, lam, kernel_dropout, smoothing, ma_window_len,
                                     bidirectional, init_scale)
        self.D = nn.Parameter(torch.randn(channels, d_model))
        self.act = nn.GELU() if activation == "gelu" else nn.Identity()
        self.dropout = nn.Dropout(dropout)
        out = 2 * d_model if postact == "glu" else d_model
        self.out_linear = nn.Linear(channels * d_model, out)
        self.postact = postact
        self.bfft = None
        if block_fft:
            if bidirectional:
                raise ValueError("LongConv: block_fft supports causal kernels only")
            N = 1 << max(1, (2 * l_max - 1).bit_length())
            self.bfft = BlockFFT(N, butterfly_radix, learn=learn_butterfly)
        self._cache: tuple | None = None
        self.cache_hits = 0

    def _spectrum(self, L: int, device: torch.device) -> KernelSpectrum:
        kern = self.kernel
        cacheable = not (self.training and kern.drop.p > 0)
        w = kern.weight
        key = (w._version, w.data_ptr(), L, str(device), kern.lam, kern.window)
        k = kern()
        if not self.bidirectional:
            k = k[:, :L]
        else:
            k = torch.cat([k[:, :L], k[:, kern.weight.shape[1] - L:]], 1) if L < self.L else k
        if cacheable and self._cache is not None and self._cache[0] == key:
            ks: KernelSpectrum = self._cache[1]
            self.cache_hits += 1
            from ..kernels.conv.reference import pad_kernel

            return KernelSpectrum(ks.L, ks.N, ks.causal, ks.plan, pad_kernel(k.float(), L, ks.N, ks.causal), ks.kf,
                                  ks.keep, ks.mask)
        ks = prepare_kernel(k, L, causal=not self.bidirectional)
        if cacheable:
            self._cache = (key, ks)
        return ks

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """u (B, d_model, L) -> y (B, d_model, L); the kernel's spectrum is cached while its weights are unchanged."""
        B, H, L = u.shape
        if L > self.L:
            raise ValueError(f"LongConv: input length {L} exceeds l_max {self.L}")
        dt = torch.get_autocast_dtype("cuda") if (u.is_cuda and torch.is_autocast_enabled("cuda")) else u.dtype
        x = u.to(dt)
        xc = x if self.C == 1 else x.unsqueeze(1).expand(B, self.C, H, L).reshape(B, self.C * H, L)
        if self.bfft is not None:
            y = butterfly_conv(xc, self.kernel()[:, :L], self.bfft)
        else:
            y = fftconv(xc, self._spectrum(L, u.device), causal=not self.bidirectional)
        y = y.view(B, self.C, H, L) + x.unsqueeze(1) * self.D.to(dt)[None, :, :, None]
        y = self.dropout(self.act(y))
        y = self.out_linear(y.reshape(B, self.C * H, L).transpose(1, 2))
        if self.postact == "glu":
            y = torch.nn.functional.glu(y, dim=-1)
        return y.transpose(1, 2)
