"""Sweep flash_decode's launch parameters (splits, BN, warps, stages) at the decoding issue's three settings,
timed as CUDA-graph replays with the L2 flushed; prints the best few per setting and writes $OUT/decode-sweep.json.

    PYTHONPATH=$PWD python3 dev/decode/sweep.py
"""

import itertools
import json
import os

import torch

from ioaware.bench.common import graphed, time_ms
from ioaware.kernels._dispatch import load_kernel_module

kern = load_kernel_module("ioaware.kernels.attention.decode.kernel")
res = []
SPLITS = {4096: [2, 4, 5, 8, 12, 16], 32768: [4, 8, 16, 24, 32, 48], 131072: [16, 32, 48, 64, 96, 128]}
for B, L in ((8, 4096), (8, 32768), (1, 131072)):
    Hq, Hkv, D = 32, 8, 128
    q = torch.randn(B, 1, Hq, D, device="cuda", dtype=torch.bfloat16)
    kc = torch.randn(B, L, Hkv, D, device="cuda", dtype=torch.bfloat16)
    vc = torch.randn_like(kc)
    lens = torch.full((B,), L, device="cuda", dtype=torch.int32)
    ref = None
    kv_bytes = 2 * B * L * Hkv * D * 2
    rows = []
    for ns, bn, nw, st in itertools.product(SPLITS[L], [64, 128], [4, 8], [2, 3]):
        if L // ns < bn:
            continue
        try:
            def f(ns=ns, bn=bn, nw=nw, st=st, q=q, kc=kc, vc=vc, lens=lens, L=L, D=D):
                return kern.flash_decode_fwd(q, kc, vc, lens, None, D ** -0.5, True, None, L, ns, bn=bn,
                                             num_warps=nw, num_stages=st)[0]
            o = f()
            if ref is None:
                ref = o.float()
            err = ((o.float() - ref).norm() / ref.norm()).item()
            ms = time_ms(graphed(f)) if err < 1e-2 else float("nan")
        except Exception as e:  # noqa: BLE001
            ms, err = float("nan"), type(e).__name__
        rows.append({"splits": ns, "bn": bn, "warps": nw, "stages": st, "ms": ms, "TBps": kv_bytes / ms / 1e9,
                     "err": err})
    ok = sorted((r for r in rows if r["ms"] == r["ms"]), key=lambda r: r["ms"])
    print(f"B={B} L={L}: default splits={kern._num_splits(B, Hkv, L, 64, 132)}; best:")
    for r in ok[:6]:
        print("  ", r)
    res.append({"B": B, "L": L, "rows": rows})
json.dump({"card": torch.cuda.get_device_name(), "triton": __import__("triton").__version__, "torch": torch.__version__,
           "cases": res}, open(os.path.join(os.environ.get("OUT", "."), "decode-sweep.json"), "w"), indent=1)
