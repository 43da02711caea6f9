"""Predicted time of a batch of disk reads, from the disk's measured throughput-vs-chunk-size curve.

The reader (`runtime.offload.reader.NeuronReader._issue`) deals a batch's n chunks round-robin to k = min(threads, n)
pool threads (thread i reads chunks i, i + k, ...), each reading its chunks one after another, so the batch ends when
its last thread does. While a threads are still busy, each one's request of c bytes advances at 1 / tau(c, a), tau
the per-request seconds below (at a busy threads each gets 1/a of the a-thread throughput BW(c, a) of `ioaware probe
disk`'s curve); the batch is played out event by event (a request ends, the busy count changes). For n a multiple
of k and equal chunks this is sum c / BW(c, k); a last round's partial fill is paid in full at the busy count it
runs with (21 chunks on 8 threads: 2 rounds at 8 threads, then 5 chunks at 5), and a thread dealt more bytes than
the others finishes faster once they are done, which a max over the threads' sums at k-thread speed overpriced
(benchmarks/results/flash-relufied-pagebundles-smollm2-cpu-2026-12-03.json, the iomodel's merge gap, requests in
flight per token: 193-245 ms measured, 171-194 ms played out, 239-307 ms as the max of the sums). A single chunk is
read on the calling thread, tau(c, 1).

Between probed chunk sizes the curve is read as a cost per request, not as a throughput: at t threads a request of
c bytes keeps one thread busy tau_t(c) = c t / BW_t(c), and tau_t is interpolated linearly in c between the probed
sizes (a latency plus bytes at a rate, per segment). Throughput interpolated in log(c) (probe_disk.throughput_at)
prices small requests too cheaply where the per-request cost dominates: with 4 and 16 KiB probed, an 8 KiB read
at the midpoint throughput is charged tau(4 KiB), not tau(4) + (tau(16) - tau(4)) / 3. Below the smallest probed
size a request costs what the smallest one does; above the largest, its bytes at the largest one's throughput.

Nothing else is modelled (no fitted efficiency factor). The plain disk probe's loop leaves out what the reader does
per request (planning, dispatch, gathering and hashing each landed chunk under the GIL); `ioaware generate` therefore
prices with points measured through the reader itself at the request sizes it issues (`reader.probe_reads`), over
the re-measured disk curve for the rest, plus, per batch, the reader's serial time around its requests measured in
the same probe (curve["reader_overhead"]: batch_s + chunk_s per chunk). What no curve holds is the disk's own drift
between the probe and the run (dev/offload/NOTES.md: on the 2-core VM the same point read 1.04-1.62 GB/s within
seconds), which is why both are measured at the start of each run.
"""

from __future__ import annotations

import math
from collections.abc import Iterable


def _points(curve: dict, direct: bool | None) -> list[dict]:
    pts = curve["points"]
    if direct is not None:
        pts = [p for p in pts if p["direct"] == direct] or pts  # a curve without that mode: what it has
    return pts


def request_seconds(curve: dict, chunk: int, threads: int = 1, direct: bool | None = None) -> float:
    """Seconds one of `threads` busy threads spends on one request of `chunk` bytes (module docstring): tau_t(c)
    interpolated linearly in c at each probed thread count, then, as a throughput c t / tau, in log(threads).

    Examples:
        >>> pts = [{"chunk": c, "threads": 8, "GBps": g, "direct": True} for c, g in [(4096, 0.2), (16384, 0.6)]]
        >>> curve = {"points": pts}
        >>> round(request_seconds(curve, 4096, 8) * 1e6, 2), round(request_seconds(curve, 16384, 8) * 1e6, 2)
        (163.84, 218.45)
        >>> round(request_seconds(curve, 8192, 8) * 1e6, 2)   # a third of the way: latency + bytes, not 8 KiB/0.4
        182.04
    """
    by_t: dict[int, list[tuple[int, float]]] = {}
    for p in _points(curve, direct):
        if p["GBps"] > 0:
            tau = p["chunk"] * p["threads"] / (p["GBps"] * 1e9)  # one request's seconds on one of the busy threads
            by_t.setdefault(int(p["threads"]), []).append((int(p["chunk"]), tau))
    if not by_t:
        raise ValueError("the disk curve has no point with a throughput above 0; run `ioaware probe disk` again")
    c = max(int(chunk), 1)
    bw = {}
    for t, pts in by_t.items():
        pts.sort()
        cs = [x for x, _ in pts]
        taus = [y for _, y in pts]
        if c <= cs[0]:
            tau = taus[0]
        elif c >= cs[-1]:
            tau = taus[-1] * c / cs[-1]
        else:
            i = next(j for j in range(len(cs) - 1) if cs[j] <= c <= cs[j + 1])
            w = (c - cs[i]) / (cs[i + 1] - cs[i])
            tau = taus[i] * (1 - w) + taus[i + 1] * w
        bw[t] = c * t / tau
    ts = sorted(bw)
    k = max(int(threads), 1)
    if k <= ts[0]:  # fewer threads than probed: no evidence a request is faster, so as at the fewest probed
        return c * ts[0] / bw[ts[0]]
    if k >= ts[-1]:
        b = bw[ts[-1]]
    else:  # as probe_disk.throughput_at: throughput linear in log(threads)
        i = next(j for j in range(len(ts) - 1) if ts[j] <= k <= ts[j + 1])
        w = (math.log2(k) - math.log2(ts[i])) / (math.log2(ts[i + 1]) - math.log2(ts[i]))
        b = bw[ts[i]] * (1 - w) + bw[ts[i + 1]] * w
    return c * k / b


