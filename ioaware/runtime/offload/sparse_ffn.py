"""The exact sparse FFN over loaded neuron bundles, and what the threshold is applied to.

SwiGLU, y = down(silu(gate x) * up x), has no exact zeros, but most |silu(gate_i x)| are small. A per-layer
threshold t_l zeroes the neurons at or below it:
    y = down[:, S] (silu(gate[S] x) * up[S] x),   S = {i : |silu(gate_i x)| > t_l}.
A neuron outside S needs none of its three weight vectors, so with row-column bundling (neuron i = [gate row i,
up row i, down column i]) a token only has to read the bundles in S. `sparse_ffn` applies the threshold on the real
gate values, so a wrongly predicted neuron costs I/O but never changes y.

A relufied model (relufy adapter: act = ReLU, shifted ReLU or ReLU^2 in place of SiLU) has exact zeros: there the
threshold is 0 and S = {i : act(gate_i x) != 0} is exactly the set of neurons that change y.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..llm.model import FeedForward


def sparse_ffn(x: torch.Tensor, bundles: torch.Tensor, threshold: float, act=F.silu) -> torch.Tensor:
    """x: (T, hidden); bundles: (n, 3, hidden) = [gate row, up row, down column] of n loaded neurons -> (T, hidden).

    Exact for the loaded neurons: the threshold is applied to the actual |act(gate x)| (act: the model's gate
    activation, `FeedForward.act`), so a neuron loaded by mistake contributes nothing, and y equals the thresholded
    dense FFN whenever the loaded set contains the active set. Accumulates in fp32 and returns x's dtype."""
    return sparse_ffn_counted(x, bundles, threshold, act)[0]


def sparse_ffn_counted(x: torch.Tensor, bundles: torch.Tensor, threshold: float,
                       act=F.silu) -> tuple[torch.Tensor, int]:
    """`sparse_ffn`, and how many (row, neuron) pairs of the loaded neurons were active (|act| > threshold): what
    a streamed run measures its FFN sparsity from."""
    if x.dim() != 2 or bundles.dim() != 3 or bundles.shape[1] != 3 or bundles.shape[2] != x.shape[1]:
        raise ValueError(f"sparse_ffn wants x (T, hidden) and bundles (n, 3, hidden); got {tuple(x.shape)} and "
                         f"{tuple(bundles.shape)}")
    xf, b = x.float(), bundles.float()
    gate = xf @ b[:, 0].T  # (T, n)
    up = xf @ b[:, 1].T  # (T, n)
    h = act(gate)
    active = h.abs() > threshold  # (T, n); for ReLU (threshold 0): exactly the nonzeros
    h = torch.where(active, h * up, 0.0)  # (T, n)
    return (h @ b[:, 2]).to(x.dtype), int(active.sum())  # (T, hidden)


def ffn_bundles(ffn: FeedForward, ids: torch.Tensor | None = None) -> torch.Tensor:
    """(n, 3, hidden) bundles of a dense FeedForward for neuron `ids` (all if None): what a flash store holds."""
    H = ffn.hidden
    w = ffn.w13.weight  # (2H, dim): [gate; up]
    gate, up, down = w[:H], w[H:], ffn.w2.weight.T  # each (H, dim)
    b = torch.stack([gate, up, down], dim=1)  # (H, 3, dim)
    return b if ids is None else b[ids]


def gate_up(ffn: FeedForward, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # through the module's own projection, so packed 4-bit weights work as well as dense ones
    return ffn.w13(x).split(ffn.hidden, dim=-1)


def gate_activity(ffn: FeedForward, x: torch.Tensor) -> torch.Tensor:
    """|act(gate x)|, (..., ffn) fp32: the quantity the threshold is applied to (act: the FFN's own, SiLU or ReLU)."""
    return ffn_act(ffn)(gate_up(ffn, x)[0].float()).abs()


def ffn_act(ffn) -> object:
    """The gate activation of a FeedForward (SiLU for a module built before activations were a model argument)."""
    return getattr(ffn, "act", F.silu)


def is_relu_family(name: str) -> bool:
    """True for the relufy activations: a neuron is off iff act(gate x) == 0, so no threshold is needed."""
    return name in ("relu", "shifted_relu", "relu2")


def gate_weight(ffn: FeedForward) -> torch.Tensor:
    return ffn_bundles(ffn)[:, 0].float()  # (H, dim)
