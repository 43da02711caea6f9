"""`ioaware compress svd` on a tiny random Llama: the SVD math, the factor checkpoint, the low-rank model, bad input.

The low-rank model's attention runs `lowrank_attn` (the Triton kernel through the interpreter when
IOAWARE_INTERPRET=1, as CI sets it) and its FFN `lowrank_ffn`; at rank ratio 1.0 it must equal the dense model."""

from __future__ import annotations

import json
import os

import pytest
import torch

from ioaware.errors import ShapeError, UnsupportedError
from ioaware.kernels import last_backend
from ioaware.runtime import build_model, generate, load_checkpoint
from ioaware.runtime.compress import (
    compress_file,
    factorize,
    factorize_heads,
    is_factor_checkpoint,
    load_factor_model,
    load_factors,
    rank_for,
    save_factors,
    whitener,
)
from ioaware.runtime.compress.cli import main

from .helpers import byte_vocab, tiny_hf_model, write_gguf

VOCAB = len(byte_vocab()[0])
CALIB = 256  # calibration tokens: enough for a 64-wide model's covariances, quick


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("compress")
    return write_gguf(d / "tiny.gguf", tiny_hf_model(VOCAB, seed=5, tie_word_embeddings=False))


def _close(a, b, tol=1e-4):
    err = (a - b).abs().max().item()
    assert err <= tol * max(b.abs().max().item(), 1.0), f"max abs err {err:.3g}"


@pytest.mark.parametrize("whiten", [False, True], ids=["plain", "whitened"])
def test_full_rank_round_trip_equals_the_dense_model(tiny, tmp_path, whiten):
    out = tmp_path / "f.safetensors"
    rep = compress_file(tiny, out, 1.0, whiten=whiten, dtype=torch.float32, calib_tokens=CALIB)
    assert max(rep["relative_error_mean"].values()) < 1e-6
    dense = build_model(load_checkpoint(tiny), "cpu", torch.float32)
    model, tok, fc = load_factor_model(out)
    assert fc.ranks[0] == {"q": 16, "k": 16, "v": 16, "o": 64, "gate": 64, "up": 64, "down": 64}
    tol = 1e-4
    ids = torch.randint(0, VOCAB, (1, 20), generator=torch.Generator().manual_seed(0))
    # the fused kernels' path (interpreted under IOAWARE_INTERPRET) once, the SDPA path for both factor sets
    impls = ("sdpa",) if whiten else ("flash_attn", "sdpa")
    with torch.inference_mode():
        dense.set_attention("sdpa")
        dense.setup_cache(1, 24)
        full = dense(ids, 0)  # the dense model's logits at every position
        for impl in impls:
            model.set_attention(impl)
            model.setup_cache(1, 24)
            _close(model(ids[:, :17], 0), full[:, :17], tol)  # prefill
            for t in range(17, 19):  # decode through the rank-space KV cache
                _close(model(ids[:, t:t + 1], t), full[:, t:t + 1], tol)
            # the static-shape decode step (what a CUDA graph captures) gets the cache fill as a tensor
            _close(model.decode_static(ids[:, 19:20], torch.tensor([19])), full[:, 19:20], tol)
            if impl == "flash_attn":
                assert last_backend("lowrank_attn") in ("interpret", "reference")


def test_lower_ratio_truncates_and_generates(tiny, tmp_path):
    out = tmp_path / "half.safetensors"
    rep = compress_file(tiny, out, 0.5, whiten=True, calib_tokens=CALIB)  # bfloat16 factors, the default
    assert rep["ranks_layer0"] == {"q": 8, "k": 8, "v": 8, "o": 32, "gate": 32, "up": 32, "down": 32}
    assert 0 < min(rep["relative_error_mean"].values()) and rep["projection_param_fraction"] < 1
    model, tok, _ = load_factor_model(out)
    model.set_attention("sdpa")
    res = generate(model, tok, tok.encode("the"), 3)
    assert 1 <= len(res.tokens) <= 3
    assert model.weight_format == "lowrank"


def test_svd_error_is_eckart_young_and_whitening_minimises_output_error():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(24, 40, generator=g, dtype=torch.float64)
    s = torch.linalg.svdvals(w)
    u, v, err = factorize(w, 7)
    assert torch.allclose((w - (u.double() @ v.double()).T).norm() ** 2, s[7:].pow(2).sum(), rtol=1e-5)
    assert abs(err - (s[7:].pow(2).sum() / s.pow(2).sum()).sqrt().item()) < 1e-6
    # inputs with a few dominant directions: whitening spends the rank where the inputs are
    x = torch.randn(500, 40, generator=g, dtype=torch.float64) * torch.logspace(1, -2, 40, dtype=torch.float64)
    chol = whitener(x.T @ x)
    uw, vw, errw = factorize(w, 7, chol)

    def out_err(uu, vv):
        return ((x @ w.T - x @ uu.double() @ vv.double()).norm() / (x @ w.T).norm()).item()

    assert out_err(uw, vw) < 0.5 * out_err(u, v)
    assert abs(out_err(uw, vw) - errw) < 1e-3  # the reported error is the output error on the calibration inputs
    uh, vh, _ = factorize_heads(w, 3, 5)  # 3 heads of 8 rows: U (40, 15), V (3, 5, 8)
    assert uh.shape == (40, 15) and vh.shape == (3, 5, 8)
    u1, v1, _ = factorize(w[8:16], 5)  # head 1 is the factorisation of its own 8 rows
    assert torch.allclose(uh[:, 5:10] @ vh[1], u1 @ v1, atol=1e-6)
    assert rank_for(0.6, 64, 576) == 38 and rank_for(1.0, 64, 576) == 64 and rank_for(1e-3, 9, 9) == 1


