"""Tensor-parallel decode scaling and FastAttention's tiling-AllReduce overlap, N processes vs one, one run.

1. Decode: a Llama-shaped model with random weights (default on CUDA: Llama-3-8B's shape, bf16, NCCL; on CPU a
   small shape, fp32, gloo, one thread per process), sharded by `ioaware.distributed.shard_transformer`; ms per
   decode step after a prefill; speed-up = t(1) / t(N), t(1) the unsharded model in one process.
2. Tiling-AllReduce: the attention output projection of N ranks (x: rows x H*D/N, W: dim x H*D/N) then the
   all-reduce of its (rows x dim) output, timed four ways on every rank: compute alone, all-reduce alone, compute
   then all-reduce (one tile), and n tiles pipelined (tile i's all-reduce while tile i+1 computes). hidden(n) =
   (compute + all-reduce - tiled(n)) / all-reduce: the share of the all-reduce the pipeline hides. The iomodel's
   tile count (`ioaware.iomodel.tiling.choose_tiles`, with alpha and beta fitted from two all-reduces measured
   here) is reported beside the measured best.

    ioaware bench tp                                   # CUDA: 1, 2, 4 GPUs as visible
    ioaware bench tp --world-sizes 1 2 --json -        # CPU: gloo
"""

from __future__ import annotations

import argparse
import datetime as _dt
import statistics
import time
from pathlib import Path

import torch
import torch.distributed as dist

from ..files import write_json_atomic
from ..report import emit_json, print_table
from .common import RESULTS_DIR, machine_info

SHAPES = {
    # Llama-3-8B (config.json of meta-llama/Meta-Llama-3-8B): 32 layers, 4096 wide, 32 heads of 128, 8 KV heads
    "8b": dict(dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, hidden_dim=14336, vocab_size=128256, head_dim=128,
               rope_base=500000.0, max_seq_len=8192, tie_embeddings=False),
    "small": dict(dim=1024, n_layers=4, n_heads=16, n_kv_heads=4, hidden_dim=2816, vocab_size=32000, head_dim=64,
                  max_seq_len=4096, tie_embeddings=True),
}
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _round_robin(cases: dict, dev, repeats: int) -> dict:
    """Median seconds of each case, the cases taking turns (after a warm-up of each); ranks start each together."""
    for fn in cases.values():
        fn()
    ts = {k: [] for k in cases}
    for _ in range(repeats):
        for k, fn in cases.items():
            _sync(dev)
            dist.barrier()
            t0 = time.perf_counter()
            fn()
            _sync(dev)
            ts[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in ts.items()}


def _model(cfg, world, dev):
    from ..runtime import ModelArgs, Transformer

    a = ModelArgs(**{**SHAPES[cfg["shape"]], **({"n_layers": cfg["layers"]} if cfg["layers"] else {})})
    with torch.device("meta"):
        m = Transformer(a)
    if world > 1:
        from ..distributed import shard_transformer

        shard_transformer(m, tiles=cfg["tiles"])
    m = m.to_empty(device=dev).to(DTYPES[cfg["dtype"]])
    if a.tie_embeddings:
        m.output.weight = m.tok_embeddings.weight
    torch.manual_seed(0)  # values do not matter for timing; drawn on the device (8B numbers on a CPU take minutes)
    with torch.no_grad():
        for n, p in m.named_parameters():
            p.fill_(1.0) if "norm" in n else p.normal_(0.0, 0.02)
    m.set_attention("flash_attn" if dev.type == "cuda" else "sdpa")
    return m.eval().requires_grad_(False)


@torch.inference_mode()
def _decode(cfg, world, dev) -> dict:
    m = _model(cfg, world, dev)
    P, S = cfg["prompt"], cfg["steps"]
    m.setup_cache(1, P + S + 2)
    m(torch.arange(P, device=dev)[None] % 1000, 0, last_only=True)  # prefill
    tok = torch.ones(1, 1, dtype=torch.long, device=dev)
    ts = []
    for i in range(S + 1):
        _sync(dev)
        if world > 1:
            dist.barrier()
        t0 = time.perf_counter()
        m(tok, P + i)
        _sync(dev)
        ts.append(time.perf_counter() - t0)
    return {"decode_s": statistics.median(ts[1:])}  # the first step warms up


