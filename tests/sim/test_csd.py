"""InstInfer vs FlexGen: SparF's arithmetic and bytes, the decode step's event model against its closed form, and
the shape of the throughput comparison."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from ioaware.sim.cambricon.models import MODELS
from ioaware.sim.csd import CSD, SSD, InstInferSim, Setup, flexgen_step, generation, instinfer_step
from ioaware.sim.csd.configs import SparF
from ioaware.sim.csd.model import asymptotic_speedup, instinfer_stages
from ioaware.sim.csd.sparf import attention_reference, read_fraction, sparf_attention, sparf_bytes


def _qkv(s: int, d: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(d), rng.standard_normal((s, d)), rng.standard_normal((s, d))


@pytest.mark.parametrize("s,d", [(1, 128), (97, 128), (1000, 64)], ids=["s1-d128", "s97-d128", "s1000-d64"])
def test_sparf_keeping_everything_is_exact_attention(s, d):
    q, K, V = _qkv(s, d)
    out, st = sparf_attention(q, K, V, r=d, k=s)
    np.testing.assert_allclose(out, attention_reference(q, K, V), rtol=1e-12, atol=1e-12)
    assert st["alpha"] == pytest.approx(1.0, abs=1e-12) and st["tokens_kept"] == s


@pytest.mark.parametrize("s", [16, 1000, 2048], ids=["s16", "s1000", "s2048"])
def test_sparf_counts_the_closed_form_bytes(s):
    q, K, V = _qkv(s, 128, seed=1)
    _, st = sparf_attention(q, K, V)
    b = sparf_bytes(s, 128)
    assert (st["step1_channels"], st["step2_pages"], st["pages_kept"]) == (b["step1_channels"], b["step2_pages"],
                                                                          b["pages_kept"])


def test_sparf_reads_three_sixteenths_at_one_eighth():
    assert read_fraction(2048, 128) == pytest.approx(1 / 16 + 1 / 8, rel=1e-12)  # r/d of K, then k/s of K and V


def test_sparf_finds_planted_tokens():
    """Keys aligned with q in a few pages: SparF keeps them and its output is close to exact attention, much closer
    than the mean of V alone."""
    s, d = 1024, 128
    rng = np.random.default_rng(5)
    q, K, V = rng.standard_normal(d), rng.standard_normal((s, d)) * 0.3, rng.standard_normal((s, d))
    hot = np.r_[160:176, 512:528, 900:916]
    K[hot] += 0.6 * q
    ref = attention_reference(q, K, V)
    out, st = sparf_attention(q, K, V)
    err = np.linalg.norm(out - ref) / np.linalg.norm(ref)
    base = np.linalg.norm(V.mean(0) - ref) / np.linalg.norm(ref)
    assert set(hot) <= set(range(s)) and st["pages_kept"] == 8
    assert err < 0.1 < base


def test_sparf_rejects_bad_shapes():
    q, K, V = _qkv(10, 8)
    with pytest.raises(ValueError, match="V"):
        sparf_attention(q, K, V[:5])
    with pytest.raises(ValueError, match="r <="):
        sparf_attention(q, K, V, r=9)


# -- the two systems --------------------------------------------------------------------------------------------
def test_flexgen_is_disk_bound_on_the_kv_cache():
    st = Setup(MODELS["opt-13b"])
    f = flexgen_step(st, 1536)
    kv = 2 * 2 * 16 * 1536 * 5120  # K and V, FP16, batch 16
    assert f["dtoc"] == pytest.approx(kv / SSD.read_Bps, rel=1e-12)
    assert f["layer"] == pytest.approx(f["dtoc"], rel=1e-12)  # weights on the GPU: ctog = 0, dtoc binds


def test_csd_4k_pages_are_array_bound():
    assert CSD.read_Bps(4096) == pytest.approx(128 * 4096 / 50e-6)  # below the 20 GB/s of the channels
    assert CSD.read_Bps(16384) == CSD.channel_total_Bps


@pytest.mark.parametrize("model,ctx", [("opt-13b", 1536), ("opt-30b", 700), ("llama2-13b", 3072)])
def test_event_step_equals_closed_form_serial(model, ctx):
    st = Setup(MODELS[model], micro_batches=1)
    assert InstInferSim(st).step(ctx) == pytest.approx(instinfer_step(st, ctx)["seconds"], rel=1e-12)


@pytest.mark.parametrize("model,ctx", [("opt-13b", 1536), ("opt-30b", 700), ("llama2-13b", 3072)])
def test_event_step_close_to_closed_form_pipelined(model, ctx):
    """One resource dominates (the CSD on KV, or the GPU on host-resident weights): the pipeline formula holds."""
    st = Setup(MODELS[model], micro_batches=2)
    ev, cf = InstInferSim(st).step(ctx), instinfer_step(st, ctx)["seconds"]
    assert ev == pytest.approx(cf, rel=0.03)
    assert InstInferSim(st).step(ctx) == ev  # deterministic


def test_closed_form_is_optimistic_near_balance():
    """Short context: GPU and CSD times are close and the two micro-batches leave bubbles the formula ignores."""
    st = Setup(MODELS["opt-13b"], micro_batches=2)
    ev, cf = InstInferSim(st).step(64), instinfer_step(st, 64)["seconds"]
    assert cf <= ev <= 1.15 * cf


def test_speedup_rises_with_length_toward_its_ceiling():
    st = Setup(MODELS["opt-13b"])
    sp = [generation(st, L, L, stride=max(1, L // 16))["speedup_decode"] for L in (128, 512, 2048, 8192)]
    assert all(b > a for a, b in zip(sp, sp[1:]))
    assert sp[1] - sp[0] > sp[2] - sp[1] > sp[3] - sp[2]  # saturating
    ceiling = asymptotic_speedup(st, 8192 + 4096)
    assert sp[-1] == pytest.approx(ceiling, rel=0.03)
    assert 5 < sp[-1] < 20  # the paper: up to 11.1x; what sets ours is in the README


def test_more_csds_raise_the_ceiling():
    one = Setup(MODELS["opt-13b"])
    two = Setup(MODELS["opt-13b"], csd=CSD.__class__(count=2))
    assert generation(two, 2048, 64)["speedup_decode"] > 1.5 * generation(one, 2048, 64)["speedup_decode"]


def test_csd_stage_is_sparf_bytes_over_internal_bandwidth():
    st = Setup(MODELS["opt-13b"], micro_batches=1)
    s = instinfer_stages(st, 2048)
    b = sparf_bytes(2048, 128)
    heads = 16 * 40
    want = heads * (b["step1_channels"] / CSD.read_Bps(16384) + b["step2_pages"] / CSD.read_Bps(4096))
    assert s.csd_read == pytest.approx(want, rel=1e-12)


def test_setup_and_generation_validate():
    with pytest.raises(ValueError, match="multiple of micro_batches"):
        Setup(MODELS["opt-13b"], batch=5, micro_batches=2)
    with pytest.raises(ValueError, match=">= 1 tokens"):
        generation(Setup(MODELS["opt-13b"]), 0, 10)
    assert math.isclose(SparF().k_frac, 1 / 8)


def test_cli_json(tmp_path):
    from ioaware.sim.csd.cli import main

    out = tmp_path / "c.json"
    assert main(["--lengths", "256,1024", "--json", str(out)]) == 0
    d = json.loads(out.read_text())
    assert [g["prompt"] for g in d["sweep"]] == [256, 1024]
    assert d["sweep"][1]["speedup_decode"] > d["sweep"][0]["speedup_decode"] > 1
    with pytest.raises(ValueError, match="--lengths"):
        main(["--lengths", "a,b"])
