"""The streamed FFN under a memory budget: exact against the thresholded dense FFN (fp32 store, predict-all
predictors), the budget held and measured, a too-small budget refused with the minimum, and the CLI end to end."""

from __future__ import annotations

import json

import pytest
import torch

from ioaware.files import direct_io_supported
from ioaware.runtime import build_model, load_checkpoint
from ioaware.runtime.offload import store as fs
from ioaware.runtime.offload import streamed_ffn as ff
from ioaware.runtime.offload.evaluate import sparse_model
from ioaware.runtime.offload.predictors import train_predictors
from ioaware.runtime.offload.session import PREDICTOR_RANK
from ioaware.runtime.offload.thresholds import calibrate_thresholds

from .helpers import byte_vocab, tiny_hf_model, write_gguf

VOCAB = len(byte_vocab()[0])


class PredictAll:
    """Predicts every neuron: the streamed FFN must then equal the thresholded dense FFN exactly."""

    def __init__(self, L, dim, H, thresholds=None):
        self.A = [torch.zeros(1, dim)] * L
        self.H, self.thresholds = H, thresholds

    def predict(self, layer, x):
        return torch.arange(self.H)

    def to(self, device=None, dtype=None):
        return self

    def n_params(self):
        return 0


def seed_disk_curve(cache):
    """A small synthetic disk curve where `generate --memory-budget` looks for one, so these tests do not spend
    ~15 s probing the disk in a child process (the probe and its cache are tested in test_flash_store.py)."""
    import os

    from ioaware.files import write_json_atomic

    cache.mkdir(parents=True, exist_ok=True)
    pts = [{"chunk": c, "threads": t, "direct": d, "GBps": g} for c, g in ((4096, 0.2), (1 << 20, 1.0))
           for t in (1, 8) for d in (False, True)]
    curve = {"version": 1, "path": str(cache), "device": os.stat(cache).st_dev, "file_bytes": 1 << 20,
             "date": "2026-12-03 00:00:00", "direct_supported": True, "seconds_per_case": 0.25, "points": pts,
             "peak_GBps": 1.0, "best": pts[-1]}
    write_json_atomic(cache / "probe" / f"disk-{os.stat(cache).st_dev}.json", curve)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("ffn")
    g = write_gguf(d / "tiny.gguf", tiny_hf_model(VOCAB, seed=11), context=48)
    ck = load_checkpoint(g)
    dense = build_model(ck, "cpu", torch.float32, "dense")
    th = calibrate_thresholds(dense, [torch.randint(0, VOCAB, (1, 24), generator=torch.Generator().manual_seed(i))
                                         for i in range(3)], 0.5)
    store = fs.write_store(d / "f32.store", ck.args, ck.state_dict, fs.model_fingerprint(g), "float32",
                           progress=False)
    return g, ck, dense, th, fs.open_store(store)


