"""Hopper dK/dV (hopper.py: `_hopper_flash_attn_bwd_dkdv_kernel`): check its variants and time the whole backward
with kernel.py's dK/dV or the new one (preprocess and dQ from kernel.py either way) against SDPA cuDNN's backward,
same process, same card.

    PYTHONPATH=$PWD python3 dev/attention/hopper_bwd.py --out $OUT

1. compiles every (variant, shape) in a pool of processes with a deadline (a hung kernel cannot eat the run);
2. correctness: dK and dV of every variant (and kernel.py's, as a control) on odd T, causal, GQA, fp16 and bf16,
   against an fp32 autograd reference: max error <= 2x PyTorch's in the same dtype (+ the dtype's rounding atol);
3. timing: do_bench medians of one backward call, providers round-robin, best of ROUNDS. FLOPs: bwd = 2.5x fwd.
   cuDNN is timed as autograd.grad of SDPA's output (its backward alone; retain_graph).
Writes JSON lines to OUT/hopper_bwd.jsonl and prints a table last.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import sys
import time
import traceback

ROUNDS = 2
TIME_SHAPES = [(4, 4096, 16, 128), (1, 16384, 16, 128)]  # (B, T, H, D)
CHECK_SHAPES = [  # (B, T, Hq, Hkv, causal, dtype)
    (2, 1000, 4, 4, False, "bf16"), (2, 1000, 4, 4, True, "bf16"), (1, 4097, 8, 2, False, "bf16"),
    (1, 4097, 8, 2, True, "fp16"), (2, 1000, 4, 1, True, "fp16"), (1, 4097, 4, 4, False, "fp16"),
]


def c(bm, bn, w, s, ws, one):
    return {"BM": bm, "BN": bn, "num_warps": w, "STAGES": s, "WS": ws, "ONE_LOOP": one}


VARIANTS = {"tma_64x128_w8_s2": c(64, 128, 8, 2, False, False), "tma_64x128_w8_s3": c(64, 128, 8, 3, False, False),
            "ws_64x128_s2": c(64, 128, 4, 2, True, True), "ws_64x128_s3": c(64, 128, 4, 3, True, True)}
if os.environ.get("HOPPER_BWD_SET") == "b2":  # run B2: the table's tile, a 4-stage ring, WS at 2; T = 2048 too
    VARIANTS = {"tma_64x128_w8_s3": c(64, 128, 8, 3, False, False), "tma_64x128_w8_s4": c(64, 128, 8, 4, False, False),
                "ws_64x128_s2": c(64, 128, 4, 2, True, True)}
    TIME_SHAPES = [(8, 2048, 16, 128), *TIME_SHAPES]
if os.environ.get("HOPPER_BWD_VARIANTS"):
    VARIANTS = {k: v for k, v in VARIANTS.items() if k in os.environ["HOPPER_BWD_VARIANTS"].split(",")}

SMOKE = os.environ.get("HOPPER_BWD_SMOKE") == "1"  # CPU dry run under IOAWARE_INTERPRET=1: tiny shapes, fp16
DEV = "cpu" if SMOKE else "cuda"
if SMOKE:  # before triton loads (ioaware sets it too, but triton may be imported first)
    os.environ["TRITON_INTERPRET"] = "1"
if SMOKE:
    TIME_SHAPES = [(1, 256, 2, 64)]
    CHECK_SHAPES = [(2, 100, 2, 2, False, "fp16"), (1, 130, 4, 2, True, "fp16")]
    VARIANTS = {"tma": c(32, 64, 4, 2, False, False), "one": c(32, 64, 4, 2, False, True)}


def _dtype(name):
    import torch
    return torch.float16 if SMOKE else {"bf16": torch.bfloat16, "fp16": torch.float16}[name]


def _inputs(B, T, Hq, Hkv, D, dtype, seed):
    import torch
    g = torch.Generator(device=DEV).manual_seed(seed)
    return [torch.randn(B, T, h, D, device=DEV, generator=g).to(dtype) for h in (Hq, Hkv, Hkv, Hq)]


def _sync():
    import torch
    if not SMOKE:
        torch.cuda.synchronize()


def _fwd_and_delta(q, k, v, do, causal):
    from ioaware.kernels.attention.flash import kernel as old
    o, lse = old.flash_attn_fwd(q, k, v, causal, 1 / math.sqrt(q.shape[-1]))
    delta = (o.float() * do.float()).sum(-1).transpose(1, 2).contiguous()  # (B, Hq, T)
    return o, lse, delta


def _compile_job(job, progress):
    name, cfg, B, T, Hq, Hkv, D, causal, dt = job
    try:
        from ioaware.kernels.attention.flash.hopper import hopper_flash_attn_bwd_dkdv
        q, k, v, do = _inputs(B, T, Hq, Hkv, D, _dtype(dt), 0)
        o, lse, delta = _fwd_and_delta(q, k, v, do, causal)
        _sync()
        with open(progress, "a") as f:
            f.write(f"{time.time():.1f} start {job[0]} B{B} T{T} Hq{Hq} Hkv{Hkv} causal{int(causal)} {dt}\n")
        if cfg is None:  # the public backward (compiled here so the main process only loads it)
            from ioaware.kernels.attention.flash import kernel as old
            old.flash_attn_bwd(do, q, k, v, o, lse, causal, 1 / math.sqrt(D))
        else:
            hopper_flash_attn_bwd_dkdv(q, k, v, do, lse, delta, causal, 1 / math.sqrt(D), config=cfg)
        _sync()
        with open(progress, "a") as f:
            f.write(f"{time.time():.1f} done {job[0]} B{B} T{T}\n")
        return job, None
    except Exception as e:  # noqa: BLE001 - reported by the parent
        return job, f"{type(e).__name__}: {str(e)[:300]}"


def _ref_grads(q, k, v, do, causal, upcast):
    import torch

    from ioaware.kernels.attention.flash.reference import attention_ref
    qs, ks, vs = ((t.float() if upcast else t).detach().requires_grad_() for t in (q, k, v))
    out, _ = attention_ref(qs, ks, vs, causal, upcast=upcast)
    return torch.autograd.grad(out, (ks, vs), do.float() if upcast else do)


def check_one(fn, B, T, Hq, Hkv, D, causal, dt, heads=None):
    """fn(q, k, v, do, o, lse, delta, causal) -> (dk, dv). With `heads`, only batch 0 and the first `heads` kv heads
    are compared (the kernel runs on everything)."""
    dtype = _dtype(dt)
    q, k, v, do = _inputs(B, T, Hq, Hkv, D, dtype, 1 + T + Hkv)
    o, lse, delta = _fwd_and_delta(q, k, v, do, causal)
    dk, dv = fn(q, k, v, do, o, lse, delta, causal)
    _sync()
    if heads is not None:
        g = Hq // Hkv
        q, k, v, do, dk, dv = q[:1, :, :heads * g], k[:1, :, :heads], v[:1, :, :heads], do[:1, :, :heads * g], \
            dk[:1, :, :heads], dv[:1, :, :heads]
    rk, rv = _ref_grads(q, k, v, do, causal, True)
    pk, pv = _ref_grads(q, k, v, do, causal, False)
    res = {"ok": True}
    for name, x, r, p in (("dk", dk, rk, pk), ("dv", dv, rv, pv)):
        e, e_pt = (x.float() - r).abs().max().item(), (p.float() - r).abs().max().item()
        atol = 2 * (r.to(dtype) + 0.3 - 0.3 - r.to(dtype)).abs().max().item()
        ok = bool(not x.isnan().any().item() and e <= 2 * e_pt + atol)
        res.update({f"err_{name}": e, f"err_{name}_pytorch": e_pt})
        res["ok"] = res["ok"] and ok
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--workers", type=int, default=12)
    ap.add_argument("--compile-deadline", type=float, default=90.0)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    log = open(os.path.join(a.out, "hopper_bwd.jsonl"), "w")

    def emit(rec):
        log.write(json.dumps(rec) + "\n")
        log.flush()
        print(json.dumps(rec), flush=True)

    import torch
    import triton
    from triton.testing import do_bench

    from ioaware.bench.attention import _sdpa
    from ioaware.kernels.attention.flash import kernel as old
    from ioaware.kernels.attention.flash.hopper import hopper_flash_attn_bwd_dkdv

    if SMOKE:
        def do_bench(fn, warmup, rep, return_mode):  # noqa: F811 - wall clock stand-in for the dry run
            t = time.perf_counter()
            fn()
            return (time.perf_counter() - t) * 1e3
    else:
        p = torch.cuda.get_device_properties(0)
        emit({"machine": {"card": p.name, "sms": p.multi_processor_count, "torch": torch.__version__,
                          "triton": triton.__version__, "cuda": torch.version.cuda}})

    # 1. compile in parallel (non-WS first: a hung WS kernel holds a worker, the rest still gets done)
    t0 = time.time()
    jobs = [(n, cfg, B, T, Hq, Hkv, 128 if not SMOKE else 64, causal, dt) for n, cfg in VARIANTS.items()
            for B, T, Hq, Hkv, causal, dt in CHECK_SHAPES]
    jobs += [(n, cfg, B, T, H, H, D, causal, "bf16") for n, cfg in VARIANTS.items() for B, T, H, D in TIME_SHAPES
             for causal in (False, True)]
    D0 = 128 if not SMOKE else 64
    jobs += [("dispatched", None, B, T, Hq, Hkv, D0, causal, dt) for B, T, Hq, Hkv, causal, dt in CHECK_SHAPES]
    jobs += [("dispatched", None, B, T, H, H, D, causal, "bf16") for B, T, H, D in TIME_SHAPES
             for causal in (False, True)]
    jobs.sort(key=lambda j: j[1] is not None and j[1]["WS"])
    failed = set()
    progress = os.path.join(a.out, "progress.txt")
    pool = mp.get_context("spawn").Pool(1 if SMOKE else a.workers)
    pending = [(job, pool.apply_async(_compile_job, (job, progress))) for job in jobs]
    deadline = time.time() + a.compile_deadline
    for job, res in pending:
        try:
            _, err = res.get(timeout=max(deadline - time.time(), 0.1))
        except mp.TimeoutError:
            err = "did not finish before the compile deadline (hang?)"
        if err:
            failed.add(job[0])
            emit({"compile_error": job[0], "B": job[2], "T": job[3], "causal": job[7], "dtype": job[8], "error": err})
    pool.terminate()
    pool.join()
    emit({"compile_s": round(time.time() - t0, 1), "jobs": len(jobs), "failed_variants": sorted(failed)})

    def new_dkdv(cfg):
        def fn(q, k, v, do, o, lse, delta, causal):
            return hopper_flash_attn_bwd_dkdv(q, k, v, do, lse, delta, causal, 1 / math.sqrt(q.shape[-1]), config=cfg)
        return fn

    def dispatched_dkdv(q, k, v, do, o, lse, delta, causal):
        return old.flash_attn_bwd(do, q, k, v, o, lse, causal, 1 / math.sqrt(q.shape[-1]))[1:]

    # 2. correctness (the public backward, which dispatches hopper.py at D128 T >= HOPPER_BWD_MIN_T since run B1)
    provs = {"dispatched": dispatched_dkdv, **{n: new_dkdv(cfg) for n, cfg in VARIANTS.items() if n not in failed}}
    bad = set()
    for name, fn in provs.items():
        shapes = [(B, T, Hq, Hkv, causal, dt, None) for B, T, Hq, Hkv, causal, dt in CHECK_SHAPES]
        shapes += [(B, T, H, H, causal, "bf16", 2) for B, T, H, D in TIME_SHAPES for causal in (False, True)]
        for B, T, Hq, Hkv, causal, dt, heads in shapes:
            D = TIME_SHAPES[0][3]
            try:
                r = check_one(fn, B, T, Hq, Hkv, D, causal, dt, heads)
            except Exception:  # noqa: BLE001
                r = {"ok": False, "error": traceback.format_exc()[-400:]}
            if not r["ok"]:
                bad.add(name)
            emit({"check": name, "B": B, "T": T, "Hq": Hq, "Hkv": Hkv, "D": D, "causal": causal, "dtype": dt, **r})
            if not SMOKE:
                torch.cuda.empty_cache()

    # 3. timing of the whole backward: delta + dK/dV + dQ
    def whole_bwd(cfg):
        def fn(q, k, v, do, o, lse, causal):
            B, T, Hq, D = q.shape
            scale = 1 / math.sqrt(D)
            delta = torch.empty((B, Hq, T), device=q.device, dtype=torch.float32)
            old._flash_attn_bwd_preprocess_kernel[(triton.cdiv(T, 64), B * Hq)](
                o, do, delta, o.stride(0), o.stride(1), o.stride(2), do.stride(0), do.stride(1), do.stride(2), T,
                HQ=Hq, D=D, BD=D, BM=64)
            if cfg is None:  # kernel.py's dK/dV kernel with its table tile
                dk, dv = torch.empty_like(k), torch.empty_like(v)
                grid = lambda m: (triton.cdiv(T, m["BN"]), B * Hq)  # noqa: E731
                old._launch(old._flash_attn_bwd_dkdv_kernel, old._DKDV_TILES, grid, D, T, q, k, v, do, dk, dv, lse,
                            delta, q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
                            v.stride(0), v.stride(1), v.stride(2), do.stride(0), do.stride(1), do.stride(2),
                            dk.stride(0), dk.stride(1), dk.stride(2), dv.stride(0), dv.stride(1), dv.stride(2), T, T,
                            scale, scale * old.LOG2E, old._bucket(T), old._bucket(B * Hq), HQ=Hq, HKV=Hq, GROUP=1, D=D,
                            BD=D, IS_CAUSAL=causal, PRECISION="tf32", UPCAST=False)
            else:
                dk, dv = hopper_flash_attn_bwd_dkdv(q, k, v, do, lse, delta, causal, scale, config=cfg)
            dq = torch.empty_like(q)
            old._launch(old._flash_attn_bwd_dq_kernel, old._DQ_TILES, lambda m: (triton.cdiv(T, m["BM"]), B * Hq), D,
                        T, q, k, v, do, dq, lse, delta, q.stride(0), q.stride(1), q.stride(2), k.stride(0),
                        k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2), do.stride(0), do.stride(1),
                        do.stride(2), dq.stride(0), dq.stride(1), dq.stride(2), T, T, scale, scale * old.LOG2E,
                        old._bucket(T), old._bucket(B * Hq), HQ=Hq, GROUP=1, D=D, BD=D, IS_CAUSAL=causal,
                        PRECISION="tf32", UPCAST=False)
            return dq, dk, dv
        return fn

    def dispatched_bwd(q, k, v, do, o, lse, causal):
        return old.flash_attn_bwd(do, q, k, v, o, lse, causal, 1 / math.sqrt(q.shape[-1]))

    sdpa = _sdpa("sdpa-cudnn") if not SMOKE else None

    def time_shape(B, T, H, D, causal):
        q, k, v, do = _inputs(B, T, H, H, D, _dtype("bf16"), 7)
        o, lse, _ = _fwd_and_delta(q, k, v, do, causal)
        old_fn = whole_bwd(None)
        fns = {"old": lambda: old_fn(q, k, v, do, o, lse, causal),
               "dispatched": lambda: dispatched_bwd(q, k, v, do, o, lse, causal)}
        for n, cfg in VARIANTS.items():
            if n not in failed:
                f = whole_bwd(cfg)
                fns[n] = lambda f=f: f(q, k, v, do, o, lse, causal)
        if sdpa is not None:
            qc, kc, vc = (t.detach().clone().requires_grad_() for t in (q, k, v))
            oc = sdpa(qc, kc, vc, causal)
            fns["cudnn"] = lambda: torch.autograd.grad(oc, (qc, kc, vc), do, retain_graph=True)
        best = {n: float("inf") for n in fns}
        rounds = {n: [] for n in fns}
        for _ in range(ROUNDS):
            for n, fn in fns.items():
                try:
                    ms = do_bench(fn, warmup=25, rep=100, return_mode="median")
                except Exception as e:  # noqa: BLE001
                    ms = float("nan")
                    emit({"time_error": n, "error": str(e)[:300]})
                rounds[n].append(ms)
                best[n] = min(best[n], ms)
        flops = 2.5 * 4 * B * H * T * T * D / (2 if causal else 1)
        ref = best.get("cudnn", best["old"])
        return [{"time": n, "B": B, "T": T, "H": H, "D": D, "causal": causal, "ms": best[n], "ms_rounds": rounds[n],
                 "tflops": flops / best[n] * 1e-9, "vs_cudnn": ref / best[n], "vs_old": best["old"] / best[n],
                 "checks_ok": n not in bad} for n in fns]

    table = []
    for B, T, H, D in TIME_SHAPES:
        for causal in (False, True):
            for rec in time_shape(B, T, H, D, causal):
                emit(rec)
                table.append(rec)
            if not SMOKE:
                torch.cuda.empty_cache()
    print("\nshape (whole bwd, bf16)      provider            ms      TFLOP/s  x cuDNN  x old  ok")
    for r in table:
        shape = f"B{r['B']} T{r['T']} H{r['H']} D{r['D']}{' causal' if r['causal'] else ''}"
        print(f"{shape:28s} {r['time']:18s} {r['ms']:7.3f} {r['tflops']:8.1f} {r['vs_cudnn']:7.2f} "
              f"{r['vs_old']:6.2f}  {'ok' if r['checks_ok'] else 'FAIL'}")
    print("checks failed:", sorted(bad) or "none")


if __name__ == "__main__":
    sys.exit(main())
