"""Activation sparsity for SwiGLU FFNs: calibrated gate thresholds (CATS/TEAL-style), low-rank neuron predictors
(LLM in a flash, §3.1), the exact sparse FFN over loaded neuron bundles, and a quality report.

SwiGLU, y = down(silu(gate x) * up x), has no exact zeros, but most |silu(gate_i x)| are small. A per-layer
threshold t_l, the `sparsity` quantile of |silu(gate x)| on calibration text, zeroes that fraction of neurons:
    y = down[:, S] (silu(gate[S] x) * up[S] x),   S = {i : |silu(gate_i x)| > t_l}.
A neuron outside S needs none of its three weight vectors, so with row-column bundling (neuron i = [gate row i,
up row i, down column i]) a token only has to read the bundles in S. S is known only after the gate is computed,
which needs the gate rows; a predictor guesses S from the FFN input cheaply, before any read. `sparse_ffn` then
applies the threshold on the real gate values, so a wrongly predicted neuron costs I/O but never changes y.

Neuron cache and windowing live in `neuron_cache.py`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import types
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .model import FeedForward, Transformer

DATA_DIR = Path(__file__).resolve().parent / "data"
FORMAT_VERSION = 1


# ---------------------------------------------------------------------------------------------------------------
# the math


def sparse_ffn(x: torch.Tensor, bundles: torch.Tensor, threshold: float) -> torch.Tensor:
    """x: (T, hidden); bundles: (n, 3, hidden) = [gate row, up row, down column] of n loaded neurons -> (T, hidden).

    Exact for the loaded neurons: the threshold is applied to the actual |silu(gate x)|, so a neuron loaded by
    mistake contributes nothing, and y equals the thresholded dense FFN whenever the loaded set contains the
    active set. Accumulates in fp32 and returns x's dtype."""
    if x.dim() != 2 or bundles.dim() != 3 or bundles.shape[1] != 3 or bundles.shape[2] != x.shape[1]:
        raise ValueError(f"sparse_ffn wants x (T, hidden) and bundles (n, 3, hidden); got {tuple(x.shape)} and "
                         f"{tuple(bundles.shape)}")
    xf, b = x.float(), bundles.float()
    gate = xf @ b[:, 0].T  # (T, n)
    up = xf @ b[:, 1].T  # (T, n)
    h = F.silu(gate)
    h = torch.where(h.abs() > threshold, h * up, 0.0)  # (T, n)
    return (h @ b[:, 2]).to(x.dtype)  # (T, hidden)


def ffn_bundles(ffn: FeedForward, ids: torch.Tensor | None = None) -> torch.Tensor:
    """(n, 3, hidden) bundles of a dense FeedForward for neuron `ids` (all if None): what a flash store holds."""
    H = ffn.hidden
    w = ffn.w13.weight  # (2H, dim): [gate; up]
    gate, up, down = w[:H], w[H:], ffn.w2.weight.T  # each (H, dim)
    b = torch.stack([gate, up, down], dim=1)  # (H, 3, dim)
    return b if ids is None else b[ids]


