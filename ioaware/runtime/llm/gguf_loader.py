"""Read a Llama-family GGUF file: metadata -> ModelArgs, tensors -> HF-named, HF-layout fp32 weights.

Two facts of llama.cpp's converter are undone here:
- tensor shapes are stored fastest-dim first ([in, out]); the numpy data is already (out, in), PyTorch's layout.
- q_proj/k_proj rows are permuted so that RoPE rotates adjacent pairs (2i, 2i+1); transformers rotates
  (i, i + D/2). `unpermute_qk` restores the HF order so the model (and transformers) use rotate-half RoPE.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ...errors import UnsupportedError
from .model import ModelArgs

# Architectures whose GGUF tensors and hyper-parameters are the Llama ones.
LLAMA_ARCHS = ("llama",)

# GGML tensor types we dequantise (through gguf.quants.dequantize); others -> UnsupportedError.
SUPPORTED_TYPES = ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K",
                   "Q6_K")

# GGUF tensor name (per block) -> HF name
_BLOCK_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_TOP_NAMES = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
              "output.weight": "lm_head.weight"}


def open_gguf(path: str | Path):
    """gguf.GGUFReader with bad files turned into one clear ValueError."""
    import gguf

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    try:
        return gguf.GGUFReader(str(path))
    except Exception as e:  # the reader raises ValueError/KeyError/IndexError on truncated or foreign files
        raise ValueError(f"{path} is not a readable GGUF file ({type(e).__name__}: {e})") from None


def field_value(reader, key: str, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    return f.contents()


def unpermute_qk(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Inverse of llama.cpp's `permute`: rows grouped per head as (D/2, 2) pairs -> HF's (2, D/2) halves.
    w: (n_head * D, in)."""
    out, inp = w.shape
    return w.reshape(n_head, out // n_head // 2, 2, inp).transpose(1, 2).reshape(out, inp)


def permute_qk(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp's converter permutation (HF -> GGUF); used by tests to write GGUF files."""
    out, inp = w.shape
    return w.reshape(n_head, 2, out // n_head // 2, inp).transpose(1, 2).reshape(out, inp)


def read_args(reader) -> ModelArgs:
    arch = field_value(reader, "general.architecture")
    if arch is None:
        raise ValueError("GGUF file has no general.architecture; it is not a model file")
    if arch not in LLAMA_ARCHS:
        raise UnsupportedError(f"architecture {arch!r} is not supported (supported: {', '.join(LLAMA_ARCHS)})")

    def need(key):
        v = field_value(reader, f"{arch}.{key}")
        if v is None:
            raise ValueError(f"GGUF metadata lacks {arch}.{key}")
        return v

    n_heads = int(need("attention.head_count"))
    dim = int(need("embedding_length"))
    names = {t.name for t in reader.tensors}
    vocab = field_value(reader, f"{arch}.vocab_size")
    if vocab is None:
        vocab = len(field_value(reader, "tokenizer.ggml.tokens") or [])
    scaling = None
    stype = field_value(reader, f"{arch}.rope.scaling.type")
    if stype not in (None, "none"):
        if stype != "linear":
            raise UnsupportedError(f"RoPE scaling type {stype!r} is not supported (supported: linear)")
        scaling = {"rope_type": "linear", "factor": float(field_value(reader, f"{arch}.rope.scaling.factor"))}
    if "rope_freqs.weight" in names:
        t = next(t for t in reader.tensors if t.name == "rope_freqs.weight")
        scaling = {"rope_type": "freq_factors", "factors": [float(x) for x in np.asarray(t.data).ravel()]}
    return ModelArgs(
        dim=dim, n_layers=int(need("block_count")), n_heads=n_heads,
        n_kv_heads=int(field_value(reader, f"{arch}.attention.head_count_kv", n_heads)),
        hidden_dim=int(need("feed_forward_length")), vocab_size=int(vocab),
        head_dim=int(field_value(reader, f"{arch}.attention.key_length", dim // n_heads)),
        norm_eps=float(field_value(reader, f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
        rope_base=float(field_value(reader, f"{arch}.rope.freq_base", 10000.0)), rope_scaling=scaling,
        max_seq_len=int(field_value(reader, f"{arch}.context_length", 2048)),
        tie_embeddings="output.weight" not in names, arch=arch)


def dequantize(t) -> torch.Tensor:
    """One GGUF tensor -> fp32 torch tensor in PyTorch layout (out, in)."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize as _deq

    qtype = GGMLQuantizationType(t.tensor_type)
    if qtype.name not in SUPPORTED_TYPES:
        raise UnsupportedError(f"tensor {t.name!r} has quant type {qtype.name}, which is not supported "
                               f"(supported: {', '.join(SUPPORTED_TYPES)})")
    shape = tuple(int(x) for x in reversed(t.shape))  # GGUF lists the fastest dim first
    arr = _deq(np.asarray(t.data), qtype).astype(np.float32, copy=False).reshape(shape)
    if not arr.flags.writeable or not arr.flags.c_contiguous:  # F32/F16 tensors are read-only views of the mmap
        arr = np.array(arr, copy=True, order="C")
    return torch.from_numpy(arr)


def read_state_dict(reader, args: ModelArgs) -> dict[str, torch.Tensor]:
    """All model tensors, dequantised to fp32, named and laid out as in a Hugging Face Llama checkpoint."""
    sd = {}
    for t in reader.tensors:
        if t.name == "rope_freqs.weight":
            continue
        if t.name in _TOP_NAMES:
            hf = _TOP_NAMES[t.name]
        else:
            parts = t.name.split(".", 2)  # blk, i, rest
            if parts[0] != "blk" or len(parts) != 3 or parts[2] not in _BLOCK_NAMES:
                raise UnsupportedError(f"unexpected tensor {t.name!r} for a {args.arch} model")
            hf = f"model.layers.{parts[1]}.{_BLOCK_NAMES[parts[2]]}"
        w = dequantize(t)
        if hf.endswith("q_proj.weight"):
            w = unpermute_qk(w, args.n_heads)
        elif hf.endswith("k_proj.weight"):
            w = unpermute_qk(w, args.n_kv_heads)
        sd[hf] = w
    return sd


def tensor_type_counts(reader) -> dict[str, int]:
    from gguf import GGMLQuantizationType

    out: dict[str, int] = {}
    for t in reader.tensors:
        n = GGMLQuantizationType(t.tensor_type).name
        out[n] = out.get(n, 0) + 1
    return out
