"""The iomodel's price of the reader's batches (iomodel/io.py): per-request cost interpolated at the sizes the reader
issues, the batch played out as the pool runs it, the reader's serial overhead, and the merge gap derived from the
same curve (monotone in it)."""

from __future__ import annotations

import pytest

from ioaware.hardware.probe_disk import throughput_at
from ioaware.iomodel.io import choose_merge_gap, predict_read_seconds, request_seconds

P = 4096


def affine_curve(latency_s: float, rate: float, threads=(1, 8), sizes=(4096, 16384, 65536, 262144)) -> dict:
    """A synthetic disk whose request of c bytes takes latency + c / rate on one of t busy threads."""
    pts = [{"chunk": c, "threads": t, "direct": True, "GBps": c * t / (latency_s + c / rate) / 1e9}
           for c in sizes for t in threads]
    return {"version": 1, "points": pts}


def test_request_cost_is_exact_on_an_affine_disk_and_small_reads_are_not_underpriced():
    lat, rate = 300e-6, 50e6
    c = affine_curve(lat, rate)
    for size in (4096, 8192, 12288, 40960, 65536, 200000):
        assert request_seconds(c, size, 8, True) == pytest.approx(lat + size / rate, rel=1e-9), size
    # where latency dominates, the throughput curve read in log(chunk) prices an 8 KiB read too cheaply
    fast = affine_curve(lat, 500e6)
    assert request_seconds(fast, 8192, 8, True) == pytest.approx(lat + 8192 / 500e6)
    assert 8192 * 8 / throughput_at(fast, 8192, 8, True) < 0.9 * request_seconds(fast, 8192, 8, True)
    # below the smallest probed size: as the smallest; above the largest: its throughput
    assert request_seconds(c, 512, 8, True) == pytest.approx(request_seconds(c, 4096, 8, True))
    big = request_seconds(c, 1 << 20, 8, True)
    assert big == pytest.approx((lat + 262144 / rate) * 4)


def test_batches_are_played_out_as_the_pool_runs_them():
    lat, rate = 200e-6, 100e6
    c = affine_curve(lat, rate)
    tau8 = request_seconds(c, P, 8, True)
    assert predict_read_seconds([P] * 16, c, threads=8) == pytest.approx(2 * tau8)  # two full rounds
    assert predict_read_seconds([P] * 9, c, threads=8) == pytest.approx(tau8 + request_seconds(c, P, 1, True))
    assert predict_read_seconds([P], c, threads=8) == pytest.approx(request_seconds(c, P, 1, True))
    # one thread dealt a long chunk: once the others are done it runs alone, faster than at 8-thread speed
    skew = [262144] + [P] * 7 + [P] * 8
    per_thread_max = request_seconds(c, 262144, 8, True) + request_seconds(c, P, 8, True)
    got = predict_read_seconds(skew, c, threads=8)
    assert 2 * tau8 < got < per_thread_max
    # a curve probed only at 8 threads: fewer busy threads are not assumed faster
    only8 = affine_curve(lat, rate, threads=(8,))
    assert predict_read_seconds([P] * 10, only8, threads=8) == pytest.approx(2 * request_seconds(only8, P, 8, True))
    # the reader's serial work around its requests (reader.probe_reads) is added per batch and per chunk
    over = {**c, "reader_overhead": {"batch_s": 1e-4, "chunk_s": 2e-6, "batches": 3}}
    assert predict_read_seconds([P] * 16, over, 8) == pytest.approx(2 * tau8 + 1e-4 + 16 * 2e-6)
    assert predict_read_seconds([], over) == 0.0


def _brute_gap(curve, k=8, limit=1 << 20):
    two, g = 2 * request_seconds(curve, P, k, True), 0
    while g + P <= limit and request_seconds(curve, 2 * P + g + P, k, True) <= two:
        g += P
    return g


def test_merge_gap_comes_from_the_given_curve_and_is_monotone_in_it():
    # affine disk: merging two one-page runs across g pays while g / rate <= latency
    lat, rate = 300e-6, 50e6
    c = affine_curve(lat, rate)
    g = choose_merge_gap(c, 8)
    assert g == _brute_gap(c) and g % P == 0
    assert g <= lat * rate < g + P + 1e-6
    assert choose_merge_gap(affine_curve(lat, rate / 2), 8) < g  # another curve, another gap
    # dearer small requests (latency up) -> gap never smaller; a faster stream (rate up) -> gap never smaller
    gaps = [choose_merge_gap(affine_curve(lt, rate), 8) for lt in (50e-6, 100e-6, 300e-6, 600e-6)]
    assert gaps == sorted(gaps) and gaps[0] < gaps[-1]
    gaps = [choose_merge_gap(affine_curve(lat, r), 8) for r in (10e6, 50e6, 200e6)]
    assert gaps == sorted(gaps) and gaps[0] < gaps[-1]
    assert choose_merge_gap(c, 8, limit=8192) == 8192
    # a disk where a page costs as much as streaming: no gap is worth reading through
    assert choose_merge_gap(affine_curve(1e-9, 50e6), 8) == 0
