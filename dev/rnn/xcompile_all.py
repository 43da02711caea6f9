"""Compile every kernel variant the GPU tests and the bench launch, for sm_90, on a CPU machine (no GPU):
`PYTHONPATH=/path/to/triton-3.6 python dev/rnn/xcompile_all.py` catches compiler failures of the device's Triton
(the sLSTM backward once failed in ConvertTritonGPUToLLVM on 3.6 only; this reproduces such failures)."""
import itertools

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from ioaware.kernels.rnn import kernel as K

TILES = [(64, 64, 8), (59, 64, 8), (200, 32, 4), (768, 16, 4), (768, 16, 8), (64, 64, 4), (16, 16, 8), (128, 128, 8),
         (128, 16, 4)]  # (D, BJ, num_warps)
bad = 0
for (D, BJ, nw), cell, dt, which, save in itertools.product(TILES, (0, 1, 2), ("fp16", "bf16", "fp32"),
                                                           ("fwd", "bwd"), (True, False)):
    if which == "bwd" and not save:
        continue
    DP = max(16, 1 << (D - 1).bit_length())
    if dt == "fp32" and D == 768:
        continue  # refused by the planner
    fn = K._fused_recurrent_rnn_fwd_kernel if which == "fwd" else K._fused_recurrent_rnn_bwd_kernel
    ptrs = ["X", "R", "H0", "Y", "GS"] if which == "fwd" else ["R", "GS", "H0", "Y", "DY", "DX", "DQ"]
    sig = {n: "*" + dt for n in ptrs}
    if cell == 2 and save:
        sig["GS"] = "*fp32"  # sLSTM saves its gate logits in fp32 (issue #9)
    sig.update({n: "*fp32" for n in ("BIAS", "CS", "DST") if n in fn.arg_names})
    sig.update(CNT="*i32", FLG="*i32", Z="*i64", B="i32", T="i32", t0="i32", n_steps="i32", finish="i32")
    consts = dict(NH=2, D=D, DP=DP, G=3 if cell == 1 else 4, CELL=cell, BB=16, BJ=BJ, NJ=-(-D // BJ), SYNC=True,
                  PREFETCH=True, FAST=dt != "fp32", PRECISION="ieee" if dt == "fp32" else "tf32", UPCAST=False)
    if which == "fwd":
        consts["SAVE"] = save
    consts.update(BAR=0, KC=0, NJP=1, KB=0, **({"FUSE": False} if which == "fwd" else {}))
    if -(-D // BJ) > 1:  # split heads: the planner's kernel variant (ioaware/plan/rnn_tiles.py)
        fuse = cell != 1
        kc = DP // 4 if fuse and 4 * D <= 3 * DP else 0
        kb = nw if fuse and DP // nw >= 16 else 0
        consts.update(BAR=1, **(dict(FUSE=fuse, KC=kc) if which == "fwd" else dict(KB=kb, KC=0 if kb else kc)))
    consts = {k: v for k, v in consts.items() if k in fn.arg_names}  # the library's kernels: no NJP, no fwd KB
    sig.update({k: "constexpr" for k in consts})
    sig = {k: sig[k] for k in fn.arg_names}
    src = ASTSource(fn, sig, constexprs={(fn.arg_names.index(k),): v for k, v in consts.items()})
    try:
        c = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": nw, "num_stages": 1})
        ok = f"smem {c.metadata.shared}"
        if c.metadata.shared > 232448:
            ok, bad = f"TOO MUCH SMEM {c.metadata.shared}", bad + 1
    except Exception as e:  # noqa: BLE001
        bad += 1
        ok = "FAIL " + " | ".join(x for x in str(e).splitlines() if "error" in x.lower())[:200]
    print(f"triton {triton.__version__} {which} cell={cell} {dt} D={D} BJ={BJ} nw={nw} save={save}: {ok}", flush=True)
print("failures:", bad)
