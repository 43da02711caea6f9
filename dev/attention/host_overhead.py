"""Is the T = 1k gap host overhead? Times flash_attn fwd and bwd eagerly, as CUDA-graph replays (no host work),
and SDPA's flash backend eagerly, round-robin, 3 rounds. Writes $OUT/host_overhead.json."""

import json
import math
import os

import torch
import triton.testing
from torch.nn.attention import SDPBackend, sdpa_kernel

import ioaware
from ioaware.bench.common import graphed

bench = lambda f: triton.testing.do_bench(f, warmup=50, rep=200, return_mode="median")


out = []
for D, T, causal in [(64, 1024, True), (128, 1024, True), (128, 1024, False), (128, 16384, True)]:
    B, H = 16384 // T, 2048 // D
    q, k, v, do = (torch.randn(B, T, H, D, device="cuda", dtype=torch.bfloat16) for _ in range(4))
    scale = 1 / math.sqrt(D)
    o, lse = torch.ops.ioaware.flash_attn_fwd(q, k, v, causal, scale)
    # loop variables bound as defaults (B023): each case runs inside its own iteration, so nothing changes
    fwd = lambda q=q, k=k, v=v, causal=causal, scale=scale: torch.ops.ioaware.flash_attn_fwd(q, k, v, causal, scale)
    bwd = lambda do=do, q=q, k=k, v=v, o=o, lse=lse, causal=causal, scale=scale: torch.ops.ioaware.flash_attn_bwd(
        do, q, k, v, o, lse, causal, scale)
    qs, ks, vs = (t.detach().transpose(1, 2).requires_grad_() for t in (q, k, v))

    def sdpa_fwd(qs=qs, ks=ks, vs=vs, causal=causal):
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            return torch.nn.functional.scaled_dot_product_attention(qs, ks, vs, is_causal=causal)

    os_ = sdpa_fwd()
    sdpa_bwd = lambda os_=os_, qs=qs, ks=ks, vs=vs, do=do: torch.autograd.grad(os_, (qs, ks, vs), do.transpose(1, 2),
                                                                          retain_graph=True)
    qa, ka, va = (t.detach().clone().requires_grad_() for t in (q, k, v))
    oa = ioaware.flash_attn(qa, ka, va, causal=causal)

    def public_fwd(qa=qa, ka=ka, va=va, causal=causal):
        with torch.no_grad():
            return ioaware.flash_attn(qa, ka, va, causal=causal)

    public_bwd = lambda oa=oa, qa=qa, ka=ka, va=va, do=do: torch.autograd.grad(oa, (qa, ka, va), do, retain_graph=True)
    cases = {"ioaware fwd public": public_fwd, "ioaware bwd autograd": public_bwd, "ioaware fwd eager": fwd,
             "ioaware fwd graph": graphed(fwd), "sdpa-flash fwd eager": sdpa_fwd,
             "ioaware bwd eager": bwd, "ioaware bwd graph": graphed(bwd), "sdpa-flash bwd eager": sdpa_bwd}
    res = {k: [] for k in cases}
    for _ in range(3):
        for name, f in cases.items():
            res[name].append(bench(f))
    flops = 4 * B * H * T * T * D / (2 if causal else 1)
    row = {"D": D, "T": T, "causal": causal, "ms": res}
    print(f"D{D} T{T} causal={causal}")
    for name, ms in res.items():
        tf = flops * (2.5 if "bwd" in name else 1) / min(ms) / 1e9
        print(f"   {name:22s} {' '.join(f'{x:.3f}' for x in ms)} ms   best {tf:.0f} TFLOP/s")
    out.append(row)
json.dump(out, open(os.path.join(os.environ.get("OUT", "."), "host_overhead.json"), "w"), indent=1)
