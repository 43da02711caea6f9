"""The relufy adapter file: what `ioaware relufy` trains and the runtime loads on top of a base checkpoint.

A ReLU model differs from its SwiGLU base only in the FFN: the gate's activation (SiLU -> ReLU, optionally shifted)
and low-rank corrections to the three FFN projections that recover quality after the swap. Only those travel: a
safetensors file of LoRA pairs, W' = W + B @ A per projection, with the activation and the base file's SHA-256 in
its metadata. Low rank rather than full FFN weights because the file lives in the repo and travels to the GPU
machine with it (a 64 MiB working-tree limit): rank 64 in fp16 is about 24 MB for SmolLM2-135M, its full FFN at
Q4_1 about 50 MB.

Tensor names follow the Hugging Face state dict: `model.layers.{i}.mlp.{gate,up,down}_proj.lora_A` of shape
(rank, in_features) and `.lora_B` of shape (out_features, rank); any layer or projection may be absent (no change).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ...errors import IOAwareError

FORMAT = "ioaware-relufy/1"
PROJECTIONS = ("gate_proj", "up_proj", "down_proj")
ACTIVATIONS = ("relu", "shifted_relu", "relu2")


class AdapterMismatchError(IOAwareError, ValueError):
    """The adapter was trained on another base file, or its shapes do not fit the model."""


@dataclass
class Adapter:
    """A loaded relufy adapter. `activation(gate)` is the FFN gate's activation: relu(g - shift) for "relu" (shift 0)
    and "shifted_relu", relu(g)^2 for "relu2". `deltas[(layer, proj)] = (A, B)`; the merged weight is W + B @ A."""

    activation: str
    shift: float
    rank: int
    base_sha256: str
    deltas: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]
    meta: dict[str, str] = field(default_factory=dict)
    path: Path | None = None

    def act(self, gate: torch.Tensor) -> torch.Tensor:
        """The gate activation this adapter was trained with (exact zeros where the neuron is off): the model's own
        `gate_activation`, so training and the runtime share one definition."""
        from ..llm.model import gate_activation

        return gate_activation(self.activation, self.shift)(gate)

    def merged(self, layer: int, proj: str, weight: torch.Tensor) -> torch.Tensor:
        """`weight` (out, in) with this adapter's correction added, in weight's dtype (computed in fp32)."""
        d = self.deltas.get((layer, proj))
        if d is None:
            return weight
        A, B = d
        if (B.shape[0], A.shape[1]) != tuple(weight.shape):
            raise AdapterMismatchError(f"adapter {self.path}: layer {layer} {proj} is {B.shape[0]}x{A.shape[1]}, "
                                       f"the model's is {weight.shape[0]}x{weight.shape[1]}")
        A, B = A.to(weight.device, torch.float32), B.to(weight.device, torch.float32)  # the file loads on the CPU
        return (weight.float() + B @ A).to(weight.dtype)


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _key(layer: int, proj: str, part: str) -> str:
    return f"model.layers.{layer}.mlp.{proj}.lora_{part}"


def save_adapter(path: str | Path, deltas: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]], *,
                 activation: str, base_sha256: str, shift: float = 0.0, meta: dict[str, str] | None = None,
                 dtype: torch.dtype = torch.float16) -> Path:
    """Write an adapter atomically (temp file in the same folder, then rename). `meta` should hold the command,
    seed and versions that made it; values must be strings."""
    from safetensors.torch import save_file
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    ranks = {A.shape[0] for A, _ in deltas.values()}
    if len(ranks) > 1:
        raise ValueError(f"all LoRA pairs must share one rank, got {sorted(ranks)}")
    tensors = {}
    for (layer, proj), (A, B) in deltas.items():
        if proj not in PROJECTIONS or A.shape[0] != B.shape[1]:
            raise ValueError(f"bad LoRA pair {layer}/{proj}: A {tuple(A.shape)}, B {tuple(B.shape)}")
        tensors[_key(layer, proj, "A")] = A.detach().to("cpu", dtype).contiguous()
        tensors[_key(layer, proj, "B")] = B.detach().to("cpu", dtype).contiguous()
    header = {"format": FORMAT, "activation": activation, "shift": repr(float(shift)),
              "rank": str(ranks.pop() if ranks else 0), "base_sha256": base_sha256, **(meta or {})}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_file(tensors, str(tmp), metadata={k: str(v) for k, v in header.items()})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_adapter(path: str | Path, base_path: str | Path | None = None) -> Adapter:
    """Read an adapter; with `base_path`, check that it was trained on exactly that file (SHA-256) and say what to
    do when it was not."""
    from safetensors import safe_open
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no relufy adapter at {path}")
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
        if meta.get("format") != FORMAT:
            raise AdapterMismatchError(f"{path} is not a relufy adapter (format {meta.get('format')!r}, "
                                       f"expected {FORMAT!r})")
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if base_path is not None:
        got = file_sha256(base_path)
        if got != meta["base_sha256"]:
            raise AdapterMismatchError(
                f"adapter {path} was trained on a base file with SHA-256 {meta['base_sha256'][:12]}…, but "
                f"{base_path} has {got[:12]}…; pass the model it was made from, retrain it with `ioaware relufy` "
                f"(its command is in the adapter's metadata), or run without it (--no-relufy)")
    deltas = {}
    for k, A in tensors.items():
        if not k.endswith(".lora_A"):
            continue
        parts = k.split(".")  # model.layers.{i}.mlp.{proj}.lora_A
        deltas[(int(parts[2]), parts[4])] = (A, tensors[k[:-1] + "B"])
    return Adapter(meta["activation"], float(meta.get("shift", "0")), int(meta.get("rank", "0")),
                   meta["base_sha256"], deltas, {k: v for k, v in meta.items()}, path)


def describe(adapter: Adapter) -> str:
    """One line for logs: activation, rank, layers changed, where it came from."""
    layers = sorted({i for i, _ in adapter.deltas})
    return (f"relufy adapter {adapter.path.name if adapter.path else ''}: {adapter.activation}"
            f"{f' (shift {adapter.shift:g})' if adapter.shift else ''}, rank {adapter.rank}, "
            f"{len(layers)} layers; {json.dumps({k: adapter.meta[k] for k in ('seed',) if k in adapter.meta})}")
