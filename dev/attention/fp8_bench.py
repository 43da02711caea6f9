"""Time the FP8 attention forward (ioaware/kernels/attention/flash/fp8.py) against our bf16 forwards and cuDNN.

    python3 dev/attention/fp8_bench.py [--seqlens 1024,4096,16384] [--head-dim 128] [--tiles] [--json F]

Setting: bf16 inputs, B*T = 16k tokens, H = 2048 / D heads (the attention table's), causal and not. Providers, in one
run, round-robin, best of 3 rounds of triton.testing.do_bench medians:
- fp8: flash_attn_fp8 on inputs quantised beforehand (the bar's case: e4m3 Q/K/V with their scales in HBM);
- fp8+quant: quantize_fp8 (bf16 -> e4m3, PyTorch ops) and the kernel, per call;
- ours-bf16-triton (IOAWARE_GLUON=0) and ours-bf16-auto (IOAWARE_GLUON=auto: the Gluon forward at D 128);
- sdpa-cudnn.
The bar (#28): fp8 >= 1.5x our best bf16 forward at D 128, T >= 4k. Accuracy, per shape on one batch element and two
heads: relative RMS error against fp64 of fp8, fp8 with the Hadamard rotation, and bf16 (our kernel), on Gaussian
inputs and on inputs with an outlier channel (x30 in q and k). --tiles first times each candidate tile
(fp8._FP8_TILES) at T 4k and 16k and uses the fastest per causal setting. JSON with the card, driver and versions.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import torch

from ioaware.bench.attention import _sdpa
from ioaware.bench.common import machine_info, time_ms
from ioaware.files import write_json_atomic
from ioaware.kernels.attention.flash import fp8
from ioaware.kernels.attention.flash.reference import attention_ref

ROUNDS = 3


def _inputs(B, T, H, D, seed, outlier=0.0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    q, k, v = (torch.randn(B, T, H, D, device="cuda", generator=g) for _ in range(3))
    if outlier:
        q[..., 3] *= outlier
        k[..., 3] *= outlier
    return q.bfloat16(), k.bfloat16(), v.bfloat16()


def _rel(x, ref):
    return ((x.double() - ref).norm() / ref.norm()).item()


def accuracy(T: int, D: int, causal: bool) -> dict:
    import ioaware

    out = {}
    for name, outlier in (("gaussian", 0.0), ("outlier_x30", 30.0)):
        q, k, v = _inputs(1, T, 2, D, seed=T + 7, outlier=outlier)
        gold = attention_ref(q.double(), k.double(), v.double(), causal, D ** -0.5)[0]
        os.environ["IOAWARE_GLUON"] = "0"
        out[name] = {
            "fp8": _rel(fp8.flash_attn_fp8(fp8.quantize_fp8(q, k, v), causal)[0], gold),
            "fp8_hadamard": _rel(fp8.flash_attn_fp8(fp8.quantize_fp8(q, k, v, hadamard=True), causal)[0], gold),
            "bf16_ours": _rel(ioaware.flash_attn(q, k, v, causal=causal), gold),
        }
    return out


def tile_sweep(D: int) -> dict:
    best, rows = {}, []
    for causal in (False, True):
        for bm, bn, w, s in fp8._FP8_TILES:
            if D > 128 and bm * bn > 64 * 64:
                continue
            fp8.FP8_TILE = {"BM": bm, "BN": bn, "num_warps": w, "num_stages": s}
            total = 0.0
            for T in (4096, 16384):
                B, H = max(1, 16384 // T), 2048 // D
                x = fp8.quantize_fp8(*_inputs(B, T, H, D, seed=T))
                try:
                    ms = time_ms(lambda x=x, c=causal: fp8.flash_attn_fp8(x, c))
                except Exception as e:  # noqa: BLE001  (a tile that does not compile is a row)
                    rows.append({"tile": [bm, bn, w, s], "causal": causal, "error": str(e).splitlines()[0][:200]})
                    total = math.inf
                    break
                rows.append({"tile": [bm, bn, w, s], "causal": causal, "T": T, "ms": ms})
                total += ms
            print(f"tile {bm}x{bn} w{w} s{s} causal={int(causal)}: {total:.3f} ms (T 4k + 16k)", flush=True)
            if total < best.get(causal, (math.inf,))[0]:
                best[causal] = (total, {"BM": bm, "BN": bn, "num_warps": w, "num_stages": s})
    return {"rows": rows, "best": {str(c): b[1] for c, b in best.items()}}


def bench(seqlens: list[int], D: int, tiles: dict | None) -> list[dict]:
    import ioaware

    def bf16(mode):
        def run(q, k, v, x, causal):
            os.environ["IOAWARE_GLUON"] = mode
            return ioaware.flash_attn(q, k, v, causal=causal)
        return run

    cudnn = _sdpa("sdpa-cudnn")
    provs = {
        "fp8": lambda q, k, v, x, causal: fp8.flash_attn_fp8(x, causal),
        "fp8+quant": lambda q, k, v, x, causal: fp8.flash_attn_fp8(fp8.quantize_fp8(q, k, v), causal),
        "ours-bf16-triton": bf16("0"),
        "ours-bf16-auto": bf16("auto"),
        "sdpa-cudnn": lambda q, k, v, x, causal: cudnn(q, k, v, causal),
    }
    rows = []
    for T in seqlens:
        for causal in (False, True):
            if tiles and str(causal) in tiles:
                fp8.FP8_TILE = tiles[str(causal)]
            B, H = max(1, 16384 // T), 2048 // D
            flops = 4 * B * H * T * T * D * (0.5 if causal else 1.0)
            q, k, v = _inputs(B, T, H, D, seed=T + 1)
            x = fp8.quantize_fp8(q, k, v)
            best: dict[str, float] = {}
            errors: dict[str, str] = {}
            for _ in range(ROUNDS):
                for name, fn in provs.items():
                    if name in errors:
                        continue
                    try:
                        ms = time_ms(lambda fn=fn, a=(q, k, v, x, causal): fn(*a))
                    except Exception as e:  # noqa: BLE001
                        errors[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
                        continue
                    best[name] = min(best.get(name, math.inf), ms)
            acc = accuracy(min(T, 8192), D, causal)
            ours = min(best.get("ours-bf16-triton", math.inf), best.get("ours-bf16-auto", math.inf))
            row = {"B": B, "T": T, "H": H, "D": D, "causal": causal, "ms": best, "errors": errors,
                   "tflops": {n: flops / ms / 1e9 for n, ms in best.items()}, "accuracy_rel_rms": acc,
                   "fp8_tile": dict(fp8.FP8_TILE)}
            if "fp8" in best:
                row["fp8_vs_ours_best_bf16"] = ours / best["fp8"]
                row["fp8_vs_cudnn"] = best.get("sdpa-cudnn", math.nan) / best["fp8"]
            rows.append(row)
            print(f"T{T:6d} causal={int(causal)} " + " ".join(f"{n} {row['tflops'][n]:.0f}" for n in best)
                  + f" TFLOP/s | fp8/ours-bf16 {row.get('fp8_vs_ours_best_bf16', math.nan):.2f}x"
                  + f" | err fp8 {acc['gaussian']['fp8']:.4f} bf16 {acc['gaussian']['bf16_ours']:.4f}"
                  + f" outlier fp8 {acc['outlier_x30']['fp8']:.4f} hadamard {acc['outlier_x30']['fp8_hadamard']:.4f}"
                  + (f" errors {errors}" if errors else ""), flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seqlens", default="1024,4096,16384")
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--tiles", action="store_true", help="sweep fp8._FP8_TILES first and use the fastest")
    ap.add_argument("--json", default=None, help="results file; default $OUT/attention-fp8.json when $OUT is set")
    a = ap.parse_args(argv)
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9):
        print("fp8_bench: needs a CUDA GPU with e4m3 tensor cores (sm_89+)", file=sys.stderr)
        return 2
    sweep = tile_sweep(a.head_dim) if a.tiles else None
    rows = bench([int(t) for t in a.seqlens.split(",")], a.head_dim, sweep["best"] if sweep else None)
    result = {"machine": machine_info(), "setting": f"B*T=16384 tokens, H*D=2048, D={a.head_dim}, bf16 inputs, forward",
              "timing": f"triton.testing.do_bench median; providers round-robin, best of {ROUNDS} rounds",
              "flops_convention": "fwd 4*B*H*T^2*D (halved causal)", "tile_sweep": sweep, "rows": rows}
    out = a.json or (os.path.join(os.environ["OUT"], "attention-fp8.json") if os.environ.get("OUT") else None)
    if out:
        print(f"wrote {write_json_atomic(out, result)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
