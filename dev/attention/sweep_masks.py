"""Tile sweep for the masked kernels (masked.py) on the two benchmark cases of `ioaware bench attention-masks`:
sliding window 1024 at T = 16k causal (B1 H16 D128 bf16) and block-sparse 25% of 128x128 blocks at T = 8k (B2).
Question: do the plain kernel's tiles (masked._tiles reuses kernel.tile_table) suit short band loops and sparse rows?
Writes $OUT/sweep_masks.json: ms per (case, kernel, tile) — fwd alone; backward with one kernel's tile varied and
the other at the table's choice."""

import json
import os
import sys

import torch

from ioaware.bench.common import time_ms
from ioaware.kernels.attention.flash import flash_attn, masked

FWD = [(128, 128, 8, 3), (128, 64, 8, 3), (128, 64, 4, 3), (64, 128, 4, 3), (64, 64, 4, 3), (128, 128, 8, 2),
       (64, 64, 4, 4)]
DKDV = [(64, 128, 8, 3), (64, 64, 4, 3), (32, 128, 4, 3), (128, 128, 8, 2), (64, 128, 4, 2)]
DQ = [(128, 32, 4, 3), (128, 64, 8, 3), (64, 64, 4, 3), (128, 64, 4, 2)]
orig = masked._tiles
force: dict = {}


def tiles(op, D, T, banded, block, window=False):
    if op in force:
        bm, bn, w, s = force[op]
        return {"BM": bm, "BN": bn, "num_warps": w, "num_stages": s}
    return orig(op, D, T, banded, block, window)


masked._tiles = tiles


def measure(fn, op, q, k, v, do) -> float:
    if op == "fwd":
        with torch.no_grad():
            return time_ms(lambda: fn(q, k, v))
    o = fn(q, k, v)
    return time_ms(lambda: torch.autograd.grad(o, (q, k, v), do, retain_graph=True))


out = {"card": torch.cuda.get_device_name(0), "rows": []}
g = torch.Generator(device="cuda").manual_seed(0)
cases = {}
T = 16384
cases["window1024-T16k"] = (1, T, lambda q, k, v: flash_attn(q, k, v, causal=True, window_size=(1023, -1)))
bm = torch.rand(2, 16, 64, 64, device="cuda", generator=g) < 0.25
cases["sparse25-T8k"] = (2, 8192, lambda q, k, v: flash_attn(q, k, v, block_mask=bm, block_size=(128, 128)))
for name, (B, T, fn) in cases.items():
    q, k, v, do = (torch.randn(B, T, 16, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
                   for _ in range(4))
    for op, cfgs in (("fwd", FWD), ("dkdv", DKDV), ("dq", DQ)):
        for cfg in cfgs:
            force.clear()
            force[op] = cfg
            try:
                ms = measure(fn, op, q, k, v, do)
            except Exception as e:  # noqa: BLE001
                ms = f"{type(e).__name__}: {str(e)[:100]}"
            out["rows"].append({"case": name, "kernel": op, "tile": cfg, "ms": ms})
            print(name, op, cfg, ms, flush=True)
    del q, k, v, do
    torch.cuda.empty_cache()
json.dump(out, open(os.path.join(os.environ.get("OUT", "."), "sweep_masks.json"), "w"), indent=1)
sys.exit(0)
