"""Time the Gluon forward (ioaware/kernels/attention/flash/gluon_fwd.py) against ours-triton and SDPA on one GPU.

    python3 dev/attention/gluon_bench.py --smoke --variant fa3_s2        # the bisection step: small checks, in order
    python3 dev/attention/gluon_bench.py --variant fa3_s2[,coop,...] [--seqlens 1024,4096,16384] [--json F]

--smoke runs a ladder of configs from the smallest (one 128-key tile) up (ragged T, causal, T 4096, D 64), each
checked against fp32 with the 2x-of-PyTorch rule; it stops at the first failure with the full error (compiler
diagnostics included) and exits 1. A hang shows as the last "running" line before the caller's timeout.
The timing: D = 128, bf16, B*T = 16k tokens, H = 16 (the attention table's setting), causal and not; providers
gluon:<variant>, ours-triton (ioaware.flash_attn as dispatched without IOAWARE_GLUON: kernel.py / hopper.py),
sdpa-cudnn, sdpa-flash; round-robin, best of 3 rounds of triton.testing.do_bench medians. Each shape's outputs are
first checked on one batch element and two heads; a failed check gets no speedup. JSON (card, driver, torch and
triton versions) to --json, default $OUT/attention-gluon.json when $OUT is set.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import threading
import time
import traceback

import torch

from ioaware.bench.attention import _sdpa
from ioaware.bench.common import machine_info, time_ms
from ioaware.files import write_json_atomic
from ioaware.kernels.attention.flash.reference import attention_ref

SMOKE = [  # B, T, Hq, Hkv, D, causal: smallest first
    (1, 128, 1, 1, 128, False), (1, 1000, 2, 2, 128, False), (1, 1000, 2, 2, 128, True), (2, 4096, 2, 1, 128, True),
    (2, 4096, 2, 2, 128, False), (2, 1000, 2, 2, 64, True)]
ROUNDS = 3
HANG_S = 60.0  # one smoke config, its compile included (offline compiles take 2-4 s)


def _hang(what: str) -> None:
    print(f"  HANG: {what} did not finish in {HANG_S:.0f} s (compile included); killing the process", flush=True)
    os._exit(3)


def _inputs(B, T, Hq, Hkv, D, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return [torch.randn(B, T, h, D, device="cuda", generator=g).to(torch.bfloat16) for h in (Hq, Hkv, Hkv)]


def check(fn, q, k, v, causal) -> dict:
    """Max error of fn and of plain PyTorch bf16 against fp32; ok by the tests' rule (2x PyTorch + one rounding)."""
    ref, lse_ref = attention_ref(q.float(), k.float(), v.float(), causal)
    pt, _ = attention_ref(q, k, v, causal, upcast=False)
    o, lse = fn(q, k, v, causal)
    e = (o.float() - ref).abs().max().item()
    e_pt = (pt.float() - ref).abs().max().item()
    atol = 2 * (ref.bfloat16() + 0.3 - 0.3 - ref.bfloat16()).abs().max().item()
    e_lse = (lse - lse_ref).abs().max().item() if lse is not None else 0.0
    ok = bool(math.isfinite(e) and e <= 2 * e_pt + atol and e_lse < 1e-3)
    return {"err": e, "err_pytorch_bf16": e_pt, "err_lse": e_lse, "ok": ok}


def _gluon(variant: str):
    from ioaware.kernels.attention.flash import gluon_fwd

    scale = lambda q: 1 / math.sqrt(q.shape[-1])  # noqa: E731
    return lambda q, k, v, causal: gluon_fwd.gluon_flash_attn_fwd(q, k, v, causal, scale(q), variant=variant)


def smoke(variant: str) -> int:
    from ioaware.kernels.attention.flash.gluon_gate import gluon_refusal

    print(f"variant {variant}: smoke ladder", flush=True)
    for cfg in SMOKE:
        B, T, Hq, Hkv, D, causal = cfg
        q, k, v = _inputs(B, T, Hq, Hkv, D, seed=T + D)
        reason = gluon_refusal(q, k, v)
        if reason is not None:
            print(f"  refused: {reason}", flush=True)
            return 1
        print(f"  running B{B} T{T} H{Hq}/{Hkv} D{D} causal={causal} ...", flush=True)
        t0 = time.perf_counter()
        # a schedule bug shows as a kernel that never finishes: end the process (and its CUDA context) after
        # HANG_S seconds on one config instead of spending the caller's whole timeout
        dog = threading.Timer(HANG_S, _hang, args=(f"B{B} T{T} D{D} causal={causal}",))
        dog.start()
        try:
            r = check(_gluon(variant), q, k, v, causal)
            torch.cuda.synchronize()
        except Exception:  # noqa: BLE001  (the point is to print whatever the compiler or the launch raised)
            print(f"  FAILED B{B} T{T} D{D} causal={causal}:\n{traceback.format_exc()}", flush=True)
            return 1
        finally:
            dog.cancel()
        print(f"  {'ok' if r['ok'] else 'WRONG'} in {time.perf_counter() - t0:.1f} s: max err {r['err']:.3g} "
              f"(PyTorch bf16 {r['err_pytorch_bf16']:.3g}), lse err {r['err_lse']:.3g}", flush=True)
        if not r["ok"]:
            return 1
    print(f"variant {variant}: smoke passed", flush=True)
    return 0