def _overlap(cfg, world, rank, dev) -> dict:
    """The output projection's compute and all-reduce: alone, in sequence, and tiled."""
    from ..distributed.tp import split_sizes, tiled_all_reduce
    from ..iomodel.tiling import choose_tiles, fit_link, tiled_s

    a = SHAPES[cfg["shape"]]
    dtype, reps, rows = DTYPES[cfg["dtype"]], cfg["repeats"], cfg["overlap_rows"]
    g = torch.Generator(device="cpu").manual_seed(rank)
    k_local = a["n_heads"] * a["head_dim"] // world
    x = (torch.randn(rows, k_local, generator=g) * 0.1).to(dev, dtype)
    w = (torch.randn(a["dim"], k_local, generator=g) * 0.02).to(dev, dtype)
    y = torch.empty(rows, a["dim"], device=dev, dtype=dtype)

    def compute(n):
        start = 0
        for s in split_sizes(a["dim"], n):
            torch.nn.functional.linear(x, w[start:start + s])
            start += s

    n_hi = max(cfg["tile_counts"])
    small = torch.empty(1024, device=dev, dtype=torch.float32)
    cases = {"compute": lambda: compute(1), f"compute x{n_hi}": lambda: compute(n_hi),
             "allreduce": lambda: dist.all_reduce(y), "allreduce_small": lambda: dist.all_reduce(small),
             **{n: (lambda n=n: tiled_all_reduce(x, w, n)) for n in cfg["tile_counts"]}}
    ts = _round_robin(cases, dev, reps)  # load on a shared machine drifts: every case sees the same drift
    comp, comm, comm_small = ts["compute"], ts["allreduce"], ts["allreduce_small"]
    tiled = {n: ts[n] for n in cfg["tile_counts"]}
    per_tile = max(0.0, (ts[f"compute x{n_hi}"] - comp) / max(1, n_hi - 1))
    nbytes = y.numel() * y.element_size()
    link = fit_link("measured", (small.numel() * 4, comm_small), (nbytes, comm), world, per_tile,
                    "fitted in this run")
    n_model = choose_tiles(comp, nbytes, world, link, max_tiles=n_hi)
    return {"rows": rows, "compute_s": comp, "allreduce_s": comm, "allreduce_small_s": comm_small,
            "tile_overhead_s": per_tile, "tiled_s": tiled, "bytes": nbytes,
            "link_fit": {"alpha_s": link.alpha_s, "beta_Bps": link.beta_Bps},
            "model_tiles": n_model, "model_tiled_s": {n: tiled_s(n, comp, nbytes, world, link) for n in tiled}}


def _one(rank, world, cfg) -> dict:
    dev = torch.device(f"cuda:{rank}" if cfg["cuda"] else "cpu")
    out = _decode(cfg, world, dev)
    if world > 1:
        out["overlap"] = _overlap(cfg, world, rank, dev)
    return out


def _alone(cfg) -> dict:
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    return _one(0, 1, cfg)


def run(cfg: dict, progress=None) -> dict:
    from ..distributed.launch import run_ranks

    per = {}
    for i, n in enumerate(cfg["world_sizes"]):
        per[n] = run_ranks(_one, n, cfg, backend="nccl" if cfg["cuda"] else "gloo", threads=cfg["threads"]) \
            if n > 1 else [_alone(cfg)]
        if progress:
            progress(i + 1, len(cfg["world_sizes"]))
    base = per[1][0]["decode_s"] if 1 in per else None
    results = []
    for n, ranks in per.items():
        dec = max(r["decode_s"] for r in ranks)  # the slowest rank sets the pace
        row = {"world": n, "decode_ms": dec * 1e3, "tok_s": 1 / dec, "speedup": base / dec if base else None}
        if n > 1:  # overlap: the slowest rank's times
            ov = [r["overlap"] for r in ranks]
            comp, comm = max(o["compute_s"] for o in ov), max(o["allreduce_s"] for o in ov)
            tiled = {t: max(o["tiled_s"][t] for o in ov) for t in ov[0]["tiled_s"]}
            best = min((t for t in tiled if t > 1), key=tiled.get, default=1)
            row["overlap"] = {
                "rows": ov[0]["rows"], "compute_ms": comp * 1e3, "allreduce_ms": comm * 1e3,
                "sum_ms": (comp + comm) * 1e3, "tiled_ms": {t: s * 1e3 for t, s in tiled.items()},
                "hidden_frac": {t: (comp + comm - s) / comm for t, s in tiled.items()},
                "best_tiles": best, "model_tiles": ov[0]["model_tiles"],
                "model_tiled_ms": {t: s * 1e3 for t, s in ov[0]["model_tiled_s"].items()},
                "link_fit": ov[0]["link_fit"], "tile_overhead_ms": ov[0]["tile_overhead_s"] * 1e3,
                "per_rank": ov}
        results.append(row)
    import os

    # on a shared machine other jobs slow some processes more than others: the load says how busy it was
    machine = {**machine_info(), "loadavg_1_5_15_min": list(os.getloadavg())}
    return {"benchmark": "tp", "machine": machine, "config": cfg, "results": results}


