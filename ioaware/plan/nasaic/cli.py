"""`ioaware plan nasaic`: co-explore two networks and a heterogeneous dataflow ASIC under latency / energy / area
specs (NASAIC), beside NAS-then-ASIC.

    ioaware plan nasaic                                  # the comparison (minutes on 2 cores: it trains networks)
    ioaware plan nasaic --episodes 60 --json -           # shorter search
    ioaware plan nasaic --cost dla 1024 16               # the cost model on the reference networks for one design
    ioaware plan nasaic --throughput                     # layer x design points per second
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

from ...report import emit_json, print_table


def _parser():
    ap = argparse.ArgumentParser(prog="ioaware plan nasaic", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=200, help="controller episodes per search (default 200)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--latency-us", type=float, help="latency spec, microseconds (default: experiment.SPECS)")
    ap.add_argument("--energy-uj", type=float, help="energy spec, microjoules")
    ap.add_argument("--area-mm2", type=float, help="area spec, mm^2")
    ap.add_argument("--cost", nargs=3, metavar=("TEMPLATE", "PES", "BW"), help="cost of one design and exit")
    ap.add_argument("--throughput", action="store_true", help="measure the cost model's speed and exit")
    ap.add_argument("--out", type=Path, help="results JSON (default benchmarks/results/nasaic-cpu-<date>.json)")
    ap.add_argument("--json", help="write the report as JSON to FILE ('-' for stdout)")
    ap.add_argument("--plot", type=Path, help="PNG of the search (default: beside --out)")
    return ap


def main(argv: list[str] | None = None) -> int:
    from .costmodel import TEMPLATES
    from .experiment import SPECS
    from .space import Specs

    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    if args.episodes < 1:
        raise ValueError(f"--episodes must be at least 1, got {args.episodes}")
    for name in ("latency_us", "energy_uj", "area_mm2"):
        v = getattr(args, name)
        if v is not None and v <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {v}")
    specs = Specs(args.latency_us * 1e-6 if args.latency_us else SPECS.latency_s,
                  args.energy_uj * 1e-6 if args.energy_uj else SPECS.energy_j, args.area_mm2 or SPECS.area_mm2)
    if args.cost:
        t, p, b = args.cost
        if t not in TEMPLATES:
            raise ValueError(f"--cost: template {t!r} is not one of {', '.join(TEMPLATES)}")
        return _cost(t, int(p), float(b), args)
    if args.throughput:
        from .experiment import throughput

        tp = throughput()
        print(f"cost model: {tp['points_per_s']:.3g} layer x design points/s ({tp['points']} in {tp['seconds']:.4f} s)")
        emit_json(tp, args.json)
        return 0
    return _reproduce(args, specs, argv)


def _cost(t, p, b, args) -> int:
    from .costmodel import Designs, evaluate
    from .space import layers

    nets = {"small": ((8, 3), (16, 3), (16, 3), (32, 3)), "mid": ((16, 3), (32, 3), (32, 3), (64, 3)),
            "large": ((64, 5),) * 4}
    rows, out = [], {}
    for name, arch in nets.items():
        r = evaluate(layers(arch, 10), Designs.of([t], [p], [b]))
        lat, en, area = float(r["latency_s"].sum()), float(r["energy_j"].sum()), float(r["area_mm2"][0])
        rows.append([name, f"{r['macs'].sum():.3g}", f"{lat * 1e6:.2f}", f"{en * 1e6:.2f}", f"{area:.2f}"])
        out[name] = {"latency_s": lat, "energy_j": en, "area_mm2": area}
    print_table(f"{t}, {p} PEs, {b:g} B/cycle NoC (3x32x32 input)", ["network", "MACs", "latency us", "energy uJ",
                                                                      "area mm2"], rows)
    emit_json(out, args.json)
    return 0


def _reproduce(args, specs, argv) -> int:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from .experiment import reproduce

    out = args.out or Path("benchmarks") / "results" / f"nasaic-cpu-{dt.date.today()}.json"
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=_console()) as prog:
        tasks = {"co": prog.add_task("NASAIC co-exploration", total=args.episodes),
                 "seq": prog.add_task("NAS, then ASIC", total=args.episodes)}
        res = reproduce(args.episodes, args.seed, specs, out, command="ioaware plan nasaic " + " ".join(argv),
                        progress=lambda which, i, n: prog.update(tasks[which], completed=i))
    if args.plot and args.plot != out.with_suffix(".png"):
        from .experiment import plot

        plot(res, args.plot)
    rows = []
    for key, lab in (("nas_then_asic", "NAS then ASIC"), ("nasaic", "NASAIC (co-explored)")):
        d = res[key]
        if d is None:
            rows.append([lab, "no design met the specs", "", "", "", "", ""])
            continue
        rows.append([lab, f"{d['accuracy'][0]:.3f} / {d['accuracy'][1]:.3f}", f"{d['latency_s'] * 1e6:.2f}",
                     f"{d['energy_j'] * 1e6:.2f}", f"{d['area_mm2']:.2f}", d["meets_specs"],
                     " + ".join(f"{h[0]}:{h[1]}PE:{h[2]}B" for h in d["hardware"])])
    s = res["specs"]
    print_table(f"specs: latency {s['latency_s'] * 1e6:g} us, energy {s['energy_j'] * 1e6:g} uJ, area "
                f"{s['area_mm2']:g} mm2", ["design", "accuracy digits / rotation", "latency us", "energy uJ",
                                           "area mm2", "meets specs", "hardware"], rows)
    c, p = res["comparison"], res["paper"]
    if c:
        print_table("NASAIC against NAS then ASIC", ["quantity", "reproduced", "paper"],
                    [["latency lower by", f"{c['latency_lower']:.1%}", f"{p['latency_lower']:.2%}"],
                     ["energy lower by (x)", f"{c['energy_x']:.2f}", f"{p['energy_x']:.2f}"],
                     ["area lower by (x)", f"{c['area_x']:.2f}", f"{p['area_x']:.2f}"],
                     ["accuracy loss", f"{c['accuracy_loss']:.2%}", f"{p['accuracy_loss']:.2%}"]])
    print(f"cost model: {res['throughput']['points_per_s']:.3g} layer x design points/s")
    print(f"wrote {out} and {out.with_suffix('.png')}")
    emit_json({k: v for k, v in res.items() if k != "trace"}, args.json)
    return 0


def _console():
    from rich.console import Console

    # piped (CI logs, nohup): a wide console, so progress and log lines are not wrapped at 80 columns
    return Console(stderr=True, width=None if sys.stderr.isatty() else 160)
