"""The gate-copy predictor of a relufied store (offload/gate_copy.py): fewer neurons loaded than the low-rank head on
the same tokens, the missed fraction of firing neurons measured and reported, its forms (file, packed) agreeing, and
the budgeted session picking it (and its own cache file) for a relufied store only."""

from __future__ import annotations

import pytest
import torch

from ioaware.runtime import build_model, load_checkpoint
from ioaware.runtime.offload import gate_copy as gc
from ioaware.runtime.offload import store as fs
from ioaware.runtime.offload import streamed_ffn as ff
from ioaware.runtime.offload.activations import collect_ffn_inputs
from ioaware.runtime.offload.gate_copy import train_gate_copy
from ioaware.runtime.offload.predictors import Predictors, train_predictors
from ioaware.runtime.offload.session import predictor_file
from ioaware.runtime.relufy import apply as ra
from ioaware.runtime.relufy.adapter import file_sha256, save_adapter

from .helpers import byte_vocab, tiny_hf_model, write_gguf
from .test_relufy_runtime import random_deltas

VOCAB = len(byte_vocab()[0])


@pytest.fixture(scope="module")
def relu(tmp_path_factory):
    """A tiny GGUF (dim 64: two 4-bit groups a row), a shifted-ReLU adapter, the dense relufied model, its store,
    and FFN inputs of calibration and held-out tokens."""
    d = tmp_path_factory.mktemp("gatecopy")
    g = write_gguf(d / "tiny.gguf", tiny_hf_model(VOCAB, seed=5), context=64)
    ad = save_adapter(d / "relu.safetensors", random_deltas(load_checkpoint(g).args, 4, 0.1, seed=3),
                      activation="shifted_relu", shift=0.05, base_sha256=file_sha256(g))
    ck = ra.load_relufied(g, ad)
    dense = build_model(ck, "cpu", torch.float32, "dense")
    gen = torch.Generator().manual_seed(0)
    calib = [torch.randint(0, VOCAB, (1, 48), generator=gen) for _ in range(6)]
    held = [torch.randint(0, VOCAB, (1, 48), generator=gen) for _ in range(3)]
    st = fs.open_store(fs.convert(g, d / "relu.store", "float16", progress=False, relufy=ad))
    return g, ad, dense, st, calib, collect_ffn_inputs(dense, held)


def _firing(dense, inputs):
    out = []
    for i, layer in enumerate(dense.layers):
        ffn = layer.feed_forward
        gate = ffn.w13(inputs[i].float()).split(ffn.hidden, dim=-1)[0]
        out.append(ffn.act(gate) > 0)
    return out


def test_gate_copy_loads_fewer_neurons_than_the_lowrank_head(relu):
    """On the same held-out FFN inputs: the gate copy predicts fewer neurons than the low-rank head (trained as the
    runtime trained it before, 95% recall), the firing neurons it misses are counted and reported, and its measured
    miss rate stays near the calibrated one."""
    g, ad, dense, st, calib, held = relu
    L = dense.args.n_layers
    old = train_predictors(dense, calib, torch.zeros(L), rank=8, epochs=2, batch_size=64, progress=False,
                           max_tokens=None)
    new = train_gate_copy_checked(dense, calib, 0.99)
    fire = _firing(dense, held)
    n_old = n_new = n_fire = missed = 0
    for i in range(L):
        p_old = old.predict_mask(i, held[i])
        p_new = new.predict_mask(i, held[i])
        n_old, n_new, n_fire = n_old + int(p_old.sum()), n_new + int(p_new.sum()), n_fire + int(fire[i].sum())
        missed += int((fire[i] & ~p_new).sum())
    assert 0 < n_fire < fire[0].numel() * L  # the labels are real: some neurons fire, some are exact zeros
    assert n_new < 0.8 * n_old, (n_new, n_old)
    assert n_new >= 0.9 * n_fire  # it does not get there by dropping what fires
    missed_frac = missed / n_fire
    assert missed_frac < 0.05, missed_frac  # 1% on the calibration tokens; a few % on unseen ones
    for rep in new.meta["layers"]:
        assert rep["recall"] >= 0.99 and rep["missed_frac"] == pytest.approx(1 - rep["recall"])
        assert rep["predicted_frac"] >= rep["active_frac"] * 0.99


