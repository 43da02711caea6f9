"""`ioaware sim rdu`: SambaNova SN40L — model switching from DDR, fused vs kernel-by-kernel, composition of experts.

    ioaware sim rdu                                   # the three headlines beside the paper
    ioaware sim rdu --experts 150 --plot rdu.png      # plus a CoE serving run and a figure
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

from ...report import emit_json, print_table
from .coe import cache_slots, dgx_steps, dgx_switch_s, rdu_steps, simulate_coe, switch_closed_form, switch_event_s
from .dataflow import benchmarks, fused_s, unfused_s
from .spec import MODELS, PAPER, RduSocket, dgx_h100, get_model

_MEASURED_H2D = Path(__file__).resolve().parents[1] / "pim" / "measured_h200.json"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="ioaware sim rdu", description=__doc__.split("\n")[0])
    ap.add_argument("--experts", type=int, default=150, help="experts in the CoE run (Samba-CoE: 150)")
    ap.add_argument("--expert-model", default="llama-2-7b", help=f"shape of each expert: {', '.join(MODELS)}")
    ap.add_argument("--requests", type=int, default=2000, help="requests in the CoE run")
    ap.add_argument("--zipf", type=float, default=1.0, help="expert popularity ~ 1/rank^zipf (ASSUMED 1.0)")
    ap.add_argument("--prompt", type=int, default=512, help="prompt tokens per request")
    ap.add_argument("--gen", type=int, default=128, help="generated tokens per request")
    ap.add_argument("--sockets", type=int, default=8, help="sockets of the CoE node (the paper's node: 8)")
    ap.add_argument("--kernel-overhead-us", type=float, default=None,
                    help="unfused kernel boundary (default 10 us, ASSUMED; see README)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, metavar="FILE", help="write the results as JSON ('-' for stdout)")
    ap.add_argument("--plot", default=None, metavar="FILE", help="write a PNG of switching, fusion and the CoE run")
    return ap


def _err(ours: float, paper: float) -> float:
    return ours / paper - 1


def run(args) -> dict:
    s = RduSocket()
    if args.kernel_overhead_us is not None:
        s = replace(s, kernel_overhead_s=args.kernel_overhead_us * 1e-6)
    h2d = None
    if _MEASURED_H2D.exists():
        m = json.loads(_MEASURED_H2D.read_text())
        if "h2d_1GiB" in m:
            h2d = dict(m["h2d_1GiB"], source=f"measured on the GPU lease ({m.get('gpu')}, {m.get('date')}), 1 GiB "
                                                "torch copies: ioaware/sim/pim/measured_h200.json")
    box = dgx_h100(h2d)
    out: dict = {"socket": {k: getattr(s, k) for k in s.sources}, "socket_sources": s.sources,
                 "dgx": {"name": box.name, "h2d_pinned_GBps": box.h2d_pinned_Bps / 1e9,
                         "h2d_pageable_GBps": box.h2d_pageable_Bps / 1e9, "sources": box.sources}}

    # 1. model switching, Llama-3.1-8B on the 16-socket rack (the slide's number)
    l8 = MODELS["llama-3.1-8b"]
    paper_sw, src_sw = PAPER["switch_llama31_8b_16sockets_s"]
    ev16, cf16 = switch_event_s(l8.bytes(), 16, s), switch_closed_form(l8.bytes(), 16, s)
    ev_node = switch_event_s(l8.bytes(), 8, s)
    out["switching"] = {"model": l8.name, "bytes": l8.bytes(), "sn40l16_event_s": ev16, "sn40l16_closed_form_s": cf16,
                        "paper_s": paper_sw, "error": _err(ev16, paper_sw), "within_20pct": abs(_err(ev16, paper_sw))
                        <= 0.20, "sn40l8_event_s": ev_node, "source": src_sw}

    # 2. fused vs unfused on 8 sockets
    (lo, hi), src_f = PAPER["fused_vs_unfused"]
    fus = []
    for w in benchmarks(MODELS, 8):
        f, u = fused_s(w, s), unfused_s(w, s)
        fus.append({"workload": w.name, "fused_s": f, "unfused_s": u, "speedup": u / f})
    sp = [r["speedup"] for r in fus]
    out["fusion"] = {"rows": fus, "ours": [min(sp), max(sp)], "paper": [lo, hi], "error_min": _err(min(sp), lo),
                     "error_max": _err(max(sp), hi), "source": src_f}

    # 3. switching vs a DGX H100 (host DRAM -> HBM over PCIe), same expert, 8-socket node
    (dlo, dhi), src_d = PAPER["switch_vs_dgx"]
    dgx = {}
    for pinned in (True, False):
        t = dgx_switch_s(l8.bytes(), box, pinned)
        dgx["pinned" if pinned else "pageable"] = {"dgx_s": t, "sn40l8_s": ev_node, "speedup": t / ev_node}
    both = [v["speedup"] for v in dgx.values()]
    out["switch_vs_dgx"] = {"rows": dgx, "ours": [min(both), max(both)], "paper": [dlo, dhi],
                            "error_min": _err(min(both), dlo), "error_max": _err(max(both), dhi), "source": src_d}

    # 4. composition of experts: footprint and a serving run
    e = get_model(args.expert_model)
    total = args.experts * e.bytes()
    node_fits = total <= args.sockets * s.ddr_bytes
    dgx_needed = -(-total // (box.hbm_bytes * 0.9))  # DGX boxes to keep every expert in HBM
    fp_paper, src_fp = PAPER["footprint_vs_dgx"]
    out["footprint"] = {"experts": args.experts, "expert": e.name, "total_bytes": total,
                        "node_ddr_holds_all": node_fits,
                        "dgx_h100_to_hold_all_in_hbm": int(dgx_needed), "sn40l_nodes": 1, "ours": float(dgx_needed),
                        "paper": fp_paper, "error": _err(dgx_needed, fp_paper), "source": src_fp}
    st_r = rdu_steps(e, args.sockets, s, args.prompt, args.prompt + args.gen // 2)
    st_d = dgx_steps(e, box, args.prompt, args.prompt + args.gen // 2)
    runs = {}
    for name, sw, slots, st in (
            ("SN40L node", switch_event_s(e.bytes(), args.sockets, s), cache_slots(args.sockets * s.hbm_bytes,
                                                                                   e.bytes()), st_r),
            ("DGX H100 (pageable)", dgx_switch_s(e.bytes(), box, False), cache_slots(box.hbm_bytes, e.bytes()), st_d),
            ("DGX H100 (pinned)", dgx_switch_s(e.bytes(), box, True), cache_slots(box.hbm_bytes, e.bytes()), st_d)):
        r = simulate_coe(e, args.experts, args.requests, sw, slots, st, args.prompt, args.gen, args.zipf, args.seed,
                         name)
        runs[name] = {"switch_s_each": sw, "hbm_slots": slots, "hit_rate": r.hit_rate, "switches": r.switches,
                      "switch_s_total": r.switch_s, "compute_s_total": r.compute_s, "total_s": r.total_s,
                      "switch_share": r.switch_s / r.total_s, "tokens_per_s": r.tokens_per_s,
                      "prefill_s": st["prefill"], "decode_s": st["decode"]}
    out["coe"] = {"experts": args.experts, "expert": e.name, "requests": args.requests, "zipf": args.zipf,
                  "seed": args.seed, "prompt": args.prompt, "gen": args.gen, "runs": runs,
                  "note": "the DGX side runs at its HBM roofline (optimistic); 150 x 13.5 GB exceeds its 2 TB host "
                          "memory, which we let hold them anyway"}
    return out


def _validate(args) -> None:
    if args.experts < 1 or args.requests < 1:
        raise ValueError(f"--experts and --requests must be >= 1 (got {args.experts}, {args.requests})")
    if args.sockets < 1:
        raise ValueError(f"--sockets must be >= 1 (got {args.sockets})")
    if args.prompt < 1 or args.gen < 1:
        raise ValueError(f"--prompt and --gen must be >= 1 (got {args.prompt}, {args.gen})")
    if args.zipf < 0:
        raise ValueError(f"--zipf must be >= 0 (got {args.zipf})")
    if args.kernel_overhead_us is not None and args.kernel_overhead_us < 0:
        raise ValueError(f"--kernel-overhead-us must be >= 0 (got {args.kernel_overhead_us})")
    get_model(args.expert_model)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _validate(args)
    t0 = time.perf_counter()
    res = run(args)
    res["command"] = "ioaware sim rdu " + " ".join(argv if argv is not None else [])
    res["date"] = time.strftime("%Y-%m-%d")
    res["wall_s"] = time.perf_counter() - t0
    _print(res)
    if args.plot:
        _plot(res, args)
        print(f"wrote {args.plot}")
    emit_json(res, args.json)
    return 0


def _print(res: dict) -> None:
    sw, fu, dg, fp = res["switching"], res["fusion"], res["switch_vs_dgx"], res["footprint"]
    print_table("SN40L headlines beside the paper", ["headline", "ours", "paper", "error", "bar"], [
        ["switch Llama-3.1-8B, 16 sockets", f"{sw['sn40l16_event_s'] * 1e3:.2f} ms", f"{sw['paper_s'] * 1e3:.0f} ms",
         f"{sw['error']:+.1%}", "±20%: " + ("met" if sw["within_20pct"] else "MISSED")],
        ["fused vs unfused, 8 sockets", f"{fu['ours'][0]:.2f}-{fu['ours'][1]:.2f}x",
         f"{fu['paper'][0]:.0f}-{fu['paper'][1]:.0f}x", f"{fu['error_min']:+.0%} / {fu['error_max']:+.0%}", "-"],
        ["switching vs DGX H100", f"{dg['ours'][0]:.1f}-{dg['ours'][1]:.1f}x",
         f"{dg['paper'][0]:.0f}-{dg['paper'][1]:.0f}x", f"{dg['error_min']:+.0%} / {dg['error_max']:+.0%}", "-"],
        ["CoE footprint vs DGX H100", f"{fp['ours']:.0f}x", f"{fp['paper']:.0f}x", f"{fp['error']:+.0%}", "-"]])
    print(f"switching: event model {sw['sn40l16_event_s'] * 1e3:.4f} ms, closed form "
          f"{sw['sn40l16_closed_form_s'] * 1e3:.4f} ms; 8-socket node {sw['sn40l8_event_s'] * 1e3:.2f} ms")
    print_table("Fused (one graph per decoder layer) vs kernel by kernel, 8 sockets",
                ["workload", "fused ms", "unfused ms", "speed-up"],
                [[r["workload"], r["fused_s"] * 1e3, r["unfused_s"] * 1e3, r["speedup"]] for r in fu["rows"]])
    print_table("Switching one Llama-3.1-8B: SN40L 8-socket node vs DGX H100 (host -> 8 GPUs over PCIe)",
                ["DGX copy from", "DGX ms", "SN40L-8 ms", "speed-up"],
                [[k, v["dgx_s"] * 1e3, v["sn40l8_s"] * 1e3, v["speedup"]] for k, v in dg["rows"].items()])
    c = res["coe"]
    print_table(f"CoE: {c['experts']} x {c['expert']}, {c['requests']} requests (zipf {c['zipf']}), "
                f"{c['prompt']} + {c['gen']} tokens each",
                ["machine", "switch ms", "HBM slots", "hit rate", "switching share", "tokens/s"],
                [[k, v["switch_s_each"] * 1e3, v["hbm_slots"], v["hit_rate"], f"{v['switch_share']:.1%}",
                  v["tokens_per_s"]] for k, v in c["runs"].items()])
    print(f"footprint: {c['experts']} experts = {res['footprint']['total_bytes'] / 1e12:.2f} TB; one SN40L node's DDR "
          f"{'holds' if res['footprint']['node_ddr_holds_all'] else 'does NOT hold'} them; "
          f"{res['footprint']['dgx_h100_to_hold_all_in_hbm']} DGX H100 keep them all in HBM")


def _plot(res: dict, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    s = RduSocket()
    box = dgx_h100({"pinned_GBps": res["dgx"]["h2d_pinned_GBps"], "pageable_GBps": res["dgx"]["h2d_pageable_GBps"]})
    fig, ax = plt.subplots(1, 3, figsize=(17, 4.8))
    sizes = np.array([1, 2, 4, 8, 16, 32, 64, 140]) * 1e9
    ax[0].plot(sizes / 1e9, [switch_event_s(b, 16, s) * 1e3 for b in sizes], "o-", label="SN40L-16 (DDR -> HBM)")
    ax[0].plot(sizes / 1e9, [switch_event_s(b, 8, s) * 1e3 for b in sizes], "o-", label="SN40L-8 node")
    ax[0].plot(sizes / 1e9, [dgx_switch_s(b, box, True) * 1e3 for b in sizes], "s--", label="DGX H100, pinned")
    ax[0].plot(sizes / 1e9, [dgx_switch_s(b, box, False) * 1e3 for b in sizes], "s--", label="DGX H100, pageable")
    ax[0].plot([16.06], [10], "k*", ms=14, label="slide: 10 ms, Llama-3.1-8B, 16 sockets")
    ax[0].set_xscale("log")
    ax[0].set_yscale("log")
    ax[0].set_xlabel("expert size (GB)")
    ax[0].set_ylabel("switch time (ms)")
    ax[0].set_title("Model switching")
    ax[0].legend(fontsize=7)
    rows = res["fusion"]["rows"]
    x = np.arange(len(rows))
    for i, us in enumerate((5, 10, 20, 40)):
        si = replace(s, kernel_overhead_s=us * 1e-6)
        ws = benchmarks(MODELS, 8)
        ax[1].bar(x + (i - 1.5) * 0.2, [unfused_s(w, si) / fused_s(w, si) for w in ws], 0.2,
                  label=f"{us} us per unfused kernel" + (" (default)" if us == 10 else ""))
    ax[1].axhspan(*res["fusion"]["paper"], color="grey", alpha=0.15, label="paper: 2-13x")
    ax[1].set_xticks(x, [r["workload"] for r in rows], rotation=30, ha="right", fontsize=7)
    ax[1].set_ylabel("unfused / fused time")
    ax[1].set_title("Operator fusion")
    ax[1].legend(fontsize=7)
    runs = res["coe"]["runs"]
    names = list(runs)
    sw = [runs[n]["switch_s_total"] for n in names]
    cp = [runs[n]["compute_s_total"] for n in names]
    ax[2].bar(names, cp, label="compute (router + expert)")
    ax[2].bar(names, sw, bottom=cp, label="model switching")
    ax[2].set_ylabel(f"seconds for {res['coe']['requests']} requests")
    ax[2].set_title(f"CoE: {res['coe']['experts']} experts, zipf {res['coe']['zipf']}")
    ax[2].tick_params(axis="x", labelsize=8)
    ax[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.plot, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
