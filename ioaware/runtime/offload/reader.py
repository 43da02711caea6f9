"""Parallel reads of FFN neuron bundles from a flash store.

`NeuronReader.read(layer, ids)` sorts the ids, coalesces neighbours into runs (bundling makes a run of neurons one
contiguous byte range), splits long runs into chunks of the probed best size and issues them with `os.preadv` on a
thread pool (preadv releases the GIL, so the threads give the disk real queue depth). With O_DIRECT the runs are
widened to 4096-byte pages and land in a page-aligned staging buffer, from which the bundles are gathered; without
it (tmpfs, some overlay filesystems refuse O_DIRECT) each run is read straight into its place in the output, unless
the store pads its bundles (`store.bundle_stride`): then runs land in the staging buffer too, and the gather drops
the padding. A run of n bundles is read from its first bundle's start to its last bundle's end (no trailing pad).
Buffers are anonymous mmaps: page-aligned, as O_DIRECT needs, and allocated once.

Every bundle read is checked against the store's xxh3-64 (`verify`), so a flipped byte is reported, never computed
with. The check is memory-bound hashing (~140 MB per SmolLM2 token); the modes differ in where it runs:
- "threads" (default): each read thread, as soon as one of its chunks lands, gathers the bundles lying wholly inside
  it (O_DIRECT) and hashes them; the caller hashes the few that straddle two chunks and compares. Gather and hash
  run in the pool on both cores (xxh3 releases the GIL); little hides behind reads, since a read's few chunks land
  together. Measured: more CPU than hashing after the reads, the least I/O time per token (dev/offload/NOTES.md).
  ReadStats.verify_s is then only the caller's wait; the hashing done in the threads is verify_thread_s.
- "fused": after the reads, gather and hash piece by piece (~512 KiB), each piece while it is still in L2.
- "after": the earlier path (gather everything, then hash everything); "off": no check.
"""

from __future__ import annotations

import mmap
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from ...files import direct_io_supported
from .store import ALIGN, WeightStore, bundle_checksums

DEFAULT_CHUNK = 256 << 10  # used when no probe curve is given: the knee of the measured curves (offload.md §5)
VERIFY_MODES = ("fused", "threads", "after", "off")  # how and where bundle checksums run: module docstring


@dataclass
class ReadStats:
    bytes: int = 0  # bytes requested from the disk (with O_DIRECT, widened to pages)
    useful_bytes: int = 0  # bundle bytes the caller asked for
    chunks: int = 0
    seconds: float = 0.0
    chunk_sizes: list[int] = field(default_factory=list)
    verify_s: float = 0.0  # of `seconds`, the time the caller waited on checksums after the reads were done
    verify_thread_s: float = 0.0  # hashing done inside the read threads (summed over threads; not in verify_s)
    issue_s: float = 0.0  # of `seconds`, from the first request's issue to the last chunk landed (and gathered)

    def add(self, o: ReadStats) -> None:
        self.bytes += o.bytes
        self.useful_bytes += o.useful_bytes
        self.chunks += o.chunks
        self.seconds += o.seconds
        self.chunk_sizes.extend(o.chunk_sizes)
        self.verify_s += o.verify_s
        self.verify_thread_s += o.verify_thread_s
        self.issue_s += o.issue_s


@dataclass
class ReadResult:
    layer: int
    ids: np.ndarray  # (n,) sorted unique neuron ids
    bundles: torch.Tensor  # (n, 3, dim): row j is neuron ids[j]; a view valid until this slot is reused
    stats: ReadStats


def coalesce(ids: np.ndarray) -> list[tuple[int, int]]:
    """Sorted unique ids -> [(first, count)] runs of consecutive ids."""
    if len(ids) == 0:
        return []
    brk = np.flatnonzero(np.diff(ids) != 1) + 1
    starts = np.concatenate([[0], brk])
    ends = np.concatenate([brk, [len(ids)]])
    return [(int(ids[s]), int(e - s)) for s, e in zip(starts, ends, strict=True)]


def split_chunks(ranges: list[tuple[int, int]], chunk: int) -> list[tuple[int, int]]:
    """[(offset, nbytes)] -> the same bytes in pieces of at most `chunk` bytes."""
    out = []
    for off, n in ranges:
        while n > 0:
            k = min(n, chunk)
            out.append((off, k))
            off, n = off + k, n - k
    return out


