"""Compile the fftconv kernels for sm_90 without a GPU (Triton's AOT path) and report registers, spills and
shared memory from ptxas: catches compile failures and spills before any device time is spent.

    PYTHONPATH=/tmp/t36/site:. python dev/fftconv/compile_check.py      # with the device's Triton (3.6)
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget

from ioaware.kernels.conv import monarch as mk
from ioaware.kernels.conv import monarch3 as mk3

PTXAS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")


def compile_one(fn, sig: dict, consts: dict, warps: int, stages: int = 3):
    src = triton.compiler.ASTSource(fn=fn, signature={**sig, **{k: "constexpr" for k in consts}}, constexprs=consts)
    c = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps, "num_stages": stages})
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(c.asm["ptx"])
    out = subprocess.run([PTXAS, "-arch=sm_90a", "-v", f.name, "-o", "/dev/null"], capture_output=True, text=True)
    info = out.stderr
    regs = re.search(r"Used (\d+) registers", info)
    spill = re.findall(r"(\d+) bytes spill stores", info)
    mma = "wgmma" if "wgmma" in c.asm["ptx"] else ("mma.sync" if "mma.sync" in c.asm["ptx"] else "none")
    return {"regs": int(regs.group(1)) if regs else None, "spill_st": sum(map(int, spill)),
            "smem": c.metadata.shared, "mma": mma}


PAIR = ["X", "G_IN", "O1", "G_O1", "O2", "G_O2"]


def pair2(N1, M, R, warps, stages=2, S=1, MK=None, dt="bf16"):
    sig = {n: f"*{dt}" for n in PAIR}
    sig.update(KF="*fp32", F1=f"*{dt}", F2=f"*{dt}", TW="*fp32", B="i32", L="i32", KF_H="i32", NGRP="i32")
    tdt, prec = (tl.float32, "tf32x3") if dt == "fp32" else (tl.bfloat16, "tf32")
    c = dict(H=768, N1=N1, NIN=N1 // 2, M=M, MK=MK or M, R=R, S=S, HAS_GIN=True, HAS_GO1=True, HAS_O2=False,
             REV=False, DT=tdt, PREC=prec, STAGES=stages)
    return compile_one(mk._conv2_pair_kernel, sig, c, warps)


def pair3(N1, N2, N3, R, warps, stages=2, dt="bf16"):
    sig = {n: f"*{dt}" for n in PAIR}
    sig.update(KF="*fp32", F1=f"*{dt}", F2=f"*{dt}", F3=f"*{dt}", TW="*fp32", TW2="*fp32", B="i32", L="i32",
               KF_H="i32", NPAIR="i32")
    c = dict(H=768, N1=N1, NIN=N1 // 2, N2=N2, N3=N3, R=R, HAS_GIN=True, HAS_GO1=True, HAS_O2=False, REV=False,
             DT=tl.bfloat16, PREC="tf32", STAGES=stages)
    return compile_one(mk3._conv3_pair_kernel, sig, c, warps)


def cplx2(N1, M, R, warps, stages=2, PR=9, S=1):
    sig = {"Y": "*fp32", "KF": "*fp32", "F1": "*bf16", "F2": "*bf16", "TW": "*fp32", "KF_H": "i32", "NSEQ": "i32",
           "NGRP": "i32"}
    c = dict(H=768, PR=PR, N1=N1, M=M, R=R, S=S, DT=tl.bfloat16, PREC="tf32", STAGES=stages)
    return compile_one(mk._conv2_cplx_kernel, sig, c, warps)


def spec2(N1, M, R, warps):
    sig = {"U": "*bf16", "G_U": "*bf16", "D": "*bf16", "G_D": "*bf16", "SPEC": "*fp32", "B": "i32", "L": "i32",
           "NPAIR": "i32", "G": "i32", "F1": "*bf16", "F2": "*bf16", "TW": "*fp32"}
    c = dict(H=768, N1=N1, NIN=N1 // 2, M=M, R=R, HAS_GU=True, HAS_GD=True, DT=tl.bfloat16, PREC="tf32")
    return compile_one(mk._spec2_kernel, sig, c, warps, 1)


def outer(which, P, M, MB=256):
    PH, KP = P // 2, P // 2 + 1
    PPAD, KPAD = max(16, PH), max(16, triton.next_power_of_2(KP))
    if which == "fwd":
        sig = {"X": "*bf16", "G_IN": "*bf16", "Y": "*fp32", "FO": "*bf16", "TWO": "*fp32", "L": "i32", "M": "i32",
               "NMB": "i32"}
        c = dict(PH=PH, PPAD=PPAD, KP=KP, KPAD=KPAD, MB=MB, HAS_GIN=True, REV=False, DT=tl.bfloat16, PREC="tf32")
        return compile_one(mk._outer_fwd_kernel, sig, c, 4)
    sig = {"Y": "*fp32", "O1": "*bf16", "G_O1": "*bf16", "O2": "*bf16", "G_O2": "*bf16", "GO": "*bf16",
           "TWO": "*fp32", "L": "i32", "M": "i32", "NMB": "i32"}
    c = dict(PH=PH, PPAD=PPAD, KP=KP, KPAD=KPAD, MB=MB, HAS_GO1=True, HAS_O2=False, REV=False, DT=tl.bfloat16,
             PREC="tf32")
    return compile_one(mk._outer_inv_kernel, sig, c, 4)


SMEM_MAX = 232448


if __name__ == "__main__":
    print("triton", triton.__version__)
    jobs = [a for a in sys.argv[1:]] or ["all"]
    todo = []
    for N1, M in ((32, 16), (32, 32), (64, 32), (64, 64), (128, 32), (128, 64), (64, 128), (256, 64), (128, 128)):
        for R, w, st in ((16, 4, 2), (16, 8, 2), (32, 8, 2), (16, 8, 1), (16, 8, 3)):
            todo.append((f"pair2 N1={N1} M={M} R={R} w={w} s={st}",
                         lambda a=(N1, M, R, w, st): pair2(*a)))
    for (N1, N2, N3) in ((32, 16, 16), (64, 16, 16), (32, 16, 32)):
        for R, w, st in ((16, 4, 2), (16, 8, 2), (16, 8, 1)):
            todo.append((f"pair3 {N1}x{N2}x{N3} R={R} w={w} s={st}", lambda a=(N1, N2, N3, R, w, st): pair3(*a)))
    for N1, M in ((32, 32), (32, 64), (64, 64)):
        for w in (4, 8):
            todo.append((f"cplx2 N1={N1} M={M} w={w}", lambda N1=N1, M=M, w=w: cplx2(N1, M, 16, w)))
    for N1, M in ((32, 16), (32, 32), (64, 32), (64, 64), (128, 64), (256, 64)):
        todo.append((f"spec2 N1={N1} M={M} w=8", lambda N1=N1, M=M: spec2(N1, M, 16, 8)))
    todo.append(("outer fwd P=16", lambda: outer("fwd", 16, 4096)))
    todo.append(("outer inv P=16", lambda: outer("inv", 16, 4096)))
    todo.append(("outer fwd P=32", lambda: outer("fwd", 32, 4096)))
    todo.append(("outer inv P=32", lambda: outer("inv", 32, 4096)))
    for name, f in todo:
        if jobs != ["all"] and not any(j in name for j in jobs):
            continue
        try:
            r = f()
            flag = " SMEM>LIMIT" if r["smem"] > SMEM_MAX else ""
            flag += " SPILL" if r["spill_st"] else ""
            print(f"{name:40s}", r, flag, flush=True)
        except Exception as e:  # noqa: BLE001
            print(f"{name:40s} FAILED {type(e).__name__}: {str(e)[:300]}", flush=True)


def pair2t(N1, M, R, warps, stages=2, MK=None, dt="bf16"):
    sig = {n: f"*{dt}" for n in PAIR}
    sig.update(KF="*fp32", F1=f"*{dt}", F2=f"*{dt}", TW="*fp32", B="i32", L="i32", KF_H="i32", NGRP="i32")
    tdt, prec = (tl.float32, "tf32x3") if dt == "fp32" else (tl.bfloat16, "tf32")
    c = dict(H=768, N1=N1, NIN=N1 // 2, M=M, MK=MK or M, R=R, HAS_GIN=True, HAS_GO1=True, HAS_O2=False,
             REV=False, DT=tdt, PREC=prec, STAGES=stages)
    return compile_one(mk._conv2t_pair_kernel, sig, c, warps)


def cplx2t(N1, M, R, warps, stages=2, PR=9):
    sig = {"Y": "*fp32", "KF": "*fp32", "F1": "*bf16", "F2": "*bf16", "TW": "*fp32", "KF_H": "i32"}
    c = dict(H=768, PR=PR, N1=N1, M=M, R=R, DT=tl.bfloat16, PREC="tf32", STAGES=stages)
    return compile_one(mk._conv2t_cplx_kernel, sig, c, warps)


def defaults():
    """Every kernel the default plans launch (bf16 forward and backward), as compiled for sm_90 by this Triton."""
    from ioaware.kernels.conv.reference import FUSED, INNER

    out = []
    for N, c in FUSED.items():
        N1, N2, N3, R, w, st, S, T = c
        M = N2 * N3
        if T:
            out.append((f"fwd N={N} T {N1}x{M} R{R} w{w}", lambda a=(N1, M, R, w, st): pair2t(*a)))
        else:
            out.append((f"fwd N={N} rows {N1}x{M} R{R} S{S} w{w}", lambda a=(N1, M, R, w, st, S): pair2(*a)))
        out.append((f"dk N={N} spec {N1}x{M}", lambda a=(N1, M, R, 8 if N >= 8192 else 4): spec2(*a)))
    for M, c in INNER.items():
        N1, N2, _, R, w, st, S, T = c
        if M >= 2048:
            out.append((f"middle M={M} T {N1}x{N2} R{R} w{w}", lambda a=(N1, N2, R, w, st): cplx2t(*a)))
    out += [("outer fwd P=16", lambda: outer("fwd", 16, 4096)), ("outer inv P=16", lambda: outer("inv", 16, 4096))]
    return out
