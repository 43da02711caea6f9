"""SparF's error on a real model's activations: the queries, keys and values of every layer at one decode step
after a real context, attended exactly and through SparF reading the KV file, compared head by head."""

from __future__ import annotations

import math
import os
import tempfile

import torch

from .partial import lse_merge, partial_attention
from .sparf import SparFConfig, exact_bytes, sparf_from_file
from .ssd import KVFile


class _Recorder:
    """Stands in for a layer's tiered cache: keeps the layer's K/V (after RoPE) in memory, attends exactly, and
    remembers the last step's q."""

    def __init__(self):
        self.k = self.v = None
        self.q = None

    def tokens(self) -> int:
        return 0 if self.k is None else self.k.shape[1]

    def attend(self, q, k, v):
        self.k = k if self.k is None else torch.cat([self.k, k], 1)
        self.v = v if self.v is None else torch.cat([self.v, v], 1)
        self.q = q
        o, _ = partial_attention(q, self.k, self.v, q.shape[-1] ** -0.5, causal=True)
        return o.to(q.dtype)


@torch.inference_mode()
def capture(model, ids: torch.Tensor, chunk: int = 256) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Run `ids` (1, N) through the model; per layer the last token's q (1, 1, Hq, D) and the K/V of the N-1
    tokens before it (1, N-1, Hkv, D)."""
    recs = [_Recorder() for _ in model.layers]
    saved = [(layer.attention.tiered, layer.attention.cache) for layer in model.layers]
    model.cos, model.sin = _rope(model, ids.shape[1])
    model.cache_len = ids.shape[1]
    try:
        for layer, r in zip(model.layers, recs, strict=True):
            layer.attention.tiered = r
        n = ids.shape[1] - 1
        for s in range(0, n, chunk):
            model(ids[:, s:min(s + chunk, n)], s, last_only=True)
        model(ids[:, n:], n)
    finally:
        for layer, (t, c) in zip(model.layers, saved, strict=True):
            layer.attention.tiered, layer.attention.cache = t, c
    return [(r.q, r.k[:, :-1], r.v[:, :-1]) for r in recs]


def _rope(model, n):
    from ..llm.model import rope_tables

    return rope_tables(model.args, n, model.norm.weight.device)


def sparf_quality(acts, cfg: SparFConfig, exact_recent: int = 0, seg_tokens: int = 256, folder=None) -> dict:
    """Cosine similarity of SparF's attention output to exact, per (layer, head), and the bytes read.

    exact_recent: the newest tokens kept exact (the device/DRAM tiers) and merged by LSE with SparF over the rest
    (the SSD tier); 0 puts the whole context through SparF."""
    cos, reads, exact = [], 0, 0
    folder = folder or tempfile.gettempdir()
    for li, (q, k, v) in enumerate(acts):
        B, L, Hkv, D = k.shape
        scale = 1 / math.sqrt(D)
        ref, _ = partial_attention(q, k, v, scale)
        n_ssd = (L - exact_recent) // seg_tokens * seg_tokens
        f = KVFile(os.path.join(folder, f"sparfq-{os.getpid()}-{li}.iokv"), B, Hkv, D, k.dtype)
        try:
            for i in range(0, n_ssd, seg_tokens):
                f.append(li, k[:, i:i + seg_tokens].contiguous(), v[:, i:i + seg_tokens].contiguous())
            fd = os.open(f.path, os.O_RDONLY)
            try:
                o, lse, nb = sparf_from_file(fd, f.segments, {"batch": B, "n_kv_heads": Hkv, "head_dim": D,
                                                              "dtype": k.dtype}, q, scale,
                                             v[:, :n_ssd].double().mean(1).float(), cfg)
            finally:
                os.close(fd)
        finally:
            f.close()
        if n_ssd < L:
            o, _ = lse_merge([(o, lse), partial_attention(q, k[:, n_ssd:], v[:, n_ssd:], scale)])
        reads += nb
        exact += exact_bytes(n_ssd, B, Hkv, D, k.element_size())
        cos.append(torch.nn.functional.cosine_similarity(o.double(), ref.double(), dim=-1).flatten())  # (Hq,)
    c = torch.stack(cos)  # (layers, Hq)
    return {"cos_mean": c.mean().item(), "cos_min": c.min().item(), "cos_p05": c.flatten().quantile(0.05).item(),
            "cos_per_layer_mean": c.mean(1).tolist(), "bytes_read": reads, "bytes_exact": exact,
            "bytes_frac": reads / max(exact, 1), "context": acts[0][1].shape[1], "exact_recent": exact_recent,
            "r": cfg.channels(acts[0][1].shape[-1]), "bytes_frac_budget": cfg.bytes_frac}
