"""The GPU stream's plan and schedule, on CPU: which weights go where under the budgets, the byte accounting, bad
input refused before work, and the streamed model (its copy schedule run synchronously on the host device)
giving the very logits of the model it was made from, through every tier (HBM, pinned, disk)."""

from __future__ import annotations

import copy

import pytest
import torch

from ioaware.errors import UnsupportedError
from ioaware.runtime.llm.model import ModelArgs, Transformer
from ioaware.runtime.offload.gpu_plan import (
    DENSE_SLOTS,
    DISK_STAGING,
    ffn_layer_bytes,
    parse_share,
    plan_offload,
    resident_bytes,
    roofline,
)
from ioaware.runtime.offload.gpu_stream import offload_model
from ioaware.runtime.offload.streamed_ffn import BudgetError
from tests.runtime.helpers import Oracle

LLAMA8B = ModelArgs(dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, hidden_dim=14336, vocab_size=128256,
                    tie_embeddings=False)


def tiny(n_layers=5, act="silu", seed=0, dtype=torch.float32):
    a = ModelArgs(dim=64, n_layers=n_layers, n_heads=4, n_kv_heads=2, hidden_dim=96, vocab_size=300, head_dim=16,
                  max_seq_len=64, ffn_act=act)
    torch.manual_seed(seed)
    m = Transformer(a)
    with torch.no_grad():
        for n, p in m.named_parameters():
            p.uniform_(0.5, 1.5) if "norm" in n else p.normal_(0, 0.08)
    return m.to(dtype).eval()


def test_resident_and_layer_bytes_add_up_to_the_parameters():
    m = tiny()
    a, n = m.args, sum(p.numel() for p in m.parameters())
    assert resident_bytes(a, 2) + a.n_layers * ffn_layer_bytes(a, 2) == 2 * n
    assert ffn_layer_bytes(a, 4) == 4 * sum(p.numel() for p in m.layers[0].feed_forward.parameters())


def test_llama8b_at_half_budget():
    a = LLAMA8B
    total = resident_bytes(a, 2) + 32 * ffn_layer_bytes(a, 2)
    assert abs(total / 2 - 8.03e9) < 0.01e9  # 8.03 B parameters in bf16
    p = plan_offload(a, 2, parse_share("50%", total, "--memory-budget"))
    assert p.hbm_bytes <= p.hbm_budget < p.hbm_bytes + p.layer_bytes  # filled to within one layer
    assert p.slots == DENSE_SLOTS and not p.disk_layers
    assert sorted(p.hbm_layers + p.host_layers) == list(range(32))
    assert p.hbm_layers == tuple(range(len(p.hbm_layers)))  # the first layers stay: they hide the first copy
    assert p.dense_bytes_per_token() == {"h2d": len(p.host_layers) * p.layer_bytes, "disk": 0}
    r = roofline(p.dense_bytes_per_token(), 50.0)
    assert r["s_per_token"] == pytest.approx(len(p.host_layers) * p.layer_bytes / 50e9)


def test_everything_fits_streams_nothing():
    a = tiny().args
    total = resident_bytes(a, 2) + a.n_layers * ffn_layer_bytes(a, 2)
    p = plan_offload(a, 2, total)
    assert p.slots == 0 and len(p.hbm_layers) == a.n_layers and p.dense_bytes_per_token()["h2d"] == 0


def test_host_budget_sends_the_rest_to_disk():
    a = tiny(n_layers=8).args
    lb, res = ffn_layer_bytes(a, 2), resident_bytes(a, 2)
    p = plan_offload(a, 2, res + 3 * lb, host_budget=DISK_STAGING * lb + 2 * lb)
    assert p.hbm_layers == (0,) and p.host_layers == (1, 2) and p.disk_layers == (3, 4, 5, 6, 7)
    assert p.host_bytes == p.host_budget
    assert p.dense_bytes_per_token() == {"h2d": 7 * lb, "disk": 5 * lb}


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_budget_below_resident_plus_slots_is_refused_with_the_minimum(sparse):
    a = tiny().args
    lb, res = ffn_layer_bytes(a, 2), resident_bytes(a, 2)
    slots = 1 if sparse else 2
    with pytest.raises(BudgetError, match="below the minimum") as e:
        plan_offload(a, 2, res + slots * lb - 1, predictor_bytes=0, sparse=sparse)
    assert "\n" not in str(e.value) and "attention, embeddings and norms" in str(e.value)
    plan_offload(a, 2, res + slots * lb, sparse=sparse)  # exactly the minimum is enough


def test_predictors_count_against_the_budget():
    a = tiny().args
    lb, res = ffn_layer_bytes(a, 2), resident_bytes(a, 2)
    assert len(plan_offload(a, 2, res + 3 * lb, sparse=True).hbm_layers) == 2
    assert len(plan_offload(a, 2, res + 3 * lb, predictor_bytes=lb, sparse=True).hbm_layers) == 1
    with pytest.raises(BudgetError, match="predictors"):
        plan_offload(a, 2, res + lb, predictor_bytes=1, sparse=True)


