"""`ioaware bench fftconv`: ioaware.fftconv against torch.fft (rfft/irfft, the way users write it), same run.

Setting of the long-convolution issue (FlashFFTConv's benchmark): B = 64, H = 768, bf16, gated causal
convolution y = post ∘ conv(pre ∘ u, k), k fp32 (H, L). Both providers are called as users call them: the kernel
spectrum is computed inside every call (for ioaware also a row with the spectrum prepared once, as
`ioaware.nn.LongConv` caches it). Each case is checked against an fp64 reference on two batch rows first; a
speedup is reported only for a case that passes. Peak memory is torch.cuda.max_memory_allocated during one call,
above what was allocated before it (the inputs), so the output itself counts for both providers.
"""

from __future__ import annotations

import math

ROUNDS = 3
LENGTHS = (256, 1024, 4096, 8192, 16384, 32768)


def _rel(a, b) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


def _peak_MB(fn) -> float:
    import torch

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del out
    return peak / 2**20


def _bench_length(L: int, B: int, H: int, with_bwd: bool, sparse_keep: float) -> list[dict]:
    import torch

    from ..kernels.conv import fftconv, prepare_kernel
    from ..kernels.conv.reference import fftconv_ref, fftconv_torch
    from .common import time_ms

    dt = torch.bfloat16
    g = torch.Generator(device="cuda").manual_seed(L)
    u = torch.randn(B, H, L, device="cuda", dtype=dt, generator=g)
    pre = torch.randn(B, H, L, device="cuda", dtype=dt, generator=g)
    post = torch.randn(B, H, L, device="cuda", dtype=dt, generator=g)
    k = torch.randn(H, L, device="cuda", generator=g) / math.sqrt(L)
    ks = prepare_kernel(k, L)
    providers = {
        "torch.fft": lambda: fftconv_torch(u, k, pre, post),
        "ioaware": lambda: fftconv(u, k, True, pre, post),
        "ioaware (cached k_f)": lambda: fftconv(u, ks, True, pre, post),
    }
    sparse = None
    if sparse_keep and L <= 8192:
        sparse = prepare_kernel(k, L, freq_keep=sparse_keep)
        providers[f"ioaware sparse keep {sparse_keep}"] = lambda: fftconv(u, sparse, True, pre, post)
    # correctness first, on two batch rows of the full-size call
    ref = fftconv_ref(u[:2].double(), k.double(), True, pre[:2].double(), post[:2].double())
    checks = {}
    for name, fn in providers.items():
        try:
            y = fn()[:2]
            want = ref if "sparse" not in name else fftconv_ref(u[:2].double(), sparse.kpad.double(), True,
                                                                pre[:2].double(), post[:2].double(),
                                                                freq_mask=sparse.mask, fft_size=sparse.N)
            checks[name] = _rel(y, want)
        except Exception as e:  # noqa: BLE001
            checks[name] = f"{type(e).__name__}: {str(e)[:120]}"
        torch.cuda.synchronize()
    err_torch = checks.get("torch.fft")
    rows = []
    best: dict = {}
    for _ in range(ROUNDS):
        for name, fn in providers.items():
            if isinstance(checks[name], str):
                continue
            try:
                ms = time_ms(fn)
            except Exception as e:  # noqa: BLE001
                checks[name] = f"{type(e).__name__}: {str(e)[:120]}"
                continue
            best.setdefault(name, []).append(ms)
    mem = {}
    for name, fn in providers.items():
        if not isinstance(checks[name], str):
            try:
                mem[name] = _peak_MB(fn)
            except Exception:  # noqa: BLE001
                mem[name] = None
    t_torch = min(best["torch.fft"]) if "torch.fft" in best else None
    m_torch = mem.get("torch.fft")
    for name in providers:
        err = checks[name]
        ok = isinstance(err, float) and (name == "torch.fft" or err <= 4 * err_torch + 2e-3)
        ms = min(best[name]) if name in best else None
        row = {"L": L, "B": B, "H": H, "pass": "fwd", "provider": name, "ms": ms, "ms_rounds": best.get(name),
               "peak_MB": mem.get(name), "rel_err": err if isinstance(err, float) else None, "ok": ok,
               "error": None if isinstance(err, float) else err}
        if name != "torch.fft" and ok and ms and t_torch:
            row["speedup"] = t_torch / ms
            if mem.get(name) and m_torch:
                row["memory_saving"] = m_torch / mem[name]
        rows.append(row)
    if with_bwd:
        ins = [t.clone().requires_grad_() for t in (u, k, pre, post)]
        gy = torch.randn_like(u)
        fb = {"torch.fft": lambda: torch.autograd.grad(fftconv_torch(*ins[:2], *ins[2:]), ins, gy),
              "ioaware": lambda: torch.autograd.grad(fftconv(ins[0], ins[1], True, ins[2], ins[3]), ins, gy)}
        res = {}
        for name, fn in fb.items():
            try:
                res[name] = (time_ms(fn), _peak_MB(fn))
            except Exception as e:  # noqa: BLE001
                res[name] = (None, f"{type(e).__name__}: {str(e)[:120]}")
            torch.cuda.empty_cache()
        for name, (ms, pk) in res.items():
            row = {"L": L, "B": B, "H": H, "pass": "fwd+bwd", "provider": name, "ms": ms,
                   "peak_MB": pk if not isinstance(pk, str) else None, "ok": ms is not None,
                   "error": pk if isinstance(pk, str) else None}
            tt = res["torch.fft"][0]
            if name == "ioaware" and ms and tt:
                row["speedup"] = tt / ms
                if not isinstance(res["torch.fft"][1], str) and not isinstance(pk, str):
                    row["memory_saving"] = res["torch.fft"][1] / pk
            rows.append(row)
    return rows


def run(lengths=LENGTHS, B: int = 64, H: int = 768, bwd_max: int = 8192, sparse_keep: float = 0.25,
        progress=None) -> dict:
    import torch

    from .common import ceilings, machine_info

    rows = []
    for n, L in enumerate(lengths):
        rows += _bench_length(L, B, H, L <= bwd_max, sparse_keep)
        torch.cuda.empty_cache()
        if progress:
            progress(n + 1, len(lengths))
    return {"machine": machine_info(), "ceilings": ceilings(), "rows": rows,
            "setting": f"bf16, B={B}, H={H}, gated causal conv (pre and post gates), k fp32 (H, L)",
            "timing": f"do_bench median, providers round-robin, best of {ROUNDS}",
            "baseline": "irfft(rfft((u*pre).float(), 2L) * rfft(k, 2L), 2L)[..., :L].to(bf16) * post",
            "bar": ">= 5x torch.fft at L <= 8k, >= 2.5x at 16k-32k, >= 5x less peak memory"}


TABLE_COLUMNS = ["L", "pass", "provider", "ms", "speedup", "peak MB", "mem saving", "rel err", "check"]


def table_rows(res: dict) -> list[list]:
    out = []
    for r in res["rows"]:
        sp, ms = r.get("speedup"), r.get("memory_saving")
        out.append([r["L"], r["pass"], r["provider"], r["ms"] if r["ms"] is not None else "",
                    f"{sp:.2f}x" if sp else "", f"{r['peak_MB']:.0f}" if r.get("peak_MB") else "",
                    f"{ms:.1f}x" if ms else "", f"{r['rel_err']:.1e}" if r.get("rel_err") is not None else "",
                    "ok" if r["ok"] else ("FAIL " + (r.get("error") or ""))[:30]])
    return out
