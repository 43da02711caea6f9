"""`ioaware probe disk`: this disk's cold read throughput against chunk size and threads (kept in the cache dir)."""

from __future__ import annotations


def add_parser(sp) -> None:
    sub = sp.add_subparsers(dest="what", metavar="WHAT", required=True)
    d = sub.add_parser("disk", help="read throughput vs chunk size, threads, O_DIRECT (cold page cache)")
    d.add_argument("--path", default=None, help="a folder on the disk to probe (default: the cache dir, where "
                   "converted stores live)")
    d.add_argument("--size", default="512MiB", help="temp file size (default 512MiB; more is steadier)")
    d.add_argument("--seconds", type=float, default=0.25, help="time per case (default 0.25)")
    d.add_argument("--threads", default=None, help="comma-separated thread counts (default 1,4,8,16)")
    d.add_argument("--json", default=None, metavar="FILE", help="also write the curve here ('-' for stdout)")
    d.set_defaults(func=run_disk)


def run_disk(args) -> int:
    from ..hardware.probe_disk import THREADS, best_chunk, probe, save_curve
    from ._report import emit_json, human_bytes, parse_bytes, print_table

    threads = tuple(int(t) for t in args.threads.split(",")) if args.threads else THREADS
    curve = probe(args.path, int(parse_bytes(args.size)), threads=threads, seconds_per_case=args.seconds)
    cached = save_curve(curve)
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
    return 0
