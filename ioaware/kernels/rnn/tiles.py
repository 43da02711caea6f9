"""Tile and launch configuration of the fused RNN kernels as an integer constraint model (FlashRNN's ConstrINT).

Decision variables (all integers):
    BB  batch rows per program       ∈ {16, 32, 64}   (16 = the smallest tensor-core M; B is padded up to it)
    BJ  state columns per program    ∈ {16, 32, ..., DP}, DP = D rounded up to a power of two (Triton's aranges)
    NW  warps per program            ∈ {4, 8, 16}
    NB = ceil(B / BB) batch blocks, NJ = ceil(D / BJ) programs per head, P = NB · NH · NJ programs
    (divisibility: NB·BB >= B > (NB-1)·BB and NJ·BJ >= D > (NJ-1)·BJ, as integer constraints).
Constraints (the hardware's limits, `Machine`):
    registers per thread  32 + ceil(((G+S+2)·BB·BJ·4 + BB·DP·e) / (4 · 32 · NW)) <= regs_per_thread
        (the fp32 gate accumulators and carried states, the h_{t-1} operand in dtype e bytes)
    shared memory         G·DP·BJ·e + BB·DP·e + G·BB·BJ·4 <= smem_per_block
        (R's slice lives in shared memory for the whole sequence: the compiled TTGIR allocates it once, outside
        the time loop, and mma.sync reads it from there; plus the layout changes of h and the gates)
    co-residency          NJ > 1  =>  P <= num_sms  (the per-step barrier spins: every program must be resident)
Objective (integer nanoseconds per time step, a latency model; lower is better):
    waves · (step_ns + mma_ns + pointwise_ns + sync_ns + [NJ > 1] · barrier_ns),  waves = ceil(P / num_sms),
    mma_ns = ceil(2·G·BB·DP·BJ / mma_flop_per_ns),
    pointwise_ns = pointwise_ns_per_elem · ceil(G·BB·BJ / (32·NW))  (gate math each thread issues in turn),
    sync_ns = sync_ns_per_warp · NW  (the layout changes between the tensor-core and the pointwise layouts go
        through shared memory behind CTA barriers, which cost more the more warps meet there),
    ties broken by fewer warps, then larger BJ, then larger BB (a strict order: the optimum is unique).

Kernel variant of a split head (NJ > 1), fixed by rule rather than by the model (dev/rnn/NOTES.md, entries 7-10,
measured on an H100 at one head of 768): barrier 1 (arrive by atomic add after h_t's store, spin on acquire loads
before h_{t-1} is read); for LSTM/sLSTM (4 gates) the forward's gates side by side in one dot (`fuse`, N = 4·BJ,
so the warps share the MMA work instead of repeating it) with K in chunks of DP/4 (`kc`) where that leaves at most
3 chunks, and the backward's exchange batched over NW chunks of K (`kb`).

Two exact solvers of the same model: `solve_enumerate` (default, pure Python, deterministic; exact because it
visits every point of the finite domain, at most 3 · 7 · 3 = 63 of them) and `solve_cpsat` (OR-Tools CP-SAT, an
optional dependency used by the tests to cross-check the enumerator).
"""

from __future__ import annotations

from dataclasses import dataclass

BB_CHOICES = (16, 32, 64)
NW_CHOICES = (4, 8, 16)
STATES = {"lstm": 2, "gru": 1, "slstm": 4}
GATES = {"lstm": 4, "gru": 3, "slstm": 4}


