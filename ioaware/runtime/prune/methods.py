"""Which weights to drop: magnitude and Wanda scores, and the masks they give at a target sparsity.

- magnitude (the standard baseline): drop the |W| smallest of each Hugging Face projection matrix (q, k, v, o,
  gate, up, down: one threshold per matrix, "layer-wise" as in the Wanda paper's baseline);
- Wanda (Sun et al., 2023, "A Simple and Effective Pruning Approach for LLMs"): score |W_ij| * ||X_j||_2, with
  ||X_j|| the L2 norm of input feature j over the calibration tokens, and drop the lowest scores *per output row*
  (each row keeps the same count), no weight update.

Both keep exactly round((1 - s) * n) weights per comparison group (ties broken by index, so results are
deterministic).
"""

from __future__ import annotations

import torch

METHODS = ("magnitude", "wanda")


def check_sparsity(sparsity: float) -> float:
    s = float(sparsity)
    if not 0.0 <= s < 1.0:
        raise ValueError(f"sparsity must be in [0, 1) (the fraction of weights dropped), got {sparsity}")
    return s


def keep_mask(scores: torch.Tensor, sparsity: float, per_row: bool) -> torch.Tensor:
    """True where a weight is kept: the (1 - sparsity) highest scores of each row (per_row) or of the matrix."""
    s = check_sparsity(sparsity)
    flat = scores if per_row else scores.reshape(1, -1)
    n = flat.shape[1]
    drop = int(round(s * n))
    mask = torch.ones_like(flat, dtype=torch.bool)
    if drop:
        idx = torch.topk(flat, drop, dim=1, largest=False, sorted=False).indices
        mask.scatter_(1, idx, False)
    return mask.view_as(scores)


def magnitude_mask(w: torch.Tensor, sparsity: float, row_splits: list[int] | None = None) -> torch.Tensor:
    """Layer-wise magnitude pruning; row_splits: the rows of each original matrix inside a fused one."""
    splits = row_splits or [w.shape[0]]
    return torch.cat([keep_mask(part.abs().float(), sparsity, per_row=False)
                      for part in torch.split(w, splits, dim=0)])


def wanda_mask(w: torch.Tensor, input_norm: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Wanda: |W| * ||X_j|| per output row. input_norm: (in_features,) L2 norms of the calibration inputs."""
    if input_norm.shape != (w.shape[1],):
        raise ValueError(f"wanda: {input_norm.shape[0]} input norms for a weight with {w.shape[1]} input features")
    return keep_mask(w.abs().float() * input_norm.float()[None, :].to(w.device), sparsity, per_row=True)


@torch.no_grad()
def random_prune_(model, sparsity: float, seed: int = 0) -> None:
    """Zero a random `sparsity` fraction of every block projection in place (for speed benchmarks only: the
    kernel's time depends on the density, not on which weights survive)."""
    check_sparsity(sparsity)
    from .model_io import block_linears

    torch.manual_seed(seed)
    for _, _, lin in block_linears(model):
        w = lin.weight
        w.mul_(torch.rand(w.shape, device=w.device) >= sparsity)
