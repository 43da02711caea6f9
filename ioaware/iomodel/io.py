"""Predicted time of a batch of disk reads, from the disk's measured throughput-vs-chunk-size curve.

T = Σ_chunks bytes_i / BW(chunk_i, threads_eff), with BW read off `ioaware probe disk`'s curve and
threads_eff = min(pool threads, chunks in the batch): a batch of 3 chunks on a 16-thread pool keeps only 3 reads
in flight, so it gets the 3-thread throughput. Nothing else is modelled (no fitted efficiency factor): the curve
already holds the disk's latency, queueing and the reader's Python overhead, because it was measured the same way.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable


def predict_read_seconds(chunk_sizes: Iterable[int], curve: dict, threads: int = 8,
                         direct: bool | None = None) -> float:
    """Seconds to read chunks of the given sizes (bytes) as one batch on a pool of `threads` threads.

    `curve` is what `ioaware probe disk` measured: {"points": [{"chunk", "threads", "GBps", "direct"}, ...]}.

    Examples:
        >>> curve = {"points": [{"chunk": c, "threads": t, "GBps": g, "direct": True}
        ...                     for c, t, g in [(4096, 1, 0.1), (4096, 8, 0.5), (2**20, 1, 1.0), (2**20, 8, 2.0)]]}
        >>> predict_read_seconds([2**20] * 16, curve, threads=8)          # 16 MiB at 2 GB/s
        0.008388608
        >>> predict_read_seconds([2**20], curve, threads=8)               # one chunk: one read in flight
        0.001048576
    """
    from ..hardware.probe_disk import throughput_at

    sizes = Counter(int(c) for c in chunk_sizes)
    n = sum(sizes.values())
    if n == 0:
        return 0.0
    t_eff = max(1, min(threads, n))
    return sum(k * c / throughput_at(curve, c, t_eff, direct) for c, k in sizes.items())


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
