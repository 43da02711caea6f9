"""SVD-LLM's parameter update after truncation: train the factors to recover what truncation lost.

After the (whitened) truncation, every factor tensor of every projection (U, V of q/k/v per head, o, gate, up,
down) is trained by distillation from the dense model; embeddings, norms and the output head stay frozen, so the
file keeps exactly the ranks and shapes it had. SVD-LLM (Wang et al. 2024) updates U and V with LoRA-style
adapters; here the factors themselves are the trainable parameters (same function class, no merge step).

Loss: `kl` (default), KL(dense || compressed) of the next-token distributions at every position, or `mse`, the
relative squared error of every block's output against the dense block's, summed over blocks. The dense model's
targets are computed once (logits in float16, block outputs in float32) and reused every step.

Text: 256-token chunks of the shipped calibration text (the dense model's own generations, the text the
whitening is measured on), or of more text sampled from the dense model (text.py, `--update-tokens`); never the
held-out text. One batch of chunks per step (`--update-batch`), a fresh seeded permutation per pass. AdamW with
float32 master factors on the model's device (CPU or CUDA), linear warm-up then cosine decay to a tenth of the
peak, gradients clipped to norm 1. `precision` 'bf16' runs the student's forward and backward under bfloat16
autocast (the loss, the optimizer and the dense targets stay float32); 'fp32' runs everything in float32.
The dense targets are cached (float16 logits) for up to TARGET_CACHE_TOKENS tokens, else recomputed each step
(200k tokens of logits would be 20 GB; the dense forward is a third of a training step's work).
"""

from __future__ import annotations

import contextlib
import math
import random
import time

import torch
import torch.nn.functional as F

from ...errors import ShapeError
from ..llm.model import Transformer
from ..offload.activations import progress_bar, sdpa_attention
from .model import LowRankTransformer

LOSSES = ("kl", "mse")
DEFAULT_LR = 1e-4
WARMUP = 0.1  # fraction of the steps spent warming up the learning rate linearly
CLIP = 1.0  # gradient norm clip: the first steps' gradients of a badly truncated model are large
FLOOR = 0.1  # the cosine decays to this fraction of the peak learning rate
PRECISIONS = ("fp32", "bf16")
TARGET_CACHE_TOKENS = 65536  # above this many training tokens the dense targets are recomputed every step


