"""FlashSVD's compression tool: truncated (optionally whitened) SVD of a checkpoint's projections, the factor
checkpoint, and the low-rank model that runs it (FlashSVD's kernels on CUDA). README.md says how and how well."""

from .api import compress_file, load_factor_model, sweep
from .compress import factorize_checkpoint, layer_ranks, projection_params
from .evaluate import perplexity
from .factors import FactorCheckpoint, is_factor_checkpoint, load_factors, save_factors
from .model import LowRankTransformer, build_lowrank_model
from .svd import factorize, factorize_heads, rank_for, whitener

__all__ = ["FactorCheckpoint", "LowRankTransformer", "build_lowrank_model", "compress_file", "factorize",
           "factorize_checkpoint", "factorize_heads", "is_factor_checkpoint", "layer_ranks", "load_factor_model",
           "load_factors", "perplexity", "projection_params", "rank_for", "save_factors", "sweep", "whitener"]
