"""Probes of this machine for the tier cost model (`ioaware.iomodel.kv_tiers`): each measures one engine at two
sizes of the shape it will run (a line: fixed cost + bytes / rate).

    hbm     flash_decode over paged pages on the compute device
    cpu     partial_attention on this process's CPU threads (FastAttention's CPU side)
    link    a pinned host -> device copy (CUDA); a memcpy into fresh memory on a CPU-only run
    dev     the device's partial over contiguous (moved) data
    worker  the SSD worker's partial with the file in the page cache; disk = the cold read minus that
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time

import torch

from ...iomodel.kv_tiers import Line, TierRates
from ..offload.reader import drop_page_cache
from .cache import device_partial, to_device
from .partial import partial_attention
from .ssd import KVFile
from .worker import TierWorker


def _time(fn, device: torch.device, reps: int = 5) -> float:
    fn()
    ts = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def _line(fn_of_tokens, sizes, bytes_per_token, device, reps=5) -> tuple[Line, list]:
    pts = [(n * bytes_per_token, _time(lambda n=n: fn_of_tokens(n), device, reps)) for n in sizes]
    return Line.through(*pts[0], *pts[1]), pts


def probe_rates(Hq: int, Hkv: int, D: int, dtype: torch.dtype, device, sizes=(256, 4096), ssd_dir=None,
                batch: int = 1, worker_threads: int = 1, reps: int = 7, seg_tokens: int = 256,
                with_worker: bool = True, host_kv: tuple | None = None) -> TierRates:
    """Lines for every engine at (Hq, Hkv, D, dtype), one decode query, `sizes` tokens of K and V per layer.
    with_worker=False (no SSD tier): the worker and disk are not probed (their lines cost nothing).
    host_kv: (k, v) (B, >= max(sizes), Hkv, D) host tensors to copy and attend from (the DRAM tier's own pinned
    pages, so the probe sees the memory the run reads), instead of fresh pinned ones."""
    from ...kernels import flash_decode

    device = torch.device(device)
    esize = torch.empty(0, dtype=dtype).element_size()
    bpt = 2 * batch * Hkv * D * esize  # bytes of K and V per token
    scale = D ** -0.5
    n_max = max(sizes)
    q = torch.randn(batch, 1, Hq, D, device=device, dtype=dtype)
    k = torch.randn(batch, n_max, Hkv, D, dtype=dtype) * 0.5
    v = torch.randn_like(k)
    src = {}
    pages = -(-n_max // 16)
    kp = k[:, : pages * 16].reshape(batch * pages, 16, Hkv, D).to(device) if n_max % 16 == 0 else None
    if kp is None:
        raise ValueError("probe sizes must be multiples of 16 tokens")
    vp = v.reshape(batch * pages, 16, Hkv, D).to(device)
    table = torch.arange(batch * pages, dtype=torch.int32, device=device).view(batch, pages)

    kn = torch.randn(batch, 1, Hkv, D, device=device, dtype=dtype)

    def hbm(n):  # as the model calls it: the new token appended in place, then n tokens attended
        lens = torch.full((batch,), n - 1, dtype=torch.int32, device=device)
        flash_decode(q, kp, vp, lens, table, k_new=kn, v_new=kn, softmax_scale=scale, return_lse=True)

    hbm_l, src["hbm"] = _line(hbm, sizes, bpt, device, reps)
    q_cpu = q.float().cpu()
    pin = device.type == "cuda"
    kh, vh = (k.pin_memory(), v.pin_memory()) if pin else (k, v)
    if host_kv is not None and host_kv[0].shape[1] >= n_max:
        kh, vh = host_kv
    cpu_l, src["cpu"] = _line(lambda n: partial_attention(q_cpu, kh[:, :n], vh[:, :n], scale), sizes, bpt,
                              torch.device("cpu"), reps)
    link_l, src["link"] = _line(lambda n: (to_device(kh[:, :n], device), to_device(vh[:, :n], device)), sizes,
                                bpt, device, reps)
    kd, vd = k.to(device), v.to(device)
    dev_l, src["dev"] = _line(lambda n: device_partial(q, kd[:, :n], vd[:, :n], scale), sizes, bpt, device, reps)
    if not with_worker:
        free = Line(0.0, float("inf"))
        return TierRates(device.type, hbm_l, cpu_l, free, free, link_l, dev_l,
                         {k_: [[b, s] for b, s in v_] for k_, v_ in src.items()})
    worker_l, disk_l = _probe_worker(q_cpu, k, v, sizes, bpt, scale, ssd_dir, worker_threads, reps, src, seg_tokens)
    return TierRates(device.type, hbm_l, cpu_l, worker_l, disk_l, link_l, dev_l,
                     {k_: [[b, s] for b, s in v_] for k_, v_ in src.items()})


def _probe_worker(q_cpu, k, v, sizes, bpt, scale, ssd_dir, threads, reps, src, seg) -> tuple[Line, Line]:
    """The worker's exact partial over `n` tokens in segments of `seg` tokens (as the SSD tier writes them): warm
    (page cache) and cold (dropped)."""
    folder = ssd_dir or tempfile.gettempdir()
    f = KVFile(os.path.join(folder, f"kvprobe-{os.getpid()}.iokv"), k.shape[0], k.shape[2], k.shape[3], k.dtype)
    w = None
    try:
        segs = {n: [f.append(0, k[:, i:min(i + seg, n)].contiguous(), v[:, i:min(i + seg, n)].contiguous())
                    for i in range(0, n, seg)] for n in sizes}
        os.fsync(f.fd)
        w = TierWorker(f.path, threads)
        meta = {"batch": k.shape[0], "n_kv_heads": k.shape[2], "head_dim": k.shape[3], "dtype": k.dtype}

        def ask(n, cold):
            if cold:
                drop_page_cache(f.path)
            w.submit(segs[n], meta, q_cpu, scale)
            return w.result()[3]  # seconds inside the worker

        ask(sizes[0], False)  # the worker's start-up (imports) is not a per-step cost
        warm = [(n * bpt, statistics.median(ask(n, False) for _ in range(reps))) for n in sizes]
        cold = [(n * bpt, statistics.median(ask(n, True) for _ in range(reps))) for n in sizes]
        src["worker"], src["worker_cold"] = warm, cold
        disk = [(b, max(c - wt, 1e-9)) for (b, c), (_, wt) in zip(cold, warm, strict=True)]
        src["disk"] = disk
        return Line.through(*warm[0], *warm[1]), Line.through(*disk[0], *disk[1])
    finally:
        if w is not None:
            w.close()
        f.close()


def choose_for_context(tiers, seq_len: int, say=None) -> dict:
    """Probe this machine at the model's shape and set each tier's mode for a context of `seq_len` tokens (the
    tiers' fill at the end of the run, when they hold the most); `say` prints the choice."""
    from ...iomodel.kv_tiers import choose_modes

    P, s = tiers.spec.page, tiers.spec
    batch = tiers.batch or 1
    hbm_pages, dram_pages = tiers.pages_for(batch)
    pages = -(-seq_len // P)
    hbm = min(pages, hbm_pages)
    dram = min(pages - hbm, dram_pages)
    ssd = pages - hbm - dram
    per_tok = 2 * batch * tiers.Hkv * tiers.D * tiers.esize
    nbytes = {"hbm": hbm * P * per_tok, "dram": dram * P * per_tok, "ssd": ssd * P * per_tok}
    if not (dram or ssd):
        if say:
            say(f"kv tiers at {seq_len} tokens: all in the device tier ({hbm * P} tokens per layer)")
        return {"modes": dict(s.modes), "seconds": {}, "why": {}}
    seg = P * s.seg_pages
    big = max(2 * seg, -(-max(hbm, dram, ssd) * P // seg) * seg)
    rates = probe_rates(tiers.Hkv * tiers.q_per_kv, tiers.Hkv, tiers.D, tiers.dtype, tiers.device,
                        sizes=(seg, big), ssd_dir=_folder(s.ssd_path), batch=batch,
                        worker_threads=s.worker_threads, reps=3, seg_tokens=seg, with_worker=ssd > 0)
    choice = choose_modes(nbytes, rates)
    s.modes = dict(choice["modes"])
    if say:
        say(f"kv tiers at {seq_len} tokens (per layer: {hbm * P} hbm / {dram * P} dram / {ssd * P} ssd tokens): "
            + "; ".join(f"{t} {choice['modes'][t]} ({choice['why'][t]})" for t in ("dram", "ssd")
                        if nbytes[t]))
    return choice


def _folder(ssd_path: str | None) -> str | None:
    if not ssd_path:
        return None
    from pathlib import Path

    p = Path(ssd_path)
    p = p if p.is_dir() or not p.suffix else p.parent
    p.mkdir(parents=True, exist_ok=True)
    return str(p)


def probe_sparf_dram(Hq: int, Hkv: int, D: int, dtype: torch.dtype, device, cfg, sizes: tuple[int, int],
                     batch: int = 1, reps: int = 5) -> dict:
    """SparF on the DRAM tier, probed on a real one-layer tier of `sizes` tokens (a line through the two, over the
    bytes SparF reads): 'host_select' (transport copy: q's channels, the channel rows, scores, pages, and the
    gather into pinned staging, on this process's threads), 'uva' (transport uva-gather on CUDA: the device
    gathers the channel rows, selects, and gathers the pages from pinned memory), 'uva_select' / 'uva_attend'
    (transport uva, the fused kernels: the selection over the channel-row bytes, the paged kernel over the pages'
    bytes), 'sync_s' (q's round trip to the host).
    Returns {'host_select': Line, 'uva': Line | None, 'uva_select': Line | None, 'uva_attend': Line | None,
    'sync_s': float, 'points': {...}, 'uva_error': str | None}."""
    from ...errors import UnsupportedError
    from ...kernels._dispatch import interpreting
    from . import dram_sparf as ds
    from .cache import KVTiers, KVTierSpec

    device = torch.device(device)
    esize = torch.empty(0, dtype=dtype).element_size()
    scale = D ** -0.5
    page_b = 2 * batch * 16 * Hkv * D * esize
    pts: dict = {"host_select": [], "uva": [], "uva_select": [], "uva_attend": []}
    uva_error = None
    q = torch.randn(batch, 1, Hq, D, device=device, dtype=dtype)
    q_cpu = q.float().cpu()
    for L in sizes:
        spec = KVTierSpec(page_b, (L // 16) * page_b, None, sparf=cfg, sparf_tier="dram")
        tiers = KVTiers(spec, 1, Hkv, D, dtype, device)
        tiers.q_per_kv = Hq // Hkv
        lk = tiers.setup(batch, L + 16)[0]
        for s in range(0, L + 16, 1024):
            k = torch.randn(batch, min(1024, L + 16 - s), Hkv, D, device=device, dtype=dtype)
            lk.push(k, torch.randn_like(k))
        nb = ds.read_bytes(cfg, lk.dram_n * 16, batch, Hkv, D, esize)
        pts["host_select"].append((nb, _time(lambda lk=lk: ds.host_select(cfg, lk, q_cpu, scale),
                                             torch.device("cpu"), reps)))
        if (device.type == "cuda" or interpreting()) and uva_error is None:  # CPU: the kernel's interpreter
            try:
                pts["uva"].append((nb, _time(lambda lk=lk: ds.device_select(cfg, lk, q, scale), device, reps)))
                if ds.fused_ok(q, Hkv):
                    pg_b = 2 * batch * Hkv * ds.plan(cfg, lk.dram_n * 16, D)[2] * 16 * D * esize
                    pages = ds.fused_select(cfg, lk, q, scale)[0]
                    pts["uva_select"].append((nb - pg_b, _time(lambda lk=lk: ds.fused_select(cfg, lk, q, scale),
                                                               device, reps)))
                    pts["uva_attend"].append((pg_b, _time(lambda lk=lk, p=pages: ds.fused_attend(lk, q, p, scale),
                                                          device, reps)))
            except UnsupportedError as e:
                uva_error = str(e)
        del lk, tiers
    sync_s = _time(lambda: q.float().cpu(), device, reps) if device.type == "cuda" else 0.0
    host = Line.through(*pts["host_select"][0], *pts["host_select"][1])
    uva, fsel, fatt = (Line.through(*pts[k][0], *pts[k][1]) if len(pts[k]) == 2 else None
                       for k in ("uva", "uva_select", "uva_attend"))
    return {"host_select": host, "uva": uva, "uva_select": fsel, "uva_attend": fatt, "sync_s": sync_s,
            "uva_error": uva_error,
            "points": {k: [[b, s] for b, s in v] for k, v in pts.items()}}
