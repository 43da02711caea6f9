"""The runtime's Transformer with every projection low rank: FlashSVD's kernels on CUDA, the reference on CPU.

Attention: P = x U_qkv (one GEMM, (B, T, Hq Rq + 2 Hkv R)), split into per-head rank activations. The KV cache
holds P_k and P_v (rank R per head instead of D: a smaller cache for free), and `ioaware.kernels.lowrank
.lowrank_attn` rebuilds and rotates Q, K, V tile by tile on chip. The 'sdpa' path (the fast CPU choice, set by
`Transformer.set_attention`) rebuilds them in memory and calls PyTorch's SDPA. The output projection is a
whole-matrix factor pair. FFN: `lowrank_ffn` (SwiGLU without the (T, ffn) intermediates in HBM on CUDA).
The model keeps the dense model's interface (forward, decode_static for CUDA graphs, setup_cache, set_attention),
so `generate` runs it unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import UnsupportedError
from ...kernels.lowrank import expand_heads, lowrank_attn, lowrank_ffn
from ..llm.model import ModelArgs, Transformer, apply_rope, rope_tables

KINDS = ("q", "k", "v", "o", "gate", "up", "down")


class LowRankLinear(nn.Module):
    """y = (x U) V: U (in, r), V (r, out)."""

    def __init__(self, n_in: int, n_out: int, rank: int):
        super().__init__()
        self.u = nn.Parameter(torch.empty(n_in, rank))
        self.v = nn.Parameter(torch.empty(rank, n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.u) @ self.v


class LowRankKVCache(nn.Module):
    """The rank activations of keys and values, (B, S, Hkv, R): `k`/`v` as in the dense KVCache."""

    def __init__(self, batch: int, seq: int, n_kv_heads: int, rk: int, rv: int, dtype, device):
        super().__init__()
        self.register_buffer("k", torch.zeros(batch, seq, n_kv_heads, rk, dtype=dtype, device=device),
                             persistent=False)
        self.register_buffer("v", torch.zeros(batch, seq, n_kv_heads, rv, dtype=dtype, device=device),
                             persistent=False)


class LowRankAttention(nn.Module):
    def __init__(self, a: ModelArgs, ranks: dict[str, int]):
        super().__init__()
        self.n_heads, self.n_kv, self.hd = a.n_heads, a.n_kv_heads, a.head_dim
        self.rq, self.rk, self.rv = ranks["q"], ranks["k"], ranks["v"]
        H, Hkv, D = a.n_heads, a.n_kv_heads, a.head_dim
        self.uqkv = nn.Parameter(torch.empty(a.dim, H * self.rq + Hkv * (self.rk + self.rv)))
        self.vq = nn.Parameter(torch.empty(H, self.rq, D))
        self.vk = nn.Parameter(torch.empty(Hkv, self.rk, D))
        self.vv = nn.Parameter(torch.empty(Hkv, self.rv, D))
        self.wo = LowRankLinear(H * D, a.dim, ranks["o"])
        self.cache: LowRankKVCache | None = None
        self.rope_full: tuple[torch.Tensor, torch.Tensor] | None = None  # (S, D) tables, set by setup_cache
        self.impl = "flash_attn"

    def forward(self, x, cos, sin, start: int | None, pos: torch.Tensor | None = None):
        """x: (B, T, dim); cos/sin: the queries' (T, D) rows. `start` (int) or, for the static decode step, `pos`."""
        B, T, _ = x.shape
        H, Hkv = self.n_heads, self.n_kv
        pq, pk, pv = (x @ self.uqkv).split([H * self.rq, Hkv * self.rk, Hkv * self.rv], dim=-1)
        pq = pq.view(B, T, H, self.rq)  # (B, T, H, Rq)
        pk, pv = pk.view(B, T, Hkv, self.rk), pv.view(B, T, Hkv, self.rv)
        c = self.cache
        if pos is None:
            end = start + T
            c.k[:, start:end] = pk
            c.v[:, start:end] = pv
            keys, values, seqlens, n_keys = c.k[:, :end], c.v[:, :end], None, end
        else:  # fixed shapes for a CUDA graph: the whole cache, and its fill as a tensor
            c.k.index_copy_(1, pos, pk)
            c.v.index_copy_(1, pos, pv)
            keys, values, n_keys = c.k, c.v, None
            seqlens = (pos + T).to(torch.int32).expand(B)
        if self.impl == "flash_attn":
            D2 = self.hd // 2
            cos_f, sin_f = self.rope_full
            o = lowrank_attn(pq, self.vq, keys, self.vk, values, self.vv, causal=True,
                             rope=(cos_f[:, :D2], sin_f[:, :D2]), cache_seqlens=seqlens)  # (B, T, H, D)
        else:
            o = self._sdpa(pq, keys, values, cos, sin, n_keys, pos)
        return self.wo(o.reshape(B, T, H * self.hd))

    def _sdpa(self, pq, keys, values, cos, sin, n_keys, pos):
        """Rebuild Q, K, V in memory, rotate them, and run PyTorch's SDPA (bottom-right causal)."""
        cos_f, sin_f = self.rope_full
        S = keys.shape[1]
        q = apply_rope(expand_heads(pq, self.vq), cos, sin)  # (B, T, H, D)
        k = apply_rope(expand_heads(keys, self.vk), cos_f[:S], sin_f[:S])  # (B, S, Hkv, D)
        v = expand_heads(values, self.vv)
        T = q.shape[1]
        if pos is not None:
            mask = (torch.arange(S, device=q.device) <= pos + T - 1)[None, None, None, :]
            causal = False
        elif T > 1 and n_keys > T:
            mask = torch.ones(T, n_keys, dtype=torch.bool, device=q.device).tril(diagonal=n_keys - T)
            causal = False
        else:
            mask, causal = None, T > 1
        return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                              attn_mask=mask, is_causal=causal, enable_gqa=True).transpose(1, 2)


