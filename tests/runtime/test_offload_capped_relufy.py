"""`ioaware bench offload --memory-cap` on a relufied model: the parent prepares the store with the adapter merged (as
`ioaware generate` does), every ioaware/naive/mmap child opens exactly that store (fingerprint of base + adapter,
the adapter's hash checked against the model), and the JSON says where llama.cpp's weights differ. The children run
in-process here (no cgroup, no spawn): what is tested is which weights they open."""

from __future__ import annotations

import time

import pytest
import torch

from ioaware.bench import offload_capped as oc
from ioaware.runtime import load_checkpoint
from ioaware.runtime.offload import session
from ioaware.runtime.offload import store as fs
from ioaware.runtime.offload.gate_copy import GATE_COPY
from ioaware.runtime.relufy import apply as ra
from ioaware.runtime.relufy.adapter import AdapterMismatchError, file_sha256, save_adapter

from .helpers import byte_vocab, tiny_hf_model, write_gguf
from .test_relufy_runtime import random_deltas

VOCAB = len(byte_vocab()[0])


@pytest.fixture()
def setup(tmp_path, monkeypatch):
    g = write_gguf(tmp_path / "tiny.gguf", tiny_hf_model(VOCAB, seed=7, max_position_embeddings=128), context=128)
    base = load_checkpoint(g).args
    ad = save_adapter(tmp_path / "relu.safetensors", random_deltas(base, 4, 0.1, seed=4), activation="shifted_relu",
                      shift=0.05, base_sha256=file_sha256(g))
    monkeypatch.setenv("IOAWARE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(session, "in_child", lambda fn, *args: fn(*args))  # one-off steps in this process
    short = session.load_text("calibration")[:3000]  # predictors fitted on less text: seconds, not tens of them
    monkeypatch.setattr(session, "load_text", lambda name: short)
    return g, ad


def _args(g, *extra):
    return oc.parse_args(["--model", str(g), "--budget", "40MiB", "--tokens", "3", "--window", "2", "--threads", "2",
                          "--torch-threads", "1", *extra])


def test_capped_bench_providers_run_the_relufied_store(setup):
    g, ad = setup
    a = _args(g, "--relufy", str(ad))
    spec = oc.prepare(a)
    fp = ra.relufied_fingerprint(fs.model_fingerprint(g), ad)
    assert spec["relufy"] == str(ad) and spec["relufy_sha256"] == file_sha256(ad)
    assert spec["store_fingerprint"] == fp and fs.open_store(spec["store"]).fingerprint == fp
    assert spec["ffn_activation"] == "shifted_relu" and GATE_COPY in spec["predictors"]
    for name in ("ioaware", "naive"):
        out = oc.child_ioaware(name, spec, a, time.perf_counter())
        w = out["weights"]
        assert w["store_fingerprint"] == fp and w["relufy"] == str(ad) and w["ffn_activation"] == "shifted_relu"
        assert len(out["tokens"]) == 3
        if name == "ioaware":
            assert out["predictor"] == GATE_COPY and 0 < out["ffn_sparsity_measured"] < 1
    llama = oc._weights(spec)  # what the JSON says for llama.cpp: the original GGUF, not the relufied model
    assert llama["differs_from_store"] and "cannot load a relufy adapter" in llama["note"]


def test_children_check_the_adapter(setup, tmp_path):
    """A child handed another adapter (same base, other deltas) finds no store of that fingerprint at the spec's
    path and refuses it; an adapter made for another model fails its hash check; --no-relufy gives the base store."""
    g, ad = setup
    a = _args(g, "--relufy", str(ad))
    spec = oc.prepare(a)
    other = save_adapter(tmp_path / "other.safetensors", random_deltas(load_checkpoint(g).args, 4, 0.1, seed=9),
                         activation="shifted_relu", shift=0.05, base_sha256=file_sha256(g))
    with pytest.raises(fs.StoreError, match="another model"):
        oc.child_ioaware("naive", {**spec, "relufy": str(other)}, a, time.perf_counter())
    wrong = save_adapter(tmp_path / "wrong.safetensors", {}, activation="relu", base_sha256="0" * 64)
    with pytest.raises(AdapterMismatchError, match="SHA-256"):
        oc.child_ioaware("naive", {**spec, "relufy": str(wrong)}, a, time.perf_counter())
    plain = oc.prepare(_args(g, "--no-relufy"))
    assert plain["relufy"] is None and plain["ffn_activation"] == "silu"
    assert plain["store_fingerprint"] == fs.model_fingerprint(g) != spec["store_fingerprint"]
    assert not oc._weights(plain)["differs_from_store"]
    with pytest.raises(SystemExit):
        _args(g, "--relufy", str(ad), "--no-relufy")
    torch.manual_seed(0)  # nothing above may depend on the global RNG's state; keep it defined for later tests