def test_bad_host_budgets():
    a = tiny(n_layers=8).args
    lb, res = ffn_layer_bytes(a, 2), resident_bytes(a, 2)
    with pytest.raises(BudgetError, match="staging"):
        plan_offload(a, 2, res + 2 * lb, host_budget=lb)
    with pytest.raises(UnsupportedError, match="dense only"):
        plan_offload(a, 2, res + 2 * lb, host_budget=lb, sparse=True)
    for text in ("0%", "120%", "lots"):
        with pytest.raises(BudgetError, match="--host-budget"):
            parse_share(text, 100, "--host-budget")


@pytest.mark.parametrize("tiers", ["pinned", "hbm+pinned", "hbm+pinned+disk"])
def test_streamed_model_is_bit_equal_to_its_source(tiers, tmp_path, poison):
    m = tiny(n_layers=5, dtype=torch.bfloat16)
    ref = copy.deepcopy(m)
    a = m.args
    lb, res = ffn_layer_bytes(a, 2), resident_bytes(a, 2)
    hbm, host = {"pinned": (res + 2 * lb, None), "hbm+pinned": (res + 4 * lb, None),
                 "hbm+pinned+disk": (res + 3 * lb, DISK_STAGING * lb + lb)}[tiers]
    plan = plan_offload(a, 2, hbm, host)
    assert bool(plan.disk_layers) == tiers.endswith("disk") and bool(plan.hbm_layers) == ("hbm" in tiers)
    s, rt = offload_model(m, plan, "cpu", disk_path=tmp_path / "ffn.bin")
    try:
        ids = torch.randint(0, a.vocab_size, (1, 7), generator=torch.Generator().manual_seed(1))
        for model in (ref, s):
            model.set_attention("sdpa")
            model.setup_cache(1, 12)
        with torch.no_grad():
            want, got = ref(ids, 0), s(ids, 0)
            assert torch.equal(want, got)
            for t in range(4):
                tok = want[:, -1:].argmax(-1)
                want, got = ref(tok, 7 + t), s(tok, 7 + t)
                assert torch.equal(want, got), t
        # per decode step: exactly the plan's bytes (each streamed layer once; the prefill counted apart)
        assert rt.stats.tokens == 4
        assert rt.bytes_per_token() == {k: float(v) for k, v in plan.dense_bytes_per_token().items()}
    finally:
        rt.close()


def test_sparse_stream_loads_fewer_bytes_and_matches_dense():
    m = tiny(n_layers=4, act="relu")
    H = m.args.hidden_dim
    with torch.no_grad():
        for layer in m.layers:
            layer.feed_forward.w13.weight[:H] -= 0.05  # most gates below zero: a sparse ReLU FFN
    ref = copy.deepcopy(m)
    a = m.args
    lb, res = ffn_layer_bytes(a, 4), resident_bytes(a, 4)
    plan = plan_offload(a, 4, res + 2 * lb, sparse=True)
    assert plan.slots == 1 and plan.hbm_layers == (0,)
    s, rt = offload_model(m, plan, "cpu", predictors=Oracle([lyr.feed_forward.w13.weight[:H].clone()
                                                             for lyr in ref.layers]))
    ids = torch.randint(0, a.vocab_size, (1, 6), generator=torch.Generator().manual_seed(2))
    for model in (ref, s):
        model.set_attention("sdpa")
        model.setup_cache(1, 10)
    with torch.no_grad():
        want, got = ref(ids, 0), s(ids, 0)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
        for t in range(3):
            tok = want[:, -1:].argmax(-1)
            want, got = ref(tok, 6 + t), s(tok, 6 + t)
            torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    dense = plan.dense_bytes_per_token()["h2d"]
    frac = rt.stats.neurons_loaded / rt.stats.neuron_slots
    assert 0 < rt.bytes_per_token()["h2d"] < 0.8 * dense and frac < 0.8
    assert rt.bytes_per_token()["h2d"] == pytest.approx(frac * dense, rel=0.05)


def test_sparse_needs_a_relu_model():
    m = tiny()
    a = m.args
    plan = plan_offload(a, 4, resident_bytes(a, 4) + 2 * ffn_layer_bytes(a, 4), sparse=True)
    with pytest.raises(UnsupportedError, match="ReLU"):
        offload_model(m, plan, "cpu", predictors=Oracle([]))


