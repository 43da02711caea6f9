"""`ioaware generate` end to end on tiny checkpoints: output, JSON summary, safetensors folders, and one clear
error line (exit 2, no traceback) for each kind of bad input."""

from __future__ import annotations

import json

import pytest

from ioaware.cli.main import main

from .helpers import byte_vocab, tiny_hf_model, write_gguf

VOCAB = len(byte_vocab()[0])


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    return write_gguf(tmp_path_factory.mktemp("m") / "tiny.gguf", tiny_hf_model(VOCAB, seed=9), context=32)


def run_cli(capsys, *argv):
    rc = main(["generate", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_generate_gguf_writes_json(tiny_gguf, tmp_path, capsys):
    js = tmp_path / "s.json"
    rc, out, err = run_cli(capsys, "--model", str(tiny_gguf), "--prompt", "the cat", "--max-new-tokens", "6",
                           "--chat", "--json", str(js))
    assert rc == 0, err
    s = json.loads(js.read_text())
    assert s["prompt_tokens"] > 3 and 1 <= s["generated_tokens"] <= 6 and s["format"] == "gguf"
    assert s["decode_tok_s"] >= 0 and s["weight_bytes_per_token"] > 0
    assert "decode" in out and "tok/s" in out


def test_generate_safetensors_folder(tmp_path, capsys):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    hf = tiny_hf_model(VOCAB, seed=10)
    hf.save_pretrained(tmp_path)
    tokens, merges = byte_vocab()
    tk = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)},
                              merges=[tuple(m.split(" ")) for m in merges]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.save(str(tmp_path / "tokenizer.json"))
    js = tmp_path / "s.json"
    rc, out, err = run_cli(capsys, "--model", str(tmp_path), "--prompt", "the hat", "--max-new-tokens", "5",
                           "--json", str(js), "--quiet")
    assert rc == 0, err
    s = json.loads(js.read_text())
    assert s["format"] == "safetensors" and s["generated_tokens"] >= 1


def _assert_one_line_error(rc, err, *needles):
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ioaware generate: error:"), err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]


def test_missing_model(tmp_path, capsys):
    rc, _, err = run_cli(capsys, "--model", str(tmp_path / "nope.gguf"), "--prompt", "hi")
    _assert_one_line_error(rc, err, "not found")


def test_corrupt_model(tmp_path, capsys):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + bytes(range(256)) * 3)
    rc, _, err = run_cli(capsys, "--model", str(bad), "--prompt", "hi")
    _assert_one_line_error(rc, err, "not a readable GGUF")


def test_truncated_model(tiny_gguf, tmp_path, capsys):
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_gguf.read_bytes()[:5000])
    rc, _, err = run_cli(capsys, "--model", str(cut), "--prompt", "hi")
    _assert_one_line_error(rc, err, "cut.gguf")


def test_unsupported_architecture(tmp_path, capsys):
    p = write_gguf(tmp_path / "falcon.gguf", tiny_hf_model(VOCAB), arch="falcon")
    rc, _, err = run_cli(capsys, "--model", str(p), "--prompt", "hi")
    _assert_one_line_error(rc, err, "architecture 'falcon' is not supported")


def test_unsupported_quant_type(tmp_path, capsys):
    from gguf import GGMLQuantizationType

    p = write_gguf(tmp_path / "iq.gguf", tiny_hf_model(VOCAB),
                   raw_tensor=("blk.0.ffn_up.weight", GGMLQuantizationType.IQ2_XXS, 96, 256))
    rc, _, err = run_cli(capsys, "--model", str(p), "--prompt", "hi")
    _assert_one_line_error(rc, err, "IQ2_XXS", "not supported")


@pytest.mark.parametrize("prompt", ["", "   \n"], ids=["empty", "blank"])
def test_empty_prompt(tiny_gguf, capsys, prompt):
    rc, _, err = run_cli(capsys, "--model", str(tiny_gguf), "--prompt", prompt)
    _assert_one_line_error(rc, err, "prompt is empty")


def test_prompt_longer_than_context(tiny_gguf, capsys):
    rc, _, err = run_cli(capsys, "--model", str(tiny_gguf), "--prompt", "the hat " * 40)
    _assert_one_line_error(rc, err, "context is 32")


def test_cuda_without_gpu(tiny_gguf, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    rc, _, err = run_cli(capsys, "--model", str(tiny_gguf), "--prompt", "hi", "--device", "cuda")
    _assert_one_line_error(rc, err, "no CUDA GPU")
