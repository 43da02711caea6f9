"""One CPU decode step (batch 1, one token) as few ATen calls as the math allows.

On a small model the CPU decode step is bound by per-call overhead as much as by bytes: SmolLM2-135M's 30 layers run
~45 ATen calls each through the modules (dtype round trips per projection, RoPE's chunk/cat/neg, a mean and an rsqrt
per norm, SDPA's transposes), each a few microseconds of dispatch while its arithmetic is nanoseconds. This step does
the same math in ~22 calls a layer, no module calls, and reads the KV cache the prefill wrote:

- RMSNorm: `F.rms_norm` (one fused call) in fp32, rounded to bf16 once, as the int4 kernel reads it.
- RoPE on q and k together, HF's rotate-half layout: x·cos + flip_halves(x)·sin±, the sign folded into the table,
  and 1/sqrt(D) folded into q's rows: 3 calls for both.
- attention: SDPA on the cache's filled prefix (GQA without repeating K/V).
- SwiGLU: act(gate)·up in fp32 on the fused w13 output, as the module path does (act: the FFN's gate activation,
  SiLU, or a relufied model's ReLU).

The projections call the packed int4 kernel directly (`_weight_int4pack_mm_for_cpu`); any other projection module
(dense, bf16, int8) is called as a module. Logits agree with the module path to fp32 rounding order
(tests/runtime/test_cpu_decode.py); `generate(decode_step="module")` keeps the module path selectable.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .model import Attention, Block, FeedForward, RMSNorm, Transformer
from .packed_cache import Int8Linear
from .quant import GROUP, BF16Linear, Int4Linear

_INT4_MM = None


def _proj(mod):
    """A projection as a function of a bf16 (1, in) row -> (1, out) (bf16 or fp32)."""
    global _INT4_MM
    if isinstance(mod, Int4Linear):
        if _INT4_MM is None:
            _INT4_MM = torch.ops.aten._weight_int4pack_mm_for_cpu
        packed, sz, mm = mod.packed, mod.scales_zeros, _INT4_MM
        return lambda x: mm(x, packed, GROUP, sz)
    return mod


def supports(model) -> str | None:
    """None if the fused step can run this model, else why not (the module path then runs)."""
    if type(model) is not Transformer:
        return f"{type(model).__name__} is not the plain Transformer"
    if model.norm.weight.device.type != "cpu":
        return "not on CPU"
    if getattr(model, "tp", None) is not None or getattr(model, "kv_tiers", None) is not None:
        return "tensor-parallel or tiered-KV model"
    for b in model.layers:
        if type(b) is not Block or type(b.attention) is not Attention or type(b.feed_forward) is not FeedForward \
                or type(b.attention_norm) is not RMSNorm or type(b.ffn_norm) is not RMSNorm:
            return "a layer is not the plain Block"
        if b.attention.tiered is not None:
            return "tiered KV cache"
        projs = (b.attention.wqkv, b.attention.wo, b.feed_forward.w13, b.feed_forward.w2)
        if not all(isinstance(p, (Int4Linear, BF16Linear)) for p in projs):
            return "projections are not packed int4 / bf16 (a dense model: the module path)"
    if not isinstance(model.output, (Int8Linear, BF16Linear)):
        return "the output head is not int8 / bf16"
    return None


class CPUDecodeStep:
    """`step(token (1, 1) long, pos int) -> logits (1, 1, vocab) fp32`, writing the token's K/V at `pos` into the
    model's KV cache (set up and prefilled by the caller, as for the module path)."""

    def __init__(self, model: Transformer):
        why = supports(model)
        if why:
            raise ValueError(f"the fused CPU decode step does not run this model: {why}")
        self.model = model
        a = model.args
        self.eps, self.dim = a.norm_eps, a.dim
        self.layers = []
        for b in model.layers:
            at = b.attention
            self.layers.append((b.attention_norm.weight, _proj(at.wqkv), _proj(at.wo), b.ffn_norm.weight,
                                _proj(b.feed_forward.w13), _proj(b.feed_forward.w2), at.n_heads, at.n_kv, at.hd,
                                b.feed_forward.hidden, b.feed_forward.act))
        self.embed, self.head, self.norm_w = model.tok_embeddings, _proj(model.output), model.norm.weight
        self._tables = None  # (cache id, cos, sin) built from the model's RoPE tables after setup_cache

    def _rope(self, pos: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and signed sin for position `pos`, (H + Hkv, 2, D/2), q's rows scaled by 1/sqrt(D)."""
        m = self.model
        key = (id(m.layers[0].attention.cache), m.sin.data_ptr())
        if self._tables is None or self._tables[0] != key:  # once per setup_cache
            _, _, _, _, _, _, H, Hkv, D, _, _ = self.layers[0]
            sin = torch.cat([-m.sin[:, :D // 2], m.sin[:, D // 2:]], dim=-1)  # rot(x)·sin = flip(x)·(±sin)
            scale = torch.ones(H + Hkv, 1, 1)
            scale[:H] = 1 / math.sqrt(D)  # softmax scale folded into q (SDPA then runs with scale=1)
            self._tables = (key, sin, scale)
        _, sin, scale = self._tables
        D2 = sin.shape[1] // 2
        return m.cos[pos].view(1, 2, D2) * scale, sin[pos].view(1, 2, D2) * scale  # (H+Hkv, 2, D/2) each

    @torch.inference_mode()
    def __call__(self, token: torch.Tensor, pos: int) -> torch.Tensor:
        m, eps, dim, bf16 = self.model, self.eps, (self.dim,), torch.bfloat16
        cos, sin = self._rope(pos)
        x = self.embed(token.view(1, 1)).view(1, -1).float()  # (1, dim) fp32 residual stream
        end = pos + 1
        for (wn1, qkv_f, wo_f, wn2, w13_f, w2_f, H, Hkv, D, hid, act), blk in zip(self.layers, m.layers):
            c = blk.attention.cache
            h = F.rms_norm(x, dim, wn1, eps).to(bf16)
            qkv = qkv_f(h).float()  # (1, (H + 2 Hkv) D)
            qk = qkv[0, :(H + Hkv) * D].view(H + Hkv, 2, D // 2)
            qk = torch.addcmul(qk * cos, qk.flip(1), sin).view(H + Hkv, D)  # RoPE, q pre-scaled
            c.k[0, pos] = qk[H:]
            c.v[0, pos] = qkv[0, (H + Hkv) * D:].view(Hkv, D)
            o = F.scaled_dot_product_attention(
                qk[:H].view(1, H, 1, D), c.k[:, :end].transpose(1, 2), c.v[:, :end].transpose(1, 2),
                scale=1.0, enable_gqa=True)  # (1, H, 1, D)
            x = x + wo_f(o.view(1, H * D).to(bf16))
            gu = w13_f(F.rms_norm(x, dim, wn2, eps).to(bf16)).float()  # (1, 2 hidden): [gate, up]
            x = x + w2_f((act(gu[:, :hid]) * gu[:, hid:]).to(bf16))
        return self.head(F.rms_norm(x, dim, self.norm_w, eps).to(bf16)).float().view(1, 1, -1)