def check_update(steps: int, lr: float, loss: str = "kl", batch: int = 1, precision: str = "fp32") -> None:
    """One-line errors for the update's settings, raised before any work."""
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
        raise ValueError(f"--update must be a number of training steps >= 0, got {steps}")
    if not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"--update-lr must be a positive learning rate, got {lr}")
    if loss not in LOSSES:
        raise ValueError(f"--update-loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise ValueError(f"--update-batch must be a number of chunks per step >= 1, got {batch}")
    if precision not in PRECISIONS:
        raise ValueError(f"--update-precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


def autocast(model: torch.nn.Module, precision: str):
    """bfloat16 autocast on the model's device for 'bf16', nothing for 'fp32'."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(model.norm.weight.device.type, dtype=torch.bfloat16)


def factor_parameters(model: LowRankTransformer) -> dict[str, torch.nn.Parameter]:
    """The trainable tensors: the factors of every block's attention and FFN (not norms, embeddings, head)."""
    out = {n: p for n, p in model.named_parameters() if ".attention." in n or ".feed_forward." in n}
    if not out:
        raise ShapeError("the model has no factor tensors to update (is it a LowRankTransformer?)")
    return out


def lr_at(step: int, steps: int, lr: float) -> float:
    """Linear warm-up over the first WARMUP of the steps, then cosine from lr down to FLOOR * lr."""
    warm = max(1, int(WARMUP * steps))
    if step < warm:
        return lr * (step + 1) / warm
    t = (step - warm) / max(1, steps - warm)
    return lr * (FLOOR + (1 - FLOOR) * 0.5 * (1 + math.cos(math.pi * t)))


def _forward(model: Transformer, tokens: torch.Tensor, blocks: bool):
    """Logits (1, T, V) fp32 and, with `blocks`, every block's output (a fresh cache each call, so that no
    autograd history links one step to the next through the cache buffers)."""
    tokens = tokens.to(model.norm.weight.device)
    model.setup_cache(tokens.shape[0], tokens.shape[1])
    outs: list[torch.Tensor] = []
    handles = [layer.register_forward_hook(lambda m, a, o: outs.append(o)) for layer in model.layers] if blocks else []
    try:
        logits = model(tokens, 0)
    finally:
        for h in handles:
            h.remove()
    return logits, outs


@torch.inference_mode()
def dense_targets(dense: Transformer, batches: list[torch.Tensor], loss: str = "kl", progress: bool = False) -> list:
    """The dense model's targets per chunk: logits (float16: 1/64 of a logit's unit at worst, ~2% of a token's
    probability, far below what truncation changes) for `kl`, every block's output (float32) for `mse`."""
    out = []
    prog, task = progress_bar("dense targets", len(batches), progress)
    with prog, sdpa_attention(dense):
        for b in batches:
            out.append(dense_target(dense, b, loss))
            prog.advance(task)
    return out


@torch.inference_mode()
def dense_target(dense: Transformer, tokens: torch.Tensor, loss: str = "kl"):
    """One chunk's (or batch's) target, as dense_targets (the caller sets the attention path)."""
    logits, blocks = _forward(dense, tokens, loss == "mse")
    return logits.half() if loss == "kl" else [h.float().clone() for h in blocks]


def distill_loss(model: LowRankTransformer, tokens: torch.Tensor, target, loss: str = "kl") -> torch.Tensor:
    """`kl`: mean over positions of KL(dense || model) of the next-token distributions. `mse`: sum over blocks of
    ||h - h_dense||^2 / ||h_dense||^2 (each block weighed by its own scale: the residual stream grows with depth)."""
    logits, blocks = _forward(model, tokens, loss == "mse")
    if loss == "kl":
        logp = F.log_softmax(logits.float().flatten(0, 1), dim=-1)
        logq = F.log_softmax(target.float().flatten(0, 1), dim=-1)
        return F.kl_div(logp, logq, log_target=True, reduction="batchmean")
    return sum(((h.float() - t).pow(2).sum() / t.pow(2).sum()) for h, t in zip(blocks, target, strict=True))


def mean_loss(model: LowRankTransformer, batches: list[torch.Tensor], targets: list | None, loss: str = "kl",
              progress: bool = False, label: str = "distillation loss", dense: Transformer | None = None) -> float:
    """The distillation loss averaged over every chunk (the same measure the training minimises; each batch
    weighed by its chunk count). targets None: computed from `dense` batch by batch."""
    total, n = 0.0, 0
    prog, task = progress_bar(label, len(batches), progress)
    with prog, torch.no_grad(), sdpa_attention(model), (sdpa_attention(dense) if dense is not None
                                                         else contextlib.nullcontext()):
        for i, b in enumerate(batches):
            t = targets[i] if targets is not None else dense_target(dense, b, loss)
            total += float(distill_loss(model, b, t, loss)) * b.shape[0]
            n += b.shape[0]
            prog.advance(task)
    return total / n


def update_factors(model: LowRankTransformer, dense: Transformer, batches: list[torch.Tensor], steps: int,
                   lr: float = DEFAULT_LR, seed: int = 0, loss: str = "kl", progress: bool = False,
                   targets: list | None = None, text: str = "calibration", precision: str = "fp32") -> dict:
    """Train `model`'s factors in place for `steps` steps (one element of `batches`, (b, T) tokens, each) towards
    `dense` (on the same device), and report the settings and the loss on the training text before and after.
    The model ends in eval mode with no parameter requiring grad, as build_lowrank_model returns it."""
    check_update(steps, lr, loss, precision=precision)
    if not batches:
        raise ValueError("the update needs training text; got no chunks")
    t0 = time.perf_counter()
    tokens = sum(b.numel() for b in batches)
    online = targets is None and tokens > TARGET_CACHE_TOKENS
    if targets is None and not online:
        targets = dense_targets(dense, batches, loss, progress)
    params = factor_parameters(model)
    shapes = {n: tuple(p.shape) for n, p in params.items()}
    before = mean_loss(model, batches, targets, loss, progress, "loss before the update", dense)
    rng = random.Random(seed)
    torch.manual_seed(seed)
    for p in params.values():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params.values(), lr=lr, weight_decay=0.0)
    order: list[int] = []
    curve: list[float] = []
    prog, task = progress_bar(f"updating factors ({loss}, lr {lr:g})", steps, progress)
    t1 = time.perf_counter()
    try:
        with prog, sdpa_attention(model), (sdpa_attention(dense) if online else contextlib.nullcontext()):
            model.train()
            for step in range(steps):
                if not order:
                    order = list(range(len(batches)))
                    rng.shuffle(order)
                i = order.pop()
                for g in opt.param_groups:
                    g["lr"] = lr_at(step, steps, lr)
                target = targets[i] if targets is not None else dense_target(dense, batches[i], loss)
                with autocast(model, precision):
                    value = distill_loss(model, batches[i], target, loss)
                opt.zero_grad(set_to_none=True)
                value.backward()
                torch.nn.utils.clip_grad_norm_(params.values(), CLIP)
                opt.step()
                curve.append(float(value.detach()))
                recent = sum(curve[-20:]) / len(curve[-20:])
                prog.update(task, advance=1, info=f"loss {curve[-1]:.4f} (last 20: {recent:.4f}) "
                            f"lr {opt.param_groups[0]['lr']:.2g}")
    finally:
        model.eval().requires_grad_(False)
        model.cache_len = 0  # the training caches are per-chunk; the next user sets up its own
    train_s = time.perf_counter() - t1
    after = mean_loss(model, batches, targets, loss, progress, "loss after the update", dense) if steps else before
    assert {n: tuple(p.shape) for n, p in factor_parameters(model).items()} == shapes  # ranks are untouched
    every = max(1, steps // 50)  # the curve, as means over windows: enough to see its shape in the JSON
    return {"steps": steps, "lr": lr, "seed": seed, "loss": loss, "text": text,
            "text_tokens": tokens, "chunk_tokens": batches[0].shape[1], "batch_chunks": batches[0].shape[0],
            "precision": precision, "targets": "recomputed each step" if online else "cached (float16 logits)",
            "device": str(model.norm.weight.device),
            "optimizer": "AdamW (weight decay 0)", "schedule": f"linear warm-up {WARMUP:.0%}, cosine to {FLOOR}x",
            "grad_clip": CLIP, "trained": "factors (U, V of every projection); embeddings, norms, head frozen",
            "params_trained": sum(p.numel() for p in params.values()),
            "loss_train_before": before, "loss_train_after": after,
            "loss_curve": [sum(curve[i:i + every]) / len(curve[i:i + every]) for i in range(0, steps, every)],
            "loss_curve_every": every, "seconds_per_step": train_s / steps if steps else 0.0,
            "seconds": time.perf_counter() - t0}
