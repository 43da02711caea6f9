"""`ioaware prune MODEL OUT --sparsity 0.8 --method magnitude|wanda`: prune a Llama-family model's block
projections to unstructured sparsity and write them packed for Flash-LLM's SpMM (ioaware.spmm) in one
safetensors file, which `load_pruned` (and `ioaware generate --model OUT`) runs.

    ioaware prune default pruned.safetensors --sparsity 0.8 --method wanda --eval
    ioaware prune default --sweep 0.5 0.6 0.7 0.8 --json q.json --plot q.png   # quality table, no file written

MODEL is a .gguf file, a Hugging Face folder, or `default` (the embedded SmolLM2-135M-Instruct). Wanda's
calibration activations come from the shipped calibration text (ioaware/runtime/offload/data/calibration.txt);
perplexity is measured on the shipped held-out text.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .methods import METHODS, check_sparsity


class _Parser(argparse.ArgumentParser):
    """A bad flag is one line and exit 2, as everywhere in `ioaware` (cli.main.Parser; that layer is above this)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="ioaware prune", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", metavar="MODEL", help="a .gguf file, a Hugging Face folder, or 'default'")
    ap.add_argument("out", metavar="OUT", nargs="?", default=None,
                    help="the pruned checkpoint to write (.safetensors); not with --sweep")
    ap.add_argument("--sparsity", type=float, default=0.8, help="fraction of each projection's weights dropped, "
                    "in [0, 1) (default 0.8, Flash-LLM's operating point)")
    ap.add_argument("--method", choices=METHODS, default="wanda")
    ap.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default="float16",
                    help="packed values and the dense tensors in the file (default float16, Flash-LLM's)")
    ap.add_argument("--index", choices=["auto", "bitmap", "csl"], default="auto",
                    help="in-tile position index (auto: bitmap up to 4 bytes per non-zero, ~93%% sparsity, csl above; "
                         "csl's kernel is slower)")
    ap.add_argument("--calib-tokens", type=int, default=8192, help="calibration tokens for wanda")
    ap.add_argument("--eval-tokens", type=int, default=2048, help="held-out tokens for --eval / --sweep")
    ap.add_argument("--seq-len", type=int, default=256, help="tokens per calibration / evaluation sequence")
    ap.add_argument("--eval", action="store_true", help="also report held-out perplexity, dense and pruned")
    ap.add_argument("--sweep", type=float, nargs="+", default=None, metavar="S",
                    help="instead of writing OUT: perplexity at each sparsity for --methods (table, --json, --plot)")
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS), help="methods for --sweep")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's choice)")
    ap.add_argument("--json", default=None, metavar="FILE", help="write the report as JSON ('-' for stdout)")
    ap.add_argument("--plot", default=None, metavar="FILE.png", help="--sweep: perplexity against sparsity")
    return ap


def _check(args, ap) -> None:
    """Every bad input is refused here, before the model is read."""
    for s in [args.sparsity] + (args.sweep or []):
        check_sparsity(s)
    if args.sweep is None and args.out is None:
        raise ValueError("give OUT, the pruned checkpoint to write (or --sweep S ... for a quality table)")
    if args.sweep is not None and args.out is not None:
        raise ValueError("--sweep writes no checkpoint; drop OUT (or drop --sweep)")
    if args.plot and args.sweep is None:
        raise ValueError("--plot draws the --sweep curve; add --sweep S ...")
    if args.out is not None:
        out = Path(args.out)
        if out.suffix != ".safetensors":
            raise ValueError(f"OUT must end in .safetensors, got {out.name}")
        if out.exists() and out.is_dir():
            raise ValueError(f"OUT {out} is a folder; give a file name ending in .safetensors")
    if args.model != "default" and not Path(args.model).exists():
        raise FileNotFoundError(f"model not found: {args.model}")
    for name in ("calib_tokens", "eval_tokens", "seq_len"):
        if getattr(args, name) < 16:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 16")


