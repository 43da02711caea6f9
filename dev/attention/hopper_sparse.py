"""Hopper block-sparse (hopper.py SPARSE: forward over masked.py's per-row block lists, dK/dV over their transpose):
check and time its tiles against masked.py's portable kernels and our dense kernels, same process, same card.

    PYTHONPATH=$PWD python3 dev/attention/hopper_sparse.py --out $OUT

Setting as ioaware/bench/attention_masks.py: bf16, D = 128, H = 16, B2 T8192, 128 x 128 blocks, random 25% / 50%
of the blocks (the benchmark's own masks: torch.rand on cuda, generator seeded 1 + i); "rate vs dense" = computed-block
TFLOP/s over the dense kernel's (flash_attn without a mask), the issue's bar >= 0.8. Every provider is the public
flash_attn, with hopper.py's sparse tile tables switched per variant (so the block lists are built in the timed call,
as in the benchmark); "portable" switches the Hopper dispatch off (masked.py's kernels, the committed path).
1. compiles every (variant, shape) in a pool of processes (Triton's on-disk cache is shared);
2. checks every variant (output, LSE, dQ/dK/dV) against an fp32 reference (2x-of-PyTorch rule, as tests/gpu);
3. times: triton.testing.do_bench medians, providers round-robin, best of ROUNDS rounds.
Writes JSON lines to OUT/hopper_sparse.jsonl and prints a table last.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
import traceback

ROUNDS = 2
BS = 128
TIME_SHAPES = [(2, 8192, 16, 0.25, 1), (2, 8192, 16, 0.5, 2), (8, 2048, 16, 0.25, 3)]  # B, T, H, density, seed
CHECK_SHAPES = [(2, 2048, 4, 2, 0.3, "bf16"), (1, 4097, 4, 4, 0.5, "fp16"), (1, 8192, 2, 2, 0.25, "bf16")]


def c(bm, bn, w, s, ws):
    return {"BM": bm, "BN": bn, "num_warps": w, "STAGES": s, "WS": ws, "ONE_LOOP": ws, "REV": False}


FWD = {  # forward tiles (hopper._hopper_sparse_table)
    "ws_128x128_s2": c(128, 128, 4, 2, True),
    "tma_128x128_w8_s2": c(128, 128, 8, 2, False),  # 2 K/V buffers, the index load not pipelined (offline)
    "tma_128x128_w8_s3": c(128, 128, 8, 3, False),  # the index load pipelined: 2 K/V buffers (offline)
    "tma_128x128_w8_s5": c(128, 128, 8, 5, False),  # 3 K/V buffers, 229 KB
    "tma_64x64_w4_s3": c(64, 64, 4, 3, False),  # 82 KB: two CTAs an SM
    "tma_64x64_w4_s5": c(64, 64, 4, 5, False),  # 115 KB
}
BWD = {  # dK/dV tiles (hopper._hopper_sparse_bwd_table)
    "dkdv_64x128_w8_s3": {"BM": 64, "BN": 128, "num_warps": 8, "STAGES": 3, "WS": False, "ONE_LOOP": False},
    "dkdv_64x128_w8_s5": {"BM": 64, "BN": 128, "num_warps": 8, "STAGES": 5, "WS": False, "ONE_LOOP": False},
}


def _dtype(name):
    import torch
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[name]


def _inputs(B, T, Hq, Hkv, dtype, seed, grad=False):
    import torch
    g = torch.Generator(device="cuda").manual_seed(seed)
    return [torch.randn(B, T, h, 128, device="cuda", generator=g).to(dtype).requires_grad_(grad)
            for h in (Hq, Hkv, Hkv)]


def _mask(B, H, T, density, seed):
    import torch
    g = torch.Generator(device="cuda").manual_seed(seed)
    n = -(-T // BS)
    return torch.rand(B, H, n, n, device="cuda", generator=g) < density


class Switch:
    """Run the public op with hopper.py's sparse tables set to (fwd, bwd) configs, or the Hopper dispatch off."""

    def __init__(self, fwd=None, bwd=None, off=False):
        self.fwd, self.bwd, self.off = fwd, bwd, off

    def __enter__(self):
        from ioaware.kernels.attention.flash import hopper, masked
        self.saved = (hopper._hopper_sparse_table, hopper._hopper_sparse_bwd_table, masked._use_hopper_sparse)
        if self.fwd is not None:
            hopper._hopper_sparse_table = lambda D, T, cfg=self.fwd: dict(cfg)
        if self.bwd is not None:
            hopper._hopper_sparse_bwd_table = lambda D, T, cfg=self.bwd: dict(cfg)
        if self.off:
            masked._use_hopper_sparse = lambda *a: False

    def __exit__(self, *exc):
        from ioaware.kernels.attention.flash import hopper, masked
        hopper._hopper_sparse_table, hopper._hopper_sparse_bwd_table, masked._use_hopper_sparse = self.saved