class _Slot:
    """One read's buffers: the output (n, 3, dim) and, for O_DIRECT or a padded store, a staging area of whole
    pages; anonymous mmaps allocated once, so no read allocates. A scattered neuron spans at most its own pages plus
    one."""

    def __init__(self, max_neurons: int, bundle: int, layer_bytes: int, staged: bool):
        out, stage = slot_sizes(max_neurons, bundle, layer_bytes, staged)
        self.out = mmap.mmap(-1, out)
        self.stage = mmap.mmap(-1, stage) if staged else None

    @property
    def nbytes(self) -> int:
        return len(self.out) + (len(self.stage) if self.stage is not None else 0)


def slot_sizes(max_neurons: int, bundle: int, layer_bytes: int, direct: bool) -> tuple[int, int]:
    """(output bytes, staging bytes) of one read slot; memory budgets count these. direct: whether the slot
    stages (O_DIRECT, or a store whose bundles are padded); layer_bytes: the layer's section as laid out."""
    out = max(max_neurons * bundle, ALIGN)
    stage = min(max_neurons * (_round_up(bundle, ALIGN) + ALIGN), _round_up(layer_bytes, ALIGN) + 2 * ALIGN)
    return out, (stage if direct else 0)


def _round_up(n: int, a: int) -> int:
    return (n + a - 1) // a * a