def test_cli_writes_the_checkpoint_and_reports(tiny, tmp_path, capsys):
    out = tmp_path / "cli.safetensors"
    rep_file = tmp_path / "rep.json"
    assert main([str(tiny), str(out), "--rank-ratio", "0.75", "--whiten", "--calib-tokens", str(CALIB),
                 "--eval", "--eval-tokens", "40", "--json", str(rep_file)]) == 0
    rep = json.loads(rep_file.read_text())
    assert is_factor_checkpoint(out) and not is_factor_checkpoint(tiny)
    assert rep["whiten"] and rep["calibration_tokens"] == CALIB and rep["ppl"] > 1 and rep["ppl_dense"] > 1
    assert "ioaware compress svd" in capsys.readouterr().out
    assert load_factors(out).info["rank_ratio"] == 0.75


def _no_output(tmp_path):
    return [p.name for p in tmp_path.iterdir() if p.suffix in (".safetensors", ".tmp")]


@pytest.mark.parametrize("argv,err,msg", [
    (["--rank-ratio", "0"], ValueError, r"must be in \(0, 1\]"),
    (["--rank-ratio", "1.5"], ValueError, r"must be in \(0, 1\]"),
    (["--rank-ratio", "-0.2"], ValueError, r"must be in \(0, 1\]"),
    ([], ValueError, "give --rank-ratio"),
], ids=["zero", "above-one", "negative", "missing"])
def test_bad_ratio_is_one_line_and_writes_nothing(tiny, tmp_path, argv, err, msg):
    with pytest.raises(err, match=msg) as e:
        main([str(tiny), str(tmp_path / "x.safetensors"), *argv])
    assert "\n" not in str(e.value) and not _no_output(tmp_path)


def test_unsupported_architecture_is_one_line_and_writes_nothing(tmp_path):
    gguf = write_gguf(tmp_path / "gpt2.gguf", tiny_hf_model(VOCAB, seed=1), arch="gpt2")
    with pytest.raises(UnsupportedError, match="architecture 'gpt2' is not supported") as e:
        main([str(gguf), str(tmp_path / "x.safetensors"), "--rank-ratio", "0.5"])
    assert "\n" not in str(e.value) and not _no_output(tmp_path)


def test_failed_write_leaves_no_partial_file(tiny, tmp_path, monkeypatch):
    import safetensors.torch

    def boom(tensors, path, metadata=None):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        compress_file(tiny, tmp_path / "x.safetensors", 0.5)
    assert not _no_output(tmp_path) and not [p for p in os.listdir(tmp_path) if p.startswith(".x")]


def test_factors_that_do_not_match_the_model_are_refused(tiny, tmp_path):
    out = tmp_path / "ok.safetensors"
    compress_file(tiny, out, 0.5, dtype=torch.float32)
    fc = load_factors(out)
    bad = dict(fc.tensors)
    bad["layers.1.feed_forward.vg"] = bad["layers.1.feed_forward.vg"][:, :-1]
    with pytest.raises(ShapeError, match=r"'layers.1.feed_forward.vg' has shape \(32, 95\)") as e:
        save_factors(tmp_path / "bad.safetensors", fc.args, fc.ranks, bad, fc.tokenizer, fc.info)
    assert "\n" not in str(e.value) and not (tmp_path / "bad.safetensors").exists()
    # a file whose tensors disagree with its own config (edited, or another model's factors) fails at load
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    missing = {k: v for k, v in fc.tensors.items() if k != "layers.0.attention.vq"}
    save_file(missing, str(tmp_path / "edited.safetensors"), metadata=meta)
    with pytest.raises(ShapeError, match="missing 'layers.0.attention.vq'"):
        load_factor_model(tmp_path / "edited.safetensors")
    meta2 = dict(meta, ranks=json.dumps([dict(r, q=r["q"] + 1) for r in fc.ranks]))
    save_file(fc.tensors, str(tmp_path / "ranks.safetensors"), metadata=meta2)
    with pytest.raises(ShapeError, match="'layers.0.attention.uqkv' has shape"):
        load_factors(tmp_path / "ranks.safetensors")
    save_file(fc.tensors, str(tmp_path / "foreign.safetensors"), metadata={"format": "pt"})
    with pytest.raises(UnsupportedError, match="not an ioaware factor checkpoint"):
        load_factors(tmp_path / "foreign.safetensors")


def test_bench_lowrank_providers_agree_at_a_tiny_shape():
    """`ioaware bench lowrank` (a GPU run) reports a speedup only for providers whose output matches the unfused
    factors (relative RMS < 2e-2): check on CPU, kernels interpreted, that its fused providers do (same RoPE
    convention, same factor layout, GQA) at an odd tiny shape, and that the check would see a wrong one."""
    from ioaware.bench import lowrank as bl

    s = {**bl.SHAPE, "B": 2, "T": 37, "d": 64, "F": 96, "H": 4, "Hkv": 2, "D": 16}
    r = bl._ranks(s)
    assert r == {"head": 4, "o": 16, "ffn": 16}  # ratio 0.25 of 16, 64 and 64
    dense, lr = bl._weights(s, r, "cpu")
    provs = bl._providers(s, r, dense, lr, "cpu")
    x = torch.randn(s["B"], s["T"], s["d"], generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    with torch.inference_mode():
        un = [f(x) for f in provs["unfused"]]
        for name in ("fused", "fused (FlashSVD schedule)"):
            for part, f in enumerate(provs[name]):
                assert bl._rel(f(x), un[part]) < 2e-2, (name, part)
        block = bl._block(*provs["fused"])(x)
        assert bl._rel(block, bl._block(*provs["unfused"])(x)) < 2e-2
        assert bl._rel(provs["dense"][0](x), un[0]) > 0.5  # other (random) weights: the check tells them apart
