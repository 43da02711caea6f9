"""A Llama-family decoder in one readable file (gpt-fast spirit): RMSNorm, RoPE, GQA, SwiGLU, tied embeddings,
a preallocated KV cache. Prefill attention runs through `ioaware.flash_attn`, the static-shape (CUDA-graph)
decode step through `ioaware.flash_decode`; projections optionally through `ioaware.flat_linear`.

Weights use the Hugging Face layout (q/k rows in "rotate-half" order); `load_hf_state_dict` maps HF names onto
this module's fused projections (wqkv = [q; k; v], w13 = [gate; up]) so a decode step does 4 matmuls a layer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import UnsupportedError
from ...kernels import flash_attn, flash_decode, flat_linear


@dataclass
class ModelArgs:
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    hidden_dim: int  # SwiGLU inner width
    vocab_size: int
    head_dim: int = 0  # 0: dim // n_heads
    norm_eps: float = 1e-5
    rope_base: float = 10000.0
    rope_scaling: dict | None = None  # {"rope_type": "linear"|"llama3"|"freq_factors", ...}; None: plain RoPE
    max_seq_len: int = 2048  # the checkpoint's context length
    tie_embeddings: bool = True
    arch: str = "llama"
    extra: dict = field(default_factory=dict)  # anything else read from the checkpoint, for reports
    # the FFN gate's activation: "silu" (SwiGLU, the checkpoint's own), or a relufy adapter's "relu" /
    # "shifted_relu" (relu(g - ffn_act_shift)) / "relu2" (relu(g)^2), whose exact zeros the streamed FFN skips
    ffn_act: str = "silu"
    ffn_act_shift: float = 0.0

    def __post_init__(self):
        if not self.head_dim:
            self.head_dim = self.dim // self.n_heads
        if self.n_heads % self.n_kv_heads:
            raise UnsupportedError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
        if self.ffn_act not in FFN_ACTIVATIONS:
            raise UnsupportedError(f"FFN activation {self.ffn_act!r} is not supported (supported: "
                                   f"{', '.join(FFN_ACTIVATIONS)})")

    @property
    def n_params(self) -> int:
        d, h, L = self.dim, self.hidden_dim, self.n_layers
        qkv = d * (self.n_heads + 2 * self.n_kv_heads) * self.head_dim
        per_layer = qkv + self.n_heads * self.head_dim * d + 3 * d * h + 2 * d
        emb = self.vocab_size * d * (1 if self.tie_embeddings else 2)
        return L * per_layer + emb + d


FFN_ACTIVATIONS = ("silu", "relu", "shifted_relu", "relu2")


def gate_activation(name: str = "silu", shift: float = 0.0):
    """The FFN gate's activation as a function of the gate pre-activation (relufy's `Adapter.act` calls it):
    SiLU, relu(g - shift) (shift 0 for "relu"), or relu(g)^2. The ReLU family gives exact zeros.

    Examples:
        >>> import torch
        >>> gate_activation("shifted_relu", 0.5)(torch.tensor([0.25, 1.0])).tolist()
        [0.0, 0.5]
    """
    if name == "silu":
        return F.silu
    if name == "relu2":
        return lambda g: torch.relu(g).square()
    if name in ("relu", "shifted_relu"):
        return (lambda g: torch.relu(g - shift)) if shift else torch.relu
    raise UnsupportedError(f"FFN activation {name!r} is not supported (supported: {', '.join(FFN_ACTIVATIONS)})")


def rope_inv_freq(args: ModelArgs) -> torch.Tensor:
    """(head_dim/2,) fp64 inverse frequencies, with the checkpoint's scaling applied."""
    D = args.head_dim
    inv = 1.0 / (args.rope_base ** (torch.arange(0, D, 2, dtype=torch.float64) / D))
    sc = args.rope_scaling
    if not sc:
        return inv
    kind = sc.get("rope_type") or sc.get("type")
    if kind in (None, "default"):
        return inv
    if kind == "linear":
        return inv / float(sc["factor"])
    if kind == "freq_factors":  # GGUF's rope_freqs.weight (how llama.cpp stores llama3 scaling)
        return inv / torch.tensor(sc["factors"], dtype=torch.float64)
    if kind == "llama3":  # Llama 3.1: long wavelengths scaled by `factor`, short kept, smooth in between
        factor, lo, hi = float(sc["factor"]), float(sc["low_freq_factor"]), float(sc["high_freq_factor"])
        old = float(sc["original_max_position_embeddings"])
        wavelen = 2 * math.pi / inv
        smooth = (old / wavelen - lo) / (hi - lo)
        mid = (1 - smooth) * inv / factor + smooth * inv
        out = torch.where(wavelen > old / lo, inv / factor, inv)
        is_mid = (wavelen >= old / hi) & (wavelen <= old / lo)
        return torch.where(is_mid, mid, out)
    raise UnsupportedError(f"RoPE scaling type {kind!r} is not supported (supported: linear, llama3)")