TABLE_COLUMNS = ["N", "decode ms", "tok/s", "speed-up", "compute ms", "all-reduce ms", "tiled ms (best n)",
                 "hidden", "iomodel n"]


def table_rows(res: dict) -> list[list]:
    out = []
    for r in res["results"]:
        o = r.get("overlap")
        cells = ["-"] * 5
        if o:
            n = o["best_tiles"]
            cells = [f"{o['compute_ms']:.2f}", f"{o['allreduce_ms']:.2f}", f"{o['tiled_ms'][n]:.2f} ({n})",
                     f"{o['hidden_frac'][n]:.0%}", str(o["model_tiles"])]
        out.append([r["world"], f"{r['decode_ms']:.2f}", f"{r['tok_s']:.1f}",
                    "-" if r["speedup"] is None else f"{r['speedup']:.2f}x", *cells])
    return out


def main(argv: list[str] | None = None) -> int:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(prog="ioaware bench tp", description=__doc__.split("\n\n")[0])
    p.add_argument("--world-sizes", type=int, nargs="+", default=None,
                   help="process counts, 1 first for the baseline (default: 1 2 4 GPUs as visible; CPU: 1 2)")
    p.add_argument("--shape", choices=list(SHAPES), default="8b" if cuda else "small")
    p.add_argument("--layers", type=int, default=0, help="override the shape's layer count (0: keep)")
    p.add_argument("--dtype", choices=list(DTYPES), default="bfloat16" if cuda else "float32")
    p.add_argument("--prompt", type=int, default=128, help="prefill tokens before decode is timed")
    p.add_argument("--steps", type=int, default=32 if cuda else 16, help="decode steps timed (median)")
    p.add_argument("--tiles", default="auto", help="the sharded model's tiling (an int or auto)")
    p.add_argument("--overlap-rows", type=int, default=8192 if cuda else 512,
                   help="tokens of the output projection timed for the tiling-AllReduce overlap")
    p.add_argument("--tile-counts", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--repeats", type=int, default=10 if cuda else 5)
    p.add_argument("--threads", type=int, default=0 if cuda else 1, help="torch threads per process (CPU)")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if cuda else "cpu")
    p.add_argument("--label", default=None, help="a note stored with the results (e.g. the machine)")
    p.add_argument("--out", default=None, help="results file (default benchmarks/results/tp-<cpu|gpu>-<date>.json)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the results to FILE ('-' for stdout)")
    a = p.parse_args(argv)
    on_gpu = a.device == "cuda"
    if on_gpu and not cuda:
        raise ValueError("--device cuda: no CUDA GPU is visible")
    tiles = a.tiles if a.tiles == "auto" else int(a.tiles)
    # from here the launcher has bench/ring_attn.py's shape (world sizes, a config dict, spawned runs under one
    # progress bar) over different arguments; the spawn helper itself is shared (distributed.launch)
    ws = a.world_sizes or ([n for n in (1, 2, 4) if n <= torch.cuda.device_count()] if on_gpu else [1, 2])
    if any(n < 1 for n in ws) or min(a.steps, a.prompt, a.repeats, a.overlap_rows) < 1 or 1 not in a.tile_counts:
        raise ValueError("--world-sizes, --steps, --prompt, --repeats, --overlap-rows must be positive and "
                         "--tile-counts must include 1")
    kv = SHAPES[a.shape]["n_kv_heads"]
    if max(ws) > kv:
        raise ValueError(f"the {a.shape} shape has {kv} KV heads: at most {kv} processes")
    cfg = dict(world_sizes=ws, shape=a.shape, layers=a.layers, dtype=a.dtype, prompt=a.prompt, steps=a.steps,
               tiles=tiles, overlap_rows=a.overlap_rows, tile_counts=sorted(set(a.tile_counts)), repeats=a.repeats,
               threads=a.threads, cuda=on_gpu, label=a.label)
    from rich.progress import Progress

    with Progress(transient=True) as prog:
        task = prog.add_task("tp", total=len(ws))
        res = run(cfg, lambda i, n: prog.update(task, completed=i, total=n))
    m = res["machine"]
    print_table(f"tensor-parallel decode, {a.shape} shape, {a.dtype}, on {m.get('card', 'CPU')} "
                f"({'NCCL' if on_gpu else 'gloo'}); overlap at {a.overlap_rows} rows", TABLE_COLUMNS, table_rows(res))
    out = a.out or str(RESULTS_DIR / f"tp-{'gpu' if on_gpu else 'cpu'}-{_dt.date.today().isoformat()}.json")
    write_json_atomic(Path(out), res)
    print(f"results written to {out}")
    emit_json(res, a.json)
    return 0
