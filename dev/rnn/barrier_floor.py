"""The split head's barrier alone: P programs walk T steps doing only the barrier (XCH=0), or the barrier plus the
h exchange (XCH=1: store the program's (16, BJ) h tile, barrier, read the whole (16, D) h back with .cg loads).
The per-step time is the floor under any kernel that syncs a split head this way. Used by dev/rnn/sweep3.py."""
import triton
import triton.language as tl
from kernel_variants import _arrive, _group_barrier, _wait  # dev/rnn/: barrier 2 left the library


@triton.jit
def _floor_kernel(CNT, FLG, BUF, OUT, T, D: tl.constexpr, DP: tl.constexpr, BJ: tl.constexpr, NJ: tl.constexpr,
                  NJP: tl.constexpr, BAR: tl.constexpr, XCH: tl.constexpr):
    i_j = tl.program_id(0)
    o_b = tl.arange(0, 16)
    o_j = i_j * BJ + tl.arange(0, BJ)
    o_k = tl.arange(0, DP)
    acc = tl.zeros([16, DP], dtype=tl.float32)
    for s in range(0, T):
        if XCH:
            tl.store(BUF + s * 16 * D + o_b[:, None] * D + o_j[None, :],
                     tl.full([16, BJ], 1.0, tl.float16),
                     mask=(o_j < D)[None, :])
        if BAR == 0:
            _group_barrier(CNT, (s + 1) * NJ)
        else:
            _arrive(CNT, FLG, 0, i_j, s + 1, BAR, NJP)
            _wait(CNT, FLG, 0, i_j, s + 1, 0, NJ, BAR, NJ, NJP)
        if XCH:
            acc += tl.load(BUF + s * 16 * D + o_b[:, None] * D + o_k[None, :], mask=(o_k < D)[None, :], other=0.0,
                           cache_modifier=".cg").to(tl.float32)
    tl.store(OUT + i_j * 16 * DP + o_b[:, None] * DP + o_k[None, :], acc)


def floor_ms(P, BJ, D, T, BAR, XCH, num_warps=4):
    import torch

    from ioaware.bench.common import time_ms

    njp = 1 << (P - 1).bit_length()
    DP = 1 << (D - 1).bit_length()
    buf = torch.zeros(T * 16 * D, dtype=torch.float16, device="cuda")
    out = torch.empty(P * 16 * DP, dtype=torch.float32, device="cuda")

    def run():
        cnt = torch.zeros(1, dtype=torch.int32, device="cuda")
        flg = torch.zeros(njp, dtype=torch.int32, device="cuda")
        _floor_kernel[(P,)](cnt, flg, buf, out, T, D=D, DP=DP, BJ=BJ, NJ=P, NJP=njp, BAR=BAR, XCH=XCH,
                            num_warps=num_warps)
    return time_ms(run)
