"""A tiny random Llama: ioaware's model against transformers' LlamaForCausalLM with the same weights, fp32.

These run ioaware.flash_attn as the environment says (CI sets IOAWARE_INTERPRET=1: the Triton kernel through
the interpreter), so the kernel-in-the-model path is covered here."""

from __future__ import annotations

import pytest
import torch

from ioaware.env import settings
from ioaware.kernels import last_backend
from ioaware.kernels._dispatch import _LAST
from ioaware.runtime import ModelArgs, SamplingConfig, Transformer, build_model, generate, load_checkpoint
from ioaware.runtime.llm.gguf_loader import permute_qk, unpermute_qk
from ioaware.runtime.llm.model import load_hf_state_dict
from ioaware.runtime.llm.safetensors_loader import args_from_config

from .helpers import byte_vocab, tiny_hf_model, write_gguf

VOCAB = len(byte_vocab()[0])


def ours_from_hf(hf) -> Transformer:
    args = args_from_config(hf.config.to_dict())
    m = Transformer(args).float().eval()
    load_hf_state_dict(m, hf.state_dict())
    return m


def assert_close(a, b, tol=2e-5):
    err = (a - b).abs().max().item()
    scale = b.abs().max().item()
    assert err <= tol * max(scale, 1.0), f"max abs err {err:.3g} vs scale {scale:.3g}"


@pytest.mark.parametrize("rope_scaling", [None, {"rope_type": "linear", "factor": 2.0},
                                          {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                           "high_freq_factor": 4.0, "original_max_position_embeddings": 16}],
                         ids=["rope-plain", "rope-linear", "rope-llama3"])
def test_prefill_and_decode_match_transformers(rope_scaling):
    kw = {"rope_scaling": rope_scaling} if rope_scaling else {}
    hf = tiny_hf_model(VOCAB, seed=1, rope_theta=500.0, **kw)
    ours = ours_from_hf(hf)
    torch.manual_seed(0)
    ids = torch.randint(0, VOCAB, (1, 37))
    with torch.inference_mode():
        ref = hf(ids).logits  # (1, 37, V)
        ours.setup_cache(1, 40)
        assert_close(ours(ids[:, :29], 0), ref[:, :29])  # prefill
        assert last_backend("flash_attn") == ("interpret" if settings().interpret else "reference")
        for t in range(29, 37):  # then one token at a time through the KV cache
            assert_close(ours(ids[:, t:t + 1], t), ref[:, t:t + 1])
        ours.setup_cache(1, 40)  # a chunked prefill: the second chunk sees the first through the cache
        ours(ids[:, :20], 0)
        assert_close(ours(ids[:, 20:37], 20), ref[:, 20:37])


@pytest.mark.parametrize("impl", ["sdpa", "static-flash_decode", "static-sdpa"])
def test_other_attention_paths_match_flash_attn(impl):
    """The SDPA path (fast CPU default) and the static-shape decode step (what a CUDA graph captures), through
    flash_decode (appends in place, reads cache_seqlens) and through SDPA with a validity mask."""
    hf = tiny_hf_model(VOCAB, seed=2, tie_word_embeddings=False)
    ours = ours_from_hf(hf)
    torch.manual_seed(0)
    ids = torch.randint(0, VOCAB, (1, 24))
    with torch.inference_mode():
        ref = hf(ids).logits
        ours.setup_cache(1, 24)
        if impl == "sdpa":
            ours.set_attention("sdpa")
            assert_close(ours(ids[:, :10], 0), ref[:, :10])
            assert_close(ours(ids[:, 10:17], 10), ref[:, 10:17])
            for t in range(17, 24):
                assert_close(ours(ids[:, t:t + 1], t), ref[:, t:t + 1])
        else:
            ours(ids[:, :16], 0)
            ours.set_attention(impl.split("-")[1] if impl == "static-sdpa" else "flash_attn")
            _LAST.pop("flash_decode", None)
            for t in range(16, 24):
                assert_close(ours.decode_static(ids[:, t:t + 1], torch.tensor([t])), ref[:, t:t + 1])
            if impl == "static-flash_decode":
                assert last_backend("flash_decode") in ("interpret", "reference")


