"""Run one flash_attn forward (and optionally backward) for a shape given on the command line; ncu profiles it.
Usage: python dev/iomodel/ncu_one.py B H T D causal(0|1) [bwd]"""

import sys

import torch

import ioaware

B, H, T, D, causal = (int(x) for x in sys.argv[1:6])
bwd = len(sys.argv) > 6
q, k, v = (torch.randn(B, T, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=bwd) for _ in range(3))
for _ in range(2):  # the first call compiles; ncu skips it with --launch-skip
    o = ioaware.flash_attn(q, k, v, causal=bool(causal))
    if bwd:
        o.backward(torch.randn_like(o))
torch.cuda.synchronize()
