"""`ioaware sim pim`: PIM-GPT's GPT decode speed-ups and energy ratios, simulated command by command, beside the paper.

    ioaware sim pim                       # all 8 models, the paper comparison
    ioaware sim pim --model gpt2-xl       # one model: time and energy breakdown
    ioaware sim pim --json out.json --plot out.png
"""

from __future__ import annotations

import argparse
import time

from ...report import emit_json, print_table
from .gpt import MODELS
from .reproduce import CPU_W_DEFAULT, reproduce, sweep_channels
from .timing import TIMINGS, PimConfig


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="ioaware sim pim", description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="all", help=f"one of {', '.join(MODELS)}, a comma list, or 'all' (default)")
    ap.add_argument("--context", type=int, default=512,
                    help="tokens in the KV cache (default 512: the middle of a 1024-token generation)")
    ap.add_argument("--channels", type=int, default=8, help="GDDR6-PIM channels (default 8; ASSUMED, see README)")
    ap.add_argument("--act-mode", choices=("all-bank", "per-bank"), default="all-bank",
                    help="all-bank: AiM's one-command ACT of 16 banks; per-bank: JEDEC ACTs under tRRD/tFAW")
    ap.add_argument("--timing", choices=sorted(TIMINGS), default="gddr6", help="DRAM timing preset")
    ap.add_argument("--gpu-dtype", choices=("float32", "float16"), default="float32",
                    help="dtype of the T4 baseline (float32: Hugging Face's default for GPT-2)")
    ap.add_argument("--cpu-watts", type=float, default=CPU_W_DEFAULT, help="CPU power for its energy (ASSUMED)")
    ap.add_argument("--all-layers", action="store_true", help="simulate every layer instead of one x n_layers")
    ap.add_argument("--json", default=None, metavar="FILE", help="write the results as JSON ('-' for stdout)")
    ap.add_argument("--plot", default=None, metavar="FILE", help="write a PNG: speed-ups, breakdown, channel sweep")
    return ap


def _validate(args) -> list[str]:
    names = list(MODELS) if args.model == "all" else [s.strip() for s in args.model.split(",") if s.strip()]
    bad = [n for n in names if n not in MODELS]
    if bad or not names:
        raise ValueError(f"unknown model {', '.join(bad) or repr(args.model)}; known: {', '.join(MODELS)} or 'all'")
    if args.context < 1:
        raise ValueError(f"--context must be >= 1 token (got {args.context})")
    if args.channels < 1:
        raise ValueError(f"--channels must be >= 1 (got {args.channels})")
    if args.cpu_watts <= 0:
        raise ValueError(f"--cpu-watts must be > 0 (got {args.cpu_watts})")
    return names


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    names = _validate(args)
    cfg = PimConfig().with_(channels=args.channels, act_mode=args.act_mode, timing=args.timing)
    from rich.console import Console
    from rich.progress import Progress

    t0 = time.perf_counter()
    with Progress(transient=True, console=Console(stderr=True)) as prog:
        task = prog.add_task("simulating decode steps", total=len(names))
        res = reproduce(names, args.context, cfg, gpu_dtype=args.gpu_dtype, cpu_w=args.cpu_watts,
                        all_layers=args.all_layers, progress=lambda n: prog.advance(task))
    res["command"] = "ioaware sim pim " + " ".join(argv if argv is not None else [])
    res["wall_s"] = time.perf_counter() - t0
    res["date"] = time.strftime("%Y-%m-%d")
    _print(res)
    if args.plot:
        sweep = sweep_channels(names, [4, 8, 16, 32], args.context, cfg, args.gpu_dtype)
        res["channel_sweep_speedup_gpu"] = sweep
        _plot(res, sweep, args.plot)
        print(f"wrote {args.plot}")
    emit_json(res, args.json)
    return 0


