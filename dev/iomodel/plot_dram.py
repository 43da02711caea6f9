"""Plot the DRAM table and the L2 probe: measured against modelled DRAM bytes per kernel, and the probe's hit curve.

Usage: python dev/iomodel/plot_dram.py benchmarks/results/attention-dram-h100-....json \
           benchmarks/results/l2-probe-h100-....json OUT.png
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

table, probe = (json.load(open(p)) for p in sys.argv[1:3])
fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.8))
marks = {"fwd": "o", "dkdv": "s", "dq": "^"}
for group, color in (("benchmark", "tab:blue"), ("extended", "tab:orange")):
    for k, mk in marks.items():
        rows = [r for r in table["rows"] if r["set"] == group and r["kernel"] == k]
        ax.scatter([(r["model_read"] + r["model_write"]) / 1e6 for r in rows],
                   [(r["measured_read"] + r["measured_write"]) / 1e6 for r in rows], marker=mk, color=color,
                   s=22, label=f"{group} {k}", alpha=0.8)
lo, hi = 150, 9000
ax.loglog([lo, hi], [lo, hi], color="grey", lw=0.8)
ax.fill_between([lo, hi], [lo * 0.9, hi * 0.9], [lo * 1.1, hi * 1.1], color="grey", alpha=0.15, label="±10%")
ax.set_xlabel("model: DRAM MB (read + write), ioaware.sim.l2")
ax.set_ylabel("Nsight Compute: DRAM MB")
ax.set_title(f"attention kernels on the {table['card'].split(',')[0]}")
ax.legend(fontsize=7, ncol=2)
ax.grid(True, which="both", alpha=0.3)
for rev, color in ((False, "tab:blue"), (True, "tab:red")):
    for run, mk in (("h100-2026-11-26-run1", "o"), ("h100-2026-11-26-run2", "x")):
        pts = sorted((p["bytes"] / 2**20, p["hit"]) for p in probe["points"] if p["reverse"] == rev and p["run"] == run)
        bx.plot([p[0] for p in pts], [p[1] for p in pts], marker=mk, color=color, ms=4, lw=0.8,
                label=f"{'reversed' if rev else 'same'} order ({run[-4:]})")
bx.axvline(18, color="grey", lw=0.8, ls="--")
bx.text(18.5, 0.9, "model capacity 18 MiB", fontsize=8)
bx.set_xlabel("buffer re-read (MiB)")
bx.set_ylabel("fraction served by L2")
bx.set_title("L2 re-read probe (the L2 holds 50 MB)")
bx.legend(fontsize=7)
bx.grid(True, alpha=0.3)
fig.tight_layout()
fig.savefig(sys.argv[3], dpi=120)