def test_cli_cuda_budget_refused_before_the_model_is_built(tmp_path, capsys, monkeypatch):
    """With CUDA present (faked), a budget too small for attention + embeddings fails in one line before any
    weight is built; without CUDA, --device cuda --memory-budget says so in one line."""
    from ioaware.cli.main import main

    from .helpers import byte_vocab, tiny_hf_model, write_gguf

    path = write_gguf(tmp_path / "tiny.gguf", tiny_hf_model(len(byte_vocab()[0]), seed=3), context=32)
    argv = ["generate", "--model", str(path), "--prompt", "hi", "--device", "cuda", "--memory-budget", "10%",
            "--no-relufy"]
    if not torch.cuda.is_available():
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert "no CUDA GPU" in err and len(err.splitlines()) == 1
    import ioaware.runtime as rt_mod

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(rt_mod, "build_model", lambda *a, **k: pytest.fail("built the model before the check"))
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "below the minimum" in err and "attention, embeddings and norms" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("d", [64, 40], ids=["D64", "D40"])
def test_bundle_gather_kernel_offsets(d, poison):
    """The Triton gather's offsets (run by the interpreter on CPU tensors) pick the same rows as index_select."""
    from ioaware.runtime.offload.gpu_stream import gather_bundles

    H = 37
    g = torch.Generator().manual_seed(4)
    block = torch.randn(3 * H * d, generator=g).to(torch.bfloat16)
    ids = torch.tensor([0, 3, 4, 17, 36])
    want, got = torch.empty(3 * H * d, dtype=torch.bfloat16), torch.empty(3 * H * d, dtype=torch.bfloat16)
    gather_bundles(block, ids, H, d, want, kernel=False)
    gather_bundles(block, ids, H, d, got, kernel=True)
    n = 3 * len(ids) * d
    assert torch.equal(got[:n], want[:n]) and torch.equal(want[:n].view(3, 5, d)[2, 3], block.view(3, H, d)[2, 17])


def test_gpu_gate_predictor_decides_as_the_cpu_one(tmp_path):
    """The gate copy as the GPU path keeps it (file form, unpacked per call) predicts the neurons the CPU run form
    (int4 kernel) predicts, from the same file."""
    from ioaware.runtime.offload.gate_copy import train_gate_copy
    from ioaware.runtime.offload.gpu_predict import GpuGatePredictor, gpu_gate_bytes_estimate
    from ioaware.runtime.offload.predictors import Predictors

    m = tiny(n_layers=2, act="relu")
    batches = [torch.randint(0, m.args.vocab_size, (1, 48), generator=torch.Generator().manual_seed(s))
               for s in range(3)]
    pr = train_gate_copy(m, batches, 0.98, progress=False)
    pr.save(tmp_path / "p.safetensors", "fp")
    cpu = Predictors.load(tmp_path / "p.safetensors", "fp")
    gpu = GpuGatePredictor.load(tmp_path / "p.safetensors", "fp", "cpu", torch.float32)
    assert gpu.nbytes() == gpu_gate_bytes_estimate(m.args)
    x = torch.randn(5, m.args.dim, generator=torch.Generator().manual_seed(9))
    for layer in range(2):
        a, b = set(cpu.predict(layer, x).tolist()), set(gpu.predict(layer, x).tolist())
        assert a and len(a ^ b) <= max(1, 0.02 * len(a | b)), (len(a), len(b), len(a ^ b))
    with pytest.raises(ValueError, match="another model"):
        GpuGatePredictor.load(tmp_path / "p.safetensors", "other", "cpu")


def test_gpu_generate_path_on_the_host(tmp_path, capsys):
    """`ioaware generate --device cuda --memory-budget` end to end with its schedule run on the host (the CPU
    stand-in the tests can reach): text, the table, the JSON's plan and byte accounting."""
    import argparse
    import json

    from ioaware.cli import generate as gen
    from ioaware.cli.generate_gpu import run_gpu_streamed
    from ioaware.runtime import SamplingConfig

    from .helpers import byte_vocab, tiny_hf_model, write_gguf

    path = write_gguf(tmp_path / "tiny.gguf", tiny_hf_model(len(byte_vocab()[0]), seed=3, num_hidden_layers=4),
                      context=64)
    sp = argparse.ArgumentParser()
    gen.add_parser(sp)
    args = sp.parse_args(["--model", str(path), "--prompt", "the hat", "--device", "cuda", "--memory-budget", "80%",
                          "--max-new-tokens", "5", "--json", str(tmp_path / "s.json")])
    args.relufy = None
    assert run_gpu_streamed(args, SamplingConfig(), device="cpu") == 0
    out = capsys.readouterr().out
    assert "FFN layers in HBM / pinned host / disk" in out and "0 / 4 / 0" in out
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["gpu_ffn"] == "dense" and s["generated_tokens"] >= 1
    assert s["h2d_bytes_per_token"] == s["dense_bytes_per_token"] == 4 * s["plan"]["layer_bytes"]
    assert s["roofline_fraction"] is None  # no probe on the host


@pytest.mark.parametrize("extra", [["--host-budget", "10%"], ["--gpu-ffn", "dense"]], ids=["host-budget", "gpu-ffn"])
def test_gpu_stream_flags_without_the_gpu_stream(extra, tmp_path, capsys):
    from ioaware.cli.main import main

    rc = main(["generate", "--prompt", "hi", "--memory-budget", "50%", *extra])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "apply to the GPU stream" in err and len(err.splitlines()) == 1


def test_pinned_probe_needs_cuda():
    from ioaware.errors import DeviceError
    from ioaware.runtime.offload.gpu_stream import probe_pinned_h2d

    with pytest.raises(DeviceError, match="CUDA"):
        probe_pinned_h2d("cpu")