class LowRankFeedForward(nn.Module):
    def __init__(self, a: ModelArgs, ranks: dict[str, int]):
        super().__init__()
        self.u13 = nn.Parameter(torch.empty(a.dim, ranks["gate"] + ranks["up"]))  # [U_gate | U_up]
        self.vg = nn.Parameter(torch.empty(ranks["gate"], a.hidden_dim))
        self.vu = nn.Parameter(torch.empty(ranks["up"], a.hidden_dim))
        self.w2 = LowRankLinear(a.hidden_dim, a.dim, ranks["down"])

    def forward(self, x):
        if torch.is_autocast_enabled(x.device.type):
            # the parameter update's bf16 autocast (update.py): plain products, which autocast casts (the kernels
            # take one dtype for all their inputs); the same function as lowrank_ffn's reference
            p = x @ self.u13
            rg = self.vg.shape[0]
            return self.w2(F.silu(p[..., :rg] @ self.vg) * (p[..., rg:] @ self.vu))
        return lowrank_ffn(x, self.u13, self.vg, self.vu, self.w2.u, self.w2.v)


class LowRankTransformer(Transformer):
    """`Transformer` whose blocks hold LowRankAttention and LowRankFeedForward. ranks: one dict per layer,
    {kind: rank} for KINDS (q, k, v per head; the others whole-matrix)."""

    def __init__(self, args: ModelArgs, ranks: list[dict[str, int]]):
        super().__init__(args)
        self.ranks = ranks
        for layer, r in zip(self.layers, ranks, strict=True):
            layer.attention = LowRankAttention(args, r)
            layer.feed_forward = LowRankFeedForward(args, r)

    def setup_cache(self, batch: int, seq_len: int) -> None:
        if getattr(self, "kv_tiers", None) is not None:  # set by runtime.kvtiers.install_kv_tiers (--kv-budget)
            raise UnsupportedError("--kv-budget tiers a cache of full-size keys and values; a factor checkpoint's "
                                   "cache holds rank activations (already smaller): run it without --kv-budget")
        p = self.norm.weight
        cos, sin = rope_tables(self.args, seq_len, p.device)
        for layer in self.layers:
            at = layer.attention
            at.cache = LowRankKVCache(batch, seq_len, self.args.n_kv_heads, at.rk, at.rv, p.dtype, p.device)
            at.rope_full = (cos, sin)
        self.cos, self.sin = cos, sin
        self.cache_len = seq_len


def expected_shapes(args: ModelArgs, ranks: list[dict[str, int]]) -> dict[str, tuple[int, ...]]:
    """Every tensor of a factor checkpoint, by name, with its shape."""
    d, H, Hkv, D, Fw = args.dim, args.n_heads, args.n_kv_heads, args.head_dim, args.hidden_dim
    out = {"tok_embeddings.weight": (args.vocab_size, d), "norm.weight": (d,)}
    if not args.tie_embeddings:
        out["output.weight"] = (args.vocab_size, d)
    for i, r in enumerate(ranks):
        p = f"layers.{i}."
        out.update({
            p + "attention_norm.weight": (d,), p + "ffn_norm.weight": (d,),
            p + "attention.uqkv": (d, H * r["q"] + Hkv * (r["k"] + r["v"])),
            p + "attention.vq": (H, r["q"], D), p + "attention.vk": (Hkv, r["k"], D),
            p + "attention.vv": (Hkv, r["v"], D),
            p + "attention.wo.u": (H * D, r["o"]), p + "attention.wo.v": (r["o"], d),
            p + "feed_forward.u13": (d, r["gate"] + r["up"]), p + "feed_forward.vg": (r["gate"], Fw),
            p + "feed_forward.vu": (r["up"], Fw), p + "feed_forward.w2.u": (Fw, r["down"]),
            p + "feed_forward.w2.v": (r["down"], d)})
    return out


def build_lowrank_model(args: ModelArgs, ranks: list[dict[str, int]], tensors: dict[str, torch.Tensor],
                        device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> LowRankTransformer:
    """Instantiate on `device` (dtype: float32 on CPU, bfloat16 on CUDA by default) and copy `tensors` in; they
    must match expected_shapes exactly (checked by the caller, factors.load_factors)."""
    device = torch.device(device)
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    with torch.device("meta"):
        model = LowRankTransformer(args, ranks)
    model = model.to_empty(device=device).to(dtype)
    if args.tie_embeddings:
        model.output.weight = model.tok_embeddings.weight
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, t in tensors.items():
            params[name].copy_(t)
    model.weight_format = "lowrank"
    return model.eval().requires_grad_(False)