def train_gate_copy_checked(dense, calib, recall):
    p = train_gate_copy(dense, calib, recall, max_tokens=None, progress=False)
    assert p.activation == gc.GATE_COPY and p.meta["target_recall"] == recall and p.rank == dense.args.dim
    assert p.meta["shift"] == pytest.approx(0.05)
    return p


def test_gate_copy_forms_agree_and_round_trip(relu, tmp_path):
    """File form (4-bit codes, fp32 scale/zero) and run form (the int4 kernel's packing) give the same logits up to
    the kernel's bf16 activations (bound measured against plain PyTorch's bf16 matmul of the same weights); a save
    and load gives the same run form as packing before the save (the file holds codes two a byte, ~half a byte a
    weight); the run form holds fewer bytes than a fp16 copy of the gate."""
    g, ad, dense, st, calib, held = relu
    p = train_gate_copy(dense, calib, 0.99, max_tokens=None, progress=False)
    p.save(tmp_path / "p.safetensors", "fp")
    H, d, L = dense.args.hidden_dim, dense.args.dim, dense.args.n_layers
    from safetensors import safe_open

    with safe_open(str(tmp_path / "p.safetensors"), "pt") as f:  # not a byte a code
        assert f.get_slice("0.A").get_shape() == [H, d // 2] and f.get_slice("0.A").get_dtype() == "U8"
    q = Predictors.load(tmp_path / "p.safetensors", "fp")
    run = q.to(dtype=torch.float16)
    x = held[0][:7].float()
    before = p.to(dtype=torch.float16)
    assert torch.equal(q.cut, p.cut)
    for i in range(L):
        assert torch.equal(run.logits(i, x), before.logits(i, x))
        assert torch.equal(run.predict(i, x), before.predict(i, x))
    W = gc.dequantize(p.A[0], p.B[0], p.w[0])
    want = (x.double() @ W.double().T + p.b[0].double()).float()
    torch_bf16 = (x.bfloat16() @ W.bfloat16().T).float() + p.b[0]
    err_run = (run.logits(0, x) - want).abs().max()
    err_ref = (torch_bf16 - want).abs().max()
    assert err_run <= 2 * err_ref + 1e-6, (err_run, err_ref)
    torch.testing.assert_close(p.logits(0, x), want, rtol=1e-5, atol=1e-5)  # file form: fp32
    if gc.is_packed(run.A[0], run.B[0]):
        assert ff.predictor_bytes(run) < dense.args.n_layers * H * d * 2
        assert ff.predictor_bytes(run) <= gc.gate_copy_bytes_estimate(dense.args)
    with pytest.raises(ValueError, match="packed"):
        run.save(tmp_path / "q.safetensors", "fp")


def test_gate_copy_refuses_a_swiglu_model(relu):
    g, *_ = relu
    base = build_model(load_checkpoint(g), "cpu", torch.float32, "dense")
    with pytest.raises(ValueError, match="relufied"):
        train_gate_copy(base, [torch.randint(0, VOCAB, (1, 16))], progress=False)


def test_session_predictor_files(tmp_path):
    """A relufied store caches the gate copy under its own name (an older low-rank file is never reused for it); a
    SwiGLU store's name is unchanged."""
    swiglu = predictor_file(tmp_path, "0123456789abcdef0000", 0.5, False)
    relu = predictor_file(tmp_path, "0123456789abcdef0000", 0.5, True)
    assert swiglu.name == "0123456789abcdef-s0.5-r64.safetensors"
    assert gc.GATE_COPY in relu.name and relu != swiglu
