"""Turn an ncu run of dev/iomodel/ncu_bench.sh into the DRAM table: measured bytes beside the IO model's.

For every profiled launch: the kernel's tiles (the launch table), its concurrency (ncu's occupancy limits x SMs),
the L2 schedule model's DRAM reads and writes (`ioaware.sim.l2`, H100 parameters), the compulsory floor, and the
errors. Usage: python dev/iomodel/dram_table.py RUN_DIR [PROBE_DIR ...] > benchmarks/results/attention-dram-....json
"""

import json
import re
import sys

from ioaware.kernels.attention.flash.hopper import _hopper_bwd_table, _hopper_table
from ioaware.kernels.attention.flash.kernel import tile_table
from ioaware.sim.l2 import H100_L2, flash_l2_traffic

sys.path.insert(0, "dev/iomodel")
from ncu_csv import ncu_rows  # noqa: E402

KERNEL_OP = {"_flash_attn_fwd_kernel": "fwd", "_hopper_flash_attn_fwd_kernel": "fwd",
             "_flash_attn_bwd_dkdv_kernel": "dkdv", "_hopper_flash_attn_bwd_dkdv_kernel": "dkdv",
             "_flash_attn_bwd_dq_kernel": "dq"}
LIMITS = ("Block Limit Registers", "Block Limit SM", "Block Limit Shared Mem", "Block Limit Warps",
          "Block Limit Barriers")


def floor_bytes(op, B, H, Hkv, T, D):
    """Each input read once, each output written once, per kernel (the backward split into its two kernels)."""
    e = 2
    q, kv, stats = B * H * T * D * e, B * Hkv * T * D * e, B * H * T * 4
    return {"fwd": (q + 2 * kv, q + stats), "dq": (2 * q + 2 * kv + 2 * stats, q),
            "dkdv": (2 * q + 2 * kv + 2 * stats, 2 * kv)}[op]


run = sys.argv[1]
manifest = json.load(open(f"{run}/attn_manifest.json"))
card = open(f"{run}/card.txt").read().split("\n")
out = []
for m, r in zip(manifest["launches"], ncu_rows(f"{run}/ncu-attn.csv"), strict=True):
    g = re.match(r"(fwd|bwd)-B(\d+)-H(\d+)(?:-KV(\d+))?-T(\d+)k-D(\d+)(-causal)?", m["shape"])
    B, H, T, D = int(g[2]), int(g[3]), int(g[5]) * 1024, int(g[6])
    Hkv, causal = int(g[4] or H), bool(g[7])
    kernel = r.get("kernel_name", m["kernel"])  # what ran: flash_attn_fwd dispatches D128 to the Hopper kernel
    op = KERNEL_OP[kernel]
    if kernel.startswith("_hopper"):
        t = _hopper_table(D, T, causal) if op == "fwd" else _hopper_bwd_table(D, T, causal)
    else:
        t = tile_table(op, D, T, causal)
    per_sm = int(min(r[k] for k in LIMITS if k in r))
    conc = per_sm * int(r["# SMs"])
    model = flash_l2_traffic(op, B, H, T, D, t["BM"], t["BN"], Hkv=Hkv, causal=causal, rev=t.get("REV", False),
                             concurrent=conc)
    fr, fw = floor_bytes(op, B, H, Hkv, T, D)
    mr, mw = r["dram__bytes_read.sum"], r["dram__bytes_write.sum"]
    row = {"set": m["set"], "shape": m["shape"], "kernel": op, "kernel_name": kernel,
           "tiles": [t["BM"], t["BN"], t["num_warps"]],
           "registers": int(r["Registers Per Thread"]), "ctas_per_sm": per_sm,
           "measured_read": mr, "measured_write": mw, "measured_l2_bytes": r["lts__t_bytes.sum"],
           "measured_us": r["gpu__time_duration.sum"] / 1e3,
           "model_read": model.dram_read, "model_write": model.dram_write,
           "model_sm_bytes": model.sm_read + model.sm_write,
           "floor_read": fr, "floor_write": fw}
    row["err_read"] = mr / model.dram_read - 1
    row["err_write"] = mw / model.dram_write - 1
    row["err_total"] = (mr + mw) / (model.dram_read + model.dram_write) - 1
    row["floor_err_total"] = (mr + mw) / (fr + fw) - 1
    row["l2_vs_requests"] = row["measured_l2_bytes"] / row["model_sm_bytes"] - 1
    out.append(row)


def summary(rows):
    worst = {k: max(rows, key=lambda x: abs(x[k])) for k in ("err_read", "err_write", "err_total", "floor_err_total")}
    return {k: {"shape": w["shape"], "kernel": w["kernel"], "err": w[k]} for k, w in worst.items()} | {
        "kernels": len(rows), "within_10pct_total": sum(abs(x["err_total"]) <= 0.10 for x in rows),
        "within_10pct_read": sum(abs(x["err_read"]) <= 0.10 for x in rows),
        "within_10pct_write": sum(abs(x["err_write"]) <= 0.10 for x in rows)}


json.dump({"card": card[0], "torch_triton": card[1],
           "tool": "Nsight Compute, --cache-control all (caches flushed before each profiled kernel)",
           "model": {"name": "ioaware.sim.l2", "capacity_bytes": H100_L2.capacity, "desync": H100_L2.desync,
                     "note": H100_L2.name},
           "summary": {s: summary([x for x in out if x["set"] == s]) for s in ("benchmark", "extended")},
           "rows": out}, sys.stdout, indent=1)
