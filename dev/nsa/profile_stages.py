"""Where the time of a whole `ioaware.nsa` call goes, stage by stage, on the device GPU (bf16, D=128, Hkv=4).

Idea: the 2026-12-03 H200 run (benchmarks/results/nsa-h200-2026-12-03.json) has the selected branch 6.3x faster in
FSA order than NSA order at G=1, yet whole NSA at T=64k is 0.58x *dense* flash_attn there (14.7 vs 8.6 ms fwd) and
1.87x at G=16 (bar: 6x). The selected branch is 3.6 ms of the 14.7, so the rest (compression, compressed attention,
block scores, top-k, window, gates) must be found. Each stage is timed alone with CUDA events (median of 10), forward
and forward+backward, and written as JSON.

    python dev/nsa/profile_stages.py --out stages.json [--seqlens 65536] [--groups 1 4 16]
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from ioaware.kernels.attention.flash import flash_attn
from ioaware.kernels.attention.sparse import compressed as cmp
from ioaware.kernels.attention.sparse import kernel as slc
from ioaware.kernels.attention.sparse import nsa
from ioaware.kernels.attention.sparse.reference import compress_kv, top_blocks


def timed(fn, reps: int = 10) -> float:
    fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        ts.append(a.elapsed_time(b))
    return statistics.median(ts)


def stages(T: int, G: int, Hkv: int = 4, D: int = 128, dtype=torch.bfloat16) -> dict:
    torch.manual_seed(0)
    Hq = Hkv * G
    dev = "cuda"
    q = torch.randn(1, T, Hq, D, device=dev, dtype=dtype)
    k = torch.randn(1, T, Hkv, D, device=dev, dtype=dtype)
    v = torch.randn(1, T, Hkv, D, device=dev, dtype=dtype)
    gates = [torch.rand(1, T, Hq, device=dev, dtype=dtype) for _ in range(3)]
    scale = D ** -0.5
    bs, st, ss, n, w = 64, 16, 64, 16, 512
    k_cmp, v_cmp = compress_kv(k, v, bs, st, None)
    k_cmp, v_cmp = k_cmp.to(dtype).contiguous(), v_cmp.to(dtype).contiguous()
    o_cmp, lse_cmp = cmp.nsa_cmp_fwd(q, k_cmp, v_cmp, bs, st, True, scale)
    scores = cmp.nsa_select_scores(q, k_cmp, lse_cmp, block_size=bs, stride=st, select_size=ss, init_blocks=1,
                                   local_blocks=2, causal=True, scale=scale)
    idx = top_blocks(scores, n)
    r = {"T": T, "G": G, "Hq": Hq, "Hkv": Hkv, "D": D, "scores_shape": list(scores.shape),
         "scores_dtype": str(scores.dtype)}
    r["compress_kv"] = timed(lambda: compress_kv(k, v, bs, st, None))
    r["cmp_attn_fwd"] = timed(lambda: cmp.nsa_cmp_fwd(q, k_cmp, v_cmp, bs, st, True, scale))
    r["select_scores"] = timed(lambda: cmp.nsa_select_scores(q, k_cmp, lse_cmp, block_size=bs, stride=st,
                                                             select_size=ss, init_blocks=1, local_blocks=2,
                                                             causal=True, scale=scale))
    r["topk"] = timed(lambda: top_blocks(scores, n))
    for order in ("fsa", "nsa"):
        r[f"selected_fwd_{order}"] = timed(lambda o=order: slc.nsa_slc_fwd(q, k, v, idx, ss, True, scale, o))
    r["window_fwd"] = timed(lambda: flash_attn(q, k, v, causal=True, softmax_scale=scale, window_size=(w - 1, 0)))
    o_slc = slc.nsa_slc_fwd(q, k, v, idx, ss, True, scale, "auto")[0]
    r["gates"] = timed(lambda: (gates[0].unsqueeze(-1) * o_cmp + gates[1].unsqueeze(-1) * o_slc
                                + gates[2].unsqueeze(-1) * o_slc).to(dtype))
    r["nsa_fwd_total"] = timed(lambda: nsa(q, k, v, *gates))
    r["dense_fwd"] = timed(lambda: flash_attn(q, k, v, causal=True))
    qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
    do = torch.randn_like(q)

    def fb():
        o = nsa(qg, kg, vg, *gates)
        o.backward(do)

    def fb_dense():
        o = flash_attn(qg, kg, vg, causal=True)
        o.backward(do)

    def fb_window():
        o = flash_attn(qg, kg, vg, causal=True, window_size=(w - 1, 0))
        o.backward(do)

    r["nsa_fwd_bwd_total"] = timed(fb, reps=5)
    r["dense_fwd_bwd"] = timed(fb_dense, reps=5)
    r["window_fwd_bwd"] = timed(fb_window, reps=5)
    known = sum(r[s] for s in ("compress_kv", "cmp_attn_fwd", "select_scores", "topk", "window_fwd", "gates"))
    r["fwd_unexplained"] = r["nsa_fwd_total"] - known - min(r["selected_fwd_fsa"], r["selected_fwd_nsa"])
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--seqlens", type=int, nargs="+", default=[65536])
    ap.add_argument("--groups", type=int, nargs="+", default=[1, 4, 16])
    a = ap.parse_args()
    rows = []
    for T in a.seqlens:
        for G in a.groups:
            r = stages(T, G)
            rows.append(r)
            print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()}), flush=True)
            torch.cuda.empty_cache()
    info = {"card": torch.cuda.get_device_name(), "torch": torch.__version__}
    import triton

    info["triton"] = triton.__version__
    with open(a.out, "w") as f:
        json.dump({"machine": info, "unit": "ms, median of CUDA-event timings", "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