@pytest.mark.parametrize("cache_frac", [1.0, 0.3], ids=["cache-all", "cache-30pct-overflow"])
def test_streamed_equals_thresholded_dense(tiny, cache_frac):
    g, ck, dense, th, st = tiny
    a = ck.args
    io = sum(ff.slot_sizes(min(ff.MAX_READ_NEURONS, a.hidden_dim), st.bundle_bytes, a.hidden_dim * st.bundle_bytes,
                           direct_io_supported(st.path)))
    cap = int(a.hidden_dim * cache_frac)
    budget = st.resident_bytes + io + cap * (st.bundle_bytes * a.n_layers + ff.cache_neuron_work_bytes(a))
    model, rt, acct = ff.build_streamed_model(st, PredictAll(a.n_layers, a.dim, a.hidden_dim, th), th, budget,
                                              window=2)
    assert acct["cache_neurons_per_layer"] == cap and acct["resident_total"] <= budget
    model.setup_cache(1, 16)
    dense.setup_cache(1, 16)
    ids = torch.randint(0, VOCAB, (1, 12), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode(), sparse_model(dense, th):
        torch.testing.assert_close(model(ids[:, :8], 0), dense(ids[:, :8], 0), rtol=1e-5, atol=1e-5)
        for t in range(8, 12):
            torch.testing.assert_close(model(ids[:, t:t + 1], t), dense(ids[:, t:t + 1], t), rtol=1e-5, atol=1e-5)
    s = ff.stream_summary(rt, acct, 1.0)
    assert s["decode_tokens_counted"] == 4 and s["flash_bytes_read_per_token"] >= 0
    if cache_frac == 1.0:  # everything cached after the prefill: decode reads nothing
        assert s["window_hit_rate"] > 0.5 and rt.stats.bytes_read == 0
    else:  # every neuron is predicted, the cache holds 30%: what fits stays cached, so later tokens hit it
        assert rt.stats.overflow_reads > 0
        assert 0.2 < s["window_hit_rate"] <= 0.3 + 1e-9
        assert rt.stats.bytes_read < 4 * a.n_layers * a.hidden_dim * st.bundle_bytes * 0.75
    rt.close()


def test_budget_too_small_names_the_minimum(tiny):
    g, ck, dense, th, st = tiny
    a = ck.args
    with pytest.raises(ff.BudgetError, match=r"below the minimum of [0-9.]+ MiB"):
        ff.build_streamed_model(st, PredictAll(a.n_layers, a.dim, a.hidden_dim, th), th, st.resident_bytes)
    assert ff.parse_budget("40%", 1000) == 400
    assert ff.parse_budget("1KiB", 1) == 1024 and ff.parse_budget("1KB", 1) == 1000
    with pytest.raises(ValueError):
        ff.parse_budget("140%", 1000)


@pytest.mark.slow  # end to end: store conversion and a streamed generate
def test_generate_cli_memory_budget(tiny, tmp_path, monkeypatch, capsys):
    from ioaware.cli.main import main

    g, ck, dense, th, st = tiny
    monkeypatch.setenv("IOAWARE_CACHE_DIR", str(tmp_path / "cache"))
    seed_disk_curve(tmp_path / "cache")
    # predictors trained here on random tokens (the shipped text is for the real model), saved where the run looks
    fp = fs.model_fingerprint(g)
    pr = train_predictors(dense, [torch.randint(0, VOCAB, (1, 32))], th, rank=8, epochs=1, progress=False)
    p = tmp_path / "cache" / "predictors" / f"{fp[:16]}-s0.5-r{PREDICTOR_RANK}.safetensors"
    p.parent.mkdir(parents=True)
    pr.save(p, fp)
    js = tmp_path / "s.json"
    rc = main(["generate", "--model", str(g), "--prompt", "the cat sat", "--max-new-tokens", "5",
               "--memory-budget", "40MiB", "--json", str(js)])
    out, err = capsys.readouterr()
    assert rc == 0, err
    s = json.loads(js.read_text())
    m = s["memory"]
    assert m["resident_total"] + m["other"] <= m["budget"] and m["budget"] == 40 * 2**20
    assert s["decode_tokens_counted"] == s["decode_tokens"] and "window hit rate" in out
    assert "GB/s" in s["disk_recheck"] and s["disk_curve"].startswith("2026-12-03")  # re-measured; cached kept
    assert list((tmp_path / "cache" / "stores").glob("*.store"))  # converted on first use
    rc = main(["generate", "--model", str(g), "--prompt", "x", "--memory-budget", "10%"])
    assert rc == 2 and "below the minimum" in capsys.readouterr().err


def test_budget_too_small_for_the_prompt_fails_before_training(tiny, tmp_path, monkeypatch, capsys):
    """The budget is checked against this prompt's KV cache and prefill before the predictors are trained (minutes
    on the real model): a budget that fits a short prompt but not a long one fails at once, no predictor file."""
    import re

    from ioaware.cli.main import main

    g = tiny[0]
    monkeypatch.setenv("IOAWARE_CACHE_DIR", str(tmp_path / "cache"))
    seed_disk_curve(tmp_path / "cache")

    def minimum(prompt):
        assert main(["generate", "--model", str(g), "--prompt", prompt, "--max-new-tokens", "2",
                     "--memory-budget", "1KiB"]) == 2
        err = capsys.readouterr().err
        return float(re.search(r"below the minimum of ([0-9.]+) KiB", err).group(1))

    short, long = minimum("x"), minimum("the cat sat on the mat " * 60)
    assert long > short * 1.05
    budget = f"{(short + long) / 2:.0f}KiB"  # enough for "x", too little for the long prompt
    rc = main(["generate", "--model", str(g), "--prompt", "the cat sat on the mat " * 60, "--max-new-tokens", "2",
               "--memory-budget", budget])
    assert rc == 2 and "below the minimum" in capsys.readouterr().err
    assert not list((tmp_path / "cache").glob("predictors/*.safetensors"))  # nothing was trained


class RandomProjection(PredictAll):
    """Predicts the neurons where a fixed random projection of x is positive: a deterministic function of x, so
    the speculative prediction (from the block input) and the exact one (from the FFN input) differ."""

    def __init__(self, L, dim, H, thresholds=None):
        super().__init__(L, dim, H, thresholds)
        self.P = torch.randn(L, dim, H, generator=torch.Generator().manual_seed(5))

    def predict(self, layer, x):
        return ((x.reshape(-1, x.shape[-1]).float() @ self.P[layer]) > 0).any(0).nonzero().flatten()


@pytest.mark.parametrize("pred", [PredictAll, RandomProjection], ids=["predict-all", "random-projection"])
def test_prefetch_reads_ahead_and_changes_nothing(tiny, pred):
    """Speculative read-ahead during attention: the same logits as without it (exact prediction decides), the
    read-ahead neurons it then needs are not read again, and the ones it does not need are counted as waste."""
    g, ck, dense, th, st = tiny
    a = ck.args
    io = sum(ff.slot_sizes(min(ff.MAX_READ_NEURONS, a.hidden_dim), st.bundle_bytes, a.hidden_dim * st.bundle_bytes,
                           direct_io_supported(st.path)))
    # predict-all: every token needs every neuron, so any cache gives the same output: a 30% cache makes it read;
    # random projection: a full cache, so prefetch cannot change what stays cached (window 1 still makes it read)
    cap = int(a.hidden_dim * (0.3 if pred is PredictAll else 1.0))
    budget = st.resident_bytes + io + cap * (st.bundle_bytes * a.n_layers + ff.cache_neuron_work_bytes(a))
    ids = torch.randint(0, VOCAB, (1, 12), generator=torch.Generator().manual_seed(2))
    outs, rts = [], []
    for prefetch in (False, True):
        model, rt, acct = ff.build_streamed_model(st, pred(a.n_layers, a.dim, a.hidden_dim, th), th, budget,
                                                  window=1, prefetch=prefetch)
        model.setup_cache(1, 16)
        with torch.inference_mode():
            o = [model(ids[:, :8], 0)] + [model(ids[:, t:t + 1], t) for t in range(8, 12)]
        outs.append(o)
        rts.append(rt)
        rt.close()
    for x, y in zip(*outs, strict=True):
        torch.testing.assert_close(y, x, rtol=1e-5, atol=1e-5)
    off, on = rts[0].stats, rts[1].stats
    assert off.prefetched == 0 and on.prefetched > 0 and not rts[1]._pending
    assert on.neurons_read == off.neurons_read  # the same misses; some of them came from the read-ahead
    assert on.prefetch_used <= on.prefetched
    if pred is PredictAll:
        assert on.prefetch_used == on.prefetched and on.bytes_read == off.bytes_read
    else:  # speculation from the block input misses some and over-reads others
        assert on.prefetch_used < on.prefetched and on.bytes_read > off.bytes_read
    assert on.stall_s <= on.io_s + 1e-9


@pytest.mark.slow  # a generate child process
def test_budget_bounds_the_process_rss(tiny, tmp_path):
    """The cap is on the process: a fresh `ioaware generate --memory-budget` (its own process, so ru_maxrss is this
    run's) peaks at most the budget above the baseline it prints, conversion and the tokenizer's first parse having
    run in a child process."""
    import os
    import subprocess
    import sys

    g, ck, dense, th, st = tiny
    env = dict(os.environ, IOAWARE_CACHE_DIR=str(tmp_path / "cache"))
    seed_disk_curve(tmp_path / "cache")
    fp = fs.model_fingerprint(g)
    pr = train_predictors(dense, [torch.randint(0, VOCAB, (1, 32))], th, rank=8, epochs=1, progress=False)
    pr.save(tmp_path / "cache" / "predictors" / f"{fp[:16]}-s0.5-r{PREDICTOR_RANK}.safetensors", fp)
    js = tmp_path / "s.json"
    r = subprocess.run([sys.executable, "-m", "ioaware.cli.main", "generate", "--model", str(g), "--prompt", "the cat",
                        "--max-new-tokens", "4", "--memory-budget", "30MiB", "--ffn-sparsity", "0.5", "--quiet",
                        "--json", str(js)], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "" and r.stderr == ""  # --quiet
    s = json.loads(js.read_text())
    assert s["budget_bytes"] == 30 * 2**20 and s["rss_baseline_bytes"] > 0
    assert s["rss_above_baseline_bytes"] <= s["budget_bytes"] and s["within_budget"]