def rope_tables(args: ModelArgs, seq_len: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin: (seq_len, head_dim) fp32, computed once per cache, in fp64 so long positions stay exact."""
    t = torch.arange(seq_len, dtype=torch.float64)
    freqs = torch.outer(t, rope_inv_freq(args))  # (S, D/2)
    emb = torch.cat([freqs, freqs], dim=-1)  # (S, D): HF "rotate-half" layout
    return emb.cos().float().to(device), emb.sin().float().to(device)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, T, H, D); cos/sin: (T, D). Rotates pairs (i, i + D/2), in fp32 like transformers."""
    x1, x2 = x.float().chunk(2, dim=-1)
    rot = torch.cat([-x2, x1], dim=-1)  # (B, T, H, D)
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    return (x.float() * c + rot * s).to(x.dtype)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)  # normalise in fp32 as HF does
        return self.weight * xf.to(x.dtype)


class Linear(nn.Linear):
    """nn.Linear whose CUDA calls can go through `ioaware.flat_linear` (GEMV / flat GEMM / cuBLAS, chosen per
    shape and row count from the per-GPU dataflow table); switched by `Transformer.set_linear`."""

    flat = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.flat and x.is_cuda and self.bias is None:
            y = flat_linear(x.reshape(-1, x.shape[-1]), self.weight)  # (B*T, out)
            return y.view(*x.shape[:-1], y.shape[-1])
        return F.linear(x, self.weight, self.bias)


class KVCache(nn.Module):
    """Preallocated (B, S, Hkv, D) keys and values: the layout flash_attn reads, so `k[:, :L]` is a free view."""

    def __init__(self, batch: int, seq: int, n_kv_heads: int, head_dim: int, dtype, device):
        super().__init__()
        self.register_buffer("k", torch.zeros(batch, seq, n_kv_heads, head_dim, dtype=dtype, device=device),
                             persistent=False)
        self.register_buffer("v", torch.zeros(batch, seq, n_kv_heads, head_dim, dtype=dtype, device=device),
                             persistent=False)


class Attention(nn.Module):
    def __init__(self, a: ModelArgs):
        super().__init__()
        self.n_heads, self.n_kv, self.hd = a.n_heads, a.n_kv_heads, a.head_dim
        self.wqkv = Linear(a.dim, (a.n_heads + 2 * a.n_kv_heads) * a.head_dim, bias=False)
        self.wo = Linear(a.n_heads * a.head_dim, a.dim, bias=False)
        self.cache: KVCache | None = None
        self.impl = "flash_attn"  # or "sdpa", set by Transformer.set_attention
        self.tiered = None  # a runtime.kvtiers LayerKV when the KV cache is tiered (HBM / DRAM / SSD)

    def forward(self, x, cos, sin, start: int | None, pos: torch.Tensor | None = None):
        """x: (B, T, dim). `start` (int): tokens already cached, attention on the view cache[:, :start+T] through
        flash_attn. `pos` (tensor (1,)) instead: the static-shape decode step for CUDA graphs, see below."""
        B, T, _ = x.shape
        H, Hkv, D = self.n_heads, self.n_kv, self.hd
        q, k, v = self.wqkv(x).split([H * D, Hkv * D, Hkv * D], dim=-1)
        q = apply_rope(q.view(B, T, H, D), cos, sin)  # (B, T, H, D)
        k = apply_rope(k.view(B, T, Hkv, D), cos, sin)  # (B, T, Hkv, D)
        v = v.view(B, T, Hkv, D)
        if self.tiered is not None:  # KV tiers: each tier's partial where its data lives, merged by LSE
            if start is None or start != self.tiered.tokens():
                raise ValueError(f"tiered KV cache holds {self.tiered.tokens()} tokens, asked to append at {start}")
            return self.wo(self.tiered.attend(q, k, v).reshape(B, T, H * D))
        c = self.cache
        if pos is None:
            end = start + T
            c.k[:, start:end] = k
            c.v[:, start:end] = v
            if self.impl == "flash_attn":
                # causal is aligned bottom-right, so the T new queries see the whole cache before them
                o = flash_attn(q, c.k[:, :end], c.v[:, :end], causal=True)  # (B, T, H, D)
            else:
                o = _sdpa(q, c.k[:, :end], c.v[:, :end], start)  # (B, T, H, D)
        else:
            # A CUDA graph needs fixed shapes and addresses, so the position is a tensor. flash_decode takes the
            # per-row cache length as a tensor: it appends k/v at `pos` in place and reads only keys < pos + T
            # (splits past the end exit at once). The SDPA path covers the whole cache with a validity mask.
            if self.impl == "flash_attn":
                lens = pos.expand(B)  # (B,) tokens already cached
                o = flash_decode(q, c.k, c.v, lens, k_new=k, v_new=v)  # (B, T, H, D)
            else:
                c.k.index_copy_(1, pos, k)
                c.v.index_copy_(1, pos, v)
                S = c.k.shape[1]
                mask = (torch.arange(S, device=x.device) <= pos)[None, None, None, :]  # (1, 1, 1, S)
                o = F.scaled_dot_product_attention(
                    q.transpose(1, 2), c.k.transpose(1, 2), c.v.transpose(1, 2), attn_mask=mask,
                    enable_gqa=True).transpose(1, 2)  # (B, T, H, D)
        return self.wo(o.reshape(B, T, H * D))