def _providers(variants: list[str]) -> dict:
    import ioaware

    def ours_triton(q, k, v, causal):
        return ioaware.flash_attn(q, k, v, causal=causal, return_lse=True)

    def sdpa(name):
        run = _sdpa(name)
        return lambda q, k, v, causal: (run(q, k, v, causal), None)

    provs = {f"gluon:{v}": _gluon(v) for v in variants}
    provs.update({"ours-triton": ours_triton, "sdpa-cudnn": sdpa("sdpa-cudnn"), "sdpa-flash": sdpa("sdpa-flash")})
    return provs


def bench(variants: list[str], seqlens: list[int], D: int = 128, tokens: int = 16384, hidden: int = 2048) -> dict:
    os.environ.pop("IOAWARE_GLUON", None)  # ours-triton is the dispatch without the opt-in
    provs = _providers(variants)
    rows = []
    for T in seqlens:
        for causal in (False, True):
            B, H = max(1, tokens // T), hidden // D
            flops = 4 * B * H * T * T * D * (0.5 if causal else 1.0)
            q1, k1, v1 = _inputs(1, T, 2, 2, D, seed=T)
            q, k, v = _inputs(B, T, H, H, D, seed=T + 1)
            checks, best = {}, {}
            for name, fn in provs.items():
                try:
                    checks[name] = check(fn, q1, k1, v1, causal)
                except Exception as e:  # noqa: BLE001  (one provider's failure is a row, not the end of the run)
                    checks[name] = {"ok": False, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
            for _ in range(ROUNDS):  # round-robin, so clock drift hits every provider alike
                for name, fn in provs.items():
                    if "error" in checks[name]:
                        continue
                    ms = time_ms(lambda fn=fn, args=(q, k, v, causal): fn(*args))
                    best[name] = min(best.get(name, math.inf), ms)
            cudnn = best.get("sdpa-cudnn")
            for name in provs:
                ms = best.get(name)
                row = {"B": B, "T": T, "H": H, "D": D, "causal": causal, "dtype": "bfloat16", "provider": name,
                       "ms": ms, "tflops": flops / ms / 1e9 if ms else None, "check": checks[name]}
                ok = checks[name].get("ok", False)
                row["vs_cudnn"] = cudnn / ms if (ms and cudnn and ok) else None
                rows.append(row)
                tf = f"{row['tflops']:7.1f}" if ms else "      -"
                vs = f"{row['vs_cudnn']:.2f}x" if row["vs_cudnn"] else "-"
                print(f"T{T:6d} B{B:3d} causal={int(causal)} {name:16s} "
                      f"{(f'{ms:.3f} ms' if ms else checks[name].get('error', 'failed')):>12s} {tf} TFLOP/s "
                      f"vs cuDNN {vs:>6s} check {'ok' if ok else 'FAILED'}", flush=True)
    return {"machine": machine_info(), "setting": f"B*T={tokens} tokens, H*D={hidden}, D={D}, bf16, forward",
            "timing": f"triton.testing.do_bench median; providers round-robin, best of {ROUNDS} rounds",
            "flops_convention": "fwd 4*B*H*T^2*D (halved causal)", "variants": variants, "rows": rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", default="fa3_s2", help="gluon_fwd.VARIANTS name(s), comma-separated, or 'all'")
    ap.add_argument("--smoke", action="store_true", help="the small checks only, smallest first; exit 1 on failure")
    ap.add_argument("--seqlens", default="1024,4096,16384")
    ap.add_argument("--head-dim", type=int, default=128, help="D (H = 2048 / D heads, B*T = 16384 tokens)")
    ap.add_argument("--json", default=None, help="results file ('-' = stdout); default $OUT/attention-gluon.json")
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("gluon_bench: needs a CUDA GPU", file=sys.stderr)
        return 2
    from ioaware.kernels.attention.flash.gluon_gate import triton_refusal

    if (reason := triton_refusal()) is not None:
        print(reason, file=sys.stderr)
        return 2
    from ioaware.kernels.attention.flash.gluon_fwd import VARIANTS

    variants = list(VARIANTS) if a.variant == "all" else a.variant.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        print(f"gluon_bench: unknown variant(s) {unknown}; known: {list(VARIANTS)}", file=sys.stderr)
        return 2
    if a.smoke:
        return max(smoke(v) for v in variants)
    result = bench(variants, [int(t) for t in a.seqlens.split(",")], D=a.head_dim)
    out = a.json or (os.path.join(os.environ["OUT"], "attention-gluon.json") if os.environ.get("OUT") else None)
    if out == "-":
        import json

        print(json.dumps(result, indent=1, default=str))
    elif out:
        print(f"wrote {write_json_atomic(out, result)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
