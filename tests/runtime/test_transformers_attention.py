"""transformers models with attn_implementation="ioaware" (ioaware.flash_attn_interface.register_transformers).

A tiny random Llama runs the Triton kernels through the interpreter: logits and parameter gradients against an
fp64 eager model, within 2x of transformers' own SDPA path in fp32 (the error rule); a left-padded batch; greedy
generation. SmolLM2-135M through the same ops is in test_transformers_smollm2.py (one GGUF load for it and the
continuous-batching test).
"""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("transformers")

import ioaware.flash_attn_interface as fai  # noqa: E402
from ioaware.kernels import last_backend  # noqa: E402

from .helpers import tiny_hf_model  # noqa: E402

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
