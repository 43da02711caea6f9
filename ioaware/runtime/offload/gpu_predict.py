"""The relufied model's predictor (gate_copy.py: a 4-bit copy of the gate, a per-layer cut) on a GPU.

`Predictors.load` returns the gate copy in its CPU run form (the int4 CPU kernel's packing), which no CUDA kernel
reads. Here the file form stays on the device as it is stored, two codes a byte plus bf16 scale and zero per
group of 32 (~0.53 bytes a gate weight: 16 MiB for SmolLM2's 30 layers, where a bf16 gate would take 53 MiB,
more than half of a 50% budget), and each call unpacks one layer's gate (H x dim, a few MiB, transient) and
multiplies. Same decision rule as on CPU: neuron i is predicted on when (Wq x)_i + b_i > cut_l, for any row.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from . import gate_copy
from .predictors import FORMAT_VERSION


class GpuGatePredictor:
    def __init__(self, codes, scale, zero, bias, cut, dtype, meta: dict | None = None):
        self.codes, self.scale, self.zero, self.bias, self.cut = codes, scale, zero, bias, cut
        self.dtype, self.meta = dtype, meta or {}

    @classmethod
    def load(cls, path: str | Path, expect_fingerprint: str | None, device, dtype=torch.bfloat16):
        """A predictor file of the gate copy (session.predictor_file) onto `device`; the same checks as
        `Predictors.load` (format, version, fingerprint, code layout)."""
        from safetensors import safe_open

        path = Path(path)
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            if meta.get("format") != "ioaware-predictors" or meta.get("version") != str(FORMAT_VERSION):
                raise ValueError(f"{path} is not an ioaware predictor file of version {FORMAT_VERSION}; delete it to "
                                 "retrain")
            if expect_fingerprint is not None and meta.get("fingerprint") != expect_fingerprint:
                raise ValueError(f"{path} was trained for another model; retrain the predictors for this model")
            if meta.get("activation") != gate_copy.GATE_COPY:
                raise ValueError(f"{path} holds a {meta.get('activation')!r} predictor; the GPU sparse path reads the "
                                 f"relufied model's gate copy ({gate_copy.GATE_COPY})")
            L = int(meta["n_layers"])
            g = f.get_tensor
            codes, scale, zero = [], [], []
            for i in range(L):
                A = g(f"{i}.A")
                if A.is_floating_point():  # dim not a multiple of 32: the gate itself
                    codes.append(A.to(device, dtype))
                    scale.append(None)
                    zero.append(None)
                    continue
                if meta.get("gate_codes") != gate_copy.FILE_CODES:
                    raise ValueError(f"{path} holds gate codes as {meta.get('gate_codes')!r}, expected "
                                     f"{gate_copy.FILE_CODES!r}; delete it to retrain")
                codes.append(A.to(device, copy=True))
                scale.append(g(f"{i}.B").to(device, copy=True))
                zero.append(g(f"{i}.w").to(device, copy=True))
            bias = [g(f"{i}.b").float().to(device, copy=True) for i in range(L)]
            cut = g("cut").float().to(device, copy=True)
        return cls(codes, scale, zero, bias, cut, dtype, json.loads(meta.get("report", "{}")))

    def gate(self, layer: int) -> torch.Tensor:
        """(H, dim) dequantised gate copy of `layer`, in the run dtype."""
        A = self.codes[layer]
        if self.scale[layer] is None:
            return A
        q = torch.stack([A & 15, A >> 4], dim=-1).reshape(A.shape[0], -1)  # (H, dim) codes
        return gate_copy.dequantize(q, self.scale[layer].float(), self.zero[layer].float()).to(self.dtype)

    def logits(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """x (T, dim) -> (T, H) fp32."""
        return (x.to(self.dtype) @ self.gate(layer).T).float() + self.bias[layer]

    def predict(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """x (T, dim) -> sorted ids of the neurons predicted on for any row."""
        return (self.logits(layer, x) > self.cut[layer]).any(0).nonzero().flatten()

    def to(self, device=None, dtype=None) -> GpuGatePredictor:
        mv = (lambda ts: [t if t is None else t.to(device) for t in ts])
        return GpuGatePredictor(mv(self.codes), mv(self.scale), mv(self.zero), mv(self.bias), self.cut.to(device),
                                dtype or self.dtype, self.meta)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for ts in (self.codes, self.scale, self.zero, self.bias)
                   for t in ts if t is not None) + self.cut.numel() * 4


def gpu_gate_bytes_estimate(a, elem: int = 2) -> int:
    """Device bytes of GpuGatePredictor for ModelArgs `a`, before the file exists (the budget check)."""
    H, d, L = a.hidden_dim, a.dim, a.n_layers
    g = gate_copy.GROUP
    per = H * d // 2 + 2 * H * (d // g) * 2 if d % g == 0 else H * d * elem
    return L * (per + H * 4) + L * 4


def load_or_train(model_path, relufy, sparsity: float, device, dtype=torch.bfloat16, progress: bool = True,
                  say=print) -> GpuGatePredictor:
    """The relufied model's gate-copy predictor on `device`: the CPU path's cached file (session.predictor_file),
    trained once in a child process when missing, as `open_streamed` does."""
    from ...env import settings
    from .session import _train_and_save, in_child, predictor_file
    from .store import model_fingerprint

    fp = model_fingerprint(model_path)
    if relufy is not None:
        from ..relufy.apply import relufied_fingerprint

        fp = relufied_fingerprint(fp, relufy)
    path = predictor_file(settings().cache_dir, fp, sparsity, True)
    if not path.exists():
        if progress:
            say("first run for this model: training the gate-copy predictor (1-4 min on 2 cores; cached)")
        in_child(_train_and_save, model_path, sparsity, path, fp, progress, None, relufy)
    return GpuGatePredictor.load(path, fp, device, dtype)
