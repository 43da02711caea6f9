"""Truncated SVD of a linear layer, plain or whitened (SVD-LLM), into the factors FlashSVD runs.

A layer y = x W^T (W: (out, in)) becomes y = (x U) V with U (in, r), V (r, out).

Plain: W = A S B^T (singular values S), U = B_r S_r^(1/2), V = S_r^(1/2) A_r^T: the best rank-r W in the Frobenius
norm (Eckart-Young), the singular values split evenly between the factors so neither overflows a 16-bit float.

Whitened (SVD-LLM, Wang et al. 2024): what matters is the layer's output on real inputs, ||(W - W') X^T||_F for
calibration activations X (N, in). With C = X^T X = L L^T (Cholesky), ||(W - W') X^T||_F = ||(W - W') L||_F, so
truncate W L instead: W L = A S B^T, W' = A_r S_r B_r^T L^-1, i.e. U = L^-T B_r S_r^(1/2), V = S_r^(1/2) A_r^T.
The discarded singular values of W L are then exactly the output error on the calibration set.

Math in float64 (the Cholesky factor of an activation covariance is ill-conditioned; fp32 loses the small
directions); the factors are returned in float32.
"""

from __future__ import annotations

import torch

# Tikhonov term added to the covariance before its Cholesky factorisation, relative to the mean of its diagonal.
# It makes C positive definite when the calibration text does not excite every input direction (fewer tokens
# than inputs, or activations confined to a subspace) and bounds L^-1, which would otherwise amplify directions
# never seen in calibration. 1e-4 of the mean variance is below the squared magnitude of all but the smallest
# directions, so it leaves the truncation unchanged where the text has data. SVD-LLM instead shifts the spectrum
# only when the factorisation fails; a fixed term makes the result a smooth function of the data.
RIDGE = 1e-4


def rank_for(ratio: float, rows: int, cols: int) -> int:
    """The rank kept at `ratio` of full rank min(rows, cols), rounded half up, at least 1."""
    full = min(rows, cols)
    return max(1, min(full, int(ratio * full + 0.5)))


def whitener(cov: torch.Tensor, ridge: float = RIDGE) -> torch.Tensor:
    """L, lower triangular (n, n) float64, with L L^T = C + ridge * mean(diag C) * I."""
    c = cov.double()
    c = (c + c.T) / 2  # accumulated in float64 it is symmetric to rounding; make it exactly so
    lam = ridge * float(c.diagonal().mean().clamp_min(1e-30))
    return torch.linalg.cholesky(c + lam * torch.eye(c.shape[0], dtype=c.dtype, device=c.device))


def factorize(w: torch.Tensor, rank: int, chol: torch.Tensor | None = None, cache: dict | None = None,
              key: object = None) -> tuple[torch.Tensor, torch.Tensor, float]:
    """W (out, in) -> (U (in, r), V (r, out), relative error). The error is sqrt(sum of the discarded squared
    singular values / all of them): of ||W - UV^T||_F plain, of the output on the calibration inputs whitened.
    Computed on `chol`'s device when given (W is moved there). `cache` (a dict, with a `key` naming W): the SVD is
    kept there and reused, so a sweep over ratios decomposes each matrix once (the caller keeps one cache per
    whitening, since the SVD is of W L)."""
    if cache is not None and key in cache:
        a, s, bh = cache[key]
    else:
        w64 = w.to(chol.device if chol is not None else w.device, torch.float64)
        target = w64 if chol is None else w64 @ chol.double()
        a, s, bh = torch.linalg.svd(target, full_matrices=False)  # target = a diag(s) bh
        if cache is not None:
            cache[key] = (a, s, bh)
    r = min(rank, s.shape[0])
    root = s[:r].sqrt()
    v = root[:, None] * a[:, :r].T  # (r, out)
    u = bh[:r].T * root[None, :]  # (in, r), in whitened coordinates when chol is given
    if chol is not None:  # back to input coordinates: U = L^-T B_r S_r^(1/2), L^T upper triangular
        u = torch.linalg.solve_triangular(chol.double().T, u, upper=True)
    total = float(s.pow(2).sum())
    err = (float(s[r:].pow(2).sum()) / total) ** 0.5 if total > 0 else 0.0
    return u.float(), v.float(), err


def factorize_heads(w: torch.Tensor, n_heads: int, rank: int, chol: torch.Tensor | None = None,
                    cache: dict | None = None, key: object = None) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Per-head factors of W (H * D, in), FlashSVD's layout for Q/K/V: U (in, H * r) with head h in columns
    [h r, (h + 1) r), V (H, r, D). The error is over the whole matrix (the heads' discarded energy summed)."""
    D = w.shape[0] // n_heads
    us, vs, num, den = [], [], 0.0, 0.0
    for h in range(n_heads):
        wh = w[h * D:(h + 1) * D]
        u, v, err = factorize(wh, rank, chol, cache, (key, h))
        wh = wh.to(chol.device if chol is not None else wh.device, torch.float64)
        energy = float((wh if chol is None else wh @ chol.double()).pow(2).sum())
        num += err * err * energy
        den += energy
        us.append(u)
        vs.append(v)
    return torch.cat(us, dim=1), torch.stack(vs), (num / den) ** 0.5 if den > 0 else 0.0
