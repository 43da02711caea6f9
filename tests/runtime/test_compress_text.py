"""`ioaware compress svd` on more text and other devices: text sampled from the dense model (`--update-tokens`),
the repository's prose, batched update steps, targets recomputed per step, bf16 autocast, batched perplexity,
the new flags' one-line errors. The tiny random Llama of helpers.py, on the CPU."""

from __future__ import annotations

import json
import math

import pytest
import torch

from ioaware.runtime import load_checkpoint
from ioaware.runtime.compress import api, text, update
from ioaware.runtime.compress.api import calibration_batches, dense_model
from ioaware.runtime.compress.cli import main
from ioaware.runtime.compress.compress import factorize_checkpoint
from ioaware.runtime.compress.evaluate import perplexity
from ioaware.runtime.compress.model import build_lowrank_model
from ioaware.runtime.compress.update import factor_parameters, mean_loss, update_factors

from .helpers import byte_vocab, tiny_hf_model, write_gguf

VOCAB = len(byte_vocab()[0])
LR = 3e-3


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("compress_text")
    return write_gguf(d / "tiny.gguf", tiny_hf_model(VOCAB, seed=5, tie_word_embeddings=False))


@pytest.fixture
def short_samples(monkeypatch):
    monkeypatch.setattr(api, "GEN_TOKENS_PER_PROMPT", 48)  # the tiny model: keep each sampling round short


def test_prompt_splits_share_no_topic_and_are_seeded():
    train, held = text.prompts("train"), text.prompts("heldout")
    held_topics = [t for i, t in enumerate(text.TOPICS) if i % text.HELDOUT_EVERY == text.HELDOUT_EVERY - 1]
    train_topics = [t for t in text.TOPICS if t not in held_topics]
    assert set(held) == {tpl.format(t=t) for t in held_topics for tpl in text.TEMPLATES}
    assert set(train) == {tpl.format(t=t) for t in train_topics for tpl in text.TEMPLATES}
    assert len(held_topics) >= 10 and len(train) == len(set(train)) and not set(train) & set(held)
    assert text.prompts("train", 0) == train and text.prompts("train", 1) != train  # seeded order
    with pytest.raises(ValueError, match="text split must be one of train, heldout, got 'test'"):
        text.prompts("test")


def test_prose_strips_code_tables_and_markup():
    md = ("# Title\n\nSome *prose* with `code` and a [link](http://x).\n\n```python\nimport os\n```\n\n"
          "    indented = code\n| a | b |\n|---|---|\n<div>html</div> kept text\n- a list item\n")
    out = text.prose(md)
    assert "import os" not in out and "indented" not in out and "| a" not in out and "`" not in out
    assert "Title" in out and "Some *prose* with code and a link." in out and "kept text" in out
    assert "a list item" in out and "http" not in out and "<div>" not in out and "#" not in out
    prose, info = text.repo_prose()
    assert "README.md" in info["files"] and len(prose) > 2000 and "```" not in prose
    assert info["sha256"] == text.repo_prose()[1]["sha256"]  # the same text, the same record


def test_generated_tokens_are_seeded_sized_and_cut_at_the_end_of_turn(tiny):
    ckpt = load_checkpoint(tiny)
    dense = dense_model(ckpt)
    tok = ckpt.tokenizer
    a, info = text.generate_tokens(dense, tok, 200, "train", seed=3, batch=4, tokens_per_prompt=32)
    b, _ = text.generate_tokens(dense, tok, 200, "train", seed=3, batch=4, tokens_per_prompt=32)
    c, _ = text.generate_tokens(dense, tok, 200, "train", seed=4, batch=4, tokens_per_prompt=32)
    assert a == b and a != c and len(a) == 200 and info["tokens"] == 200 and info["rounds"] >= 2
    assert all(0 <= t < VOCAB for t in a) and not set(a) & set(tok.eos_ids)
    assert info["split"] == "train" and info["temperature"] == text.TEMPERATURE and info["prompts"] >= 8
    assert info["sample"] == tok.decode(a[:64])
    chunks = text.chunk_ids(a, 64)
    assert [tuple(x.shape) for x in chunks] == [(1, 64)] * 3 and chunks[1][0].tolist() == a[64:128]
    groups = text.batch_chunks([*chunks, torch.zeros(1, 10, dtype=torch.long)], 2)
    assert [tuple(g.shape) for g in groups] == [(2, 64), (1, 64), (1, 10)]
    with pytest.raises(ValueError, match="needs >= 1 token"):
        text.generate_tokens(dense, tok, 0)