def _sdpa(q, k, v, start: int) -> torch.Tensor:
    """PyTorch's fused SDPA with the same bottom-right causal alignment as flash_attn. q: (B, T, H, D),
    k/v: (B, start+T, Hkv, D). SDPA's is_causal aligns top-left, which equals bottom-right only when start = 0."""
    T = q.shape[1]
    mask, causal = None, False
    if T > 1 and start == 0:
        causal = True
    elif T > 1:
        mask = torch.ones(T, start + T, dtype=torch.bool, device=q.device).tril(diagonal=start)  # (T, start+T)
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask,
                                          is_causal=causal, enable_gqa=True).transpose(1, 2)


class FeedForward(nn.Module):
    def __init__(self, a: ModelArgs):
        super().__init__()
        self.hidden = a.hidden_dim
        self.w13 = Linear(a.dim, 2 * a.hidden_dim, bias=False)  # [gate; up]
        self.w2 = Linear(a.hidden_dim, a.dim, bias=False)
        self.act_name = a.ffn_act
        self.act = gate_activation(a.ffn_act, a.ffn_act_shift)  # SiLU, or a relufied model's ReLU (exact zeros)

    def forward(self, x):
        gate, up = self.w13(x).split(self.hidden, dim=-1)  # (B, T, hidden) each
        return self.w2(self.act(gate) * up)