class NeuronReader:
    """Reads bundles of chosen neurons of one layer. threads: the pool's size; chunk: the largest single read
    (from `probe_disk.best_chunk`); direct: True / False / None (= use O_DIRECT when the filesystem allows).
    `slots` results may be alive at once (read + prefetch double buffering); the next read reuses the oldest.
    max_neurons: the most neurons one read may ask for (sizes the buffers; default a whole layer).
    max_gap (O_DIRECT only): neighbouring runs closer than this many bytes are read as one range, gap included,
    because one more small request costs more than streaming the gap (`iomodel.io.choose_merge_gap` prices it)."""

    def __init__(self, store: WeightStore, threads: int = 8, chunk: int | None = None, direct: bool | None = None,
                 slots: int = 2, max_neurons: int | None = None, max_gap: int = 0, verify: bool | str = True):
        self.store = store
        self.verify = verify  # True/"threads", "fused", "after", False/"off": see the module docstring
        self.threads = threads
        self.chunk = max(ALIGN, (chunk or DEFAULT_CHUNK) // ALIGN * ALIGN)
        can = direct_io_supported(store.path)
        if direct and not can:
            from ...errors import UnsupportedError

            raise UnsupportedError(f"O_DIRECT is not supported on the filesystem of {store.path}; use direct=None")
        self.direct = can if direct is None else bool(direct)
        self.fd = os.open(store.path, os.O_RDONLY | (os.O_DIRECT if self.direct else 0))
        a = store.args
        self.dim, self.hidden = a.dim, a.hidden_dim
        self.bundle = store.bundle_bytes
        self.stride = store.bundle_stride  # bundle i of a layer starts at i * stride
        self.np_dtype = store.np_dtype
        self.max_neurons = min(max_neurons or self.hidden, self.hidden)
        self.max_gap = max_gap if self.direct else 0
        self.staged = self.direct or self.stride != self.bundle  # reads land in a stage, then are gathered
        layer_bytes = self.hidden * self.stride
        self.slots = [_Slot(self.max_neurons, self.bundle, layer_bytes, self.staged) for _ in range(slots)]
        self._next_slot = 0
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="ioaware-read")
        self._coord = ThreadPoolExecutor(1, thread_name_prefix="ioaware-prefetch")  # runs prefetch() bodies
        self._lock = threading.Lock()
        self._tls = threading.local()  # the last _issue's seconds, per calling thread (read and prefetch overlap)
        self.total = ReadStats()

    @property
    def verify(self) -> str:
        return self._verify

    @verify.setter
    def verify(self, v: bool | str) -> None:
        m = {True: "threads", False: "off"}.get(v, v) if isinstance(v, bool) else v
        if m not in VERIFY_MODES:
            raise ValueError(f"verify must be True, False or one of {', '.join(VERIFY_MODES)}; got {v!r}")
        self._verify = m

    @property
    def buffer_bytes(self) -> int:
        """DRAM held by the read buffers (counted in a memory budget)."""
        return sum(s.nbytes for s in self.slots)

    # -- reading --------------------------------------------------------------------------------------------
    def plan(self, layer: int, ids) -> tuple[np.ndarray, list[tuple[int, int]], list[tuple[int, int]]]:
        """ids -> (sorted unique ids, runs [(first id, count)], chunks [(file offset, nbytes)]): what a read
        will issue. The iomodel prices exactly these chunks."""
        ids = np.unique(np.asarray(ids, dtype=np.int64))
        if len(ids) and (ids[0] < 0 or ids[-1] >= self.hidden):
            raise IndexError(f"neuron ids must be in [0, {self.hidden}), got {ids[0]}..{ids[-1]}")
        runs = coalesce(ids)
        base = self.store.layers[layer]["offset"]
        ranges = [(base + s * self.stride, (n - 1) * self.stride + self.bundle) for s, n in runs]
        if self.direct:
            gap = self.max_gap
            merged = _page_ranges(ranges, gap)
            while gap and sum(n for _, n in merged) > len(self.slots[0].stage):  # the gaps would overflow the stage
                gap = gap // 2 // ALIGN * ALIGN
                merged = _page_ranges(ranges, gap)
            ranges = merged
        return ids, runs, split_chunks(ranges, self.chunk)

    def read(self, layer: int, ids) -> ReadResult:
        t0 = time.perf_counter()
        ids, _, chunks = self.plan(layer, ids)
        if len(ids) > self.max_neurons:
            raise ValueError(f"{len(ids)} neurons in one read; this reader's buffers hold {self.max_neurons}")
        with self._lock:
            slot = self.slots[self._next_slot]
            self._next_slot = (self._next_slot + 1) % len(self.slots)
        n = len(ids)
        out = np.frombuffer(slot.out, dtype=self.np_dtype, count=n * 3 * self.dim).reshape(n, 3, self.dim)
        if self.staged:
            # chunks are page ranges (or padded runs); lay them out back to back in the staging buffer
            stage_pos, pos = [], 0
            for _off, k in chunks:
                stage_pos.append(pos)
                pos += k
            views = [memoryview(slot.stage)[p:p + k] for p, (_, k) in zip(stage_pos, chunks, strict=True)]
        else:
            stage_pos, dst = [], 0
            outb = memoryview(slot.out)
            for _off, k in chunks:
                stage_pos.append(dst)
                dst += k
            views = [outb[p:p + k] for p, (_, k) in zip(stage_pos, chunks, strict=True)]
        verify_s = verify_thread_s = 0.0
        self._tls.issue_s = 0.0
        if not n:
            pass
        elif self.verify == "fused":  # all reads; then, piece by piece, gather and hash while the piece is in L2
            self._issue(chunks, views)
            got = np.empty(n, dtype=np.uint64)
            if self.staged:
                verify_s = self._gather(ids, chunks, stage_pos, slot, out, layer, got)
            else:
                t1 = time.perf_counter()
                got[:] = bundle_checksums(out.reshape(n, -1).view(np.uint8), self.bundle)
                verify_s = time.perf_counter() - t1
            t1 = time.perf_counter()
            self.store.compare_checksums(layer, ids, got)
            verify_s += time.perf_counter() - t1
        elif self.verify == "after":  # the earlier path: all reads, then the gather, then every hash
            self._issue(chunks, views)
            if self.staged:
                self._gather(ids, chunks, stage_pos, slot, out, layer)
            t1 = time.perf_counter()
            self.store.check_bundles(layer, ids, out.reshape(n, -1).view(np.uint8))
            verify_s = time.perf_counter() - t1
        else:
            verify_s, verify_thread_s = self._read_landing(layer, ids, chunks, stage_pos, views, slot, out)
        st = ReadStats(sum(k for _, k in chunks), n * self.bundle, len(chunks), time.perf_counter() - t0,
                       [k for _, k in chunks], verify_s, verify_thread_s, self._tls.issue_s)
        with self._lock:
            self.total.add(st)
        return ReadResult(layer, ids, torch.from_numpy(out), st)

    def _read_landing(self, layer, ids, chunks, stage_pos, views, slot, out) -> tuple[float, float]:
        """Issue the reads; as each chunk lands, its read thread gathers (O_DIRECT) the bundles lying wholly inside
        it and, with verify "threads", hashes them. Then, here: the bundles straddling two chunks and the compare.
        Returns (seconds waited on checksums after the reads, seconds hashed inside the threads)."""
        n, B, S = len(ids), self.bundle, self.stride
        hashing = self.verify == "threads"
        if not hashing and not self.staged:  # nothing to do as chunks land: the reads fill `out` in place
            self._issue(chunks, views)
            return 0.0, 0.0
        outb = out.reshape(n, -1).view(np.uint8)  # (n, B)
        # the landing buffer (the stage, or `out` itself) and each bundle's position in it, increasing with j
        if self.staged:
            r_off, r_pos = _file_ranges(chunks, stage_pos)
            land_buf = np.frombuffer(slot.stage, dtype=np.uint8)
            src = self._stage_src(ids, r_off, r_pos, layer)[0]
        else:
            land_buf = None
            src = np.arange(n, dtype=np.int64) * B
        cpos = np.asarray(stage_pos, dtype=np.int64)
        cend = cpos + np.array([k for _, k in chunks], dtype=np.int64)
        lo = np.searchsorted(src, cpos, side="left")  # chunk c holds rows lo[c]:hi[c] whole
        hi = np.maximum(np.searchsorted(src + B, cend, side="right"), lo)
        got = np.zeros(n, dtype=np.uint64)
        spent: list[float] = []  # list.append is atomic: the threads record their hashing time here

        def land(c: int) -> None:
            a, b = int(lo[c]), int(hi[c])
            if b <= a:
                return
            if land_buf is not None:
                s0 = int(src[a])
                if S == B and int(src[b - 1]) - s0 == (b - a - 1) * B:  # consecutive bundles: one slice
                    outb[a:b] = land_buf[s0:s0 + (b - a) * B].reshape(b - a, B)
                else:  # a merged range with gaps, or padded bundles: a fixed-stride view, then a row gather
                    rows = (src[a:b] - s0) // S
                    view = np.lib.stride_tricks.as_strided(land_buf[s0:], shape=(int(rows[-1]) + 1, B),
                                                           strides=(S, 1), writeable=False)
                    outb[a:b] = view[rows]
            if hashing:
                t = time.perf_counter()
                got[a:b] = bundle_checksums(outb[a:b], self.bundle)
                spent.append(time.perf_counter() - t)

        self._issue(chunks, views, land)
        covered = np.zeros(n + 1, dtype=np.int64)
        np.add.at(covered, lo, 1)
        np.add.at(covered, hi, -1)
        left = np.flatnonzero(np.cumsum(covered[:n]) == 0)  # rows straddling a chunk boundary
        if land_buf is not None and len(left):
            outb[left] = land_buf[src[left, None] + np.arange(B)]  # adjacent chunks lie back to back in the stage
        if not hashing:
            return 0.0, 0.0
        t1 = time.perf_counter()
        if len(left):
            got[left] = bundle_checksums(outb[left], self.bundle)
        self.store.compare_checksums(layer, ids, got)
        return time.perf_counter() - t1, sum(spent)

    def prefetch(self, layer: int, ids) -> Future:
        """Start `read(layer, ids)` in the background; `.result()` gives the ReadResult."""
        return self._coord.submit(self.read, layer, ids)

    def _issue(self, chunks, views, land=None) -> None:
        """Read chunks[c] into views[c]; land(c), if given, runs in the reading thread right after chunk c."""
        t0 = time.perf_counter()
        try:
            self._issue_all(chunks, views, land)
        finally:
            self._tls.issue_s = time.perf_counter() - t0

    def _issue_all(self, chunks, views, land=None) -> None:
        if len(chunks) == 1:
            _pread_full(self.fd, views[0], chunks[0][0])
            if land is not None:
                land(0)
            return
        # one task per pool thread, each reading every threads-th chunk: a pool future costs ~10 us of Python, as
        # much as a small read itself, so hundreds of scattered chunks must not each be a task
        k = min(self.threads, len(chunks))
        futs = [self.pool.submit(_pread_many, self.fd, views[i::k], [o for o, _ in chunks[i::k]],
                                 range(i, len(chunks), k), land) for i in range(k)]
        for f in futs:
            f.result()

    def _gather(self, ids: np.ndarray, chunks, stage_pos, slot, out: np.ndarray, layer: int,
                got: np.ndarray | None = None) -> float:
        """Copy each neuron's bundle from the page-aligned staging buffer to its row of `out` (ids sorted).

        Chunks lie back to back in the stage, so chunks that are adjacent in the file form one contiguous range
        there too; inside a range the bundles sit at a fixed stride, so each range is one strided view and one
        row gather (a few numpy calls per range instead of Python work per run of neurons)."""
        if not len(ids):
            return 0.0
        B, S = self.bundle, self.stride
        piece = max(1, _HASH_PIECE // B)
        hash_s = 0.0
        stage = np.frombuffer(slot.stage, dtype=np.uint8)
        outb = out.reshape(len(ids), -1).view(np.uint8)  # (n, B)
        r_off, r_pos = _file_ranges(chunks, stage_pos)
        src, j = self._stage_src(ids, r_off, r_pos, layer)
        bounds = np.flatnonzero(np.diff(j)) + 1
        for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(ids)], strict=True):
            s0 = int(src[lo])
            rows = (src[lo:hi] - s0) // S
            view = np.lib.stride_tricks.as_strided(stage[s0:], shape=(int(rows[-1]) + 1, B), strides=(S, 1),
                                                   writeable=False)
            if got is None:
                outb[lo:hi] = view[rows]
                continue
            for a in range(lo, hi, piece):  # gather a piece, hash it while it is still in L2
                b = min(a + piece, hi)
                outb[a:b] = view[rows[a - lo:b - lo]]
                t = time.perf_counter()
                got[a:b] = bundle_checksums(outb[a:b], self.bundle)
                hash_s += time.perf_counter() - t
        return hash_s

    def _stage_src(self, ids: np.ndarray, r_off: np.ndarray, r_pos: np.ndarray, layer: int):
        """Each bundle's position in the stage (ids sorted) and the index of the contiguous file range holding it."""
        f = self.store.layers[layer]["offset"] + ids.astype(np.int64) * self.stride  # each bundle's file offset
        j = np.searchsorted(r_off, f, side="right") - 1
        return r_pos[j] + (f - r_off[j]), j

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self._coord.shutdown(wait=True)
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        # the mmaps are not closed here: results handed out may still view them; they go with the last view
        self.slots = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


