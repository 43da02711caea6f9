"""Compile the fused selection kernel (ioaware/kernels/attention/sparse/topk.py) for sm_90 on a machine without a GPU.

Costs no device time: it says whether `_nsa_topk_fwd_kernel` compiles for Hopper with the Triton on the path, and its
registers, spills and shared memory per configuration (both networks), next to the scores kernel it replaces. It
cannot tell the speed (v1_fused_topk.py on the device does). With the device's Triton first on the path, e.g.
    PYTHONPATH=/tmp/t36:$PWD python dev/nsa/topk_aot.py
"""

import argparse
import os
import re
import subprocess
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from ioaware.kernels.attention.sparse.compressed import _nsa_select_scores_kernel
from ioaware.kernels.attention.sparse.topk import _nsa_topk_fwd_kernel

# the settings: block 64, stride 16, select 64 -> L = S = 4, BC = 64, NJ = 15, BJ = 16; n = 16; D = 128
COMMON = dict(HQ=16, HKV=4, GROUP=4, D=128, BD=128, BC=64, BJ=16, NJ=15, STRIDE=16, BLOCK=64, SEL=64, L=4, S=4,
              INIT=1, LOCAL=2, IS_CAUSAL=True, PRECISION="tf32", W_PRECISION="tf32", UPCAST=False)


def compile_one(kernel, const: dict, warps: int, stages: int):
    ptrs = {"Q": "*bf16", "K": "*bf16", "LSE": "*fp32"}
    out = {"IDX": "*i32"} if kernel is _nsa_topk_fwd_kernel else {"SCORE": "*fp32"}
    sig = {**ptrs, **out}
    for name in kernel.arg_names:
        if name in sig:
            continue
        sig[name] = "constexpr" if name in const else ("fp32" if name == "scale_log2" else "i32")
    src = ASTSource(kernel, sig, constexprs=const)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps, "num_stages": stages})


def resources(cubin: bytes) -> str:
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    out = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+)", out)
    return f"regs {m.group(1)} stack {m.group(2)} shared {m.group(3)}" if m else out.strip()[-200:]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=16)
    a = ap.parse_args()
    print("triton", triton.__version__)
    np_ = max(16, triton.next_power_of_2(a.n))
    k = compile_one(_nsa_select_scores_kernel, {**COMMON, "BM": 64}, 4, 2)
    print(f"scores kernel (today), BM 64, 4 warps: {resources(k.asm['cubin'])}")
    for bm, warps, stages in ((64, 4, 2), (64, 8, 2), (128, 8, 2), (32, 4, 2)):
        for libsort in (False, True):
            const = {**COMMON, "BM": bm, "N": a.n, "NP": np_, "LOGW": np_.bit_length() - 1, "LIBSORT": libsort}
            name = f"fused BM {bm}, {warps} warps, {stages} stages, {'tl.sort' if libsort else 'bitonic'}"
            try:
                k = compile_one(_nsa_topk_fwd_kernel, const, warps, stages)
                print(f"{name}: {resources(k.asm['cubin'])}")
            except Exception as e:  # noqa: BLE001  (print and go on: the other configurations still tell)
                print(f"{name}: FAILED {type(e).__name__}: {str(e)[:300]}")


if __name__ == "__main__":
    main()