def _check_source(ck) -> None:
    from ...errors import UnsupportedError
    from ..llm.checkpoint import VARIANTS

    if ck.format in VARIANTS:
        raise UnsupportedError(f"{Path(ck.path).name} is already a {ck.format} checkpoint; prune the dense model it "
                               "was made from (a .gguf file or a Hugging Face folder)")


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    _check(args, ap)

    import torch

    from ...report import emit_json, print_table
    from .. import build_model, load_checkpoint
    from ..offload.text import load_text, token_batches

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    ck = load_checkpoint(None if args.model == "default" else args.model)
    _check_source(ck)
    model = build_model(ck, "cpu", torch.float32, weights="dense")  # scores in fp32; packing casts to --dtype
    tok = ck.tokenizer
    calib = token_batches(tok, load_text("calibration"), args.seq_len, max_tokens=args.calib_tokens)
    held = token_batches(tok, load_text("heldout"), args.seq_len, max_tokens=args.eval_tokens)
    common = {"model": str(ck.path), "format": ck.format, "params": ck.args.n_params, "seq_len": args.seq_len,
              "calibration": "ioaware/runtime/offload/data/calibration.txt",
              "heldout": "ioaware/runtime/offload/data/heldout.txt"}
    if args.sweep is not None:
        res = _sweep(model, args, calib, held, common)
    else:
        res = _prune_one(model, tok, args, calib, held, common)
    res["runtime_s"] = time.perf_counter() - t0
    res["command"] = "ioaware prune " + " ".join(argv if argv is not None else [])
    if args.sweep is not None:
        print_table(f"held-out perplexity vs sparsity ({Path(ck.path).name}, {res['eval_tokens']} tokens; "
                    f"dense {res['dense_ppl']:.3f})", ["method", "sparsity", "achieved", "ppl", "ppl / dense"],
                    [[r["method"], r["target_sparsity"], f"{r['sparsity']:.3f}", f"{r['ppl']:.3f}",
                      f"{r['ppl_ratio']:.3f}"] for r in res["rows"]])
        if args.plot:
            from .quality import plot_sweep

            plot_sweep(res["rows"], res["dense_ppl"], args.plot, f"{Path(ck.path).name}: pruning quality")
            print(f"plot written to {args.plot}")
    else:
        rows = [["method", res["method"]], ["sparsity (target / achieved)",
                                            f"{res['target_sparsity']:.3f} / {res['sparsity']:.3f}"],
                ["projections", f"{res['projections']} ({res['index_counts']})"],
                ["bytes: dense fp16 / packed", f"{res['dense_bytes'] / 1e6:.1f} MB / {res['packed_bytes'] / 1e6:.1f} MB"
                 f" ({res['bytes_per_nnz']:.2f} B per non-zero)"],
                ["written", f"{res['out']} ({res['file_bytes'] / 1e6:.1f} MB)"]]
        if "ppl_pruned" in res:
            rows.append(["held-out perplexity dense / pruned", f"{res['ppl_dense']:.3f} / {res['ppl_pruned']:.3f}"])
        print_table("ioaware prune", ["", "value"], rows)
    emit_json(res, args.json)
    return 0


def _prune_one(model, tok, args, calib, held, common) -> dict:
    import torch

    from .model_io import save_pruned, sparsify_model
    from .prune import prune_model
    from .quality import perplexity

    res = dict(common)
    if args.eval:
        res["ppl_dense"] = perplexity(model, held, progress=True, label="dense")["ppl"]
    rep = prune_model(model, args.sparsity, args.method, calib if args.method == "wanda" else None, progress=True)
    res.update(rep)
    if args.eval:  # the pruned dense weights compute exactly what the packed ones do (unpack(pack(W)) == W)
        res["ppl_pruned"] = perplexity(model, held, progress=True, label="pruned")["ppl"]
        res["ppl_ratio"] = res["ppl_pruned"] / res["ppl_dense"]
    dtype = getattr(torch, args.dtype)
    model.to(dtype)
    packed = sparsify_model(model, index=args.index, progress=True)
    nnz = sum(p.nnz for p in packed.values())
    res.update(projections=len(packed), nnz=nnz, packed_bytes=sum(p.nbytes for p in packed.values()),
               dense_bytes=sum(p.shape[0] * p.shape[1] * 2 for p in packed.values()),
               index_counts={k: sum(p.index == k for p in packed.values()) for k in ("bitmap", "csl")},
               dtype=args.dtype)
    res["bytes_per_nnz"] = res["packed_bytes"] / max(nnz, 1)
    meta = {k: res[k] for k in ("method", "target_sparsity", "sparsity", "calibration_tokens", "model")}
    path = save_pruned(args.out, model, packed, tok, meta, dtype=dtype)
    res.update(out=str(path), file_bytes=path.stat().st_size)
    return res


def _sweep(model, args, calib, held, common) -> dict:
    from .model_io import block_linears
    from .prune import prune_model
    from .quality import perplexity

    original = {id(lin): lin.weight.detach().clone() for _, _, lin in block_linears(model)}

    def restore():
        for _, _, lin in block_linears(model):
            lin.weight.data.copy_(original[id(lin)])

    dense = perplexity(model, held, progress=True, label="dense")
    rows = []
    for method in args.methods:
        for s in args.sweep:
            restore()
            rep = prune_model(model, s, method, calib if method == "wanda" else None, progress=True)
            ppl = perplexity(model, held, progress=True, label=f"{method} {s:g}")["ppl"]
            rep.pop("sparsity_per_projection")
            rows.append({**rep, "ppl": ppl, "ppl_ratio": ppl / dense["ppl"]})
    restore()
    return {**common, "dense_ppl": dense["ppl"], "eval_tokens": dense["tokens"],
            "calibration_tokens": sum(b.numel() for b in calib), "rows": rows}
