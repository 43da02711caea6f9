"""Hopper windowed forward (hopper.py, HAS_LEFT): check and time its tiles against masked.py's portable forward,
the public flash_attn (whatever it dispatches) and FlexAttention (compiled, same mask), same process, same card.

    PYTHONPATH=$PWD python3 dev/attention/hopper_window.py --out $OUT

Setting as ioaware/bench/attention_masks.py: bf16, D = 128, H = 16, causal with window_size=(1023, -1) (row r sees
r-1023 .. r), B*T = 16k tokens; also B4 T4096 and B8 T2048 (our kernels only) for the dispatch threshold.
1. compiles every (variant, shape) in a pool of processes (Triton's on-disk cache is shared);
2. checks every variant against an fp32 reference (2x-of-PyTorch rule, as tests/gpu);
3. times: triton.testing.do_bench medians, providers round-robin, best of ROUNDS rounds.
Writes JSON lines to OUT/hopper_window.jsonl and prints a table last.
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

ROUNDS = 3
WL = 1023
TIME_SHAPES = [(1, 16384, 16), (4, 4096, 16), (8, 2048, 16)]  # (B, T, H), D = 128, bf16
CHECK_SHAPES = [(2, 1000, 4, 2, 127, "bf16"), (1, 4097, 4, 4, 1023, "fp16"), (1, 16384, 16, 16, 1023, "bf16"),
                (2, 2049, 4, 1, 0, "bf16")]  # (B, T, Hq, Hkv, window left, dtype)


def c(bm, bn, w, s, ws, one):
    return {"BM": bm, "BN": bn, "num_warps": w, "STAGES": s, "WS": ws, "ONE_LOOP": one, "REV": False}


VARIANTS = {
    "tma_128x128_w8_s3": c(128, 128, 8, 3, False, False),
    "tma_128x128_w8_s2": c(128, 128, 8, 2, False, False),
    "tma_128x64_w8_s3": c(128, 64, 8, 3, False, False),
    "tma_64x64_w4_s2": c(64, 64, 4, 2, False, False),
    "tma_64x64_w4_s3": c(64, 64, 4, 3, False, False),
    "tma_64x64_w4_s4": c(64, 64, 4, 4, False, False),
    "ws_128x128_s2": c(128, 128, 4, 2, True, True),
    "ws_128x64_s2": c(128, 64, 4, 2, True, True),
    "one_128x128_w8_s3": c(128, 128, 8, 3, False, True),  # masked in every block, no WS: the cost of the mask
    # run W2: smaller tiles for more CTAs an SM (64x32 s3: 65 KB, 115 registers: three), WS at BM64
    "tma_64x32_w4_s3": c(64, 32, 4, 3, False, False),
    "tma_64x32_w4_s4": c(64, 32, 4, 4, False, False),
    "ws_64x64_s2": c(64, 64, 4, 2, True, True),
}
if os.environ.get("HOPPER_WINDOW_SET") == "w2":
    TIME_SHAPES = [(1, 16384, 16), (8, 2048, 16)]


def _dtype(name):
    import torch
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[name]


def _inputs(B, T, Hq, Hkv, dtype, seed):
    import torch
    g = torch.Generator(device="cuda").manual_seed(seed)
    return [torch.randn(B, T, h, 128, device="cuda", generator=g).to(dtype) for h in (Hq, Hkv, Hkv)]


def _compile_job(job):
    name, B, T, Hq, Hkv, wl, dt = job
    try:
        import torch

        from ioaware.kernels.attention.flash.hopper import hopper_flash_attn_fwd
        q, k, v = _inputs(B, T, Hq, Hkv, _dtype(dt), 0)
        hopper_flash_attn_fwd(q, k, v, True, 1 / math.sqrt(128), config=VARIANTS[name], window_left=wl)
        torch.cuda.synchronize()
        return job, None
    except Exception as e:  # noqa: BLE001 - reported by the parent
        return job, f"{type(e).__name__}: {str(e)[:300]}"


def check_one(fn, B, T, Hq, Hkv, wl, dt, heads=None):
    """max |kernel - fp32 ref| <= 2 * max |PyTorch dtype - fp32 ref| + atol; big inputs: first `heads` heads."""
    import torch

    from ioaware.kernels.attention.flash.reference import attention_masked_ref

    dtype = _dtype(dt)
    q, k, v = _inputs(B, T, Hq, Hkv, dtype, T + wl)
    o, lse = fn(q, k, v, wl)
    torch.cuda.synchronize()
    if heads is not None:
        g = Hq // Hkv
        q, k, v, o, lse = q[:1, :, :heads], k[:1, :, :heads // g], v[:1, :, :heads // g], o[:1, :, :heads], \
            lse[:1, :heads]
    kw = dict(causal=True, window_size=(wl, 0))
    ref, lse_ref = attention_masked_ref(q, k, v, **kw)
    pt, _ = attention_masked_ref(q, k, v, upcast=False, **kw)
    e, e_pt = (o.float() - ref).abs().max().item(), (pt.float() - ref).abs().max().item()
    atol = 2 * (ref.to(dtype) + 0.3 - 0.3 - ref.to(dtype)).abs().max().item()
    e_lse = (lse - lse_ref).abs().max().item()
    ok = bool(not o.isnan().any().item() and e <= 2 * e_pt + atol and e_lse < 1e-3)
    return {"err": e, "err_pytorch": e_pt, "err_lse": e_lse, "ok": ok}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--workers", type=int, default=12)
    ap.add_argument("--compile-deadline", type=float, default=90.0)
    ap.add_argument("--variants", default=None, help="comma-separated subset of VARIANTS")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    log = open(os.path.join(a.out, "hopper_window.jsonl"), "w")
    names = a.variants.split(",") if a.variants else list(VARIANTS)

    def emit(rec):
        log.write(json.dumps(rec) + "\n")
        log.flush()
        print(json.dumps(rec), flush=True)

    import torch
    import triton
    from triton.testing import do_bench

    from ioaware.kernels.attention.flash import flash_attn, masked
    from ioaware.kernels.attention.flash.hopper import hopper_flash_attn_fwd

    p = torch.cuda.get_device_properties(0)
    emit({"machine": {"card": p.name, "sms": p.multi_processor_count, "torch": torch.__version__,
                      "triton": triton.__version__, "cuda": torch.version.cuda}})

    # 1. compile in parallel
    t0 = time.time()
    jobs = [(n, B, T, Hq, Hkv, wl, dt) for n in names for B, T, Hq, Hkv, wl, dt in CHECK_SHAPES]
    jobs += [(n, 1, T, H, H, WL, "bf16") for n in names for _, T, H in TIME_SHAPES]  # HQ is a constexpr
    jobs.sort(key=lambda j: VARIANTS[j[0]]["WS"])
    pool = mp.get_context("spawn").Pool(a.workers)
    pending = [(job, pool.apply_async(_compile_job, (job,))) for job in jobs]
    deadline = time.time() + a.compile_deadline
    failed = set()
    for job, res in pending:
        try:
            _, err = res.get(timeout=max(deadline - time.time(), 0.1))
        except mp.TimeoutError:
            err = "did not finish before the compile deadline (hang?)"
        if err:
            failed.add(job[0])
            emit({"compile_error": job[0], "job": job, "error": err})
    pool.terminate()
    pool.join()
    names = [n for n in names if n not in failed]
    emit({"compile_s": round(time.time() - t0, 1), "jobs": len(jobs), "failed_variants": sorted(failed)})

    scale = 1 / math.sqrt(128)

    def hopper(cfg):
        return lambda q, k, v, wl: hopper_flash_attn_fwd(q, k, v, True, scale, config=cfg, window_left=wl)

    real_use = masked._use_hopper_window

    def portable(q, k, v, wl):  # masked.py's own forward, the Hopper dispatch switched off
        masked._use_hopper_window = lambda *args: False
        try:
            return flash_attn(q, k, v, causal=True, window_size=(wl, -1), return_lse=True)
        finally:
            masked._use_hopper_window = real_use

    def public(q, k, v, wl):
        return flash_attn(q, k, v, causal=True, window_size=(wl, -1), return_lse=True)

    # 2. correctness
    bad = set()
    provs = {"portable": portable, "flash_attn": public, **{n: hopper(VARIANTS[n]) for n in names}}
    for name, fn in provs.items():
        for B, T, Hq, Hkv, wl, dt in CHECK_SHAPES:
            try:
                r = check_one(fn, B, T, Hq, Hkv, wl, dt, heads=2 if T >= 16384 else None)
            except Exception:  # noqa: BLE001
                r = {"ok": False, "error": traceback.format_exc()[-400:]}
            if not r["ok"]:
                bad.add(name)
            emit({"check": name, "B": B, "T": T, "Hq": Hq, "Hkv": Hkv, "wl": wl, "dtype": dt, **r})
    torch.cuda.empty_cache()
    q1, k1, v1 = _inputs(1, 4096, 1, 1, torch.bfloat16, 3)
    emit({"dispatch_check": "flash_attn window takes hopper.py at T=4096",
          "uses_hopper": bool(masked._use_hopper_window(q1, k1, v1, dict(
              wl=WL, wr=0, cu_q=None, block_mask=None, alibi=None, softcap=0.0, dropout_p=0.0, prefix=None)))})

    # 3. timing
    table = []
    for B, T, H in TIME_SHAPES:
        q, k, v = _inputs(B, T, H, H, torch.bfloat16, 7)
        tp = dict(provs)
        if T == 16384:
            from ioaware.bench.attention_masks import _flex

            def window(b, h, q_idx, kv_idx):
                return (q_idx >= kv_idx) & (q_idx - kv_idx <= WL)

            fx = _flex(window, None, None, T)
            tp["flex"] = lambda q, k, v, wl, fx=fx: fx(q, k, v)
            try:
                with torch.no_grad():
                    ours, _ = public(q, k, v, WL)
                    flex_o = fx(q, k, v)
                emit({"flex_vs_ours_rel": ((ours.float() - flex_o.float()).norm() / flex_o.float().norm()).item()})
                del ours, flex_o
            except Exception as e:  # noqa: BLE001
                emit({"flex_error": str(e)[:300]})
        best = {n: float("inf") for n in tp}
        rounds = {n: [] for n in tp}
        for _ in range(ROUNDS):
            for n, fn in tp.items():
                try:
                    with torch.no_grad():
                        ms = do_bench(lambda fn=fn, q=q, k=k, v=v: fn(q, k, v, WL), warmup=25, rep=100,
                                      return_mode="median")
                except Exception as e:  # noqa: BLE001
                    ms = float("nan")
                    emit({"time_error": n, "error": str(e)[:300]})
                rounds[n].append(ms)
                best[n] = min(best[n], ms)
        pairs = sum(min(r + 1, WL + 1) for r in range(T))
        flops = 4 * 128 * pairs * B * H
        for n in tp:
            rec = {"time": n, "B": B, "T": T, "H": H, "ms": best[n], "ms_rounds": rounds[n],
                   "tflops": flops / best[n] * 1e-9, "vs_portable": best["portable"] / best[n],
                   "vs_flex": best["flex"] / best[n] if "flex" in best else None, "checks_ok": n not in bad}
            emit(rec)
            table.append(rec)
        del q, k, v
        torch.cuda.empty_cache()
    print("\nshape               provider              ms     TFLOP/s  x portable  x flex  ok")
    for r in table:
        vf = f"{r['vs_flex']:6.2f}" if r["vs_flex"] else "     -"
        print(f"B{r['B']} T{r['T']} H{r['H']:<6} {r['time']:20s} {r['ms']:7.3f} {r['tflops']:8.1f} "
              f"{r['vs_portable']:9.2f}  {vf}  {'ok' if r['checks_ok'] else 'FAIL'}")
    print("checks failed:", sorted(bad) or "none")


if __name__ == "__main__":
    sys.exit(main())
