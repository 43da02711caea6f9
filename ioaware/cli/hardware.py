"""`ioaware hardware`: the spec table with sources, or what this machine is; `--measured` puts what `ioaware probe gpu`
measured beside the datasheet (where the probe files are found: ioaware/hardware/probe_results.py)."""

from __future__ import annotations

from pathlib import Path

from ..report import emit_json, print_table
from ..units import human_bytes


def add_parser(sp) -> None:
    sp.add_argument("--detect", action="store_true", help="describe the device found here (initialises CUDA)")
    sp.add_argument("--sources", action="store_true", help="print where every number comes from")
    sp.add_argument("--measured", action="store_true",
                    help="beside each datasheet number, the newest probe measurement of it (`ioaware probe gpu` "
                    "keeps its runs in <cache dir>/probe/gpu; a checkout's benchmarks/results/probe-gpu-*.json "
                    "count too), the ratio, the file and the date")
    sp.add_argument("--from", dest="probe_files", action="append", default=None, metavar="PROBE.json",
                    help="with --measured: read this probe result instead of searching (repeatable)")
    sp.add_argument("--json", default=None, metavar="FILE", help="write the table as JSON ('-' for stdout)")
    sp.set_defaults(func=run)


def run(args) -> int:
    from dataclasses import asdict

    from ..hardware import SPECS, detect

    if args.probe_files and not args.measured:
        raise ValueError("--from names probe files for --measured; add --measured")
    specs = [detect()] if args.detect else list(SPECS.values())
    rows = []
    for s in specs:
        bf16 = s.peak_flops.get("bfloat16") or s.peak_flops.get("float16", 0.0)
        rows.append([s.key, s.name, bf16 / 1e12, s.peak_flops.get("float32", 0.0) / 1e12, f"{s.hbm_bytes / 1e9:.0f} GB",
                     s.hbm_bandwidth_Bps / 1e9, human_bytes(s.l2_bytes), human_bytes(s.smem_per_sm_bytes), s.num_sms,
                     s.pcie_Bps / 1e9])
    print_table("hardware", ["key", "name", "16-bit TFLOP/s", "fp32 TFLOP/s", "HBM", "HBM GB/s", "L2", "SMEM/SM",
                             "SMs", "PCIe GB/s"], rows)
    if args.sources:
        for s in specs:
            print(f"\n{s.name}")
            for k, v in s.sources.items():
                print(f"  {k}: {v}")
    if not args.measured:
        emit_json([asdict(s) for s in specs], args.json)
        return 0
    report = measured_report(specs, args.probe_files, detected=args.detect)
    emit_json({"specs": [asdict(s) for s in specs], **report}, args.json)
    return 0


def measured_report(specs, files=None, detected: bool = False) -> dict:
    """Print and return the datasheet-vs-measured rows of every card with a probe result (of the detected one
    with --detect)."""
    from ..hardware.probe_results import card_of, cards_with_files, compare, measured, search_dirs
    from ..hardware.specs import SPECS

    if files:
        for f in files:
            if not Path(f).is_file():
                raise FileNotFoundError(f"--from {f}: no such file")
    searched = [str(p) for p in files] if files else [str(d) for d in search_dirs()]
    cards = [specs[0].name] if detected else cards_with_files(files=files)
    rows, found, skipped = [], [], set()
    for card in cards:
        m = measured(card, files=files)
        if m is None:
            continue
        skipped.update(m.skipped)
        spec = SPECS.get(m.card)
        found.append({"card": m.card, "device": m.device, "datasheet_card": spec.name if spec else None,
                      "files": list(m.files)})
        rows += compare(spec, m)
    if rows:
        print_table("measured (ioaware probe gpu) beside the datasheet; rows marked * feed the roofline's "
                    "measured=True", ["card", "quantity", "unit", "datasheet", "measured", "ratio", "probe key",
                                      "file", "date"],
                    [[r["card"], r["quantity"] + (" *" if r["feeds_roofline"] else ""), r["unit"],
                      "–" if r["datasheet"] is None else r["datasheet"], r["measured"],
                      "–" if r["ratio"] is None else r["ratio"], r["key"], Path(r["file"]).name,
                      r["date"] + (" quick" if r["quick"] else "")] for r in rows])
    have = {f["card"] for f in found}
    missing = [s.key for s in specs if card_of(s.name) not in have]
    if missing:
        print(f"no probe result for {', '.join(missing)} (searched {', '.join(searched)}): run `ioaware probe gpu` "
              "on the card")
    return {"measured": rows, "cards": found, "missing": missing, "searched": searched, "skipped": sorted(skipped)}
