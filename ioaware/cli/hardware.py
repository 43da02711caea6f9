"""`ioaware hardware`: the spec table with sources, or what this machine is."""

from __future__ import annotations

from ..report import emit_json, print_table
from ..units import human_bytes


def add_parser(sp) -> None:
    sp.add_argument("--detect", action="store_true", help="describe the device found here (initialises CUDA)")
    sp.add_argument("--sources", action="store_true", help="print where every number comes from")
    sp.add_argument("--json", default=None, metavar="FILE", help="write the table as JSON ('-' for stdout)")
    sp.set_defaults(func=run)


def run(args) -> int:
    from dataclasses import asdict

    from ..hardware import SPECS, detect

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
    emit_json([asdict(s) for s in specs], args.json)
    return 0
