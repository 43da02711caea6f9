"""`ioaware bench rnn`: the fused LSTM against cuDNN's nn.LSTM, the flashrnn package and a plain PyTorch loop.

Setting of the FlashRNN paper and issue #9: LSTM, B = 16, T = 1024, fp16, hidden 768 as one head of 768 and as
12 heads of 64. Modes: `fwd` (inference, no autograd) and `fwdbwd` (forward with autograd, then backward of
y.sum()). Providers of the recurrence alone (input projections precomputed): ioaware `lstm()`, flashrnn's
backends, a plain PyTorch time loop. Providers of the whole layer (input GEMM + recurrence): ioaware.rnn.LSTM
and torch.nn.LSTM (cuDNN; one head only). Each ioaware case is checked against an fp32 time loop first; no
speedup is reported for a failing case. flashrnn's CUDA backends compile with nvcc on first use; each is tried
in a subprocess with a time limit and reported as an error when it cannot build.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

ROUNDS = 2
B, T = 16, 1024
FLASHRNN_BACKENDS = ("triton_fused", "cuda_fused", "cuda")


def cases(which=("1x768", "12x64")):
    for NH, D in ((1, 768), (12, 64)):
        if f"{NH}x{D}" in which:
            yield {"B": B, "T": T, "NH": NH, "D": D, "dtype": "float16"}


def _inputs(c, requires_grad):
    import torch

    g = torch.Generator(device="cuda").manual_seed(0)
    NH, D, dt = c["NH"], c["D"], getattr(torch, c["dtype"])
    x = torch.randn(c["B"], c["T"], 4 * NH * D, device="cuda", generator=g).to(dt).requires_grad_(requires_grad)
    R = (torch.randn(4, NH, D, D, device="cuda", generator=g) / math.sqrt(D)).to(dt).requires_grad_(requires_grad)
    b = (0.1 * torch.randn(4, NH, D, device="cuda", generator=g)).to(dt).requires_grad_(requires_grad)
    return x, R, b


def _fn(fwd, mode, params):
    """fwd() -> y; in fwdbwd mode also y.sum().backward() with gradients cleared first."""
    import torch

    if mode == "fwd":
        def run():
            with torch.no_grad():
                return fwd()
        return run

    def run():
        for p in params:
            p.grad = None
        fwd().float().sum().backward()
    return run


def _check(c) -> float:
    """Relative RMS error of ioaware's fp16 forward and x-gradient against an fp32 time loop (first 128 steps)."""
    import torch

    from ..kernels.rnn import lstm, lstm_ref

    x, R, b = _inputs({**c, "T": 128}, True)
    y, _ = lstm(x, R, b, num_heads=c["NH"])
    dy = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, x, dy)
    x32, R32, b32 = (t.detach().float().requires_grad_() for t in (x, R, b))
    yr, _ = lstm_ref(x32, R32, b32, num_heads=c["NH"])
    (gxr,) = torch.autograd.grad(yr, x32, dy.float())

    def rr(a, r):
        return ((a.double() - r.double()).norm() / r.double().norm()).item()

    return max(rr(y, yr), rr(gx, gxr))


def _flashrnn_subprocess(c, mode, backend, timeout_s):
    """Time one flashrnn backend in a child process (its CUDA backends JIT-compile, which may fail or hang)."""
    code = ("import json,sys; from ioaware.bench.rnn import _flashrnn_child; "
            f"print('RESULT', json.dumps(_flashrnn_child({c!r}, {mode!r}, {backend!r})))")
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout_s,
                             env={**os.environ, "PYTHONUNBUFFERED": "1"})
    except subprocess.TimeoutExpired:
        return math.nan, f"timeout after {timeout_s}s (nvcc build)"
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            r = json.loads(line[7:])
            return r["ms"], r["error"]
    tail = (out.stderr or out.stdout).strip().splitlines()[-3:]
    return math.nan, " | ".join(tail)[-300:]


def _flashrnn_child(c, mode, backend):
    import torch
    from flashrnn import flashrnn

    from .common import time_ms

    try:
        x, R, b = _inputs(c, mode == "fwdbwd")
        NH, D = c["NH"], c["D"]
        Wx = x.detach().view(c["B"], c["T"], 4, NH, D).requires_grad_(mode == "fwdbwd")
        ps = [Wx, R, b] if mode == "fwdbwd" else []
        fn = _fn(lambda: flashrnn(Wx, R, b, function="lstm", backend=backend, dtype=c["dtype"])[0][0], mode, ps)
        fn()
        torch.cuda.synchronize()
        return {"ms": min(time_ms(fn) for _ in range(ROUNDS)), "error": None}
    except Exception as e:  # noqa: BLE001 - a backend that refuses the shape or fails to build is reported
        return {"ms": math.nan, "error": f"{type(e).__name__}: {str(e)[:200]}"}


def _loop_ms(fn, reps=2) -> float:
    """The plain loop takes ~0.1-0.5 s a call: time a few calls with events instead of do_bench."""
    import torch

    fn()
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    for _ in range(reps):
        fn()
    e.record()
    e.synchronize()
    return s.elapsed_time(e) / reps


