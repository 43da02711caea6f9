"""`run(quick, progress)`: every section in turn, each timed, its SM clock sampled, its failure recorded rather than
fatal; then `assemble` lays the measurements beside the paper's and the datasheet's values and checks the bars."""

from __future__ import annotations

import datetime
import time
import traceback

import numpy as np

from ...errors import DeviceError
from . import compute, memory
from .context import ClockSampler, Ctx, SkipSection, window_mhz
from .reference import PAPER_MHZ, PAPER_SMS, rows, spec_for
from .stats import rel_spread

RESULT_VERSION = 1
QUICK_LIMIT_S, FULL_LIMIT_S = 60.0, 300.0  # the time bars: --quick <= 1 minute, the full probe <= 5
BAR_RATIO = 0.90  # HBM copy vs PyTorch's best copy, and bf16 tensor-core rate vs torch.matmul: both >= 90%
REPRO_LIMIT = 0.05  # latencies reproduce within 5% between the two walks of one run


def device_section(ctx: Ctx) -> dict:
    """The SM clock from a kernel that spins a known number of cycles and reads the nanosecond timer."""
    ctx.need_cuda_c()
    from . import cuda_src

    cp = ctx.cp
    fn = ctx.compiler.module("memory", cuda_src.memory_source()).get_function("spin")
    win = cp.zeros(2, cp.uint64)
    mhz = []
    for _ in range(3):
        fn((1,), (1,), (np.uint64(40_000_000), win))
        cp.cuda.Device().synchronize()
        mhz.append(window_mhz(win.get()))
    ctx.clock_mhz = sorted(mhz)[1]
    return {"measured": {"clock.sm_mhz": ctx.clock_mhz}, "detail": {"spin_mhz": mhz}}


def latency_section(ctx: Ctx) -> dict:
    """Two walks of every level with different random chains: the first is reported, the second shows the spread."""
    a = memory.latency_once(ctx, seed=1)
    b = memory.latency_once(ctx, seed=2)
    rep = {k: {"run1": v, "run2": b["measured"].get(k), "rel_diff": rel_spread(v, b["measured"].get(k))}
           for k, v in a["measured"].items()}
    return {"measured": a["measured"], "detail": {"run1": a["detail"], "run2": b["detail"], "reproducibility": rep}}


SECTIONS = {  # in the order they run; the CUDA C sections that came last to the probe run last
    "device": device_section,
    "latency": latency_section,
    "bandwidth": memory.bandwidth,
    "l2_capacity": memory.l2_capacity,
    "library": compute.library,
    "mma_sync": compute.mma_sync,
    "wgmma": compute.wgmma,
    "async_copy": memory.async_copy,
    "dsm": memory.dsm,
    "bandwidth_sm": memory.bandwidth_sm,
    "l2_latency": memory.l2_latency,
}


def require_cuda() -> None:
    """Raise one actionable line where no CUDA GPU can be probed (before any work)."""
    try:
        import torch

        ok = torch.cuda.is_available()
    except Exception:  # noqa: BLE001
        ok = False
    if not ok:
        raise DeviceError("no CUDA GPU here (torch.cuda.is_available() is False): `ioaware probe gpu` measures a "
                          "GPU, so run it on a machine with one")


def check_sections(sections) -> list[str]:
    names = list(SECTIONS) if not sections else list(sections)
    bad = [s for s in names if s not in SECTIONS]
    if bad:
        raise ValueError(f"unknown probe section(s) {', '.join(bad)}; known: {', '.join(SECTIONS)}")
    return names


def run(quick: bool = False, progress=None, sections=None, checkpoint=None) -> dict:
    """Probe this GPU. quick: fewer shapes and sizes (the issue's bar: <= 1 minute; the full probe <= 5).
    progress(done, total, label) is called as sections start and end; checkpoint(result) after each section with
    the result so far (a partial file survives an interrupted run). Returns the result dict (see assemble)."""
    names = check_sections(sections)
    require_cuda()
    import torch
    import triton

    t_start = time.perf_counter()
    spec = spec_for(torch.cuda.get_device_name(0))
    ctx = Ctx(quick, spec)
    sampler = ClockSampler()
    info = sampler.info()
    sampler.start()
    device = {"name": ctx.name, "sms": ctx.sms, "compute_capability": f"{ctx.cc[0]}.{ctx.cc[1]}",
              "l2_bytes": ctx.l2_bytes, "memory_bytes": ctx.total_memory, **info}
    versions = {"torch": torch.__version__, "triton": triton.__version__, "cuda_runtime": torch.version.cuda,
                "cupy": getattr(ctx.cp, "__version__", None), "cupy_unusable": ctx.cupy_reason}
    if ctx.cp is not None:
        from .nvrtc import nvrtc_version

        versions["nvrtc"] = nvrtc_version(ctx.cp)
        versions["cuda_driver_api"] = ctx.cp.cuda.runtime.driverGetVersion()

    def on_section(out: dict, t: float) -> None:
        if checkpoint:
            checkpoint(assemble(out, device, versions, ctx, spec, t - t_start, quick, partial=True))

    try:
        out = run_sections(names, ctx, sampler, SECTIONS, progress, on_section)
    finally:
        sampler.stop()
    device["nvml_error"] = sampler.error
    if ctx.compiler is not None:
        versions["compile_seconds"] = ctx.compiler.seconds
    return assemble(out, device, versions, ctx, spec, time.perf_counter() - t_start, quick)


