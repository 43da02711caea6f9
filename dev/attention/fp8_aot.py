"""Compile the FP8 forward (ioaware/kernels/attention/flash/fp8.py) for sm_90 on a machine without a GPU.

Run with Triton 3.6 (the device's version) first on the path, e.g.
    PYTHONPATH=/tmp/triton36/src:$PWD .venv/bin/python dev/attention/fp8_aot.py
Prints per tile (fp8._FP8_TILES) x (D, causal): registers, spills, shared memory, and the wgmma instructions in the
PTX with their operand types (e4m3 both sides means the FP8 tensor cores run both GEMMs). Costs no device time.
"""

import re
import sys

import triton
from hopper_aot import resources  # this folder is on sys.path when run as a script
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from ioaware.kernels.attention.flash import fp8


def compile_tile(D, BM, BN, warps, stages, causal):
    k = fp8._fp8_fwd_kernel
    sig = {n: "*fp8e4nv" for n in ("Q", "K", "VT")}
    sig.update({n: "*fp32" for n in ("QS", "KS", "VS", "LSE")})
    sig["O"] = "*bf16"
    for n in k.arg_names:
        if n.startswith("s_") or n in ("Tq", "Tk", "NQB", "NKB", "T_BUCKET"):
            sig[n] = "i32"
    sig["scale_log2"] = "fp32"
    const = {"HQ": 16, "HKV": 16, "GROUP": 1, "D": D, "BM": BM, "BN": BN, "SB": fp8.SCALE_BLOCK, "IS_CAUSAL": causal,
             "REV": causal, "EMULATE": False}
    for n in const:
        sig[n] = "constexpr"
    names = k.arg_names
    div = ("Q", "K", "VT", "O", "LSE", "QS", "KS", "VS", "s_qt", "s_kt", "s_vd", "s_ot", "s_qb", "s_kb", "s_vb", "s_vh")
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in div}
    src = ASTSource(k, sig, constexprs=const, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps, "num_stages": stages})


def main():
    print("triton", triton.__version__)
    for D in (128, 64, 256):
        for bm, bn, w, s in fp8._FP8_TILES:
            if D > 128 and bm * bn > 64 * 64:
                continue
            for causal in (False, True):
                tag = f"D{D} BM{bm} BN{bn} w{w} s{s} causal{int(causal)}"
                try:
                    c = compile_tile(D, bm, bn, w, s, causal)
                except Exception as e:  # noqa: BLE001
                    print(f"{tag}: FAILED {type(e).__name__}: {str(e).splitlines()[0][:300]}", flush=True)
                    continue
                ptx = c.asm["ptx"]
                kinds = sorted(set(re.findall(r"wgmma\.mma_async\.sync\.aligned\.m64n\d+k\d+\.f32\.(\w+)\.(\w+)", ptx)))
                print(f"{tag}: {resources(c.asm['cubin'])} smem {c.metadata.shared} "
                      f"wgmma {ptx.count('wgmma.mma_async')} {kinds} mma.sync {ptx.count('mma.sync')}", flush=True)
        if D == 128 and "--all" not in sys.argv:
            continue


if __name__ == "__main__":
    sys.exit(main())
