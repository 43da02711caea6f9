"""The probe's host-side arithmetic: pointer chains, the statistics of per-access latencies, the L2 capacity knee,
the run-to-run spread. Pure numpy (cupy where a chain is built on the GPU), so every piece is tested on a CPU."""

from __future__ import annotations

import math

import numpy as np


def build_chain(xp, n_nodes: int, stride_words: int, seed: int, start_slot: int = 0):
    """A pointer chain for the P-chase: a uint32 array of n_nodes * stride_words words in which the words at
    node_k * stride_words hold the word index of the next node, and following them from any node visits every node
    once before coming back (one cycle over the whole buffer, so no access is repeated until all have been made).

    The cycle is a uniformly random cyclic order (a random permutation read as a ring), so neither a hardware
    prefetcher nor a DRAM row stays ahead of the walk. `xp` is numpy or cupy: the large HBM chains are built on the
    GPU, where the permutation takes milliseconds. Returns (buffer, index of the first node's word).
    """
    if n_nodes < 1 or stride_words < 1:
        raise ValueError(f"a chain needs at least one node and a stride of a word (got {n_nodes}, {stride_words})")
    if n_nodes * stride_words >= 2**32:
        raise ValueError(f"{n_nodes} nodes x {stride_words} words do not fit 32-bit word indices")
    order = xp.random.RandomState(seed).permutation(n_nodes).astype(xp.int64)
    buf = xp.zeros(n_nodes * stride_words, dtype=xp.uint32)
    nxt = xp.roll(order, -1)
    buf[order * stride_words + start_slot] = (nxt * stride_words + start_slot).astype(xp.uint32)
    return buf, int(order[0]) * stride_words + start_slot


def walk(buf: np.ndarray, start: int, steps: int) -> np.ndarray:
    """Follow a chain on the host (the reference of what the GPU walk visits)."""
    out = np.empty(steps, dtype=np.int64)
    j = start
    for i in range(steps):
        j = int(buf[j])
        out[i] = j
    return out


def summary(samples) -> dict:
    """Median and spread of per-access latencies (cycles). The median is the reported value: a walk of a few
    thousand accesses meets a few slow outliers (a TLB miss, a refresh), which the mean would carry."""
    a = np.asarray(samples, dtype=np.float64)
    if a.size == 0:
        return {"n": 0, "median": None, "mean": None, "p10": None, "p90": None, "min": None, "max": None}
    return {"n": int(a.size), "median": float(np.median(a)), "mean": float(a.mean()),
            "p10": float(np.percentile(a, 10)), "p90": float(np.percentile(a, 90)),
            "min": float(a.min()), "max": float(a.max())}


def otsu_split(samples) -> dict:
    """Split latencies into two classes at the threshold that maximises the between-class variance (Otsu, 1979),
    the way the L2's near and far partitions are told apart from one walk. eta (between-class over total variance,
    0..1) says how bimodal the data are: two well-separated modes give eta near 1, one mode gives about 0.6 or less
    (a uniform spread gives 0.75), so the caller also looks at how far apart the two medians are."""
    a = np.sort(np.asarray(samples, dtype=np.float64))
    n = a.size
    if n < 4 or a[0] == a[-1]:
        m = float(np.median(a)) if n else None
        return {"threshold": None, "low": m, "high": m, "frac_low": 1.0, "eta": 0.0}
    csum = np.cumsum(a)
    k = np.arange(1, n)  # the first k samples form the low class
    w0, w1 = k / n, (n - k) / n
    m0 = csum[:-1] / k
    m1 = (csum[-1] - csum[:-1]) / (n - k)
    between = w0 * w1 * (m0 - m1) ** 2
    # only cut between distinct values
    between[a[1:] == a[:-1]] = -1
    i = int(np.argmax(between))
    kk = i + 1
    return {"threshold": float((a[kk - 1] + a[kk]) / 2), "low": float(np.median(a[:kk])),
            "high": float(np.median(a[kk:])), "frac_low": kk / n, "eta": float(between[i] / a.var())}


def capacity_knee(footprints, bandwidths, floor_points: int = 2) -> dict:
    """The cache's apparent capacity from a bandwidth-vs-footprint curve: the footprint at which the bandwidth has
    fallen half-way from the plateau (the best of the points before the fall) to the floor (the mean of the last
    `floor_points`, the memory behind the cache), interpolated linearly in log(footprint). Half-way is a convention
    (a named choice, not a fit): it puts the knee where half of a re-read pass comes from the cache."""
    f = np.asarray(footprints, dtype=np.float64)
    b = np.asarray(bandwidths, dtype=np.float64)
    if f.size < floor_points + 2 or np.any(np.diff(f) <= 0):
        raise ValueError("capacity_knee needs at least floor_points + 2 footprints in increasing order")
    floor = float(b[-floor_points:].mean())
    peak_i = int(np.argmax(b[:-floor_points]))
    plateau = float(b[peak_i])
    half = (plateau + floor) / 2
    if plateau <= floor * 1.05:
        return {"capacity": None, "plateau": plateau, "floor": floor, "half": half}
    for i in range(peak_i, f.size - 1):
        if b[i] >= half > b[i + 1]:
            x0, x1 = math.log(f[i]), math.log(f[i + 1])
            t = (b[i] - half) / (b[i] - b[i + 1])
            return {"capacity": float(math.exp(x0 + t * (x1 - x0))), "plateau": plateau, "floor": floor, "half": half}
    return {"capacity": None, "plateau": plateau, "floor": floor, "half": half}


def rel_spread(a: float | None, b: float | None) -> float | None:
    """|a - b| / mean(a, b): how far two runs of one measurement disagree."""
    if a is None or b is None or (a + b) == 0:
        return None
    return abs(a - b) / ((a + b) / 2)
