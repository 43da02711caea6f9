"""`ioaware bench gemm`: decode-phase linear layers — GEMV, flat GEMM and torch.matmul, same run — and the
calibration of the heuristic dataflow (FlashDecoding++): per (N, K) shape and M, the fastest path is stored as
`dataflow_<card>.json`, then the dispatcher's own choice is re-timed against the best path.

Shapes: Llama-3-8B's projections (N, K): QKV (6144, 4096), O (4096, 4096), gate+up (28672, 4096), down (4096, 14336);
and SmolLM2-135M's, the model `ioaware generate` runs: QKV (960, 576), O (576, 576), gate+up (3072, 576),
down (576, 1536), output (49152, 576).

Each path is timed as it runs in a CUDA-graphed decode step (`graphed_ms`: host launch cost excluded, weights
read from HBM, not L2), because that is where the dispatcher's choice is used.
"""

from __future__ import annotations

import json
import math

SHAPES = [(6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336),
          (960, 576), (576, 576), (3072, 576), (576, 1536), (49152, 576)]
MS = [1, 2, 4, 8, 16, 32, 64]
GEMV = [{"bn": 16, "bk": 256, "split_k": 1}, {"bn": 32, "bk": 128, "split_k": 1},
        {"bn": 16, "bk": 256, "split_k": 4}, {"bn": 32, "bk": 128, "split_k": 4}]
FLAT = [{"bn": 64, "bk": 128, "split_k": 1, "num_stages": 4}, {"bn": 32, "bk": 256, "split_k": 1, "num_stages": 3},
        {"bn": 128, "bk": 64, "split_k": 1, "num_stages": 4}, {"bn": 64, "bk": 128, "split_k": 4, "num_stages": 4},
        {"bn": 32, "bk": 256, "split_k": 4, "num_stages": 3}, {"bn": 128, "bk": 64, "split_k": 2, "num_stages": 4},
        # for long K (Llama's down projection, K = 14336): more splits or wider N tiles per program
        {"bn": 64, "bk": 128, "split_k": 8, "num_stages": 4}, {"bn": 128, "bk": 128, "split_k": 4, "num_stages": 3},
        {"bn": 32, "bk": 128, "split_k": 4, "num_stages": 5}, {"bn": 64, "bk": 64, "split_k": 4, "num_stages": 6},
        {"bn": 16, "bk": 256, "split_k": 1, "num_stages": 4}, {"bn": 16, "bk": 512, "split_k": 2, "num_stages": 3}]


def run(progress=None) -> dict:
    import torch

    from ..kernels.gemm.flat import interface as flat_iface
    from ..kernels.gemm.flat.interface import flat_linear
    from .common import ceilings, machine_info

    card = flat_iface._card(0)
    rows, table = [], {}
    for si, (N, K) in enumerate(SHAPES):
        w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16)
        ws = [w] + [torch.randn_like(w) for _ in range(max(3, min(63, (100 << 20) // (N * K * 2))))]
        rules = []
        for M in MS:
            x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
            ref = x.float() @ w.float().T
            cands = [("torch", {})] + [("flat", p) for p in FLAT] + ([("gemv", p) for p in GEMV] if M <= 4 else [])
            times = []
            for path, p in cands:
                try:
                    y = flat_linear(x, w, path, **p)
                    err = ((y.float() - ref).norm() / ref.norm()).item()
                    ms = _graphed(flat_linear, x, ws, path, p) if err < 1e-2 else math.nan
                except Exception as e:  # noqa: BLE001 - a config that does not compile is skipped, and said
                    ms, err = math.nan, f"{type(e).__name__}"
                times.append((path, p, ms, err))
            ok = [t for t in times if t[2] == t[2]]
            best = min(ok, key=lambda t: t[2])
            torch_ms = next(t[2] for t in times if t[0] == "torch")
            best_by_path = {pth: min((t for t in ok if t[0] == pth), key=lambda t: t[2]) for pth in {t[0] for t in ok}}
            rules.append({"max_m": M, "path": best[0], "params": best[1]})
            rows.append({"N": N, "K": K, "M": M, "torch_ms": torch_ms, "best_path": best[0], "best_params": best[1],
                         "best_ms": best[2], "weight_GBps_best": N * K * 2 / best[2] / 1e6,
                         "weight_GBps_torch": N * K * 2 / torch_ms / 1e6,
                         "by_path": {k: {"ms": v[2], "params": v[1]} for k, v in best_by_path.items()},
                         "all": [{"path": t[0], "params": t[1], "ms": t[2], "rel_err": t[3]} for t in times]})
        table[f"{N},{K}"] = rules
        if progress:
            progress(si + 1, len(SHAPES))
    # the dispatcher with the new table, re-timed against the best path of the same shape
    path = flat_iface._DATA / f"dataflow_{card}.json"
    path.write_text(json.dumps({"card": card, "shapes": table}, indent=1) + "\n")
    flat_iface.tile_table.cache_clear()
    for r in rows:
        ws = [torch.randn(r["N"], r["K"], device="cuda", dtype=torch.bfloat16)
              for _ in range(max(4, min(64, (100 << 20) // (r["N"] * r["K"] * 2))))]
        x = torch.randn(r["M"], r["K"], device="cuda", dtype=torch.bfloat16)
        r["dispatch_ms"] = _graphed(flat_linear, x, ws, None, {})
        r["dispatch_vs_best"] = r["best_ms"] / r["dispatch_ms"]
        r["best_vs_torch"] = r["torch_ms"] / r["best_ms"]
    return {"machine": machine_info(), "ceilings": ceilings(), "rows": rows, "dataflow_file": str(path),
            "dataflow": table}


def _graphed(flat_linear, x, ws, path, p) -> float:
    """ms per call inside a CUDA graph, one call per weight copy in `ws` so each call reads HBM."""
    from .common import graphed_ms

    return graphed_ms([lambda w=w: flat_linear(x, w, path, **p) for w in ws])


TABLE_COLUMNS = ["N", "K", "M", "torch ms", "best path", "best ms", "GB/s best", "best vs torch", "dispatch/best"]


def table_rows(res: dict) -> list[list]:
    return [[r["N"], r["K"], r["M"], r["torch_ms"], r["best_path"], r["best_ms"], r["weight_GBps_best"],
             f"{r['best_vs_torch']:.2f}x", f"{r['dispatch_vs_best']:.2f}"] for r in res["rows"]]
