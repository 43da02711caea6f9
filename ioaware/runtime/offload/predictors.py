"""Low-rank neuron predictors (LLM in a flash, §3.1): guess the active set S from the FFN input, before any read.

S is known only after the gate is computed, which needs the gate rows; a predictor guesses it cheaply. Trained on
the model's own FFN inputs, cut tuned for recall; cached per model fingerprint, sparsity and rank.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ...files import tmp_name
from ..llm.model import FeedForward, Transformer
from . import gate_q4 as gate_copy  # the gate copy's math and file format (gate_copy.py: why)
from .activations import collect_ffn_inputs, progress_bar
from .gate_q4 import GATE_COPY
from .sparse_ffn import ffn_act, ffn_bundles, gate_weight, is_relu_family
from .text import load_text, token_batches
from .thresholds import thresholds_from_inputs

FORMAT_VERSION = 1


@dataclass
class Predictors:
    """Per layer a low-rank head, A (r, dim), B (ffn, r), per-neuron w and b (ffn,):
    - activation 'none' / 'relu' (the paper's): logit = B act(A x) + b;
    - activation 'gate' (for SwiGLU, the default): logit = w * |silu(B A x)| + b. The label |silu(gate x)| > t
      is not monotone in gate x (silu dips to -0.28 for negative inputs, so both large positive and moderately
      negative gates are active), which no sigmoid of a linear function can express; here B A x is a rank-r
      approximation of the gate itself and |silu| gives the label its true shape.
    Neuron i is predicted active when sigmoid(logit_i) > tau_l, stored as the logit cut_l = logit(tau_l).
    `thresholds` are the gate thresholds they were trained for: a predictor is meaningless for another one."""

    A: list[torch.Tensor]
    B: list[torch.Tensor]
    b: list[torch.Tensor]
    w: list[torch.Tensor]
    cut: torch.Tensor  # (L,) decision thresholds on the logit (sigmoid(logit) > sigmoid(cut)); exact in fp32
    thresholds: torch.Tensor  # (L,) the gate thresholds t_l
    activation: str = "gate"  # "gate" | "relu" | "none" | GATE_COPY (a relufied model's: gate_copy.py)
    meta: dict | None = None  # training report: recall/precision on held-out activations per layer

    @property
    def tau(self) -> torch.Tensor:
        """(L,) the decision thresholds as probabilities."""
        return torch.sigmoid(self.cut.double()).float()

    @property
    def rank(self) -> int:
        if self.activation == GATE_COPY:  # the gate itself: full rank
            return int((self.meta or {}).get("rank", 0))
        return self.A[0].shape[0]

    @property
    def n_layers(self) -> int:
        return len(self.A)

    def n_params(self) -> int:
        return sum(t.numel() for ts in (self.A, self.B, self.b, self.w) for t in ts)

    def nbytes(self) -> int:
        """Bytes the per-layer tensors hold (what a run keeps resident; the gate copy's are not one dtype)."""
        return sum(t.numel() * t.element_size() for ts in (self.A, self.B, self.b, self.w) for t in ts)

    def logits(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """x: (..., dim) -> (..., ffn) fp32 logits."""
        A = self.A[layer]
        if self.activation == GATE_COPY:
            return gate_copy.logits(x, A, self.B[layer], self.w[layer], self.b[layer])
        return _head(x.to(A.dtype), A, self.B[layer], self.b[layer], self.w[layer], self.activation).float()

    def predict_mask(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """(..., dim) -> (..., ffn) bool: which neurons each row of x is predicted to need."""
        return self.logits(layer, x) > self.cut[layer]

    def predict(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """x: (T, dim) or (dim,) -> sorted LongTensor of neuron ids predicted for any row (the set to load)."""
        m = self.predict_mask(layer, x.reshape(-1, x.shape[-1])).any(0)
        return m.nonzero().flatten()

    def to(self, device=None, dtype=None) -> Predictors:
        if self.activation == GATE_COPY:  # packed for the int4 kernel (see gate_copy.py); the bias stays fp32
            run = [gate_copy.pack(A.to(device), B.to(device), w.to(device), dtype)
                   for A, B, w in zip(self.A, self.B, self.w)]
            # owned copies throughout: a tensor left a view of the loaded file keeps its whole mapping (the 4-bit
            # codes too, ~33 MB for SmolLM2) in the run's resident set
            return Predictors([r[0] for r in run], [r[1] for r in run], [b.to(device, copy=True) for b in self.b],
                              [r[2] for r in run], self.cut.to(device), self.thresholds, self.activation, self.meta)

        def cv(ts):
            return [t.to(device=device, dtype=dtype) for t in ts]

        return Predictors(cv(self.A), cv(self.B), cv(self.b), cv(self.w), self.cut.to(device), self.thresholds,
                          self.activation, self.meta)

    def save(self, path: str | Path, fingerprint: str) -> None:
        """safetensors file; `fingerprint` (e.g. `model_fingerprint(model)`) is checked by `load`. Written to a
        temporary name and renamed, so an interrupted save leaves no file that looks valid."""
        from safetensors.torch import save_file

        path = Path(path)
        if self.activation == GATE_COPY and any(gate_copy.is_packed(A, B) for A, B in zip(self.A, self.B)):
            raise ValueError("save the gate-copy predictor as train_gate_copy returns it, not packed by .to()")
        tensors = {"cut": self.cut.float().contiguous(), "thresholds": self.thresholds.float().contiguous()}
        for i in range(self.n_layers):
            A, B, w = self.A[i], self.B[i], self.w[i]
            if self.activation == GATE_COPY:  # 4-bit codes two a byte, bf16 scales and zeros (as the kernel holds)
                A, B, w = gate_copy.file_tensors(A, B, w)
            tensors[f"{i}.A"] = (A if A.dtype == torch.uint8 else A.float()).contiguous()
            tensors[f"{i}.B"] = (B if B.dtype == torch.bfloat16 else B.float()).contiguous()
            tensors[f"{i}.b"] = self.b[i].float().contiguous()
            tensors[f"{i}.w"] = (w if w.dtype == torch.bfloat16 else w.float()).contiguous()
        meta = {"format": "ioaware-predictors", "version": str(FORMAT_VERSION), "fingerprint": fingerprint,
                "activation": self.activation, "n_layers": str(self.n_layers), "rank": str(self.rank),
                "report": json.dumps(self.meta or {})}
        if self.activation == GATE_COPY:
            meta["gate_codes"] = gate_copy.FILE_CODES
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = tmp_name(path)
        try:
            save_file(tensors, str(tmp), metadata=meta)
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)

    @classmethod
    def load(cls, path: str | Path, expect_fingerprint: str | None, device="cpu") -> Predictors:
        """Load a file written by `save`. Raises ValueError if it was trained for another model
        (fingerprint mismatch) or is not a predictor file of this version. A gate copy comes back in its run form
        (gate_copy.py), owning its memory: the file is unmapped when this returns."""
        from safetensors import safe_open

        path = Path(path)
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            meta = f.metadata() or {}
            if meta.get("format") != "ioaware-predictors":
                raise ValueError(f"{path} is not an ioaware predictor file (metadata format={meta.get('format')!r})")
            if meta.get("version") != str(FORMAT_VERSION):
                raise ValueError(f"{path} has predictor format version {meta.get('version')}, this ioaware reads "
                                 f"{FORMAT_VERSION}; delete the cached file to retrain")
            if expect_fingerprint is not None and meta.get("fingerprint") != expect_fingerprint:
                raise ValueError(f"{path} was trained for model {meta.get('fingerprint')!r}, not for this model "
                                 f"({expect_fingerprint!r}); retrain the predictors for this model")
            L = int(meta["n_layers"])
            g = f.get_tensor
            if meta["activation"] == GATE_COPY:  # packed layer by layer: one layer's codes unpacked at a time
                if meta.get("gate_codes") != gate_copy.FILE_CODES:
                    raise ValueError(f"{path} holds gate-copy codes as {meta.get('gate_codes')!r}, this ioaware reads "
                                     f"{gate_copy.FILE_CODES!r}; delete the cached file to retrain")
                run = [gate_copy.from_file(g(f"{i}.A"), g(f"{i}.B"), g(f"{i}.w")) for i in range(L)]
                return cls([r[0] for r in run], [r[1] for r in run], [g(f"{i}.b").clone() for i in range(L)],
                           [r[2] for r in run], g("cut").clone(), g("thresholds").clone(), GATE_COPY,
                           json.loads(meta.get("report", "{}")))
            per_layer = [[g(f"{i}.{k}") for i in range(L)] for k in ("A", "B", "b", "w")]
            return cls(*per_layer, g("cut"), g("thresholds"), meta["activation"], json.loads(meta.get("report", "{}")))


def _head(x: torch.Tensor, A, B, b, w, activation: str) -> torch.Tensor:
    """The predictor's logits (..., ffn) for inputs x (..., dim); see `Predictors`."""
    z = x @ A.T  # (..., r)
    if activation == "relu":
        z = torch.relu(z)
    z = z @ B.T  # (..., ffn)
    if activation == "gate":
        return w * F.silu(z).abs() + b
    return z + b


def model_fingerprint(model: Transformer) -> str:
    """A short hash of the model's shape and FFN weights: predictors and thresholds are valid only for it."""
    h = hashlib.sha256(json.dumps({k: str(v) for k, v in sorted(vars(model.args).items())}).encode())
    for layer in model.layers:  # a strided sample of every FFN: cheap, and any re-quantisation changes it
        b = ffn_bundles(layer.feed_forward).float()
        h.update(b.flatten()[:: 997].contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _svd_init(ffn: FeedForward, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    # The gate pre-activation is the best linear predictor of the gate's sign and size; its rank-r SVD
    # (A = S^1/2 V^T, B = U S^1/2) is where training starts, so a few epochs are enough.
    W = gate_weight(ffn)  # (H, dim)
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    s = S[:rank].sqrt()
    return s[:, None] * Vh[:rank], U[:, :rank] * s[None, :]


def default_head(ffn_act_name: str) -> str:
    """The predictor head for a model's FFN activation: 'gate' for SwiGLU (its label is not monotone in the gate);
    for a relufied model, whose label act(gate x) > 0 is gate x > shift, a linear head: 'none' (see RELU_HEAD)."""
    return RELU_HEAD if is_relu_family(ffn_act_name) else "gate"


# The head for ReLU models. The label gate x > shift is a half-space, so the rank-r SVD of the gate (where training
# starts) is already the right shape and 'none' keeps it; the paper's 'relu' head, B relu(A x), cuts that start in
# half (relu drops the negative half of A x). Measured on SmolLM2 with ReLU swapped in, rank 64, 95% recall: 'none'
# predicts 66.7% of the neurons, 'relu' 70.8%, with 35.3% active (benchmarks/results/relu-predictor-head-smollm2-cpu-
# 2026-12-03.json, from dev/offload/relu_predictor_head.py).
RELU_HEAD = "none"


def train_predictors(model: Transformer, token_batches: Iterable[torch.Tensor], thresholds: torch.Tensor,
                     rank: int = 64, epochs: int = 4, activation: str | None = None, target_recall: float = 0.95,
                     pos_weight: float = 4.0, lr: float = 2e-3, batch_size: int = 512, holdout: float = 0.15,
                     max_tokens: int | None = 12_000, seed: int = 0, progress: bool = True,
                     inputs: list[torch.Tensor] | None = None) -> Predictors:
    """Train one low-rank predictor per layer on the model's own FFN inputs; labels are |act(gate x)| > t_l (act:
    the FFN's gate activation; for a relufied model t_l = 0, so the label is act(gate x) > 0, an exact zero or not).
    activation: the head (see `Predictors`); None picks `default_head` for the model's FFN activation.

    Loss: BCE with `pos_weight` on active neurons (missing a needed neuron costs quality, loading a spare one
    only costs I/O). After training, each layer's decision threshold is set on the `holdout` fraction of
    tokens (never trained on) to the largest value whose recall is >= target_recall there.
    `inputs`: FFN inputs from `collect_ffn_inputs`, to reuse one collection for several thresholds."""
    if activation is None:
        activation = default_head(getattr(model.args, "ffn_act", "silu"))
    if activation not in ("gate", "relu", "none"):
        raise ValueError(f"activation must be 'gate', 'relu' or 'none', got {activation!r}")
    torch.manual_seed(seed)
    if inputs is None:
        inputs = collect_ffn_inputs(model, token_batches, max_tokens=max_tokens, progress=progress)
    L = model.args.n_layers
    n = inputs[0].shape[0]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_hold = max(1, int(n * holdout))
    hold_idx, train_idx = perm[:n_hold], perm[n_hold:]
    As, Bs, bs, ws, cuts, report = [], [], [], [], torch.empty(L), []
    steps_per_epoch = math.ceil(len(train_idx) / batch_size)
    prog, task = progress_bar("training predictors", L * epochs * steps_per_epoch, progress)
    with prog:
        for i in range(L):
            ffn = model.layers[i].feed_forward
            W = gate_weight(ffn)
            x_all = inputs[i].float()
            with torch.no_grad():
                y_all = ffn_act(ffn)(x_all @ W.T).abs() > float(thresholds[i])  # (N, H) labels
            A0, B0 = _svd_init(ffn, rank)
            A, B = nn.Parameter(A0.clone()), nn.Parameter(B0.clone())
            H, t = W.shape[0], max(float(thresholds[i]), 1e-3)
            if is_relu_family(getattr(model.args, "ffn_act", "silu")):  # active iff gate > shift (relu2: shift 0)
                t = max(float(model.args.ffn_act_shift) if model.args.ffn_act != "relu2" else 0.0, 1e-3)
            if activation == "gate":  # start at logit = (|silu(z)| - t) * 8/t: the SVD gate's own decision
                w, b = nn.Parameter(torch.full((H,), 8 / t)), nn.Parameter(torch.full((H,), -8.0))
            else:  # bias at -t puts logit 0 near the gate threshold rather than at gate = 0
                w, b = nn.Parameter(torch.ones(H), requires_grad=False), nn.Parameter(torch.full((H,), -t))
            params = [A, B, b] + ([w] if activation == "gate" else [])
            opt = torch.optim.Adam([{"params": [A, B], "lr": lr}, {"params": params[2:], "lr": lr * 10}])
            pw = torch.tensor(pos_weight)
            for ep in range(epochs):
                order = train_idx[torch.randperm(len(train_idx))]
                total = 0.0
                for s in range(steps_per_epoch):
                    idx = order[s * batch_size:(s + 1) * batch_size]
                    logit = _head(x_all[idx], A, B, b, w, activation)
                    loss = F.binary_cross_entropy_with_logits(logit, y_all[idx].float(), pos_weight=pw)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    total += loss.item()
                    prog.update(task, advance=1, info=f"layer {i}/{L} epoch {ep + 1}/{epochs} "
                                                      f"loss {total / (s + 1):.4f}")
            with torch.no_grad():
                logit = _head(x_all[hold_idx], A, B, b, w, activation)  # (n_hold, H)
                y = y_all[hold_idx]
                cuts[i], stats = _tune_cut(logit, y, target_recall)
            report.append(stats)
            As.append(A.detach().clone())
            Bs.append(B.detach().clone())
            bs.append(b.detach().clone())
            ws.append(w.detach().clone())
    meta = {"rank": rank, "epochs": epochs, "activation": activation, "pos_weight": pos_weight,
            "target_recall": target_recall, "train_tokens": len(train_idx), "holdout_tokens": n_hold,
            "layers": report}
    return Predictors(As, Bs, bs, ws, cuts, thresholds.clone().float(), activation, meta)


def _tune_cut(logit: torch.Tensor, y: torch.Tensor, target_recall: float) -> tuple[float, dict]:
    """The largest logit threshold with recall >= target on (logit, y): the (1 - target) quantile of the
    logits of the true positives, one fp32 step below it so that neuron counts as predicted."""
    pos = logit[y]
    if pos.numel() == 0:
        cut = float(logit.max()) + 1.0  # nothing is ever active: predict nothing
    else:
        k = int(math.floor((1 - target_recall) * pos.numel()))  # this many positives may be missed
        v = pos.float().sort().values[k]
        cut = float(torch.nextafter(v, torch.tensor(-math.inf)))  # one fp32 step below, so v itself counts
    pred = logit > cut
    tp = int((pred & y).sum())
    stats = {"recall": tp / max(int(y.sum()), 1), "precision": tp / max(int(pred.sum()), 1),
             "predicted_frac": float(pred.float().mean()), "active_frac": float(y.float().mean())}
    return cut, stats


def predictor_path(fingerprint: str, sparsity: float, rank: int) -> Path:
    """Where trained predictors for a model are cached: IOAWARE_CACHE_DIR/predictors/<fp>-s<sparsity>-r<rank>."""
    from ...env import settings

    return settings().cache_dir / "predictors" / f"{fingerprint}-s{sparsity:.2f}-r{rank}.safetensors"


def ensure_predictors(model: Transformer, tokenizer, sparsity: float = 0.5, rank: int = 64,
                      progress: bool = True) -> Predictors:
    """Load this model's predictors (and thresholds, `p.thresholds`) from the cache, or calibrate on the shipped
    text, train them and cache them (about a minute for SmolLM2-135M on 2 cores)."""
    fp = model_fingerprint(model)
    path = predictor_path(fp, sparsity, rank)
    if path.is_file():
        return Predictors.load(path, fp, device=model.norm.weight.device)
    bs = token_batches(tokenizer, load_text("calibration"))
    inputs = collect_ffn_inputs(model, bs, max_tokens=12_000, progress=progress)
    t = thresholds_from_inputs(model, inputs, sparsity)
    p = train_predictors(model, bs, t, rank=rank, inputs=inputs, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    p.save(path, fp)
    return p.to(model.norm.weight.device)
