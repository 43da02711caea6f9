"""SparF's error on a real model's activations: the queries, keys and values of every layer at one decode step
after a real context, attended exactly and through SparF reading the KV file, compared head by head."""

from __future__ import annotations

import math
import os
import tempfile

import torch

from .partial import lse_merge, partial_attention
from .sparf import PAGE, SparFConfig, _group, _ungroup, exact_bytes, sparf_from_file
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
    """Cosine similarity of SparF's attention output to exact, per (layer, head), and the bytes read; and the
    mean-value correction's α̂ (p̂'s mass on the kept non-sink tokens) against the true α (the exact softmax's).

    exact_recent: the newest tokens kept exact (the device/DRAM tiers) and merged by LSE with SparF over the rest
    (the SSD tier); 0 puts the whole context through SparF."""
    cos, reads, exact, a_hat, a_true = [], 0, 0, [], []
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
            st = {}
            try:
                o, lse, nb = sparf_from_file(fd, f.segments, {"batch": B, "n_kv_heads": Hkv, "head_dim": D,
                                                              "dtype": k.dtype}, q, scale,
                                             v[:, :n_ssd].double().mean(1).float(), cfg, stats=st)
            finally:
                os.close(fd)
        finally:
            f.close()
        ns = min(cfg.sink_pages, n_ssd // PAGE) * PAGE
        qg = _group(q, Hkv)
        for (b, h), tok in st["tokens"].items():  # true α: the exact softmax over the tier's non-sink tokens
            p = torch.softmax(qg[b, h].double() @ k[b, ns:n_ssd, h].double().T * scale, dim=-1)
            a_true.append(p[:, tok[tok >= ns] - ns].sum(-1))
            a_hat.append(st["alpha_hat"][b, h].double())
        if n_ssd < L:
            o, _ = lse_merge([(o, lse), partial_attention(q, k[:, n_ssd:], v[:, n_ssd:], scale)])
        reads += nb
        exact += exact_bytes(n_ssd, B, Hkv, D, k.element_size())
        cos.append(torch.nn.functional.cosine_similarity(o.double(), ref.double(), dim=-1).flatten())  # (Hq,)
    c = torch.stack(cos)  # (layers, Hq)
    ah, at = torch.cat(a_hat), torch.cat(a_true)
    return {"config": dict(cfg.__dict__, r=cfg.channels(acts[0][1].shape[-1])),
            "alpha_hat_mean": ah.mean().item(), "alpha_true_mean": at.mean().item(),
            "alpha_abs_err_mean": (ah - at).abs().mean().item(),
            "alpha_overestimated_share": (ah > at).double().mean().item(),
            "cos_mean": c.mean().item(), "cos_min": c.min().item(), "cos_p05": c.flatten().quantile(0.05).item(),
            "cos_per_layer_mean": c.mean(1).tolist(), "bytes_read": reads, "bytes_exact": exact,
            "bytes_frac": reads / max(exact, 1), "context": acts[0][1].shape[1], "exact_recent": exact_recent,
            "r": cfg.channels(acts[0][1].shape[-1]), "bytes_frac_budget": cfg.bytes_frac}


def oracle_quality(acts, cfg: SparFConfig, exact_recent: int = 0, seg_tokens: int = 256) -> dict:
    """The ceiling of SparF's page choice at cfg's split of the bytes: the same number of pages per KV head (and
    the same sink/recent pages), chosen by the exact scores' mass (which SparF cannot see without reading K), then
    attended as SparF does (cfg.correction, with the exact α when "mean"). In memory; the same merge and cosine."""
    from .sparf import _select_pages

    cos = []
    for q, k, v in acts:
        B, L, Hkv, D = k.shape
        scale = 1 / math.sqrt(D)
        ref, _ = partial_attention(q, k, v, scale)
        n = (L - exact_recent) // seg_tokens * seg_tokens
        qg, n_full = _group(q, Hkv), n // PAGE
        o = torch.empty(B, Hkv, qg.shape[2], D, dtype=torch.float64)
        lse = torch.empty(B, Hkv, qg.shape[2], dtype=torch.float64)
        for b in range(B):
            for h in range(Hkv):
                s = qg[b, h].double() @ k[b, :n, h].double().T * scale  # (R, n)
                p = torch.softmax(s, dim=-1)
                ch = cfg.head_channels(qg[b, h].abs().sum(0))
                pages = _select_pages(cfg, p.sum(0)[: n_full * PAGE].view(n_full, PAGE).sum(-1),
                                      cfg.n_pages(n, D, len(ch)))
                tok = (pages[:, None] * PAGE + torch.arange(PAGE)).reshape(-1)
                ls = torch.logsumexp(s[:, tok], dim=-1)
                os_ = torch.softmax(s[:, tok], dim=-1) @ v[b, tok, h].double()
                if cfg.correction == "mean":  # exact α; v̄ of the tokens not read
                    alpha = p[:, tok].sum(-1)
                    vbar = (v[b, :n, h].double().sum(0) - v[b, tok, h].double().sum(0)) / max(n - tok.numel(), 1)
                    os_ = alpha[:, None] * os_ + (1 - alpha[:, None]) * vbar
                    ls = ls - alpha.log()
                o[b, h], lse[b, h] = os_, ls
        out, lse = _ungroup(o, lse, q.shape[1])
        if n < L:
            out, _ = lse_merge([(out, lse), partial_attention(q.double(), k[:, n:].double(), v[:, n:].double(), scale)])
        cos.append(torch.nn.functional.cosine_similarity(out.double(), ref.double(), dim=-1).flatten())
    c = torch.stack(cos)
    return {"cos_mean": c.mean().item(), "cos_min": c.min().item(), "cos_p05": c.flatten().quantile(0.05).item(),
            "config": dict(cfg.__dict__, r=cfg.channels(acts[0][1].shape[-1])), "exact_recent": exact_recent,
            "page_choice": "oracle (exact scores)"}
