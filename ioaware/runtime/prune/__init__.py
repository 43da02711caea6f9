"""Pruning for Flash-LLM: magnitude and Wanda to unstructured sparsity, packed for ioaware.spmm.

`ioaware prune MODEL OUT --sparsity 0.8 --method wanda` (cli.py) writes a pruned checkpoint; `load_pruned(OUT)`
runs it, with every block projection a `SparseLinear` (the SpMM kernel on CUDA).
"""

from .methods import METHODS, keep_mask, magnitude_mask, random_prune_, wanda_mask
from .model_io import (
    PrunedCheckpoint,
    SparseLinear,
    block_linears,
    build_pruned,
    is_pruned_checkpoint,
    load_pruned,
    read_pruned,
    save_pruned,
    sparsify_model,
)
from .prune import achieved_sparsity, prune_model
from .quality import perplexity

__all__ = ["METHODS", "PrunedCheckpoint", "SparseLinear", "achieved_sparsity", "block_linears", "build_pruned",
           "is_pruned_checkpoint", "keep_mask", "load_pruned", "magnitude_mask", "perplexity", "prune_model",
           "random_prune_", "read_pruned", "save_pruned", "sparsify_model", "wanda_mask"]
