"""Pruning for Flash-LLM on a tiny random Llama: magnitude and Wanda masks, the packed model (SparseLinear through
ioaware.spmm), the pruned checkpoint file and `ioaware prune`'s command line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ioaware.runtime import build_model, load_checkpoint
from ioaware.runtime.prune import (
    SparseLinear,
    achieved_sparsity,
    block_linears,
    is_pruned_checkpoint,
    load_pruned,
    magnitude_mask,
    prune_model,
    sparsify_model,
    wanda_mask,
)
from ioaware.runtime.prune.cli import main

from .helpers import byte_vocab, tiny_hf_model, write_gguf

VOCAB = len(byte_vocab()[0])


@pytest.fixture(scope="module")
def gguf(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("prune")
    return write_gguf(d / "tiny.gguf", tiny_hf_model(VOCAB, seed=3))


@pytest.fixture
def model(gguf):
    return build_model(load_checkpoint(gguf), "cpu", torch.float32, weights="dense")


def tokens(n: int, T: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (1, T), generator=g) for _ in range(n)]


def test_magnitude_mask_is_layer_wise_per_fused_matrix():
    w = torch.randn(12, 40)
    w[8:] *= 100  # a loud third matrix inside the fused weight must not take the others' quota
    m = magnitude_mask(w, 0.75, row_splits=[4, 4, 4])
    for part, mp in zip(torch.split(w, 4), torch.split(m, 4)):
        assert int(mp.sum()) == 40  # 25% of 160 kept in each matrix
        assert part[mp].abs().min() >= part[~mp].abs().max()


def test_wanda_keeps_the_same_count_per_row_and_follows_the_activations():
    w = torch.randn(6, 50)
    norm = torch.ones(50)
    m = wanda_mask(w, norm, 0.6)
    assert (m.sum(1) == 20).all()
    per_row = torch.stack([magnitude_mask(r[None], 0.6)[0] for r in w])
    assert torch.equal(m, per_row)  # uniform activations: Wanda is per-row magnitude
    norm[7] = 1e6  # a feature with huge activations is kept in every row, however small its weights
    w[:, 7] = 1e-4
    assert wanda_mask(w, norm, 0.6)[:, 7].all()
    with pytest.raises(ValueError, match="input norms"):
        wanda_mask(w, torch.ones(49), 0.5)


@pytest.mark.parametrize("method", ["magnitude", "wanda"])
def test_prune_model_reaches_the_target_on_every_projection(model, method):
    rep = prune_model(model, 0.7, method, tokens(2, 24) if method == "wanda" else None)
    for name, s in rep["sparsity_per_projection"].items():
        assert abs(s - 0.7) < 0.02, name
    assert rep["calibration_tokens"] == (48 if method == "wanda" else 0)
    assert achieved_sparsity(model)["sparsity"] == pytest.approx(rep["sparsity"])


def test_wanda_masks_differ_from_magnitude_and_depend_on_calibration(gguf):
    ck = load_checkpoint(gguf)
    masks = []
    for method, seed in (("magnitude", 0), ("wanda", 0), ("wanda", 1)):
        m = build_model(ck, "cpu", torch.float32, weights="dense")
        prune_model(m, 0.5, method, tokens(2, 24, seed) if method == "wanda" else None)
        masks.append(torch.cat([(lin.weight != 0).flatten() for _, _, lin in block_linears(m)]))
    assert (masks[0] != masks[1]).float().mean() > 0.05
    assert (masks[1] != masks[2]).any()


def test_bad_sparsity_and_method_are_refused(model):
    for s in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"\[0, 1\)"):
            prune_model(model, s, "magnitude")
    with pytest.raises(ValueError, match="method"):
        prune_model(model, 0.5, "random")
    with pytest.raises(ValueError, match="calibration"):
        prune_model(model, 0.5, "wanda", None)


def test_packed_model_computes_what_the_pruned_dense_model_computes(model):
    prune_model(model, 0.8, "magnitude")
    x = tokens(1, 5)[0]
    model.setup_cache(1, 8)
    with torch.inference_mode():
        ref = model(x, 0)
        packed = sparsify_model(model)
        assert all(isinstance(lin, SparseLinear) for _, _, lin in block_linears(model))
        assert len(packed) == 4 * model.args.n_layers
        out = model(x, 0)  # SparseLinear -> ioaware.spmm (the interpreter under IOAWARE_INTERPRET=1)
    assert (out - ref).abs().max().item() <= 1e-4 * ref.abs().max().item()


def test_cli_writes_a_checkpoint_that_loads_and_generates(gguf, tmp_path, monkeypatch):
    out = tmp_path / "pruned.safetensors"
    rc = main([str(gguf), str(out), "--sparsity", "0.6", "--method", "wanda", "--dtype", "float32",
               "--seq-len", "32", "--calib-tokens", "96", "--eval", "--eval-tokens", "64",
               "--json", str(tmp_path / "r.json")])
    assert rc == 0 and is_pruned_checkpoint(out)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # the temp file was renamed
    import json

    rep = json.loads((tmp_path / "r.json").read_text())
    assert abs(rep["sparsity"] - 0.6) < 0.02 and rep["ppl_pruned"] > 0 and rep["packed_bytes"] < rep["dense_bytes"]
    monkeypatch.setenv("IOAWARE_INTERPRET", "0")  # CPU: the unpacked dense path (fast); the kernel is tested above
    m, tok, meta = load_pruned(out)
    assert meta["method"] == "wanda" and isinstance(m.layers[0].feed_forward.w2, SparseLinear)
    # the loaded model equals the in-memory pruned one (float32 values: no rounding)
    ref = build_model(load_checkpoint(gguf), "cpu", torch.float32, weights="dense")
    from ioaware.runtime.offload.text import load_text, token_batches

    prune_model(ref, 0.6, "wanda", token_batches(tok, load_text("calibration"), 32, max_tokens=96))
    x = torch.tensor([tok.encode("the cat")])
    m.setup_cache(1, 16)
    ref.setup_cache(1, 16)
    with torch.inference_mode():
        assert torch.allclose(m(x, 0), ref(x, 0), atol=1e-5, rtol=1e-5)
    from ioaware.runtime import generate

    res = generate(m, tok, tok.encode("the"), 4)
    assert len(res.tokens) >= 1


def test_cli_refuses_bad_input_before_any_work(gguf, tmp_path):
    bad = [
        ([str(gguf), str(tmp_path / "o.safetensors"), "--sparsity", "1.0"], r"\[0, 1\)"),
        ([str(gguf), str(tmp_path / "o.safetensors"), "--sparsity", "-0.2"], r"\[0, 1\)"),
        ([str(gguf)], "OUT"),
        ([str(gguf), str(tmp_path / "o.bin")], "safetensors"),
        ([str(gguf), str(tmp_path / "o.safetensors"), "--sweep", "0.5"], "drop OUT"),
        ([str(gguf), "--sweep", "0.5", "1.2"], r"\[0, 1\)"),
        ([str(gguf), str(tmp_path / "o.safetensors"), "--plot", "p.png"], "--sweep"),
    ]
    for argv, msg in bad:
        with pytest.raises(ValueError, match=msg):
            main(argv)
    with pytest.raises(FileNotFoundError):
        main([str(tmp_path / "missing.gguf"), str(tmp_path / "o.safetensors")])
    with pytest.raises(SystemExit):
        main([str(gguf), str(tmp_path / "o.safetensors"), "--method", "random"])
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_from_another_version_is_refused(gguf, tmp_path):
    from safetensors.torch import load_file, save_file

    out = tmp_path / "p.safetensors"
    main([str(gguf), str(out), "--sparsity", "0.5", "--method", "magnitude", "--seq-len", "32"])
    from ioaware.runtime.prune.model_io import read_metadata

    md = read_metadata(out)
    t = load_file(str(out))
    save_file(t, str(tmp_path / "v2.safetensors"), metadata={**md, "version": "2"})
    with pytest.raises(ValueError, match="version 2"):
        load_pruned(tmp_path / "v2.safetensors")
    t["layers.0.attention.wo.header"][0] = 7  # a packed tensor from another spmm format version
    save_file(t, str(tmp_path / "f7.safetensors"), metadata=md)
    with pytest.raises(ValueError, match="format version 7"):
        load_pruned(tmp_path / "f7.safetensors")
    with pytest.raises(ValueError, match="not an ioaware pruned checkpoint"):
        save_file({"a": torch.zeros(1)}, str(tmp_path / "x.safetensors"))
        load_pruned(tmp_path / "x.safetensors")
