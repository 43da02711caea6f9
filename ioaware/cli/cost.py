"""`ioaware cost attention` / `ioaware cost nsa`: FLOPs, HBM traffic, arithmetic intensity and roofline time."""

from __future__ import annotations

from ..report import emit_json, print_table
from ..units import human_bytes, parse_bytes


def add_parser(sp) -> None:
    sub = sp.add_subparsers(dest="op", metavar="OP", required=True)
    a = sub.add_parser("attention", help="standard attention vs FlashAttention-2, forward and backward",
                       description="standard attention vs FlashAttention-2, forward and backward")
    a.add_argument("--n", "--seqlen", dest="n", type=int, default=4096, help="sequence length (queries and keys)")
    a.add_argument("--nk", type=int, default=None, help="key length if different from --n")
    a.add_argument("--d", "--head-dim", dest="d", type=int, default=128, help="head dimension")
    a.add_argument("--batch", type=int, default=1)
    a.add_argument("--heads", type=int, default=1, help="query heads")
    a.add_argument("--kv-heads", type=int, default=None, help="key/value heads (GQA); default = --heads")
    a.add_argument("--causal", action="store_true")
    a.add_argument("--dtype", default="bfloat16", choices=["float16", "bfloat16", "float32"])
    a.add_argument("--sram", default=None, help="on-chip memory per SM, e.g. 228KiB (default: the hardware's)")
    a.add_argument("--block", type=int, nargs=2, metavar=("BQ", "BK"), default=None,
                   help="FlashAttention tile sizes instead of deriving them from --sram")
    a.add_argument("--hardware", default="h100", help="spec for the roofline: h100, h200, a100, v100")
    a.add_argument("--json", default=None, metavar="FILE", help="also write the table as JSON ('-' for stdout)")
    a.add_argument("--dram", action="store_true",
                   help="add the DRAM bytes of ioaware's kernels predicted by the L2 schedule model (H100 only)")
    a.add_argument("--plot", default=None, metavar="FILE.png",
                   help="draw HBM traffic against N and against M (log-log) with the lower bound")
    a.set_defaults(func=run_attention)

    n = sub.add_parser("nsa", help="native sparse attention branch by branch, beside dense FlashAttention-2",
                       description="NSA's FLOPs and HBM bytes per branch (compression, compressed attention, "
                                   "block selection, selected attention in FSA or NSA order, sliding window, gates) "
                                   "from the kernels' schedules (kernels/attention/sparse/cost.py), forward and "
                                   "backward, with dense causal FlashAttention-2 at the same shape")
    n.add_argument("--t", "--seqlen", dest="t", type=int, default=65536, help="sequence length")
    n.add_argument("--d", "--head-dim", dest="d", type=int, default=128)
    n.add_argument("--batch", type=int, default=1)
    n.add_argument("--heads", type=int, default=64, help="query heads")
    n.add_argument("--kv-heads", type=int, default=4, help="key/value heads (a GQA group is heads / kv-heads)")
    n.add_argument("--block-size", type=int, default=64)
    n.add_argument("--stride", type=int, default=16)
    n.add_argument("--select-blocks", type=int, default=16)
    n.add_argument("--select-size", type=int, default=64)
    n.add_argument("--window", type=int, default=512)
    n.add_argument("--order", choices=["fsa", "nsa"], default="fsa", help="the selected branch's loop order")
    n.add_argument("--dtype", default="bfloat16", choices=["float16", "bfloat16", "float32"])
    n.add_argument("--hardware", default="h200", help="spec for the roofline: h100, h200, a100, v100")
    n.add_argument("--json", default=None, metavar="FILE", help="also write the table as JSON ('-' for stdout)")
    n.set_defaults(func=run_nsa)


