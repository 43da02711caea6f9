"""`ioaware compress svd --update STEPS` (SVD-LLM's parameter update after truncation) on the tiny random Llama:
the update lowers the distillation loss on its training text, trains only the factors (ranks, shapes, norms and
embeddings unchanged), records its settings in the file, and the file loads and generates. Bad settings are one
line, before any work."""

from __future__ import annotations

import json
import math

import pytest
import torch

from ioaware.runtime import generate, load_checkpoint
from ioaware.runtime.compress import compress_file, load_factor_model, load_factors, sweep
from ioaware.runtime.compress.api import calibration_batches, dense_model
from ioaware.runtime.compress.cli import main
from ioaware.runtime.compress.compress import factorize_checkpoint
from ioaware.runtime.compress.model import build_lowrank_model
from ioaware.runtime.compress.update import dense_targets, factor_parameters, lr_at, mean_loss, update_factors

from .helpers import byte_vocab, tiny_hf_model, write_gguf

VOCAB = len(byte_vocab()[0])
CALIB = 512  # two 256-token chunks of the calibration text (bytes for the tiny vocabulary)
LR = 3e-3  # plain SVD of the tiny random model: far from the dense model, a large step recovers fast
LR_WHITENED = 3e-4  # whitened factors start close (KL 0.048); at 3e-3 the first steps overshoot (measured: 0.084)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("compress_update")
    return write_gguf(d / "tiny.gguf", tiny_hf_model(VOCAB, seed=5, tie_word_embeddings=False))


@pytest.fixture
def reference_backend(monkeypatch):
    """The factor model's ops on PyTorch's reference backend: these tests are about the training (loss, seeds, the
    sweep's rows), not the kernels, and under Triton's interpreter each took 4-20 s (2026-12-03). The low-rank
    kernels' forward and backward are checked in tests/kernels/test_lowrank.py; the CLI update test below still
    trains through them interpreted."""
    monkeypatch.delenv("IOAWARE_INTERPRET", raising=False)


def _no_output(tmp_path):
    return [p.name for p in tmp_path.iterdir() if p.suffix in (".safetensors", ".tmp")]


@pytest.mark.parametrize("loss", ["kl", "mse"])
def test_update_lowers_the_distillation_loss_and_trains_only_the_factors(tiny, loss, reference_backend):
    ckpt = load_checkpoint(tiny)
    dense = dense_model(ckpt)
    tensors, ranks, _ = factorize_checkpoint(ckpt, 0.5)  # plain SVD: a large loss to recover
    model = build_lowrank_model(ckpt.args, ranks, tensors, "cpu", torch.float32)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if n not in factor_parameters(model)}
    start = {n: p.detach().clone() for n, p in factor_parameters(model).items()}
    batches = calibration_batches(ckpt.tokenizer, CALIB)
    targets = dense_targets(dense, batches, loss)
    before = mean_loss(model, batches, targets, loss)
    rep = update_factors(model, dense, batches, 30, LR, seed=1, loss=loss, targets=targets)
    after = mean_loss(model, batches, targets, loss)  # measured again, independently of the report
    assert before > 0 and after < 0.7 * before, (before, after)
    assert rep["loss_train_before"] == pytest.approx(before, rel=1e-5)
    assert rep["loss_train_after"] == pytest.approx(after, rel=1e-5)
    assert rep["steps"] == 30 and len(rep["loss_curve"]) == 30 and rep["text_tokens"] == CALIB
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    for n, p in model.named_parameters():  # embeddings, norms and head untouched; every factor moved
        if n in frozen:
            assert torch.equal(p, frozen[n]), n
        else:
            assert p.shape == start[n].shape and not torch.equal(p, start[n]), n
    assert set(start) == {n for n in dict(model.named_parameters()) if ".attention." in n or ".feed_forward." in n}


def test_the_same_seed_gives_the_same_factors(tiny, reference_backend):
    ckpt = load_checkpoint(tiny)
    dense = dense_model(ckpt)
    tensors, ranks, _ = factorize_checkpoint(ckpt, 0.5)
    batches = calibration_batches(ckpt.tokenizer, 3 * 256)
    runs = []
    for seed in (7, 7, 8):
        m = build_lowrank_model(ckpt.args, ranks, tensors, "cpu", torch.float32)
        update_factors(m, dense, batches, 4, LR, seed=seed)
        runs.append(torch.cat([p.flatten() for p in factor_parameters(m).values()]))
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


