"""Sparse FFN math, thresholds, predictors and the neuron cache, on tiny random Llamas (fast on 2 cores)."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from ioaware.runtime import ModelArgs, Transformer
from ioaware.runtime.offload.activations import collect_ffn_inputs
from ioaware.runtime.offload.cache import LayerNeuronCache, NeuronCache
from ioaware.runtime.offload.evaluate import evaluate, sparse_model
from ioaware.runtime.offload.predictors import Predictors, model_fingerprint, train_predictors
from ioaware.runtime.offload.sparse_ffn import ffn_bundles, gate_activity, sparse_ffn
from ioaware.runtime.offload.thresholds import calibrate_thresholds, thresholds_from_inputs


def tiny_model(seed=0, layers=2, dim=48, hidden=80, vocab=97) -> Transformer:
    torch.manual_seed(seed)
    m = Transformer(ModelArgs(dim=dim, n_layers=layers, n_heads=4, n_kv_heads=2, hidden_dim=hidden,
                              vocab_size=vocab, max_seq_len=128)).float()
    with torch.no_grad():
        for n, p in m.named_parameters():
            p.copy_(torch.rand_like(p) + 0.5 if "norm" in n else torch.randn_like(p) * 0.15)
    m.set_attention("sdpa")  # the interpreter path of flash_attn is covered by test_tiny_model; keep these fast
    return m.eval().requires_grad_(False)


def batches(n=4, T=40, vocab=97, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (1, T), generator=g) for _ in range(n)]


def dense_ffn(ffn, x, t=None):
    gate, up = ffn.w13(x).split(ffn.hidden, -1)
    h = F.silu(gate)
    if t is not None:
        h = torch.where(h.abs() > t, h, 0.0)
    return ffn.w2(h * up)


# -- sparse_ffn --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("T", [1, 7], ids=["T1", "T7"])
def test_sparse_ffn_all_neurons_equals_dense(T):
    ffn = tiny_model().layers[0].feed_forward
    x = torch.randn(T, 48)
    got = sparse_ffn(x, ffn_bundles(ffn), threshold=0.0)
    ref = dense_ffn(ffn, x)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_sparse_ffn_superset_of_active_equals_thresholded_dense():
    ffn = tiny_model().layers[1].feed_forward
    x = torch.randn(5, 48)
    t = float(gate_activity(ffn, x).median())
    active = (gate_activity(ffn, x) > t).any(0)  # (H,): active for some row
    extra = torch.randperm(80)[:10]  # wrongly predicted neurons must do no harm
    ids = torch.unique(torch.cat([active.nonzero().flatten(), extra]))
    ids = ids[torch.randperm(ids.numel())]  # any order
    got = sparse_ffn(x, ffn_bundles(ffn, ids), t)
    torch.testing.assert_close(got, dense_ffn(ffn, x, t), rtol=1e-5, atol=1e-5)
    missing = ids[ids != active.nonzero().flatten()[0]]  # dropping an active neuron must change the output
    assert (sparse_ffn(x, ffn_bundles(ffn, missing), t) - dense_ffn(ffn, x, t)).abs().max() > 1e-4


def test_sparse_ffn_rejects_bad_shapes():
    with pytest.raises(ValueError, match="bundles"):
        sparse_ffn(torch.randn(2, 8), torch.randn(4, 2, 8), 0.1)


# -- thresholds ---------------------------------------------------------------------------------------------------

def test_calibrated_thresholds_hit_the_target_sparsity():
    m = tiny_model()
    bs = batches()
    for target in (0.3, 0.7):
        t = calibrate_thresholds(m, bs, target)
        assert t.shape == (2,) and (t[1:] > 0).all()
        rec: dict = {}
        with sparse_model(m, t, record=rec):
            for b in bs:
                m.setup_cache(1, b.shape[1])
                m(b, 0)
        for d in rec["layers"]:
            assert abs(1 - d["active"] / (d["tokens"] * 80) - target) < 0.01  # same text: the quantile is exact
    assert all("forward" not in vars(layer.feed_forward) for layer in m.layers)  # the patch is removed
    inputs = collect_ffn_inputs(m, bs, dtype=torch.float32)  # one collection, several sparsities: same answer
    torch.testing.assert_close(thresholds_from_inputs(m, inputs, 0.7), t, rtol=1e-5, atol=1e-6)


def test_sparse_model_zero_threshold_is_dense_and_high_threshold_changes_logits():
    m = tiny_model()
    b = batches(1)[0]
    m.setup_cache(1, b.shape[1])
    ref = m(b, 0)
    with sparse_model(m, torch.zeros(2)):
        torch.testing.assert_close(m(b, 0), ref, rtol=1e-5, atol=1e-5)
    with sparse_model(m, torch.full((2,), 0.2)):
        assert (m(b, 0) - ref).abs().max() > 1e-3
    torch.testing.assert_close(m(b, 0), ref)  # restored


# -- predictors ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained():
    m = tiny_model(layers=2)
    bs = batches(n=10, T=48)
    t = calibrate_thresholds(m, bs, 0.5)
    # rank = dim: a random tiny gate has a flat spectrum, so only full rank can be accurate; the real model's
    # low-rank quality is measured by benchmarks/bench_sparsity.py
    p = train_predictors(m, bs, t, rank=48, epochs=2, batch_size=64, progress=False, max_tokens=None)
    return m, bs, t, p


def test_predictors_reach_target_recall_on_held_out_activations(trained):
    m, bs, t, p = trained
    for layer in p.meta["layers"]:
        assert layer["recall"] >= 0.95
        assert layer["predicted_frac"] < 0.6  # and selects: about the active half, not everything
    # and on fresh text
    ev = evaluate(m, batches(n=3, T=48, seed=7), t, p)
    assert ev["recall"] > 0.85
    assert ev["active_frac"] == pytest.approx(0.5, abs=0.1)
    assert ev["used_frac"] <= ev["active_frac"] + 1e-9
    assert 0 < ev["window"]["5"]["hit_rate"] <= 1
    assert ev["window"]["5"]["loaded_frac_per_token"] <= ev["window"]["1"]["loaded_frac_per_token"]
    assert ev["window"]["5"]["resident_frac"] >= ev["predicted_frac"]
    assert ev["ppl_windowed"] <= ev["ppl_predicted"] * 1.02  # more neurons kept: no worse, up to noise
    assert ev["top1_agreement_thresholded"] > 0.5 and ev["ppl_dense"] > 1


def test_predict_is_union_over_rows(trained):
    m, bs, t, p = trained
    x = torch.randn(3, 48)
    ids = p.predict(0, x)
    union = torch.zeros(80, dtype=torch.bool)
    for r in x:
        union[p.predict(0, r)] = True
    assert torch.equal(ids, union.nonzero().flatten())


def test_predictors_save_load_round_trip_and_fingerprint(trained, tmp_path):
    m, bs, t, p = trained
    fp = model_fingerprint(m)
    assert fp != model_fingerprint(tiny_model(seed=3))
    path = tmp_path / "pred.safetensors"
    p.save(path, fp)
    q = Predictors.load(path, fp)
    x = torch.randn(4, 48)
    for i in range(2):
        assert torch.equal(p.predict(i, x), q.predict(i, x))
    assert torch.equal(q.thresholds, t) and q.meta["rank"] == 48
    with pytest.raises(ValueError, match="trained for model"):
        Predictors.load(path, "somethingelse")
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not an ioaware predictor file"):
        Predictors.load(tmp_path / "other.safetensors", fp)


# -- neuron cache -------------------------------------------------------------------------------------------------

def bundles_for(ids, hidden=4):
    # the bundle of neuron i is filled with i, so any slot mix-up shows in gather
    return ids.float()[:, None, None].expand(-1, 3, hidden).clone()


def run_tokens(c: LayerNeuronCache, seq):
    for ids in seq:
        ids = torch.tensor(sorted(ids), dtype=torch.long)
        c.load(ids, bundles_for)
        got = c.gather(ids)
        assert torch.equal(got[:, 0, 0], ids.float())
        c.step_window(ids)
        c.evict_outside_window()
        c.check()


@pytest.mark.parametrize("seed", range(6))
def test_neuron_cache_random_sequences_keep_maps_consistent(seed):
    rnd = random.Random(seed)
    n, cap, k = 50, rnd.choice([12, 30, 50]), rnd.choice([1, 3, 5])
    c = LayerNeuronCache(n, cap, hidden=4, window=k)
    ptr = c.buf.data_ptr()
    seq = [rnd.sample(range(n), rnd.randint(0, min(cap, 12))) for _ in range(60)]
    run_tokens(c, seq)
    assert c.buf.data_ptr() == ptr  # never reallocated
    resident = set(c.resident()[1].tolist())
    window = set().union(*[set(s) for s in seq[-k:]])
    assert resident <= window
    if c.stats.evicted_forced == 0:
        assert resident == window  # with room to spare, the window is exactly what stays
    assert c.bytes_resident == len(resident) * 3 * 4 * 4


def test_neuron_cache_hit_rate_of_repeated_sequences():
    c = LayerNeuronCache(100, 100, hidden=4, window=2)
    A, B, C = list(range(0, 10)), list(range(10, 20)), list(range(20, 30))
    run_tokens(c, [A] * 5)
    assert c.stats.hit_rate == pytest.approx(4 / 5)  # only the first token misses
    c = LayerNeuronCache(100, 100, hidden=4, window=2)
    run_tokens(c, [A, B, A, B, A, B])  # period 2 fits a window of 2: after A and B, all hits
    assert c.stats.hit_rate == pytest.approx(4 / 6)
    c = LayerNeuronCache(100, 100, hidden=4, window=2)
    run_tokens(c, [A, B, C] * 3)  # period 3 does not: every token misses
    assert c.stats.hit_rate == 0 and c.stats.evicted_window == 10 * 9 - 20


def test_neuron_cache_capacity_short_evicts_lru_and_counts():
    c = LayerNeuronCache(100, 15, hidden=4, window=5)
    run_tokens(c, [range(0, 10), range(10, 20)])  # the window wants 20 > 15: 5 of token 0's go
    assert c.stats.evicted_forced == 5 and c.n == 15
    assert set(range(10, 20)) <= set(c.resident()[1].tolist())
    with pytest.raises(ValueError, match="raise the memory budget"):
        c.load(torch.arange(30, 46), bundles_for)


def test_neuron_cache_layers_and_stats():
    nc = NeuronCache(3, 20, [5, 10, 20], hidden=4, window=2)
    assert len(nc) == 3 and nc[1].capacity == 10
    nc[0].load(torch.tensor([1, 2]), bundles_for)
    s = nc.stats()
    assert s["lookups"] == 2 and s["hits"] == 0 and s["bytes_resident"] == 2 * NeuronCache.bytes_per_neuron(4)
    assert s["bytes_capacity"] == 35 * 3 * 4 * 4