def attention_rows(args) -> tuple[list[dict], dict]:
    from ..hardware import get_spec
    from ..iomodel import Cost, flash_attention_cost, roofline, standard_attention_cost
    from ..iomodel.bounds import attention_io_lower_bound, fa1_forward_io

    if min(args.n, args.d, args.batch, args.heads) <= 0:
        raise ValueError("--n, --d, --batch and --heads must be positive")
    spec = get_spec(args.hardware)
    nk = args.nk or args.n
    e = {"float16": 2, "bfloat16": 2, "float32": 4}[args.dtype]
    sram = parse_bytes(args.sram) if args.sram else spec.sram_bytes
    kw = {"block_q": args.block[0], "block_k": args.block[1]} if args.block else {"sram_bytes": sram}
    rows = []
    bh, m_elems = args.batch * args.heads, sram / e
    for bwd in (False, True):
        std = standard_attention_cost(args.batch, args.heads, args.n, nk, args.d, e, args.causal, bwd)
        fl = flash_attention_cost(args.batch, args.heads, args.n, nk, args.d, Hkv=args.kv_heads, elem_bytes=e,
                                  causal=args.causal, backward=bwd, **kw)
        algos = [("standard", std), ("flash-attention-2", fl)]
        if not bwd:  # FlashAttention-1's Algorithm 1 (forward only): Bc = M/4d, Br = min(M/4d, d)
            bc = args.block[1] if args.block else max(1, int(m_elems // (4 * args.d)))
            br = args.block[0] if args.block else min(bc, args.d)
            t = fa1_forward_io(args.n, args.d, min(br, args.n), min(bc, nk), Nk=nk, causal=args.causal, elem=e,
                               stat=4)
            algos.insert(1, ("flash-attention-1", Cost.of(fl.flops, label=f"flash attention-1 fwd (Br={br}, Bc={bc})",
                                                          hbm=(bh * t.read, bh * t.write))))
        if getattr(args, "dram", False):
            algos.append(_dram_row(args, nk, e, fl.flops, bwd))
        lb = attention_io_lower_bound(args.n, args.d, m_elems, Nk=nk, backward=bwd)
        algos.append(("lower bound", Cost.of(fl.flops, label=f"I/O lower bound, {lb.regime}, Theta with constant 1",
                                             hbm=(bh * e * lb.words, 0))))
        for name, c in algos:
            r = roofline(c, spec, args.dtype)
            rows.append({"algorithm": name, "pass": "bwd" if bwd else "fwd", "detail": c.label,
                         "hbm_bytes": c.bytes("hbm"), "flops": c.flops, "intensity": r.intensity,
                         "roofline_ms": r.time_s * 1e3, "bound": r.bound})
    meta = {"n": args.n, "nk": nk, "d": args.d, "batch": args.batch, "heads": args.heads, "causal": args.causal,
            "dtype": args.dtype, "sram_bytes": sram, "hardware": spec.name, "ridge_flop_per_byte": r.ridge}
    return rows, meta


def _dram_row(args, nk: int, e: int, flops: float, bwd: bool):
    """ioaware's kernels after the H100's L2: the schedule model of `ioaware.sim.l2` (its error: the README)."""
    from ..iomodel import Cost
    from ..sim.l2 import flash_kernels_dram

    if args.hardware.lower() != "h100":
        raise ValueError("--dram: the L2 model is measured on the H100 only (use --hardware h100)")
    if nk != args.n or e != 2:
        raise ValueError("--dram models ioaware's bf16/fp16 kernels with equal query and key lengths")
    k = flash_kernels_dram(args.batch, args.heads, args.n, args.d, Hkv=args.kv_heads, causal=args.causal,
                           backward=bwd)
    read, write = sum(t.dram_read for t in k.values()), sum(t.dram_write for t in k.values())
    if bwd:  # the delta preprocess streams O and dO once and writes delta
        read += 2 * args.batch * args.heads * args.n * args.d * e
        write += args.batch * args.heads * args.n * 4
    return ("ioaware kernels, DRAM", Cost.of(flops, label="after L2 (ioaware.sim.l2, H100)", hbm=(read, write)))


def run_attention(args) -> int:
    rows, meta = attention_rows(args)
    title = (f"attention cost: B={meta['batch']} H={meta['heads']} N={meta['n']} d={meta['d']} "
             f"{'causal ' if meta['causal'] else ''}{meta['dtype']}, M={human_bytes(meta['sram_bytes'])}, "
             f"on {meta['hardware']} (ridge {meta['ridge_flop_per_byte']:.0f} FLOP/B)")
    print_table(title, ["algorithm", "pass", "HBM bytes", "GFLOP", "FLOP/B", "roofline ms", "bound"],
                [[r["algorithm"], r["pass"], human_bytes(r["hbm_bytes"]), r["flops"] / 1e9, r["intensity"],
                  r["roofline_ms"], r["bound"]] for r in rows])
    emit_json({"meta": meta, "rows": rows}, args.json)
    if args.plot:
        plot_attention(args, meta, args.plot)
        print(f"plot written to {args.plot}")
    return 0


def plot_attention(args, meta: dict, path: str) -> None:
    """Two log-log panels of forward HBM bytes (per batch-head): against N at this M, against M at this N."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..iomodel import flash_attention_cost, standard_attention_cost
    from ..iomodel.bounds import attention_io_lower_bound

    d, e, causal = meta["d"], {"float16": 2, "bfloat16": 2, "float32": 4}[meta["dtype"]], meta["causal"]

    def curves(n: int, sram: float) -> tuple[float, float, float]:
        std = standard_attention_cost(1, 1, n, n, d, e, causal).bytes("hbm")
        fl = flash_attention_cost(1, 1, n, n, d, sram_bytes=sram, elem_bytes=e, causal=causal).bytes("hbm")
        return std, fl, e * attention_io_lower_bound(n, d, sram / e).words

    ns = [2**k for k in range(8, 18)]
    ms = [meta["sram_bytes"] * 2.0**k for k in range(-6, 4) if meta["sram_bytes"] * 2.0**k >= 4 * d * e]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, xs, pts, xlabel in ((axes[0], ns, [curves(n, meta["sram_bytes"]) for n in ns], "N (sequence length)"),
                                (axes[1], ms, [curves(meta["n"], m) for m in ms], "M (on-chip bytes)")):
        for i, name in enumerate(("standard", "FlashAttention-2", "lower bound (Theta, constant 1)")):
            ax.loglog(xs, [p[i] for p in pts], marker="o", ms=3, label=name, ls="--" if i == 2 else "-")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("HBM bytes (forward, per batch-head)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_title(f"d={d}, M={human_bytes(meta['sram_bytes'])}")
    axes[1].set_title(f"d={d}, N={meta['n']}; M = d^2 at {human_bytes(d * d * e)}")
    axes[1].axvline(d * d * e, color="grey", lw=0.8)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def nsa_rows(args) -> tuple[list[dict], dict]:
    from ..hardware import get_spec
    from ..iomodel import Cost, flash_attention_cost, roofline
    from ..kernels.attention.sparse.cost import nsa_branch_costs

    if min(args.t, args.d, args.batch, args.heads, args.kv_heads, args.block_size, args.stride, args.select_blocks,
           args.select_size, args.window) <= 0:
        raise ValueError("--t, --d, --batch, --heads, --kv-heads, --block-size, --stride, --select-blocks, "
                         "--select-size and --window must be positive")
    if args.heads % args.kv_heads:
        raise ValueError(f"--heads {args.heads} is not a multiple of --kv-heads {args.kv_heads}")
    if args.block_size % args.stride or args.select_size % args.stride:
        raise ValueError(f"--block-size {args.block_size} and --select-size {args.select_size} must be multiples of "
                         f"--stride {args.stride}")
    spec = get_spec(args.hardware)
    e = {"float16": 2, "bfloat16": 2, "float32": 4}[args.dtype]
    rows = []
    for bwd in (False, True):
        parts = nsa_branch_costs(args.batch, args.t, args.heads, args.d, args.kv_heads, block_size=args.block_size,
                                 stride=args.stride, select_blocks=args.select_blocks, select_size=args.select_size,
                                 window=args.window, causal=True, elem_bytes=e, backward=bwd, order=args.order)
        total = Cost()
        for c in parts.values():
            total = total + c
        dense = flash_attention_cost(args.batch, args.heads, args.t, args.t, args.d, Hkv=args.kv_heads, elem_bytes=e,
                                     causal=True, backward=bwd, sram_bytes=spec.sram_bytes)
        for name, c in [*parts.items(), ("nsa total", total), ("dense flash-attention-2", dense)]:
            r = roofline(c, spec, args.dtype)
            rows.append({"part": name, "pass": "bwd" if bwd else "fwd", "hbm_bytes": c.bytes("hbm"), "flops": c.flops,
                         "intensity": r.intensity, "roofline_ms": r.time_s * 1e3, "bound": r.bound})
        t_nsa, t_dense = rows[-2]["roofline_ms"], rows[-1]["roofline_ms"]
        rows[-2]["dense_over_nsa"] = t_dense / t_nsa if t_nsa else None
    meta = {"t": args.t, "d": args.d, "batch": args.batch, "heads": args.heads, "kv_heads": args.kv_heads,
            "block_size": args.block_size, "stride": args.stride, "select_blocks": args.select_blocks,
            "select_size": args.select_size, "window": args.window, "order": args.order, "dtype": args.dtype,
            "hardware": spec.name}
    return rows, meta


def run_nsa(args) -> int:
    rows, meta = nsa_rows(args)
    title = (f"NSA cost: B={meta['batch']} T={meta['t']} Hq={meta['heads']} Hkv={meta['kv_heads']} d={meta['d']} "
             f"{meta['dtype']}, {meta['select_blocks']} blocks of {meta['select_size']}, window {meta['window']}, "
             f"{meta['order'].upper()} order, on {meta['hardware']} (roofline: the time at the spec's peak rates; "
             "measured speed-ups: benchmarks/results/nsa-*.json)")
    print_table(title, ["part", "pass", "HBM bytes", "GFLOP", "FLOP/B", "roofline ms", "bound", "dense / nsa"],
                [[r["part"], r["pass"], human_bytes(r["hbm_bytes"]), r["flops"] / 1e9, r["intensity"],
                  r["roofline_ms"], r["bound"], "" if r.get("dense_over_nsa") is None else r["dense_over_nsa"]]
                 for r in rows])
    emit_json({"meta": meta, "rows": rows}, args.json)
    return 0
