"""`ioaware cost attention`: FLOPs, HBM traffic, arithmetic intensity and roofline time of attention."""

from __future__ import annotations

from ._report import emit_json, human_bytes, parse_bytes, print_table


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
    a.add_argument("--sram", default=None, help="on-chip memory per SM, e.g. 228KB (default: the hardware's)")
    a.add_argument("--block", type=int, nargs=2, metavar=("BQ", "BK"), default=None,
                   help="FlashAttention tile sizes instead of deriving them from --sram")
    a.add_argument("--hardware", default="h100", help="spec for the roofline: h100, h200, a100, v100")
    a.add_argument("--json", default=None, metavar="FILE", help="also write the table as JSON ('-' for stdout)")
    a.set_defaults(func=run_attention)


def attention_rows(args) -> tuple[list[dict], dict]:
    from ..hardware import get_spec
    from ..iomodel import flash_attention_cost, roofline, standard_attention_cost

    if min(args.n, args.d, args.batch, args.heads) <= 0:
        raise ValueError("--n, --d, --batch and --heads must be positive")
    spec = get_spec(args.hardware)
    nk = args.nk or args.n
    e = {"float16": 2, "bfloat16": 2, "float32": 4}[args.dtype]
    sram = parse_bytes(args.sram) if args.sram else spec.sram_bytes
    kw = {"block_q": args.block[0], "block_k": args.block[1]} if args.block else {"sram_bytes": sram}
    rows = []
    for bwd in (False, True):
        std = standard_attention_cost(args.batch, args.heads, args.n, nk, args.d, e, args.causal, bwd)
        fl = flash_attention_cost(args.batch, args.heads, args.n, nk, args.d, Hkv=args.kv_heads, elem_bytes=e,
                                  causal=args.causal, backward=bwd, **kw)
        for name, c in (("standard", std), ("flash-attention-2", fl)):
            r = roofline(c, spec, args.dtype)
            rows.append({"algorithm": name, "pass": "bwd" if bwd else "fwd", "detail": c.label,
                         "hbm_bytes": c.bytes("hbm"), "flops": c.flops, "intensity": r.intensity,
                         "roofline_ms": r.time_s * 1e3, "bound": r.bound})
    meta = {"n": args.n, "nk": nk, "d": args.d, "batch": args.batch, "heads": args.heads, "causal": args.causal,
            "dtype": args.dtype, "sram_bytes": sram, "hardware": spec.name, "ridge_flop_per_byte": r.ridge}
    return rows, meta


def run_attention(args) -> int:
    rows, meta = attention_rows(args)
    title = (f"attention cost: B={meta['batch']} H={meta['heads']} N={meta['n']} d={meta['d']} "
             f"{'causal ' if meta['causal'] else ''}{meta['dtype']}, M={human_bytes(meta['sram_bytes'])}, "
             f"on {meta['hardware']} (ridge {meta['ridge_flop_per_byte']:.0f} FLOP/B)")
    print_table(title, ["algorithm", "pass", "HBM bytes", "GFLOP", "FLOP/B", "roofline ms", "bound"],
                [[r["algorithm"], r["pass"], human_bytes(r["hbm_bytes"]), r["flops"] / 1e9, r["intensity"],
                  r["roofline_ms"], r["bound"]] for r in rows])
    emit_json({"meta": meta, "rows": rows}, args.json)
    return 0
