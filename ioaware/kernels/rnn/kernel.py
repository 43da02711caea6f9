"""Fused recurrent LSTM / GRU / sLSTM in Triton: one persistent launch walks the whole sequence.

A program owns (batch block `BB` rows, one head, `BJ` of the head's D state columns). Its slice of the recurrent
matrix, R[g, head, :, cols] for every gate g (G·DP·BJ values), is loaded once and stays on chip for all T steps;
each step is `h_{t-1} (BB, DP) @ R_slice (DP, BJ)` per gate on the tensor cores, plus x_t and the bias, then the
cell's pointwise update in fp32 registers, then one store of h_t.

When a head's state is split over NJ > 1 programs (big D), every step needs the whole h_{t-1}: programs write
their columns, meet at a barrier (an atomic counter in global memory, one per (batch block, head) group; all
programs of the grid must be co-resident, which the tile planner guarantees) and read h_{t-1} back from L2. Split
LSTM/sLSTM heads multiply all 4 gates in one dot of N = 4·BJ (FUSE), K optionally in chunks (KC); a dot of
M = BB = 16 is one warp's tile, so N (or, in the backward, a batch of K chunks, KB) is what spreads work over warps.
Without SYNC (Triton's interpreter runs programs one after another, so a spin barrier would never open) the
launcher runs one launch per time step and the carried state goes through global memory instead.

Backward walks t = T-1 .. 0 with the same split, on R's rows instead of its columns: a program owns state
columns J, computes the gate gradients of its columns, exchanges them (same barrier) and forms
dh_{t-1}[:, J] = sum_g dG_g (BB, DP) @ R[g, head, J, :]^T. dR and db are reductions over (B, T) of values the
kernel writes anyway; they run after it as one batched GEMM, off the sequential critical path.

Only the variants the tile planner (tiles.py) picks are here, plus barrier 0 (RNNTiles' default `barrier`, which
hand-built split tiles run). The other split-head variants measured in issue #9 (dev/rnn/NOTES.md, entries 7-10:
barrier 2, one flag per program; barrier 3, the LL exchange; `fwd_kb`, the forward's K as batched chunks) live in
dev/rnn/kernel_variants.py; the launchers refuse tiles that ask for them.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ...errors import UnsupportedError
from ..triton_utils import upcast  # the interpreter's bf16 tl.dot workaround, shared by every kernel

CELL_IDS = {"lstm": 0, "gru": 1, "slstm": 2}


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _tanh(x):
    return 2.0 / (1.0 + tl.exp(-2.0 * x)) - 1.0


@triton.jit
def _tanh_fast(x, FAST: tl.constexpr):
    """tanh.approx.f32 (one MUFU instruction, relative error ~2^-11, below fp16/bf16's rounding) for low-precision
    inputs; the exact formula (an exp and an IEEE division) for fp32 and under the interpreter."""
    if FAST:
        return tl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=f,f", [x], dtype=tl.float32, is_pure=True,
                                         pack=1)
    else:
        return _tanh(x)


@triton.jit
def _sigmoid_fast(x, FAST: tl.constexpr):
    if FAST:
        return 0.5 * _tanh_fast(0.5 * x, FAST) + 0.5
    else:
        return _sigmoid(x)


@triton.jit
def _logsigmoid(x):
    return tl.minimum(x, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(x)))


@triton.jit
def _group_barrier(p_cnt, target):
    """Every program of the group has arrived `target` times: stores before it are visible to all after it."""
    tl.debug_barrier()
    tl.atomic_add(p_cnt, 1, sem="release", scope="gpu")
    cur = tl.atomic_add(p_cnt, 0, sem="acquire", scope="gpu")
    while cur < target:
        cur = tl.atomic_add(p_cnt, 0, sem="acquire", scope="gpu")
    tl.debug_barrier()


@triton.jit
def _ld_acquire(p):
    """ld.acquire.gpu of int32s: a spin that only reads (no read-modify-write on the flag's L2 line)."""
    return tl.inline_asm_elementwise("ld.global.acquire.gpu.b32 $0, [$1];", "=r,l", [p], dtype=tl.int32,
                                     is_pure=False, pack=1)


@triton.jit
def _arrive(CNT, grp):
    """BAR 1: this program's stores so far are published; adds one to the group's counter."""
    tl.debug_barrier()
    tl.atomic_add(CNT + grp, 1, sem="release", scope="gpu")


@triton.jit
def _wait(CNT, grp, target, NJ: tl.constexpr):
    """BAR 1: spin with acquire loads until the group's counter reaches NJ·target."""
    p = CNT + grp + tl.zeros([1], dtype=tl.int32)
    cur = tl.min(_ld_acquire(p), 0)
    while cur < target * NJ:
        cur = tl.min(_ld_acquire(p), 0)
    tl.debug_barrier()


@triton.jit
def _r_chunk(R, i_h, o_j, m_j, k0, FWD: tl.constexpr, D: tl.constexpr, HD: tl.constexpr, G: tl.constexpr,
             KCH: tl.constexpr, UPCAST: tl.constexpr):
    """Rows k0 .. k0+KCH of the program's slice of R, (KCH, BJ) per gate: R[g, head, k, J] (forward) or
    R[g, head, J, k]^T (backward)."""
    o_k = k0 + tl.arange(0, KCH)
    if FWD:
        p_r = R + (i_h * D + o_k[:, None]) * D + o_j[None, :]
    else:
        p_r = R + (i_h * D + o_j[None, :]) * D + o_k[:, None]
    m_r = (o_k < D)[:, None] & m_j[None, :]
    r0 = upcast(tl.load(p_r, mask=m_r, other=0.0), UPCAST)
    r1 = upcast(tl.load(p_r + HD * D, mask=m_r, other=0.0), UPCAST)
    r2 = upcast(tl.load(p_r + 2 * HD * D, mask=m_r, other=0.0), UPCAST)
    r3 = r2
    if G == 4:
        r3 = upcast(tl.load(p_r + 3 * HD * D, mask=m_r, other=0.0), UPCAST)
    return r0, r1, r2, r3


@triton.jit
def _r_chunk_fused(R, i_h, i_j, k0, D: tl.constexpr, HD: tl.constexpr, BJ: tl.constexpr, KCH: tl.constexpr,
                   UPCAST: tl.constexpr):
    """Rows k0 .. k0+KCH of all 4 gates' R slices side by side, (KCH, 4·BJ), column 4·j + g = gate g of column j:
    one dot of N = 4·BJ spreads over the warps (four dots of N = BJ = 16 leave 4 warps doing the same work)."""
    o_k = k0 + tl.arange(0, KCH)
    o_c = tl.arange(0, 4 * BJ)
    o_j = i_j * BJ + o_c // 4
    p_r = R + (o_c % 4)[None, :] * (HD * D) + (i_h * D + o_k[:, None]) * D + o_j[None, :]
    return upcast(tl.load(p_r, mask=(o_k < D)[:, None] & (o_j < D)[None, :], other=0.0), UPCAST)


@triton.jit
def _h_gates_fused(Y, H0, o_b, m_b, t, T, i_h, k0, r, D: tl.constexpr, HD: tl.constexpr, BB: tl.constexpr,
                   BJ: tl.constexpr, KCH: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """As _h_gates with the gates side by side in one dot; the (BB, 4·BJ) result is split back into 4 gates."""
    o_k = k0 + tl.arange(0, KCH)
    o_hk = i_h * D + o_k[None, :]
    m_bk = m_b[:, None] & (o_k < D)[None, :]
    p_hp = tl.where(t > 0, Y + o_b[:, None] * T * HD + (t - 1) * HD + o_hk, H0 + o_b[:, None] * HD + o_hk)
    hp = upcast(tl.load(p_hp, mask=m_bk, other=0.0, cache_modifier=".cg"), UPCAST)
    acc = tl.reshape(tl.dot(hp, r, input_precision=PRECISION), (BB, BJ, 2, 2))
    even, odd = tl.split(acc)  # gates (0, 2) and (1, 3)
    d0, d2 = tl.split(even)
    d1, d3 = tl.split(odd)
    return d0, d1, d2, d3


@triton.jit
def _r_bwd_3d(R, i_h, o_j, m_j, D: tl.constexpr, HD: tl.constexpr, NCH: tl.constexpr, KC: tl.constexpr,
              UPCAST: tl.constexpr):
    """R[g, head, J, c·KC + k]^T cut along K into NCH chunks: (NCH, KC, BJ) for each of the 4 gates."""
    o_k = tl.arange(0, NCH)[:, None, None] * KC + tl.arange(0, KC)[None, :, None]
    p_r = R + (i_h * D + o_j[None, None, :]) * D + o_k
    m_r = (o_k < D) & m_j[None, None, :]
    r0 = upcast(tl.load(p_r, mask=m_r, other=0.0), UPCAST)
    r1 = upcast(tl.load(p_r + HD * D, mask=m_r, other=0.0), UPCAST)
    r2 = upcast(tl.load(p_r + 2 * HD * D, mask=m_r, other=0.0), UPCAST)
    r3 = upcast(tl.load(p_r + 3 * HD * D, mask=m_r, other=0.0), UPCAST)
    return r0, r1, r2, r3


@triton.jit
def _exchange_3d(DX, o_b, m_b, T, i_h, t, valid, r0, r1, r2, r3, D: tl.constexpr, HD: tl.constexpr,
                 NCH: tl.constexpr, KC: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """sum over gates g of dG_g[t] @ R_g^T slice, each as one dot batched over NCH chunks of K that the warps
    share (a plain dot of N = BJ = 16 leaves every warp doing all of the work), then a sum over the chunks."""
    o_k = tl.arange(0, NCH)[:, None, None] * KC + tl.arange(0, KC)[None, None, :]
    p_e = DX + o_b[None, :, None] * T * (4 * HD) + t * (4 * HD) + i_h * D + o_k
    m_e = m_b[None, :, None] & (o_k < D) & (o_k * 0 + valid != 0)
    acc = tl.dot(upcast(tl.load(p_e, mask=m_e, other=0.0, cache_modifier=".cg"), UPCAST), r0,
                 input_precision=PRECISION)
    acc = tl.dot(upcast(tl.load(p_e + HD, mask=m_e, other=0.0, cache_modifier=".cg"), UPCAST), r1, acc,
                 input_precision=PRECISION)
    acc = tl.dot(upcast(tl.load(p_e + 2 * HD, mask=m_e, other=0.0, cache_modifier=".cg"), UPCAST), r2, acc,
                 input_precision=PRECISION)
    acc = tl.dot(upcast(tl.load(p_e + 3 * HD, mask=m_e, other=0.0, cache_modifier=".cg"), UPCAST), r3, acc,
                 input_precision=PRECISION)
    return tl.sum(acc, 0)


@triton.jit
def _h_gates(Y, H0, o_b, m_b, t, T, i_h, k0, r0, r1, r2, r3, D: tl.constexpr, HD: tl.constexpr,
             G: tl.constexpr, KCH: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """h_{t-1}[:, k0:k0+KCH] read back from L2 (.cg), times each gate's R rows k0 .. k0+KCH."""
    o_k = k0 + tl.arange(0, KCH)
    o_hk = i_h * D + o_k[None, :]
    m_bk = m_b[:, None] & (o_k < D)[None, :]
    p_hp = tl.where(t > 0, Y + o_b[:, None] * T * HD + (t - 1) * HD + o_hk, H0 + o_b[:, None] * HD + o_hk)
    hp = upcast(tl.load(p_hp, mask=m_bk, other=0.0, cache_modifier=".cg"), UPCAST)
    d0 = tl.dot(hp, r0, input_precision=PRECISION)
    d1 = tl.dot(hp, r1, input_precision=PRECISION)
    d2 = tl.dot(hp, r2, input_precision=PRECISION)
    d3 = d2
    if G == 4:
        d3 = tl.dot(hp, r3, input_precision=PRECISION)
    return d0, d1, d2, d3


@triton.jit
def _fwd_loads(X, o_x, m_bj, t, G: tl.constexpr, HD: tl.constexpr):
    p_x = X + o_x + t * (G * HD)
    x0 = tl.load(p_x, mask=m_bj, other=0.0)
    x1 = tl.load(p_x + HD, mask=m_bj, other=0.0)
    x2 = tl.load(p_x + 2 * HD, mask=m_bj, other=0.0)
    x3 = x2
    if G == 4:
        x3 = tl.load(p_x + 3 * HD, mask=m_bj, other=0.0)
    return x0, x1, x2, x3


@triton.jit
def _bwd_loads(DY, GS, CS, Y, H0, o_y, o_g, o_cs, o_st, m_bj, t, s_cs, CELL: tl.constexpr, HD: tl.constexpr):
    """Everything step t's backward reads that does not depend on the recurrence."""
    dy = tl.load(DY + o_y + t * HD, mask=m_bj, other=0.0)
    p_g = GS + o_g + t * (4 * HD)
    g0 = tl.load(p_g, mask=m_bj, other=0.0)
    g1 = tl.load(p_g + HD, mask=m_bj, other=0.0)
    g2 = tl.load(p_g + 2 * HD, mask=m_bj, other=0.0)
    g3 = tl.load(p_g + 3 * HD, mask=m_bj, other=0.0)
    if CELL == 1:
        p_h = tl.where(t > 0, Y + o_y + (t - 1) * HD, H0 + o_st)
        a = tl.load(p_h, mask=m_bj, other=0.0).to(tl.float32)
        b = a
    else:
        a = tl.load(CS + o_cs + (t + 1) * HD, mask=m_bj, other=0.0)  # c_t
        b = tl.load(CS + o_cs + t * HD, mask=m_bj, other=0.0)  # c_{t-1}
    c = a
    d = a
    e = a
    f = a
    if CELL == 2:
        c = tl.load(CS + s_cs + o_cs + (t + 1) * HD, mask=m_bj, other=1.0)  # n_t
        d = tl.load(CS + s_cs + o_cs + t * HD, mask=m_bj, other=0.0)
        e = tl.load(CS + 2 * s_cs + o_cs + (t + 1) * HD, mask=m_bj, other=0.0)  # m_t
        f = tl.load(CS + 2 * s_cs + o_cs + t * HD, mask=m_bj, other=0.0)
    return dy, g0, g1, g2, g3, a, b, c, d, e, f


@triton.jit
def _fused_recurrent_rnn_fwd_kernel(
        X, R, BIAS, H0, Y, CS, GS, CNT, B, T, t0, n_steps,
        NH: tl.constexpr, D: tl.constexpr, DP: tl.constexpr, G: tl.constexpr, CELL: tl.constexpr,
        BB: tl.constexpr, BJ: tl.constexpr, NJ: tl.constexpr, SYNC: tl.constexpr, SAVE: tl.constexpr,
        PREFETCH: tl.constexpr, FAST: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
        BAR: tl.constexpr = 0, KC: tl.constexpr = 0, FUSE: tl.constexpr = False):
    # X (B, T, G, NH, D); R (G, NH, D, D); BIAS fp32 (4, NH, D); H0 (B, NH·D); Y (B, T, NH·D);
    # CS fp32 (S-1, B, T+1, NH·D) cell states, index 0 the initial one; GS (B, T, 4, NH·D) saved gates (sLSTM: fp32)
    # BAR: the split head's barrier on the group's counter CNT, 0 arrive+spin by atomic RMW at the end of the step,
    # 1 arrive by atomic add after h_t's store and spin with acquire loads before h_t is read.
    # KC > 0 (split heads): K (the head's D) in chunks of KC, no padding to DP, one dot per chunk.
    i_p = tl.program_id(0)
    i_j, i_h, i_b = i_p % NJ, (i_p // NJ) % NH, i_p // (NJ * NH)
    grp = i_p // NJ
    HD: tl.constexpr = NH * D
    KCH: tl.constexpr = DP if KC == 0 else KC
    NK: tl.constexpr = (D + KCH - 1) // KCH
    tl.static_assert(NK <= 3, "at most 3 chunks of K")
    tl.static_assert(NJ > 1 or NK == 1, "K chunks only for split heads")
    o_b = (i_b * BB + tl.arange(0, BB)).to(tl.int64)
    o_j = i_j * BJ + tl.arange(0, BJ)
    m_b, m_j = o_b < B, o_j < D
    m_bj = m_b[:, None] & m_j[None, :]
    # the program's slice of R, on chip for the whole sequence: (KCH, BJ) per gate and chunk of K
    # (FUSE, split LSTM/sLSTM heads: (KCH, 4·BJ) per chunk, the gates side by side)
    tl.static_assert(not FUSE or (G == 4 and NJ > 1), "FUSE: split LSTM / sLSTM heads only")
    tl.static_assert(BAR == 0 or BAR == 1, "barriers 2 and 3: dev/rnn/kernel_variants.py")
    if FUSE:
        f_r0 = _r_chunk_fused(R, i_h, i_j, 0, D, HD, BJ, KCH, UPCAST)
        if NK > 1:
            f_r1 = _r_chunk_fused(R, i_h, i_j, KCH, D, HD, BJ, KCH, UPCAST)
        if NK > 2:
            f_r2 = _r_chunk_fused(R, i_h, i_j, 2 * KCH, D, HD, BJ, KCH, UPCAST)
    else:
        b_r0, b_r1, b_r2, b_r3 = _r_chunk(R, i_h, o_j, m_j, 0, True, D, HD, G, KCH, UPCAST)
        if NK > 1:
            q_r0, q_r1, q_r2, q_r3 = _r_chunk(R, i_h, o_j, m_j, KCH, True, D, HD, G, KCH, UPCAST)
        if NK > 2:
            u_r0, u_r1, u_r2, u_r3 = _r_chunk(R, i_h, o_j, m_j, 2 * KCH, True, D, HD, G, KCH, UPCAST)
    p_bias = BIAS + i_h * D + o_j
    b_b0 = tl.load(p_bias, mask=m_j, other=0.0)[None, :]
    b_b1 = tl.load(p_bias + HD, mask=m_j, other=0.0)[None, :]
    b_b2 = tl.load(p_bias + 2 * HD, mask=m_j, other=0.0)[None, :]
    b_b3 = tl.load(p_bias + 3 * HD, mask=m_j, other=0.0)[None, :]
    # carried state of the program's columns, fp32 (from the initial state or, when stepping, the last launch)
    s_cs = B * (T + 1) * HD
    o_cs = o_b[:, None] * (T + 1) * HD + i_h * D + o_j[None, :]
    o_h0 = o_b[:, None] * HD + i_h * D + o_j[None, :]
    o_y = o_b[:, None] * T * HD + i_h * D + o_j[None, :]
    if t0 == 0:
        b_h = tl.load(H0 + o_h0, mask=m_bj, other=0.0).to(tl.float32)
    else:
        b_h = tl.load(Y + o_y + (t0 - 1) * HD, mask=m_bj, other=0.0).to(tl.float32)
    b_c = tl.zeros([BB, BJ], dtype=tl.float32)
    b_n = tl.zeros([BB, BJ], dtype=tl.float32)
    b_m = tl.zeros([BB, BJ], dtype=tl.float32)
    if CELL != 1:
        b_c = tl.load(CS + o_cs + t0 * HD, mask=m_bj, other=0.0)
    if CELL == 2:
        b_n = tl.load(CS + s_cs + o_cs + t0 * HD, mask=m_bj, other=0.0)
        b_m = tl.load(CS + 2 * s_cs + o_cs + t0 * HD, mask=m_bj, other=0.0)
    o_x = o_b[:, None] * T * (G * HD) + i_h * D + o_j[None, :]
    o_g = o_b[:, None] * T * (4 * HD) + i_h * D + o_j[None, :]
    x0, x1, x2, x3 = _fwd_loads(X, o_x, m_bj, t0, G, HD)
    for s in range(0, n_steps):
        t = t0 + s
        c0, c1, c2, c3 = x0, x1, x2, x3
        if PREFETCH:  # issue step t+1's loads now: their latency hides behind this step's math
            x0, x1, x2, x3 = _fwd_loads(X, o_x, m_bj, tl.minimum(t + 1, T - 1), G, HD)
        else:
            c0, c1, c2, c3 = _fwd_loads(X, o_x, m_bj, t, G, HD)
        if NJ == 1:
            b_hp = upcast(b_h.to(Y.dtype.element_ty), UPCAST)  # (BB, DP): the program holds the whole state
            a0 = tl.dot(b_hp, b_r0, input_precision=PRECISION)
            a1 = tl.dot(b_hp, b_r1, input_precision=PRECISION)
            a2 = tl.dot(b_hp, b_r2, input_precision=PRECISION)
            a3 = a2
            if G == 4:
                a3 = tl.dot(b_hp, b_r3, input_precision=PRECISION)
        else:
            if SYNC and BAR == 1:  # step t-1's h of every program
                _wait(CNT, grp, s, NJ)
            if FUSE:
                a0, a1, a2, a3 = _h_gates_fused(Y, H0, o_b, m_b, t, T, i_h, 0, f_r0, D, HD, BB, BJ, KCH, PRECISION,
                                                UPCAST)
            else:
                a0, a1, a2, a3 = _h_gates(Y, H0, o_b, m_b, t, T, i_h, 0, b_r0, b_r1, b_r2, b_r3, D, HD, G, KCH,
                                          PRECISION, UPCAST)
            if NK > 1:
                if FUSE:
                    e0, e1, e2, e3 = _h_gates_fused(Y, H0, o_b, m_b, t, T, i_h, KCH, f_r1, D, HD, BB, BJ, KCH,
                                                    PRECISION, UPCAST)
                else:
                    e0, e1, e2, e3 = _h_gates(Y, H0, o_b, m_b, t, T, i_h, KCH, q_r0, q_r1, q_r2, q_r3, D, HD, G,
                                              KCH, PRECISION, UPCAST)
                a0 += e0
                a1 += e1
                a2 += e2
                a3 += e3
            if NK > 2:
                if FUSE:
                    e0, e1, e2, e3 = _h_gates_fused(Y, H0, o_b, m_b, t, T, i_h, 2 * KCH, f_r2, D, HD, BB, BJ, KCH,
                                                    PRECISION, UPCAST)
                else:
                    e0, e1, e2, e3 = _h_gates(Y, H0, o_b, m_b, t, T, i_h, 2 * KCH, u_r0, u_r1, u_r2, u_r3, D, HD,
                                              G, KCH, PRECISION, UPCAST)
                a0 += e0
                a1 += e1
                a2 += e2
                a3 += e3
        a0 += c0.to(tl.float32)
        a1 += c1.to(tl.float32)
        xn = c2.to(tl.float32)
        if CELL == 1:
            g0 = _sigmoid_fast(a0 + b_b0, FAST)  # r
            g1 = _sigmoid_fast(a1 + b_b1, FAST)  # z
            g3 = a2 + b_b3  # q = h R_n + b_hn
            g2 = _tanh_fast(xn + b_b2 + g0 * g3, FAST)  # n
            b_h = (1.0 - g1) * g2 + g1 * b_h
        else:
            a3 += c3.to(tl.float32)
            a0 += b_b0
            a1 += b_b1
            g2 = _tanh_fast(a2 + xn + b_b2, FAST)
            g3 = _sigmoid_fast(a3 + b_b3, FAST)
            if CELL == 0:
                g0 = _sigmoid_fast(a0, FAST)
                g1 = _sigmoid_fast(a1, FAST)
                b_c = g1 * b_c + g0 * g2
                b_h = g3 * _tanh_fast(b_c, FAST)
            else:
                g0 = a0  # the raw input and forget gates are saved: backward recomputes i, f from them and m
                g1 = a1
                logf = _logsigmoid(a1)
                m_new = tl.maximum(a0, logf + b_m)
                i_g = tl.exp(a0 - m_new)
                f_g = tl.exp(logf + b_m - m_new)
                b_c = f_g * b_c + i_g * g2
                s_n = f_g * b_n + i_g
                b_n = tl.where(s_n >= 1.0, s_n, 1.0)
                b_m = m_new
                b_h = g3 * b_c / b_n
        tl.store(Y + o_y + t * HD, b_h.to(Y.dtype.element_ty), mask=m_bj)
        if NJ > 1:
            if SYNC and BAR == 1:  # publish h_t now: the saved states below are stored while others catch up
                _arrive(CNT, grp)
        if SAVE:  # every step's cell state, for the backward (else only the last one, after the loop)
            if CELL != 1:
                tl.store(CS + o_cs + (t + 1) * HD, b_c, mask=m_bj)
            if CELL == 2:
                tl.store(CS + s_cs + o_cs + (t + 1) * HD, b_n, mask=m_bj)
                tl.store(CS + 2 * s_cs + o_cs + (t + 1) * HD, b_m, mask=m_bj)
            p_g = GS + o_g + t * (4 * HD)
            tl.store(p_g, g0.to(GS.dtype.element_ty), mask=m_bj)
            tl.store(p_g + HD, g1.to(GS.dtype.element_ty), mask=m_bj)
            tl.store(p_g + 2 * HD, g2.to(GS.dtype.element_ty), mask=m_bj)
            tl.store(p_g + 3 * HD, g3.to(GS.dtype.element_ty), mask=m_bj)
        if NJ > 1:
            if SYNC and BAR == 0:
                _group_barrier(CNT + grp, (s + 1) * NJ)
    if not SAVE:
        if CELL != 1:
            tl.store(CS + o_cs + (t0 + n_steps) * HD, b_c, mask=m_bj)
        if CELL == 2:
            tl.store(CS + s_cs + o_cs + (t0 + n_steps) * HD, b_n, mask=m_bj)
            tl.store(CS + 2 * s_cs + o_cs + (t0 + n_steps) * HD, b_m, mask=m_bj)


@triton.jit
def _exchange_chunk(DX, DQ, o_b, m_b, T, i_h, k0, t, valid, b_r0, b_r1, b_r2, b_r3, D: tl.constexpr,
                    HD: tl.constexpr, G: tl.constexpr, CELL: tl.constexpr, KCH: tl.constexpr,
                    PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """The exchange of gate columns k0 .. k0+KCH (zero where not `valid`)."""
    o_k = k0 + tl.arange(0, KCH)
    o_xk = o_b[:, None] * T * (G * HD) + i_h * D + o_k[None, :]
    o_qk = o_b[:, None] * T * HD + i_h * D + o_k[None, :]
    m_bk = m_b[:, None] & (o_k < D)[None, :] & (o_k[None, :] * 0 + valid != 0)
    return _exchange_dot(DX, DQ, o_xk, o_qk, m_bk, t, b_r0, b_r1, b_r2, b_r3, HD, G, CELL, PRECISION, UPCAST)


@triton.jit
def _exchange_dot(DX, DQ, o_xk, o_qk, m_bk, t, b_r0, b_r1, b_r2, b_r3, HD: tl.constexpr, G: tl.constexpr,
                  CELL: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """sum_g dG_g[t] (BB, K) @ R_g^T slice (K, BJ), reading every gate column of step t back from L2."""
    p_e = DX + o_xk + t * (G * HD)
    e = upcast(tl.load(p_e, mask=m_bk, other=0.0, cache_modifier=".cg"), UPCAST)
    acc = tl.dot(e, b_r0, input_precision=PRECISION)
    e = upcast(tl.load(p_e + HD, mask=m_bk, other=0.0, cache_modifier=".cg"), UPCAST)
    acc += tl.dot(e, b_r1, input_precision=PRECISION)
    if CELL == 1:
        e = upcast(tl.load(DQ + o_qk + t * HD, mask=m_bk, other=0.0, cache_modifier=".cg"), UPCAST)
    else:
        e = upcast(tl.load(p_e + 2 * HD, mask=m_bk, other=0.0, cache_modifier=".cg"), UPCAST)
    acc += tl.dot(e, b_r2, input_precision=PRECISION)
    if G == 4:
        e = upcast(tl.load(p_e + 3 * HD, mask=m_bk, other=0.0, cache_modifier=".cg"), UPCAST)
        acc += tl.dot(e, b_r3, input_precision=PRECISION)
    return acc


@triton.jit
def _exchange(DX, DQ, CNT, grp, target, o_b, m_b, T, i_h, t, valid, b_r0, b_r1, b_r2, b_r3, q_r0, q_r1,
              q_r2, q_r3, u_r0, u_r1, u_r2, u_r3, D: tl.constexpr, HD: tl.constexpr, G: tl.constexpr,
              CELL: tl.constexpr, KCH: tl.constexpr, NK: tl.constexpr, NJ: tl.constexpr, SYNC: tl.constexpr,
              BAR: tl.constexpr, KB: tl.constexpr, DP: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """Barrier (the `target`-th), then sum_g dG_g[t] @ R_g^T slice over the chunks of K."""
    if SYNC:
        if BAR == 0:
            _group_barrier(CNT + grp, target * NJ)
        else:
            _arrive(CNT, grp)
            _wait(CNT, grp, target, NJ)
    if KB > 0:
        acc = _exchange_3d(DX, o_b, m_b, T, i_h, t, valid, b_r0, b_r1, b_r2, b_r3, D, HD, KB, DP // KB, PRECISION,
                           UPCAST)
    else:
        acc = _exchange_chunk(DX, DQ, o_b, m_b, T, i_h, 0, t, valid, b_r0, b_r1, b_r2, b_r3, D, HD, G, CELL, KCH,
                              PRECISION, UPCAST)
        if NK > 1:
            acc += _exchange_chunk(DX, DQ, o_b, m_b, T, i_h, KCH, t, valid, q_r0, q_r1, q_r2, q_r3, D, HD, G, CELL,
                                   KCH, PRECISION, UPCAST)
        if NK > 2:
            acc += _exchange_chunk(DX, DQ, o_b, m_b, T, i_h, 2 * KCH, t, valid, u_r0, u_r1, u_r2, u_r3, D, HD, G,
                                   CELL, KCH, PRECISION, UPCAST)
    return acc


@triton.jit
def _fused_recurrent_rnn_bwd_kernel(
        R, GS, H0, Y, CS, DY, DX, DQ, DST, CNT, B, T, t0, n_steps, finish,
        NH: tl.constexpr, D: tl.constexpr, DP: tl.constexpr, G: tl.constexpr, CELL: tl.constexpr,
        BB: tl.constexpr, BJ: tl.constexpr, NJ: tl.constexpr, SYNC: tl.constexpr,
        PREFETCH: tl.constexpr, FAST: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
        BAR: tl.constexpr = 0, KC: tl.constexpr = 0, KB: tl.constexpr = 0):
    # steps t = t0, t0-1, .., t0-n_steps+1; each step first takes dG_{t+1} @ R^T (the exchange), then the cell's
    # backward at t. `finish` adds the last exchange, dG_0 @ R^T, which gives the initial state's gradient.
    # DY (B, T, NH·D); DX (B, T, G, NH·D) gradient of x (= of the recurrent pre-activations, except GRU's n
    # gate, whose recurrent part DQ (B, T, NH·D) is written apart); DST fp32 (S, B, NH·D) the carried state
    # gradients: in, what is left after step t0+1's exchange; out, the same after the last step of this launch
    # BAR, KC: as in the forward (here the barrier publishes step t+1's dG before the exchange reads it);
    # KB > 0 (split LSTM / sLSTM heads): the exchange as one batched dot over (gate, chunk of DP / KB)
    i_p = tl.program_id(0)
    i_j, i_h, i_b = i_p % NJ, (i_p // NJ) % NH, i_p // (NJ * NH)
    grp = i_p // NJ
    HD: tl.constexpr = NH * D
    KCH: tl.constexpr = DP if KC == 0 else KC
    NK: tl.constexpr = (D + KCH - 1) // KCH
    tl.static_assert(NK <= 3, "at most 3 chunks of K")
    tl.static_assert(NJ > 1 or NK == 1, "K chunks only for split heads")
    o_b = (i_b * BB + tl.arange(0, BB)).to(tl.int64)
    o_j = i_j * BJ + tl.arange(0, BJ)  # the state columns this program owns
    m_b, m_j = o_b < B, o_j < D
    m_bj = m_b[:, None] & m_j[None, :]
    # R[g, head, J, :]^T as (KCH, BJ) per chunk: rows are gate columns, columns the owned state columns
    if KB > 0:  # (KB, DP / KB, BJ) per gate
        b_r0, b_r1, b_r2, b_r3 = _r_bwd_3d(R, i_h, o_j, m_j, D, HD, KB, DP // KB, UPCAST)
    else:
        b_r0, b_r1, b_r2, b_r3 = _r_chunk(R, i_h, o_j, m_j, 0, False, D, HD, G, KCH, UPCAST)
    q_r0, q_r1, q_r2, q_r3 = b_r0, b_r1, b_r2, b_r3  # placeholders when K is one chunk (unused then)
    u_r0, u_r1, u_r2, u_r3 = b_r0, b_r1, b_r2, b_r3
    tl.static_assert(KB == 0 or (G == 4 and NJ > 1 and NK == 1), "KB: split LSTM / sLSTM heads, no KC")
    if NK > 1:
        q_r0, q_r1, q_r2, q_r3 = _r_chunk(R, i_h, o_j, m_j, KCH, False, D, HD, G, KCH, UPCAST)
    if NK > 2:
        u_r0, u_r1, u_r2, u_r3 = _r_chunk(R, i_h, o_j, m_j, 2 * KCH, False, D, HD, G, KCH, UPCAST)
    s_cs = B * (T + 1) * HD
    s_st = B * HD
    o_st = o_b[:, None] * HD + i_h * D + o_j[None, :]
    o_cs = o_b[:, None] * (T + 1) * HD + i_h * D + o_j[None, :]
    o_y = o_b[:, None] * T * HD + i_h * D + o_j[None, :]
    o_g = o_b[:, None] * T * (4 * HD) + i_h * D + o_j[None, :]
    o_x = o_b[:, None] * T * (G * HD) + i_h * D + o_j[None, :]
    b_dh = tl.load(DST + o_st, mask=m_bj, other=0.0)
    b_dc = tl.zeros([BB, BJ], dtype=tl.float32)
    b_dn = tl.zeros([BB, BJ], dtype=tl.float32)
    if CELL != 1:
        b_dc = tl.load(DST + s_st + o_st, mask=m_bj, other=0.0)
    if CELL == 2:
        b_dn = tl.load(DST + 2 * s_st + o_st, mask=m_bj, other=0.0)
    # NJ == 1: the program holds every gate column, so step t+1's dG stays in registers
    e0 = tl.zeros([BB, KCH], dtype=R.dtype.element_ty)
    e1 = e0
    e2 = e0
    e3 = e0
    nxt = _bwd_loads(DY, GS, CS, Y, H0, o_y, o_g, o_cs, o_st, m_bj, tl.maximum(t0, 0), s_cs, CELL, HD)
    for s in range(0, n_steps):
        t = t0 - s
        cur = nxt
        if PREFETCH:  # step t-1's loads, issued before step t's exchange and math
            nxt = _bwd_loads(DY, GS, CS, Y, H0, o_y, o_g, o_cs, o_st, m_bj, tl.maximum(t - 1, 0), s_cs, CELL, HD)
        else:
            cur = _bwd_loads(DY, GS, CS, Y, H0, o_y, o_g, o_cs, o_st, m_bj, t, s_cs, CELL, HD)
        dy, g0, g1, g2, g3, l_a, l_b, l_c, l_d, l_e, l_f = cur
        g0 = g0.to(tl.float32)
        g1 = g1.to(tl.float32)
        g2 = g2.to(tl.float32)
        g3 = g3.to(tl.float32)
        # step t+1's dG (zero at t = T-1) times R^T, unconditionally, so R's on-chip copy is set up once
        if NJ == 1:
            b_dh += tl.dot(upcast(e0, UPCAST), b_r0, input_precision=PRECISION)
            b_dh += tl.dot(upcast(e1, UPCAST), b_r1, input_precision=PRECISION)
            b_dh += tl.dot(upcast(e2, UPCAST), b_r2, input_precision=PRECISION)
            if G == 4:
                b_dh += tl.dot(upcast(e3, UPCAST), b_r3, input_precision=PRECISION)
        else:
            b_dh += _exchange(DX, DQ, CNT, grp, s + 1, o_b, m_b, T, i_h, tl.minimum(t + 1, T - 1),
                              (t + 1 < T).to(tl.int32), b_r0, b_r1, b_r2, b_r3, q_r0, q_r1, q_r2, q_r3, u_r0, u_r1,
                              u_r2, u_r3, D, HD, G, CELL, KCH, NK, NJ, SYNC, BAR, KB, DP, PRECISION, UPCAST)
        dh = b_dh + dy.to(tl.float32)
        if CELL == 0:
            c_t, c_p = l_a, l_b
            tc = _tanh_fast(c_t, FAST)
            dc = b_dc + dh * g3 * (1.0 - tc * tc)
            d0 = dc * g2 * g0 * (1.0 - g0)
            d1 = dc * c_p * g1 * (1.0 - g1)
            d2 = dc * g0 * (1.0 - g2 * g2)
            d3 = dh * tc * g3 * (1.0 - g3)
            b_dc = dc * g1
            b_dh = tl.zeros([BB, BJ], dtype=tl.float32)
        elif CELL == 2:
            c_t, c_p, n_t, n_p, m_t, m_p = l_a, l_b, l_c, l_d, l_e, l_f
            i_g = tl.exp(g0 - m_t)
            f_g = tl.exp(_logsigmoid(g1) + m_p - m_t)
            dc = b_dc + dh * g3 / n_t
            s_n = f_g * n_p + i_g
            dn = tl.where(s_n >= 1.0, b_dn - dh * g3 * c_t / (n_t * n_t), 0.0)
            d0 = (dc * g2 + dn) * i_g
            d1 = (dc * c_p + dn * n_p) * f_g * _sigmoid(-g1)
            d2 = dc * i_g * (1.0 - g2 * g2)
            d3 = dh * (c_t / n_t) * g3 * (1.0 - g3)
            b_dc = dc * f_g
            b_dn = dn * f_g
            b_dh = tl.zeros([BB, BJ], dtype=tl.float32)
        else:
            h_p = l_a
            da_n = dh * (1.0 - g1) * (1.0 - g2 * g2)
            d0 = da_n * g3 * g0 * (1.0 - g0)
            d1 = dh * (h_p - g2) * g1 * (1.0 - g1)
            d2 = da_n * g0  # dq: the n gate's recurrent part is scaled by r
            d3 = d2
            tl.store(DQ + o_y + t * HD, d2.to(DQ.dtype.element_ty), mask=m_bj)
            b_dh = dh * g1  # h_{t-1} also enters h_t directly, through z
        p_dx = DX + o_x + t * (G * HD)
        tl.store(p_dx, d0.to(DX.dtype.element_ty), mask=m_bj)
        tl.store(p_dx + HD, d1.to(DX.dtype.element_ty), mask=m_bj)
        if CELL == 1:
            tl.store(p_dx + 2 * HD, da_n.to(DX.dtype.element_ty), mask=m_bj)
        else:
            tl.store(p_dx + 2 * HD, d2.to(DX.dtype.element_ty), mask=m_bj)
            tl.store(p_dx + 3 * HD, d3.to(DX.dtype.element_ty), mask=m_bj)
        if NJ == 1:
            e0 = d0.to(R.dtype.element_ty)
            e1 = d1.to(R.dtype.element_ty)
            e2 = d2.to(R.dtype.element_ty)
            e3 = d3.to(R.dtype.element_ty)
    if finish:
        if NJ == 1:
            b_dh += tl.dot(upcast(e0, UPCAST), b_r0, input_precision=PRECISION)
            b_dh += tl.dot(upcast(e1, UPCAST), b_r1, input_precision=PRECISION)
            b_dh += tl.dot(upcast(e2, UPCAST), b_r2, input_precision=PRECISION)
            if G == 4:
                b_dh += tl.dot(upcast(e3, UPCAST), b_r3, input_precision=PRECISION)
        else:
            b_dh += _exchange(DX, DQ, CNT, grp, n_steps + 1, o_b, m_b, T, i_h, t0 - n_steps + 1,
                              1, b_r0, b_r1, b_r2, b_r3, q_r0, q_r1, q_r2, q_r3, u_r0, u_r1,
                              u_r2, u_r3, D, HD, G, CELL, KCH, NK, NJ, SYNC, BAR, KB, DP, PRECISION, UPCAST)
    tl.store(DST + o_st, b_dh, mask=m_bj)
    if CELL != 1:
        tl.store(DST + s_st + o_st, b_dc, mask=m_bj)
    if CELL == 2:
        tl.store(DST + 2 * s_st + o_st, b_dn, mask=m_bj)


STATES = {"lstm": 2, "gru": 1, "slstm": 4}


def _fast(t) -> bool:
    """Approximate MUFU tanh for fp16/bf16 on a real GPU (inline PTX: not under the interpreter, not for fp32)."""
    import os

    import torch

    return t.is_cuda and t.dtype != torch.float32 and os.environ.get("TRITON_INTERPRET", "") != "1"


def _sync_buffers(groups: int, device):
    """The split head's barrier words, zeroed: one counter per group."""
    import torch

    return torch.zeros(groups, dtype=torch.int32, device=device)


def _barrier(tiles) -> int:
    """The launch's BAR (0 for one program per head). Barriers 2 (one flag per program) and 3 (the LL exchange)
    are in dev/rnn/kernel_variants.py; without sync no barrier runs, so there any value is accepted."""
    if tiles.NJ == 1:
        return 0
    if tiles.barrier in (0, 1):
        return tiles.barrier
    if tiles.sync:
        raise UnsupportedError(f"rnn tiles: barrier={tiles.barrier} is not in the library (split heads run barrier 0 "
                               "or 1); barriers 2 and 3 are in dev/rnn/kernel_variants.py")
    return 0


def fused_recurrent_rnn_fwd(cell: str, x, R, bias, h0, cs0, tiles, save: bool, precision: str, upcast: bool,
                            prefetch: bool = True, fast: bool | None = None):
    """Launch the forward. x (B, T, G·NH·D), R (G, NH, D, D), bias fp32 (4, NH, D), h0 (B, NH·D), cs0 fp32
    (S-1, B, NH·D) or None. Returns y (B, T, NH·D), the fp32 cell states (S-1, B, T+1, NH·D), the saved gates
    (B, T, 4, NH·D; fp32 for sLSTM, else x's dtype)."""
    import torch

    B, T, _ = x.shape
    G, NH, D, _ = R.shape
    HD = NH * D
    S = STATES[cell]
    fast = _fast(x) if fast is None else fast
    y = torch.empty(B, T, HD, dtype=x.dtype, device=x.device)
    cs = torch.empty(max(S - 1, 1), B, T + 1 if S > 1 else 1, HD, dtype=torch.float32, device=x.device)
    if S > 1:
        cs[:, :, 0] = cs0
    # sLSTM saves its raw input/forget logits, from which the backward recomputes exp(i - m) and the n' clamp:
    # in bf16 their rounding (up to |logit|·2^-8) skews i and f by ~1% and can flip the clamp against the forward's,
    # an O(1) error in dG that R^T spreads over a whole row of dh (issue #9). fp32 keeps both as the forward had them.
    gs_dtype = torch.float32 if cell == "slstm" else x.dtype
    gs = torch.empty(B, T, 4, HD, dtype=gs_dtype, device=x.device) if save else y
    fuse = tiles.fuse and tiles.NJ > 1 and G == 4
    if fuse and tiles.fwd_kb:
        raise UnsupportedError(f"rnn tiles: fwd_kb={tiles.fwd_kb} (the forward's K as batched chunks) is not in the "
                               "library; it is in dev/rnn/kernel_variants.py")
    bar = _barrier(tiles)
    nb = triton.cdiv(B, tiles.BB)
    cnt = _sync_buffers(nb * NH, x.device)
    steps = [(0, T)] if tiles.NJ == 1 or tiles.sync else [(t, 1) for t in range(T)]
    for t0, n in steps:
        _fused_recurrent_rnn_fwd_kernel[(nb * NH * tiles.NJ,)](
            x, R, bias, h0, y, cs, gs, cnt, B, T, t0, n, NH=NH, D=D, DP=tiles.DP, G=G, CELL=CELL_IDS[cell],
            BB=tiles.BB, BJ=tiles.BJ, NJ=tiles.NJ, SYNC=tiles.sync, SAVE=save, PREFETCH=prefetch, FAST=fast,
            PRECISION=precision, UPCAST=upcast, BAR=bar, KC=tiles.kc if tiles.NJ > 1 else 0, FUSE=fuse,
            num_warps=tiles.num_warps, num_stages=1)
    return y, cs, gs


def fused_recurrent_rnn_bwd(cell: str, R, gs, h0, y, cs, dy, dst, tiles, precision: str, upcast: bool,
                            prefetch: bool = True, fast: bool | None = None):
    """Launch the backward. dst fp32 (S, B, NH·D) holds the final states' gradients and is overwritten with the
    initial states' gradients. Returns dx (B, T, G·NH·D) and, for GRU, dq (B, T, NH·D) (else None)."""
    import torch

    B, T, HD = y.shape
    G, NH, D, _ = R.shape
    fast = _fast(y) if fast is None else fast
    dx = torch.empty(B, T, G * HD, dtype=y.dtype, device=y.device)
    dq = torch.empty(B, T, HD, dtype=y.dtype, device=y.device) if cell == "gru" else dx
    bar = _barrier(tiles)
    nb = triton.cdiv(B, tiles.BB)
    cnt = _sync_buffers(nb * NH, y.device)
    kb = tiles.kb if tiles.NJ > 1 and G == 4 else 0  # the batched exchange; it replaces the forward's K chunks
    if tiles.NJ == 1 or tiles.sync:
        steps = [(T - 1, T, 1)]
    else:  # one launch per step, and a last one for the exchange of step 0 alone
        steps = [(t, 1, 0) for t in range(T - 1, -1, -1)] + [(-1, 0, 1)]
    for t0, n, finish in steps:
        _fused_recurrent_rnn_bwd_kernel[(nb * NH * tiles.NJ,)](
            R, gs, h0, y, cs, dy, dx, dq, dst, cnt, B, T, t0, n, finish, NH=NH, D=D, DP=tiles.DP, G=G,
            CELL=CELL_IDS[cell], BB=tiles.BB, BJ=tiles.BJ, NJ=tiles.NJ, SYNC=tiles.sync, PREFETCH=prefetch,
            FAST=fast, PRECISION=precision, UPCAST=upcast, BAR=bar, KC=tiles.kc if tiles.NJ > 1 and not kb else 0,
            KB=kb, num_warps=tiles.num_warps, num_stages=1)
    return dx, (dq if cell == "gru" else None)
