"""Device sweep 3 (issue #9, the 1x768 bar): barrier floors, each kernel variant's step without the barrier, and
every variant checked (fp16 vs an fp32 loop, forward and x-gradient) and timed (forward, forward+backward) against
cuDNN in the same process; 12x64 default as a regression check. Rows go to $OUT/sweep3.jsonl as they finish;
the script stops starting new rows after BUDGET_S seconds."""
import json
import os
import sys
import time

import torch

from ioaware.bench.common import time_ms
from ioaware.kernels.rnn import lstm, lstm_ref
from ioaware.kernels.rnn.tiles import RNNTiles

sys.path.insert(0, os.path.dirname(__file__))
import kernel_variants as K  # noqa: E402  (barriers 2 and 3 and fwd_kb left the library's kernel)
from barrier_floor import floor_ms  # noqa: E402

OUT = os.environ.get("OUT", ".")
BUDGET = float(os.environ.get("BUDGET_S", "200"))
T0 = time.time()
B, T = 16, 1024
dt = torch.float16
f = open(f"{OUT}/sweep3.jsonl", "a")


def emit(**r):
    r["t_s"] = round(time.time() - T0, 1)
    print(json.dumps(r), flush=True)
    f.write(json.dumps(r) + "\n")
    f.flush()


def left():
    return BUDGET - (time.time() - T0)


