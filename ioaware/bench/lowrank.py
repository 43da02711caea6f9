"""`ioaware bench lowrank`: FlashSVD's bars on a Llama-shaped block, fused vs the same factors unfused vs dense.

Block (issue #16): d = 4096, ffn = 11008, 32 heads of 128 (Llama-2-7B), T = 8192, batch 8, bf16, rank ratio
0.25: q/k/v per head at rank 32, o, gate, up and down at rank 1024. One pre-norm block, as the runtime runs it:

    x1 = x + Wo(attention(rope(Q), rope(K), V))    Q, K, V from the norm of x
    y  = x1 + FFN(norm(x1))                        SwiGLU

Providers, on the same random factors (dense: random weights of the full shape):
  dense     full projections (cuBLAS), rotate-half RoPE in PyTorch, ioaware.flash_attn, dense SwiGLU.
  unfused   the factors run by standard kernels: P = x U, then Q, K, V = P V written at full size, RoPE in
            PyTorch, ioaware.flash_attn; the FFN's gate, up and hidden written at (B T, ffn).
  fused     lowrank_attn and lowrank_ffn, both on their automatic schedules: at this shape the attention's
            'slab' (a group of KV heads at a time expanded and rotated once by a Triton pass into slab buffers,
            then flash attention; kernels/lowrank README) and the FFN's 'slab' (R2 = 1024 being several tiles).
  fused (in-kernel attention)  the attention's 'fused' schedule forced (FlashSVD's kernel: Q, K, V rebuilt tile
            by tile on chip, every key tile once per query tile), FFN automatic: the provider that was 'fused'
            in benchmarks/results/lowrank-h200-2026-12-03.json.
  fused (FlashSVD schedule)    the FFN's 'fused' schedule forced, attention automatic, for the record.
Reported per provider: peak activation memory (torch.cuda.max_memory_allocated above what the weights and the
input hold, the output included), median latency, and the attention and FFN halves separately. A provider whose
output strays from the unfused one (relative RMS > 2e-2) is marked and no speedup is printed for it.
Tiles of the kernels are also swept at this shape (`tiles`), and the attention slab's size in KV heads
(`attention_slab`: latency and peak memory): the defaults in kernel.py / interface.py come from these tables.
"""

from __future__ import annotations

import math

BAR_MEMORY = 0.60  # peak activation memory at least 60% below the unfused factors
SHAPE = {"B": 8, "T": 8192, "d": 4096, "F": 11008, "H": 32, "Hkv": 32, "D": 128, "ratio": 0.25}
ATTN_TILES = [{"block_m": 128, "block_n": 64, "num_warps": 8, "num_stages": 2},
              {"block_m": 128, "block_n": 64, "num_warps": 4, "num_stages": 2},
              {"block_m": 128, "block_n": 128, "num_warps": 8, "num_stages": 2},
              {"block_m": 64, "block_n": 64, "num_warps": 4, "num_stages": 2},
              {"block_m": 128, "block_n": 32, "num_warps": 4, "num_stages": 3}]
SLAB_TILES = [{"block_m": 128, "block_f": 128, "block_k": 64, "num_warps": 8, "num_stages": 3},
              {"block_m": 128, "block_f": 64, "block_k": 64, "num_warps": 4, "num_stages": 3},
              {"block_m": 128, "block_f": 128, "block_k": 32, "num_warps": 8, "num_stages": 4},
              {"block_m": 64, "block_f": 128, "block_k": 64, "num_warps": 4, "num_stages": 3},
              {"block_m": 128, "block_f": 256, "block_k": 64, "num_warps": 8, "num_stages": 3}]
SLAB_ROWS = [2048, 4096, 8192, 16384]
ATTN_SLAB_HEADS = [1, 2, 4, 8, 16, 32]  # KV heads per slab of the attention's slab schedule (auto: 4 here)


def _ranks(s: dict) -> dict:
    from ..runtime.compress.svd import rank_for

    d, F, D = s["d"], s["F"], s["D"]
    return {"head": rank_for(s["ratio"], D, d), "o": rank_for(s["ratio"], d, s["H"] * D),
            "ffn": rank_for(s["ratio"], F, d)}


