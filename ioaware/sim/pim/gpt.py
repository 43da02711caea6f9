"""The 8 GPT models of PIM-GPT's evaluation and the operators of one decode step.

Shapes: GPT-2 from Radford et al. 2019 (Table 2) and the Hugging Face configs (vocab 50257, context 1024); GPT-3 from
Brown et al. 2020 (Table 2.1; vocab 50257, context 2048). GPT-3 XL lists 24 heads of 128 for d_model 2048, which does
not divide; we use 16 heads of 128 as reimplementations do. GPT-3's alternating locally banded sparse attention is not
modelled: every layer attends densely (at the context lengths used here the difference is a small part of the step).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GPTConfig:
    name: str
    n_layers: int
    d_model: int
    n_heads: int
    vocab: int = 50257
    max_context: int = 1024

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    @property
    def d_ff(self) -> int:
        return 4 * self.d_model

    @property
    def params(self) -> int:
        """Weights (no biases or LayerNorm gains), tied embedding counted once, position table included."""
        d = self.d_model
        return self.n_layers * 12 * d * d + self.vocab * d + self.max_context * d


MODELS: dict[str, GPTConfig] = {
    "gpt2-small": GPTConfig("gpt2-small", 12, 768, 12),
    "gpt2-medium": GPTConfig("gpt2-medium", 24, 1024, 16),
    "gpt2-large": GPTConfig("gpt2-large", 36, 1280, 20),
    "gpt2-xl": GPTConfig("gpt2-xl", 48, 1600, 25),
    "gpt3-small": GPTConfig("gpt3-small", 12, 768, 12, max_context=2048),
    "gpt3-medium": GPTConfig("gpt3-medium", 24, 1024, 16, max_context=2048),
    "gpt3-large": GPTConfig("gpt3-large", 24, 1536, 16, max_context=2048),
    "gpt3-xl": GPTConfig("gpt3-xl", 24, 2048, 16, max_context=2048),
}


def get_model(name: str) -> GPTConfig:
    key = name.lower()
    if key not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    return MODELS[key]


@dataclass(frozen=True)
class Vmm:
    """y = W x in the banks. `n_out` weight rows of `k_in` elements; `passes` independent products with a different x
    each (attention S.V: one per head, `n_out` rows each); `outputs_per_row` > 1 when one stored row yields several
    results (attention scores: the MAC unit restarts its sum at each head's boundary inside a key row)."""

    name: str
    n_out: int
    k_in: int
    passes: int = 1
    outputs_per_row: int = 1
    kind: str = "weights"  # "weights" or "attention"


@dataclass(frozen=True)
class AsicOp:
    """A vector op on the ASIC over `elems` values, `passes` sweeps (LayerNorm 3: mean, variance, normalise)."""

    name: str
    elems: int
    passes: int = 1


@dataclass(frozen=True)
class KvWrite:
    """Append this token's key (one row of d) and value (one element in each of the d rows of V^T) to the cache."""

    name: str
    d: int


def layer_ops(m: GPTConfig, context: int) -> list:
    """One decoder layer of one decode step at `context` cached tokens (the new token included), in data order.
    Q, K and V are one concatenated product, as PIM-GPT concatenates matrices for row-buffer hits."""
    d, h = m.d_model, m.n_heads
    return [
        AsicOp("ln1", d, 3),
        Vmm("qkv", 3 * d, d),
        KvWrite("kv_write", d),
        Vmm("score", context, d, outputs_per_row=h, kind="attention"),
        AsicOp("softmax", context * h, 3),
        Vmm("sv", m.d_head, context, passes=h, kind="attention"),
        Vmm("proj", d, d),
        AsicOp("residual1", d, 1),
        AsicOp("ln2", d, 3),
        Vmm("ffn1", m.d_ff, d),
        AsicOp("gelu", m.d_ff, 1),
        Vmm("ffn2", d, m.d_ff),
        AsicOp("residual2", d, 1),
    ]


def head_ops(m: GPTConfig) -> list:
    """After the last layer: final LayerNorm, the tied LM head (vocab x d), greedy argmax."""
    return [AsicOp("ln_f", m.d_model, 3), Vmm("lm_head", m.vocab, m.d_model), AsicOp("argmax", m.vocab, 1)]