def predict_read_seconds(chunk_sizes: Iterable[int], curve: dict, threads: int = 8,
                         direct: bool | None = None) -> float:
    """Seconds to read chunks of the given sizes (bytes, in issue order) as one batch on a pool of `threads` threads,
    dealt round-robin as the reader does.

    `curve` is what `ioaware probe disk` measured: {"points": [{"chunk", "threads", "GBps", "direct"}, ...]}.

    Examples:
        >>> curve = {"points": [{"chunk": c, "threads": t, "GBps": g, "direct": True}
        ...                     for c, t, g in [(4096, 1, 0.1), (4096, 8, 0.5), (2**20, 1, 1.0), (2**20, 8, 2.0)]]}
        >>> predict_read_seconds([2**20] * 16, curve, threads=8)          # 16 MiB at 2 GB/s
        0.008388608
        >>> predict_read_seconds([2**20], curve, threads=8)               # one chunk: one read in flight
        0.001048576
        >>> round(predict_read_seconds([2**20] * 9, curve, threads=8), 6)   # 8 at 8 threads, then the 9th alone
        0.005243
    """
    sizes = [int(c) for c in chunk_sizes]
    n = len(sizes)
    if n == 0:
        return 0.0
    over = curve.get("reader_overhead")  # the reader's serial work around its requests (reader.probe_reads)
    serial = over["batch_s"] + over["chunk_s"] * n if over else 0.0
    if n == 1:
        return serial + request_seconds(curve, sizes[0], 1, direct)
    k = min(threads, n)
    memo: dict[tuple[int, int], float] = {}

    def tau(c: int, a: int) -> float:
        if (c, a) not in memo:
            memo[c, a] = request_seconds(curve, c, a, direct)
        return memo[c, a]

    queues = [sizes[i::k] for i in range(k)]
    pos, left, t = [0] * k, [1.0] * k, 0.0  # left: the fraction of each thread's current request still to read
    busy = list(range(k))
    while busy:
        a = len(busy)
        dt = min(left[i] * tau(queues[i][pos[i]], a) for i in busy)
        t += dt
        for i in busy:
            left[i] -= dt / tau(queues[i][pos[i]], a)
            if left[i] <= 1e-9:
                pos[i], left[i] = pos[i] + 1, 1.0
        busy = [i for i in busy if pos[i] < len(queues[i])]
    return serial + t


def predict_batches_seconds(batches: Iterable[Iterable[int]], curve: dict, threads: int = 8,
                            direct: bool | None = None) -> float:
    """Batches issued one after another (one per layer and token): the sum of each batch's prediction.

    Examples:
        >>> pts = [{"chunk": 2**20, "threads": t, "GBps": g, "direct": True} for t, g in [(1, 1.0), (8, 2.0)]]
        >>> curve = {"points": pts}
        >>> predict_batches_seconds([[2**20] * 8, [2**20] * 8], curve, threads=8)
        0.008388608
    """
    return sum(predict_read_seconds(b, curve, threads, direct) for b in batches)


def choose_merge_gap(curve: dict, threads: int = 8, direct: bool | None = True, page: int = 4096,
                     run: int | None = None, limit: int = 1 << 20) -> int:
    """The reader's merge gap that minimises the predicted time (`request_seconds`, the same pricing as
    predict_read_seconds): two runs of `run` bytes (default one page: a scattered neuron's read) a gap g apart are
    read as one request when tau(2 run + g) <= 2 tau(run), with every thread of the pool busy. The largest g,
    in whole pages, up to which merging keeps paying (scanned from 0 up; at most `limit`). More expensive small
    requests -> a larger gap; a faster stream -> a larger gap.

    Examples:
        >>> pts = [{"chunk": c, "threads": 8, "GBps": g, "direct": True} for c, g in [(4096, 0.25), (262144, 1.5)]]
        >>> choose_merge_gap({"points": pts}, 8)   # tau(4K) = 131 us; each page more costs 20.1 us
        20480
    """
    run = run or page
    k = max(int(threads), 1)
    two = 2 * request_seconds(curve, run, k, direct)
    g = 0
    while g + page <= limit and request_seconds(curve, 2 * run + g + page, k, direct) <= two:
        g += page
    return g


def merge_gap_bytes(curve: dict, threads: int = 8, direct: bool | None = True, page: int = 4096) -> int:
    """The largest gap worth reading through between two runs: the bytes a large read streams in the time one
    extra page-sized request costs at this thread count, BW(best) * page / BW(page), rounded down to pages. A
    first-order estimate (kept for `bench offload-replay`); the streamed runtime uses `choose_merge_gap`, which
    prices with the curve as predict_read_seconds does."""
    from ..hardware.probe_disk import best_chunk, throughput_at

    big = throughput_at(curve, best_chunk(curve, threads, direct), threads, direct)
    small = throughput_at(curve, page, threads, direct)
    return int(big * page / small) // page * page