@dataclass(frozen=True)
class Machine:
    """The limits the model respects. Defaults: H100 SXM (132 SMs, 64K 32-bit registers and 227 KB of shared
    memory per block, 255 registers per thread; CUDA programming guide, compute capability 9.0)."""
    num_sms: int = 132
    regs_per_thread: int = 255
    regs_per_sm: int = 65536
    smem_per_block: int = 227 * 1024
    mma_flop_per_ns: int = 3500  # mma.sync fp16 per SM, ~half of the wgmma peak (989 TFLOP/s / 132)
    step_ns: int = 700  # per-step latency outside the MMA: x_t load, pointwise cell, h_t store, layout change
    barrier_ns: int = 1200  # one grid-group barrier through an L2 atomic counter, plus the h_{t-1} reload
    # calibrated on the sweep of dev/rnn/results/sweep-2.jsonl: 12x64 fwd+bwd 3.67 ms at 4 warps vs 3.36 at 8,
    # 1x768 (BJ=16) 20.5 ms at 4 warps vs 28.9 at 8: more warps pay where each thread has many gate elements
    pointwise_ns_per_elem: int = 15
    sync_ns_per_warp: int = 40


@dataclass(frozen=True)
class RNNTiles:
    """The fused RNN kernel's tiling: BB batch rows per program, the head's D outputs in NJ tiles of BJ (heads
    split over programs when NJ > 1), DP the padded head size, and the kernel's launch options.

    Examples:
        >>> import torch, ioaware
        >>> tiles = ioaware.rnn.plan_rnn_tiles("lstm", B=2, NH=1, D=32, elem_bytes=4)
        >>> x, R, b = torch.randn(2, 3, 4 * 32), torch.randn(4, 1, 32, 32) / 8, torch.zeros(4, 1, 32)
        >>> ioaware.rnn.lstm(x, R, b, tiles=tiles)[0].shape                  # forcing the planner's choice
        torch.Size([2, 3, 32])
    """

    BB: int
    BJ: int
    NJ: int
    DP: int
    num_warps: int
    sync: bool = True
    barrier: int = 0  # split heads: 0 atomic counter (RMW spin), 1 counter with acquire-load spin (the planner's pick);
    # 2 (flag per program) and 3 (LL exchange) live in dev/rnn/kernel_variants.py, which the library never runs
    kc: int = 0  # split heads: K (= D) in chunks of kc columns (0: one chunk padded to DP)
    fuse: bool = False  # split LSTM/sLSTM heads, forward: the 4 gates' R slices side by side in one dot of N = 4·BJ
    kb: int = 0  # split LSTM/sLSTM heads, backward: the exchange as one dot per gate batched over kb chunks of K
    fwd_kb: int = 0  # forward K in batched chunks: measured slower, only in dev/rnn/kernel_variants.py (0 here)


@dataclass(frozen=True)
class Problem:
    cell: str
    B: int
    NH: int
    D: int
    elem_bytes: int

    @property
    def DP(self) -> int:
        return max(16, 1 << (self.D - 1).bit_length())


def bj_choices(DP: int) -> list[int]:
    return [1 << i for i in range(4, DP.bit_length()) if (1 << i) <= DP]


