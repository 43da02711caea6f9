"""Calibrated gate thresholds (CATS/TEAL-style): per layer, the `sparsity` quantile of |silu(gate x)| on text.

A relufied model (FFN activation ReLU / shifted ReLU / ReLU^2) needs none: a neuron is off iff act(gate x) == 0, so
its thresholds are 0 and the sparse FFN is exact; `sparsity` is then ignored."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch

from ..llm.model import Transformer
from .activations import ffn_input_hooks, progress_bar, run_tokens, sdpa_attention
from .sparse_ffn import ffn_act, gate_activity, gate_weight, is_relu_family


@torch.inference_mode()
def calibrate_thresholds(model: Transformer, token_batches: Iterable[torch.Tensor], sparsity: float | Sequence[float],
                         max_samples: int = 4_000_000, seed: int = 0, progress: bool = False) -> torch.Tensor:
    """Per-layer thresholds t (L,) fp32 such that a fraction `sparsity` (scalar or per layer) of the observed
    |silu(gate x)| on `token_batches` ((B, T) or (T,) long tensors) falls at or below t_l.

    Values are subsampled uniformly to at most `max_samples` per layer (the quantile of 4M samples is within
    ~1e-3 of the exact one), so calibration memory does not grow with the text."""
    L, H = model.args.n_layers, model.args.hidden_dim
    sp = torch.as_tensor(sparsity, dtype=torch.float64).expand(L)
    if ((sp < 0) | (sp >= 1)).any():
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    if is_relu_family(model.args.ffn_act):  # exact zeros: nothing to calibrate
        return torch.zeros(L)
    batches = list(token_batches)
    n_tok = sum(b.numel() for b in batches)
    keep = min(1.0, max_samples / max(n_tok * H, 1))
    gen = torch.Generator().manual_seed(seed)
    samples: list[list[torch.Tensor]] = [[] for _ in range(L)]

    def collect(i: int, x: torch.Tensor) -> None:
        a = gate_activity(model.layers[i].feed_forward, x).flatten().cpu()
        if keep < 1:
            a = a[torch.rand(a.numel(), generator=gen) < keep]
        samples[i].append(a)

    prog, task = progress_bar("calibrating thresholds", len(batches), progress)
    with prog, sdpa_attention(model), ffn_input_hooks(model, collect):
        for b in batches:
            run_tokens(model, b)
            prog.advance(task)
    return _quantiles([torch.cat(x) for x in samples], sp)


def _quantiles(values: list[torch.Tensor], sp: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(len(values))
    for i, v in enumerate(values):
        if sp[i] > 0:
            v = v.double().sort().values
            k = min(v.numel() - 1, max(0, math.ceil(float(sp[i]) * v.numel()) - 1))
            out[i] = float(v[k])  # the k-th smallest: a fraction `sparsity` of values is <= it
    return out


def thresholds_from_inputs(model: Transformer, inputs: list[torch.Tensor], sparsity: float | Sequence[float],
                           max_samples: int = 4_000_000, seed: int = 0) -> torch.Tensor:
    """`calibrate_thresholds` from FFN inputs already collected (`collect_ffn_inputs`): one pass over the text
    serves several target sparsities."""
    L = model.args.n_layers
    sp = torch.as_tensor(sparsity, dtype=torch.float64).expand(L)
    if is_relu_family(model.args.ffn_act):
        return torch.zeros(L)
    gen = torch.Generator().manual_seed(seed)
    vals = []
    for i in range(L):
        ffn = model.layers[i].feed_forward
        a = ffn_act(ffn)(inputs[i].float() @ gate_weight(ffn).T).abs().flatten()
        if a.numel() > max_samples:
            a = a[torch.randint(0, a.numel(), (max_samples,), generator=gen)]
        vals.append(a)
    return _quantiles(vals, sp)
