"""How good a relufied model is: per-layer FFN activation sparsity (the fraction of exact zeros of act(gate) over
tokens, what "LLM in a flash" can skip) and perplexity against the original model on the held-out texts
(text.heldout_texts: the shipped generated held-out file, and the repo's own prose).

`measure` compares two models already built; `evaluate_adapter` builds them from a checkpoint and an adapter (the
function the runtime helper and the tests call).
"""

from __future__ import annotations

import torch

from ..compress.evaluate import perplexity
from ..llm.checkpoint import Checkpoint, build_model
from ..llm.model import Transformer
from .adapter import Adapter
from .student import build_student, ffns
from .text import heldout_texts


@torch.inference_mode()
def layer_sparsity(student: Transformer, batches: list[torch.Tensor]) -> tuple[list[float], int]:
    """Per layer, the fraction of act(gate) elements that are exactly 0 over every token of `batches`; and the
    token count."""
    from ..offload.activations import run_tokens, sdpa_attention

    layers = ffns(student)
    dev = student.norm.weight.device
    for f in layers:
        f.stats = [torch.zeros((), dtype=torch.long, device=dev) for _ in range(2)]
    n = 0
    try:
        with sdpa_attention(student):
            for b in batches:
                run_tokens(student, b)
                n += b.numel()
        return [int(f.stats[0]) / int(f.stats[1]) for f in layers], n
    finally:
        for f in layers:
            f.stats = None


def measure(teacher: Transformer, student: Transformer, texts: dict[str, dict], progress: bool = False) -> dict:
    """Per held-out text: teacher and student perplexity, their ratio, and the student's per-layer sparsity.
    Summary keys: `sparsity` (mean over layers, on the generated held-out text), `ppl_ratio` (student / teacher
    on it)."""
    out: dict = {"texts": {}}
    for name, t in texts.items():
        ppl_t = perplexity(teacher, t["batches"], progress, f"{name}: original")
        ppl_s = perplexity(student, t["batches"], progress, f"{name}: relufied")
        sp, _ = layer_sparsity(student, t["batches"])
        out["texts"][name] = {"sources": t["sources"], "sha256": t["sha256"], "tokens": ppl_t["tokens"],
                              "ppl_original": ppl_t["ppl"], "ppl_relufied": ppl_s["ppl"],
                              "ppl_ratio": ppl_s["ppl"] / ppl_t["ppl"], "sparsity_mean": sum(sp) / len(sp),
                              "sparsity_min": min(sp), "sparsity_per_layer": sp}
    main = out["texts"].get("generated") or next(iter(out["texts"].values()))
    out["sparsity"], out["ppl_ratio"] = main["sparsity_mean"], main["ppl_ratio"]
    teacher.cache_len = student.cache_len = 0
    return out


def evaluate_adapter(ckpt: Checkpoint, adapter: Adapter, device: str | torch.device = "cpu",
                     dtype: torch.dtype | None = None, seq_len: int = 512, max_tokens: int = 16384,
                     progress: bool = False, teacher: Transformer | None = None) -> dict:
    """Sparsity and perplexity of the adapter's relufied model against `ckpt`'s original, on both held-out texts
    (each cut to max_tokens, in seq_len chunks). dtype: None = float32 on CPU, bfloat16 on CUDA."""
    teacher = teacher if teacher is not None else build_model(ckpt, device, dtype, weights="dense")
    student = build_student(ckpt, adapter, device, dtype)
    res = measure(teacher, student, heldout_texts(ckpt.tokenizer, seq_len, max_tokens), progress)
    res.update(activation=adapter.activation, shift=adapter.shift, rank=adapter.rank,
               adapter=str(adapter.path) if adapter.path else None, seq_len=seq_len, device=str(device),
               dtype=str(teacher.norm.weight.dtype).replace("torch.", ""))
    return res
