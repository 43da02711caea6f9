"""Compile the Hopper dK/dV kernel (hopper.py: `_hopper_flash_attn_bwd_dkdv_kernel`) for sm_90 without a GPU.

    PYTHONPATH=/tmp/t36:$PWD python dev/attention/hopper_bwd_aot.py [--dump DIR]
Per variant: registers, stack (spills), shared memory, warp specialisation, wgmma/TMA counts, and the box rows of
every TMA load in the TTGIR next to the descriptor boxes (a mismatch hangs: the forward's run H1).
"""

import argparse
import os
import re
import sys

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from ioaware.kernels.attention.flash.hopper import _hopper_flash_attn_bwd_dkdv_kernel as kernel

sys.path.insert(0, os.path.dirname(__file__))
from hopper_aot import resources  # noqa: E402


def compile_variant(D, BM, BN, warps, stages, ws, causal, one_loop, group=1, even_m=True, dtype="bf16",
                    sparse=False):
    sig = {n: f"*{dtype}" for n in ("Q", "K", "V", "DO", "DK", "DV")}
    sig.update({"LSE": "*fp32", "DELTA": "*fp32", "T": "i32", "NROWS": "i32", "scale": "fp32", "scale_log2": "fp32",
                "BLK_CNT": "*i32", "BLK_IDX": "*i32"})
    sig.update({n: "i32" for n in ("s_cb", "s_ch", "s_cm", "s_ib", "s_ih", "s_im")})
    const = {"HQ": 16, "HKV": 16 // group, "GROUP": group, "D": D, "BM": BM, "BN": BN, "IS_CAUSAL": causal,
             "STAGES": stages, "WS": ws, "EVEN_M": even_m, "ONE_LOOP": one_loop,
             "SPARSE": sparse, "SQ": 128, "SK": 128, "SPARSE_MASK": sparse and not even_m}
    for k in const:
        sig[k] = "constexpr"
    names = kernel.arg_names
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in ("Q", "K", "V", "DO", "DK", "DV", "LSE", "DELTA",
                                                                   "T", "NROWS")}
    src = ASTSource(kernel, sig, constexprs=const, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps, "num_stages": stages})


VARIANTS = [  # (D, BM, BN, warps, stages, ws, causal, one_loop, group, even_m)
    *[(128, bm, 128, 8, s, False, c, False, 1, True) for bm in (64, 128) for s in (2, 3) for c in (False, True)],
    (128, 64, 128, 8, 2, False, False, False, 4, False), (128, 64, 128, 8, 2, False, True, False, 4, False),
    (128, 64, 128, 8, 2, False, False, True, 1, True), (128, 64, 128, 8, 2, False, True, True, 1, True),
    *[(128, bm, 128, 4, s, True, c, True, g, e) for bm in (64, 128) for s in (2, 3) for c in (False, True)
      for g, e in ((1, True), (4, False))],
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dump", default=None)
    ap.add_argument("--ws-only", action="store_true")
    ap.add_argument("--sparse", action="store_true", help="the block-sparse dK/dV (transposed lists), non-causal")
    a = ap.parse_args()
    variants = VARIANTS
    if a.sparse:
        variants = [(128, 64, 128, 8, s, False, False, False, g, e) for s in (2, 3) for g, e in
                    ((1, True), (4, False))]
    for D, BM, BN, w, s, ws, c, one, g, e in variants:
        if a.ws_only and not ws:
            continue
        tag = (f"D{D} BM{BM} BN{BN} w{w} s{s} ws{int(ws)} causal{int(c)} one{int(one)} group{g} even{int(e)}"
               f" sparse{int(a.sparse)}")
        try:
            k = compile_variant(D, BM, BN, w, s, ws, c, one, g, e, sparse=a.sparse)
        except Exception as ex:  # noqa: BLE001 - report and go on
            print(f"{tag}: FAILED {type(ex).__name__}: {str(ex).splitlines()[0][:200]}", flush=True)
            continue
        ttgir, ptx = k.asm["ttgir"], k.asm["ptx"]
        boxes = sorted(set(re.findall(r"tensordesc<tensor<(\d+x\d+)x", ttgir)))
        loads = sorted(set(re.findall(r"async_tma_copy_global_to_local.*?-> !ttg\.memdesc<(\d+x\d+)x", ttgir)))
        n_ws = ttgir.count("ttg.warp_specialize")
        print(f"{tag}: {resources(k.asm['cubin'])} smem {k.metadata.shared} ws_ops {n_ws} "
              f"wgmma {ptx.count('wgmma.mma_async')} tma {ptx.count('cp.async.bulk.tensor')} "
              f"setmaxnreg {ptx.count('setmaxnreg')} total_warps {k.metadata.num_warps} boxes {boxes} loads {loads}",
              flush=True)
        if a.dump:
            os.makedirs(a.dump, exist_ok=True)
            base = os.path.join(a.dump, tag.replace(" ", "_"))
            for ext in ("ttgir", "ptx"):
                with open(f"{base}.{ext}", "w") as f:
                    f.write(k.asm[ext])


if __name__ == "__main__":
    sys.exit(main())
