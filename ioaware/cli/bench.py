"""`ioaware bench OP`: time ioaware's kernels beside PyTorch's on this GPU and write the results JSON."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

from ..bench import CPU, GPU
from ..files import write_json_atomic
from ..report import emit_json, print_table
from ._programs import add_programs


def _op(sub, name: str, func, help_: str, description: str | None = None):
    p = sub.add_parser(name, help=help_, description=description or help_)
    p.set_defaults(func=func)
    return p


def add_parser(sp) -> None:
    sub = sp.add_subparsers(dest="op", metavar="OP", required=True)
    a = _op(sub, "attention", run_attention, GPU["attention"],
            "flash_attn vs SDPA's flash, cuDNN and efficient backends (B*T=16k, H*D=2048)")
    a.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    a.add_argument("--seqlens", type=int, nargs="+", default=[1024, 4096, 16384])
    a.add_argument("--head-dims", type=int, nargs="+", default=[64, 128])
    a.add_argument("--modes", nargs="+", default=["fwd", "bwd"], choices=["fwd", "bwd"])
    _op(sub, "attention-masks", run_attention_masks, GPU["attention-masks"],
        "flash_attn: sliding window 1024 at T=16k vs FlexAttention (compiled, same mask); "
        "block-sparse vs FlexAttention and vs our dense kernel (bf16, D=128)")
    _op(sub, "decode", run_decode, GPU["decode"])
    _op(sub, "gemm", run_gemm, GPU["gemm"],
        "GEMV / flat GEMM / torch.matmul on Llama-8B projection shapes, M = 1..64; writes "
        "the per-GPU dataflow table the dispatcher reads")
    r = _op(sub, "rnn", run_rnn, GPU["rnn"],
            "fused LSTM vs cuDNN nn.LSTM, the flashrnn package (if installed) and a plain "
            "PyTorch time loop; B=16, T=1024, fp16, 1 head of 768 and 12 heads of 64")
    r.add_argument("--flashrnn-timeout", type=int, default=240, help="seconds per flashrnn backend (nvcc builds)")
    r.add_argument("--cases", nargs="+", default=["1x768", "12x64"], choices=["1x768", "12x64"], help="heads x size")
    r.add_argument("--flashrnn-backends", nargs="+", default=["triton_fused", "cuda_fused", "cuda"])
    f = _op(sub, "fftconv", run_fftconv, GPU["fftconv"],
            "ioaware.fftconv vs torch.fft rfft/irfft as users write it: B=64, H=768, bf16, "
            "gated causal long convolution; time and peak memory in the same run")
    f.add_argument("--lengths", type=int, nargs="+", default=[256, 1024, 4096, 8192, 16384, 32768])
    f.add_argument("--batch", type=int, default=64)
    f.add_argument("--heads", type=int, default=768)
    f.add_argument("--bwd-max", type=int, default=8192, help="also time fwd+bwd up to this L (0: never)")
    f.add_argument("--sparse-keep", type=float, default=0.25, help="frequency-sparse row (0: none)")
    for name in ("nsa", "spmm", "lowrank"):
        _op(sub, name, lambda a, n=name: _run(n, a, lambda mod, progress: mod.run(progress=progress)), GPU[name])
    for name, p in list(sub.choices.items()):  # every GPU verb writes a results file, and --json on request
        p.add_argument("--out", default=None, help="results file (default benchmarks/results/"
                       f"{name.replace('-', '_')}-<card>-<date>.json)")
        p.add_argument("--json", default=None, metavar="FILE", help="also write the results to FILE ('-' for stdout)")
    add_programs(sub, CPU)  # whole programs: their own flags, parsed by their own main()


def _run(op: str, args, start) -> int:
    """Shared by every benchmark verb: GPU check, progress bar, table, atomic results file, --json."""
    import importlib

    import torch

    if not torch.cuda.is_available():
        raise ValueError(f"`ioaware bench {op}` needs a CUDA GPU; on CPU, run the tests (make test) instead")
    from rich.progress import Progress

    mod = importlib.import_module(f"ioaware.bench.{op}")
    with Progress(transient=True) as prog:
        task = prog.add_task(f"benchmarking {op}", total=None)
        res = start(mod, lambda i, n: prog.update(task, completed=i, total=n))
    m, c = res["machine"], res["ceilings"]
    print_table(f"{op} on {m.get('card')} (driver {m.get('driver')}, torch {m['torch']}, triton {m['triton']}); "
                f"copy {c['copy_GBps']:.0f} GB/s, bf16 GEMM {c['gemm_bf16_TFLOPs']:.0f} TFLOP/s",
                mod.TABLE_COLUMNS, mod.table_rows(res))
    card = m["card"].split()[1].lower() if m.get("card") and len(m["card"].split()) > 1 else "gpu"
    out = args.out or f"benchmarks/results/{op}-{card}-{_dt.date.today().isoformat()}.json"
    write_json_atomic(Path(out), res)
    print(f"results written to {out}" + (f"; dataflow table: {res['dataflow_file']}" if "dataflow_file" in res else ""))
    emit_json(res, args.json)
    return 0


def run_attention(args) -> int:
    return _run("attention", args, lambda mod, progress: mod.run(
        args.dtype, tuple(args.modes), seqlens=tuple(args.seqlens), head_dims=tuple(args.head_dims), progress=progress))


def run_attention_masks(args) -> int:
    return _run("attention_masks", args, lambda mod, progress: mod.run(progress=progress))


def run_decode(args) -> int:
    return _run("decode", args, lambda mod, progress: mod.run(progress=progress))


def run_gemm(args) -> int:
    return _run("gemm", args, lambda mod, progress: mod.run(progress=progress))


def run_rnn(args) -> int:
    return _run("rnn", args, lambda mod, progress: mod.run(progress=progress, flashrnn_timeout_s=args.flashrnn_timeout,
                                                           which=tuple(args.cases),
                                                           flashrnn_backends=tuple(args.flashrnn_backends)))


def run_fftconv(args) -> int:
    return _run("fftconv", args, lambda mod, progress: mod.run(
        tuple(args.lengths), args.batch, args.heads, args.bwd_max, args.sparse_keep, progress=progress))