class Block(nn.Module):
    def __init__(self, a: ModelArgs):
        super().__init__()
        self.attention_norm = RMSNorm(a.dim, a.norm_eps)
        self.attention = Attention(a)
        self.ffn_norm = RMSNorm(a.dim, a.norm_eps)
        self.feed_forward = FeedForward(a)

    def forward(self, x, cos, sin, start, pos=None):
        h = x + self.attention(self.attention_norm(x), cos, sin, start, pos)
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(Block(args) for _ in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.output = Linear(args.dim, args.vocab_size, bias=False)
        if args.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        self.cache_len = 0
        self.kv_tiers = None  # runtime.kvtiers.KVTiers (install_kv_tiers): setup_cache then sets up tiers
        self.attn_impl = "flash_attn"
        self.linear_impl = "torch"
        self.register_buffer("cos", torch.empty(0), persistent=False)
        self.register_buffer("sin", torch.empty(0), persistent=False)

    def setup_cache(self, batch: int, seq_len: int) -> None:
        """Allocate the KV cache for `seq_len` positions once; RoPE tables are built here, not per token."""
        p = self.norm.weight  # the activation dtype (projections may be packed or bf16)
        tiered = self.kv_tiers.setup(batch, seq_len) if self.kv_tiers is not None else None
        for i, layer in enumerate(self.layers):
            layer.attention.cache = KVCache(batch, 0 if tiered else seq_len, self.args.n_kv_heads,
                                            self.args.head_dim, p.dtype, p.device)
            layer.attention.tiered = tiered[i] if tiered else None
        self.cos, self.sin = rope_tables(self.args, seq_len, p.device)
        self.cache_len = seq_len

    def set_attention(self, impl: str) -> None:
        """'flash_attn' (ioaware's kernel: Triton on CUDA; on CPU the PyTorch reference, or the Triton
        interpreter under IOAWARE_INTERPRET) or 'sdpa' (ATen's fused attention, the fast choice on CPU)."""
        if impl not in ("flash_attn", "sdpa"):
            raise ValueError(f"attention implementation {impl!r} is not one of flash_attn, sdpa")
        for layer in self.layers:
            layer.attention.impl = impl
        self.attn_impl = impl

    def set_linear(self, impl: str) -> None:
        """'torch' (F.linear, cuBLAS on CUDA) or 'flat' (`ioaware.flat_linear` on CUDA: the measured dataflow
        table picks GEMV, flat GEMM or cuBLAS per projection shape; CPU calls stay on F.linear)."""
        if impl not in ("torch", "flat"):
            raise ValueError(f"linear implementation {impl!r} is not one of torch, flat")
        for m in self.modules():
            if isinstance(m, Linear):
                m.flat = impl == "flat"
        self.linear_impl = impl

    def forward(self, tokens: torch.Tensor, start: int = 0, last_only: bool = False) -> torch.Tensor:
        """tokens: (B, T) at positions start..start+T-1 -> logits (B, T, vocab) fp32 ((B, 1, vocab) if last_only)."""
        T = tokens.shape[1]
        if start + T > self.cache_len:
            raise ValueError(f"positions {start}..{start + T - 1} do not fit the KV cache of {self.cache_len}")
        cos, sin = self.cos[start:start + T], self.sin[start:start + T]  # (T, D)
        x = self.tok_embeddings(tokens)  # (B, T, dim)
        for layer in self.layers:
            x = layer(x, cos, sin, start)
        if last_only:
            x = x[:, -1:]
        return self.output(self.norm(x)).float()

    def decode_static(self, token: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """One decode step with tensor-valued position (fixed shapes, capturable in a CUDA graph).
        token: (B, 1) long, pos: (1,) long -> logits (B, 1, vocab) fp32."""
        cos, sin = self.cos.index_select(0, pos), self.sin.index_select(0, pos)  # (1, D)
        x = self.tok_embeddings(token)  # (B, 1, dim)
        for layer in self.layers:
            x = layer(x, cos, sin, None, pos)
        return self.output(self.norm(x)).float()


# Hugging Face Llama parameter names -> this module's (fused) parameters.
def load_hf_state_dict(model: Transformer, sd: Mapping[str, torch.Tensor], ffn: bool = True,
                       assign: bool = False) -> None:
    """Copy HF-named weights (model.layers.{i}.self_attn.q_proj.weight, ...) into the model, fusing q/k/v and
    gate/up. Missing or misshapen tensors raise KeyError/ValueError naming the tensor. ffn=False: everything but
    the FFN (a streamed model's FFN weights stay in the flash store). assign=True: the given tensors (in their own
    dtype) become the parameters instead of being copied into them."""
    a = model.args

    def get(name: str, shape: tuple[int, ...]) -> torch.Tensor:
        if name not in sd:
            raise KeyError(f"checkpoint has no tensor {name!r}")
        t = sd[name]
        if tuple(t.shape) != shape:
            raise ValueError(f"tensor {name!r} has shape {tuple(t.shape)}, expected {shape} from the model config")
        return t

    H, Hkv, D, d, h = a.n_heads, a.n_kv_heads, a.head_dim, a.dim, a.hidden_dim
    params = dict(model.named_parameters())

    def put(name: str, t: torch.Tensor) -> None:  # copied as soon as read: one source tensor alive at a time
        if assign:  # the tensor becomes the parameter (a model built on meta allocates nothing of its own)
            owner, _, attr = name.rpartition(".")
            setattr(model.get_submodule(owner), attr, nn.Parameter(t.contiguous(), requires_grad=False))
            return
        with torch.no_grad():
            params[name].copy_(t)

    put("tok_embeddings.weight", get("model.embed_tokens.weight", (a.vocab_size, d)))
    put("norm.weight", get("model.norm.weight", (d,)))
    if not a.tie_embeddings:
        put("output.weight", get("lm_head.weight", (a.vocab_size, d)))
    for i in range(a.n_layers):
        p = f"model.layers.{i}."
        put(f"layers.{i}.attention_norm.weight", get(p + "input_layernorm.weight", (d,)))
        put(f"layers.{i}.ffn_norm.weight", get(p + "post_attention_layernorm.weight", (d,)))
        put(f"layers.{i}.attention.wqkv.weight", torch.cat([
            get(p + "self_attn.q_proj.weight", (H * D, d)), get(p + "self_attn.k_proj.weight", (Hkv * D, d)),
            get(p + "self_attn.v_proj.weight", (Hkv * D, d))]))
        put(f"layers.{i}.attention.wo.weight", get(p + "self_attn.o_proj.weight", (d, H * D)))
        if not ffn:
            continue
        put(f"layers.{i}.feed_forward.w13.weight", torch.cat([
            get(p + "mlp.gate_proj.weight", (h, d)), get(p + "mlp.up_proj.weight", (h, d))]))
        put(f"layers.{i}.feed_forward.w2.weight", get(p + "mlp.down_proj.weight", (d, h)))
