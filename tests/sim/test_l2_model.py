"""The L2 schedule model: limits and monotonicity (its error against the H100 is measured, not asserted)."""

import pytest

from ioaware.iomodel import flash_attention_cost
from ioaware.sim.l2 import flash_fwd_l2_traffic


@pytest.mark.parametrize("causal", [False, True])
def test_limits(causal):
    B, H, T, D, bq, bk = 2, 3, 1000, 64, 128, 64
    q_bytes = B * H * T * D * 2
    big = flash_fwd_l2_traffic(B, H, T, D, bq, bk, causal=causal, concurrent=4, l2_bytes=1e12)
    assert big.dram_read == q_bytes + 2 * B * H * T * D * 2  # every K/V block read from DRAM once
    tiny = flash_fwd_l2_traffic(B, H, T, D, bq, bk, causal=causal, concurrent=1, l2_bytes=1)
    assert tiny.dram_read == tiny.sm_requests  # no reuse at all
    # the requests are the iomodel's schedule count
    model = flash_attention_cost(B, H, T, T, D, block_q=bq, block_k=bk, causal=causal)
    assert big.sm_requests == model.read("hbm")


def test_more_l2_never_reads_more():
    reads = [flash_fwd_l2_traffic(1, 4, 4096, 128, 128, 128, concurrent=16, l2_bytes=c).dram_read
             for c in (1e5, 1e6, 4e6, 1e7, 1e8)]
    assert reads == sorted(reads, reverse=True)


def test_concurrent_programs_share_reads():
    # programs of one head running together read each K/V block once; one at a time with a tiny L2, every time
    together = flash_fwd_l2_traffic(1, 1, 2048, 64, 128, 64, concurrent=16, l2_bytes=3 * 2 * 64 * 64 * 2)
    alone = flash_fwd_l2_traffic(1, 1, 2048, 64, 128, 64, concurrent=1, l2_bytes=3 * 2 * 64 * 64 * 2)
    assert together.dram_read < alone.dram_read / 4
