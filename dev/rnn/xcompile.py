"""Cross-compile the fused RNN kernels for sm_90 on a CPU machine (no GPU needed) and report shared memory,
registers, spills, and where the recurrent matrix lives (local_alloc inside or outside the time loop).
usage: python dev/rnn/xcompile.py fwd|bwd CELL(0/1/2) DTYPE(fp16/bf16/fp32) D BJ NUM_WARPS [PREFETCH [BAR [KC]]]"""
import re
import sys

import kernel_variants as K  # dev/rnn/: every variant (the library's kernel has barriers 0, 1 and no fwd KB)
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

which, cell, dt = sys.argv[1], int(sys.argv[2]), sys.argv[3]
D, BJ, nw = int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
pf = len(sys.argv) < 8 or sys.argv[7] == "1"
bar = int(sys.argv[8]) if len(sys.argv) > 8 else 0
kc = int(sys.argv[9]) if len(sys.argv) > 9 else 0
fuse = len(sys.argv) > 10 and sys.argv[10] == "1"
kb = int(sys.argv[11]) if len(sys.argv) > 11 else 0
DP = max(16, 1 << (D - 1).bit_length())
fn = K._fused_recurrent_rnn_fwd_kernel if which == "fwd" else K._fused_recurrent_rnn_bwd_kernel
ptrs = ["X", "R", "H0", "Y", "GS"] if which == "fwd" else ["R", "GS", "H0", "Y", "DY", "DX", "DQ"]
sig = {n: "*" + dt for n in ptrs}
sig.update({n: "*fp32" for n in ("BIAS", "CS", "DST") if n in fn.arg_names})
sig.update(CNT="*i32", FLG="*i32", Z="*i64", B="i32", T="i32", t0="i32", n_steps="i32")
if which == "bwd":
    sig["finish"] = "i32"
consts = dict(NH=1, D=D, DP=DP, G=4 if cell != 1 else 3, CELL=cell, BB=16, BJ=BJ, NJ=-(-D // BJ), SYNC=True,
              PREFETCH=pf, FAST=True, PRECISION="ieee" if dt == "fp32" else "tf32",
              UPCAST=False, BAR=bar, KC=kc, KB=kb, **({"FUSE": fuse} if which == "fwd" else {}),
              NJP=1 << (-(-D // BJ) - 1).bit_length())
if which == "fwd":
    consts["SAVE"] = True

sig.update({k: "constexpr" for k in consts})
sig = {k: sig[k] for k in fn.arg_names}
src = ASTSource(fn, sig, constexprs={(fn.arg_names.index(k),): v for k, v in consts.items()})
c = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": nw})
ttgir = c.asm["ttgir"]
loop = ttgir[ttgir.find("scf.for"):]
print(f"{which} cell={cell} {dt} D={D} BJ={BJ} nw={nw} prefetch={pf} bar={bar} kc={kc} fuse={fuse} kb={kb}: "
      f"smem={c.metadata.shared} B",
      "regs/spills:", re.findall(r"\.maxnreg|\.reg \.b32 %r<(\d+)>", c.asm["ptx"])[:1],
      "local_alloc total/in-loop:", ttgir.count("local_alloc"), loop.count("local_alloc"),
      "mma:", "wgmma" if "warp_group_dot" in ttgir else ("mma v2" if "mma" in ttgir else "fma"),
      "local stores:", c.asm["ptx"].count("st.local"))
open(f"/tmp/{which}_{cell}_{dt}_{D}.ttgir", "w").write(ttgir)
open(f"/tmp/{which}_{cell}_{dt}_{D}.ptx", "w").write(c.asm["ptx"])
