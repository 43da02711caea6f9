"""FlashButterfly: the FFT as a product of small (≤ radix × radix) DFT blocks, with the blocks learnable.

`BlockFFT(N, radix=16, learn=True)` computes X = F_N x by recursive Cooley–Tukey with block matmuls:
x viewed as [r, N/r] (x[(N/r)·m1 + n2]), DFT_r down the columns (an r×r complex matmul), twiddles ω_N^{k1·n2},
then the same recursively along the rows; X[k1 + r·k2] lands at [k1, k2], transposed back to natural order.
Every block is a dense matmul, the shape tensor cores run well (Fu et al., "Simple Hardware-Efficient Long
Convolutions", ICML'23, §4). With learn=True the r×r matrices of each stage are parameters initialised at the exact
DFT (so the module starts as the FFT and training may move away from it, at the same FLOPs); the inverse is
conj(F(conj x)) / N through the same learned blocks, as in safari's BlockFFT.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def dft_matrix(n: int) -> torch.Tensor:
    k = torch.arange(n)
    return torch.exp(-2j * math.pi * (k[:, None] * k[None, :] % n).double() / n)


class BlockFFT(nn.Module):
    def __init__(self, N: int, radix: int = 16, learn: bool = True, dtype=torch.float32):
        super().__init__()
        if N < 2 or N & (N - 1):
            raise ValueError(f"BlockFFT: N must be a power of two ≥ 2, got {N}")
        self.N, self.radix = N, radix
        sizes, n = [], N
        while n > radix:
            sizes.append(radix)
            n //= radix
        sizes.append(n)
        self.sizes = sizes  # stage sizes, outermost first
        ctype = torch.complex64 if dtype == torch.float32 else torch.complex128
        mats = [torch.view_as_real(dft_matrix(s).to(ctype)) for s in sizes]
        if learn:
            self.blocks = nn.ParameterList([nn.Parameter(m.clone()) for m in mats])
        else:
            self.blocks = [m for m in mats]
            for i, m in enumerate(mats):
                self.register_buffer(f"_block{i}", m, persistent=False)
        # twiddles of each level (fixed): level i multiplies [r, n] by ω_{r·n}^{k1·n2}
        self._tw = {}

    def _block(self, i: int, device) -> torch.Tensor:
        b = self.blocks[i] if isinstance(self.blocks, nn.ParameterList) else getattr(self, f"_block{i}")
        return torch.view_as_complex(b.to(device).contiguous())

    def _twiddle(self, r: int, n: int, device, dtype):
        key = (r, n, str(device), dtype)
        if key not in self._tw:
            k1 = torch.arange(r)[:, None]
            n2 = torch.arange(n)[None, :]
            self._tw[key] = torch.exp(-2j * math.pi * (k1 * n2 % (r * n)).double() / (r * n)).to(dtype).to(device)
        return self._tw[key]

    def _fft(self, x: torch.Tensor, level: int) -> torch.Tensor:
        n_total = x.shape[-1]
        r = self.sizes[level]
        F = self._block(level, x.device).to(x.dtype)
        if level == len(self.sizes) - 1:
            return x @ F.T
        n = n_total // r
        y = torch.einsum("km,...mn->...kn", F, x.unflatten(-1, (r, n)))
        y = y * self._twiddle(r, n, x.device, x.dtype)
        y = self._fft(y, level + 1)  # along the rows: [..., k1, k2]
        return y.transpose(-1, -2).flatten(-2)  # X[k1 + r k2] in natural order

    def forward(self, x: torch.Tensor, inverse: bool = False) -> torch.Tensor:
        """FFT (or inverse FFT) of size N along the last axis of x (complex; real inputs are promoted)."""
        if x.shape[-1] != self.N:
            raise ValueError(f"BlockFFT: last axis must be {self.N}, got {x.shape[-1]}")
        if not x.is_complex():
            x = x.to(torch.complex64 if x.dtype != torch.float64 else torch.complex128)
        if inverse:
            return self._fft(x.conj(), 0).conj() / self.N
        return self._fft(x, 0)


def butterfly_conv(u: torch.Tensor, k: torch.Tensor, bfft: BlockFFT) -> torch.Tensor:
    """Causal convolution (B, H, L) * (H, Lk) through a (learnable) BlockFFT of size N ≥ 2L."""
    L, N = u.shape[-1], bfft.N
    uf = bfft(torch.nn.functional.pad(u.float(), (0, N - L)))
    kf = bfft(torch.nn.functional.pad(k.float(), (0, N - k.shape[-1])))
    return bfft(uf * kf, inverse=True).real[..., :L].to(u.dtype)
