"""One forward call at B=64, H=768, bf16, gated, for Nsight Compute (after a warm-up call that compiles).

    ncu -k regex:_conv2t_pair_kernel -s 1 -c 1 --section SpeedOfLight --section Occupancy \
        --section WarpStateStats --section LaunchStats python3 dev/fftconv/profile_one.py 4096
"""

import sys

import torch

import ioaware

L = int(sys.argv[1]) if len(sys.argv) > 1 else 4096
u, pre, post = (torch.randn(64, 768, L, device="cuda", dtype=torch.bfloat16) for _ in range(3))
k = torch.randn(768, L, device="cuda") / L**0.5
for _ in range(2):
    ioaware.fftconv(u, k, True, pre, post)
torch.cuda.synchronize()
