"""L2 re-read probe for Nsight Compute: how much of a buffer read once is still in L2 when read again.

For each size S, `_l2_touch` streams an S-byte buffer, then `_l2_probe` streams it again in the same order (or
reversed). ncu (--cache-control none, filtered to `_l2_probe`) counts the DRAM bytes of the second pass; the hit
fraction 1 - dram/S as a function of S is the L2's hit curve for a reuse distance of S bytes (the stack distance of
every line in a same-order re-read), which `ioaware.sim.l2` uses. Usage: python dev/iomodel/l2_probe.py
"""

import json
import os

import torch
import triton
import triton.language as tl

CHUNK = 16384  # fp32 elements per program: 64 KB, the size of one K+V block pair of the attention kernels


@triton.jit
def _l2_touch(X, Y, REV: tl.constexpr, N: tl.constexpr):
    pid = tl.num_programs(0) - 1 - tl.program_id(0) if REV else tl.program_id(0)
    o = pid * N + tl.arange(0, N)
    tl.store(Y + tl.program_id(0), tl.sum(tl.load(X + o), 0))


@triton.jit
def _l2_probe(X, Y, REV: tl.constexpr, N: tl.constexpr):
    pid = tl.num_programs(0) - 1 - tl.program_id(0) if REV else tl.program_id(0)
    o = pid * N + tl.arange(0, N)
    tl.store(Y + tl.program_id(0), tl.sum(tl.load(X + o), 0))


sizes_mb = [int(s) for s in os.environ["PROBE_MB"].split(",")] if os.environ.get("PROBE_MB") else \
    [4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 48, 56, 64, 80, 96]
manifest = []
for rev in (False, True):
    for mb in sizes_mb:
        n_prog = mb * 2**20 // (CHUNK * 4)
        x = torch.randn(n_prog * CHUNK, device="cuda")
        y = torch.empty(n_prog, device="cuda")
        _l2_touch[(n_prog,)](x, y, REV=False, N=CHUNK)
        _l2_probe[(n_prog,)](x, y, REV=rev, N=CHUNK)
        torch.cuda.synchronize()
        manifest.append({"bytes": n_prog * CHUNK * 4, "reverse": rev})
        del x, y
with open(os.path.join(os.environ.get("OUT", "."), "l2_probe_manifest.json"), "w") as f:
    json.dump(manifest, f)
