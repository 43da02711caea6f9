"""The relufy student: the base model with every FFN's gate activation swapped (SiLU -> ReLU / shifted ReLU / ReLU^2)
and, while training, LoRA pairs on gate, up and down.

`ReluFFN` replaces a `llm.model.FeedForward` in place (same `hidden`, `w13`, `w2` attributes, the base weights
shared, frozen): gate = W_g x + B_g A_g x, up likewise, y = W_2 h + B_2 A_2 h with h = act(gate) * up. B starts at
zero, so at step 0 the student differs from the teacher by the activation alone. After training the pairs are
merged (W + B @ A, `Adapter.merged`) into plain weights: what the runtime loads is what is evaluated.

The activation is `Adapter.act` itself (adapter.py), so training, evaluation and the runtime share one definition.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import UnsupportedError
from ..llm.checkpoint import Checkpoint, build_model
from ..llm.model import FeedForward, Linear, Transformer
from .adapter import ACTIVATIONS, PROJECTIONS, Adapter

DEFAULT_SHIFT = 0.25  # shifted_relu's default: 76% of SmolLM2's gate values lie below it (dev/relufy/zero_shot.py)


def check_activation(activation: str, shift: float) -> None:
    """One-line errors for an activation and its shift, before any work."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"--activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
    if not isinstance(shift, (int, float)) or not math.isfinite(shift):
        raise ValueError(f"--shift must be a finite number, got {shift!r}")
    if activation == "shifted_relu" and shift <= 0:
        raise ValueError(f"--shift must be > 0 for shifted_relu (relu(g - shift)), got {shift:g}; "
                         "use --activation relu for no shift")
    if activation != "shifted_relu" and shift != 0:
        raise ValueError(f"--shift applies to shifted_relu only; {activation} takes no shift (got {shift:g})")


def check_rank(rank: int, dim: int | None = None, hidden: int | None = None) -> None:
    if not isinstance(rank, int) or isinstance(rank, bool) or rank <= 0:
        raise ValueError(f"--rank must be a positive integer, got {rank!r}")
    if dim is not None and hidden is not None and rank > min(dim, hidden):
        raise ValueError(f"--rank {rank} exceeds the FFN's smaller side ({min(dim, hidden)}): no low-rank saving")


def activation_of(activation: str, shift: float) -> Adapter:
    """An empty Adapter carrying just the activation (its `.act`), for students that are not loaded from a file."""
    check_activation(activation, shift)
    return Adapter(activation, float(shift), 0, "", {})


class ReluFFN(nn.Module):
    """A FeedForward with `act` in place of SiLU and, when rank > 0, trainable LoRA pairs (fp32) on gate, up and
    down. `stats`: when a [zeros, total] pair of tensors, each forward adds act(gate)'s exact zeros and element
    count to it; `keep_act`: keep the last act(gate) (for the L1 term). `blend` < 1 (training's start only) mixes
SiLU back in, so the student starts as the teacher and the swap is gradual; the stats and L1 always see act(gate),
the activation the model ends with."""

    def __init__(self, ff: FeedForward, act: Adapter, rank: int = 0, generator: torch.Generator | None = None):
        super().__init__()
        self.hidden, self.w13, self.w2, self.activation = ff.hidden, ff.w13, ff.w2, act
        self.rank = rank
        self.lora = nn.ParameterDict()
        dim = self.w13.in_features
        dev = self.w13.weight.device
        for proj, (n_out, n_in) in zip(PROJECTIONS, ((self.hidden, dim), (self.hidden, dim), (dim, self.hidden))):
            if not rank:
                break
            # PEFT's LoRA start: A uniform in +-1/sqrt(in) (kaiming-uniform, a = sqrt(5)), B = 0; drawn on the CPU
            # from one seeded generator so the start is the same on every device
            A = (torch.rand(rank, n_in, generator=generator, dtype=torch.float32) * 2 - 1) / math.sqrt(n_in)
            self.lora[f"{proj}_A"] = nn.Parameter(A.to(dev))
            self.lora[f"{proj}_B"] = nn.Parameter(torch.zeros(n_out, rank, device=dev))
        self.stats: list[torch.Tensor] | None = None
        self.blend = 1.0  # training only: act = blend * act(gate) + (1 - blend) * silu(gate); stats see act(gate)
        self.keep_act = False
        self.last_act: torch.Tensor | None = None

    def _delta(self, proj: str, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.lora[f"{proj}_A"]), self.lora[f"{proj}_B"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w13(x).split(self.hidden, dim=-1)  # (B, T, hidden) each
        if self.rank:
            gate = gate + self._delta("gate_proj", x)
            up = up + self._delta("up_proj", x)
        a = self.activation.act(gate)
        if self.keep_act:
            self.last_act = a
        if self.stats is not None:
            self.stats[0] += (a == 0).sum()
            self.stats[1] += a.numel()
        if self.blend < 1:
            a = self.blend * a + (1 - self.blend) * F.silu(gate)
        h = a * up
        y = self.w2(h)
        if self.rank:
            y = y + self._delta("down_proj", h)
        return y

    def deltas(self, layer: int) -> dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]:
        return {(layer, p): (self.lora[f"{p}_A"].detach(), self.lora[f"{p}_B"].detach())
                for p in PROJECTIONS if self.rank}


