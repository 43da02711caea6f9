"""Running a model to observe its FFN inputs and activations (what thresholds and predictors are fitted on)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch

from ..llm.model import Transformer


@contextlib.contextmanager
def sdpa_attention(model: Transformer):
    # Calibration only needs activations; SDPA is the same math as flash_attn and much faster on CPU (README).
    old = model.attn_impl
    model.set_attention("sdpa")
    try:
        yield
    finally:
        model.set_attention(old)


def run_tokens(model: Transformer, tokens: torch.Tensor) -> torch.Tensor:
    """Full-sequence forward of (B, T) tokens from position 0 -> logits (B, T, vocab)."""
    tokens = tokens if tokens.dim() == 2 else tokens[None]
    tokens = tokens.to(model.norm.weight.device)
    if model.cache_len < tokens.shape[1]:
        model.setup_cache(tokens.shape[0], tokens.shape[1])
    elif model.layers[0].attention.cache.k.shape[0] != tokens.shape[0]:
        model.setup_cache(tokens.shape[0], model.cache_len)
    return model(tokens, 0)


def progress_bar(description: str, total: int, enabled: bool = True):
    from rich import progress as rp

    prog = rp.Progress(rp.TextColumn("[bold]{task.description}"), rp.BarColumn(), rp.MofNCompleteColumn(),
                       rp.TextColumn("{task.fields[info]}"), rp.TimeElapsedColumn(), rp.TimeRemainingColumn(),
                       disable=not enabled, transient=False)
    return prog, prog.add_task(description, total=total, info="")


@contextlib.contextmanager
def ffn_input_hooks(model: Transformer, fn) -> Iterator[None]:
    """Call fn(layer, x) with each FFN's input x (B, T, dim) during forwards inside the block."""
    handles = [layer.feed_forward.register_forward_pre_hook(lambda m, args, i=i: fn(i, args[0]))
               for i, layer in enumerate(model.layers)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@torch.inference_mode()
def collect_ffn_inputs(model: Transformer, token_batches: Iterable[torch.Tensor], max_tokens: int | None = None,
                       dtype=torch.float16, progress: bool = False) -> list[torch.Tensor]:
    """FFN inputs per layer, each (N, dim) on CPU in `dtype` (fp16 halves the memory; labels are recomputed
    from them in fp32). Stops after `max_tokens` tokens."""
    batches = list(token_batches)
    L = model.args.n_layers
    out: list[list[torch.Tensor]] = [[] for _ in range(L)]
    prog, task = progress_bar("collecting FFN inputs", len(batches), progress)
    seen = 0
    with prog, sdpa_attention(model), ffn_input_hooks(
            model, lambda i, x: out[i].append(x.reshape(-1, x.shape[-1]).to("cpu", dtype))):
        for b in batches:
            if max_tokens is not None and seen >= max_tokens:
                break
            run_tokens(model, b)
            seen += b.numel()
            prog.update(task, advance=1, info=f"{seen} tokens")
    res = [torch.cat(o) for o in out]
    return [r[:max_tokens] for r in res] if max_tokens is not None else res