def test_batched_perplexity_equals_chunk_by_chunk(tiny):
    ckpt = load_checkpoint(tiny)
    dense = dense_model(ckpt)
    chunks = calibration_batches(ckpt.tokenizer, 3 * 256 + 40)  # three full chunks and a short one
    one, three = perplexity(dense, chunks), perplexity(dense, chunks, batch=3)
    assert one["tokens"] == three["tokens"] == 3 * 255 + 39
    assert three["ppl"] == pytest.approx(one["ppl"], rel=1e-5)


def _model(ckpt, ratio=0.5):
    tensors, ranks, _ = factorize_checkpoint(ckpt, ratio)
    return build_lowrank_model(ckpt.args, ranks, tensors, "cpu", torch.float32)


def test_targets_recomputed_each_step_train_exactly_as_cached_ones(tiny, monkeypatch):
    ckpt = load_checkpoint(tiny)
    dense = dense_model(ckpt)
    batches = text.batch_chunks(text.chunk_ids(list(range(3, 3 + 4 * 64)), 64), 2)  # two steps of 2 x 64
    runs = []
    for limit in (10 ** 9, 1):  # cached, then recomputed every step
        monkeypatch.setattr(update, "TARGET_CACHE_TOKENS", limit)
        m = _model(ckpt)
        rep = update_factors(m, dense, batches, 3, LR, seed=2)
        runs.append((torch.cat([p.flatten() for p in factor_parameters(m).values()]), rep))
    (fa, ra), (fb, rb) = runs
    assert ra["targets"].startswith("cached") and rb["targets"] == "recomputed each step"
    assert ra["batch_chunks"] == 2 and ra["text_tokens"] == 4 * 64
    assert torch.allclose(fa, fb, rtol=0, atol=1e-6) and ra["loss_train_after"] == pytest.approx(rb["loss_train_after"])
    assert rb["loss_train_after"] < rb["loss_train_before"]


