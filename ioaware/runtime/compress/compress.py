"""Compress a Llama-family checkpoint: truncated SVD of all seven projections of every block.

q, k, v are factored per head (FlashSVD's attention kernel rebuilds one head's tile from its own factor), o, gate,
up and down as whole matrices. The rank of each is `ratio` x its full rank (min of its two sides; a head's is
head_dim), so ratio 1.0 keeps every singular value and reproduces the model. Embeddings, norms and the output
head stay dense, as in SVD-LLM.
"""

from __future__ import annotations

import torch

from ...errors import UnsupportedError
from ..llm.checkpoint import VARIANTS, Checkpoint
from ..llm.model import ModelArgs
from ..offload.activations import progress_bar
from .model import KINDS
from .svd import RIDGE, factorize, factorize_heads, rank_for, whitener

SUPPORTED_ARCHS = ("llama",)


def check_ratio(ratio: float) -> None:
    if not isinstance(ratio, (int, float)) or not 0 < ratio <= 1:
        raise ValueError(f"--rank-ratio must be in (0, 1] (the fraction of each matrix's full rank kept), got {ratio}")


def check_arch(args: ModelArgs) -> None:
    if args.arch not in SUPPORTED_ARCHS:
        raise UnsupportedError(f"architecture {args.arch!r} is not supported (supported: {', '.join(SUPPORTED_ARCHS)})")


def check_source(ckpt: Checkpoint) -> None:
    """A dense Llama-family checkpoint: not an architecture we cannot factor, nor a factor or pruned file."""
    if ckpt.format in VARIANTS:
        raise UnsupportedError(f"{ckpt.path.name} is already a {ckpt.format} checkpoint; compress the dense model "
                               "it was made from (a .gguf file or a Hugging Face folder)")
    check_arch(ckpt.args)


def layer_ranks(args: ModelArgs, ratio: float) -> dict[str, int]:
    d, H, D, Fw = args.dim, args.n_heads, args.head_dim, args.hidden_dim
    head = rank_for(ratio, D, d)
    return {"q": head, "k": head, "v": head, "o": rank_for(ratio, d, H * D), "gate": rank_for(ratio, Fw, d),
            "up": rank_for(ratio, Fw, d), "down": rank_for(ratio, d, Fw)}


def projection_params(args: ModelArgs, ranks: list[dict[str, int]] | None = None) -> int:
    """Parameters of the seven projections of every block: dense (ranks None) or as factors."""
    d, H, Hkv, D, Fw = args.dim, args.n_heads, args.n_kv_heads, args.head_dim, args.hidden_dim
    if ranks is None:
        return args.n_layers * (d * (H + 2 * Hkv) * D + H * D * d + 3 * d * Fw)
    n = 0
    for r in ranks:
        n += (d + D) * (H * r["q"] + Hkv * (r["k"] + r["v"]))  # per head: U (d, r) and V (r, D)
        n += r["o"] * (H * D + d) + (r["gate"] + r["up"]) * (d + Fw) + r["down"] * (Fw + d)
    return n


def factorize_checkpoint(ckpt: Checkpoint, ratio: float, covs: list[dict[str, torch.Tensor]] | None = None,
                         progress: bool = False, device: str | torch.device | None = None,
                         cache: dict | None = None) -> tuple[dict[str, torch.Tensor], list[dict[str, int]], dict]:
    """The factor tensors (float32, the runtime's names), the ranks per layer and a report (relative truncation
    errors per kind: of the weights, or with `covs`, the dense model's input covariances per layer and site
    (calibrate.input_covariances), of the outputs on the calibration inputs). `device`: where the SVDs run (the
    factors stay there; the dense tensors stay where the checkpoint holds them). `cache`: svd.factorize's, one
    per `covs` (a sweep decomposes each matrix once for all ratios)."""
    check_ratio(ratio)
    check_source(ckpt)
    a = ckpt.args
    sd = ckpt.state_dict

    def W(name):  # a projection, on the device where its SVD runs
        return sd[name] if device is None else sd[name].to(device)
    H, Hkv = a.n_heads, a.n_kv_heads
    out = {"tok_embeddings.weight": sd["model.embed_tokens.weight"], "norm.weight": sd["model.norm.weight"]}
    if not a.tie_embeddings:
        out["output.weight"] = sd["lm_head.weight"]
    ranks, errors = [], {k: [] for k in KINDS}
    prog, task = progress_bar("factorising (truncated SVD" + (", whitened)" if covs else ")"), a.n_layers, progress)

    def chol(i, site):
        return whitener(covs[i][site]) if covs else None

    with prog:
        for i in range(a.n_layers):
            p, q = f"model.layers.{i}.", f"layers.{i}."
            r = layer_ranks(a, ratio)
            L = chol(i, "attn_in")
            uq, vq, eq = factorize_heads(W(p + "self_attn.q_proj.weight"), H, r["q"], L, cache, (i, "q"))
            uk, vk, ek = factorize_heads(W(p + "self_attn.k_proj.weight"), Hkv, r["k"], L, cache, (i, "k"))
            uv, vv, ev = factorize_heads(W(p + "self_attn.v_proj.weight"), Hkv, r["v"], L, cache, (i, "v"))
            L = chol(i, "o_in")
            uo, vo, eo = factorize(W(p + "self_attn.o_proj.weight"), r["o"], L, cache, (i, "o"))
            L = chol(i, "ffn_in")
            ug, vg, eg = factorize(W(p + "mlp.gate_proj.weight"), r["gate"], L, cache, (i, "gate"))
            uu, vu, eu = factorize(W(p + "mlp.up_proj.weight"), r["up"], L, cache, (i, "up"))
            L = chol(i, "down_in")
            ud, vd, ed = factorize(W(p + "mlp.down_proj.weight"), r["down"], L, cache, (i, "down"))
            out.update({
                q + "attention_norm.weight": sd[p + "input_layernorm.weight"],
                q + "ffn_norm.weight": sd[p + "post_attention_layernorm.weight"],
                q + "attention.uqkv": torch.cat([uq, uk, uv], dim=1), q + "attention.vq": vq,
                q + "attention.vk": vk, q + "attention.vv": vv, q + "attention.wo.u": uo, q + "attention.wo.v": vo,
                q + "feed_forward.u13": torch.cat([ug, uu], dim=1), q + "feed_forward.vg": vg,
                q + "feed_forward.vu": vu, q + "feed_forward.w2.u": ud, q + "feed_forward.w2.v": vd})
            for k, e in zip(KINDS, (eq, ek, ev, eo, eg, eu, ed)):
                errors[k].append(e)
            ranks.append(r)
            prog.update(task, advance=1, info=f"layer {i}")
    dense, fact = projection_params(a), projection_params(a, ranks)
    report = {"rank_ratio": ratio, "whiten": bool(covs), "ranks_layer0": ranks[0],
              "relative_error_mean": {k: sum(v) / len(v) for k, v in errors.items()},
              "relative_error_kind": "output on calibration inputs" if covs else "weights (Frobenius)",
              "projection_params_dense": dense, "projection_params_factored": fact,
              "projection_param_fraction": fact / dense, "ridge": RIDGE if covs else None}
    return out, ranks, report