def _bench_case(c: dict, flashrnn_timeout_s: int, flashrnn_backends=FLASHRNN_BACKENDS) -> list[dict]:
    import torch

    from ..kernels.rnn import lstm, lstm_ref
    from ..rnn import LSTM
    from .common import time_ms

    NH, D = c["NH"], c["D"]
    H = NH * D
    dt = getattr(torch, c["dtype"])
    err = _check(c)
    rows = []
    for mode in ("fwd", "fwdbwd"):
        x, R, b = _inputs(c, mode == "fwdbwd")
        inp = torch.randn(c["B"], c["T"], H, device="cuda", dtype=dt, requires_grad=mode == "fwdbwd")
        ours = LSTM(H, H, batch_first=True, num_heads=NH, device="cuda", dtype=dt)
        ps = [x, R, b] if mode == "fwdbwd" else []
        providers = {
            "ioaware lstm()": _fn(lambda x=x, R=R, b=b: lstm(x, R, b, num_heads=NH)[0], mode, ps),
            "ioaware.rnn.LSTM (+input GEMM)": _fn(lambda m=ours, i=inp: m(i)[0], mode, [inp, *ours.parameters()]),
        }
        if NH == 1:
            cudnn = torch.nn.LSTM(H, H, batch_first=True, device="cuda", dtype=dt)
            providers["cuDNN nn.LSTM (+input GEMM)"] = _fn(lambda m=cudnn, i=inp: m(i)[0], mode,
                                                           [inp, *cudnn.parameters()])
            # the FlashRNN paper's setting: nn.LSTM's forward with autograd on (its training-mode forward)
            if mode == "fwd":
                providers["cuDNN nn.LSTM fwd, autograd on"] = lambda m=cudnn, i=inp: m(i)[0]
        best: dict = {}
        for _ in range(ROUNDS):
            for name, fn in providers.items():
                try:
                    ms, e = time_ms(fn), None
                except Exception as ex:  # noqa: BLE001
                    ms, e = math.nan, f"{type(ex).__name__}: {str(ex)[:200]}"
                if name not in best or (ms == ms and not ms >= best[name][0]):
                    best[name] = (ms, e)
        for backend in flashrnn_backends:
            best[f"flashrnn {backend}"] = _flashrnn_subprocess(c, mode, backend, flashrnn_timeout_s)
        loop = _fn(lambda x=x, R=R, b=b: lstm_ref(x, R, b, num_heads=NH)[0], mode, ps)
        best["PyTorch time loop"] = (_loop_ms(loop), None)
        for name, (ms, e) in best.items():
            rows.append({**c, "mode": mode, "provider": name, "ms": ms, "error": e,
                         "rel_err": err if name.startswith("ioaware") else None,
                         "ok": err < 2e-2 if name.startswith("ioaware") else None})
    return rows


def _speedups(rows):
    for r in rows:
        if not (r["provider"].startswith("ioaware") and r["ok"]):
            continue
        grp = [q for q in rows if q["NH"] == r["NH"] and q["D"] == r["D"] and q["mode"] == r["mode"]
               and q["ms"] == q["ms"]]
        layer = r["provider"].startswith("ioaware.rnn.LSTM")
        cud = [q["ms"] for q in grp if q["provider"].startswith("cuDNN")]
        if layer and cud:
            r["speedup_vs_cudnn"] = min(cud) / r["ms"]
        frnn = [q["ms"] for q in grp if q["provider"].startswith("flashrnn")]
        if not layer and frnn:
            r["speedup_vs_flashrnn_best"] = min(frnn) / r["ms"]
        loop = [q["ms"] for q in grp if q["provider"] == "PyTorch time loop"]
        if not layer and loop:
            r["speedup_vs_loop"] = loop[0] / r["ms"]


def run(progress=None, flashrnn_timeout_s: int = 240, which=("1x768", "12x64"),
        flashrnn_backends=FLASHRNN_BACKENDS) -> dict:
    from ..kernels.rnn.tiles import plan_rnn_tiles
    from .common import ceilings, machine_info

    rows = []
    all_cases = list(cases(which))
    for n, c in enumerate(all_cases):
        rows += _bench_case(c, flashrnn_timeout_s, flashrnn_backends)
        if progress:
            progress(n + 1, len(all_cases))
    _speedups(rows)
    import torch

    sms = torch.cuda.get_device_properties(0).multi_processor_count
    from ..kernels.rnn.tiles import Machine

    tiles = {f"NH{c['NH']}-D{c['D']}": plan_rnn_tiles("lstm", c["B"], c["NH"], c["D"], 2, Machine(num_sms=sms)).__dict__
             for c in all_cases}
    return {"machine": machine_info(), "ceilings": ceilings(), "rows": rows, "tiles": tiles,
            "setting": "LSTM, B=16, T=1024, fp16; fwd = no autograd (except the row that says so); fwdbwd = "
                       "forward with autograd + backward of y.sum()",
            "timing": f"do_bench median, providers round-robin, best of {ROUNDS}; flashrnn in a child process; "
                      "the PyTorch loop timed over 2 calls with CUDA events"}


TABLE_COLUMNS = ["NH x D", "mode", "provider", "ms", "vs cuDNN", "vs flashrnn best", "vs loop", "check"]


def table_rows(res: dict) -> list[list]:
    out = []
    def f(r, k):
        return f"{r[k]:.2f}x" if r.get(k) else ""

    for r in res["rows"]:
        chk = ("ok" if r["ok"] else "FAIL") if r["ok"] is not None else (r["error"] or "")[:40]
        out.append([f"{r['NH']}x{r['D']}", r["mode"], r["provider"], r["ms"], f(r, "speedup_vs_cudnn"),
                    f(r, "speedup_vs_flashrnn_best"), f(r, "speedup_vs_loop"), chk])
    return out
