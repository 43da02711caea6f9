"""What a tiered KV cache costs per decode step, and per tier whether to compute next to the data or move it.

Every rate is a probe's measurement (runtime/kvtiers/probe.py): a time is `call_s + bytes / rate` per layer call,
the line through two probed sizes, so fixed costs (a launch, a Python call, the worker's round trip) are in it.

    device tier (HBM)   t = hbm.call + B_hbm / hbm.rate                       (flash_decode on its pages)
    DRAM, near          t = cpu.call + B_dram / cpu.rate                       (FastAttention's CPU-GPU split)
    DRAM, move          t = link(B_dram) + max(dev.call - link(B_dram), 0) + B_dram / dev.rate   (FlexGen's copy;
                          on CUDA the partial's launches overlap the copy in flight: `after`)
    SSD, near           t = disk(B_ssd) + wcpu.call + B_ssd / wcpu.rate        (InstInfer's drive: the worker)
    SSD, move           t = disk(B_ssd) + link + dev                           (this process reads, then moves)
    DRAM, SparF copy    t = sync + host(R) + link(B_pg) + dev(B_pg)   (host: channel rows, scores, page gather)
    DRAM, SparF uva     t = uva_select(R - B_pg) + uva_attend(B_pg)    (fused kernels read host memory, no sync:
                          the channel rows -> page masses -> top-k, then a paged kernel over the host pages)
    DRAM, SparF uva-gather  t = uva(R) + dev(B_pg)                     (gathers into device buffers, flash_decode)
      R = what SparF reads of the tier: r/D of K (the channel rows) + the chosen pages' K and V (B_pg)

On a CPU-only run "link" is a memcpy into fresh memory and "dev" the host's own partial: moving still costs a copy.

One step of one layer overlaps what runs on different engines: the worker (SSD near) runs beside everything;
on a GPU the device's work (HBM and moved tiers) runs beside the CPU's (DRAM near). Layer 2: no torch, no runtime.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Line:
    """t(bytes) = call_s + bytes / rate_Bps: a probed affine cost."""

    call_s: float
    rate_Bps: float

    def __call__(self, nbytes: float) -> float:
        return 0.0 if nbytes <= 0 else self.call_s + nbytes / self.rate_Bps

    @staticmethod
    def through(b1: float, t1: float, b2: float, t2: float) -> Line:
        """The line through two probed (bytes, seconds) points; a flat or falling probe keeps only its rate."""
        slope = (t2 - t1) / (b2 - b1) if b2 != b1 else 0.0
        if slope <= 0:
            return Line(0.0, b2 / max(t2, 1e-12))
        return Line(max(t1 - slope * b1, 0.0), 1.0 / slope)


@dataclass
class TierRates:
    device: str  # "cuda" or "cpu"
    hbm: Line  # attention over the device tier's pages (flash_decode)
    cpu: Line  # attention in this process on the CPU's threads
    worker: Line  # attention in the worker process (its threads), without the read
    disk: Line  # reading the KV file (the worker's pattern: one read per segment)
    link: Line  # pinned host -> device copy (a memcpy on a CPU-only run)
    dev: Line  # attention over moved (contiguous) data on the device
    source: dict = field(default_factory=dict)  # how each line was probed
    # SparF on the DRAM tier (probe.probe_sparf_dram), over the bytes SparF reads (channel rows + chosen pages):
    host_select: Line = field(default_factory=lambda: Line(0.0, float("inf")))  # transport copy, the host's part
    uva: Line = field(default_factory=lambda: Line(0.0, float("inf")))  # transport uva-gather: reads, selection,
    # gathers (over R); transport uva (fused): the selection over the channel-row bytes, the paged kernel over B_pg
    uva_select: Line = field(default_factory=lambda: Line(0.0, float("inf")))
    uva_attend: Line = field(default_factory=lambda: Line(0.0, float("inf")))
    sync_s: float = 0.0  # a device -> host round trip (q to the host before the host selects)


def after(line: Line, nbytes: float, prev_s: float, r: TierRates) -> float:
    """A device step that follows `prev_s` of device work (a copy, a gather): on CUDA its fixed cost (the host's
    launches: the line's intercept) runs while the device still works on the step before, so only what exceeds
    prev_s counts; the two probes, each synchronised, would count it twice. On a CPU-only run one thread does both."""
    t = line(nbytes)
    if r.device != "cuda" or t == 0.0:
        return t
    return t - min(line.call_s, prev_s)


def tier_seconds(tier: str, nbytes: float, mode: str, r: TierRates) -> float:
    """Predicted seconds of one layer's partial for a tier holding `nbytes` of K and V (read bytes for SparF)."""
    if nbytes <= 0:
        return 0.0
    if tier == "hbm":
        return r.hbm(nbytes)
    if tier == "dram":
        return r.cpu(nbytes) if mode == "near" else r.link(nbytes) + after(r.dev, nbytes, r.link(nbytes), r)
    if tier == "ssd":
        if mode == "near":
            return r.disk(nbytes) + r.worker(nbytes)
        return r.disk(nbytes) + r.link(nbytes) + r.dev(nbytes)
    raise ValueError(f"unknown tier {tier!r} (hbm, dram, ssd)")


def sparf_dram_parts(read_bytes: float, page_bytes: float, transport: str, r: TierRates) -> dict:
    """Predicted seconds of SparF on the DRAM tier per layer, by part: 'select' (channel rows, scores, pages, and
    for transport copy the sync and the host's gather into staging; for uva the zero-copy reads of everything),
    'copy' (the staged pages' host -> device copy; 0 for uva), 'dev' (attention over the chosen pages; for the
    fused uva, its reads of them from host memory)."""
    if read_bytes <= 0:
        return {"select": 0.0, "copy": 0.0, "dev": 0.0}
    if transport == "copy":
        if r.device == "cpu":  # nothing to copy: the host attends its own gather
            return {"select": r.host_select(read_bytes), "copy": 0.0, "dev": r.cpu(page_bytes)}
        cp = r.link(page_bytes)
        return {"select": r.sync_s + r.host_select(read_bytes), "copy": cp, "dev": after(r.dev, page_bytes, cp, r)}
    if transport in ("uva", "uva-serial"):  # fused: the paged kernel's launches overlap the selection's work (`after`)
        sel = r.uva_select(read_bytes - page_bytes)
        return {"select": sel, "copy": 0.0, "dev": after(r.uva_attend, page_bytes, sel, r)}
    if transport == "uva-gather":
        sel = r.uva(read_bytes)
        return {"select": sel, "copy": 0.0, "dev": after(r.dev, page_bytes, sel, r)}
    raise ValueError(f"unknown SparF transport {transport!r} (copy, uva, uva-serial, uva-gather)")


def sparf_layer_seconds(hbm_s: float, parts: dict, transport: str) -> float:
    """One layer's step with SparF on DRAM, as cache.LayerKV.attend overlaps it: transport uva runs on a side
    stream beside the device tier's kernel; transport copy's host part runs while the device tier's kernel does,
    then the copy and the partial follow."""
    if transport == "uva-serial":  # the same kernels after the device tier's, on one stream
        return hbm_s + parts["select"] + parts["dev"]
    if transport.startswith("uva"):
        return max(hbm_s, parts["select"] + parts["dev"])
    return max(hbm_s, parts["select"]) + parts["copy"] + parts["dev"]


def layer_seconds(times: dict, modes: dict, device: str) -> float:
    """One layer's attention step from the tiers' times, with what overlaps overlapping."""
    ssd_near = times.get("ssd", 0.0) if modes.get("ssd") == "near" else 0.0
    ssd_move = times.get("ssd", 0.0) - ssd_near
    dram = times.get("dram", 0.0)
    if device == "cpu":  # one engine (the worker aside)
        return max(times.get("hbm", 0.0) + dram + ssd_move, ssd_near)
    gpu = times.get("hbm", 0.0) + (dram if modes.get("dram") == "move" else 0.0) + ssd_move
    cpu = dram if modes.get("dram") == "near" else 0.0
    return max(gpu, cpu, ssd_near)


def choose_modes(nbytes: dict, r: TierRates) -> dict:
    """Per tier, 'near' or 'move', whichever the layer step predicts faster (on a tie, the tier's own faster time;
    then near, no copy).
    nbytes: {'hbm': B, 'dram': B, 'ssd': B} per layer. Returns {'modes', 'seconds', 'layer_s', 'why'}."""
    modes = {"dram": "near", "ssd": "near"}
    for tier in ("dram", "ssd"):
        best = None
        for m in ("near", "move"):
            trial = dict(modes, **{tier: m})
            t = layer_seconds({k: tier_seconds(k, nbytes.get(k, 0), trial.get(k, ""), r) for k in nbytes},
                              trial, r.device)
            own = tier_seconds(tier, nbytes.get(tier, 0), m, r)  # a tie on the step: the tier's own time decides
            if best is None or (t, own) < best[0]:
                best = ((t, own), m)
        modes[tier] = best[1]
    secs = {k: tier_seconds(k, nbytes.get(k, 0), modes.get(k, ""), r) for k in ("hbm", "dram", "ssd")}
    why = {}
    for tier in ("dram", "ssd"):
        near, move = (tier_seconds(tier, nbytes.get(tier, 0), m, r) for m in ("near", "move"))
        why[tier] = f"near {near * 1e3:.3f} ms vs move {move * 1e3:.3f} ms per layer"
    return {"modes": modes, "seconds": secs, "layer_s": layer_seconds(secs, modes, r.device), "why": why}


def recompute_seconds(n_tokens: int, flops_per_token: float, flop_rate: float) -> float:
    """Recomputing an offloaded prefix's KV: a prefill over it (the weights' 2·params FLOPs per token dominate)."""
    return n_tokens * flops_per_token / flop_rate


def crossover(points: list[tuple[int, float, float]]) -> int | None:
    """points: (prefix tokens, reload s, recompute s), ascending. The smallest measured prefix at which reloading
    is faster and stays faster; None if it never is."""
    ok = None
    for n, reload_s, recompute_s in reversed(points):
        if reload_s < recompute_s:
            ok = n
        else:
            break
    return ok