def _print(res: dict) -> None:
    c = res["config"]
    rows = [[r["model"], f"{r['params'] / 1e9:.2f}B", r["pim_s"] * 1e3, r["pim_roofline_s"] * 1e3, r["t4_s"] * 1e3,
             (r["cpu_s"] or 0) * 1e3, r["speedup_gpu"], r["speedup_cpu"] or "-", r["pim_energy_j"] * 1e3,
             r["pim_power_w"], r["energy_gpu"], r["energy_cpu"] or "-"] for r in res["models"]]
    print_table(f"PIM-GPT decode step at context {c['context']}: {c['channels']} ch x {PimConfig().banks} banks, "
                f"{c['act_mode']} ACT, {c['timing']} ({c['internal_GBps']:.0f} GB/s in-bank); T4 {c['gpu_dtype']} "
                f"modelled, CPU measured",
                ["model", "params", "PIM ms", "PIM floor ms", "T4 ms", "CPU ms", "x GPU", "x CPU", "PIM mJ", "PIM W",
                 "energy x GPU", "energy x CPU"], rows)
    mc = res["baselines"]["info"]["measured_context"]
    if mc != c["context"]:
        print(f"note: the CPU times and the GPU kernel counts were measured at context {mc}, not {c['context']}; the "
              "T4 model moves the KV bytes of the new context, the CPU column does not")
    cmp_ = res.get("comparison")
    if cmp_:
        names = {"speedup_gpu": "speed-up over GPU", "speedup_cpu": "speed-up over CPU",
                 "energy_gpu": "energy efficiency over GPU", "energy_cpu": "energy efficiency over CPU"}
        crow = []
        for k, label in names.items():
            v = cmp_[k]
            if v["ours"] is None:
                crow.append([label, "-", f"{v['paper'][0]:.0f}-{v['paper'][1]:.0f}", "-", "-", "no baseline"])
                continue
            crow.append([label, f"{v['ours'][0]:.0f}-{v['ours'][1]:.0f}", f"{v['paper'][0]:.0f}-{v['paper'][1]:.0f}",
                         f"{v['error_min']:+.0%}", f"{v['error_max']:+.0%}",
                         v["range_bar"]["verdict"] if isinstance(v["bar"], str) else
                         f"±25%: {v['bar']['within_25pct']}, order: {v['bar']['order_kept']}"])
        print_table("Beside the paper (ranges over the 8 models; arXiv 2310.09385 v2)",
                    ["figure", "ours", "paper", "error at min", "error at max", "per-model ±25% bar"], crow)
        prow = []
        for r in res["models"]:
            line = [r["model"]]
            for k in ("speedup_gpu", "speedup_cpu"):
                v = cmp_[k]
                if v["ours"] is None:
                    line += ["-", "-", "-", "-"]
                    continue
                pm, rb = v["per_model"][r["model"]], v["range_bar"]
                line += [pm["ours"], pm["paper"] if pm["paper"] is not None else "n/a",
                         f"{pm['error']:+.0%}" if pm["error"] is not None else "n/a",
                         "fails" if r["model"] in rb["models_outside"] else "open"]
            prow.append(line)
        print_table("Per model (paper figures: not in any retrievable text; 'fails' = outside ±25% of every value in "
                    "the paper's range)", ["model", "x GPU", "paper", "error", "range check", "x CPU", "paper",
                                          "error", "range check"], prow)
        for k in ("speedup_gpu", "speedup_cpu"):
            rb = cmp_[k].get("range_bar")
            if not rb or "ends" not in rb:
                continue
            hi = rb["ends"]["hi"]
            print(f"{names[k]}: allowed for any model {rb['allowed_for_any_model'][0]:.0f}-"
                  f"{rb['allowed_for_any_model'][1]:.0f}x, {len(rb['models_outside'])} of {len(res['models'])} "
                  f"outside; the paper's top model ({hi['paper']:.0f}x) needs one of ours in {hi['window'][0]:.0f}-"
                  f"{hi['window'][1]:.0f}x, closest {hi['closest']} at {hi['closest_error']:+.0%}; verdict: "
                  f"{rb['verdict']}")
            print("  our order, low to high: " + " < ".join(cmp_[k]["order_ours_low_to_high"])
                  + " (the paper's order is not in any retrievable text)")
        imp = cmp_["implied"]
        print(f"paper's implied PIM power (70 W T4 x speed-up / energy ratio at its range ends): "
              f"{imp['paper_pim_power_w_from_gpu_ends'][0]:.1f}-{imp['paper_pim_power_w_from_gpu_ends'][1]:.1f} W; "
              f"paper's CPU/GPU time ratio at its ends: {imp['paper_cpu_over_gpu_time_ends'][0]:.1f}, "
              f"{imp['paper_cpu_over_gpu_time_ends'][1]:.1f}; ours (measured CPU / modelled T4): "
              + ", ".join(f"{v:.1f}" for v in imp["ours_cpu_over_gpu_time"].values() if v))
    val = res["baselines"]["gpu_model_validation_on_lease"]
    if val:
        print_table(f"GPU kernel model vs measurement on the lease ({res['baselines']['info']['gpu']}, "
                    f"h = {res['baselines']['host_s_per_kernel'] * 1e6:.1f} us/kernel from gpt2-small)",
                    ["model", "kernels", "measured ms", "predicted ms", "error"],
                    [[k, v["kernels"], v["measured_s"] * 1e3, v["predicted_s"] * 1e3, f"{v['error']:+.1%}"]
                     for k, v in val.items()])
    if len(res["models"]) == 1:
        r = res["models"][0]
        tot = r["pim_s"]
        print_table(f"{r['model']}: where the step's time goes", ["operator", "us", "share"],
                    [[k, v * 1e6, f"{v / tot:.1%}"] for k, v in r["pim_breakdown_s"].items()])
        et = r["pim_energy_j"]
        print_table(f"{r['model']}: energy per token", ["component", "uJ", "share"],
                    [[k, v * 1e6, f"{v / et:.1%}"] for k, v in r["pim_energy_breakdown_j"].items()])
        print(f"event model vs closed form over the products: max difference {r['vmm_event_vs_closed_form']:.2e}")
    n_assumed = sum(1 for a in res["assumptions"] if "ASSUMED" in a["source"])
    print(f"{len(res['assumptions'])} constants, {n_assumed} of them ASSUMED (listed in the JSON and the README)")


