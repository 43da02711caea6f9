"""`ioaware sim csd`: InstInfer (KV cache and decode attention inside computational storage) vs FlexGen (KV cache on
an SSD behind the host), decode throughput on an A6000 as the sequence grows.

    ioaware sim csd                                      # OPT-13B, batch 16, prompt = gen = 128 ... 4096
    ioaware sim csd --model llama2-13b --lengths 2048    # one setting
    ioaware sim csd --plot csd.png --json csd.json
"""

from __future__ import annotations

import argparse
import platform
import sys

from ...report import emit_json, print_table

SIM_DATE = "2026-12-02"
PAPER_SETTINGS = [("opt-13b", 1024), ("opt-30b", 1024), ("llama2-13b", 2048)]  # InstInfer's in/out lengths


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="ioaware sim csd", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="opt-13b", help="opt-13b, opt-30b, llama2-13b (or another decoder shape)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lengths", default="128,256,512,1024,2048,4096",
                    help="comma-separated prompt lengths; each generates as many tokens as its prompt")
    ap.add_argument("--micro-batches", type=int, default=2, help="InstInfer's GPU/CSD pipelining (1: serial)")
    ap.add_argument("--csds", type=int, default=1, help="computational storage drives the KV cache is spread over")
    ap.add_argument("--engine", default="closed", choices=["closed", "event"],
                    help="InstInfer's decode step: closed form or SimPy events")
    ap.add_argument("--plot", default=None, help="PNG: tokens/s and speedup vs sequence length, the paper's 11.1x")
    ap.add_argument("--json", default=None, help="write the results as JSON (- for stdout)")
    return ap


def _lengths(text: str) -> list[int]:
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--lengths must be comma-separated integers, got {text!r}") from None
    if not out or min(out) < 1:
        raise ValueError(f"--lengths needs at least one length >= 1, got {text!r}")
    return out


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from dataclasses import replace

    from ..cambricon.models import get_model
    from .configs import CONSTANTS, CSD, PAPER
    from .model import Setup, asymptotic_speedup, generation

    model = get_model(args.model)
    lengths = _lengths(args.lengths)
    if args.csds < 1:
        raise ValueError(f"--csds must be >= 1, got {args.csds}")
    st = Setup(model, batch=args.batch, micro_batches=args.micro_batches, csd=replace(CSD, count=args.csds))

    from rich.console import Console
    from rich.progress import Progress

    rows, sweep = [], []
    with Progress(console=Console(stderr=True), transient=True) as prog:
        task = prog.add_task("sequence lengths", total=len(lengths) + len(PAPER_SETTINGS))
        for L in lengths:
            g = generation(st, L, L, args.engine, stride=max(1, L // 64))
            g["asymptote"] = asymptotic_speedup(st, L + L // 2)
            sweep.append(g)
            rows.append([L, round(g["flexgen_decode_tok_s"], 2), round(g["instinfer_decode_tok_s"], 2),
                         f"{g['speedup_decode']:.2f}x", f"{g['speedup_e2e']:.2f}x", f"{g['asymptote']:.2f}x"])
            prog.advance(task)
        paper = []
        for name, L in PAPER_SETTINGS:
            s2 = replace(st, model=get_model(name))
            g = generation(s2, L, L, args.engine, stride=max(1, L // 64))
            paper.append(g)
            prog.advance(task)
    print_table(f"{model.name}, batch {args.batch}, prompt = gen = L: decode tokens/s ({args.engine}); "
                f"the paper: up to {PAPER['headline_speedup']}x on a 13B model at long sequences",
                ["L", "FlexGen", "InstInfer", "speedup", "speedup e2e", "ceiling"], rows)
    print_table(f"InstInfer's evaluation settings (batch {args.batch})",
                ["model", "in/out", "GPU weights", "FlexGen tok/s", "InstInfer tok/s", "speedup"],
                [[g["model"], f"{g['prompt']}/{g['gen']}", f"{g['gpu_weight_fraction']:.0%}",
                  round(g["flexgen_decode_tok_s"], 2), round(g["instinfer_decode_tok_s"], 2),
                  f"{g['speedup_decode']:.2f}x"] for g in paper])
    best = max(sweep, key=lambda g: g["speedup_decode"])
    out = {"command": "ioaware sim csd " + " ".join(argv if argv is not None else sys.argv[1:]),
           "date": SIM_DATE, "machine": platform.machine(), "python": platform.python_version(),
           "model": model.name, "batch": args.batch, "engine": args.engine, "micro_batches": args.micro_batches,
           "csds": args.csds, "sweep": sweep, "paper_settings": paper,
           "paper": PAPER, "max_speedup": best["speedup_decode"], "max_speedup_at": best["prompt"],
           "constants": [c.__dict__ for c in CONSTANTS]}
    print(f"max speedup {best['speedup_decode']:.2f}x at L = {best['prompt']} (paper: up to "
          f"{PAPER['headline_speedup']}x)")
    if args.plot:
        _plot(args.plot, out)
        print(f"plot: {args.plot}")
    emit_json(out, args.json)
    return 0


def _plot(path: str, out: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sw = out["sweep"]
    L = [g["prompt"] for g in sw]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    a.plot(L, [g["flexgen_decode_tok_s"] for g in sw], "-o", label="FlexGen (KV on SSD, CPU attention)")
    a.plot(L, [g["instinfer_decode_tok_s"] for g in sw], "-s", label="InstInfer (KV + attention in CSD)")
    a.set_xscale("log", base=2)
    a.set_yscale("log")
    a.set_xlabel("prompt = generated tokens")
    a.set_ylabel("decode tokens/s")
    a.set_title(f"{out['model']}, batch {out['batch']}, A6000 (simulated)", fontsize=9)
    a.legend(fontsize=8)
    a.grid(True, which="both", alpha=0.3)
    b.plot(L, [g["speedup_decode"] for g in sw], "-o", label="simulated speedup")
    b.plot(L, [g["asymptote"] for g in sw], ":", color="gray", label="ceiling (KV-bound)")
    p = out["paper"]
    b.axhline(p["headline_speedup"], color="C3", ls="--", label=f"paper: up to {p['headline_speedup']}x (13B, long)")
    b.plot([p["prompt"]], [p["headline_speedup"]], "*", color="C3", ms=13)
    b.set_xscale("log", base=2)
    b.set_xlabel("prompt = generated tokens")
    b.set_ylabel("InstInfer / FlexGen throughput")
    b.set_ylim(0, max(p["headline_speedup"], max(g["speedup_decode"] for g in sw)) * 1.2)
    b.legend(fontsize=8)
    b.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
