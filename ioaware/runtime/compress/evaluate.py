"""Perplexity on held-out text: the dense model and its factored versions, same tokens, same chunks."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..llm.model import Transformer
from ..offload.activations import progress_bar, run_tokens, sdpa_attention


@torch.inference_mode()
def perplexity(model: Transformer, batches: list[torch.Tensor], progress: bool = False,
               label: str = "perplexity", batch: int = 1) -> dict:
    """exp(mean next-token NLL) over every chunk of `batches` ((1, T) long tensors, each run from position 0),
    with attention through SDPA (the same math as the kernels; the fast path on CPU), on the model's device.
    `batch`: run up to that many consecutive same-length chunks together (the same sum, fewer launches on a GPU)."""
    from .text import batch_chunks

    nll, n = 0.0, 0
    groups = batch_chunks(batches, batch) if batch > 1 else batches
    prog, task = progress_bar(label, len(groups), progress)
    with prog, sdpa_attention(model):
        for b in groups:
            b = b.to(model.norm.weight.device)
            logits = run_tokens(model, b)[:, :-1].float()  # (b, T-1, V)
            nll += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), b[:, 1:].reshape(-1),
                                         reduction="sum"))
            n += b.shape[0] * (b.shape[1] - 1)
            prog.advance(task)
    model.cache_len = 0  # the cache is sized for the last group; the next user sets up its own
    return {"ppl": math.exp(nll / n), "tokens": n}
