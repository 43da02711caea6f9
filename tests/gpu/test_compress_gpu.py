"""`ioaware compress svd --device cuda`: calibration, SVDs, the update (bf16 autocast) and evaluation on the GPU
(run on the device machine: `pytest -m gpu tests/gpu/test_compress_gpu.py`). The tiny random Llama of
tests/runtime/helpers.py, so the test needs no model file; the real SmolLM2 run is dev/compress/run_device.sh.

Tolerance: the CUDA factors against the CPU's (both from fp64 SVDs of fp32 inputs; the covariances differ by the
GPU's fp32 products, ~1e-6 relative) agree to 1e-4 relative in their products U V."""

from __future__ import annotations

import math

import pytest
import torch

from ioaware.runtime import load_checkpoint
from ioaware.runtime.compress import api
from ioaware.runtime.compress.api import calibration_covariances, dense_model
from ioaware.runtime.compress.compress import factorize_checkpoint
from tests.runtime.helpers import byte_vocab, tiny_hf_model, write_gguf

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

VOCAB = len(byte_vocab()[0])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("compress_gpu")
    return write_gguf(d / "tiny.gguf", tiny_hf_model(VOCAB, seed=5, tie_word_embeddings=False))


def _rel(a, b) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return ((a - b).norm() / b.norm()).item()


def test_whitened_factors_on_cuda_match_the_cpu(tiny, monkeypatch):
    monkeypatch.delenv("IOAWARE_INTERPRET", raising=False)
    ckpt = load_checkpoint(tiny)
    out = {}
    for dev in ("cpu", "cuda"):
        covs, _ = calibration_covariances(ckpt, 512, model=dense_model(ckpt, dev))
        tensors, _, rep = factorize_checkpoint(ckpt, 0.5, covs, device=dev)
        out[dev] = tensors, rep
    (tc, rc), (tg, rg) = out["cpu"], out["cuda"]
    assert tg["layers.0.feed_forward.vg"].is_cuda
    for name in ("attention.wo", "feed_forward.w2"):
        for i in range(ckpt.args.n_layers):
            k = f"layers.{i}.{name}"
            assert _rel(tg[k + ".u"] @ tg[k + ".v"], tc[k + ".u"] @ tc[k + ".v"]) < 1e-4, k
    for k, e in rc["relative_error_mean"].items():
        assert rg["relative_error_mean"][k] == pytest.approx(e, rel=1e-4), k


def test_sweep_on_cuda_with_generated_text_and_bf16_update(tiny, monkeypatch):
    monkeypatch.delenv("IOAWARE_INTERPRET", raising=False)
    monkeypatch.setattr(api, "GEN_TOKENS_PER_PROMPT", 64)
    res = api.sweep(load_checkpoint(tiny), [1.0, 0.5], torch.float32, eval_tokens=512, whiten_only=True, update=8,
                    update_lr=3e-4, device="cuda", update_tokens=2048, update_batch=4,
                    eval_sets=("shipped", "generated", "prose"), eval_gen_tokens=512)
    assert res["device"].startswith("cuda") and res["update_precision"] == "bf16"
    assert res["calibration_text"]["name"] == "generated" and res["calibration_tokens"] == 2048
    full, full_u, half, half_u = res["rows"]
    assert full["ppl_ratio"] == pytest.approx(1.0, abs=2e-3)  # ratio 1.0 in fp32 factors reproduces the model
    for r in res["rows"]:
        assert all(math.isfinite(e["ppl"]) for e in r["eval"].values())
    assert half_u["update"]["precision"] == "bf16" and half_u["update"]["device"].startswith("cuda")
    assert half_u["update"]["loss_train_after"] < half_u["update"]["loss_train_before"]
    assert half_u["ppl_train"] < half["ppl_train"]
