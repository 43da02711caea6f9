"""Time the backward with alternative dQ / dK-dV tiles where the table's tile spills registers (H100 run).

The causal dQ tile at D = 128, T >= 4k (128x32, 4 warps) spills 48 registers, and the D = 64 dK/dV tile (64x128,
4 warps) 30; spilled registers go to local memory and add DRAM writes the IO model does not count. This times the
whole backward (dK/dV + dQ) with each candidate substituted, in one process, and prints JSON lines to stdout.
"""

import json
import os

import torch
import triton

import ioaware
from ioaware.kernels.attention.flash import kernel as fk

orig = fk.tile_table


def with_tile(op, tile):
    def table(o, D, T, causal):
        t = orig(o, D, T, causal)
        if o == op and tile is not None:
            t.update(BM=tile[0], BN=tile[1], num_warps=tile[2], num_stages=tile[3])
        return t
    return table


STAGES = [("dkdv", 64, True, [None, (64, 128, 4, 2), (64, 128, 4, 4), (64, 128, 4, 1)])]
cases = STAGES if os.environ.get("DKDV_STAGES") else [
         ("dq", 128, True, [None, (128, 64, 8, 3), (64, 64, 4, 3), (128, 32, 8, 3)]),
         ("dkdv", 64, False, [None, (64, 128, 8, 3), (32, 128, 4, 3), (64, 64, 4, 3)]),
         ("dkdv", 64, True, [None, (64, 128, 8, 3), (32, 128, 4, 3), (64, 64, 4, 3)])]
for op, D, causal, tiles in cases:
    for T in (4096, 16384):
        H, B = 2048 // D, 16384 // T
        q, k, v = (torch.randn(B, T, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
        o = ioaware.flash_attn(q, k, v, causal=causal)
        do = torch.randn_like(o)
        ref = None
        for tile in tiles:
            fk.tile_table = with_tile(op, tile)
            g = torch.autograd.grad(o, (q, k, v), do, retain_graph=True)
            err = None if ref is None else max((a.float() - b.float()).abs().max().item() for a, b in zip(g, ref))
            ref = ref or g
            ms = triton.testing.do_bench(
                lambda o=o, x=(q, k, v), do=do: torch.autograd.grad(o, x, do, retain_graph=True), rep=200)
            spills = [(ck.metadata.num_warps, ck.metadata.num_stages, ck.n_regs, ck.n_spills)
                      for c in getattr(fk._flash_attn_bwd_dkdv_kernel, "device_caches", {}).values()
                      for ck in c[0].values()]
            print(json.dumps({"compiled_dkdv": spills}), flush=True)
            print(json.dumps({"op": op, "D": D, "T": T, "causal": causal, "tile": tile or "table", "bwd_ms": ms,
                              "max_diff_vs_table": err}), flush=True)
        fk.tile_table = orig