def _weights(s: dict, r: dict, device: str = "cuda"):
    import torch

    g = torch.Generator(device=device).manual_seed(0)
    d, F, H, Hkv, D = s["d"], s["F"], s["H"], s["Hkv"], s["D"]

    def w(*shape):  # scaled so every product keeps unit-order activations
        return (torch.randn(*shape, device=device, generator=g) * shape[-2] ** -0.5).to(torch.bfloat16)

    rh, ro, rf = r["head"], r["o"], r["ffn"]
    dense = {"wqkv": w(d, (H + 2 * Hkv) * D), "wo": w(H * D, d), "w13": w(d, 2 * F), "w2": w(F, d)}
    lr = {"uqkv": w(d, (H + 2 * Hkv) * rh), "vq": w(H, rh, D), "vk": w(Hkv, rh, D), "vv": w(Hkv, rh, D),
          "uo": w(H * D, ro), "vo": w(ro, d), "u13": w(d, 2 * rf), "vg": w(rf, F), "vu": w(rf, F), "u2": w(F, rf),
          "v2": w(rf, d)}
    return dense, lr


def _providers(s: dict, r: dict, dense: dict, lr: dict, device: str = "cuda"):
    """{name: (attention half, ffn half)}: each half maps x (B, T, d) -> its residual branch's output. (device:
    'cpu' lets a test check at a tiny shape, under the Triton interpreter, that the providers agree.)"""
    import torch
    import torch.nn.functional as F

    from ..kernels import flash_attn
    from ..kernels.lowrank import lowrank_attn, lowrank_ffn

    B, T, d, H, Hkv, D = s["B"], s["T"], s["d"], s["H"], s["Hkv"], s["D"]
    inv = 1.0 / (10000.0 ** (torch.arange(0, D, 2, device=device, dtype=torch.float64) / D))
    ang = torch.outer(torch.arange(T, device=device, dtype=torch.float64), inv)
    cos_h, sin_h = ang.cos().float(), ang.sin().float()  # (T, D/2): the fused kernel's tables
    cos = torch.cat([cos_h, cos_h], -1).to(torch.bfloat16)[None, :, None, :]  # (1, T, 1, D) for PyTorch
    sin = torch.cat([sin_h, sin_h], -1).to(torch.bfloat16)[None, :, None, :]
    norm_w = torch.ones(d, device=device, dtype=torch.bfloat16)
    rh = r["head"]

    def norm(x):
        return F.rms_norm(x, (d,), norm_w, 1e-5)

    def rope(x):  # Hugging Face's rotate-half in the activations' dtype
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos + torch.cat([-x2, x1], dim=-1) * sin

    def dense_attn(x):
        q, k, v = (norm(x) @ dense["wqkv"]).split([H * D, Hkv * D, Hkv * D], dim=-1)
        o = flash_attn(rope(q.view(B, T, H, D)), rope(k.view(B, T, Hkv, D)), v.view(B, T, Hkv, D), causal=True)
        return o.reshape(B, T, H * D) @ dense["wo"]

    def dense_ffn(x):
        g, u = (norm(x) @ dense["w13"]).split(s["F"], dim=-1)
        return (F.silu(g) * u) @ dense["w2"]

    def split_p(x):
        pq, pk, pv = (norm(x) @ lr["uqkv"]).split([H * rh, Hkv * rh, Hkv * rh], dim=-1)
        return pq.view(B, T, H, rh), pk.view(B, T, Hkv, rh), pv.view(B, T, Hkv, rh)

    def unfused_attn(x):
        pq, pk, pv = split_p(x)
        q = torch.einsum("bthr,hrd->bthd", pq, lr["vq"])  # full-size Q, K, V in HBM
        k = torch.einsum("bthr,hrd->bthd", pk, lr["vk"])
        v = torch.einsum("bthr,hrd->bthd", pv, lr["vv"])
        o = flash_attn(rope(q), rope(k), v, causal=True)
        return (o.reshape(B, T, H * D) @ lr["uo"]) @ lr["vo"]

    def unfused_ffn(x):
        p = norm(x) @ lr["u13"]
        rf = lr["vg"].shape[0]
        g, u = p[..., :rf] @ lr["vg"], p[..., rf:] @ lr["vu"]  # (B, T, ffn) each
        return ((F.silu(g) * u) @ lr["u2"]) @ lr["v2"]

    def attn(schedule):
        def fused_attn(x):
            pq, pk, pv = split_p(x)
            o = lowrank_attn(pq, lr["vq"], pk, lr["vk"], pv, lr["vv"], causal=True, rope=(cos_h, sin_h),
                             schedule=schedule)
            return (o.reshape(B, T, H * D) @ lr["uo"]) @ lr["vo"]
        return fused_attn

    def ffn(schedule):
        return lambda x: lowrank_ffn(norm(x), lr["u13"], lr["vg"], lr["vu"], lr["u2"], lr["v2"], schedule=schedule)

    return {"dense": (dense_attn, dense_ffn), "unfused": (unfused_attn, unfused_ffn),
            "fused": (attn(None), ffn(None)), "fused (in-kernel attention)": (attn("fused"), ffn(None)),
            "fused (FlashSVD schedule)": (attn(None), ffn("fused"))}