def test_bf16_autocast_update_matches_fp32_closely_and_lowers_the_loss(tiny):
    ckpt = load_checkpoint(tiny)
    dense = dense_model(ckpt)
    m = _model(ckpt)
    x = torch.randn(2, 7, ckpt.args.dim)
    ffn = m.layers[0].feed_forward
    with torch.no_grad():
        ref = ffn(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # the autocast branch of LowRankFeedForward
            low = ffn(x)
        # the same products rounded to bf16 by hand: the error autocast is allowed (2x plain PyTorch's)
        bf = {n: t.bfloat16() for n, t in (("x", x), ("u13", ffn.u13), ("vg", ffn.vg), ("vu", ffn.vu),
                                           ("u", ffn.w2.u), ("v", ffn.w2.v))}
        p = bf["x"] @ bf["u13"]
        rg = ffn.vg.shape[0]
        plain = ((torch.nn.functional.silu(p[..., :rg] @ bf["vg"]) * (p[..., rg:] @ bf["vu"])) @ bf["u"]) @ bf["v"]
    err = (low.float() - ref).norm() / ref.norm()
    err_plain = (plain.float() - ref).norm() / ref.norm()
    assert low.dtype == torch.bfloat16 and 0 < err <= 2 * err_plain + 1e-3, (err, err_plain)
    batches = calibration_batches(ckpt.tokenizer, 512)
    rep = update_factors(m, dense, batches, 12, LR, seed=1, precision="bf16")
    assert rep["precision"] == "bf16" and rep["loss_train_after"] < 0.9 * rep["loss_train_before"]
    assert all(p.dtype == torch.float32 for p in m.parameters())  # master factors stay fp32
    assert mean_loss(m, batches, None, dense=dense) == pytest.approx(rep["loss_train_after"], rel=1e-5)


@pytest.mark.slow  # the whole sweep: generated text, a 4-step update, three held-out sets
def test_sweep_on_generated_text_with_three_held_out_sets(tiny, tmp_path, capsys, short_samples, monkeypatch):
    # the sweep's orchestration (text, update, evaluation, report) on the ops' PyTorch reference backend: the low-rank
    # kernels' own tests run them interpreted, and six 256-token evaluations through the interpreter cost 14-36 s
    monkeypatch.delenv("IOAWARE_INTERPRET", raising=False)
    out, png = tmp_path / "r.json", tmp_path / "r.png"
    assert main([str(tiny), "--sweep", "0.5", "--whiten", "--update", "4", "--update-lr", "3e-4",
                 "--update-tokens", "1024", "--update-batch", "2", "--eval-sets", "shipped,generated,prose",
                 "--eval-tokens", "256", "--eval-gen-tokens", "256", "--json", str(out), "--plot", str(png)]) == 0
    res = json.loads(out.read_text())
    assert png.stat().st_size > 1000 and "generated vs dense" in capsys.readouterr().out
    assert res["calibration_text"]["name"] == "generated" and res["calibration_tokens"] == 1024
    assert set(res["eval_sets"]) == {"shipped", "generated", "prose"} and res["eval_main"] == "shipped"
    assert res["eval_sets"]["generated"]["split"] == "heldout" and res["eval_sets"]["generated"]["tokens"] == 256
    assert res["eval_sets"]["prose"]["files"][0] == "README.md"
    base, upd = res["rows"]
    u = upd["update"]
    assert u["text"] == "generated" and u["text_tokens"] == 1024 and u["batch_chunks"] == 2
    assert u["precision"] == "fp32" and res["train_tokens"] == 4 * 255
    for r in (base, upd):
        assert set(r["eval"]) == {"shipped", "generated", "prose"} and r["ppl"] == r["eval"]["shipped"]["ppl"]
        for n, e in r["eval"].items():
            dense = res["eval_sets"][n]["ppl_dense"]
            assert math.isfinite(e["ppl"]) and e["ppl_ratio"] == pytest.approx(e["ppl"] / dense)
    assert upd["ppl_train"] < base["ppl_train"]
    assert set(res["seconds_by_phase"]) >= {"text", "factorisation", "update", "evaluation"}


def test_compress_file_on_generated_text_records_it(tiny, tmp_path, short_samples):
    rep = api.compress_file(tiny, tmp_path / "f.safetensors", 0.5, whiten=True, dtype=torch.float32, update=2,
                            update_lr=3e-4, update_tokens=512, update_batch=2)
    assert rep["calibration_text"]["name"] == "generated" and rep["calibration_tokens"] == 512
    assert rep["update"]["text"] == "generated" and rep["update"]["text_record"]["tokens"] == 512


def _no_output(tmp_path):
    return [p.name for p in tmp_path.iterdir() if p.suffix in (".safetensors", ".tmp", ".json")]


@pytest.mark.parametrize("argv,err,msg", [
    (["--device", "cuda"], "UnsupportedError", r"--device cuda: no CUDA device is available"),
    (["--whiten", "--update-tokens", "100"], "ValueError", r"--update-tokens must be 0 \(off\) or at least 256"),
    (["--update-tokens", "1000"], "ValueError", r"--update-tokens sets the text .* add --whiten or --update"),
    (["--update", "2", "--update-batch", "0"], "ValueError", r"--update-batch must be a number of chunks per step"),
    (["--update-batch", "4"], "ValueError", r"add --update STEPS"),
    (["--update-precision", "bf16"], "ValueError", r"add --update STEPS"),
    (["--eval", "--eval-sets", "shipped,wiki"], "ValueError", r"--eval-sets takes names from shipped, generated"),
    (["--eval-sets", "prose"], "ValueError", r"--eval-sets chooses the held-out texts of --eval or --sweep"),
    (["--eval", "--eval-gen-tokens", "512"], "ValueError", r"--eval-gen-tokens sizes the 'generated' held-out"),
    (["--eval", "--eval-sets", "generated", "--eval-gen-tokens", "10"], "ValueError",
     r"--eval-gen-tokens must be 0 \(off\) or at least 256"),
], ids=["no-cuda", "few-tokens", "tokens-alone", "batch-0", "batch-alone", "precision-alone", "bad-set",
        "sets-alone", "gen-tokens-alone", "gen-tokens-small"])
def test_bad_new_flags_are_one_line_and_write_nothing(tiny, tmp_path, argv, err, msg):
    if "cuda" in argv and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(Exception, match=msg) as e:
        main([str(tiny), str(tmp_path / "x.safetensors"), "--rank-ratio", "0.5", *argv])
    assert type(e.value).__name__ == err and "\n" not in str(e.value) and not _no_output(tmp_path)


def test_bad_precision_is_refused_by_the_api_before_work(tmp_path):
    with pytest.raises(ValueError, match=r"--update-precision must be one of fp32, bf16, got 'fp16'"):
        api.compress_file(tmp_path / "missing.gguf", tmp_path / "y.safetensors", 0.5, update=1,
                          update_precision="fp16")
