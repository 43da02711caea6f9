"""Plan sweep on the GPU: every candidate plan of each FFT size, checked, then timed beside torch.fft.

B = 64, H = 768, bf16, gated causal (the issue's setting). Writes $OUT/sweep.json (or --out) and prints a table.

    python dev/fftconv/sweep.py [--lens 1024 4096] [--bwd-lens 4096]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.getcwd())
from ioaware.bench.common import machine_info, time_ms  # noqa: E402
from ioaware.kernels.conv import fftconv, prepare_kernel  # noqa: E402
from ioaware.kernels.conv.reference import Plan, fft_size, fftconv_torch, make_plan  # noqa: E402

# candidates per FFT size: (N1, N2, N3, R, warps, stages)
CANDS = {  # (N1, N2, N3, R, warps, stages, S, T); a plan's N may exceed the FFT size L needs (padding)
    512: [(32, 16, 1, 32, 4, 2, 8, False), (32, 16, 1, 32, 4, 2, 4, False), (32, 16, 1, 16, 4, 2, 8, False),
          (32, 64, 1, 16, 4, 2, 1, True)],
    2048: [(32, 64, 1, 16, 4, 2, 1, True), (32, 64, 1, 32, 4, 2, 1, True), (32, 64, 1, 32, 8, 2, 4, False),
           (64, 32, 1, 32, 8, 2, 4, False)],
    4096: [(64, 64, 1, 16, 4, 2, 1, True), (64, 64, 1, 32, 4, 2, 1, True), (64, 64, 1, 32, 8, 2, 1, True)],
    8192: [(128, 64, 1, 16, 4, 2, 1, True), (128, 64, 1, 32, 8, 2, 1, True), (64, 128, 1, 16, 8, 2, 1, True),
           (32, 16, 16, 16, 8, 2, 1, False)],
    16384: [(128, 128, 1, 16, 8, 1, 1, True), (128, 128, 1, 16, 8, 2, 1, True), (256, 64, 1, 16, 8, 2, 1, True),
            (64, 16, 16, 16, 8, 2, 1, False)],
}


def rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


def peak_mb(fn):
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del out
    return peak / 2**20


def sweep_length(L, B, H, dt, bwd) -> list[dict]:
    rows = []
    u = torch.randn(B, H, L, device="cuda", dtype=dt)
    pre = torch.randn_like(u)
    post = torch.randn_like(u)
    k = torch.randn(H, L, device="cuda") / L**0.5
    ref = fftconv_torch(u[:2].double(), k.double(), pre[:2].double(), post[:2].double()).float()
    N = fft_size(L)
    plans = [Plan(c[0] * c[1] * c[2], "fused", *c) for c in CANDS.get(N, [])] or [make_plan(N)]
    t_torch = time_ms(lambda: fftconv_torch(u, k, pre, post))
    m_torch = peak_mb(lambda: fftconv_torch(u, k, pre, post))
    err_torch = rel(fftconv_torch(u[:2], k, pre[:2], post[:2]), ref)
    print(f"L={L} torch {t_torch:.3f} ms peak {m_torch:.0f} MB err {err_torch:.2e}", flush=True)
    rows.append({"L": L, "provider": "torch", "ms": t_torch, "peak_MB": m_torch, "err": err_torch})
    for plan in plans:
        t0 = time.time()
        try:
            ks = prepare_kernel(k, L, plan=plan)
            run = lambda ks=ks: fftconv(u, ks, True, pre, post)  # noqa: E731
            y = run()
            torch.cuda.synchronize()
            compile_s = time.time() - t0
            err = rel(y[:2], ref)
            ms = time_ms(run)
            pk = peak_mb(run)
            row = {"L": L, "provider": "ioaware", "plan": repr(plan), "ms": ms, "peak_MB": pk, "err": err,
                   "speedup": t_torch / ms, "compile_s": compile_s}
        except Exception as e:  # noqa: BLE001
            row = {"L": L, "provider": "ioaware", "plan": repr(plan), "error": f"{type(e).__name__}: {e}"[:300]}
        rows.append(row)
        print({k2: (round(v, 4) if isinstance(v, float) else v) for k2, v in row.items()}, flush=True)
    if bwd:
        ins = [t.clone().requires_grad_() for t in (u, k, pre, post)]
        g = torch.randn_like(u)
        fns = {"torch": lambda: fftconv_torch(ins[0], ins[1], ins[2], ins[3]),
               "ioaware": lambda: fftconv(ins[0], ins[1], True, ins[2], ins[3])}
        for name, f in fns.items():
            try:
                ms = time_ms(lambda f=f: torch.autograd.grad(f(), ins, g))
                row = {"L": L, "provider": name, "pass": "fwd+bwd", "ms": ms}
            except Exception as e:  # noqa: BLE001
                row = {"L": L, "provider": name, "pass": "fwd+bwd", "error": f"{type(e).__name__}: {e}"[:300]}
            rows.append(row)
            print(row, flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lens", type=int, nargs="+", default=[256, 1024, 2048, 4096, 8192, 16384, 32768])
    ap.add_argument("--B", type=int, default=64)
    ap.add_argument("--H", type=int, default=768)
    ap.add_argument("--bwd-lens", type=int, nargs="*", default=[4096, 16384])
    ap.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "sweep.json"))
    a = ap.parse_args()
    dt = torch.bfloat16
    res = {"machine": machine_info(), "rows": []}
    torch.manual_seed(0)
    for L in a.lens:
        res["rows"] += sweep_length(L, a.B, a.H, dt, L in a.bwd_lens)
        torch.cuda.empty_cache()
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
