"""Decoder-only transformer shapes and what one decode token reads: the GeMVs of a layer, weight and KV bytes.

The shapes are the models' published configs (Hugging Face `config.json` of facebook/opt-* and
meta-llama/Llama-2-*-hf). Biases and norms (< 0.1% of the bytes) are left out; the embedding lookup reads one row and
is left out; the LM head (vocab x d) is a GeMV every token reads in full (OPT ties it to the embedding, Llama-2 does
not; either way its bytes are read).

GeMVs sharing one input are fused, as an accelerator streams them as one matrix: Q, K and V form one GeMV, and a
gated FFN's gate and up projections another. The iomodel (layer 2) has no per-model decode formula; this module is the
simulators' one place for it (the InstInfer model in `ioaware.sim.csd` reuses it).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DecoderShape:
    name: str
    layers: int
    d: int  # hidden size
    ffn: int  # FFN intermediate size
    heads: int
    kv_heads: int
    vocab: int
    gated: bool  # SwiGLU (gate and up projections) vs one up projection
    source: str = ""

    @property
    def head_dim(self) -> int:
        return self.d // self.heads

    @property
    def kv_dim(self) -> int:
        """Width of K (and of V) per token and layer: kv_heads x head_dim (GQA shrinks it)."""
        return self.kv_heads * self.head_dim

    def layer_gemvs(self) -> list[tuple[str, int, int]]:
        """(name, out, in) of one layer's weight GeMVs in the order a token runs them."""
        up = self.ffn * (2 if self.gated else 1)
        return [("qkv", self.d + 2 * self.kv_dim, self.d), ("o", self.d, self.d),
                ("up", up, self.d), ("down", self.d, self.ffn)]

    def head_gemv(self) -> tuple[str, int, int]:
        return ("lm_head", self.vocab, self.d)

    def weight_elems(self) -> int:
        """Weights one decode token reads: every layer's matrices plus the LM head."""
        per_layer = sum(o * i for _, o, i in self.layer_gemvs())
        return self.layers * per_layer + self.vocab * self.d

    def kv_elems(self, ctx: int, batch: int = 1) -> int:
        """K and V elements one decode step reads over `ctx` cached tokens (all layers)."""
        return 2 * self.layers * batch * ctx * self.kv_dim

    def attention_flops(self, ctx: int, batch: int = 1) -> float:
        """q.K^T and p.V over ctx tokens for every query head, all layers: 4 x ctx x d per token and layer."""
        return 4.0 * self.layers * batch * ctx * self.d


_HF = "Hugging Face config.json of "
MODELS: dict[str, DecoderShape] = {m.name: m for m in [
    DecoderShape("opt-6.7b", 32, 4096, 16384, 32, 32, 50272, False, _HF + "facebook/opt-6.7b"),
    DecoderShape("opt-13b", 40, 5120, 20480, 40, 40, 50272, False, _HF + "facebook/opt-13b"),
    DecoderShape("opt-30b", 48, 7168, 28672, 56, 56, 50272, False, _HF + "facebook/opt-30b"),
    DecoderShape("opt-66b", 64, 9216, 36864, 72, 72, 50272, False, _HF + "facebook/opt-66b"),
    DecoderShape("llama2-7b", 32, 4096, 11008, 32, 32, 32000, True, _HF + "meta-llama/Llama-2-7b-hf"),
    DecoderShape("llama2-13b", 40, 5120, 13824, 40, 40, 32000, True, _HF + "meta-llama/Llama-2-13b-hf"),
    DecoderShape("llama2-70b", 80, 8192, 28672, 64, 8, 32000, True, _HF + "meta-llama/Llama-2-70b-hf"),
]}


def get_model(name: str) -> DecoderShape:
    key = name.lower().replace("llama-2", "llama2").replace("_", "-")
    if key not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    return MODELS[key]