def _block(attn, ffn):
    def run(x):
        x1 = x + attn(x)
        return x1 + ffn(x1)
    return run


def _peak(fn, x) -> tuple[float, object]:
    """Bytes allocated at the peak of one call above what was allocated before it (weights, input)."""
    import torch

    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    y = fn(x)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base, y


def _rel(a, b) -> float:
    a, b = a.float(), b.float()
    return ((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt()).item()


def run(progress=None, shape: dict | None = None) -> dict:
    import torch

    from ..kernels.lowrank.cost import (
        lowrank_attn_cost,
        lowrank_attn_slab_cost,
        lowrank_attn_unfused_cost,
        lowrank_swiglu_cost,
    )
    from .common import ceilings, machine_info, time_ms

    s = {**SHAPE, **(shape or {})}
    r = _ranks(s)
    dense, lr = _weights(s, r)
    provs = _providers(s, r, dense, lr)
    x = torch.randn(s["B"], s["T"], s["d"], device="cuda", dtype=torch.bfloat16)
    steps = len(provs) * 3 + len(ATTN_TILES) + len(SLAB_TILES) + len(SLAB_ROWS) + len(ATTN_SLAB_HEADS)
    done = 0

    def tick():
        nonlocal done
        done += 1
        if progress:
            progress(done, steps)

    rows, outs = [], {}
    with torch.inference_mode():
        for name, (attn, ffn) in provs.items():
            row = {"provider": name}
            for part, fn in (("block", _block(attn, ffn)), ("attention", attn), ("ffn", ffn)):
                peak, y = _peak(fn, x)
                outs[(name, part)] = y
                row[f"{part}_peak_bytes"] = peak
                row[f"{part}_ms"] = time_ms(lambda fn=fn: fn(x))
                del y
                tick()
            rows.append(row)
        for row in rows:
            if row["provider"] == "dense":
                row["rel_err_vs_unfused"] = None
                continue
            row["rel_err_vs_unfused"] = max(_rel(outs[(row["provider"], p)], outs[("unfused", p)])
                                            for p in ("attention", "ffn"))
            row["ok"] = row["rel_err_vs_unfused"] < 2e-2
        outs.clear()
        un = next(r_ for r_ in rows if r_["provider"] == "unfused")
        de = next(r_ for r_ in rows if r_["provider"] == "dense")
        for row in rows:
            for part in ("block", "attention", "ffn"):
                row[f"{part}_peak_vs_unfused"] = 1 - row[f"{part}_peak_bytes"] / un[f"{part}_peak_bytes"]
                row[f"{part}_latency_vs_unfused"] = row[f"{part}_ms"] / un[f"{part}_ms"]
                row[f"{part}_latency_vs_dense"] = row[f"{part}_ms"] / de[f"{part}_ms"]
        tiles = _sweep_tiles(s, r, lr, x, tick)
    fused = next(r_ for r_ in rows if r_["provider"] == "fused")
    bars = {"peak_reduction_vs_unfused": fused["block_peak_vs_unfused"], "peak_bar": BAR_MEMORY,
            "latency_vs_unfused": fused["block_latency_vs_unfused"],
            "latency_vs_dense": fused["block_latency_vs_dense"],
            "met": bool(fused.get("ok")) and fused["block_peak_vs_unfused"] >= BAR_MEMORY
            and fused["block_latency_vs_unfused"] <= 1.0 and fused["block_latency_vs_dense"] <= 1.0}
    M, rf = s["B"] * s["T"], r["ffn"]
    ck = dict(B=s["B"], Tq=s["T"], Tk=s["T"], Hq=s["H"], D=s["D"], Rq=r["head"], Rk=r["head"], Rv=r["head"],
              Hkv=s["Hkv"])
    model = {"attn_fused": lowrank_attn_cost(**ck).as_dict(), "attn_unfused": lowrank_attn_unfused_cost(**ck).as_dict(),
             "attn_slab": lowrank_attn_slab_cost(**ck).as_dict(),
             **{f"swiglu_{k}": lowrank_swiglu_cost(M, s["F"], rf, rf, rf, k).as_dict()
                for k in ("fused", "slab", "unfused")}}
    return {"machine": machine_info(), "ceilings": ceilings(), "shape": s, "ranks": r, "rows": rows, "bars": bars,
            "tiles": tiles, "iomodel": model}


def _sweep_tiles(s, r, lr, x, tick) -> dict:
    """Median ms of each kernel at the bench shape for a few tile choices, and of the slab schedule per slab size."""
    import torch
    import torch.nn.functional as F

    from ..kernels.lowrank import kernel as K
    from .common import time_ms

    B, T, H, Hkv, rh = s["B"], s["T"], s["H"], s["Hkv"], r["head"]
    d = s["d"]
    xn = F.rms_norm(x, (d,), None, 1e-5)
    pq, pk, pv = (xn @ lr["uqkv"]).split([H * rh, Hkv * rh, Hkv * rh], dim=-1)
    pq, pk, pv = pq.view(B, T, H, rh), pk.view(B, T, Hkv, rh), pv.view(B, T, Hkv, rh)
    D = s["D"]
    inv = 1.0 / (10000.0 ** (torch.arange(0, D, 2, device="cuda", dtype=torch.float64) / D))
    ang = torch.outer(torch.arange(T, device="cuda", dtype=torch.float64), inv)
    rope = (ang.cos().half(), ang.sin().half())
    out = {"attention": [], "slab_kernel": [], "slab_rows": [], "attention_slab": []}
    from ..kernels.lowrank import lowrank_attn

    for n in ATTN_SLAB_HEADS:  # the slab schedule: latency and peak memory against the slab's size
        def slab(n=n):
            return lowrank_attn(pq, lr["vq"], pk, lr["vk"], pv, lr["vv"], causal=True, rope=rope, schedule="slab",
                                slab_heads=n)
        try:
            peak, y = _peak(lambda _, slab=slab: slab(), None)
            del y
            ms = time_ms(slab)
        except Exception as e:  # noqa: BLE001 - a size that does not fit is reported, not fatal
            peak, ms = None, f"{type(e).__name__}"
        out["attention_slab"].append({"slab_heads": n, "ms": ms, "peak_bytes": peak})
        tick()
    for t in ATTN_TILES:
        try:
            ms = time_ms(lambda t=t: K.lowrank_attn_fwd(pq, lr["vq"], pk, lr["vk"], pv, lr["vv"], True,
                                                        D ** -0.5, rope, None, **t))
        except Exception as e:  # noqa: BLE001 - a tile that does not fit is reported, not fatal
            ms = f"{type(e).__name__}"
        out["attention"].append({**t, "ms": ms})
        tick()
    p = xn.view(-1, d) @ lr["u13"]
    rf = r["ffn"]
    pg, pu = p[:, :rf], p[:, rf:]
    rows = min(8192, p.shape[0])  # the kernel on one slab of 8192 rows
    for t in SLAB_TILES:
        try:
            ms = time_ms(lambda t=t: K.swiglu_hidden_fwd(pg[:rows], pu[:rows], lr["vg"], lr["vu"], **t))
        except Exception as e:  # noqa: BLE001
            ms = f"{type(e).__name__}"
        out["slab_kernel"].append({**t, "rows": rows, "ms": ms,
                                   "TFLOPs": 2 * 2 * rf * s["F"] * rows / ms / 1e9 if isinstance(ms, float) else None})
        tick()
    gemm = time_ms(lambda: (pg[:rows] @ lr["vg"], pu[:rows] @ lr["vu"]))
    out["slab_kernel_cublas_two_gemms_ms"] = gemm
    for n in SLAB_ROWS:
        torch.cuda.reset_peak_memory_stats()
        ms = time_ms(lambda n=n: K.lowrank_swiglu_fwd(pg, pu, lr["vg"], lr["vu"], lr["u2"], "slab", n))
        out["slab_rows"].append({"slab_rows": n, "ms": ms, "h_bytes": n * s["F"] * 2})
        tick()
    return out


TABLE_COLUMNS = ["provider", "block ms", "vs unfused", "vs dense", "block peak GiB", "peak vs unfused",
                 "attn ms", "attn GiB", "ffn ms", "ffn GiB", "rel err"]


def table_rows(res: dict) -> list[list]:
    out = []
    for r in res["rows"]:
        ok = r.get("ok", True)
        out.append([r["provider"] + ("" if ok else " (WRONG OUTPUT)"), r["block_ms"],
                    f"{r['block_latency_vs_unfused']:.2f}x" if ok else "-",
                    f"{r['block_latency_vs_dense']:.2f}x" if ok else "-",
                    r["block_peak_bytes"] / 2**30, f"{-r['block_peak_vs_unfused']:+.0%}",
                    r["attention_ms"], r["attention_peak_bytes"] / 2**30, r["ffn_ms"], r["ffn_peak_bytes"] / 2**30,
                    "-" if r["rel_err_vs_unfused"] is None or math.isnan(r["rel_err_vs_unfused"])
                    else f"{r['rel_err_vs_unfused']:.1e}"])
    return out