def test_qk_permutation_round_trip():
    w = torch.randn(4 * 16, 8)
    assert torch.equal(unpermute_qk(permute_qk(w, 4), 4), w)
    assert not torch.equal(permute_qk(w, 4), w)


@pytest.mark.parametrize("qtype", [None, "Q8_0"], ids=["F32", "Q8_0"])
def test_gguf_round_trip_matches_transformers(tmp_path, qtype):
    """Write the HF weights as llama.cpp would (permuted q/k), load through our GGUF loader, compare logits
    with transformers on the weights our loader dequantised (and, for F32, on the original weights)."""
    hf = tiny_hf_model(VOCAB, seed=3)
    path = write_gguf(tmp_path / "tiny.gguf", hf, qtype=qtype)
    ck = load_checkpoint(path)
    assert ck.args.n_kv_heads == 2 and ck.args.head_dim == 16 and ck.args.tie_embeddings
    if qtype is None:
        for k, v in hf.state_dict().items():
            if k != "lm_head.weight":
                assert torch.equal(ck.state_dict[k], v), k
    hf.load_state_dict({**ck.state_dict, "lm_head.weight": ck.state_dict["model.embed_tokens.weight"]})
    model = build_model(ck, "cpu")
    ids = torch.randint(0, VOCAB, (1, 19))
    with torch.inference_mode():
        model.setup_cache(1, 19)
        assert_close(model(ids, 0), hf(ids).logits)


def test_quantized_weights_close_to_dense(tmp_path):
    """Q4_1 blocks packed for the int4 CPU matmul give the dequantised model's logits up to bf16 rounding."""
    hf = tiny_hf_model(VOCAB, seed=4)
    ck = load_checkpoint(write_gguf(tmp_path / "q4.gguf", hf, qtype="Q4_1"))
    dense = build_model(ck, "cpu", weights="dense")
    quant = build_model(ck, "cpu", weights="quantized")
    assert quant.weight_format == "quantized" and dense.weight_format == "dense"
    ids = torch.randint(0, VOCAB, (1, 21))
    with torch.inference_mode():
        dense.setup_cache(1, 21)
        quant.setup_cache(1, 21)
        a, b = quant(ids, 0), dense(ids, 0)
    rel = ((a - b).norm() / b.norm()).item()
    assert rel < 2e-2, rel
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() > 0.9


def test_generate_greedy_and_sampling(tmp_path):
    hf = tiny_hf_model(VOCAB, seed=5)
    ck = load_checkpoint(write_gguf(tmp_path / "g.gguf", hf))
    model = build_model(ck, "cpu")
    prompt = ck.tokenizer.encode("the cat in the hat")
    pieces = []
    res = generate(model, ck.tokenizer, prompt, 12, on_text=pieces.append, stop_at_eos=False)
    ref = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                      max_new_tokens=12, do_sample=False, eos_token_id=None,
                      pad_token_id=0)[0, len(prompt):].tolist()
    assert res.tokens == ref
    assert "".join(pieces) == res.text == ck.tokenizer.decode(ref)
    s = res.summary
    assert s["prompt_tokens"] == len(prompt) and s["generated_tokens"] == 12 and s["decode_tokens"] == 11
    assert s["decode_tok_s"] > 0 and s["weight_bytes_per_token"] > 0 and s["peak_memory_bytes"] > 0
    a = generate(model, ck.tokenizer, prompt, 12, SamplingConfig(1.0, 0.9, seed=7), stop_at_eos=False).tokens
    b = generate(model, ck.tokenizer, prompt, 12, SamplingConfig(1.0, 0.9, seed=7), stop_at_eos=False).tokens
    c = generate(model, ck.tokenizer, prompt, 12, SamplingConfig(1.0, 0.9, seed=8), stop_at_eos=False).tokens
    assert a == b and a != c


def test_model_args_param_count():
    a = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=96, vocab_size=VOCAB, head_dim=16)
    m = Transformer(a)
    assert a.n_params == sum(p.numel() for p in m.parameters())