def inputs(NH, D, grad, T=T, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(B, T, 4 * NH * D, device="cuda", generator=g).to(dt).requires_grad_(grad)
    R = (torch.randn(4, NH, D, D, device="cuda", generator=g) / D**0.5).to(dt).requires_grad_(grad)
    b = (0.1 * torch.randn(4, NH, D, device="cuda", generator=g)).to(dt).requires_grad_(grad)
    return x, R, b


def fwd_bwd(fn, ps):
    def run():
        for p in ps:
            p.grad = None
        fn().float().sum().backward()
    return run


def check(NH, D, tiles, bwd):
    """max rel. RMS error of y (and dx) vs an fp32 loop over 128 steps."""
    x, R, b = inputs(NH, D, True, T=128, seed=1)
    y, _ = lstm(x, R, b, num_heads=NH, tiles=tiles)
    x32, R32, b32 = (t.detach().float().requires_grad_() for t in (x, R, b))
    yr, _ = lstm_ref(x32, R32, b32, num_heads=NH)
    errs = [((y.double() - yr.double()).norm() / yr.double().norm()).item()]
    if bwd:
        dy = torch.randn_like(y)
        (gx,) = torch.autograd.grad(y, x, dy)
        (gxr,) = torch.autograd.grad(yr, x32, dy.float())
        errs.append(((gx.double() - gxr.double()).norm() / gxr.double().norm()).item())
    return errs


def nobarrier_fwd_ms(NH, D, tiles):
    """The forward kernel over all T steps in one launch with SYNC off: no barrier, h read as it is (stale);
    the per-step cost of everything but the barrier."""
    x, R, b = inputs(NH, D, False)
    bias = b.float().contiguous()
    h0 = torch.zeros(B, NH * D, device="cuda", dtype=dt)
    y = torch.empty(B, T, NH * D, dtype=dt, device="cuda")
    cs = torch.zeros(1, B, T + 1, NH * D, dtype=torch.float32, device="cuda")
    cnt, flg, njp = K._sync_buffers(NH, tiles, "cuda")
    z = torch.zeros(1, dtype=torch.int64, device="cuda")

    def run():
        K._fused_recurrent_rnn_fwd_kernel[(NH * tiles.NJ,)](
            x, R, bias, h0, y, cs, y, cnt, flg, z, B, T, 0, T, NH=NH, D=D, DP=tiles.DP, G=4, CELL=0, BB=16,
            BJ=tiles.BJ, NJ=tiles.NJ, SYNC=False, SAVE=False, PREFETCH=True, FAST=True, PRECISION="tf32",
            UPCAST=False, BAR=0, KC=tiles.kc, NJP=njp, FUSE=tiles.fuse, KB=tiles.fwd_kb, num_warps=tiles.num_warps,
            num_stages=1)
    return time_ms(run)


def T768(BJ, nw, bar, kc=0, fuse=False, kb=0, fwd_kb=None):
    """fwd_kb defaults to kb: in device call 2 one field set both (the forward's batched chunks were split off
    into fwd_kb afterwards)."""
    return RNNTiles(BB=16, BJ=BJ, NJ=768 // BJ, DP=1024, num_warps=nw, barrier=bar, kc=kc, fuse=fuse, kb=kb,
                    fwd_kb=kb if fwd_kb is None else fwd_kb)


WHICH = sys.argv[1:] or ["cudnn", "floor", "A", "E", "G", "C", "D", "B", "F", "H", "I", "12x64"]
# 1. cuDNN, same process
if "cudnn" in WHICH:
  lstm_c = torch.nn.LSTM(768, 768, batch_first=True, device="cuda", dtype=dt)
  inp = torch.randn(B, T, 768, device="cuda", dtype=dt, requires_grad=True)
  with torch.no_grad():
      c0 = time_ms(lambda: lstm_c(inp))
  c1 = time_ms(fwd_bwd(lambda: lstm_c(inp)[0], [inp, *lstm_c.parameters()]))
  emit(case="1x768", provider="cudnn nn.LSTM (+input GEMM)", fwd_ms=c0, fwdbwd_ms=c1,
       device=torch.cuda.get_device_name())

# 2. barrier floors (per step = ms / T * 1000 us)
for P, BJ in ((48, 16), (24, 32)) if "floor" in WHICH else ():
    for bar in (0, 1, 2):
        for xch in (0, 1):
            try:
                ms = floor_ms(P, BJ, 768, T, bar, xch)
                emit(case="floor", P=P, BJ=BJ, bar=bar, exchange=xch, ms=ms, us_per_step=ms / T * 1e3)
            except Exception as e:  # noqa: BLE001
                emit(case="floor", P=P, BJ=BJ, bar=bar, exchange=xch, error=f"{type(e).__name__}: {str(e)[:300]}")

# 3. variants: (name, tiles, time fwd+bwd)
VARIANTS = [
    ("A base bar0", T768(16, 4, 0), True),
    ("B bar1", T768(16, 4, 1), False),
    ("C bar2", T768(16, 4, 2), True),
    ("D bar2 kc256", T768(16, 4, 2, 256), True),
    ("E bar2 kc256 fuse nw4", T768(16, 4, 2, 256, True), True),
    ("F bar2 kc256 fuse nw8", T768(16, 8, 2, 256, True), False),
    ("G BJ32 bar2 kc256 fuse nw8", T768(32, 8, 2, 256, True), True),
    ("H bar1 kc256 fuse nw4", T768(16, 4, 1, 256, True), False),
    ("I bar2 fuse nw4 (no kc)", T768(16, 4, 2, 0, True), False),
    # device call 2: K as batched chunks, one per warp (forward: fused gates; backward: per gate), LL exchange
    ("P bar1 fuse kb4 nw4 (planned)", T768(16, 4, 1, 0, True, 4), True),
    ("J bar3 LL fuse kb4 nw4", T768(16, 4, 3, 0, True, 4), True),
    ("L bar1 fuse kb8 nw8", T768(16, 8, 1, 0, True, 8), False),
    ("M bar3 LL fuse kb8 nw8", T768(16, 8, 3, 0, True, 8), False),
    ("N bar1 fuse kb4 BJ32 nw4", T768(32, 4, 1, 0, True, 4), False),
    # after call 2 (not run): the default, forward of H with the backward of P
    ("Q planned: fwd bar1 kc256 fused, bwd kb4", T768(16, 4, 1, 256, True, 4, 0), True),
]
C0, C1 = json.loads(os.environ.get("CUDNN_MS", "[2.07, 6.80]"))
if "cudnn" in WHICH:
    C0, C1 = c0, c1
with K.use_variants():  # the variant rows run kernel_variants.py's launchers; the 12x64 row the library's
    for name, tiles, bwd in VARIANTS:
        if name[0] not in WHICH:
            continue
        if left() < 15:
            emit(case="1x768", variant=name, skipped="budget")
            continue
        row = dict(case="1x768", variant=name, tiles=tiles.__dict__)
        try:
            row["err_vs_fp32"] = check(1, 768, tiles, bwd)
            x, R, b = inputs(1, 768, False)
            with torch.no_grad():
                row["fwd_ms"] = time_ms(lambda: lstm(x, R, b, tiles=tiles))  # noqa: B023
            row["fwd_vs_cudnn"] = C0 / row["fwd_ms"]
            if tiles.barrier != 3:  # (without the barrier BAR 3 is the same kernel as BAR 1)
                row["nobarrier_fwd_ms"] = nobarrier_fwd_ms(1, 768, tiles)
            if bwd and left() > 10:
                x, R, b = inputs(1, 768, True)
                row["fwdbwd_ms"] = time_ms(fwd_bwd(lambda: lstm(x, R, b, tiles=tiles)[0], [x, R, b]))  # noqa: B023
                row["fwdbwd_vs_cudnn"] = C1 / row["fwdbwd_ms"]
        except Exception as e:  # noqa: BLE001
            row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
        emit(**row)

# 4. 12x64 default (regression check: bars fwd <= 2.0 ms, fwd+bwd <= 3.5 ms)
if left() > 10 and "12x64" in WHICH:
    x, R, b = inputs(12, 64, False)
    with torch.no_grad():
        fms = time_ms(lambda: lstm(x, R, b, num_heads=12))
    x, R, b = inputs(12, 64, True)
    bms = time_ms(fwd_bwd(lambda: lstm(x, R, b, num_heads=12)[0], [x, R, b]))
    emit(case="12x64", variant="default", err_vs_fp32=check(12, 64, None, True), fwd_ms=fms, fwdbwd_ms=bms)
