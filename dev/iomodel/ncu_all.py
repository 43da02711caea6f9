"""Run ioaware's attention kernels for every shape of the DRAM table in one process; ncu profiles each launch.

Writes $OUT/attn_manifest.json: one entry per profiled launch (in launch order) naming the shape and the kernel,
and the compiled kernels' register and spill counts. Usage: python dev/iomodel/ncu_all.py
"""

import json
import os

import torch

import ioaware
from ioaware.kernels.attention.flash import kernel as fk

# (B, H, Hkv, T, D, causal, backward)
# the attention benchmark's settings (B*T = 16k tokens, H*D = 2048), every one with its backward
BENCH = [(B, 2048 // D, 2048 // D, T, D, c, True) for D in (64, 128) for T, B in ((1024, 16), (4096, 4), (16384, 1))
         for c in (False, True)]
# beyond the benchmark: longer sequences, fewer heads, GQA
EXTENDED = [
    (1, 16, 16, 16384, 128, False, False), (1, 16, 16, 16384, 128, True, False), (4, 16, 16, 4096, 128, False, False),
    (1, 32, 32, 16384, 64, False, False), (2, 8, 8, 32768, 128, False, False), (16, 16, 16, 1024, 128, False, False),
    (1, 16, 16, 8192, 128, False, False), (1, 16, 16, 12288, 128, False, False), (1, 8, 8, 20480, 128, False, False),
    (1, 8, 8, 24576, 128, False, False), (1, 4, 4, 65536, 128, False, False), (1, 8, 8, 32768, 64, False, False),
    (1, 4, 4, 65536, 64, False, False), (1, 8, 8, 32768, 128, True, False), (1, 4, 4, 65536, 128, True, False),
    (1, 32, 8, 16384, 128, False, False), (1, 32, 8, 32768, 128, False, False),
    (1, 16, 16, 16384, 128, False, True), (4, 16, 16, 4096, 128, True, True), (1, 16, 16, 8192, 128, False, True),
    (1, 8, 8, 32768, 128, False, True), (1, 32, 32, 16384, 64, False, True), (1, 16, 16, 16384, 128, True, True),
]
EXTENDED = [s for s in EXTENDED if s[:6] not in {b[:6] for b in BENCH}]
SHAPES = [(s, "benchmark") for s in BENCH] + [(s, "extended") for s in EXTENDED]
manifest = []
for (B, H, Hkv, T, D, causal, bwd), group in SHAPES:
    name = f"{'bwd' if bwd else 'fwd'}-B{B}-H{H}" + (f"-KV{Hkv}" if Hkv != H else "") + f"-T{T // 1024}k-D{D}" + \
        ("-causal" if causal else "")
    q = torch.randn(B, T, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=bwd)
    k, v = (torch.randn(B, T, Hkv, D, device="cuda", dtype=torch.bfloat16, requires_grad=bwd) for _ in range(2))
    o = ioaware.flash_attn(q, k, v, causal=causal)
    manifest.append({"shape": name, "set": group, "kernel": "_flash_attn_fwd_kernel"})
    if bwd:
        o.backward(torch.randn_like(o))
        manifest += [{"shape": name, "set": group, "kernel": "_flash_attn_bwd_dkdv_kernel"},
                     {"shape": name, "set": group, "kernel": "_flash_attn_bwd_dq_kernel"}]
    torch.cuda.synchronize()
    del q, k, v, o
regs = []
for kern in (fk._flash_attn_fwd_kernel, fk._flash_attn_bwd_dkdv_kernel, fk._flash_attn_bwd_dq_kernel):
    try:
        for dev_cache in kern.device_caches.values():
            for ck in dev_cache[0].values():
                regs.append({"kernel": kern.__name__ if hasattr(kern, "__name__") else str(kern),
                             "num_warps": ck.metadata.num_warps, "shared": ck.metadata.shared,
                             "n_regs": ck.n_regs, "n_spills": ck.n_spills, "name": ck.name})
    except Exception as e:  # the cache layout differs between Triton versions; the table works without it
        regs.append({"error": repr(e)})
with open(os.path.join(os.environ.get("OUT", "."), "attn_manifest.json"), "w") as f:
    json.dump({"launches": manifest, "compiled": regs}, f, indent=1)
