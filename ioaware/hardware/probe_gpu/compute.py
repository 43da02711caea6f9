"""The tensor-core sections: the library's GEMM at 8192^3 per dtype (torch: cuBLAS/cuBLASLt), and the two
instruction families at several shapes: mma.sync (a warp, registers) and wgmma (a warpgroup, operands in shared
memory through descriptors), each for throughput and latency."""

from __future__ import annotations

import numpy as np

from . import cuda_src
from .context import Ctx, median, window_mhz
from .nvrtc import launch_timed
from .reference import datasheet

GEMM_N = 8192  # the bar compares against torch.matmul at 8192^3
NATIVE = ("fp16", "bf16", "tf32", "int8")  # mma.sync dtypes with a native instruction on sm_90 (fp8 is emulated)


def _peak(ctx: Ctx, dtype: str) -> float:
    """The datasheet's dense rate in TFLOP/s (sizes the iteration counts; never used as a result)."""
    return datasheet(f"tc.x.{dtype}", ctx.spec)[0]


def per_clock(tflops: float, sms: int, mhz: float | None) -> float | None:
    """FLOP per clock per SM at the clock measured inside the kernel: Hopper lowers its clock under tensor-core
    load, so this, not TFLOP/s, says how close an instruction comes to the unit's rate."""
    return tflops * 1e12 / (sms * mhz * 1e6) if mhz else None


def operand_words(dtype: str, n_words: int, seed: int) -> np.ndarray:
    """n_words 32-bit words of random values of `dtype` (normal, rounded to the type; int8 uniform): tensor cores
    are fed real data, never zeros, which run faster than real data on Hopper."""
    import torch

    g = torch.Generator().manual_seed(seed)
    per = {"fp16": 2, "bf16": 2, "tf32": 1, "e4m3": 4, "e5m2": 4, "int8": 4}[dtype]
    if dtype == "int8":
        t = torch.randint(-128, 128, (n_words * per,), generator=g, dtype=torch.int8)
    else:
        tdt = {"fp16": torch.float16, "bf16": torch.bfloat16, "tf32": torch.float32, "e4m3": torch.float8_e4m3fn,
               "e5m2": torch.float8_e5m2}[dtype]
        t = torch.randn(n_words * per, generator=g).to(tdt)
    return t.view(torch.int32).numpy().view(np.uint32)


def library(ctx: Ctx) -> dict:
    """torch at 8192^3 on random data: matmul (bf16, fp16, tf32), _scaled_mm (fp8), _int_mm (int8)."""
    torch = ctx.torch
    n, reps = GEMM_N, 5 if ctx.quick else 10
    flops = 2 * n**3
    g = torch.Generator(device="cuda").manual_seed(0)
    m, d, errors = {}, {}, {}

    def rate(fn) -> float:
        return flops / (median(ctx.time_torch(fn, reps=reps, warmup=2)) * 1e-3) / 1e12

    for key, dt in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        a = torch.randn(n, n, device="cuda", dtype=dt, generator=g)
        b = torch.randn(n, n, device="cuda", dtype=dt, generator=g)
        d[key] = {"nn": rate(lambda a=a, b=b: a @ b), "nt": rate(lambda a=a, b=b: a @ b.t())}
        m[f"tc.torch.{key}"] = max(d[key].values())
        del a, b
    if not ctx.quick:
        prev = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = True
        try:
            a = torch.randn(n, n, device="cuda", generator=g)
            b = torch.randn(n, n, device="cuda", generator=g)
            d["tf32"] = {"nn": rate(lambda: a @ b)}
            m["tc.torch.tf32"] = d["tf32"]["nn"]
            del a, b
        finally:
            torch.backends.cuda.matmul.allow_tf32 = prev
    one = torch.ones((), device="cuda")
    fp8 = [("e4m3", torch.float8_e4m3fn, torch.float8_e4m3fn)]
    if not ctx.quick:  # cuBLASLt has no e5m2 x e5m2 kernel: e5m2 is measured as A e5m2 times B e4m3
        fp8.append(("e5m2", torch.float8_e5m2, torch.float8_e4m3fn))
    for key, ta, tb in fp8:
        try:
            a = torch.randn(n, n, device="cuda", generator=g).to(ta)
            b = torch.randn(n, n, device="cuda", generator=g).to(tb)  # (N, K) row-major = (K, N) column-major
            d[key] = {"scaled_mm": rate(lambda a=a, b=b: torch._scaled_mm(a, b.t(), scale_a=one, scale_b=one,
                                                                        out_dtype=torch.bfloat16))}
            m[f"tc.torch.{key}"] = d[key]["scaled_mm"]
            del a, b
        except Exception as e:  # noqa: BLE001 - a dtype the library lacks is reported, not fatal
            errors[key] = f"{type(e).__name__}: {e}"[:300]
    if not ctx.quick:
        try:
            a = torch.randint(-128, 128, (n, n), device="cuda", dtype=torch.int8, generator=g)
            b = torch.randint(-128, 128, (n, n), device="cuda", dtype=torch.int8, generator=g)
            d["int8"] = {"int_mm": rate(lambda: torch._int_mm(a, b.t()))}
            m["tc.torch.int8"] = d["int8"]["int_mm"]
            del a, b
        except Exception as e:  # noqa: BLE001
            errors["int8"] = f"{type(e).__name__}: {e}"[:300]
    ctx.free()
    d["errors"] = errors
    d["n"] = n
    return {"measured": m, "detail": d}


