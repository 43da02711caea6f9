"""Prune a model's block projections in place: magnitude (no data) or Wanda (calibration activations).

Wanda's input norms are gathered the way its reference implementation does (`prune_wanda` in locuslab/wanda):
block by block, with the calibration hidden states carried through the blocks already pruned, and every
projection of a block scored from the same pass (before any of that block is pruned).
"""

from __future__ import annotations

import time

import torch

from ..llm.model import Transformer
from ..offload.activations import progress_bar, sdpa_attention
from .methods import METHODS, check_sparsity, magnitude_mask, wanda_mask
from .model_io import block_linears, row_splits


@torch.no_grad()
def prune_model(model: Transformer, sparsity: float, method: str, calibration: list[torch.Tensor] | None = None,
                progress: bool = False) -> dict:
    """Zero `sparsity` of every block projection's weights in place. calibration: (1, T) token tensors (Wanda).
    Returns a report: achieved sparsity per projection and overall, calibration tokens, seconds."""
    check_sparsity(sparsity)
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if method == "wanda" and not calibration:
        raise ValueError("wanda needs calibration token batches (the activations' input norms)")
    t0 = time.perf_counter()
    if method == "magnitude":
        todo = list(block_linears(model))
        prog, task = progress_bar(f"magnitude pruning to {sparsity:.0%}", len(todo), progress)
        with prog:
            for _, name, lin in todo:
                w = lin.weight
                w.mul_(magnitude_mask(w, sparsity, row_splits(model.args, name)).to(w.dtype))
                prog.advance(task)
        tokens = 0
    else:
        tokens = _wanda(model, sparsity, calibration, progress)
    return {"method": method, "target_sparsity": sparsity, "calibration_tokens": tokens,
            "seconds": time.perf_counter() - t0, **achieved_sparsity(model)}


def achieved_sparsity(model: Transformer) -> dict:
    per, zeros, total = {}, 0, 0
    for i, name, lin in block_linears(model):
        w = lin.weight
        z = int((w == 0).sum())
        per[f"layers.{i}.{name}"] = z / w.numel()
        zeros, total = zeros + z, total + w.numel()
    return {"sparsity": zeros / max(total, 1), "sparsity_per_projection": per, "pruned_params": total}


def _wanda(model: Transformer, sparsity: float, calibration: list[torch.Tensor], progress: bool) -> int:
    dev = model.norm.weight.device
    seqs = [b if b.dim() == 2 else b[None] for b in calibration]
    T = max(b.shape[1] for b in seqs)
    model.setup_cache(1, T)
    hs = [model.tok_embeddings(b.to(dev)) for b in seqs]  # (1, T, dim) each: the calibration hidden states
    tokens = sum(b.numel() for b in seqs)
    prog, task = progress_bar(f"wanda pruning to {sparsity:.0%}", len(model.layers), progress)
    with prog, sdpa_attention(model):
        for i, layer in enumerate(model.layers):
            lins = {name: lin for j, name, lin in block_linears(model) if j == i}
            sq = {name: torch.zeros(lin.in_features, dtype=torch.float64, device=dev) for name, lin in lins.items()}

            def hook(acc: torch.Tensor):
                def fn(_m, args):
                    x = args[0].reshape(-1, args[0].shape[-1])
                    acc.add_(x.double().pow(2).sum(0))
                return fn

            handles = [lin.register_forward_pre_hook(hook(sq[name])) for name, lin in lins.items()]
            try:
                for h in hs:
                    T_ = h.shape[1]
                    layer(h, model.cos[:T_], model.sin[:T_], 0)
            finally:
                for hd in handles:
                    hd.remove()
            for name, lin in lins.items():
                w = lin.weight
                w.mul_(wanda_mask(w, sq[name].sqrt(), sparsity).to(w.dtype))
            # the next block sees this block's pruned outputs
            hs = [layer(h, model.cos[:h.shape[1]], model.sin[:h.shape[1]], 0) for h in hs]
            prog.update(task, advance=1, info=f"block {i}")
    return tokens
