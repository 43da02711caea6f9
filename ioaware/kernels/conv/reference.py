"""FFT long convolution: the definition in PyTorch (torch.fft), the plan of the Monarch kernels, their tables.

The op (what `ioaware.fftconv` computes; `fftconv_ref` below is the definition):

    v = u ∘ pre_gate                                  (B, H, L)
    c = irfft(rfft(v, n=2L) · rfft(k, n=2L), n=2L)[..., :L]
    y = c ∘ post_gate

causal=True: k is (H, Lk), Lk ≤ L, and c is the causal linear convolution c[t] = Σ_{j ≤ t} k[j] v[t-j].
causal=False: k may hold up to 2L taps; taps j ≥ L act on the future (shift j - 2L), as in safari's
bidirectional long conv (the size-2L circular convolution, first L outputs).

How the kernels compute it (all FFT work is matrix multiplication on tensor cores):
  * FFT size N: a power of two ≥ 2L, so one zero-padded circular convolution of size N is the causal one.
  * Monarch order 2: N = N1·M, n = M·n1 + m, k = k1 + N1·k'. X[k1 + N1 k'] = Σ_m ω_M^{m k'} ω_N^{m k1}
    Σ_{n1} ω_{N1}^{n1 k1} x[n1, m]: a DFT matmul down the columns (F_{N1} @ x), twiddles, a DFT matmul along
    the rows (@ F_M). The spectrum comes out in the permuted order [k1, k'], and the kernel's spectrum is
    stored in that order, so no permutation is ever done. Order 3 splits M = N2·N3 the same way.
  * Real inputs, two at a time: z = v_a + i·v_b (two rows of one head). Its spectrum times K (the spectrum of
    a real kernel) transforms back to c_a + i·c_b: real part and imaginary part are the two outputs.
  * Zero padding: rows n1 ≥ N1/2 of x are zero (the padding), and only rows n1 < N1/2 of the output are
    kept, so the first and last DFT matmuls use half of F_{N1}.
  * The k1 rows of the spectrum are independent after the first DFT: the kernel walks them in blocks of R
    rows (first DFT for those rows, twiddle, row DFT, × K, inverse row DFT, twiddle, and the block's share of
    the last inverse DFT accumulated), like FlashAttention walks key blocks. x and the accumulator stay on chip.
  * N > NMAX_FUSED (long sequences): N = P·M with an outer radix-P pass over HBM (`outer` plan), the middle
    pass runs the fused kernel on each of the P/2+1 complex rows of length M (Hermitian symmetry gives the rest).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch

NMAX_FUSED = 16384  # largest FFT size done by one fused kernel (L ≤ 8192)
NMIN = 512  # smallest FFT size (L ≤ 256 pads to it)
NMAX = 1 << 19  # largest FFT size of the Triton path (L ≤ 262144); longer sequences run the reference


# ------------------------------------------------------------------------------------------------ the op
def pad_kernel(k: torch.Tensor, L: int, N: int, causal: bool) -> torch.Tensor:
    """k (H, Lk) as the length-N circular kernel the FFT multiplies by (differentiable).

    causal: taps j < Lk ≤ L at position j. Non-causal (Lk ≤ 2L): taps j < L at j, taps j ≥ L at N - 2L + j,
    which on a grid of N ≥ 2L reproduces the size-2L circular convolution's first L outputs exactly.
    """
    H, Lk = k.shape
    if causal or Lk <= L:
        return torch.nn.functional.pad(k[:, : min(Lk, N)], (0, N - min(Lk, N)))
    head, tail = k[:, :L], k[:, L:]
    mid = N - L - tail.shape[1]
    return torch.cat([head, head.new_zeros(H, mid), tail], dim=1) if mid >= 0 else torch.cat([head, tail], 1)


def fftconv_ref(u: torch.Tensor, k: torch.Tensor, causal: bool = True, pre_gate: torch.Tensor | None = None,
                post_gate: torch.Tensor | None = None, freq_mask: torch.Tensor | None = None,
                fft_size: int | None = None) -> torch.Tensor:
    """The definition, through torch.fft in float64 for float64 inputs, else float32; output in u's dtype.

    freq_mask (N,) bool on the FFT grid of size fft_size (default 2L): spectrum bins set to False are zeroed
    (the frequency-sparse variant); it must be Hermitian-symmetric (mask[f] == mask[-f]).
    """
    L = u.shape[-1]
    N = fft_size or 2 * L
    ct = torch.float64 if u.dtype == torch.float64 else torch.float32
    v = u.to(ct) if pre_gate is None else u.to(ct) * pre_gate.to(ct)
    kp = pad_kernel(k.to(ct), L, N, causal)
    kf = torch.fft.rfft(kp, n=N)
    if freq_mask is not None:
        kf = kf * freq_mask[: N // 2 + 1].to(kf.device)
    c = torch.fft.irfft(torch.fft.rfft(v, n=N) * kf, n=N)[..., :L]
    y = c if post_gate is None else c * post_gate.to(ct)
    return y.to(u.dtype)


def fftconv_torch(u, k, pre_gate=None, post_gate=None):
    """The baseline: a gated causal FFT convolution as users write it with torch.fft (rfft/irfft, fp32)."""
    L = u.shape[-1]
    u_f = torch.fft.rfft((u * pre_gate if pre_gate is not None else u).float(), n=2 * L)
    k_f = torch.fft.rfft(k.float(), n=2 * L)
    y = torch.fft.irfft(u_f * k_f, n=2 * L)[..., :L].to(u.dtype)
    return y * post_gate if post_gate is not None else y


# ------------------------------------------------------------------------------------------------ plans
@dataclass(frozen=True)
class Plan:
    """How one FFT size is computed.

    kind 'fused': one kernel, N = N1·N2·N3 (N3 = 1: Monarch order 2, the row DFT is one matmul by F_N2).
    kind 'outer': N = P·M; `inner` is the fused plan (complex mode, full rows) of size M.
    R: spectrum rows per block; warps: num_warps of the fused kernel.
    """

    N: int
    kind: str
    N1: int = 0
    N2: int = 0
    N3: int = 1
    R: int = 16
    warps: int = 4
    stages: int = 2
    S: int = 1  # pairs of rows (one head) per program, side by side in the matmuls' column dimension
    T: bool = False  # transposed block loop (sequence axis as the matmuls' rows; S = 1)
    P: int = 0
    inner: Plan | None = None

    @property
    def M(self) -> int:
        return self.N // self.P if self.kind == "outer" else self.N2 * self.N3

    @property
    def order(self) -> int:
        return 2 if self.N3 == 1 else 3


# Plans per FFT size, chosen on the H100 (dev/fftconv/NOTES.md). Tuple: (N1, N2, N3, R, warps, stages, S, T).
# FLOPs per pair of rows: 8N·N1 (first and last DFT, half of F1 each) + 16N·M (row DFT and its inverse).
# T (transposed block loop) puts the sequence axis (M ≥ 64) in the M-dim of every matmul: all 16 matmuls of a block
# become Hopper warpgroup MMAs; the row layout with S pairs side by side serves M < 64.
FUSED = {
    512: (32, 16, 1, 32, 4, 2, 8, False),
    1024: (32, 32, 1, 32, 4, 2, 4, False),
    2048: (32, 64, 1, 32, 4, 2, 1, True),
    4096: (64, 64, 1, 16, 4, 2, 1, True),
    8192: (128, 64, 1, 16, 4, 2, 1, True),
    16384: (128, 128, 1, 16, 8, 1, 1, True),
}
# inner (complex, full-row) plans for the middle pass of 'outer' plans
INNER = {
    1024: (32, 32, 1, 16, 4, 1, 1, False),
    2048: (32, 64, 1, 16, 4, 2, 1, True),
    4096: (64, 64, 1, 16, 4, 2, 1, True),
}
OUTER_M = 4096  # row length of the outer plans' middle pass (N ≥ 64k: P = N / 4096; N = 32k: M = 2048)
# fp32 inputs multiply in 3xTF32, whose tiles take twice the registers and shared memory: small row plans, and the
# outer plan with rows of 1024 from N = 2048 on
FUSED_FP32 = {512: (32, 16, 1, 16, 4, 1, 1, False), 1024: (32, 32, 1, 16, 4, 1, 1, False)}
FP32_OUTER_M = 1024


def fft_size(L: int) -> int:
    return max(NMIN, 1 << max(0, (2 * L - 1).bit_length()))


def make_plan(N: int, overrides: dict | None = None, dtype: torch.dtype | None = None) -> Plan:
    """The plan of FFT size N (a power of two, NMIN ≤ N ≤ NMAX) for inputs of `dtype`. overrides: {N: tuple} for
    fused sizes (tests and sweeps), {"outer_M": M} to force an outer plan, {("inner", M): tuple}."""
    o = overrides or {}
    if N in o and isinstance(o[N], tuple):
        assert o[N][0] * o[N][1] * o[N][2] == N, (N, o[N])
        return Plan(N, "fused", *o[N])
    if dtype == torch.float32 and "outer_M" not in o:
        if N in FUSED_FP32:
            return Plan(N, "fused", *FUSED_FP32[N])
        inner = Plan(FP32_OUTER_M, "fused", *INNER[FP32_OUTER_M])
        return Plan(N, "outer", R=inner.R, warps=inner.warps, P=N // FP32_OUTER_M, inner=inner)
    if N <= NMAX_FUSED and "outer_M" not in o:
        return Plan(N, "fused", *FUSED[N])
    M = o.get("outer_M", OUTER_M if N >= 2 * OUTER_M * 8 else N // 16)
    M = min(M, N // 16)
    inner = Plan(M, "fused", *(o[("inner", M)] if ("inner", M) in o else INNER[M]))
    return Plan(N, "outer", R=inner.R, warps=inner.warps, P=N // M, inner=inner)


# ------------------------------------------------------------------------------------------------ tables
def _omega(n, k, N):
    """exp(-2πi·n·k/N) in complex128 (n, k integer tensors, broadcast)."""
    return torch.exp(-2j * math.pi * ((n * k) % N).double() / N)


@lru_cache(maxsize=64)
def _tables_cpu(plan: Plan) -> dict:
    """DFT matrices and twiddles of a fused plan, complex128 on the CPU."""
    N, N1, N2, N3 = plan.N, plan.N1, plan.N2, plan.N3
    M = N2 * N3
    ar = torch.arange
    t = {"F1": _omega(ar(N1)[:, None], ar(N1)[None, :], N1)}  # F1[k1, n1]
    if N3 == 1:
        t["F2"] = _omega(ar(M)[:, None], ar(M)[None, :], M)  # F2[n2, k2]
        t["TW"] = _omega(ar(N1)[:, None], ar(M)[None, :], N)  # TW[k1, m] = ω_N^{k1 m}
    else:
        t["F2"] = _omega(ar(N2)[:, None], ar(N2)[None, :], N2)
        t["F3"] = _omega(ar(N3)[:, None], ar(N3)[None, :], N3)
        n3, k1, n2 = ar(N3)[:, None, None], ar(N1)[None, :, None], ar(N2)[None, None, :]
        t["TW"] = _omega(k1, N3 * n2 + n3, N)  # TW[n3, k1, n2] = ω_N^{k1 (N3 n2 + n3)}
        t["TW2"] = _omega(ar(N3)[:, None], ar(N2)[None, :], M)  # TW2[n3, k2] = ω_M^{n3 k2}
    return t


def spectrum_to_layout(spec: torch.Tensor, plan: Plan) -> torch.Tensor:
    """Natural-order spectrum (..., N) → the fused kernel's order: [k1, k'] (order 2), [k3, k1, k2] (order 3)
    with k = k1 + N1·(k2 + N2·k3)."""
    N1, N2, N3 = plan.N1, plan.N2, plan.N3
    if N3 == 1:
        return spec.unflatten(-1, (N2, N1)).transpose(-1, -2)
    return spec.unflatten(-1, (N3, N2, N1)).permute(*range(spec.dim() - 1), -3, -1, -2)


def layout_to_spectrum(lay: torch.Tensor, plan: Plan) -> torch.Tensor:
    """Inverse of spectrum_to_layout."""
    if plan.N3 == 1:
        return lay.transpose(-1, -2).flatten(-2)
    return lay.permute(*range(lay.dim() - 3), -3, -1, -2).flatten(-3)


def outer_spectrum_to_layout(spec: torch.Tensor, plan: Plan) -> torch.Tensor:
    """Natural-order spectrum (..., N) of an outer plan → (..., P/2+1, inner layout): row k1 holds the bins
    k1 + P·k' (k' < M), the inner plan's order within each row."""
    P = plan.P
    rows = spec.unflatten(-1, (plan.M, P)).transpose(-1, -2)[..., : P // 2 + 1, :]
    return spectrum_to_layout(rows, plan.inner)


# ------------------------------------------------------------------------------------------------ frequency-sparse
def frequency_mask(N: int, plan: Plan, keep_cols: int) -> torch.Tensor:
    """The Hermitian-symmetric low-pass mask (N,) bool of the frequency-sparse variant: in the order-2 layout
    [k1, k'] (k = k1 + N1·k'), columns k' < keep_cols/2 and k' ≥ M - keep_cols/2 are computed, the others are
    skipped by the kernel; within kept columns, bins whose mirror (N - k) falls in a skipped column are zeroed."""
    N1, M = plan.N1, plan.M
    c = keep_cols // 2
    f = torch.arange(N)
    col = f // N1
    kept = (col < c) | (col >= M - c)
    return kept & kept[(-f) % N]


def kept_columns(plan: Plan, keep_cols: int) -> torch.Tensor:
    c = keep_cols // 2
    return torch.cat([torch.arange(c), torch.arange(plan.M - c, plan.M)])


# ------------------------------------------------------------------------------------------------ emulation
def monarch_conv_emulate(z: torch.Tensor, kf_lay: torch.Tensor, plan: Plan, rows_in: int, rows_out: int):
    """The fused kernel's dataflow in complex128 PyTorch: z (S, rows_in·M) complex (rows ≥ rows_in are zero),
    kf_lay the spectrum/N in the plan's layout; returns the first rows_out·M samples of the circular conv.
    Tests compare it with torch.fft, which checks every table and layout the Triton kernel uses."""
    t = _tables_cpu(plan)
    N1, N2, N3, R = plan.N1, plan.N2, plan.N3, plan.R
    M = N2 * N3
    S = z.shape[0]
    a = z.reshape(S, rows_in, M)
    acc = torch.zeros(S, rows_out, M, dtype=torch.complex128)
    F1 = t["F1"]
    for r0 in range(0, N1, R):
        f1 = F1[r0 : r0 + R, :rows_in]  # [R, rows_in]
        x = f1 @ a  # [S, R, M]
        if N3 == 1:
            x = x * t["TW"][r0 : r0 + R]
            x = x @ t["F2"]
            x = x * kf_lay[..., r0 : r0 + R, :]
            x = x @ t["F2"].conj()
            x = x * t["TW"][r0 : r0 + R].conj()
        else:
            x = x.reshape(S, R, N2, N3).permute(0, 3, 1, 2)  # [S, N3, R, N2]
            tw = t["TW"][:, r0 : r0 + R, :]
            x = x * tw
            x = x @ t["F2"]  # contract n2 -> k2
            x = x * t["TW2"][:, None, :]
            x = torch.einsum("kn,snrj->skrj", t["F3"], x)  # contract n3 -> k3: [S, K3, R, K2]
            x = x * kf_lay[..., :, r0 : r0 + R, :]
            x = torch.einsum("kn,snrj->skrj", t["F3"].conj(), x)  # k3 -> n3
            x = x * t["TW2"][:, None, :].conj()
            x = x @ t["F2"].conj()  # k2 -> n2
            x = x * tw.conj()
            x = x.permute(0, 2, 3, 1).reshape(S, R, M)  # [S, R, N2, N3] -> [S, R, M]
        acc = acc + F1[r0 : r0 + R, :rows_out].mT.conj() @ x
    return acc.reshape(S, rows_out * M)
