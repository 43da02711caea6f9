"""`ioaware sim cambricon`: Cambricon-LLM (an NPU beside a flash chiplet whose dies compute) decoding one token.

    ioaware sim cambricon --model llama2-70b --config L            # one token, event model, beside Fig. 9
    ioaware sim cambricon --fig9 --plot fig9.png --json fig9.json  # the 21 points, their errors, the ablations
    ioaware sim cambricon --fit                                    # refit the one fitted constant
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

from ...report import emit_json, print_table

SIM_DATE = "2026-12-02"


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="ioaware sim cambricon", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="llama2-70b", help="opt-6.7b ... opt-66b, llama2-7b/13b/70b")
    ap.add_argument("--config", default="L", help="flash chiplet of Table II: S, M or L")
    ap.add_argument("--engine", default="event", choices=["event", "closed"],
                    help="event: SimPy event model; closed: the closed form")
    ap.add_argument("--context", type=int, default=None, help="tokens in the KV cache (default 1000)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the per-request retry draws")
    ap.add_argument("--fig9", action="store_true", help="all 21 points of Fig. 9, their errors, the two ablations")
    ap.add_argument("--fit", action="store_true", help="refit the retry probability on Fig. 9 and compare")
    ap.add_argument("--plot", default=None, help="PNG: tokens/s vs configuration, the paper's points overlaid")
    ap.add_argument("--json", default=None, help="write the results as JSON (- for stdout)")
    return ap


def _progress(desc: str):
    """A rich progress bar on stderr; returns (update(i, n), close())."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    prog = Progress(desc, BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=Console(stderr=True),
                    transient=True)
    prog.start()
    task = prog.add_task(desc, total=None)

    def update(i: int, n: int) -> None:
        prog.update(task, completed=i, total=n)

    return update, prog.stop


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from dataclasses import replace

    from .configs import CONSTANTS, FIG9, FIG9_CONFIGS, FLASH, NPU, RETRY_PROBABILITY
    from .models import get_model

    # validate everything before any work
    model = get_model(args.model)
    cfg_name = args.config.upper()
    if cfg_name not in FLASH:
        raise ValueError(f"unknown configuration {args.config!r}; Table II has S, M and L")
    if args.context is not None and args.context < 0:
        raise ValueError(f"--context must be >= 0 tokens, got {args.context}")
    npu = NPU if args.context is None else replace(NPU, context=args.context)
    if args.fig9 and args.context not in (None, NPU.context):
        raise ValueError("--fig9 compares with the paper at the reference context (1000 tokens); drop --context")

    out: dict = {"command": "ioaware sim cambricon " + " ".join(argv if argv is not None else sys.argv[1:]),
                 "date": SIM_DATE, "machine": platform.machine(), "python": platform.python_version(),
                 "retry_probability": RETRY_PROBABILITY,
                 "constants": [c.__dict__ for c in CONSTANTS],
                 "constant_counts": {k: sum(c.kind == k for c in CONSTANTS) for k in ("paper", "assumed", "fitted")}}
    out["token"] = _one_token(model, FLASH[cfg_name], args.engine, npu, args.seed)
    if args.fit:
        out["fit"] = _fit(npu)
    if args.fig9:
        out["fig9"], out["ablations"] = _fig9(args.engine, args.seed)
    if args.plot:
        _plot(args.plot, out, model.name, FIG9, FIG9_CONFIGS)
        print(f"plot: {args.plot}")
    emit_json(out, args.json)
    return 0


