"""Compare the iomodel with Nsight Compute's counters for ioaware's attention kernels on the H100.

Model rows: `flash_attention_cost` with the kernels' own tiles counts the bytes SMs request (K and V once per query
block): that is L2-side traffic (ncu lts__t_bytes). `attention_min_cost` counts each input once: the DRAM floor.
Usage: python dev/iomodel/ncu_table.py dev/iomodel/ncu-h100-2026-11-26.csv > benchmarks/results/attention-ncu-....json
"""

import collections
import csv
import json
import re
import sys

from ioaware.iomodel import attention_min_cost, flash_attention_cost
from ioaware.kernels.attention.flash.kernel import _table
from ioaware.sim.l2 import flash_fwd_l2_traffic

KERNEL_OP = {"_flash_attn_fwd_kernel": "fwd", "_flash_attn_bwd_dkdv_kernel": "dkdv", "_flash_attn_bwd_dq_kernel": "dq"}
measured = collections.defaultdict(dict)
for r in csv.reader(open(sys.argv[1])):
    measured[(r[0], r[5])][r[13]] = float(r[15].replace(",", ""))

out = []
for (name, kern), m in sorted(measured.items()):
    g = re.match(r"ncu-(fwd|bwd)-B(\d+)-H(\d+)-T(\d+)k-D(\d+)(-causal)?", name)
    mode, B, H, T, D, causal = g.group(1), int(g.group(2)), int(g.group(3)), int(g.group(4)) * 1024, int(g.group(5)), \
        bool(g.group(6))
    op = KERNEL_OP[kern]
    t = _table(op, D, T, causal)
    # per-kernel model: the forward is one kernel; for the backward split the model into its two kernels
    bwd = mode == "bwd"
    full = flash_attention_cost(B, H, T, T, D, block_q=t["BM"], block_k=t["BN"], causal=causal, backward=bwd)
    floor = attention_min_cost(B, H, T, T, D, causal=causal, backward=bwd)
    row = {"shape": name.removeprefix("ncu-"), "kernel": kern, "tiles": [t["BM"], t["BN"]],
           "measured_dram_read": m["dram__bytes_read.sum"], "measured_dram_write": m["dram__bytes_write.sum"],
           "measured_l2_bytes": m["lts__t_bytes.sum"], "measured_us": m["gpu__time_duration.sum"] / 1e3}
    if not bwd:
        row.update(model_sm_requests=full.bytes("hbm"), model_dram_read_floor=floor.read("hbm"),
                   model_dram_write_floor=floor.written("hbm"))
        row["l2_vs_model"] = row["measured_l2_bytes"] / row["model_sm_requests"] - 1
        row["dram_read_vs_floor"] = row["measured_dram_read"] / row["model_dram_read_floor"] - 1
        row["dram_write_vs_floor"] = row["measured_dram_write"] / row["model_dram_write_floor"] - 1
        # the L2 schedule model (ioaware.sim.l2): 132 programs in lockstep (one per SM at these tiles), LRU L2 of
        # 50 MB (the whole L2) and of 25 MB (one of its two partitions)
        for mb in (50, 25):
            l2 = flash_fwd_l2_traffic(B, H, T, D, t["BM"], t["BN"], causal=causal, rev=t["REV"], concurrent=132,
                                      l2_bytes=mb * 1e6)
            row[f"model_l2sched_{mb}MB_dram_read"] = l2.dram_read
            row[f"dram_read_vs_l2sched_{mb}MB"] = row["measured_dram_read"] / l2.dram_read - 1
    out.append(row)
json.dump({"card": "NVIDIA H100 80GB HBM3", "driver": "580.159.04", "torch": "2.11.0+cu130", "triton": "3.6.0",
           "tool": "Nsight Compute, --cache-control all (caches flushed before each profiled kernel)",
           "rows": out}, sys.stdout, indent=1)
