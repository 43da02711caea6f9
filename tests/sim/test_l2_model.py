"""The L2 schedule model: limits, monotonicity and the kernels' request counts.

Its error against the H100 is measured with Nsight Compute (benchmarks/results/attention-dram-h100-*.json), not
asserted here.
"""

import pytest

from ioaware.iomodel import flash_attention_cost
from ioaware.sim.l2 import L2Model, flash_l2_traffic

SHAPE = dict(B=2, H=4, T=1000, D=64, block_q=128, block_k=64)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kernel", ["fwd", "dkdv", "dq"])
def test_limits(kernel, causal):
    B, H, T, D = 2, 4, 1000, 64
    e = 2
    q = B * H * T * D * e
    big = flash_l2_traffic(kernel, **SHAPE, Hkv=2, causal=causal, concurrent=4, model=L2Model(1e12, 0.0))
    tiny = flash_l2_traffic(kernel, **SHAPE, Hkv=2, causal=causal, concurrent=1, model=L2Model(1, 0.0))
    kv = 2 * (q // 2)  # K and V of two KV heads
    stats = B * H * T * 4
    compulsory = {"fwd": (q + kv, q + stats), "dq": (2 * q + kv + 2 * stats, q), "dkdv": (2 * q + kv + 2 * stats, kv)}
    # an L2 that holds everything reads each input once and, ending the kernel dirty, writes nothing back
    assert big.dram_read == compulsory[kernel][0]
    assert big.dram_write == 0
    # one program at a time through a one-byte L2: every request reaches DRAM, every write is written back
    assert tiny.dram_read == tiny.sm_read
    assert tiny.dram_write == tiny.sm_write == compulsory[kernel][1]


@pytest.mark.parametrize("causal", [False, True])
def test_requests_are_the_iomodel_count(causal):
    r = flash_l2_traffic("fwd", **SHAPE, causal=causal)
    cost = flash_attention_cost(2, 4, 1000, 1000, 64, block_q=128, block_k=64, causal=causal)
    assert r.sm_read == cost.read("hbm")
    assert r.sm_write == cost.written("hbm")
    # backward: the dK/dV and dQ kernels' requests plus the delta preprocess are the iomodel's backward count
    b = [flash_l2_traffic(k, **SHAPE, causal=causal) for k in ("dkdv", "dq")]
    bwd = flash_attention_cost(2, 4, 1000, 1000, 64, block_q=128, block_k=64, causal=causal, backward=True)
    pre_read, pre_write = 2 * 2 * 4 * 1000 * 64 * 2, 2 * 4 * 1000 * 4
    assert b[0].sm_read + b[1].sm_read + pre_read == bwd.read("hbm")
    assert b[0].sm_write + b[1].sm_write + pre_write == bwd.written("hbm")


@pytest.mark.parametrize("kernel", ["fwd", "dkdv", "dq"])
def test_more_l2_never_reads_more(kernel):
    reads = [flash_l2_traffic(kernel, 1, 4, 4096, 128, 128, 128, concurrent=16, model=L2Model(c, 0.0)).dram_read
             for c in (1e5, 1e6, 4e6, 1e7, 1e8)]
    assert reads == sorted(reads, reverse=True)
    assert reads[0] > reads[-1]


def test_concurrent_programs_share_reads():
    # programs of one head running together read each K/V block once; one at a time with a tiny L2, every time
    cap = 3 * 2 * 64 * 64 * 2
    together = flash_l2_traffic("fwd", 1, 1, 2048, 64, 128, 64, concurrent=16, model=L2Model(cap, 0.0))
    alone = flash_l2_traffic("fwd", 1, 1, 2048, 64, 128, 64, concurrent=1, model=L2Model(cap, 0.0))
    assert together.dram_read < alone.dram_read / 4


def test_drift_breaks_wave_sharing():
    # a head whose K/V exceeds the L2, read by one wave in lockstep: every block comes from DRAM once per wave.
    # Spread the same programs' starts over a whole program and a trailing program finds blocks already evicted.
    cap = 8 * 2 * 64 * 64 * 2
    lock = flash_l2_traffic("fwd", 1, 1, 4096, 64, 128, 64, concurrent=8, model=L2Model(cap, 0.0))
    drift = flash_l2_traffic("fwd", 1, 1, 4096, 64, 128, 64, concurrent=8, model=L2Model(cap, 1.0))
    assert drift.dram_read > lock.dram_read


def test_bad_kernel_name():
    with pytest.raises(ValueError, match="kernel must be"):
        flash_l2_traffic("bwd", 1, 1, 128, 64, 64, 64)
    with pytest.raises(ValueError, match="multiple of key/value heads"):
        flash_l2_traffic("fwd", 1, 3, 128, 64, 64, 64, Hkv=2)
