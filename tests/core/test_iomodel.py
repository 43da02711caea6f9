"""The iomodel: Cost arithmetic, roofline, and attention's FLOP and HBM-traffic formulas."""

import math

import pytest

from ioaware.hardware import get_spec
from ioaware.iomodel import (
    REGISTRY,
    Cost,
    attention_flops,
    attention_min_cost,
    blocks_for_sram,
    flash_attention_cost,
    roofline,
    standard_attention_cost,
)
from ioaware.iomodel.attention import flash_attention_theta


def test_cost_adds_and_scales():
    a = Cost.of(10, hbm=(100, 50))
    b = Cost.of(5, hbm=(1, 2), dram=(7, 0))
    c = a + b
    assert c.flops == 15 and c.read("hbm") == 101 and c.written("hbm") == 52 and c.bytes("dram") == 7
    d = 3 * a
    assert d.flops == 30 and d.bytes("hbm") == 450
    assert a.intensity() == pytest.approx(10 / 150)
    with pytest.raises(ValueError, match="unknown memory level"):
        Cost.of(1, cache=(1, 1))


def test_roofline_bound():
    h100 = get_spec("h100")
    compute = Cost.of(989.4e12, hbm=(1e9, 0))  # 1 s of FLOPs, 0.3 ms of bytes
    r = roofline(compute, h100, "bfloat16")
    assert r.bound == "compute" and r.time_s == pytest.approx(1.0)
    memory = Cost.of(1e9, hbm=(3.35e12, 0))
    r = roofline(memory, h100, "bf16")
    assert r.bound == "memory" and r.time_s == pytest.approx(1.0)
    assert r.ridge == pytest.approx(989.4e12 / 3.35e12)


def test_roofline_names_its_roofs_and_levels_need_their_bandwidth():
    h100 = get_spec("h100")
    r = roofline(Cost.of(1e12, hbm=(1e9, 0)), h100, "fp16")
    assert (r.peak_flops, r.bandwidth_Bps, r.source) == (h100.peak("fp16"), h100.hbm_bandwidth_Bps, "datasheet")
    # a datasheet gives no L2 or DRAM bandwidth: the roofline says so instead of using HBM's
    for level in ("l2", "dram"):
        with pytest.raises(ValueError, match=f"no bandwidth for level '{level}'"):
            roofline(Cost.of(1e12, **{level: (1e9, 0)}), h100, level=level)
    assert roofline(Cost.of(1.0, dram=(2e9, 0)), h100, level="dram", bandwidth_Bps=1e9).time_s == pytest.approx(2.0)
    # measured=True on a CPU spec (no probe of a host exists) is the spec's own roofline
    from ioaware.hardware import detect

    host = detect("cpu")
    c = Cost.of(1e12, hbm=(1e9, 0))
    assert roofline(c, host, "float32", measured=True) == roofline(c, host, "float32")


def test_flop_convention():
    f = attention_flops(2, 4, 128, 128, 64)
    assert f == 4 * 2 * 4 * 128 * 128 * 64
    assert attention_flops(2, 4, 128, 128, 64, causal=True) == f / 2
    assert attention_flops(2, 4, 128, 128, 64, backward=True) == 2.5 * f


def test_standard_attention_traffic_by_hand():
    # n = m = 4, d = 2, fp16: read Q,K (16), S (16), P,V (16+8)... counted per kernel
    c = standard_attention_cost(1, 1, 4, 4, 2, elem_bytes=2)
    n, m, d = 4, 4, 2
    assert c.read("hbm") == 2 * (n * d + m * d + n * m + n * m + m * d)
    assert c.written("hbm") == 2 * (2 * n * m + n * d)


def test_flash_forward_traffic_by_hand():
    # N=256, d=64, tiles 64x64, non-causal: Q once, K and V once per query block (4 blocks), O and LSE once
    N, d = 256, 64
    c = flash_attention_cost(1, 1, N, N, d, block_q=64, block_k=64, elem_bytes=2)
    assert c.read("hbm") == 2 * (N * d + 2 * N * d * 4)
    assert c.written("hbm") == 2 * N * d + 4 * N


def test_flash_causal_reads_about_half_the_kv():
    full = flash_attention_cost(1, 1, 4096, 4096, 64, block_q=64, block_k=64)
    causal = flash_attention_cost(1, 1, 4096, 4096, 64, block_q=64, block_k=64, causal=True)
    kv_full = full.read("hbm") - 2 * 4096 * 64
    kv_causal = causal.read("hbm") - 2 * 4096 * 64
    assert kv_causal / kv_full == pytest.approx(0.5, abs=0.01)


def test_flash_traffic_scales_as_n2d2_over_m():
    # doubling on-chip memory M halves the quadratic term; quadrupling N multiplies it by 16
    d = 64
    t = lambda N, M: flash_attention_cost(1, 1, N, N, d, sram_bytes=M, elem_bytes=2).bytes("hbm")
    lin = lambda N: 2 * (2 * N * d) + 4 * N  # Q read, O written, LSE
    q1, q2 = t(8192, 64 * 1024) - lin(8192), t(8192, 128 * 1024) - lin(8192)
    assert q1 / q2 == pytest.approx(2.0, rel=0.02)
    assert (t(16384, 64 * 1024) - lin(16384)) / q1 == pytest.approx(4.0, rel=0.02)
    # and it sits within a small constant of the paper's count
    M_elems = 64 * 1024 / 2
    assert t(8192, 64 * 1024) / 2 == pytest.approx(flash_attention_theta(8192, d, M_elems), rel=0.1)


def test_flash_beats_standard_traffic():
    for causal in (False, True):
        for bwd in (False, True):
            std = standard_attention_cost(4, 16, 4096, 4096, 128, causal=causal, backward=bwd)
            fl = flash_attention_cost(4, 16, 4096, 4096, 128, sram_bytes=228 * 1024, causal=causal, backward=bwd)
            assert fl.bytes("hbm") < std.bytes("hbm") / 2


def test_blocks_for_sram():
    b = blocks_for_sram(228 * 1024, 128, 2)
    assert b.q == b.k == (228 * 1024 // 2) // (4 * 128)


def test_gqa_backward_reads_kv_once_per_kv_head():
    mha = flash_attention_cost(1, 8, 1024, 1024, 64, Hkv=8, block_q=64, block_k=64, backward=True)
    gqa = flash_attention_cost(1, 8, 1024, 1024, 64, Hkv=2, block_q=64, block_k=64, backward=True)
    assert gqa.bytes("hbm") < mha.bytes("hbm")


def test_min_cost_and_registry():
    c = attention_min_cost(1, 2, 100, 100, 64, elem_bytes=2)
    assert c.read("hbm") == 3 * 2 * 100 * 64 * 2 and c.written("hbm") == 2 * 100 * 64 * 2 + 2 * 100 * 4
    assert "flash_attn" in REGISTRY
    assert REGISTRY["flash_attn"](1, 128, 128, 4, 64).flops == attention_flops(1, 4, 128, 128, 64)
    assert math.isfinite(REGISTRY["flash_attn"](1, 128, 128, 4, 64, backward=True).bytes("hbm"))
