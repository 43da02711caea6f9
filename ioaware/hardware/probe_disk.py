"""Measure this disk's read throughput against chunk size and thread count, cold, with and without O_DIRECT.

The curve decides the chunk size the neuron reader issues and is what the iomodel prices reads with. A temp file
is written in the probed folder, evicted from the page cache (posix_fadvise DONTNEED, no root needed) before every
case, and read at random chunk-aligned offsets by a thread pool of os.preadv calls, the reader's own mechanism.
The curve is kept in `<cache_dir>/probe/disk-<device>.json` (written atomically) so runs reuse it.
"""

from __future__ import annotations

import math
import mmap
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..files import direct_io_supported, remove_orphans, write_json_atomic

CURVE_VERSION = 1
CHUNKS = (4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20)
THREADS = (1, 4, 8, 16)


def _write_file(path: Path, size: int) -> None:
    block = os.urandom(1 << 20)  # incompressible, in case the device compresses
    with open(path, "wb") as f:
        for _ in range(size // len(block)):
            f.write(block)
        f.flush()
        os.fsync(f.fileno())


def _evict(fd: int) -> None:
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def measure(path: Path, size: int, chunk: int, threads: int, direct: bool, seconds: float) -> dict:
    """Cold random reads of `chunk` bytes by `threads` threads for about `seconds` (or until `size` bytes)."""
    fd_plain = os.open(path, os.O_RDONLY)
    _evict(fd_plain)
    os.close(fd_plain)
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECT if direct else 0))
    n_slots = max(1, size // chunk)
    offs = [i * chunk for i in range(n_slots)]
    random.Random(chunk * 31 + threads).shuffle(offs)  # each slot read at most once: every read is a cold one
    lock = threading.Lock()
    state = {"i": 0, "bytes": 0}
    deadline = time.perf_counter() + seconds

    def worker():
        buf = mmap.mmap(-1, chunk)  # page-aligned, as O_DIRECT needs
        view = memoryview(buf)
        n = 0
        # at least one read per thread: under load a thread can start after the deadline, and a point of 0 bytes
        # would price every read at that chunk as infinitely slow
        while n == 0 or time.perf_counter() < deadline:
            with lock:
                if state["i"] >= len(offs):
                    break
                off = offs[state["i"]]
                state["i"] += 1
            got = 0
            while got < chunk:
                k = os.preadv(fd, [view[got:]], off + got)
                if k == 0:
                    break
                got += k
            n += got
        view.release()
        buf.close()
        with lock:
            state["bytes"] += n

    t0 = time.perf_counter()
    try:
        with ThreadPoolExecutor(threads) as ex:
            for f in [ex.submit(worker) for _ in range(threads)]:
                f.result()
    finally:
        os.close(fd)
    dt = time.perf_counter() - t0
    return {"chunk": chunk, "threads": threads, "direct": direct, "bytes": state["bytes"], "seconds": dt,
            "GBps": state["bytes"] / dt / 1e9 if dt > 0 else 0.0}


def probe(path: str | Path | None = None, size: int = 512 << 20, chunks=CHUNKS, threads=THREADS,
          seconds_per_case: float = 0.25, progress: bool = True) -> dict:
    """The throughput curve of the disk holding `path` (default: the cache dir). Cost: writing `size` bytes,
    then about len(chunks) * len(threads) * 2 * seconds_per_case."""
    from ..env import settings

    if path is None:
        folder = settings().cache_dir
        folder.mkdir(parents=True, exist_ok=True)
    else:
        folder = Path(path)
        if not folder.is_dir():
            raise FileNotFoundError(f"--path {folder}: no such folder (give a folder on the disk to probe)")
    remove_orphans(folder, ".ioaware-probe-*.bin")  # a probe that was killed leaves its 512 MiB file
    f = folder / f".ioaware-probe-{os.getpid()}.bin"
    chunks = [c for c in chunks if c <= size]
    if not chunks:
        raise ValueError(f"--size {size} is smaller than the smallest chunk probed ({min(CHUNKS)})")
    points = []
    bar = None
    try:
        _write_file(f, size)
        direct = direct_io_supported(f)
        modes = [False, True] if direct else [False]
        cases = [(d, c, t) for d in modes for c in chunks for t in threads]
        if progress:
            from rich.progress import Progress

            bar = Progress(transient=True)
            bar.start()
            task = bar.add_task("probe disk", total=len(cases))
        for d, c, t in cases:
            points.append(measure(f, size, c, t, d, seconds_per_case))
            if bar:
                bar.advance(task)
    finally:
        if bar:
            bar.stop()
        f.unlink(missing_ok=True)
    st = os.stat(folder)
    best = max(points, key=lambda p: p["GBps"])
    return {"version": CURVE_VERSION, "path": str(folder), "device": st.st_dev, "file_bytes": size,
            "date": time.strftime("%Y-%m-%d %H:%M:%S"), "direct_supported": direct,
            "seconds_per_case": seconds_per_case, "points": points, "peak_GBps": best["GBps"], "best": best}


def probe_file(path: str | Path, chunks=CHUNKS[:-1], threads=(1, 4, 8, 16), seconds_per_case: float = 0.08,
               buffered_chunks=(64 << 10, 256 << 10)) -> dict:
    """A quick curve measured on an existing file (a store), nothing written: random reads of `chunks` x `threads`
    (O_DIRECT where the filesystem allows, else buffered), plus single-thread buffered reads of `buffered_chunks`
    (mmap's readahead). About (len(chunks) * len(threads) + len(buffered_chunks)) * seconds_per_case: ~2 s by default.
    `ioaware bench offload` takes one right before each case, because this VM's disk drifts between a cached probe
    and a run (dev/offload/NOTES.md)."""
    path = Path(path)
    size = path.stat().st_size
    direct = direct_io_supported(path)
    # the grid with O_DIRECT where the filesystem allows it (as the reader reads), else buffered
    pts = [measure(path, size, c, t, direct, seconds_per_case) for c in chunks if c <= size for t in threads]
    pts += [measure(path, size, c, 1, False, seconds_per_case) for c in buffered_chunks if c <= size]
    if not pts:
        raise ValueError(f"{path}: {size} bytes, smaller than every chunk asked for ({min(chunks)} and up)")
    best = max(pts, key=lambda p: p["GBps"])
    return {"version": CURVE_VERSION, "path": str(path), "device": os.stat(path).st_dev, "file_bytes": size,
            "date": time.strftime("%Y-%m-%d %H:%M:%S"), "direct_supported": direct,
            "seconds_per_case": seconds_per_case, "points": pts, "peak_GBps": best["GBps"], "best": best,
            "of_file": True}


def curve_path(folder: str | Path | None = None) -> Path:
    from ..env import settings

    folder = Path(folder) if folder else settings().cache_dir
    dev = os.stat(folder if folder.exists() else folder.parent).st_dev
    return settings().cache_dir / "probe" / f"disk-{dev}.json"


def at_least_as_thorough(new: dict, old: dict) -> bool:
    """Whether `new` measured as much as `old` did: a file as large, as long per case, as many points. Only such a
    probe replaces a cached curve, so a `--quick` look never overwrites the curve `generate` plans its reads with."""
    return (new["file_bytes"] >= old["file_bytes"] and new["seconds_per_case"] >= old["seconds_per_case"]
            and len(new["points"]) >= len(old["points"]))


def save_curve(curve: dict, dest: str | Path | None = None) -> Path:
    return write_json_atomic(dest or curve_path(curve["path"]), curve)


def load_curve(folder: str | Path | None = None) -> dict | None:
    """The cached curve for the disk holding `folder`, or None if that disk was never probed."""
    import json

    p = curve_path(folder)
    if not p.is_file():
        return None
    c = json.loads(p.read_text())
    validate_curve(c)
    return c


def validate_curve(c: dict) -> None:
    if c.get("version") != CURVE_VERSION or not c.get("points"):
        raise ValueError(f"disk curve version {c.get('version')} (expected {CURVE_VERSION}) or no points; "
                         "run `ioaware probe disk` again")
    for p in c["points"]:
        for k in ("chunk", "threads", "direct", "GBps"):
            if k not in p:
                raise ValueError(f"disk curve point lacks {k!r}; run `ioaware probe disk` again")


def _pts(curve: dict, direct: bool | None) -> list[dict]:
    pts = curve["points"]
    if direct is not None:
        sel = [p for p in pts if p["direct"] == direct]
        pts = sel or pts
    return pts


def best_chunk(curve: dict, threads: int | None = None, direct: bool | None = None) -> int:
    """The chunk size with the highest throughput (at the probed thread count nearest `threads`, if given)."""
    pts = _pts(curve, direct)
    if threads is not None:
        t = min({p["threads"] for p in pts}, key=lambda x: abs(math.log2(x) - math.log2(threads)))
        pts = [p for p in pts if p["threads"] == t]
    return int(max(pts, key=lambda p: p["GBps"])["chunk"])


def _interp(xs: list[float], ys: list[float], x: float) -> float:
    """Piecewise-linear in log2(x), clamped at the ends."""
    lx = [math.log2(v) for v in xs]
    q = math.log2(max(x, 1))
    if q <= lx[0]:
        return ys[0]
    if q >= lx[-1]:
        return ys[-1]
    for i in range(len(lx) - 1):
        if lx[i] <= q <= lx[i + 1]:
            w = (q - lx[i]) / (lx[i + 1] - lx[i])
            return ys[i] * (1 - w) + ys[i + 1] * w
    return ys[-1]


def throughput_at(curve: dict, chunk: int, threads: int | None = None, direct: bool | None = None) -> float:
    """Probed throughput (bytes/s) for reads of `chunk` bytes issued by `threads` threads, interpolated in
    log(chunk) and log(threads) between measured points. threads=None: the best thread count at each chunk."""
    pts = _pts(curve, direct)
    by_t: dict[int, dict[int, float]] = {}
    for p in pts:
        by_t.setdefault(p["threads"], {})[p["chunk"]] = p["GBps"] * 1e9
    at = {}
    for t, m in by_t.items():
        cs = sorted(m)
        at[t] = _interp(cs, [m[c] for c in cs], chunk)
    if threads is None:
        return max(at.values())
    ts = sorted(at)
    return _interp(ts, [at[t] for t in ts], threads)
