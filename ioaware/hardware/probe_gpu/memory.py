"""The memory sections: latency per level by pointer chasing, bandwidth per level, the L2's apparent capacity,
asynchronous copies against plain loads, and distributed shared memory. Each returns {"measured": {key: value},
"detail": {...}}; keys are the ones reference.py compares."""

from __future__ import annotations

import math

import numpy as np

from . import cuda_src, triton_kernels
from .context import Ctx, median, window_mhz
from .nvrtc import launch_timed
from .stats import build_chain, otsu_split, summary, walk

LINE_WORDS = 32  # chain nodes 128 B apart: one node per L1/L2 line, so every access is a new line
L1_BYTES = 16 << 10  # an L1 walk's footprint: far inside the L1 at any carveout
L2_BYTES = 4 << 20  # an L2 walk's footprint: inside the L2, past the L1
HBM_SMALL_BYTES = 1 << 20  # the TLB-warm HBM walk: cold lines inside one 2 MiB page
FLUSH_BYTES = 512 << 20  # written before the cold walks so the L2 (50-60 MB) holds none of the chain
BIMODAL_ETA, BIMODAL_RATIO = 0.85, 1.2  # the L2 walk splits into near/far only if Otsu's eta and far/near pass these
L2_BW_BYTES = 24 << 20  # the L2 bandwidth footprint: on the plateau of the capacity sweep (H200, 2026-12-02: 7.2-7.6
# TB/s from 12 to 48 MiB; 8 MiB gave 6.8, too few blocks for 8 programs an SM)


def _mem(ctx: Ctx):
    return ctx.compiler.module("memory", cuda_src.memory_source())


def _chase(ctx: Ctx, fn_name: str, args: list, steps: int = cuda_src.STEPS):
    """One block walks the chain (chase_shared's 32 threads fill shared memory, then thread 0 walks; chase_global
    is one thread alone, so nothing else touches the caches)."""
    cp = ctx.cp
    lat, idx, win = cp.zeros(steps, cp.uint32), cp.zeros(steps, cp.uint32), cp.zeros(2, cp.uint64)
    threads = 32 if fn_name == "chase_shared" else 1
    _mem(ctx).get_function(fn_name)((1,), (threads,), (*args, lat, idx, win))
    cp.cuda.Device().synchronize()
    w = win.get()
    return lat.get().astype(np.float64), idx.get(), window_mhz(w)


def _check_walk(host_chain: np.ndarray, start: int, warm: int, idx: np.ndarray) -> bool:
    """The GPU visited exactly the nodes the chain says (a check on the kernel, not just on its timing)."""
    exp = walk(host_chain, start, warm + idx.size)[warm:]
    return bool(np.array_equal(exp, idx.astype(np.int64)))


