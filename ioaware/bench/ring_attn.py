"""Context-parallel attention scaling: ring_attn (ring and all-gather) on N processes vs one process, one run.

Strong scaling at a fixed sequence: efficiency(N) = t(1) / (N * t(N)), t(1) one process running the per-block
kernel that ring_attn uses on the whole sequence (ioaware.flash_attn's Triton forward and backward on CUDA; on CPU
the PyTorch reference), t(N) the slowest rank's time of ring_attn with zig-zag sharding. Forward, and forward +
backward.

    ioaware bench ring-attn                          # CUDA: NCCL, T = 131072, D = 128, bf16, 1/2/4 GPUs
    ioaware bench ring-attn --world-sizes 1 2 --seqlen 2048 --dtype float32     # CPU: gloo, 1 thread per process
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.distributed as dist

from ..files import write_json_atomic
from ..report import emit_json, print_table
from .common import RESULTS_DIR, machine_info

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _timed(fn, dev, repeats: int, group=None) -> float:
    """Median seconds of fn over `repeats` after one warm-up; ranks start each repeat together (a barrier)."""
    fn()
    ts = []
    for _ in range(repeats):
        _sync(dev)
        if group is not False:
            dist.barrier()
        t0 = time.perf_counter()
        fn()
        _sync(dev)
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def _inputs(B, T, H, Hkv, D, dtype, dev, seed):
    g = torch.Generator(device="cpu").manual_seed(seed)
    mk = lambda h: (torch.randn(B, T, h, D, generator=g) * 0.5).to(dev, dtype).requires_grad_()  # noqa: E731
    return mk(H), mk(Hkv), mk(Hkv), (torch.randn(B, T, H, D, generator=g)).to(dev, dtype)


def _one(rank, world, cfg) -> dict:
    """One world size: every rank times its part; returns this rank's seconds per case."""
    from ..distributed import ring_attn
    from ..distributed.ring import local_bwd, local_fwd, use_kernel

    dev = torch.device(f"cuda:{rank}" if cfg["cuda"] else "cpu")
    dtype = DTYPES[cfg["dtype"]]
    B, T, H, Hkv, D, reps = cfg["batch"], cfg["seqlen"], cfg["heads"], cfg["kv_heads"], cfg["head_dim"], cfg["repeats"]
    out = {}
    if world == 1:  # the baseline: one process, the whole sequence, the per-block kernel ring_attn runs, alone
        q, k, v, do = _inputs(B, T, H, Hkv, D, dtype, dev, 0)
        kernel, scale, causal = use_kernel("auto", dev), D ** -0.5, cfg["causal"]

        def both():
            o, lse = local_fwd(q, k, v, causal, scale, kernel)
            local_bwd(do, q, k, v, o, lse, causal, scale, kernel)

        with torch.no_grad():
            out["fwd"] = _timed(lambda: local_fwd(q, k, v, causal, scale, kernel), dev, reps, group=False)
            out["fwd+bwd"] = _timed(both, dev, reps, group=False)
        out["kernel"] = "flash_attn" if kernel else "reference"
        return out
    q, k, v, do = _inputs(B, T // world, H, Hkv, D, dtype, dev, rank)
    for variant in cfg["variants"]:
        kw = dict(causal=cfg["causal"], variant=variant, layout="zigzag")
        with torch.no_grad():
            out[f"{variant} fwd"] = _timed(lambda kw=kw: ring_attn(q, k, v, **kw), dev, reps)
        out[f"{variant} fwd+bwd"] = _timed(lambda kw=kw: ring_attn(q, k, v, **kw).backward(do), dev, reps)
    return out


def run(cfg: dict, progress=None) -> dict:
    from ..distributed.launch import run_ranks

    rows = {}
    for i, n in enumerate(cfg["world_sizes"]):
        per_rank = run_ranks(_one, n, cfg, backend="nccl" if cfg["cuda"] else "gloo", threads=cfg["threads"]) \
            if n > 1 else [_one_alone(cfg)]
        local = per_rank[0].pop("kernel", None) if n == 1 else None
        rows[n] = {case: max(r[case] for r in per_rank) for case in per_rank[0]}  # the slowest rank sets the pace
        if local:
            cfg = {**cfg, "local_kernel": local}
        if progress:
            progress(i + 1, len(cfg["world_sizes"]))
    base = rows.get(1)
    results = []
    for n, cases in rows.items():
        for case, s in cases.items():
            mode = case.split()[-1]
            eff = base[mode] / (n * s) if base and n > 1 else None
            results.append({"world": n, "case": case if n > 1 else f"one process {case}", "ms": s * 1e3,
                            "efficiency": eff})
    import os

    # on a shared machine other jobs slow some processes more than others: the load says how busy it was
    machine = {**machine_info(), "loadavg_1_5_15_min": list(os.getloadavg())}
    return {"benchmark": "ring-attn", "machine": machine, "config": cfg, "results": results}


def _one_alone(cfg) -> dict:
    torch.set_num_threads(cfg["threads"] or torch.get_num_threads())
    return _one(0, 1, cfg)


TABLE_COLUMNS = ["N", "case", "ms", "efficiency"]


def table_rows(res: dict) -> list[list]:
    return [[r["world"], r["case"], f"{r['ms']:.2f}", "-" if r["efficiency"] is None else f"{r['efficiency']:.0%}"]
            for r in res["results"]]


def main(argv: list[str] | None = None) -> int:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(prog="ioaware bench ring-attn", description=__doc__.split("\n\n")[0])
    p.add_argument("--world-sizes", type=int, nargs="+", default=None,
                   help="process counts, 1 first for the baseline (default: 1 2 4 GPUs as visible; CPU: 1 2)")
    p.add_argument("--seqlen", type=int, default=131072 if cuda else 2048)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--heads", type=int, default=8 if cuda else 4)
    p.add_argument("--kv-heads", type=int, default=None, help="default: --heads")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dtype", choices=list(DTYPES), default="bfloat16" if cuda else "float32")
    p.add_argument("--variants", nargs="+", choices=["ring", "allgather"], default=["ring", "allgather"])
    p.add_argument("--no-causal", dest="causal", action="store_false")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1 if not cuda else 0, help="torch threads per process (CPU)")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if cuda else "cpu")
    p.add_argument("--out", default=None, help="results file (default benchmarks/results/ring-attn-<cpu|gpu>-"
                   "<date>.json)")
    p.add_argument("--label", default=None, help="a note stored with the results (e.g. the machine)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the results to FILE ('-' for stdout)")
    a = p.parse_args(argv)
    on_gpu = a.device == "cuda"
    if on_gpu and not cuda:
        raise ValueError("--device cuda: no CUDA GPU is visible")
    ws = a.world_sizes or ([n for n in (1, 2, 4) if n <= torch.cuda.device_count()] if on_gpu else [1, 2])
    if any(n < 1 for n in ws) or a.seqlen < 1 or a.repeats < 1:
        raise ValueError("--world-sizes, --seqlen and --repeats must be positive")
    for n in ws:
        if a.seqlen % (2 * n):
            raise ValueError(f"--seqlen {a.seqlen} must be a multiple of 2 x {n} (zig-zag chunks)")
    cfg = dict(world_sizes=ws, seqlen=a.seqlen, head_dim=a.head_dim, heads=a.heads, kv_heads=a.kv_heads or a.heads,
               batch=a.batch, dtype=a.dtype, variants=a.variants, causal=a.causal, repeats=a.repeats,
               threads=a.threads, cuda=on_gpu, label=a.label)
    from rich.progress import Progress

    with Progress(transient=True) as prog:
        task = prog.add_task("ring-attn", total=len(ws))
        res = run(cfg, lambda i, n: prog.update(task, completed=i, total=n))
    m = res["machine"]
    print_table(f"ring_attn on {m.get('card', 'CPU')} ({'NCCL' if on_gpu else 'gloo'}), T={a.seqlen}, D={a.head_dim}, "
                f"H={a.heads}, {a.dtype}, causal={a.causal}", TABLE_COLUMNS, table_rows(res))
    import datetime as _dt

    out = a.out or str(RESULTS_DIR / f"ring-attn-{'gpu' if on_gpu else 'cpu'}-{_dt.date.today().isoformat()}.json")
    from pathlib import Path

    write_json_atomic(Path(out), res)
    print(f"results written to {out}")
    emit_json(res, a.json)
    return 0
