"""`ioaware probe disk`: this disk's cold read throughput against chunk size and threads (kept in the cache dir)."""

from __future__ import annotations

from ._args import int_list, positive_float, size


def _cached_or_none(path):
    from ..hardware.probe_disk import load_curve

    try:
        return load_curve(path)
    except ValueError:  # an old or damaged cached curve: the new probe replaces it
        return None


def add_parser(sp) -> None:
    sub = sp.add_subparsers(dest="what", metavar="WHAT", required=True)
    d = sub.add_parser("disk", help="read throughput vs chunk size, threads, O_DIRECT (cold page cache)")
    d.add_argument("--path", default=None, help="a folder on the disk to probe (default: the cache dir, where "
                   "converted stores live)")
    d.add_argument("--size", default="512MiB", type=size, help="temp file size (default 512MiB; more is steadier)")
    d.add_argument("--seconds", type=positive_float, default=0.25, help="time per case (default 0.25)")
    d.add_argument("--threads", default=None, type=int_list, help="comma-separated thread counts (default 1,4,8,16)")
    d.add_argument("--replace", action="store_true", help="cache this probe's curve even if the cached one was "
                   "more thorough (by default a quicker probe never replaces a better curve)")
    d.add_argument("--json", default=None, metavar="FILE", help="also write the curve here ('-' for stdout)")
    d.add_argument("--plot", default=None, metavar="FILE.png", help="also plot GB/s against chunk size, a line per "
                   "thread count, O_DIRECT and buffered side by side (needs matplotlib: the [plot] extra)")
    d.add_argument("--cached", action="store_true", help="report (and plot) the cached curve of this disk "
                   "instead of probing again")
    d.set_defaults(func=run_disk)
    g = sub.add_parser("gpu", help="Hopper microbenchmarks: latency and bandwidth per memory level, L2 capacity, "
                       "tensor cores (mma.sync vs wgmma), async copies, distributed shared memory")
    g.add_argument("--quick", action="store_true", help="fewer shapes and sizes (about a minute instead of a few)")
    g.add_argument("--sections", default=None, help="comma-separated subset of: device, latency, bandwidth, "
                   "l2_capacity, library, mma_sync, wgmma, async_copy, dsm, bandwidth_sm, l2_latency (default: all)")
    g.add_argument("--json", default=None, metavar="FILE", help="also write the result here ('-' for stdout); "
                   "a file is rewritten after every section, so an interrupted run keeps what it measured")
    g.add_argument("--plot", default=None, metavar="FILE.png", help="also plot latency per level, the L2 capacity "
                   "curve, tensor-core rates and latency against footprint (needs matplotlib)")
    g.set_defaults(func=run_gpu)


def run_disk(args) -> int:
    from ..hardware.probe_disk import THREADS, at_least_as_thorough, best_chunk, curve_path, probe, save_curve
    from ..report import emit_json, print_table
    from ..units import human_bytes, parse_bytes

    if args.cached:
        from ..hardware.probe_disk import load_curve

        curve, cached = load_curve(args.path), curve_path(args.path)
        if curve is None:
            raise FileNotFoundError(f"no cached curve for this disk ({cached}): run `ioaware probe disk` without "
                                    "--cached first")
    else:
        threads = args.threads or THREADS
        curve = probe(args.path, int(parse_bytes(args.size)), threads=threads, seconds_per_case=args.seconds)
        cached = curve_path(args.path)
        old = _cached_or_none(args.path)
        if old is None or args.replace or at_least_as_thorough(curve, old):
            save_curve(curve)
        else:
            print(f"kept the cached curve of {old['date']} ({old['file_bytes'] >> 20} MiB, {old['seconds_per_case']}"
                  f" s/case, {len(old['points'])} points): it is more thorough than this probe; --replace to cache "
                  "this one instead")
            cached = f"{cached} (not replaced)"
    rows = []
    for p in curve["points"]:
        rows.append(["O_DIRECT" if p["direct"] else "buffered", human_bytes(p["chunk"]), p["threads"],
                     p["GBps"], human_bytes(p["bytes"])])
    print_table(f"ioaware probe disk ({curve['path']})", ["mode", "chunk", "threads", "GB/s", "read"], rows)
    b = curve["best"]
    print(f"peak {curve['peak_GBps']:.2f} GB/s at {human_bytes(b['chunk'])} × {b['threads']} threads "
          f"({'O_DIRECT' if b['direct'] else 'buffered'}); best chunk with 8 threads, O_DIRECT: "
          f"{human_bytes(best_chunk(curve, 8, True))}; cached in {cached}")
    emit_json(curve, args.json)
    if args.plot:
        plot_curve(curve, args.plot)
        print(f"plot written to {args.plot}")
    return 0


def plot_curve(curve: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = [m for m in (True, False) if any(p["direct"] is m for p in curve["points"])]
    fig, axes = plt.subplots(1, len(modes), figsize=(5.2 * len(modes), 3.8), sharey=True, squeeze=False)
    for ax, direct in zip(axes[0], modes, strict=True):
        pts = [p for p in curve["points"] if p["direct"] is direct]
        for t in sorted({p["threads"] for p in pts}):
            xs = sorted((p["chunk"], p["GBps"]) for p in pts if p["threads"] == t)
            ax.plot([x / 1024 for x, _ in xs], [y for _, y in xs], marker="o", label=f"{t} threads")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("chunk (KiB)")
        ax.set_title("O_DIRECT" if direct else "buffered (page cache dropped)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("GB/s")
    axes[0][0].legend()
    fig.suptitle(f"disk under {curve['path']}: cold reads, peak {curve['peak_GBps']:.2f} GB/s "
                 f"({curve['date']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_gpu(args) -> int:
    import time

    from ..hardware.probe_gpu import check_sections, require_cuda
    from ..report import emit_json

    sections = check_sections([x.strip() for x in args.sections.split(",") if x.strip()] if args.sections else None)
    require_cuda()
    from rich.progress import Progress

    from ..hardware.probe_gpu import run
    from ..hardware.probe_gpu.report import plot, print_report

    cmd = "ioaware probe gpu" + (" --quick" if args.quick else "") + (f" --sections {args.sections}"
                                                                       if args.sections else "")
    t0 = time.perf_counter()

    def checkpoint(partial: dict) -> None:
        if args.json and args.json != "-":
            emit_json(partial | {"command": cmd}, args.json)

    with Progress(transient=True, console=_stderr_console()) as bar:
        task = bar.add_task("probe gpu", total=len(sections))

        def progress(done: int, total: int, label: str) -> None:
            bar.update(task, completed=done, description=f"probe gpu: {label}")

        result = run(quick=args.quick, progress=progress, sections=sections, checkpoint=checkpoint)
    result["command"] = cmd
    result["wall_seconds"] = time.perf_counter() - t0
    print_report(result)
    emit_json(result, args.json)
    from ..hardware.probe_results import save_probe

    try:  # where `ioaware hardware --measured` and roofline(measured=True) find it; after --json, so never lost
        kept = save_probe(result)
        if kept:
            print(f"kept in {kept}")
    except OSError as e:
        print(f"not kept in the cache dir ({e}); `ioaware hardware --measured --from FILE` reads a --json file")
    if args.plot:
        plot(result, args.plot)
        print(f"plot written to {args.plot}")
    return 0


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True)