def _flush(ctx: Ctx) -> None:
    cp = ctx.cp
    scratch = cp.empty(FLUSH_BYTES // 4, dtype=cp.float32)
    scratch.fill(1.0)
    cp.cuda.Device().synchronize()
    del scratch


def _page_aligned_view(ctx: Ctx, nbytes: int, align: int = 2 << 20):
    """A uint32 view of nbytes starting on a 2 MiB boundary (the GPU's large page), and the buffer holding it."""
    cp = ctx.cp
    raw = cp.zeros((nbytes + align) // 4, dtype=cp.uint32)
    off = (-raw.data.ptr) % align
    return raw[off // 4: off // 4 + nbytes // 4], raw


def _split(lat) -> dict:
    split = otsu_split(lat)
    split["bimodal"] = bool(split["eta"] >= BIMODAL_ETA and split["high"] >= BIMODAL_RATIO * split["low"])
    return split


def latency_once(ctx: Ctx, seed: int) -> dict:
    """One pass over every level; the probe runs it twice (different chains) to show it reproduces."""
    ctx.need_cuda_c()
    cp = ctx.cp
    m, d, checks = {}, {}, {}
    # shared memory: a 1024-node random cycle of words
    chain, _ = build_chain(np, cuda_src.SNODES, 1, seed)
    lat, idx, mhz = _chase(ctx, "chase_shared", [cp.asarray(chain)])
    checks["smem"] = _check_walk(chain, 0, cuda_src.SNODES, idx)
    d["smem"], m["latency.smem"] = summary(lat), float(np.median(lat))
    # L1 and L2: warm the level by walking the whole chain once, then time the next STEPS accesses
    for key, nbytes, cg in (("l1", L1_BYTES, 0), ("l2", L2_BYTES, 1)):
        n = nbytes // (4 * LINE_WORDS)
        chain, start = build_chain(np, n, LINE_WORDS, seed)
        lat, idx, mhz = _chase(ctx, "chase_global", [cp.asarray(chain), np.uint32(start), np.int32(n), np.int32(cg)])
        checks[key] = _check_walk(chain, start, n, idx)
        d[key], m[f"latency.{key}"] = summary(lat), float(np.median(lat))
        if key == "l2":  # near and far are judged on the walk at 0.8 of the L2 (l2_latency); here: the shape
            d["l2_split"] = _split(lat)
            d["l2_hist"] = np.histogram(lat, bins=60, range=(0, 900))[0].tolist()
    # HBM, TLB warm: a chain in one 2 MiB page, the L2 flushed, every timed access a line not touched since
    n = HBM_SMALL_BYTES // (4 * LINE_WORDS)
    view, raw = _page_aligned_view(ctx, HBM_SMALL_BYTES)
    chain, start = build_chain(np, n, LINE_WORDS, seed)
    view.set(chain)
    _flush(ctx)
    lat, idx, mhz = _chase(ctx, "chase_global", [view, np.uint32(start), np.int32(0), np.int32(1)])
    checks["hbm"] = _check_walk(chain, start, 0, idx)
    d["hbm"], m["latency.hbm"] = summary(lat), float(np.median(lat))
    del view, raw
    # HBM, random lines over a large buffer (built on the GPU): TLB misses included, as in the paper's random walk
    big = (256 << 20) if ctx.quick else (1 << 30)
    chain_d, start = build_chain(cp, big // (4 * LINE_WORDS), LINE_WORDS, seed)
    _flush(ctx)
    lat, idx, mhz = _chase(ctx, "chase_global", [chain_d, np.uint32(start), np.int32(0), np.int32(1)])
    # check the first steps of the walk on the device copy
    checks["hbm_random"] = int(idx[0]) == int(chain_d[start].get()) and int(idx[1]) == int(chain_d[int(idx[0])].get())
    d["hbm_random"], m["latency.hbm_random"] = summary(lat), float(np.median(lat))
    d["hbm_random_bytes"] = big
    del chain_d
    ctx.free()
    d["walks_checked"] = checks
    d["clock_mhz"] = mhz
    if not all(checks.values()):
        bad = [k for k, ok in checks.items() if not ok]
        raise RuntimeError(f"the GPU's walk did not follow the chain for {bad}: the latencies would be wrong")
    return {"measured": m, "detail": d}


def bandwidth_sm(ctx: Ctx) -> dict:
    """Shared memory and L1 bandwidth (CUDA C): bytes per clock per SM, the clock read inside the kernel."""
    ctx.need_cuda_c()
    cp = ctx.cp
    m, d = {}, {}
    mod = _mem(ctx)
    grid, block = ctx.sms * 4, 256
    q = ctx.quick
    for key, fn, iters in (("smem", "bw_smem", 2000 if q else 4000), ("l1", "bw_l1", 1000 if q else 2000)):
        out, win = cp.zeros(grid * block, cp.float32), cp.zeros(2, cp.uint64)
        args = (np.int32(iters), out, win)
        if key == "l1":
            src = cp.random.RandomState(1).standard_normal(grid * 1024 * 4, dtype=cp.float32)
            args = (src, *args)
        ms = median(launch_timed(cp, mod.get_function(fn), (grid,), (block,), args, reps=3, warmup=1))
        nbytes = grid * block * iters * 8 * 16
        mhz = window_mhz(win.get())
        bps = nbytes / (ms * 1e-3)
        d[key] = {"ms": ms, "bytes": nbytes, "clock_mhz": mhz}
        m[f"bw.{key}_Bpc"] = bps / (ctx.sms * mhz * 1e6)
        m[f"bw.{key}"] = bps / 1e12
        ctx.kernel_clocks[f"bw.{key}"] = mhz
    return {"measured": m, "detail": d}


def _best(ctx: Ctx, variants: dict, nbytes: int, reps: int) -> tuple[dict, dict]:
    """GB/s of each variant (a failing one is recorded, not fatal): {name: GB/s}, {name: error}."""
    rates, errors = {}, {}
    for name, fn in variants.items():
        try:
            rates[name] = nbytes / (median(ctx.time_torch(fn, reps=reps)) * 1e-3) / 1e9
        except Exception as e:  # noqa: BLE001 - one configuration that does not compile loses only itself
            errors[name] = f"{type(e).__name__}: {e}"[:300]
    return rates, errors


def bandwidth(ctx: Ctx) -> dict:
    """L2 and HBM (Triton), and the HBM copy in several Triton forms against PyTorch's copies in the same run."""
    torch = ctx.torch
    m, d = {}, {}
    reps = 5 if ctx.quick else 10
    # L2: the re-read kernel over a footprint well inside the L2, many passes in one launch
    x = torch.randn(L2_BW_BYTES // 4, device="cuda")
    passes = max(1, (4 << 30) // L2_BW_BYTES)
    progs = ctx.sms * 8
    ms = median(ctx.time_torch(lambda: triton_kernels.reread(x, passes, progs, block=1024, num_warps=4), reps=reps))
    bps = passes * L2_BW_BYTES / (ms * 1e-3)
    m["bw.l2"] = bps / 1e12
    if ctx.clock_mhz:
        m["bw.l2_Bpc"] = bps / (ctx.clock_mhz * 1e6)
    d["l2"] = {"ms": ms, "footprint": L2_BW_BYTES, "passes": passes, "clock_mhz_used": ctx.clock_mhz}
    x = None  # free it before the 2 GiB of HBM buffers (the lambda above no longer runs)
    # HBM: read 1 GiB once, copy it (Triton in several forms, TMA, PyTorch)
    n = (1 << 30) // 4
    src = torch.randn(n, device="cuda")
    dst = torch.empty_like(src)
    reads, e_read = _best(ctx, {
        "persistent": lambda: triton_kernels.reread(src, 1, ctx.sms * 8, 4096, False, 8),
        "block_per_program": lambda: triton_kernels.reread(src, 1, n // 4096, 4096, False, 8)}, n * 4, reps)
    if reads:
        m["bw.hbm_read"] = max(reads.values())
    configs = [(8192, 8, False), (8192, 8, True)]
    if not ctx.quick:
        configs += [(4096, 4, False), (4096, 4, True), (16384, 8, True)]
    variants = {f"block{b}_w{w}{'_stream' if st else ''}":
                (lambda b=b, w=w, st=st: triton_kernels.copy(src, dst, b, w, st)) for b, w, st in configs}
    for per_sm in (2, 4) if not ctx.quick else (4,):
        variants[f"persistent{per_sm}x_2048x4"] = lambda p=per_sm: triton_kernels.copy_persistent(src, dst, ctx.sms * p)
    copies, e_copy = _best(ctx, variants, 2 * n * 4, reps)
    if copies:
        if not torch.equal(src, dst):
            raise RuntimeError("the Triton copy kernels did not reproduce their input")
        m["bw.hbm_copy"] = max(copies.values())
        m["bw.hbm_copy_frac"] = m["bw.hbm_copy"] / (ctx.spec.hbm_bandwidth_Bps / 1e9)
    tma, e_tma = {}, {}
    if ctx.cc[0] >= 9:
        dst.zero_()
        tv = {}
        for bm, bn in ((128, 64),) if ctx.quick else ((128, 64), (64, 64)):
            try:
                tv[f"{bm}x{bn}"] = triton_kernels.copy_tma_prepare(src, dst, bm, bn)
            except Exception as e:  # noqa: BLE001
                e_tma[f"{bm}x{bn}"] = f"{type(e).__name__}: {e}"[:300]
        tma, e2 = _best(ctx, tv, 2 * n * 4, reps)
        e_tma.update(e2)
        if tma:
            if not torch.equal(src, dst):
                raise RuntimeError("the TMA copy kernel did not reproduce its input")
            m["bw.hbm_copy_tma"] = max(tma.values())
    baselines = {"copy_": lambda: dst.copy_(src), "mul_out": lambda: torch.mul(src, 1.0, out=dst)}
    torch_bw, _ = _best(ctx, baselines, 2 * n * 4, reps)
    m["bw.torch_copy"] = max(torch_bw.values())
    d["hbm"] = {"bytes": n * 4, "read_GBps": reads, "copy_GBps": copies, "tma_copy_GBps": tma,
                "torch_copy_GBps": torch_bw, "errors": {**e_read, **e_copy, **e_tma}}
    src = dst = None
    ctx.free()
    return {"measured": m, "detail": d}


L2_WALK_MIB = (2, 4, 8, 16, 24, 32, 40, 48, 56, 64, 96)
L2_WALK_QUICK_MIB = (4, 16, 32, 48, 64, 96)
FAR_AT = 0.8  # near/far are read off the walk at the largest footprint <= 0.8 of the L2: past one partition's half,
# inside the whole L2, so both partitions serve hits if the far one is slower


def l2_latency(ctx: Ctx) -> dict:
    """P-chase latency against footprint (ld.global.cg; the chain walked once to warm the L2, then STEPS timed
    accesses): the curve shows the L2's steps and its end; the per-access split at FAR_AT of the L2 gives the near
    and far partitions' latencies where the walk there is bimodal (Otsu eta and far/near past BIMODAL_*)."""
    ctx.need_cuda_c()
    cp = ctx.cp
    sizes = L2_WALK_QUICK_MIB if ctx.quick else L2_WALK_MIB
    far_at = max([s for s in sizes if (s << 20) <= FAR_AT * ctx.l2_bytes] or [sizes[0]])
    curve, m = [], {}
    for mib in sizes:
        n = (mib << 20) // (4 * LINE_WORDS)
        chain_d, start = build_chain(cp, n, LINE_WORDS, 4 + mib)
        lat, idx, mhz = _chase(ctx, "chase_global", [chain_d, np.uint32(start), np.int32(n), np.int32(1)])
        # n warm steps close the cycle, so the first timed access reads the start node
        if int(idx[0]) != int(chain_d[start].get()) or int(idx[1]) != int(chain_d[int(idx[0])].get()):
            raise RuntimeError(f"the {mib} MiB walk did not follow its chain")
        chain_d = None
        split = _split(lat)
        curve.append({"mib": mib, **summary(lat), "split": split, "clock_mhz": mhz})
        if mib == far_at:
            if split["bimodal"]:
                m["latency.l2_near"], m["latency.l2_far"] = split["low"], split["high"]
            hist = np.histogram(lat, bins=60, range=(0, 900))[0].tolist()
    ctx.free()
    return {"measured": m, "detail": {"curve": curve, "split_at_mib": far_at, "split_hist": hist,
                                      "device_l2_bytes": ctx.l2_bytes}}


L2_SWEEP_MIB = (4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 44, 48, 52, 56, 64, 72, 80, 96, 128, 192)
L2_SWEEP_QUICK_MIB = (4, 8, 16, 24, 32, 40, 48, 56, 64, 96, 128, 192)


def l2_capacity(ctx: Ctx) -> dict:
    """Re-read bandwidth (ld.global.cg) against footprint; the apparent capacity is the half-way knee."""
    from .stats import capacity_knee

    torch = ctx.torch
    sizes = L2_SWEEP_QUICK_MIB if ctx.quick else L2_SWEEP_MIB
    x = torch.randn((max(sizes) << 20) // 4, device="cuda")
    progs = ctx.sms * 8
    curve = []
    for mib in sizes:
        nbytes = mib << 20
        passes = max(4, math.ceil((2 << 30) / nbytes))
        xs = x[: nbytes // 4]
        ms = median(ctx.time_torch(lambda xs=xs, p=passes: triton_kernels.reread(xs, p, progs, block=1024,
                                                                                 num_warps=4), reps=3))
        curve.append(passes * nbytes / (ms * 1e-3) / 1e9)
    del x
    ctx.free()
    knee = capacity_knee(list(sizes), curve)
    m = {}
    if knee["capacity"] is not None:
        m["l2.capacity_mib"] = knee["capacity"]
    return {"measured": m, "detail": {"footprint_mib": list(sizes), "GBps": curve, "knee": knee,
                                      "device_l2_bytes": ctx.l2_bytes}}


ASYNC_TILES = (1024, 4096, 8192)
ASYNC_TILES_QUICK = (1024, 8192)


def async_copy(ctx: Ctx) -> dict:
    """Plain loads vs cp.async vs the bulk copy engine, streaming HBM and an L2-resident buffer through shared
    memory; the three sums must agree bit for bit (same elements, same order), which checks the async copies."""
    ctx.need_cuda_c()
    cp = ctx.cp
    m, d = {}, {}
    grid, block = ctx.sms * 4, cuda_src.ASYNC_THREADS
    levels = {"hbm": ((256 << 20) if ctx.quick else (1 << 30), 1), "l2": (16 << 20, 32)}
    tiles = ASYNC_TILES_QUICK if ctx.quick else ASYNC_TILES
    variants = ("plain", "cpasync", "bulk") if ctx.compiler.hopper else ("plain", "cpasync")
    for level, (nbytes, passes) in levels.items():
        src = cp.random.RandomState(2).standard_normal(nbytes // 4, dtype=cp.float32)
        for tile in tiles:
            mod = ctx.compiler.module(f"async{tile}", cuda_src.async_source(tile))
            tpb = nbytes // (tile * grid)
            moved = grid * tpb * tile * passes
            sums = {}
            for v in variants:
                out = cp.zeros(grid * block, cp.float32)
                args = [src, np.int64(tpb), np.int32(passes), out]
                err = None
                if v == "bulk":
                    err = cp.zeros(1, cp.uint32)
                    args.append(err)
                ms = median(launch_timed(cp, mod.get_function(f"ac_{v}_{tile}"), (grid,), (block,), tuple(args),
                                         reps=3, warmup=1))
                if err is not None and int(err.get()[0]):
                    raise RuntimeError(f"a bulk copy never completed (mbarrier wait timed out) at tile {tile}")
                sums[v] = out.get()
                m[f"async.{v}.t{tile}.{level}"] = moved / (ms * 1e-3) / 1e9
            for v in variants[1:]:
                if not np.array_equal(sums[v], sums["plain"]):
                    raise RuntimeError(f"{v} at tile {tile} summed other data than plain loads: the copy is wrong")
        del src
        ctx.free()
    lo, hi = tiles[0], tiles[-1]
    for v in variants[1:]:
        name = "cp_async" if v == "cpasync" else v
        m[f"async.{name}_speedup.small"] = m[f"async.{v}.t{lo}.hbm"] / m[f"async.plain.t{lo}.hbm"]
        m[f"async.{name}_speedup.large"] = m[f"async.{v}.t{hi}.hbm"] / m[f"async.plain.t{hi}.hbm"]
    d.update({"grid": grid, "threads": block, "stages": cuda_src.ASYNC_STAGES, "tiles": list(tiles),
              "levels": {k: {"bytes": v[0], "passes": v[1]} for k, v in levels.items()}})
    return {"measured": m, "detail": d}


def dsm(ctx: Ctx) -> dict:
    """Distributed shared memory: latency (cluster of 4: own, then each other block) and read bandwidth at
    cluster sizes 2, 4, 8 (every block streams its neighbour's shared memory)."""
    ctx.need_cuda_c(hopper=True)
    cp = ctx.cp
    m, d = {}, {}
    cs = 4
    mod = ctx.compiler.module(f"dsm{cs}", cuda_src.dsm_source(cs))
    chain, _ = build_chain(np, cuda_src.SNODES, 1, 3)
    steps = cuda_src.DSM_STEPS
    lat, idx = cp.zeros(cs * steps, cp.uint32), cp.zeros(cs * steps, cp.uint32)
    mod.get_function(f"dsm_lat_{cs}")((cs,), (128,), (cp.asarray(chain), lat, idx))
    cp.cuda.Device().synchronize()
    lat, idx = lat.get().reshape(cs, steps).astype(np.float64), idx.get().reshape(cs, steps)
    for r in range(cs):
        if not _check_walk(chain, 0, cuda_src.SNODES, idx[r]):
            raise RuntimeError(f"the walk through block {r}'s shared memory did not follow the chain")
    per_rank = [summary(lat[r]) for r in range(cs)]
    m["latency.dsm_local"] = per_rank[0]["median"]
    m["latency.dsm_remote"] = float(np.median(lat[1:]))
    d["latency_per_rank"] = per_rank
    sizes = (2, 4) if ctx.quick else (2, 4, 8)
    grid, block, iters = ctx.sms * 2, 256, 2000 if ctx.quick else 4000
    grid -= grid % 8
    bw = {}
    for c in sizes:
        mod = ctx.compiler.module(f"dsm{c}", cuda_src.dsm_source(c))
        out = cp.zeros(grid * block, cp.float32)
        ms = median(launch_timed(cp, mod.get_function(f"dsm_bw_{c}"), (grid,), (block,), (np.int32(iters), out),
                                 reps=3, warmup=1))
        bw[c] = grid * block * iters * 8 * 16 / (ms * 1e-3) / 1e12
        m[f"bw.dsm.cs{c}"] = bw[c]
    d.update({"grid": grid, "threads": block, "iters": iters})
    return {"measured": m, "detail": d}