def test_schedule_warms_up_then_decays():
    lrs = [lr_at(s, 100, 1.0) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)  # 10 warm-up steps
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:])) and 0.1 <= lrs[-1] < 0.11


def test_cli_update_writes_a_file_that_records_it_loads_and_generates(tiny, tmp_path, capsys):
    plain, upd = tmp_path / "plain.safetensors", tmp_path / "upd.safetensors"
    rep_file = tmp_path / "rep.json"
    common = ["--rank-ratio", "0.5", "--whiten", "--calib-tokens", str(CALIB), "--dtype", "float32"]
    assert main([str(tiny), str(plain), *common]) == 0
    assert main([str(tiny), str(upd), *common, "--update", "12", "--update-lr", str(LR_WHITENED), "--update-seed", "3",
                 "--eval", "--eval-tokens", "64", "--json", str(rep_file)]) == 0
    assert "parameter update" in capsys.readouterr().out
    rep = json.loads(rep_file.read_text())
    u = rep["update"]
    assert u["loss_train_after"] < u["loss_train_before"] and rep["ppl"] > 1
    a, b = load_factors(plain), load_factors(upd)
    info = b.info["update"]  # the settings live in the file's metadata
    settings = (info["steps"], info["lr"], info["seed"], info["loss"], info["text"])
    assert settings == (12, LR_WHITENED, 3, "kl", "calibration")
    assert "update" not in a.info and a.ranks == b.ranks
    for n, t in a.tensors.items():  # same names and shapes; only the factors differ
        assert b.tensors[n].shape == t.shape
        assert torch.equal(b.tensors[n], t) == (".attention." not in n and ".feed_forward." not in n), n
    model, tok, _ = load_factor_model(upd)
    model.set_attention("sdpa")
    res = generate(model, tok, tok.encode("the"), 3)
    assert 1 <= len(res.tokens) <= 3 and all(0 <= t < VOCAB for t in res.tokens)


def test_sweep_adds_updated_rows_with_the_training_text_perplexity(tiny, reference_backend):
    res = sweep(load_checkpoint(tiny), [0.5], torch.float32, CALIB, 64, whiten_only=True, update=10,
                update_lr=LR_WHITENED)
    base, upd = res["rows"]
    assert base["whiten"] and base["update"] is None and upd["update"]["steps"] == 10
    for r in (base, upd):
        assert math.isfinite(r["ppl"]) and r["ppl_train"] > 1
        assert r["ppl_ratio"] == pytest.approx(r["ppl"] / res["ppl_dense"])
    assert upd["ppl_train"] < base["ppl_train"]  # trained on that text: its perplexity must drop
    assert res["train_tokens"] == CALIB - 2 and res["ppl_dense_train"] > 1  # 2 chunks, 255 predictions each


@pytest.mark.parametrize("argv,msg", [
    (["--update", "-1"], r"--update must be a number of training steps >= 0, got -1"),
    (["--update", "5", "--update-lr", "0"], r"--update-lr must be a positive learning rate, got 0.0"),
    (["--update", "5", "--update-lr=-1e-4"], r"--update-lr must be a positive learning rate"),
    (["--update", "5", "--update-lr", "nan"], r"--update-lr must be a positive learning rate"),
    (["--update-lr", "1e-4"], r"add --update STEPS"),
], ids=["negative-steps", "zero-lr", "negative-lr", "nan-lr", "lr-without-update"])
def test_bad_update_settings_are_one_line_and_write_nothing(tiny, tmp_path, argv, msg):
    with pytest.raises(ValueError, match=msg) as e:
        main([str(tiny), str(tmp_path / "x.safetensors"), "--rank-ratio", "0.5", *argv])
    assert "\n" not in str(e.value) and not _no_output(tmp_path)
    with pytest.raises(ValueError, match=r"--update|positive"):  # the API checks them too, before reading MODEL
        compress_file(tmp_path / "missing.gguf", tmp_path / "y.safetensors", 0.5, update=-1, update_lr=0.0)