MMA_QUICK = [("bf16", 16), ("int8", 32)]


def mma_sync(ctx: Ctx) -> dict:
    """mma.sync m16n8k* per dtype and shape: 16 warps an SM each cycling MMA_ACC accumulators (throughput), and
    one warp's dependent chain (latency, cycles per mma)."""
    ctx.need_cuda_c()
    cp = ctx.cp
    shapes = MMA_QUICK if ctx.quick else [(dt, k) for dt, ks in cuda_src.MMA_KS.items() for k in ks]
    mod = ctx.compiler.module("mma_quick" if ctx.quick else "mma", cuda_src.mma_source(shapes))
    grid, block = ctx.sms * 2, 256
    target_s = 0.002 if ctx.quick else 0.004
    m, d = {}, {}
    for i, (dt, k) in enumerate(shapes):
        src = cp.asarray(operand_words(dt, 512, 10 + i))
        out, win = cp.zeros(grid * block, cp.float32), cp.zeros(2, cp.uint64)
        per_iter = grid * (block // 32) * cuda_src.MMA_ACC * cuda_src.mma_flops(k)
        iters = max(64, int(target_s * 0.7 * _peak(ctx, dt) * 1e12 / per_iter))
        ms = median(launch_timed(cp, mod.get_function(f"mma_tp_{dt}_k{k}"), (grid,), (block,),
                                 (src, np.int32(iters), out, win), reps=3, warmup=1))
        key = f"tc.mma.{dt}.k{k}"
        m[key] = per_iter * iters / (ms * 1e-3) / 1e12
        ctx.kernel_clocks[key] = window_mhz(win.get())
        m[f"tcclk.mma.{dt}.k{k}"] = per_clock(m[key], ctx.sms, ctx.kernel_clocks[key])
        lat_iters = 4096
        mod.get_function(f"mma_lat_{dt}_k{k}")((1,), (32,), (src, np.int32(lat_iters), out, win))
        cp.cuda.Device().synchronize()
        m[f"latency.mma.{dt}.k{k}"] = int(win.get()[0]) / lat_iters
        d[key] = {"ms": ms, "iters": iters, "clock_mhz": ctx.kernel_clocks[key]}
    best: dict[str, float] = {}
    for (dt, k) in shapes:
        best[dt] = max(best.get(dt, 0.0), m[f"tc.mma.{dt}.k{k}"])
    fr = [best[dt] / _peak(ctx, dt) for dt in best if dt in NATIVE]
    if fr:
        m["tc.mma_frac_mean"] = float(np.mean(fr))
    d["best_per_dtype"] = best
    d["fp8_note"] = ("sm_90 has no native fp8 mma.sync: ptxas emulates it with F2FP conversions to f16 and two "
                     "HMMA.16816, so these rates are the emulation's (excluded from tc.mma_frac_mean)")
    ctx.free()
    return {"measured": m, "detail": d}


WGMMA_QUICK = [("bf16", 64), ("bf16", 256), ("e4m3", 256)]


def _check_descriptors(ctx: Ctx, mod) -> dict:
    """One fp16 m64n64k16 wgmma on small integers (exact in fp32) against A B^T on the host, with the leading and
    stride byte offsets both ways round: says which matches the layout, so the throughput runs are real products."""
    import torch

    cp = ctx.cp
    g = torch.Generator().manual_seed(5)
    a = torch.randint(-3, 4, (64, 16), generator=g).to(torch.float16)
    b = torch.randint(-3, 4, (64, 16), generator=g).to(torch.float16)
    ref = (a.float() @ b.float().t()).numpy()
    a_d = cp.asarray(a.view(torch.int16).numpy().view(np.uint16))
    b_d = cp.asarray(b.view(torch.int16).numpy().view(np.uint16))
    tried = {}
    for lbo, sbo in ((128, 256), (256, 128)):
        out = cp.full(64 * 64, np.nan, dtype=cp.float32)
        mod.get_function("wg_check")((1,), (128,), (a_d, b_d, np.uint32(lbo), np.uint32(sbo), out))
        o = out.get().reshape(64, 64)
        err = None if np.isnan(o).any() else float(np.abs(o - ref).max())  # None: an element was never written
        tried[f"lbo{lbo}_sbo{sbo}"] = err
        if err == 0.0:
            return {"ok": True, "lbo": lbo, "sbo": sbo, "max_abs_err": tried}
    return {"ok": False, "lbo": 128, "sbo": 256, "max_abs_err": tried}


def wgmma(ctx: Ctx) -> dict:
    """wgmma SS m64nNk* per dtype and N (two warpgroups an SM, 8 wgmmas per commit group, one group in flight);
    latency of one m64n128 wgmma per dtype (commit, wait 0)."""
    ctx.need_cuda_c(hopper=True)
    cp = ctx.cp
    configs = WGMMA_QUICK if ctx.quick else [(dt, n) for dt in cuda_src.PTX_TYPE for n in (64, 128, 256)]
    lat_dtypes = ["bf16"] if ctx.quick else list(cuda_src.PTX_TYPE)
    mod = ctx.compiler.module("wgmma_quick" if ctx.quick else "wgmma",
                              cuda_src.wgmma_source(configs, lat_dtypes, check=True))
    m, d = {}, {}
    check = _check_descriptors(ctx, mod)
    d["descriptor_check"] = check
    lbo, sbo = np.uint32(check["lbo"]), np.uint32(check["sbo"])
    grid, block = ctx.sms, 256
    target_s = 0.002 if ctx.quick else 0.004
    for i, (dt, n) in enumerate(configs):
        src = cp.asarray(operand_words(dt, 4096, 20 + i))
        out, win = cp.zeros(grid * block, cp.float32), cp.zeros(2, cp.uint64)
        per_iter = grid * 2 * cuda_src.WG_UNROLL * cuda_src.wgmma_flops(dt, n)
        iters = max(16, int(target_s * _peak(ctx, dt) * 1e12 / per_iter))
        ms = median(launch_timed(cp, mod.get_function(f"wg_tp_{dt}_n{n}"), (grid,), (block,),
                                 (src, np.int32(iters), lbo, sbo, out, win), reps=3, warmup=1))
        key = f"tc.wgmma.{dt}.n{n}"
        m[key] = per_iter * iters / (ms * 1e-3) / 1e12
        ctx.kernel_clocks[key] = window_mhz(win.get())
        m[f"tcclk.wgmma.{dt}.n{n}"] = per_clock(m[key], ctx.sms, ctx.kernel_clocks[key])
        d[key] = {"ms": ms, "iters": iters, "clock_mhz": ctx.kernel_clocks[key]}
    for i, dt in enumerate(lat_dtypes):
        src = cp.asarray(operand_words(dt, 4096, 40 + i))
        out, win = cp.zeros(128, cp.float32), cp.zeros(2, cp.uint64)
        lat_iters = 2048
        mod.get_function(f"wg_lat_{dt}")((1,), (128,), (src, np.int32(lat_iters), lbo, sbo, out, win))
        cp.cuda.Device().synchronize()
        m[f"latency.wgmma.{dt}"] = int(win.get()[0]) / lat_iters
    ctx.free()
    return {"measured": m, "detail": d}
