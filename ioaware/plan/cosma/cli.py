"""`ioaware plan cosma`: optimal scheduling, allocation and replacement of on-chip memory (COSMA).

    ioaware plan cosma --model resnet50 --budget M_H --solver cpsat --json -
    ioaware plan cosma --model densenet121 --budget 1700000 --plan-out plan.json --plot plan.png
    ioaware plan cosma --model resnet50 --check plan.json          # replay a saved plan through the validator
    ioaware plan cosma --reproduce                                 # the paper's table (a few minutes on 2 cores)
    ioaware plan cosma --list
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

from ...report import emit_json, print_table


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="ioaware plan cosma", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="graph name (see --list; add +params for activations + parameters) or a JSON")
    ap.add_argument("--budget", default="M_R", help="M_R, M_H, M_P or bytes (default M_R)")
    ap.add_argument("--solver", default="cpsat", choices=["cpsat", "highs"])
    ap.add_argument("--time-limit", type=float, default=10.0, help="seconds per solver call (default 10)")
    ap.add_argument("--no-free", action="store_true", help="skip the free-schedule HiGHS pass after the fixed ones")
    ap.add_argument("--plan-out", type=Path, help="write the plan (schedule, runs, addresses) as JSON")
    ap.add_argument("--check", type=Path, help="replay this plan file through the validator instead of solving")
    ap.add_argument("--reproduce", action="store_true", help="run the paper's experiment over all networks")
    ap.add_argument("--networks", nargs="*", help="with --reproduce: a subset")
    ap.add_argument("--solvers", nargs="*", default=["cpsat", "highs"], help="with --reproduce")
    ap.add_argument("--params", action="store_true", help="with --reproduce: activations + parameters setting")
    ap.add_argument("--out", type=Path, help="with --reproduce: results JSON (default "
                    "benchmarks/results/cosma-cpu-<date>.json; the plot goes beside it)")
    ap.add_argument("--list", action="store_true", help="list the graphs")
    ap.add_argument("--json", help="write the report as JSON to FILE ('-' for stdout)")
    ap.add_argument("--plot", type=Path, help="PNG: the plan's time x address map (or the experiment's bars)")
    return ap


def main(argv: list[str] | None = None) -> int:
    from .graph import available, load_graph
    from .solve import SOLVERS

    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    args.command = "ioaware plan cosma " + " ".join(argv)
    if args.time_limit <= 0:
        raise ValueError(f"--time-limit must be positive seconds, got {args.time_limit}")
    if args.list:
        from .graph import NAS_NETWORKS, PAPER_NETWORKS

        rows = []
        for n in available():
            g = load_graph(n)
            rows.append([n, "paper" if n in PAPER_NETWORKS else "NAS" if n in NAS_NETWORKS else "", g.n_ops,
                         g.n_tensors, g.m_r, g.meta.get("source", "")])
        print_table("COSMA graphs (int8)", ["graph", "set", "ops", "tensors", "M_R bytes", "source"], rows)
        emit_json({"graphs": available()}, args.json)
        return 0
    if args.reproduce:
        return _reproduce(args)
    if not args.model:
        raise ValueError("give --model NAME (see --list), or --reproduce, or --list")
    for s in args.solvers:
        if s not in SOLVERS:
            raise ValueError(f"--solvers: {s!r} is not one of {', '.join(SOLVERS)}")
    g = load_graph(args.model)
    if args.check:
        return _check(g, args)
    return _solve(g, args)


def _progress():
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    return Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                    console=Console(stderr=True), transient=True)


def _solve(g, args) -> int:
    from .baselines import arena_belady
    from .solve import budgets, solve
    from .validate import check

    if args.budget.upper().replace("_", "") not in ("MR", "MH", "MP"):  # a byte count: check it before any solve
        try:
            nbytes = int(float(args.budget))
        except ValueError:
            raise ValueError(f"--budget {args.budget!r}: use M_R, M_H, M_P or a number of bytes") from None
        if nbytes < g.m_r:
            raise ValueError(f"budget {nbytes} B is below M_R = {g.m_r} B for {g.name}: operators are atomic; "
                             f"use >= M_R")
    with _progress() as prog:
        task = prog.add_task(f"{g.name}: M_P (peak-footprint schedule)", total=None)
        B = budgets(g)
        M = B.value(args.budget)
        if M < g.m_r:
            raise ValueError(f"budget {M} B is below M_R = {g.m_r} B for {g.name}: operators are atomic; use >= M_R")
        prog.update(task, description=f"{g.name}: baselines at {M} B")
        bases = {lab: arena_belady(g, o, M, name=lab) for lab, o in
                 (("arena+belady/default", list(g.default_order)), ("arena+belady/mpmf", B.schedule))}
        prog.update(task, description=f"{g.name}: COSMA ({args.solver}) at {M} B")
        p = solve(g, M, solver=args.solver, time_limit=args.time_limit, schedules=B.schedules,
                  free=not args.no_free)
    c = check(g, p)
    rows = []
    for lab, b in bases.items():
        cb = check(g, b)
        rows.append([lab, cb.non_compulsory, cb.spilled, cb.retrieved, "-", b.status, f"{b.solve_s:.2f}", cb.ok])
    rows.append([f"COSMA ({p.method})", c.non_compulsory, c.spilled, c.retrieved,
                 "-" if p.bound is None else int(round(p.bound)), p.status, f"{p.solve_s:.2f}", c.ok])
    print_table(f"{g.name}: budget {args.budget} = {M} B (M_R {B.m_r}, M_H {B.m_h}, M_P {B.m_p}; "
                f"{B.method})", ["plan", "non-compulsory B", "spilled B", "retrieved B", "lower bound", "status",
                                  "seconds", "valid"], rows)
    best = min(check(g, b).non_compulsory for b in bases.values())
    if best:
        print(f"COSMA cuts non-compulsory traffic by {1 - c.non_compulsory / best:.1%} against the best baseline")
    if args.plan_out:
        p.save(args.plan_out)
        print(f"wrote {args.plan_out}")
    if args.plot:
        plot_plan(g, p, args.plot)
        print(f"wrote {args.plot}")
    emit_json({"graph": g.name, "budget": M, "budgets": {"M_R": B.m_r, "M_H": B.m_h, "M_P": B.m_p},
               "cosma": {"method": p.method, "bytes": c.non_compulsory, "spilled": c.spilled,
                         "retrieved": c.retrieved, "bound": p.bound, "status": p.status, "seconds": p.solve_s,
                         "valid": c.ok, "order": p.order, "runs": [list(r) for r in p.runs]},
               "baselines": {lab: {"bytes": check(g, b).non_compulsory, "valid": check(g, b).ok}
                             for lab, b in bases.items()}}, args.json)
    return 0 if c.ok else 1


def _check(g, args) -> int:
    from .plan import Plan
    from .validate import check

    if not args.check.exists():
        raise ValueError(f"--check {args.check}: no such plan file")
    p = Plan.load(args.check)
    c = check(g, p)
    print_table(f"replay of {args.check} on {g.name} at {p.budget} B",
                ["valid", "non-compulsory B", "spilled B", "retrieved B", "highest address"],
                [[c.ok, c.non_compulsory, c.spilled, c.retrieved, c.peak]])
    for e in c.errors:
        print(f"  {e}")
    emit_json({"valid": c.ok, "bytes": c.non_compulsory, "spilled": c.spilled, "retrieved": c.retrieved,
               "errors": c.errors}, args.json)
    return 0 if c.ok else 1


def _reproduce(args) -> int:
    from .experiment import reproduce
    from .graph import NAS_NETWORKS, PAPER_NETWORKS, available

    nets = args.networks or PAPER_NETWORKS + NAS_NETWORKS
    missing = [n for n in nets if n not in available()]
    if missing:
        raise ValueError(f"--networks: no graph for {', '.join(missing)} (see --list)")
    suffix = "-params" if args.params else ""
    out = args.out or Path("benchmarks") / "results" / f"cosma{suffix}-cpu-{dt.date.today()}.json"
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    lines = []
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=_console()) as prog:
        task = prog.add_task("COSMA reproduction", total=len(nets))

        def log(msg):
            lines.append(msg)
            prog.console.print(msg)
            if msg.split()[1] == "M_P":
                prog.advance(task)

        res = reproduce(nets, tuple(args.solvers), args.time_limit, args.params, out,
                        command=args.command, log=log)
    _print_reproduction(res)
    print(f"wrote {out} and {out.with_suffix('.png')}")
    emit_json(res, args.json)
    return 0


def _print_reproduction(res: dict) -> None:
    solvers = list(res["summary"])
    for bn in ("M_R", "M_H", "M_P"):
        rows = []
        for r in res["results"]:
            w = r["budgets"][bn]
            row = [r["network"], w["bytes"], w["baselines"]["arena+belady/default"]["bytes"],
                   w["baselines"]["arena+belady/mpmf"]["bytes"]]
            for s in solvers:
                v = w["cosma"][s]
                red = "-" if v["reduction"] is None else f"{v['reduction']:.1%}"
                row += [v["bytes"], red, f"{v['seconds']:.1f}", v["status"]]
            rows.append(row)
        cols = ["network", f"{bn} bytes", "arena+Belady default", "arena+Belady min-peak"]
        for s in solvers:
            cols += [f"COSMA {s}", "cut", "s", "status"]
        print_table(f"non-compulsory DRAM bytes at {bn} ({res['setting']})", cols, rows)
    for s in solvers:
        b = res["bars"][s]
        print_table(f"bars ({s})", ["bar", "measured", "met"],
                    [[k, v["measured"], v["met"]] for k, v in b.items()])


def plot_plan(g, p, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    fig, ax = plt.subplots(figsize=(12, 5))
    cmap = plt.get_cmap("tab20")
    for t, a, b, addr in p.runs:
        ax.add_patch(Rectangle((a, addr / 1e6), b - a + 1, g.sizes[t] / 1e6, facecolor=cmap(t % 20),
                               edgecolor="k", lw=0.3))
    ax.set_xlim(0, len(p.order))
    ax.set_ylim(0, p.budget / 1e6)
    ax.axhline(p.budget / 1e6, color="r", lw=1)
    ax.set_xlabel("step (one operator per step)")
    ax.set_ylabel("scratchpad address (MB)")
    ax.set_title(f"{g.name}: COSMA plan at {p.budget} B ({p.method}, {p.objective} non-compulsory B)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _console():
    from rich.console import Console

    # piped (CI logs, nohup): a wide console, so progress and log lines are not wrapped at 80 columns
    return Console(stderr=True, width=None if sys.stderr.isatty() else 160)
