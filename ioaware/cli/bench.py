"""`ioaware bench OP`: time ioaware's kernels beside PyTorch's on this GPU and write the results JSON."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

from ._report import emit_json, print_table, write_json_atomic


def add_parser(sp) -> None:
    sub = sp.add_subparsers(dest="op", metavar="OP", required=True)
    a = sub.add_parser("attention", help="flash_attn vs SDPA's flash, cuDNN and efficient backends",
                       description="flash_attn vs SDPA's flash, cuDNN and efficient backends (B*T=16k, H*D=2048)")
    a.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    a.add_argument("--seqlens", type=int, nargs="+", default=[1024, 4096, 16384])
    a.add_argument("--head-dims", type=int, nargs="+", default=[64, 128])
    a.add_argument("--modes", nargs="+", default=["fwd", "bwd"], choices=["fwd", "bwd"])
    a.add_argument("--out", default=None, help="results file (default benchmarks/results/attention-<card>-<date>.json)")
    a.add_argument("--json", default=None, metavar="FILE", help="also write the results to FILE ('-' for stdout)")
    a.set_defaults(func=run_attention)
    d = sub.add_parser("decode", help="flash_decode vs SDPA's flash and cuDNN backends (KV read GB/s)",
                       description="flash_decode vs SDPA's flash and cuDNN backends (KV read GB/s)")
    d.add_argument("--out", default=None, help="results file (default benchmarks/results/decode-<card>-<date>.json)")
    d.add_argument("--json", default=None, metavar="FILE", help="also write the results to FILE ('-' for stdout)")
    d.set_defaults(func=run_decode)
    g = sub.add_parser("gemm", help="GEMV / flat GEMM / torch.matmul for decoding; calibrates the dataflow table",
                       description="GEMV / flat GEMM / torch.matmul on Llama-8B projection shapes, M = 1..64; writes "
                       "the per-GPU dataflow table the dispatcher reads")
    g.add_argument("--out", default=None, help="results file (default benchmarks/results/gemm-<card>-<date>.json)")
    g.add_argument("--json", default=None, metavar="FILE", help="also write the results to FILE ('-' for stdout)")
    g.set_defaults(func=run_gemm)


def run_attention(args) -> int:
    import torch

    if not torch.cuda.is_available():
        raise ValueError("`ioaware bench attention` needs a CUDA GPU; on CPU, run the tests (make test) instead")
    from rich.progress import Progress

    from ..bench import attention

    with Progress(transient=True) as prog:
        task = prog.add_task("benchmarking shapes", total=None)
        res = attention.run(args.dtype, tuple(args.modes), seqlens=tuple(args.seqlens),
                            head_dims=tuple(args.head_dims),
                            progress=lambda i, n: prog.update(task, completed=i, total=n))
    m = res["machine"]
    print_table(f"attention on {m.get('card')} (driver {m.get('driver')}, torch {m['torch']}, triton {m['triton']}); "
                f"copy {res['ceilings']['copy_GBps']:.0f} GB/s, bf16 GEMM {res['ceilings']['gemm_bf16_TFLOPs']:.0f} "
                "TFLOP/s", attention.TABLE_COLUMNS, attention.table_rows(res))
    card = (m.get("card") or "gpu").split()[1].lower() if m.get("card") else "gpu"
    out = args.out or f"benchmarks/results/attention-{card}-{_dt.date.today().isoformat()}.json"
    write_json_atomic(Path(out), res)
    print(f"results written to {out}")
    emit_json(res, args.json)
    return 0


def run_decode(args) -> int:
    import torch

    if not torch.cuda.is_available():
        raise ValueError("`ioaware bench decode` needs a CUDA GPU; on CPU, run the tests (make test) instead")
    from rich.progress import Progress

    from ..bench import decode

    with Progress(transient=True) as prog:
        task = prog.add_task("benchmarking decode", total=None)
        res = decode.run(progress=lambda i, n: prog.update(task, completed=i, total=n))
    m = res["machine"]
    print_table(f"decode on {m.get('card')} (driver {m.get('driver')}, torch {m['torch']}, triton {m['triton']}); "
                f"copy {res['ceilings']['copy_GBps']:.0f} GB/s", decode.TABLE_COLUMNS, decode.table_rows(res))
    card = (m.get("card") or "gpu").split()[1].lower() if m.get("card") else "gpu"
    out = args.out or f"benchmarks/results/decode-{card}-{_dt.date.today().isoformat()}.json"
    write_json_atomic(Path(out), res)
    print(f"results written to {out}")
    emit_json(res, args.json)
    return 0


def run_gemm(args) -> int:
    import torch

    if not torch.cuda.is_available():
        raise ValueError("`ioaware bench gemm` needs a CUDA GPU; on CPU, run the tests (make test) instead")
    from rich.progress import Progress

    from ..bench import gemm

    with Progress(transient=True) as prog:
        task = prog.add_task("benchmarking gemm", total=None)
        res = gemm.run(progress=lambda i, n: prog.update(task, completed=i, total=n))
    m = res["machine"]
    print_table(f"decode GEMM on {m.get('card')} (driver {m.get('driver')}, torch {m['torch']}, triton {m['triton']})",
                gemm.TABLE_COLUMNS, gemm.table_rows(res))
    card = (m.get("card") or "gpu").split()[1].lower() if m.get("card") else "gpu"
    out = args.out or f"benchmarks/results/gemm-{card}-{_dt.date.today().isoformat()}.json"
    write_json_atomic(Path(out), res)
    print(f"results written to {out}; dataflow table: {res['dataflow_file']}")
    emit_json(res, args.json)
    return 0