def registers(p: Problem, BB: int, BJ: int, NW: int) -> int:
    G, S, e = GATES[p.cell], STATES[p.cell], p.elem_bytes
    return 32 + -(-((G + S + 2) * BB * BJ * 4 + BB * p.DP * e) // (4 * 32 * NW))


def smem(p: Problem, BB: int, BJ: int) -> int:
    return GATES[p.cell] * p.DP * BJ * p.elem_bytes + BB * p.DP * p.elem_bytes + GATES[p.cell] * BB * BJ * 4


def programs(p: Problem, BB: int, BJ: int) -> int:
    return -(-p.B // BB) * p.NH * -(-p.D // BJ)


def feasible(p: Problem, m: Machine, BB: int, BJ: int, NW: int) -> bool:
    return (registers(p, BB, BJ, NW) <= m.regs_per_thread and registers(p, BB, BJ, NW) * 32 * NW <= m.regs_per_sm
            and smem(p, BB, BJ) <= m.smem_per_block and (BJ >= p.D or programs(p, BB, BJ) <= m.num_sms))


def step_ns(p: Problem, m: Machine, BB: int, BJ: int, NW: int) -> int:
    waves = -(-programs(p, BB, BJ) // m.num_sms)
    mma = -(-2 * GATES[p.cell] * BB * p.DP * BJ // m.mma_flop_per_ns)
    pointwise = m.pointwise_ns_per_elem * -(-GATES[p.cell] * BB * BJ // (32 * NW))
    return waves * (m.step_ns + mma + pointwise + m.sync_ns_per_warp * NW + (m.barrier_ns if BJ < p.D else 0))


def _key(p: Problem, m: Machine, BB: int, BJ: int, NW: int) -> tuple:
    return (step_ns(p, m, BB, BJ, NW), NW, -BJ, -BB)


def _domain(p: Problem) -> list[tuple[int, int, int]]:
    bbs = [bb for bb in BB_CHOICES if bb == 16 or bb <= p.B]  # no block larger than the (padded) batch
    return [(bb, bj, nw) for bb in bbs for bj in bj_choices(p.DP) for nw in NW_CHOICES]


def solve_enumerate(p: Problem, m: Machine = Machine()) -> tuple[int, int, int] | None:
    """The exact optimum (BB, BJ, NW) by visiting every point of the domain; None if nothing is feasible."""
    pts = [pt for pt in _domain(p) if feasible(p, m, *pt)]
    return min(pts, key=lambda pt: _key(p, m, *pt)) if pts else None


def solve_cpsat(p: Problem, m: Machine = Machine(), time_limit_s: float = 10.0) -> tuple[int, int, int] | None:
    """The same model in OR-Tools CP-SAT (products as multiplication equalities, ceilings as divisions); the
    snake_case API of OR-Tools >= 9.8, the one its type stubs describe."""
    from ortools.sat.python import cp_model

    G, S, e, DP = GATES[p.cell], STATES[p.cell], p.elem_bytes, p.DP
    md = cp_model.CpModel()
    bbs = sorted({bb for bb, _, _ in _domain(p)})
    bb = md.new_int_var_from_domain(cp_model.Domain.from_values(bbs), "BB")
    bj = md.new_int_var_from_domain(cp_model.Domain.from_values(bj_choices(DP)), "BJ")
    nw = md.new_int_var_from_domain(cp_model.Domain.from_values(list(NW_CHOICES)), "NW")
    nj = md.new_int_var(1, DP // 16, "NJ")  # NJ = ceil(D / BJ)
    njbj = md.new_int_var(0, 2 * DP, "NJ*BJ")
    md.add_multiplication_equality(njbj, [nj, bj])
    md.add(njbj >= p.D)
    md.add(njbj - bj < p.D)
    nb = md.new_int_var(1, p.B, "NB")  # NB = ceil(B / BB)
    nbbb = md.new_int_var(0, 2 * p.B + 64, "NB*BB")
    md.add_multiplication_equality(nbbb, [nb, bb])
    md.add(nbbb >= p.B)
    md.add(nbbb - bb < p.B)
    bbbj = md.new_int_var(0, 64 * DP, "BB*BJ")
    md.add_multiplication_equality(bbbj, [bb, bj])
    threads4 = md.new_int_var(512, 4 * 32 * 16, "4*32*NW")
    md.add(threads4 == 128 * nw)
    bytes_ = md.new_int_var(0, 1 << 30, "bytes")
    md.add(bytes_ == (G + S + 2) * 4 * bbbj + DP * e * bb)
    regs = md.new_int_var(0, 1 << 30, "regs")  # regs = 32 + ceil(bytes / (128·NW))
    md.add_division_equality(regs, bytes_ + threads4 - 1, threads4)
    md.add(regs + 32 <= m.regs_per_thread)
    regs_nw = md.new_int_var(0, 1 << 30, "regs*NW")
    md.add_multiplication_equality(regs_nw, [regs, nw])
    md.add(32 * regs_nw + 32 * 32 * nw <= m.regs_per_sm)
    md.add(G * DP * e * bj + DP * e * bb + G * 4 * bbbj <= m.smem_per_block)
    split = md.new_bool_var("NJ>1")
    md.add(nj >= 2).only_enforce_if(split)
    md.add(nj == 1).only_enforce_if(~split)
    nbnj = md.new_int_var(0, 1 << 30, "NB*NJ")
    md.add_multiplication_equality(nbnj, [nb, nj])
    md.add(p.NH * nbnj <= m.num_sms).only_enforce_if(split)
    waves = md.new_int_var(1, 1 << 30, "waves")
    md.add_division_equality(waves, p.NH * nbnj + m.num_sms - 1, m.num_sms)
    mma = md.new_int_var(0, 1 << 30, "mma_ns")
    md.add_division_equality(mma, 2 * G * DP * bbbj + m.mma_flop_per_ns - 1, m.mma_flop_per_ns)
    pw = md.new_int_var(0, 1 << 30, "elems_per_thread")  # ceil(G·BB·BJ / (32·NW))
    md.add_division_equality(pw, G * bbbj + 32 * nw - 1, 32 * nw)
    per = md.new_int_var(0, 1 << 30, "per_wave")
    md.add(per == m.step_ns + mma + m.pointwise_ns_per_elem * pw + m.sync_ns_per_warp * nw + m.barrier_ns * split)
    cost = md.new_int_var(0, 1 << 40, "step_ns")
    md.add_multiplication_equality(cost, [waves, per])
    # lexicographic tie-break folded into one integer objective: cost, then fewer warps, larger BJ, larger BB
    lbj = md.new_int_var(4, 12, "log2BJ")
    md.add_element(lbj - 4, [1 << i for i in range(4, 13)], bj)
    lbb = md.new_int_var(4, 6, "log2BB")
    md.add_element(lbb - 4, [16, 32, 64], bb)
    lnw = md.new_int_var(2, 4, "log2NW")
    md.add_element(lnw - 2, [4, 8, 16], nw)
    md.minimize(cost * 1000 + lnw * 100 - lbj * 10 - lbb)
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = time_limit_s
    solver.parameters.num_workers = 1  # deterministic
    st = solver.solve(md)
    if st == cp_model.INFEASIBLE:
        return None
    if st != cp_model.OPTIMAL:
        raise RuntimeError(f"CP-SAT did not prove optimality ({solver.status_name(st)})")
    return solver.value(bb), solver.value(bj), solver.value(nw)


def plan_rnn_tiles(cell: str, B: int, NH: int, D: int, elem_bytes: int, machine: Machine | None = None,
                   sync: bool = True) -> RNNTiles:
    """The optimal tiles for this problem on this machine (raises if no configuration fits the limits).

    Examples:
        >>> from ioaware.rnn import plan_rnn_tiles
        >>> t = plan_rnn_tiles("lstm", B=16, NH=12, D=64, elem_bytes=2)     # the H100 default Machine()
        >>> t.NJ * t.BJ >= 64                                               # the tiles cover the head
        True
    """
    p = Problem(cell, B, NH, D, elem_bytes)
    sol = solve_enumerate(p, machine or Machine())
    if sol is None:
        raise ValueError(f"rnn tiles: no configuration of {cell} with head size {D} ({elem_bytes}-byte elements) "
                         "fits the machine's registers and shared memory; use more heads of a smaller size")
    bb, bj, nw = sol
    nj = -(-D // bj)
    if nj == 1:
        return RNNTiles(BB=bb, BJ=bj, NJ=nj, DP=p.DP, num_warps=nw, sync=sync)
    fuse = GATES[cell] == 4
    kc = p.DP // 4 if fuse and 4 * D <= 3 * p.DP else 0  # D = 768: 3 chunks of 256 instead of padding to 1024
    kb = nw if fuse and p.DP // nw >= 16 else 0
    return RNNTiles(BB=bb, BJ=bj, NJ=nj, DP=p.DP, num_warps=nw, sync=sync, barrier=1, kc=kc, fuse=fuse, kb=kb)