def _one_token(model, cfg, engine: str, npu, seed: int) -> dict:
    from .configs import FIG9, FIG9_CONFIGS, FLASH
    from .event import simulate_token
    from .tiling import byte_split, channel_util, hardware_tile, request_split, t_rc, t_read_sliced
    from .timing import token_time

    tile = hardware_tile(cfg)
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    tt = simulate_token(model, cfg, npu=npu, seed=seed) if engine == "event" else token_time(model, cfg, npu=npu)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    closed = token_time(model, cfg, npu=npu)
    ref = FIG9.get(model.name, (None,) * 3)[FIG9_CONFIGS.index(cfg.name)] if model.name in FIG9 else None
    rows = [["tile H x W", f"{tile.H:.0f} x {tile.W:.0f}"], ["t_rc (us)", f"{t_rc(tile, cfg) * 1e6:.3f}"],
            ["channel use u", f"{channel_util(tile, cfg):.4f}"],
            ["t_r sliced (us)", f"{t_read_sliced(tile, cfg) * 1e6:.3f}"],
            ["split (requests)", f"{request_split(tile, cfg):.3f}"],
            ["split (bytes, steady)", f"{byte_split(tile, cfg):.3f}"],
            ["read-compute share (token)", f"{tt.rc_fraction:.3f}"], ["read-compute requests", tt.rounds],
            ["ms / token", f"{tt.seconds * 1e3:.2f}"], ["  of which attention (NPU)", f"{tt.attention_s * 1e3:.2f}"],
            ["tokens/s", f"{tt.tokens_per_s:.3f}"], ["closed form tokens/s", f"{closed.tokens_per_s:.3f}"],
            ["event vs closed", f"{tt.tokens_per_s / closed.tokens_per_s - 1:+.2%}"]]
    if ref is not None:
        rows += [["paper (Fig. 9) tokens/s", f"{ref}"], ["error vs paper", f"{tt.tokens_per_s / ref - 1:+.1%}"]]
    rows += [["simulation wall / CPU (s)", f"{wall:.2f} / {cpu:.2f}"]]
    print_table(f"Cambricon-LLM-{cfg.name}, {model.name}, one decode token ({engine})", ["quantity", "value"], rows)
    by_cfg = {c: token_time(model, FLASH[c], npu=npu).tokens_per_s for c in FIG9_CONFIGS}
    return {"model": model.name, "config": cfg.name, "engine": engine, "seed": seed, "context": npu.context,
            "tile": [tile.H, tile.W], "t_rc_s": t_rc(tile, cfg), "u": channel_util(tile, cfg),
            "t_r_s": t_read_sliced(tile, cfg), "request_split": request_split(tile, cfg),
            "rc_byte_fraction": tt.rc_fraction, "read_compute_requests": tt.rounds, "seconds": tt.seconds,
            "attention_s": tt.attention_s, "tokens_per_s": tt.tokens_per_s, "closed_tokens_per_s": closed.tokens_per_s,
            "paper_tokens_per_s": ref, "sim_wall_s": wall, "sim_cpu_s": cpu,
            "closed_tokens_per_s_by_config": by_cfg}


def _fit(npu) -> dict:
    from .configs import RETRY_PROBABILITY
    from .fig9 import fit_retry_probability

    p = fit_retry_probability(npu)
    print_table("refit of the retry probability (mean |error| over Fig. 9, closed form)", ["", "p"],
                [["stored (configs.RETRY_PROBABILITY)", f"{RETRY_PROBABILITY:.4g}"], ["refit", f"{p:.4g}"]])
    return {"refit": p, "stored": RETRY_PROBABILITY}


def _fig9(engine: str, seed: int) -> tuple[dict, dict]:
    from .fig9 import ablations, reproduce

    update, stop = _progress(f"Fig. 9 ({engine})")
    try:
        r = reproduce(engine, seed=seed, progress=update)
    finally:
        stop()
    rows = [[p["model"], p["config"], p["paper_tok_s"], round(p["sim_tok_s"], 3), f"{p['rel_err']:+.1%}",
             f"{p['rc_byte_fraction']:.2f}", f"{p['attention_ms'] / p['ms_per_token']:.1%}"] for p in r["points"]]
    print_table(f"Fig. 9 decode tokens/s: paper vs simulated ({engine}); mean |err| {r['mean_abs_rel_err']:.1%}, "
                f"max {r['max_abs_rel_err']:.1%}",
                ["model", "config", "paper", "sim", "error", "read-compute share", "attention share"], rows)
    update, stop = _progress(f"ablations ({engine})")
    try:
        a = ablations(engine, seed=seed, progress=update)
    finally:
        stop()
    print_table("ablations: speedup of the full design over a design without the feature",
                ["feature", "sim min", "sim max", "paper"],
                [[k, round(a[k]["min"], 3), round(a[k]["max"], 3), f"{a[k]['paper'][0]}-{a[k]['paper'][1]}"]
                 for k in ("read_slicing", "tiling")])
    return r, a


def _plot(path: str, out: dict, model_name: str, fig9: dict, configs: tuple) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    x = range(len(configs))
    if "fig9" in out:
        pts = out["fig9"]["points"]
        for k, m in enumerate(fig9):
            color = f"C{k}"
            sim = [next(p["sim_tok_s"] for p in pts if p["model"] == m and p["config"] == c) for c in configs]
            ax.plot(x, sim, "-", color=color, label=f"{m} (sim)")
            ax.plot(x, fig9[m], "o", color=color, mfc="none", ms=8)
        title = (f"Cambricon-LLM Fig. 9: lines simulated ({out['fig9']['engine']}), circles the paper; "
                 f"mean |err| {out['fig9']['mean_abs_rel_err']:.1%}")
    else:
        sim = [out["token"]["closed_tokens_per_s_by_config"][c] for c in configs]
        ax.plot(x, sim, "-o", label=f"{model_name} (sim, closed form)")
        if model_name in fig9:
            ax.plot(x, fig9[model_name], "s", mfc="none", ms=9, label="paper (Fig. 9)")
        title = f"Cambricon-LLM, {model_name}: decode tokens/s"
    ax.set_xticks(list(x), [f"Cambricon-LLM-{c}" for c in configs])
    ax.set_yscale("log")
    ax.set_ylabel("decode tokens/s")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
