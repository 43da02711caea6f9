"""Find the launch behind the illegal memory access seen at B1/T777/GQA4/D64/R38 (2026-12-03, H200): run one piece
per process (`python dev/compress/diag_lowrank.py PIECE`) with CUDA_LAUNCH_BLOCKING=1, so a fault names its launch
and cannot poison the next piece. Pieces: fused, slab1, expand, flash, all (each in its own child)."""
import os
import subprocess
import sys

import torch

B, T, HQ, HKV, D, R = 1, 777, 8, 2, 64, 38
# `vary`: the fused kernel at the failing shape with one thing changed per child (KEY=VALUE args)
VARIANTS = ["rope=16", "rope=none", "rope=32", "rope=16 num_stages=3", "rope=none num_stages=3",
            "rope=16 num_stages=4", "rope=16 num_warps=4", "rope=none num_warps=4", "rope=16 block_m=64",
            "rope=16 R=32", "rope=16 R=64", "rope=16 D=128", "rope=16 HKV=8", "rope=none R=64"]


def inputs():
    g = torch.Generator(device="cuda").manual_seed(0)

    def r(*s, scale=1.0):
        return (torch.randn(*s, device="cuda", generator=g) * scale).to(torch.bfloat16)

    inv = 1.0 / (10000.0 ** (torch.arange(0, D, 2, dtype=torch.float64, device="cuda") / D))
    ang = torch.outer(torch.arange(T, dtype=torch.float64, device="cuda"), inv)
    return (r(B, T, HQ, R), r(HQ, R, D, scale=R ** -0.5), r(B, T, HKV, R), r(HKV, R, D, scale=R ** -0.5),
            r(B, T, HKV, R), r(HKV, R, D, scale=R ** -0.5)), (ang.cos().float(), ang.sin().float())


def fused_variant(args):
    global B, T, HQ, HKV, D, R
    tiles, rope_kind = {}, "16"
    for a in args:
        k, v = a.split("=")
        if k == "rope":
            rope_kind = v
        elif k in ("block_m", "block_n", "num_warps", "num_stages"):
            tiles[k] = int(v)
        else:
            globals()[k] = int(v)
    from ioaware.kernels.lowrank import lowrank_attn
    from ioaware.kernels.lowrank.kernel import lowrank_attn_fwd
    ts, rope = inputs()
    if rope_kind == "32":  # the kernel itself with fp32 tables (the public op converts them to fp16)
        o = lowrank_attn_fwd(*ts, causal=True, softmax_scale=D ** -0.5, rope=rope, **tiles)
    else:
        o = lowrank_attn(*ts, causal=True, rope=None if rope_kind == "none" else rope, schedule="fused", **tiles)
    torch.cuda.synchronize()
    print("ok", float(o.float().abs().mean()))


def piece(name):
    from ioaware.kernels.attention import flash_attn
    from ioaware.kernels.lowrank import lowrank_attn
    from ioaware.kernels.lowrank.kernel import lowrank_expand_fwd
    ts, rope = inputs()
    if name == "fused":
        o = lowrank_attn(*ts, causal=True, rope=rope, schedule="fused")
    elif name == "fused-norope":
        o = lowrank_attn(*ts, causal=True, schedule="fused")
    elif name == "slab1":
        o = lowrank_attn(*ts, causal=True, rope=rope, schedule="slab", slab_heads=1)
    elif name == "expand":
        o = lowrank_expand_fwd(ts[0], ts[1], 0, torch.empty(B, T, 4, D, device="cuda", dtype=torch.bfloat16), rope, 0)
        o = lowrank_expand_fwd(ts[2], ts[3], 1, torch.empty(B, T, 1, D, device="cuda", dtype=torch.bfloat16), rope, 0)
    elif name == "flash":
        q = torch.randn(B, T, 4, D, device="cuda", dtype=torch.bfloat16)
        k, v = (torch.randn(B, T, 1, D, device="cuda", dtype=torch.bfloat16) for _ in range(2))
        o = flash_attn(q, k, v, causal=True)
    else:
        raise SystemExit(f"unknown piece {name}")
    torch.cuda.synchronize()
    print(name, "ok", tuple(o.shape), float(o.float().abs().mean()))


if __name__ == "__main__":
    if sys.argv[1] == "variant":
        fused_variant(sys.argv[2:])
    elif sys.argv[1] == "vary":
        env = dict(os.environ, CUDA_LAUNCH_BLOCKING="1")
        for v in VARIANTS:
            r = subprocess.run([sys.executable, __file__, "variant", *v.split()], env=env, capture_output=True,
                               text=True, timeout=120)
            print(f"{v or 'as failing':>14}: rc={r.returncode} {(r.stdout + r.stderr).strip().splitlines()[-1][:90]}")
    elif sys.argv[1] != "all":
        piece(sys.argv[1])
    else:
        env = dict(os.environ, CUDA_LAUNCH_BLOCKING="1")
        for p in ("flash", "expand", "fused-norope", "fused", "slab1"):
            r = subprocess.run([sys.executable, __file__, p], env=env, capture_output=True, text=True, timeout=300)
            tail = (r.stdout + r.stderr).strip().splitlines()[-3:]
            print(f"== {p}: rc={r.returncode}", *tail, sep="\n   ")
