"""What pruning costs in quality: held-out perplexity of the pruned model against the dense one."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..llm.model import Transformer
from ..offload.activations import progress_bar, run_tokens, sdpa_attention


@torch.inference_mode()
def perplexity(model: Transformer, batches: list[torch.Tensor], progress: bool = False, label: str = "") -> dict:
    """exp(mean next-token NLL) over (1, T) token batches, each run from position 0."""
    nll, n = 0.0, 0
    prog, task = progress_bar(f"perplexity {label}".strip(), len(batches), progress)
    with prog, sdpa_attention(model):
        for b in batches:
            b = b if b.dim() == 2 else b[None]
            b = b.to(model.norm.weight.device)
            logits = run_tokens(model, b)[:, :-1].float()  # (1, T-1, vocab)
            nll += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), b[:, 1:].reshape(-1),
                                         reduction="sum"))
            n += b.shape[1] - 1
            prog.advance(task)
    return {"ppl": math.exp(nll / n), "tokens": n}


def plot_sweep(rows: list[dict], dense_ppl: float, path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method, marker in (("magnitude", "o"), ("wanda", "s")):
        sel = sorted((r for r in rows if r["method"] == method), key=lambda r: r["target_sparsity"])
        if sel:
            ax.plot([r["target_sparsity"] for r in sel], [r["ppl"] for r in sel], marker + "-", label=method)
    ax.axhline(dense_ppl, color="gray", ls="--", label=f"dense ({dense_ppl:.2f})")
    ax.set(xlabel="sparsity of the block projections", ylabel="held-out perplexity", title=title, yscale="log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
