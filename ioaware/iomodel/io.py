"""Predicted time of a batch of disk reads, from the disk's measured throughput-vs-chunk-size curve.

The reader (`runtime.offload.reader.NeuronReader._issue`) deals a batch's n chunks round-robin to k = min(threads, n)
pool threads (thread i reads chunks i, i + k, ...), so the batch ends when its busiest thread does:

    T = max_i sum_{j = i mod k} c_j / (BW(c_j, k) / k)

with BW read off `ioaware probe disk`'s curve at k threads (each of k busy threads gets 1/k of the k-thread
throughput); a single chunk is read on the calling thread, c / BW(c, 1). For n a multiple of k and equal chunks this
is sum c / BW(c, k); otherwise the last round's partial fill is paid in full (21 chunks on 8 threads: 3 rounds, not
2.6). Nothing else is modelled (no fitted efficiency factor): the curve already holds the disk's latency, queueing and
the reader's Python overhead, because it was measured the same way. What it cannot hold is the disk's own drift
between the probe and the run (dev/offload/NOTES.md: on the 2-core VM the same point read 1.04-1.62 GB/s within
seconds), which is why `ioaware bench offload` probes the store's disk again in the same run.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable


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
        >>> round(predict_read_seconds([2**20] * 9, curve, threads=8), 6)   # 2 rounds on 8 threads: the 9th alone
        0.008389
    """
    from ..hardware.probe_disk import throughput_at

    sizes = [int(c) for c in chunk_sizes]
    n = len(sizes)
    if n == 0:
        return 0.0
    if n == 1:
        return sizes[0] / throughput_at(curve, sizes[0], 1, direct)
    k = min(threads, n)
    per_byte = {c: k / throughput_at(curve, c, k, direct) for c in Counter(sizes)}  # seconds per byte, one thread
    return max(sum(c * per_byte[c] for c in sizes[i::k]) for i in range(k))


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


def merge_gap_bytes(curve: dict, threads: int = 8, direct: bool | None = True, page: int = 4096) -> int:
    """The largest gap worth reading through between two runs: the bytes a large read streams in the time one
    extra page-sized request costs at this thread count, BW(best) * page / BW(page), rounded down to pages."""
    from ..hardware.probe_disk import best_chunk, throughput_at

    big = throughput_at(curve, best_chunk(curve, threads, direct), threads, direct)
    small = throughput_at(curve, page, threads, direct)
    return int(big * page / small) // page * page