def run_sections(names, ctx, sampler, funcs, progress=None, on_section=None, lost_check=None) -> dict:
    """Run each named section: its measurements merge into one flat dict; a SkipSection is reported with its
    reason, any other exception as a failure with its traceback, and if the failure poisoned the CUDA context
    (lost_check says so) the remaining sections are skipped with that reason instead of failing one by one."""
    lost_check = lost_check or _context_lost
    out = {"sections": {}, "measured": {}}
    lost = None
    for i, name in enumerate(names):
        if progress:
            progress(i, len(names), name)
        t0 = time.perf_counter()
        if lost:
            sec = {"status": "skipped", "reason": lost}
        else:
            try:
                res = funcs[name](ctx)
                sec = {"status": "ok", "detail": res["detail"]}
                out["measured"].update(res["measured"])
            except SkipSection as e:
                sec = {"status": "skipped", "reason": str(e)}
            except Exception as e:  # noqa: BLE001 - one section's failure is recorded, the rest still run
                sec = {"status": "failed", "error": f"{type(e).__name__}: {e}",
                       "traceback": traceback.format_exc()[-3000:]}
                lost = lost_check(name)
            ctx.free()
        t1 = time.perf_counter()
        sec["seconds"] = t1 - t0
        sec["clock"] = sampler.window(t0, t1)
        out["sections"][name] = sec
        if on_section:
            on_section(out, t1)
    if progress:
        progress(len(names), len(names), "done")
    return out


def _context_lost(name: str) -> str | None:
    """After a failure: can the GPU still be used? A kernel fault poisons the CUDA context for the process."""
    try:
        import torch

        torch.cuda.synchronize()
        torch.zeros(1, device="cuda").add_(1).item()
        return None
    except Exception as e:  # noqa: BLE001
        return f"the CUDA context was lost after the {name} section failed ({type(e).__name__}: {e})"


def assemble(out: dict, device: dict, versions: dict, ctx, spec, seconds: float, quick: bool,
             partial: bool = False) -> dict:
    """The result: device and versions, each section's status and detail, the flat measurements, the comparison
    rows (reference.rows) and the bars. `ctx` needs only .sms, .clock_mhz and .kernel_clocks (tests pass a fake)."""
    measured = dict(out["measured"])
    clock = measured.get("clock.sm_mhz") or ctx.clock_mhz
    lat = out["sections"].get("latency", {}).get("detail", {}).get("reproducibility")
    result = {
        "tool": "ioaware probe gpu", "version": RESULT_VERSION, "date": datetime.date.today().isoformat(),
        "quick": quick, "partial": partial, "seconds": seconds, "device": device, "versions": versions,
        "paper_card": f"NVIDIA H800 PCIe ({PAPER_SMS} SMs, {PAPER_MHZ:.0f} MHz)", "datasheet_card": spec.name,
        "sections": out["sections"], "measured": measured, "kernel_clocks_mhz": dict(ctx.kernel_clocks),
        "rows": rows(measured, spec, ctx.sms, clock, ctx.kernel_clocks),
        "bars": bars(measured, lat, seconds, quick, partial),
    }
    return result


def _bar(name: str, what: str, value, baseline, threshold: float, higher: bool = True) -> dict:
    if value is None or baseline in (None, 0):
        return {"bar": name, "what": what, "value": value, "baseline": baseline, "ratio": None,
                "threshold": threshold, "met": None}
    ratio = value / baseline
    return {"bar": name, "what": what, "value": value, "baseline": baseline, "ratio": ratio, "threshold": threshold,
            "met": ratio >= threshold if higher else ratio <= threshold}


def bars(measured: dict, repro: dict | None, seconds: float, quick: bool, partial: bool = False) -> list[dict]:
    """The issue's bars, each with its numbers; met is None where this run did not measure the quantity."""
    wg = [v for k, v in measured.items() if k.startswith("tc.wgmma.bf16.")]
    out = [
        _bar("hbm_copy_vs_torch", "HBM copy (Triton) >= 90% of PyTorch's best copy, GB/s",
             measured.get("bw.hbm_copy"), measured.get("bw.torch_copy"), BAR_RATIO),
        _bar("bf16_tensor_core_vs_torch_matmul", "bf16 wgmma rate (best N) >= 90% of torch.matmul bf16 8192^3, "
             "TFLOP/s", max(wg) if wg else None, measured.get("tc.torch.bf16"), BAR_RATIO),
    ]
    spreads = {k: r["rel_diff"] for k, r in (repro or {}).items() if r.get("rel_diff") is not None}
    worst = max(spreads, key=spreads.get) if spreads else None
    out.append({"bar": "latency_reproducible", "what": "latencies of two walks (different chains) within 5%",
                "value": spreads.get(worst), "worst_key": worst, "baseline": None, "ratio": spreads.get(worst),
                "threshold": REPRO_LIMIT, "met": None if worst is None else spreads[worst] <= REPRO_LIMIT})
    limit = QUICK_LIMIT_S if quick else FULL_LIMIT_S
    out.append({"bar": "time", "what": f"{'--quick' if quick else 'full probe'} <= {limit:.0f} s", "value": seconds,
                "baseline": limit, "ratio": seconds / limit, "threshold": 1.0,
                "met": None if partial else seconds <= limit})
    return out