_HASH_PIECE = 512 << 10  # bytes gathered then hashed at a time: well inside a core's L2


def probe_reads(reader: NeuronReader, runs=(1, 2, 4, 16, 64), seconds: float = 0.04) -> list[dict]:
    """The reader's own cost of requests of the sizes it issues, as disk-curve points ({"chunk", "threads", "direct",
    "GBps", "seconds", "bytes", "source": "reader"}, at the pool's thread count; GBps over the time the requests were
    in flight, ReadStats.issue_s) and one {"source": "reader-overhead", "batch_s", "chunk_s"}: the serial time of a
    read outside its requests, a + b chunks, least squares over the batches: batches of runs of m neurons, one
    run apart (so with no merge gap each run is one request of the run's pages), read with `reader.read` as a decode
    step reads them, checksums included, through the layers in turn, for about `seconds` per size. What the
    probe loop of `probe_disk` leaves out and a step pays per request (planning, the pool's dispatch, the gather and
    hash of each landed chunk, under one GIL on few cores) is then in the curve that prices the reads (with the plain
    probe alone, 4 KiB requests were priced at 1/1.7 of their cost: flash-relufied-gap-smollm2-cpu-2026-12-03.json).
    """
    gap, total = reader.max_gap, reader.total
    reader.max_gap, reader.total = 0, ReadStats()
    pts, layer, rest = [], 0, []
    try:
        # untimed: the first read faults the slot's buffers in and starts the pool's threads (measured: 4 KiB
        # requests priced at 1.8x their cost in the run when this read was timed)
        reader.read(reader.store.args.n_layers - 1, np.arange(0, min(reader.hidden, 2 * reader.max_neurons), 2))
        for m in runs:
            # runs `skip` neurons apart: at least m, and never on touching pages (which would be one request)
            skip = max(m, -(-2 * ALIGN // reader.stride) - 1)
            n_runs = min(reader.max_neurons // m, reader.hidden // (m + skip))
            if n_runs < 2:
                continue
            nbytes, secs, sizes = 0, 0.0, []
            while secs < seconds or not nbytes:
                phase = (layer * 7) % (m + skip)  # another layer and offset each batch: never the pages just read
                ids = (np.arange(n_runs)[:, None] * (m + skip) + phase + np.arange(m)[None, :]).ravel()
                st = reader.read(layer % reader.store.args.n_layers, ids[ids < reader.hidden]).stats
                nbytes, secs = nbytes + st.bytes, secs + st.issue_s
                sizes += st.chunk_sizes
                rest.append((st.chunks, st.seconds - st.issue_s))
                layer += 1
            pts.append({"chunk": int(np.median(sizes)), "threads": reader.threads, "direct": reader.direct,
                        "GBps": nbytes / secs / 1e9, "bytes": nbytes, "seconds": secs, "source": "reader"})
    finally:
        reader.max_gap, reader.total = gap, total
    if len(rest) >= 2:  # the serial work outside the issue (planning, views, compare): a + b chunks, least squares
        n, o = np.array(rest, dtype=float).T
        b, a = np.polyfit(n, o, 1) if np.ptp(n) > 0 else (0.0, float(o.mean()))
        pts.append({"batch_s": max(float(a), 0.0), "chunk_s": max(float(b), 0.0), "batches": len(rest),
                    "source": "reader-overhead"})
    return pts


def with_reader_points(curve: dict, points: list[dict]) -> dict:
    """`curve` with `points` (probe_reads) in place of its own at the same (chunk, threads, direct)."""
    over = [p for p in points if p.get("source") == "reader-overhead"]
    points = [p for p in points if p.get("source") != "reader-overhead"]
    keys = {(p["chunk"], p["threads"], p["direct"]) for p in points}
    kept = [p for p in curve["points"] if (p["chunk"], p["threads"], p["direct"]) not in keys]
    out = {**curve, "points": kept + points, "reader_points": len(points)}
    if over:
        out["reader_overhead"] = {k: over[0][k] for k in ("batch_s", "chunk_s", "batches")}
    return out


def _file_ranges(chunks, stage_pos) -> tuple[np.ndarray, np.ndarray]:
    """Chunks laid back to back in the stage -> (file offset, stage position) of the start of each run of chunks
    that are adjacent in the file: such a run is one contiguous range in the stage too."""
    c_off = np.array([o for o, _ in chunks], dtype=np.int64)
    c_end = c_off + np.array([k for _, k in chunks], dtype=np.int64)
    first = np.ones(len(chunks), dtype=bool)
    first[1:] = c_off[1:] != c_end[:-1]
    return c_off[first], np.asarray(stage_pos, dtype=np.int64)[first]


def _page_ranges(ranges: list[tuple[int, int]], max_gap: int = 0) -> list[tuple[int, int]]:
    """Widen byte ranges to whole pages and merge those that then touch or lie within `max_gap` bytes (O_DIRECT
    reads whole pages anyway)."""
    out: list[list[int]] = []
    for off, n in ranges:
        a = off // ALIGN * ALIGN
        b = _round_up(off + n, ALIGN)
        if out and a <= out[-1][1] + max_gap:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b - a) for a, b in out]


def _pread_many(fd: int, views, offsets, idx=None, land=None) -> None:
    for c, (v, off) in enumerate(zip(views, offsets, strict=True)):
        _pread_full(fd, v, off)
        if land is not None:
            land(idx[c])


def _pread_full(fd: int, view: memoryview, off: int) -> int:
    """preadv until `view` is full (a read may return short)."""
    got, n = 0, len(view)
    while got < n:
        k = os.preadv(fd, [view[got:]], off + got)
        if k == 0:
            raise EOFError(f"unexpected end of store at byte {off + got}")
        got += k
    return got


def drop_page_cache(path) -> None:
    """Evict a file's pages from the page cache (no root needed): each benchmark case starts cold."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # dirty pages are not dropped; flush them first
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