def ffns(model: Transformer) -> list[ReluFFN]:
    out = [layer.feed_forward for layer in model.layers]
    if not all(isinstance(f, ReluFFN) for f in out):
        raise UnsupportedError("the model's FFNs are not relufied (make_student / apply_adapter)")
    return out  # type: ignore[return-value]


def make_student(model: Transformer, activation: str, shift: float, rank: int, seed: int = 0) -> Transformer:
    """Swap every FFN of `model` (in place) for a ReluFFN with LoRA pairs of `rank`; only those train."""
    act = activation_of(activation, shift)
    check_rank(rank, model.args.dim, model.args.hidden_dim)
    if not all(isinstance(layer.feed_forward, FeedForward) for layer in model.layers):
        raise UnsupportedError("relufy needs dense FeedForward modules (build the model with weights='dense')")
    gen = torch.Generator().manual_seed(seed)
    for layer in model.layers:
        layer.feed_forward = ReluFFN(layer.feed_forward, act, rank, gen)
    return model


def lora_deltas(model: Transformer) -> dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]:
    out: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}
    for i, f in enumerate(ffns(model)):
        out.update(f.deltas(i))
    return out


def apply_adapter(model: Transformer, adapter: Adapter) -> Transformer:
    """Make `model` (in place) the relufied model the adapter describes: every FFN a ReluFFN with the adapter's
    activation and merged weights W + B @ A (computed in fp32, stored in the model's dtype), no LoRA left. The
    base weights of a plain FeedForward are replaced, not modified (a model sharing them is untouched)."""
    a = model.args
    for i, layer in enumerate(model.layers):
        ff = layer.feed_forward
        if not isinstance(ff, (FeedForward, ReluFFN)):
            raise UnsupportedError(f"layer {i}: the FFN is a {type(ff).__name__}; relufy needs dense weights")
        w13 = ff.w13.weight
        gate = adapter.merged(i, "gate_proj", w13[:a.hidden_dim])
        up = adapter.merged(i, "up_proj", w13[a.hidden_dim:])
        down = adapter.merged(i, "down_proj", ff.w2.weight)
        plain = FeedForward.__new__(FeedForward)
        nn.Module.__init__(plain)
        plain.hidden = a.hidden_dim
        plain.w13 = Linear(a.dim, 2 * a.hidden_dim, bias=False, device="meta")
        plain.w2 = Linear(a.hidden_dim, a.dim, bias=False, device="meta")
        plain.w13.weight = nn.Parameter(torch.cat([gate, up]).detach(), requires_grad=False)
        plain.w2.weight = nn.Parameter(down.detach().clone() if down is ff.w2.weight else down.detach(),
                                       requires_grad=False)
        layer.feed_forward = ReluFFN(plain, adapter, 0)
    return model


def build_student(ckpt: Checkpoint, adapter: Adapter, device: str | torch.device = "cpu",
                  dtype: torch.dtype | None = None) -> Transformer:
    """The relufied model from a checkpoint and an adapter (dense weights, merged), ready to run."""
    return apply_adapter(build_model(ckpt, device, dtype, weights="dense"), adapter).eval()