def _compile_job(job):
    fwd, bwd, B, T, Hq, Hkv, dt = job
    try:
        import torch

        from ioaware.kernels.attention.flash import flash_attn
        q, k, v = _inputs(B, T, Hq, Hkv, _dtype(dt), 0, grad=bwd is not None)
        bm = _mask(B, Hq, T, 0.3, 0)
        with Switch(FWD.get(fwd), BWD.get(bwd)):
            o = flash_attn(q, k, v, block_mask=bm, block_size=(BS, BS))
            if bwd is not None:
                torch.autograd.grad(o, (q, k, v), torch.randn_like(o))
        torch.cuda.synchronize()
        return job, None
    except Exception as e:  # noqa: BLE001 - reported by the parent
        return job, f"{type(e).__name__}: {str(e)[:300]}"


def check_one(sw, B, T, Hq, Hkv, density, dt, bwd):
    """max |ours - fp32 ref| <= 2 * max |PyTorch dtype - fp32 ref| + atol, for out (and dq, dk, dv); LSE."""
    import torch

    from ioaware.kernels.attention.flash import flash_attn
    from ioaware.kernels.attention.flash.reference import attention_masked_ref

    dtype = _dtype(dt)
    q, k, v = _inputs(B, T, Hq, Hkv, dtype, T + Hq, grad=bwd)
    bm = _mask(B, Hq, T, density, T)
    bm[..., 1, :] = False  # an empty block row
    do = torch.randn_like(q)
    with sw:
        o, lse = flash_attn(q, k, v, block_mask=bm, block_size=(BS, BS), return_lse=True)
        grads = torch.autograd.grad(o, (q, k, v), do) if bwd else ()
    kw = dict(block_mask=bm, block_size=(BS, BS))
    xs = [t.detach().float().requires_grad_(bwd) for t in (q, k, v)]
    ref, lse_ref = attention_masked_ref(*xs, **kw)
    refs = torch.autograd.grad(ref, xs, do.float()) if bwd else ()
    xp = [t.detach().clone().requires_grad_(bwd) for t in (q, k, v)]
    pt, _ = attention_masked_ref(*xp, upcast=False, **kw)
    pts = torch.autograd.grad(pt, xp, do) if bwd else ()
    out = {}
    ok = True
    for name, x, xr, xq in zip(("out", "dq", "dk", "dv"), (o, *grads), (ref, *refs), (pt, *pts)):
        e, e_pt = (x.float() - xr).abs().max().item(), (xq.float() - xr).abs().max().item()
        atol = 2 * (xr.to(dtype) + 0.3 - 0.3 - xr.to(dtype)).abs().max().item()
        out[name] = [e, e_pt]
        ok = ok and not x.isnan().any().item() and e <= 2 * e_pt + atol
    empty = lse_ref == float("-inf")
    out["lse"] = (lse[~empty] - lse_ref[~empty]).abs().max().item()
    out["empty_ok"] = bool((lse[empty] == float("-inf")).all().item() and (o.transpose(1, 2)[empty] == 0).all().item())
    out["ok"] = bool(ok and out["lse"] < 1e-3 and out["empty_ok"])
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--workers", type=int, default=12)
    ap.add_argument("--compile-deadline", type=float, default=80.0)
    ap.add_argument("--deadline", type=float, default=150.0, help="seconds from start: skip what is left after it")
    a = ap.parse_args()
    t_start = time.time()
    os.makedirs(a.out, exist_ok=True)
    log = open(os.path.join(a.out, "hopper_sparse.jsonl"), "w")

    def emit(rec):
        log.write(json.dumps(rec) + "\n")
        log.flush()
        print(json.dumps(rec), flush=True)

    import torch
    import triton
    from triton.testing import do_bench

    from ioaware.kernels.attention.flash import flash_attn, masked

    p = torch.cuda.get_device_properties(0)
    emit({"machine": {"card": p.name, "sms": p.multi_processor_count, "torch": torch.__version__,
                      "triton": triton.__version__, "cuda": torch.version.cuda}})

    # 1. compile in parallel: every forward variant (forward only) and every dK/dV variant (with the table forward)
    t0 = time.time()
    shapes = [(B, T, Hq, Hkv, dt) for B, T, Hq, Hkv, _, dt in CHECK_SHAPES]
    shapes += [(B, T, H, H, "bf16") for B, T, H, _, _ in TIME_SHAPES[::2]]
    jobs = [(f, None, *s) for f in FWD for s in shapes] + [(None, b, *s) for b in BWD for s in shapes]
    jobs.sort(key=lambda j: not (j[0] and FWD[j[0]]["WS"]))  # the slow WS compiles first
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
            failed.add(job[0] or job[1])
            emit({"compile_error": job[0] or job[1], "job": job, "error": err})
    pool.terminate()
    pool.join()
    emit({"compile_s": round(time.time() - t0, 1), "jobs": len(jobs), "failed_variants": sorted(failed)})
    fwd_names = [n for n in FWD if n not in failed]
    bwd_names = [n for n in BWD if n not in failed]

    # 2. correctness (the public op, dispatch on, tables switched)
    bad = set()
    checks = [("portable", Switch(off=True), True)] + [(n, Switch(fwd=FWD[n]), False) for n in fwd_names]
    checks += [(n, Switch(bwd=BWD[n]), True) for n in bwd_names]
    for name, sw, bwd in checks:
        for B, T, Hq, Hkv, dens, dt in CHECK_SHAPES:
            if bwd and T > 4097:
                continue
            try:
                r = check_one(sw, B, T, Hq, Hkv, dens, dt, bwd)
            except Exception:  # noqa: BLE001
                r = {"ok": False, "error": traceback.format_exc()[-600:]}
            if not r["ok"]:
                bad.add(name)
            emit({"check": name, "B": B, "T": T, "Hq": Hq, "Hkv": Hkv, "density": dens, "dtype": dt, **r})
        torch.cuda.empty_cache()
    q1, k1, v1 = _inputs(1, 8192, 1, 1, torch.bfloat16, 3)
    spec = dict(wl=-1, wr=-1, cu_q=None, block_mask=_mask(1, 1, 8192, 0.5, 0), block_size=(BS, BS), causal=False,
                alibi=None, softcap=0.0, dropout_p=0.0, prefix=None)
    emit({"dispatch_check": "block-sparse 128x128 at T=8192 takes hopper.py",
          "uses_hopper": bool(masked._use_hopper_sparse(q1, k1, v1, spec))})

    # 3. timing
    table = []
    for B, T, H, density, seed in TIME_SHAPES:
        if time.time() - t_start > a.deadline:
            emit({"skipped_timing": [B, T, H, density], "reason": "deadline"})
            continue
        q, k, v = _inputs(B, T, H, H, torch.bfloat16, 7, grad=True)
        do = torch.randn_like(q)
        bm = _mask(B, H, T, density, seed)
        nnz = int(bm.sum())
        sparse = lambda q, k, v, bm=bm: flash_attn(q, k, v, block_mask=bm, block_size=(BS, BS))  # noqa: E731
        dense = lambda q, k, v: flash_attn(q, k, v)  # noqa: E731
        fwd_p = {"portable": (sparse, Switch(off=True)), "flash_attn": (sparse, Switch()),
                 **{n: (sparse, Switch(fwd=FWD[n])) for n in fwd_names}, "dense": (dense, Switch())}
        bwd_p = {"portable": (sparse, Switch(off=True)), "flash_attn": (sparse, Switch()),
                 **{n: (sparse, Switch(bwd=BWD[n])) for n in bwd_names}, "dense": (dense, Switch())}
        for mode, provs in (("fwd", fwd_p), ("bwd", bwd_p)):
            graphs = {}
            if mode == "bwd":
                for n, (fn, sw) in provs.items():
                    with sw:
                        graphs[n] = fn(q, k, v)
            rounds = {n: [] for n in provs}
            for _ in range(ROUNDS):
                for n, (fn, sw) in provs.items():
                    try:
                        with sw:
                            if mode == "fwd":
                                with torch.no_grad():
                                    ms = do_bench(lambda fn=fn, x=(q, k, v): fn(*x), warmup=25, rep=100,
                                                  return_mode="median")
                            else:
                                o = graphs[n]
                                step = lambda o=o, x=(q, k, v), g=do: torch.autograd.grad(o, x, g,  # noqa: E731
                                                                                           retain_graph=True)
                                ms = do_bench(step, warmup=25, rep=100, return_mode="median")
                    except Exception as e:  # noqa: BLE001
                        ms = float("nan")
                        emit({"time_error": n, "mode": mode, "error": str(e)[:300]})
                    rounds[n].append(ms)
            del graphs
            mult = 2.5 if mode == "bwd" else 1.0
            best = {n: min(x for x in r if x == x) if any(x == x for x in r) else float("nan")
                    for n, r in rounds.items()}
            tf_dense = 4 * 128 * T * T * B * H * mult / best["dense"] * 1e-9
            for n in provs:
                fl = 4 * 128 * (T * T * B * H if n == "dense" else nnz * BS * BS) * mult
                tf = fl / best[n] * 1e-9
                rec = {"time": n, "mode": mode, "B": B, "T": T, "H": H, "density": density, "ms": best[n],
                       "ms_rounds": rounds[n], "tflops": tf, "rate_vs_dense": tf / tf_dense,
                       "vs_portable": best["portable"] / best[n], "checks_ok": n not in bad}
                emit(rec)
                table.append(rec)
        q = k = v = do = None
        torch.cuda.empty_cache()
    print("\nshape                 mode provider             ms     TFLOP/s  rate/dense  x portable  ok")
    for r in table:
        print(f"B{r['B']} T{r['T']} d{r['density']:<5} {r['mode']} {r['time']:20s} {r['ms']:7.3f} {r['tflops']:8.1f} "
              f"{r['rate_vs_dense']:9.3f} {r['vs_portable']:9.3f}  {'ok' if r['checks_ok'] else 'FAIL'}")
    print("checks failed:", sorted(bad) or "none")


if __name__ == "__main__":
    sys.exit(main())
