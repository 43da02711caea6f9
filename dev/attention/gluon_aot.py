"""Compile the Gluon forward (ioaware/kernels/attention/flash/gluon_fwd.py) for sm_90 on a machine without a GPU.

Run with the Triton 3.6 wheel (the device's version) first on the path, e.g.
    .venv/bin/pip download --no-deps triton==3.6.0 -d /tmp/triton36 && unzip it into /tmp/triton36/src, then
    PYTHONPATH=/tmp/triton36/src:$PWD .venv/bin/python dev/attention/gluon_aot.py [--only fa3_s2] [--dump DIR]
Prints per variant x (D, causal): registers, spills, shared memory, setmaxnreg values and wgmma / TMA counts in the
PTX, or the compiler's full error. Costs no device time; what it cannot tell is whether the schedule is right (hangs,
races) or fast.
"""

import argparse
import os
import re
import traceback

import triton
from hopper_aot import resources  # this folder is on sys.path when run as a script
from triton.backends.compiler import GPUTarget
from triton.experimental.gluon import language as gl
from triton.experimental.gluon._runtime import GluonASTSource

from ioaware.kernels.attention.flash import gluon_fwd as gf


def compile_variant(variant: str, D: int, causal: bool):
    cfg = gf.VARIANTS[variant]
    ql = gl.NVMMASharedLayout.get_default_for([gf.WG_ROWS, D], gl.bfloat16)
    kvl = gl.NVMMASharedLayout.get_default_for([gf.BN, D], gl.bfloat16)
    kernel = gf._gluon_flash_attn_fwd_kernel
    sig = {"desc_q": f"tensordesc<bf16[{gf.WG_ROWS}, {D}],{ql!r}>", "desc_k": f"tensordesc<bf16[{gf.BN}, {D}],{kvl!r}>",
           "desc_v": f"tensordesc<bf16[{gf.BN}, {D}],{kvl!r}>", "O": "*bf16", "LSE": "*fp32", "T": "i32",
           "scale_log2": "fp32"}
    const = {"HQ": 16, "GROUP": 1, "D": D, "BN": gf.BN, "IS_CAUSAL": causal, "REV": causal, **cfg}
    for name in const:
        sig[name] = "constexpr"
    names = kernel.arg_names
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in ("O", "LSE")}
    src = GluonASTSource(kernel, sig, constexprs=const, attrs=attrs)
    opts = gf._launch_options(cfg)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=opts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default=None, help="one variant of gluon_fwd.VARIANTS")
    ap.add_argument("--dump", default=None, help="write each variant's TTGIR and PTX here")
    a = ap.parse_args()
    variants = [a.only] if a.only else list(gf.VARIANTS)
    failed = 0
    for v in variants:
        for D in (128, 64):
            for causal in (False, True):
                tag = f"{v:7s} D{D} causal{int(causal)}"
                try:
                    k = compile_variant(v, D, causal)
                except Exception:
                    failed += 1
                    print(f"{tag}: COMPILE FAILED\n{traceback.format_exc()}", flush=True)
                    continue
                ptx = k.asm["ptx"]
                regs = sorted(set(re.findall(r"setmaxnreg\.(\w+)\.sync\.aligned\.u32\s+(\d+)", ptx)))
                regs = " ".join(f"{d} {n}" for d, n in regs) or "-"
                print(f"{tag}: {resources(k.asm['cubin'])} smem {k.metadata.shared} B, setmaxnreg {regs}, "
                      f"wgmma {ptx.count('wgmma.mma_async')}, tma {ptx.count('cp.async.bulk.tensor')}, "
                      f"mbarrier waits {ptx.count('mbarrier.try_wait')}", flush=True)
                if a.dump:
                    os.makedirs(a.dump, exist_ok=True)
                    stem = os.path.join(a.dump, f"{v}-D{D}-c{int(causal)}")
                    for ext in ("ttgir", "ptx"):
                        with open(f"{stem}.{ext}", "w") as f:
                            f.write(k.asm[ext])
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
