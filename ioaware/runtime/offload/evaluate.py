"""Quality of activation sparsity: perplexity and top-1 agreement of the thresholded model, with and without the
predictors, and how often a window of recent tokens already holds a token's neurons."""

from __future__ import annotations

import contextlib
import math
import types
from collections.abc import Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F

from ..llm.model import FeedForward, Transformer
from .activations import progress_bar, run_tokens, sdpa_attention
from .predictors import Predictors
from .sparse_ffn import ffn_act, gate_up


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
            gate, up = gate_up(self, x)
            h = ffn_act(self)(gate)  # SiLU, or a relufied model's ReLU
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
    dlogit = {"thresholded": [], "predicted": [], "windowed": []}  # mean |logit - dense logit| per position
    kl = {"thresholded": [], "predicted": [], "windowed": []}  # KL(dense || sparse) per position, nats
    rec_t: dict = {}
    rec_p: dict = {}
    variants = 4 if predictors is not None else 2
    prog, task = progress_bar("evaluating", len(seqs) * variants, progress)
    with prog, sdpa_attention(model):
        for toks in seqs:
            toks = toks.to(model.norm.weight.device)
            d_logits = run_tokens(model, toks).float()
            d_nll, d_top = _nll_and_top1(d_logits, toks)
            nll["dense"].append(d_nll.flatten())
            prog.advance(task)
            runs = [("thresholded", None, rec_t, 0)]
            if predictors is not None:
                runs += [("predicted", predictors, rec_p, 0), ("windowed", predictors, None, window)]
            for name, pred, rec, win in runs:
                with sparse_model(model, thresholds, pred, record=rec, window=win):
                    s_logits = run_tokens(model, toks).float()
                s_nll, s_top = _nll_and_top1(s_logits, toks)
                dlogit[name].append((s_logits - d_logits).abs().mean(-1).flatten())
                kl[name].append(F.kl_div(s_logits.log_softmax(-1), d_logits.log_softmax(-1), log_target=True,
                                         reduction="none").sum(-1).flatten())
                nll[name].append(s_nll.flatten())
                agree[name].append((s_top == d_top).flatten().float())
                prog.advance(task)

    def ppl(k):
        return math.exp(float(torch.cat(nll[k]).mean())) if nll[k] else None

    out: dict = {"tokens": int(sum(x.numel() for x in nll["dense"])), "ppl_dense": ppl("dense"),
                 "ppl_thresholded": ppl("thresholded"), "top1_agreement_thresholded":
                 float(torch.cat(agree["thresholded"]).mean())}
    out["ppl_ratio_thresholded"] = out["ppl_thresholded"] / out["ppl_dense"]
    for k in dlogit:
        if dlogit[k]:
            out[f"logit_mean_abs_diff_{k}"] = float(torch.cat(dlogit[k]).mean())
            out[f"kl_vs_dense_{k}"] = float(torch.cat(kl[k]).mean())
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
