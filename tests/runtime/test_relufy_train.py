"""`ioaware relufy` (the training side) on the tiny random Llama: the student at step 0 is the teacher with the
activation swapped, distillation lowers the KL, the L1 penalty raises sparsity, sparsity is a count of exact zeros,
the written adapter loads and its merged weights give the trained student's outputs, and bad inputs are one line
before any work, leaving no file.

The real SmolLM2 run is not tested here: on this shared 2-core machine even 2 steps at 32 tokens took 4 minutes
(model build, teacher text, two evaluations), far past the 20 s a test may take; dev/relufy/run_device.sh runs it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from ioaware.runtime import build_model, load_checkpoint
from ioaware.runtime.offload.text import load_text
from ioaware.runtime.relufy.adapter import ACTIVATIONS, Adapter, file_sha256, load_adapter, save_adapter
from ioaware.runtime.relufy.cli import main
from ioaware.runtime.relufy.evaluate import evaluate_adapter, layer_sparsity
from ioaware.runtime.relufy.student import ReluFFN, apply_adapter, build_student, lora_deltas, make_student
from ioaware.runtime.relufy.text import cached_tokens, chunks, generate_tokens, store_tokens, strip_markdown, text_key
from ioaware.runtime.relufy.train import TrainConfig, mean_kl, student_logits, train

from .helpers import byte_vocab, tiny_hf_model, write_gguf

VOCAB = len(byte_vocab()[0])
SEQ = 32
SHIFTS = {"relu": 0.0, "shifted_relu": 0.1, "relu2": 0.0}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("relufy")
    return write_gguf(d / "tiny.gguf", tiny_hf_model(VOCAB, seed=3))


@pytest.fixture(scope="module")
def ck(tiny):
    return load_checkpoint(tiny)


@pytest.fixture(scope="module")
def rows(ck):
    return chunks(ck.tokenizer.encode(load_text("calibration"))[:24 * SEQ], SEQ)  # (24, 32)


def _teacher(ck):
    return build_model(ck, "cpu", torch.float32, weights="dense")


def _student(ck, activation="shifted_relu", rank=4, seed=0):
    return make_student(_teacher(ck), activation, SHIFTS[activation], rank, seed)


def _reference_act(activation: str, g: torch.Tensor) -> torch.Tensor:
    """Written out here, independently of Adapter.act."""
    if activation == "relu2":
        return torch.clamp(g, min=0) ** 2
    return torch.clamp(g - SHIFTS[activation], min=0)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_step0_student_is_the_teacher_with_the_activation_swapped(ck, rows, activation):
    teacher, student = _teacher(ck), _student(ck, activation)
    reference = _teacher(ck)
    for layer in reference.layers:  # the teacher's FFN with the activation written out, no LoRA at all
        ff = layer.feed_forward

        def fwd(x, ff=ff):
            gate, up = ff.w13(x).split(ff.hidden, dim=-1)
            return ff.w2(_reference_act(activation, gate) * up)

        ff.forward = fwd
    x = rows[:3]
    with torch.no_grad():
        got, want, dense = student_logits(student, x), student_logits(reference, x), student_logits(teacher, x)
        ffs = [layer.feed_forward for layer in student.layers]
        assert all(isinstance(f, ReluFFN) and f.rank == 4 for f in ffs)
        assert all(torch.count_nonzero(p) == 0 for f in ffs for n, p in f.lora.items() if n.endswith("_B"))
        assert all(torch.count_nonzero(p) == p.numel() for f in ffs for n, p in f.lora.items() if n.endswith("_A"))
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)  # B = 0: the LoRA branch adds exact zeros
        assert (got - dense).abs().max() > 1e-2  # and the swap does change the model
        for f in ffs:
            f.blend = 0.0  # training's start: SiLU faded fully in is the teacher exactly
        torch.testing.assert_close(student_logits(student, x), dense, rtol=0, atol=1e-6)


def test_distillation_lowers_the_kl_and_trains_only_the_lora_pairs(ck, rows):
    teacher, student = _teacher(ck), _student(ck, "relu")
    base = {n: p.detach().clone() for n, p in student.named_parameters() if ".lora." not in n}
    before = mean_kl(teacher, student, rows)
    rep = train(teacher, student, rows, TrainConfig(steps=30, batch=4, lr=1e-2, blend=0.0, seed=1))
    after = mean_kl(teacher, student, rows)  # measured again, independently of the report
    assert before > 0 and after < 0.6 * before, (before, after)
    assert rep["steps"] == 30 and rep["tokens_seen"] == 30 * 4 * SEQ and len(rep["kl_curve"]) == 30
    assert rep["kl_first"] == pytest.approx(before, rel=0.5)  # one batch of the rows vs all of them
    assert not student.training and not any(p.requires_grad for p in student.parameters())
    for n, p in student.named_parameters():
        if n in base:
            assert torch.equal(p, base[n]), n  # the base (shared with nothing) never moves
    assert all(torch.count_nonzero(B) > 0 for _, B in lora_deltas(student).values())


def test_sparsity_is_a_count_of_exact_zeros(ck, rows):
    teacher, student = _teacher(ck), _student(ck, "shifted_relu")
    train(teacher, student, rows, TrainConfig(steps=5, batch=4, lr=1e-2, seed=2))  # B != 0: the pairs count
    x = rows[:5]
    inputs: list[torch.Tensor] = []
    hooks = [layer.feed_forward.register_forward_pre_hook(lambda m, a: inputs.append(a[0].detach().clone()))
             for layer in student.layers]
    got, n = layer_sparsity(student, list(x[:, None]))
    for h in hooks:
        h.remove()
    assert n == x.numel()
    L = len(student.layers)
    for i, f in enumerate(student.layers):
        f = f.feed_forward
        zeros = total = 0
        for xi in inputs[i::L]:  # layer i's input in each of the 5 sequences
            g, _ = f.w13(xi).split(f.hidden, dim=-1)
            g = g + F.linear(F.linear(xi, f.lora["gate_proj_A"]), f.lora["gate_proj_B"])
            zeros += int((g <= SHIFTS["shifted_relu"]).sum())
            total += g.numel()
        assert got[i] == zeros / total, (i, got[i], zeros / total)
        assert 0.05 < got[i] < 0.99


def test_l1_raises_sparsity_and_the_target_steers_it(ck, rows):
    def run(**kw):
        teacher, student = _teacher(ck), _student(ck, "relu", seed=4)
        rep = train(teacher, student, rows, TrainConfig(steps=40, batch=4, lr=1e-2, seed=4, **kw))
        return layer_sparsity(student, list(rows[:8, None]))[0], rep

    plain, _ = run()
    l1, rep = run(l1=2.0)
    steered, rep_t = run(l1=0.05, target_sparsity=0.9)
    mean = [sum(s) / len(s) for s in (plain, l1, steered)]
    assert mean[1] > mean[0] + 0.05, mean
    assert mean[2] > mean[0] + 0.05, mean
    assert rep["l1_coef_last"] == pytest.approx(2.0) and rep_t["l1_coef_last"] > 0.05  # the controller raised it


def test_adapter_round_trip_reproduces_the_trained_student(ck, tiny, rows, tmp_path):
    teacher, student = _teacher(ck), _student(ck, "relu2", rank=3)
    train(teacher, student, rows, TrainConfig(steps=8, batch=4, lr=1e-2, seed=5))
    deltas = {k: (A.half(), B.half()) for k, (A, B) in lora_deltas(student).items()}
    for f in student.layers:  # the LoRA student with the fp16-rounded pairs the file holds
        for p in f.feed_forward.lora.values():
            p.data = p.data.half().float()
    path = save_adapter(tmp_path / "a.safetensors", deltas, activation="relu2", base_sha256=file_sha256(tiny),
                        meta={"seed": "5"})
    adapter = load_adapter(path, base_path=tiny)
    merged = build_student(ck, adapter)
    x = rows[:4]
    with torch.no_grad():
        want, got = student_logits(student, x), student_logits(merged, x)
        # the same model in two orders of fp32 sums (x W^T + (x A^T) B^T vs x (W + B A)^T): measured ~1e-6
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert adapter.rank == 3 and adapter.activation == "relu2" and len(adapter.deltas) == 3 * len(merged.layers)
    # apply_adapter on a fresh teacher leaves another model sharing nothing unchanged
    t2 = _teacher(ck)
    w = t2.layers[0].feed_forward.w13.weight.clone()
    apply_adapter(_teacher(ck), Adapter("relu", 0.0, 3, "", deltas))
    assert torch.equal(t2.layers[0].feed_forward.w13.weight, w)


def test_cli_writes_an_adapter_whose_metrics_evaluate_reproduces(tiny, ck, tmp_path):
    out, rep = tmp_path / "relu.safetensors", tmp_path / "r.json"
    cache = tmp_path / "text.safetensors"
    args = [str(tiny), str(out), "--steps", "6", "--tokens", "600", "--seq-len", "32", "--batch", "4", "--rank", "2",
            "--gen-len", "24", "--eval-tokens", "128", "--text-cache", str(cache), "--no-progress"]
    assert main(args + ["--json", str(rep)]) == 0
    res = json.loads(rep.read_text())
    adapter = load_adapter(out, base_path=tiny)
    meta = adapter.meta
    assert meta["command"].startswith("ioaware relufy ") and meta["seed"] == "0" and meta["steps"] == "6"
    assert meta["torch_version"] == torch.__version__.split("+")[0] or meta["torch_version"] == torch.__version__
    assert {"triton_version", "gguf_version", "tokens", "metrics", "config"} <= set(meta)
    metrics = json.loads(meta["metrics"])
    assert metrics["sparsity"] == pytest.approx(res["sparsity"]) and res["adapter_bytes"] == out.stat().st_size
    assert res["text"]["generated_tokens"] == 600 and not res["text"]["reused_cache"]
    again = evaluate_adapter(ck, adapter, seq_len=32, max_tokens=128)  # the standalone evaluation, same numbers
    assert again["sparsity"] == pytest.approx(res["sparsity"], abs=1e-9)
    assert again["ppl_ratio"] == pytest.approx(res["ppl_ratio"], rel=1e-5)
    assert set(again["texts"]) == {"generated", "repo_prose"}
    ev = tmp_path / "eval.json"
    assert main([str(tiny), str(out), "--eval-only", "--seq-len", "32", "--eval-tokens", "128", "--no-progress",
                 "--json", str(ev)]) == 0  # the CLI's way to the same function
    assert json.loads(ev.read_text())["sparsity"] == pytest.approx(res["sparsity"], abs=1e-9)
    # the second run reuses the cached text (same settings) and needs --force for the existing OUT
    assert main(args + ["--force", "--json", str(rep)]) == 0
    assert json.loads(rep.read_text())["text"]["reused_cache"]


def test_generated_text_is_seeded_and_cut_at_the_end_of_turn(ck, tmp_path):
    teacher = _teacher(ck)
    a = generate_tokens(teacher, ck.tokenizer, 300, seed=1, batch=3, gen_len=20)
    b = generate_tokens(teacher, ck.tokenizer, 300, seed=1, batch=3, gen_len=20)
    c = generate_tokens(teacher, ck.tokenizer, 300, seed=2, batch=3, gen_len=20)
    assert a.dtype == torch.int32 and a.numel() == 300 and torch.equal(a, b) and not torch.equal(a, c)
    key = text_key("abc", 300, 1, 3, 20)
    store_tokens(tmp_path / "t.safetensors", a, key)
    assert torch.equal(cached_tokens(tmp_path / "t.safetensors", key), a)
    assert cached_tokens(tmp_path / "t.safetensors", {**key, "seed": "2"}) is None
    assert chunks(a, 32).shape == (9, 32)


def test_markdown_prose_loses_code_and_tables():
    md = "# Title\n\nSome *prose* with a [link](http://x).\n\n```python\nx = 1\n```\n| a | b |\n|---|---|\n" \
         "::: ioaware.kernels\n\nMore prose.\n"
    s = strip_markdown(md)
    assert "x = 1" not in s and "| a" not in s and ":::" not in s and "http" not in s
    assert "Some *prose* with a [link]." in s and "More prose." in s


BAD = [
    (["--rank", "0"], "--rank must be a positive integer"),
    (["--rank", "-3"], "--rank must be a positive integer"),
    (["--activation", "shifted_relu", "--shift", "-0.5"], "--shift must be > 0"),
    (["--activation", "relu", "--shift", "0.5"], "--shift applies to shifted_relu only"),
    (["--target-sparsity", "1.5"], "--target-sparsity must be in (0, 1)"),
    (["--l1", "-1"], "--l1 must be >= 0"),
    (["--steps", "0"], "--steps must be a positive integer"),
    (["--blend", "1"], "--blend must be a fraction"),
]


@pytest.mark.parametrize("extra,msg", BAD)
def test_bad_settings_are_one_line_before_any_work(tiny, tmp_path, extra, msg, capsys):
    from ioaware.cli.main import main as cli

    out = tmp_path / "o.safetensors"
    assert cli(["relufy", str(tiny), str(out), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert msg in err and len(err.splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == []


def test_bad_files_are_one_line(tiny, tmp_path, capsys):
    from ioaware.cli.main import main as cli

    (tmp_path / "there.safetensors").write_bytes(b"x")
    cases = [([str(tmp_path / "missing.gguf"), str(tmp_path / "o.safetensors")], "model not found"),
             ([str(tiny), str(tmp_path / "there.safetensors")], "exists; pass --force"),
             ([str(tiny), str(tmp_path / "o.bin")], "OUT must end in .safetensors"),
             ([str(tiny), str(tmp_path / "no" / "o.safetensors")], "does not exist"),
             ([str(tmp_path), str(tmp_path / "o.safetensors")], "MODEL must be a .gguf file")]
    for argv, msg in cases:
        assert cli(["relufy", *argv]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert msg in err and len(err.splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["there.safetensors"]
    assert (tmp_path / "there.safetensors").read_bytes() == b"x"
    with pytest.raises(SystemExit):  # argparse's choices: one line, exit 2
        main([str(tiny), str(tmp_path / "o.safetensors"), "--activation", "gelu"])


def test_cli_help_lists_relufy():
    out = subprocess.run([sys.executable, "-m", "ioaware.cli.main", "--help"], capture_output=True, text=True)
    assert "relufy" in out.stdout
