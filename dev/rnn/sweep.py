"""Device sweep: fused LSTM tile configurations vs cuDNN and flashrnn's triton backend (B=16, T=1024, fp16).
Writes $OUT/sweep.json line by line so a hang still leaves the finished rows."""
import json
import os
import sys

import torch

from ioaware.bench.common import time_ms
from ioaware.kernels.rnn import kernel as K
from ioaware.kernels.rnn import lstm, lstm_ref
from ioaware.kernels.rnn.tiles import RNNTiles

OUT = os.environ.get("OUT", ".")
B, T = 16, 1024
dt = torch.float16
f = open(f"{OUT}/sweep.jsonl", "a")


def emit(**r):
    print(json.dumps(r), flush=True)
    f.write(json.dumps(r) + "\n")
    f.flush()


def inputs(NH, D, grad):
    x = torch.randn(B, T, 4 * NH * D, device="cuda", dtype=dt, requires_grad=grad)
    R = (torch.randn(4, NH, D, D, device="cuda") / D**0.5).to(dt).requires_grad_(grad)
    b = torch.zeros(4, NH, D, device="cuda", dtype=dt, requires_grad=grad)
    return x, R, b


def fwd_bwd(fn, ps):
    def run():
        for p in ps:
            p.grad = None
        fn().float().sum().backward()
    return run


# (BB, BJ, NJ, num_warps, prefetch, fast tanh)
configs = {(12, 64): [(16, 64, 1, 4, 1, 1), (16, 64, 1, 4, 0, 0), (16, 64, 1, 4, 1, 0), (16, 64, 1, 2, 1, 1),
                      (16, 64, 1, 8, 1, 1), (16, 32, 2, 4, 1, 1)],
           (1, 768): [(16, 16, 48, 8, 1, 1), (16, 16, 48, 4, 1, 1)]}
which = sys.argv[1:] or ["12x64", "1x768"]
for NH, D in configs:
    if f"{NH}x{D}" not in which:
        continue
    DP = 1 << (D - 1).bit_length()
    for BB, BJ, NJ, nw, pf, fast in configs[(NH, D)]:
        tiles = RNNTiles(BB=BB, BJ=BJ, NJ=NJ, DP=DP, num_warps=nw)
        K.fused_recurrent_rnn_fwd.__defaults__ = (bool(pf), bool(fast))
        K.fused_recurrent_rnn_bwd.__defaults__ = (bool(pf), bool(fast))
        try:
            x, R, b = inputs(NH, D, False)
            with torch.no_grad():
                y, _ = lstm(x, R, b, num_heads=NH, tiles=tiles)
                yr, _ = lstm_ref(x[:, :64].float(), R.float(), b.float(), num_heads=NH)
                err = ((y[:, :64].float() - yr).norm() / yr.norm()).item()
                fms = time_ms(lambda: lstm(x, R, b, num_heads=NH, tiles=tiles))  # noqa: B023
            x, R, b = inputs(NH, D, True)
            bms = time_ms(fwd_bwd(lambda: lstm(x, R, b, num_heads=NH, tiles=tiles)[0], [x, R, b]))  # noqa: B023
            emit(case=f"{NH}x{D}", tiles=[BB, BJ, NJ, nw], prefetch=pf, fast=fast, fwd_ms=fms, fwdbwd_ms=bms,
                 err_vs_fp32=err)
        except Exception as e:  # noqa: BLE001
            emit(case=f"{NH}x{D}", tiles=[BB, BJ, NJ, nw], error=f"{type(e).__name__}: {str(e)[:300]}")
    if NH == 1:
        lstm_c = torch.nn.LSTM(D, D, batch_first=True, device="cuda", dtype=dt)
        inp = torch.randn(B, T, D, device="cuda", dtype=dt, requires_grad=True)
        with torch.no_grad():
            f0 = time_ms(lambda: lstm_c(inp))  # noqa: B023
        f1 = time_ms(lambda: lstm_c(inp))  # noqa: B023
        fb = time_ms(fwd_bwd(lambda: lstm_c(inp)[0], [inp, *lstm_c.parameters()]))  # noqa: B023
        emit(case=f"{NH}x{D}", provider="cudnn", fwd_nograd_ms=f0, fwd_grad_ms=f1, fwdbwd_ms=fb)
    if NH > 1:
        from ioaware.bench.rnn import _flashrnn_subprocess
        c = {"B": B, "T": T, "NH": NH, "D": D, "dtype": "float16"}
        for backend, mode, tmo in (("triton_fused", "fwd", 60),):
            ms, err = _flashrnn_subprocess(c, mode, backend, tmo)
            emit(case=f"{NH}x{D}", provider=f"flashrnn {backend}", mode=mode, ms=ms, error=err)
