"""`ioaware compress svd --device cuda`: calibration, SVDs, the update (bf16 autocast) and evaluation on the GPU
(run on the device machine: `pytest -m gpu tests/gpu/test_compress_gpu.py`). The tiny random Llama of
tests/runtime/helpers.py, so the test needs no model file; the real SmolLM2 run is dev/compress/run_device.sh.

Tolerances: the covariances agree to 1e-5 relative (fp32 products on each device); the factors computed on the GPU
from the CPU's covariances agree with the CPU's to 1e-6 in their products U V (fp64 SVDs); the truncation errors
from each device's own covariances agree to 1e-3 relative (the subspace itself may move at near-tied singular
values, so the factors are not compared across covariances)."""

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
    covs = {dev: calibration_covariances(ckpt, 512, model=dense_model(ckpt, dev))[0] for dev in ("cpu", "cuda")}
    # the covariances: the same sums, fp32 products on each device (~1e-6 relative)
    for i, (c, g) in enumerate(zip(covs["cpu"], covs["cuda"])):
        for site in c:
            assert _rel(g[site], c[site]) < 1e-5, (i, site)
    # the whitening and SVDs (fp64) on the GPU against the CPU's on the same covariances. Not compared across the
    # two covariances: a truncated SVD's subspace moves by ~|dC| / (the singular-value gap at the cut), and the tiny
    # random model's spectrum has near-ties there (2026-12-03, H200: 3.5e-4 on the products from 1e-6 inputs)
    same = [{site: c.to("cuda") for site, c in layer.items()} for layer in covs["cpu"]]
    tc, _, rc = factorize_checkpoint(ckpt, 0.5, covs["cpu"], device="cpu")
    tg, _, rg = factorize_checkpoint(ckpt, 0.5, same, device="cuda")
    assert tg["layers.0.feed_forward.vg"].is_cuda
    for name in ("attention.wo", "feed_forward.w2"):
        for i in range(ckpt.args.n_layers):
            k = f"layers.{i}.{name}"
            assert _rel(tg[k + ".u"] @ tg[k + ".v"], tc[k + ".u"] @ tc[k + ".v"]) < 1e-6, k
    for k, e in rc["relative_error_mean"].items():
        assert rg["relative_error_mean"][k] == pytest.approx(e, rel=1e-6), k
    # and end to end on the GPU's own covariances: the truncation error (what the choice of subspace is judged by)
    # agrees even where the subspace itself moved
    _, _, rg2 = factorize_checkpoint(ckpt, 0.5, covs["cuda"], device="cuda")
    for k, e in rc["relative_error_mean"].items():
        assert rg2["relative_error_mean"][k] == pytest.approx(e, rel=1e-3), k


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
