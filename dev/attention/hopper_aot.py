"""Compile the Hopper forward (ioaware/kernels/attention/flash/hopper.py) for sm_90 on a machine without a GPU.

Run with Triton 3.6 (the device's version) first on the path, e.g.
    PYTHONPATH=/tmp/t36:$PWD python dev/attention/hopper_aot.py [--dump DIR]
Prints per variant: registers, spills, shared memory, whether the loop was warp-specialised, wgmma and TMA
counts in the PTX. Costs no device time; what it cannot tell is the speed.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from ioaware.kernels.attention.flash.hopper import _hopper_flash_attn_fwd_kernel as kernel


def compile_variant(D, BM, BN, warps, stages, ws, causal, dtype="bf16", even_n=True, one_loop=False, left=False,
                    sparse=False):
    sig = {"Q": f"*{dtype}", "desc_k": f"tensordesc<{dtype}[{BN}, {D}]>",
           "desc_v": f"tensordesc<{dtype}[{BN}, {D}]>",
           "O": f"*{dtype}", "LSE": "*fp32", "T": "i32", "NROWS": "i32", "scale_log2": "fp32", "WL": "i32",
           "BLK_CNT": "*i32", "BLK_IDX": "*i32", **{n: "i32" for n in ("s_cb", "s_ch", "s_cm", "s_ib", "s_ih", "s_im")}}
    const = {"HQ": 16, "GROUP": 1, "D": D, "BM": BM, "BN": BN, "IS_CAUSAL": causal, "STAGES": stages, "WS": ws,
             "REV": causal, "EVEN_M": True, "EVEN_N": even_n,
             "ONE_LOOP": one_loop, "HAS_LEFT": left,
             "SPARSE": sparse, "SQ": 128, "SK": 128, "SPARSE_MASK": sparse and not even_n}
    for k in const:
        sig[k] = "constexpr"
    names = kernel.arg_names
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in ("Q", "O", "LSE", "T", "NROWS")}
    src = ASTSource(kernel, sig, constexprs=const, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps, "num_stages": stages})


def resources(cubin: bytes) -> str:
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    out = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+)", out)
    return f"regs {m.group(1)} stack {m.group(2)}" if m else out.strip()[-200:]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dump", default=None)
    ap.add_argument("--only", default=None, help="D,BM,BN,warps,stages,ws,causal")
    ap.add_argument("--window", action="store_true", help="the sliding-window (HAS_LEFT, causal) variants, D128")
    ap.add_argument("--sparse", action="store_true", help="the block-sparse (SPARSE, 128x128 blocks) variants, D128")
    a = ap.parse_args()
    left = a.window
    if a.sparse:  # (D, BM, BN, warps, stages, ws, causal, even_n, one_loop)
        variants = [(128, 128, 128, 4, 2, True, False, True, True), (128, 128, 128, 8, 3, False, False, True, False),
                    (128, 128, 128, 8, 2, False, False, True, False), (128, 64, 64, 4, 3, False, False, True, False),
                    (128, 128, 64, 8, 3, False, False, True, False), (128, 128, 128, 4, 2, True, False, False, True),
                    (128, 128, 128, 8, 3, False, False, False, False)]
    elif a.window:  # (D, BM, BN, warps, stages, ws, causal, even_n, one_loop)
        variants = [(128, 128, 128, 8, 3, False, True, True, False), (128, 128, 128, 8, 2, False, True, True, False),
                    (128, 128, 64, 8, 3, False, True, True, False), (128, 128, 64, 4, 3, False, True, True, False),
                    (128, 64, 64, 4, 3, False, True, True, False), (128, 64, 64, 4, 4, False, True, True, False),
                    (128, 64, 128, 4, 3, False, True, True, True), (128, 128, 128, 4, 2, True, True, True, True),
                    (128, 128, 64, 4, 2, True, True, True, True), (128, 128, 128, 8, 3, False, True, True, True)]
    elif a.only:
        v = a.only.split(",")
        variants = [(int(v[0]), int(v[1]), int(v[2]), int(v[3]), int(v[4]), v[5] == "1", v[6] == "1",
                     v[7] == "1" if len(v) > 7 else True, v[8] == "1" if len(v) > 8 else False)]
    else:  # (D, BM, BN, warps, stages, ws, causal, even_n, one_loop)
        variants = [(D, 128, BN, 4, s, True, c, e, True) for D in (64, 128) for BN in (64, 128) for s in (2, 3)
                    for c, e in ((False, True), (True, True), (False, False))]
    for D, BM, BN, w, s, ws, c, even_n, one_loop in variants:
        tag = (f"D{D} BM{BM} BN{BN} w{w} s{s} ws{int(ws)} causal{int(c)} even{int(even_n)} one{int(one_loop)}"
               f" left{int(left)} sparse{int(a.sparse)}")
        try:
            k = compile_variant(D, BM, BN, w, s, ws, c, even_n=even_n, one_loop=one_loop, left=left, sparse=a.sparse)
        except Exception as e:  # noqa: BLE001 - report and go on
            print(f"{tag}: FAILED {type(e).__name__}: {str(e).splitlines()[0][:200]}", flush=True)
            continue
        ttgir, ptx = k.asm["ttgir"], k.asm["ptx"]
        n_ws = ttgir.count("ttg.warp_specialize")
        parts = re.findall(r"partition\d+\(.*?num_warps\((\d+)\)", ttgir)
        print(f"{tag}: {resources(k.asm['cubin'])} smem {k.metadata.shared} ws_ops {n_ws} "
              f"wgmma {ptx.count('wgmma.mma_async')} tma {ptx.count('cp.async.bulk.tensor')} "
              f"setmaxnreg {ptx.count('setmaxnreg')} total_warps {k.metadata.num_warps} parts {parts}", flush=True)
        if a.dump:
            os.makedirs(a.dump, exist_ok=True)
            base = os.path.join(a.dump, tag.replace(" ", "_"))
            for ext in ("ttgir", "ptx"):
                with open(f"{base}.{ext}", "w") as f:
                    f.write(k.asm[ext])


if __name__ == "__main__":
    sys.exit(main())