def _plot(res: dict, sweep: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = res["models"]
    names = [r["model"] for r in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(1, 3, figsize=(17, 4.8))
    paper = res["paper"]["ranges"]
    for i, (key, label, col) in enumerate((("speedup_gpu", "over T4 GPU", "C0"), ("speedup_cpu", "over CPU", "C1"))):
        vals = [r[key] or 0 for r in rows]
        ax[0].bar(x + (i - 0.5) * 0.4, vals, 0.4, label=f"ours, {label}", color=col)
        lo, hi = paper[key]
        ax[0].axhspan(lo, hi, color=col, alpha=0.15, label=f"paper {label}: {lo:.0f}-{hi:.0f}x")
        ax[0].axhline(0.75 * lo, color=col, ls=":", lw=1, label=f"-25% of the paper's lowest {label}")
    ax[0].set_yscale("log")
    ax[0].set_xticks(x, names, rotation=45, ha="right")
    ax[0].set_ylabel("speed-up per token")
    ax[0].set_title("Speed-up (bars) vs the paper's range (bands)")
    ax[0].legend(fontsize=7)
    groups = {"weights (qkv, proj, ffn)": ("qkv", "proj", "ffn1", "ffn2"), "attention (score, sv)": ("score", "sv"),
              "KV write": ("kv_write",), "ASIC (norms, softmax, GELU, ...)": ("ln1", "ln2", "softmax", "gelu",
                                                                            "residual1", "residual2", "ln_f", "argmax",
                                                                            "embed"),
              "LM head": ("lm_head",)}
    bottom = np.zeros(len(rows))
    for g, keys in groups.items():
        v = np.array([sum(r["pim_breakdown_s"].get(k, 0.0) for k in keys) * 1e3 for r in rows])
        ax[1].bar(x, v, bottom=bottom, label=g)
        bottom += v
    ax[1].plot(x, [r["pim_roofline_s"] * 1e3 for r in rows], "k_", ms=18, mew=2, label="in-bank bandwidth floor")
    ax[1].set_xticks(x, names, rotation=45, ha="right")
    ax[1].set_ylabel("ms per token")
    ax[1].set_title("PIM-GPT step, simulated")
    ax[1].legend(fontsize=7)
    for n, s in sweep.items():
        ch = sorted(s, key=int)
        ax[2].plot(ch, [s[c] for c in ch], "o-", label=n)
    ax[2].axhspan(*paper["speedup_gpu"], color="C0", alpha=0.15, label="paper over GPU")
    ax[2].set_xscale("log", base=2)
    ax[2].set_yscale("log")
    ax[2].set_xlabel("PIM channels (the paper's count: not in its retrievable text; default 8)")
    ax[2].set_ylabel("speed-up over T4")
    ax[2].set_title("Sensitivity to the channel count")
    ax[2].legend(fontsize=6, ncol=2)
    fig.suptitle(f"PIM-GPT reproduction: {res['config']['act_mode']} ACT, context {res['config']['context']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