def _gate_up(ffn: FeedForward, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # through the module's own projection, so packed 4-bit weights work as well as dense ones
    return ffn.w13(x).split(ffn.hidden, dim=-1)


def gate_activity(ffn: FeedForward, x: torch.Tensor) -> torch.Tensor:
    """|silu(gate x)|, (..., ffn) fp32: the quantity the threshold is applied to."""
    return F.silu(_gate_up(ffn, x)[0].float()).abs()


@contextlib.contextmanager
def _sdpa_attention(model: Transformer):
    # Calibration only needs activations; SDPA is the same math as flash_attn and much faster on CPU (README).
    old = model.attn_impl
    model.set_attention("sdpa")
    try:
        yield
    finally:
        model.set_attention(old)


def _run(model: Transformer, tokens: torch.Tensor) -> torch.Tensor:
    """Full-sequence forward of (B, T) tokens from position 0 -> logits (B, T, vocab)."""
    tokens = tokens if tokens.dim() == 2 else tokens[None]
    tokens = tokens.to(model.norm.weight.device)
    if model.cache_len < tokens.shape[1]:
        model.setup_cache(tokens.shape[0], tokens.shape[1])
    elif model.layers[0].attention.cache.k.shape[0] != tokens.shape[0]:
        model.setup_cache(tokens.shape[0], model.cache_len)
    return model(tokens, 0)


def _progress(description: str, total: int, enabled: bool = True):
    from rich import progress as rp

    prog = rp.Progress(rp.TextColumn("[bold]{task.description}"), rp.BarColumn(), rp.MofNCompleteColumn(),
                       rp.TextColumn("{task.fields[info]}"), rp.TimeElapsedColumn(), rp.TimeRemainingColumn(),
                       disable=not enabled, transient=False)
    return prog, prog.add_task(description, total=total, info="")


@contextlib.contextmanager
def _ffn_input_hooks(model: Transformer, fn) -> Iterator[None]:
    """Call fn(layer, x) with each FFN's input x (B, T, dim) during forwards inside the block."""
    handles = [layer.feed_forward.register_forward_pre_hook(lambda m, args, i=i: fn(i, args[0]))
               for i, layer in enumerate(model.layers)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


# ---------------------------------------------------------------------------------------------------------------
# 1. thresholds


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

    prog, task = _progress("calibrating thresholds", len(batches), progress)
    with prog, _sdpa_attention(model), _ffn_input_hooks(model, collect):
        for b in batches:
            _run(model, b)
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
    gen = torch.Generator().manual_seed(seed)
    vals = []
    for i in range(L):
        a = F.silu(inputs[i].float() @ _gate_weight(model.layers[i].feed_forward).T).abs().flatten()
        if a.numel() > max_samples:
            a = a[torch.randint(0, a.numel(), (max_samples,), generator=gen)]
        vals.append(a)
    return _quantiles(vals, sp)


@contextlib.contextmanager
def sparse_model(model: Transformer, thresholds: torch.Tensor, predictors: Predictors | None = None,
                 record: dict | None = None, window: int = 0) -> Iterator[Transformer]:
    """Run `model` with thresholded FFNs (and, with `predictors`, neurons outside the predicted set dropped too),
    for evaluation. Dense masked math: down(silu(g) * up * mask) equals down[:, S](...) for S = mask.

    record: if a dict is given, per layer it accumulates counts over all tokens run: 'active' (|silu| > t),
    'predicted', 'used' (active and predicted), 'tokens', and for windowing (see `_window_counts`).
    window: with predictors, a neuron predicted for any of the previous `window` tokens of the sequence counts as
    loaded too (it is still in the neuron cache), as in a streamed run, where sparse_ffn sees the whole cache."""
    t = thresholds.float().tolist()
    if len(t) != model.args.n_layers:
        raise ValueError(f"{len(t)} thresholds for a model of {model.args.n_layers} layers")
    if record is not None:
        record.setdefault("layers", [dict() for _ in model.layers])

    def make_forward(i: int, ffn: FeedForward):
        def forward(self, x):  # x: (B, T, dim)
            gate, up = _gate_up(self, x)
            h = F.silu(gate)
            active = h.abs() > t[i]  # (B, T, H)
            mask = active
            pred = None
            if predictors is not None:
                pred = predictors.predict_mask(i, x)  # (B, T, H)
                loaded = pred if window == 0 else pred | _in_window(pred, window)
                mask = active & loaded
            if record is not None:
                _record(record["layers"][i], active, pred, mask)
            return self.w2(torch.where(mask, h * up, 0.0).to(x.dtype))

        return types.MethodType(forward, ffn)

    ffns = [layer.feed_forward for layer in model.layers]
    for i, ffn in enumerate(ffns):
        ffn.forward = make_forward(i, ffn)  # instance attribute shadows the class method; removed below
    try:
        yield model
    finally:
        for ffn in ffns:
            del ffn.forward


def _add(d: dict, key: str, v: float) -> None:
    d[key] = d.get(key, 0.0) + float(v)


def _record(d: dict, active: torch.Tensor, pred: torch.Tensor | None, used: torch.Tensor) -> None:
    n_tok = active.shape[0] * active.shape[1]
    _add(d, "tokens", n_tok)
    _add(d, "active", active.sum())
    _add(d, "used", used.sum())
    if pred is None:
        return
    _add(d, "predicted", pred.sum())
    _add(d, "true_pos", (active & pred).sum())
    for k, (loaded, hits, resident) in _window_counts(pred).items():
        _add(d, f"window{k}_loaded", loaded)
        _add(d, f"window{k}_hits", hits)
        _add(d, f"window{k}_resident", resident)


WINDOWS = (1, 2, 3, 5, 8)


def _in_window(pred: torch.Tensor, k: int) -> torch.Tensor:
    """pred (B, T, H) bool -> (B, T, H): neuron used by one of the k tokens before t in the sequence."""
    cs = F.pad(pred.to(torch.int32).cumsum(1), (0, 0, 1, 0))  # (B, T+1, H): cs[:, t] = uses among tokens < t
    T = pred.shape[1]
    lo = (torch.arange(T, device=pred.device) - k).clamp_min(0)
    return (cs[:, :T] - cs[:, lo]) > 0


def _window_counts(pred: torch.Tensor, windows: Sequence[int] = WINDOWS) -> dict[int, tuple[int, int, int]]:
    """pred: (B, T, H) bool, the neurons each token needs, in sequence order. With a window of k, neuron i is
    resident for token t if any of tokens t-k..t-1 used it; returns {k: (neurons loaded from flash, hits,
    neurons resident while computing t: the window plus the new ones, what the cache must hold)}."""
    out = {}
    for k in windows:
        resident = _in_window(pred, k)  # (B, T, H): used by one of the k previous tokens
        hits = int((pred & resident).sum())
        out[k] = (int(pred.sum()) - hits, hits, int((pred | resident).sum()))
    return out


# ---------------------------------------------------------------------------------------------------------------
# 2. predictors


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
    activation: str = "gate"  # "gate" | "relu" | "none"
    meta: dict | None = None  # training report: recall/precision on held-out activations per layer

    @property
    def tau(self) -> torch.Tensor:
        """(L,) the decision thresholds as probabilities."""
        return torch.sigmoid(self.cut.double()).float()

    @property
    def rank(self) -> int:
        return self.A[0].shape[0]

    @property
    def n_layers(self) -> int:
        return len(self.A)

    def n_params(self) -> int:
        return sum(t.numel() for ts in (self.A, self.B, self.b, self.w) for t in ts)

    def logits(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """x: (..., dim) -> (..., ffn) fp32 logits."""
        A = self.A[layer]
        return _head(x.to(A.dtype), A, self.B[layer], self.b[layer], self.w[layer], self.activation).float()

    def predict_mask(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """(..., dim) -> (..., ffn) bool: which neurons each row of x is predicted to need."""
        return self.logits(layer, x) > self.cut[layer]

    def predict(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """x: (T, dim) or (dim,) -> sorted LongTensor of neuron ids predicted for any row (the set to load)."""
        m = self.predict_mask(layer, x.reshape(-1, x.shape[-1])).any(0)
        return m.nonzero().flatten()

    def to(self, device=None, dtype=None) -> Predictors:
        def cv(ts):
            return [t.to(device=device, dtype=dtype) for t in ts]

        return Predictors(cv(self.A), cv(self.B), cv(self.b), cv(self.w), self.cut.to(device), self.thresholds,
                          self.activation, self.meta)

    def save(self, path: str | Path, fingerprint: str) -> None:
        """safetensors file; `fingerprint` (e.g. `model_fingerprint(model)`) is checked by `load`. Written to a
        temporary name and renamed, so an interrupted save leaves no file that looks valid."""
        from safetensors.torch import save_file

        path = Path(path)
        tensors = {"cut": self.cut.float().contiguous(), "thresholds": self.thresholds.float().contiguous()}
        for i in range(self.n_layers):
            tensors[f"{i}.A"] = self.A[i].float().contiguous()
            tensors[f"{i}.B"] = self.B[i].float().contiguous()
            tensors[f"{i}.b"] = self.b[i].float().contiguous()
            tensors[f"{i}.w"] = self.w[i].float().contiguous()
        meta = {"format": "ioaware-predictors", "version": str(FORMAT_VERSION), "fingerprint": fingerprint,
                "activation": self.activation, "n_layers": str(self.n_layers), "rank": str(self.rank),
                "report": json.dumps(self.meta or {})}
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, str(tmp), metadata=meta)
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path, expect_fingerprint: str | None, device="cpu") -> Predictors:
        """Load a file written by `save`. Raises ValueError if it was trained for another model
        (fingerprint mismatch) or is not a predictor file of this version."""
        from safetensors import safe_open

        path = Path(path)
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            meta = f.metadata() or {}
            if meta.get("format") != "ioaware-predictors":
                raise ValueError(f"{path} is not an ioaware predictor file (metadata format={meta.get('format')!r})")
            if meta.get("version") != str(FORMAT_VERSION):
                raise ValueError(f"{path} has predictor format version {meta.get('version')}, this ioaware reads "
                                 f"{FORMAT_VERSION}; retrain with benchmarks/bench_sparsity.py")
            if expect_fingerprint is not None and meta.get("fingerprint") != expect_fingerprint:
                raise ValueError(f"{path} was trained for model {meta.get('fingerprint')!r}, not for this model "
                                 f"({expect_fingerprint!r}); retrain the predictors for this model")
            L = int(meta["n_layers"])
            g = f.get_tensor
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


@torch.inference_mode()
def collect_ffn_inputs(model: Transformer, token_batches: Iterable[torch.Tensor], max_tokens: int | None = None,
                       dtype=torch.float16, progress: bool = False) -> list[torch.Tensor]:
    """FFN inputs per layer, each (N, dim) on CPU in `dtype` (fp16 halves the memory; labels are recomputed
    from them in fp32). Stops after `max_tokens` tokens."""
    batches = list(token_batches)
    L = model.args.n_layers
    out: list[list[torch.Tensor]] = [[] for _ in range(L)]
    prog, task = _progress("collecting FFN inputs", len(batches), progress)
    seen = 0
    with prog, _sdpa_attention(model), _ffn_input_hooks(
            model, lambda i, x: out[i].append(x.reshape(-1, x.shape[-1]).to("cpu", dtype))):
        for b in batches:
            if max_tokens is not None and seen >= max_tokens:
                break
            _run(model, b)
            seen += b.numel()
            prog.update(task, advance=1, info=f"{seen} tokens")
    res = [torch.cat(o) for o in out]
    return [r[:max_tokens] for r in res] if max_tokens is not None else res


def _svd_init(ffn: FeedForward, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    # The gate pre-activation is the best linear predictor of the gate's sign and size; its rank-r SVD
    # (A = S^1/2 V^T, B = U S^1/2) is where training starts, so a few epochs are enough.
    W = _gate_weight(ffn)  # (H, dim)
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    s = S[:rank].sqrt()
    return s[:, None] * Vh[:rank], U[:, :rank] * s[None, :]


def _gate_weight(ffn: FeedForward) -> torch.Tensor:
    return ffn_bundles(ffn)[:, 0].float()  # (H, dim)


def train_predictors(model: Transformer, token_batches: Iterable[torch.Tensor], thresholds: torch.Tensor,
                     rank: int = 64, epochs: int = 4, activation: str = "gate", target_recall: float = 0.95,
                     pos_weight: float = 4.0, lr: float = 2e-3, batch_size: int = 512, holdout: float = 0.15,
                     max_tokens: int | None = 12_000, seed: int = 0, progress: bool = True,
                     inputs: list[torch.Tensor] | None = None) -> Predictors:
    """Train one low-rank predictor per layer on the model's own FFN inputs; labels are |silu(gate x)| > t_l.

    Loss: BCE with `pos_weight` on active neurons (missing a needed neuron costs quality, loading a spare one
    only costs I/O). After training, each layer's decision threshold is set on the `holdout` fraction of
    tokens (never trained on) to the largest value whose recall is >= target_recall there.
    `inputs`: FFN inputs from `collect_ffn_inputs`, to reuse one collection for several thresholds."""
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
    prog, task = _progress("training predictors", L * epochs * steps_per_epoch, progress)
    with prog:
        for i in range(L):
            ffn = model.layers[i].feed_forward
            W = _gate_weight(ffn)
            x_all = inputs[i].float()
            with torch.no_grad():
                y_all = F.silu(x_all @ W.T).abs() > float(thresholds[i])  # (N, H) labels
            A0, B0 = _svd_init(ffn, rank)
            A, B = nn.Parameter(A0.clone()), nn.Parameter(B0.clone())
            H, t = W.shape[0], max(float(thresholds[i]), 1e-3)
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


# ---------------------------------------------------------------------------------------------------------------
# 4. quality


def _nll_and_top1(logits: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (B, T, V), tokens (B, T) -> per-position next-token NLL (B, T-1) and argmax (B, T-1)."""
    lg = logits[:, :-1].float()
    nll = F.cross_entropy(lg.reshape(-1, lg.shape[-1]), tokens[:, 1:].reshape(-1), reduction="none")
    return nll.view(lg.shape[:2]), lg.argmax(-1)


@torch.inference_mode()
def evaluate(model: Transformer, held_out_tokens: Iterable[torch.Tensor], thresholds: torch.Tensor,
             predictors: Predictors | None = None, progress: bool = False, window: int = 5) -> dict:
    """Quality of the sparse FFN on held-out sequences ((B, T) or (T,) long tensors, each run from position 0):

    - perplexity: dense, thresholded, thresholded + predicted (a neuron outside the predicted set is dropped
      even if active: what a run that loads only predicted neurons computes);
    - and thresholded + (predicted or in the last `window` tokens' predicted sets): what a streamed run with a
      neuron cache computes, since sparse_ffn runs over everything the cache holds;
    - top-1 agreement of each sparse variant with the dense model's argmax;
    - predictor recall / precision against the threshold's active set, per layer and overall;
    - FFN neurons per token: active (thresholded), predicted (to load), used;
    - windowing: the fraction of a token's predicted neurons already used by one of the previous k tokens
      (hit rate) and the neurons loaded per token with that window, on the held-out text in order."""
    seqs = [b if b.dim() == 2 else b[None] for b in held_out_tokens]
    H = model.args.hidden_dim
    nll = {"dense": [], "thresholded": [], "predicted": [], "windowed": []}
    agree = {"thresholded": [], "predicted": [], "windowed": []}
    rec_t: dict = {}
    rec_p: dict = {}
    variants = 4 if predictors is not None else 2
    prog, task = _progress("evaluating", len(seqs) * variants, progress)
    with prog, _sdpa_attention(model):
        for toks in seqs:
            toks = toks.to(model.norm.weight.device)
            d_nll, d_top = _nll_and_top1(_run(model, toks), toks)
            nll["dense"].append(d_nll.flatten())
            prog.advance(task)
            runs = [("thresholded", None, rec_t, 0)]
            if predictors is not None:
                runs += [("predicted", predictors, rec_p, 0), ("windowed", predictors, None, window)]
            for name, pred, rec, win in runs:
                with sparse_model(model, thresholds, pred, record=rec, window=win):
                    s_nll, s_top = _nll_and_top1(_run(model, toks), toks)
                nll[name].append(s_nll.flatten())
                agree[name].append((s_top == d_top).flatten().float())
                prog.advance(task)

    def ppl(k):
        return math.exp(float(torch.cat(nll[k]).mean())) if nll[k] else None

    out: dict = {"tokens": int(sum(x.numel() for x in nll["dense"])), "ppl_dense": ppl("dense"),
                 "ppl_thresholded": ppl("thresholded"), "top1_agreement_thresholded":
                 float(torch.cat(agree["thresholded"]).mean())}
    out["ppl_ratio_thresholded"] = out["ppl_thresholded"] / out["ppl_dense"]
    lt = rec_t["layers"]
    out["active_frac_per_layer"] = [d["active"] / (d["tokens"] * H) for d in lt]
    out["active_frac"] = sum(d["active"] for d in lt) / sum(d["tokens"] * H for d in lt)
    if predictors is None:
        return out
    lp = rec_p["layers"]
    tot = {k: sum(d[k] for d in lp) for k in lp[0]}
    out.update({
        "ppl_predicted": ppl("predicted"), "ppl_ratio_predicted": ppl("predicted") / out["ppl_dense"],
        "top1_agreement_predicted": float(torch.cat(agree["predicted"]).mean()),
        "eval_window": window, "ppl_windowed": ppl("windowed"),
        "ppl_ratio_windowed": ppl("windowed") / out["ppl_dense"],
        "top1_agreement_windowed": float(torch.cat(agree["windowed"]).mean()),
        "recall": tot["true_pos"] / max(tot["active"], 1), "precision": tot["true_pos"] / max(tot["predicted"], 1),
        "recall_per_layer": [d["true_pos"] / max(d["active"], 1) for d in lp],
        "precision_per_layer": [d["true_pos"] / max(d["predicted"], 1) for d in lp],
        "predicted_frac": tot["predicted"] / (tot["tokens"] * H),
        "used_frac": tot["used"] / (tot["tokens"] * H),
        "predicted_frac_per_layer": [d["predicted"] / (d["tokens"] * H) for d in lp],
        "window": {str(k): {"hit_rate": tot[f"window{k}_hits"] / max(tot["predicted"], 1),
                            "loaded_frac_per_token": tot[f"window{k}_loaded"] / (tot["tokens"] * H),
                            "resident_frac": tot[f"window{k}_resident"] / (tot["tokens"] * H)}
                   for k in WINDOWS},
        "predictor_params": predictors.n_params(), "predictor_rank": predictors.rank,
    })
    return out


def load_text(name: str) -> str:
    """A text shipped in ioaware/runtime/data ('calibration' or 'heldout')."""
    return (DATA_DIR / f"{name}.txt").read_text(encoding="utf-8")


def token_batches(tokenizer, text: str, seq_len: int = 256, max_tokens: int | None = None) -> list[torch.Tensor]:
    """Tokenise `text` and cut it into (1, seq_len) chunks (the last, shorter one is dropped if under 16 tokens)."""
    ids = tokenizer.encode(text)
    if max_tokens is not None:
        ids = ids[:max_tokens]
    out = [torch.tensor([ids[i:i + seq_len]]) for i in range(0, len(ids), seq_len)]
    return [b for b in out if b.shape[1] >= 16]


def predictor_path(fingerprint: str, sparsity: float, rank: int) -> Path:
    """Where trained predictors for a model are cached: IOAWARE_CACHE_DIR/predictors/<fp>-s<sparsity>-r<rank>."""
    from ..env import settings

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
