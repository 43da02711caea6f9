"""PIM-GPT's mapping of a vector-matrix product onto channels and banks, and its closed-form time.

A product y = W x with W of `n_out` rows by `k_in` columns:
- the rows are dealt round-robin over channels and, inside a channel, over banks; every bank stores its rows
  contiguously, so a DRAM row (2 KB = 64 columns of 16 BF16) is read start to end: one ACT per 64 MAC columns, the
  row-buffer locality the paper's concatenation buys;
- x goes into each channel's 2 KB global buffer; when k_in exceeds it, x is cut into chunks and each bank's partial
  sums are added on the ASIC;
- when n_out is smaller than the number of banks (attention S.V: 64 rows per head), each row's k_in is split over
  several banks so that the idle banks work too, again with partial sums on the ASIC;
- all banks of a channel run in lockstep (one all-bank MAC command drives the same column in every bank), so the bank
  with most rows sets the channel's time.

`plan_vmm` returns what each channel does; `chunk_time` is the closed-form time of one chunk on one channel, which the
event model (system.py) must reproduce command by command.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .gpt import Vmm
from .timing import PimConfig


@dataclass(frozen=True)
class ChunkWork:
    """One channel's share of one input chunk: write x into the global buffer, stream DRAM rows through the MAC
    units (`row_cols[i]` columns in the i-th row-burst of every active bank), read the results out."""

    gb_bursts: int
    row_cols: tuple[int, ...]
    readout_bursts: int
    active_banks: int


@dataclass(frozen=True)
class VmmPlan:
    vmm: Vmm
    per_channel: tuple[tuple[ChunkWork, ...], ...]  # channel -> its chunks, passes outermost
    n_chunks: int
    k_split: int
    partial_elems: int  # partial sums the ASIC adds afterwards (0 when each output comes out whole)


def plan_vmm(v: Vmm, cfg: PimConfig) -> VmmPlan:
    C, B, cpr = cfg.channels, cfg.banks, cfg.macs_per_col
    n_chunks = max(1, math.ceil(v.k_in / cfg.gb_elems))
    kc = math.ceil(v.k_in / n_chunks)  # elements of x per chunk
    split = 1
    if n_chunks == 1 and v.n_out < C * B:  # spread a short matrix's columns over the idle banks
        split = max(1, min(C * B // v.n_out, kc // cpr))
    seg = math.ceil(kc / split)  # elements of one stored row segment
    seg_cols = math.ceil(seg / cpr)  # a segment starts on a column boundary: the MAC sum restarts there
    units = v.n_out * split
    outs_per_unit = math.ceil(v.outputs_per_row / n_chunks)
    gb_bursts = math.ceil(kc * cfg.elem_bytes / cfg.col_bytes)
    per_channel = []
    for c in range(C):
        u = units // C + (1 if c < units % C else 0)
        rows = math.ceil(u / B)
        cols = rows * seg_cols
        full, last = divmod(cols, cfg.cols_per_row)
        row_cols = (cfg.cols_per_row,) * full + ((last,) if last else ())
        readout = math.ceil(u * outs_per_unit * cfg.elem_bytes / cfg.col_bytes)
        work = ChunkWork(gb_bursts, row_cols, readout, min(B, u))
        per_channel.append((work,) * (n_chunks * v.passes))
    parts = n_chunks * split
    partial = v.n_out * v.outputs_per_row * parts * v.passes if parts > 1 else 0
    return VmmPlan(v, tuple(per_channel), n_chunks, split, partial)


def act_offsets(n_banks: int, cfg: PimConfig) -> list[float]:
    """Issue times of the ACTs that open one row in each of `n_banks` banks, from the first: back to back under tRRD,
    and the fifth ACT no earlier than the first + tFAW (all-bank mode: one ACT_AB at 0)."""
    t = cfg.timing
    if cfg.act_mode == "all-bank" or n_banks == 0:
        return [0.0]
    a = [0.0]
    for i in range(1, n_banks):
        a.append(max(a[-1] + t.tRRD, a[i - 4] + t.tFAW if i >= 4 else -math.inf))
    return a


def chunk_time(w: ChunkWork, cfg: PimConfig, t0: float = 0.0, act_ready: float = -math.inf) -> tuple[float, float]:
    """Closed-form (end, next act_ready) of one chunk on a channel whose banks are closed and whose bus is free from
    t0; `act_ready` is when its banks may be activated again (the previous PRE + tRP). Formula by formula:

        gb_end    = t0 + tCWL + gb_bursts * tCCD                      (x lands in the global buffer)
        per row:  ACTs at a0 + offsets (a0 >= t0, act_ready); MAC from max(a_last + tRCD, gb_end) for cols * tMAC;
                  PRE at max(a_last + tRAS, mac_end - tMAC + tRTP); the next row's a0 = PRE + tRP
        readout   = RDMAC issued at the last mac_end, data ends tCL + readout_bursts * tCCD later

    A row's first ACT is always more than tFAW after the previous row's fourth-last ACT (tRCD + a column + tRP
    > tFAW), so only tRP links consecutive rows."""
    t = cfg.timing
    gb_end = t0 + t.tCWL + w.gb_bursts * t.tCCD
    if not w.row_cols:
        return gb_end, act_ready
    offs = act_offsets(w.active_banks, cfg)
    a0, mac_end = max(t0, act_ready), t0
    for cols in w.row_cols:
        ready = a0 + offs[-1] + t.tRCD
        start = max(ready, gb_end)
        mac_end = start + cols * t.tMAC
        pre = max(a0 + offs[-1] + t.tRAS, mac_end - t.tMAC + t.tRTP)  # every bank's own tRAS
        a0 = pre + t.tRP
    return mac_end + t.tCL + w.readout_bursts * t.tCCD, a0


def vmm_time_closed_form(plan: VmmPlan, cfg: PimConfig) -> float:
    """The product's time on the slowest channel from closed banks and a free bus, chunks back to back (no ASIC
    partial-sum time)."""
    best = 0.0
    for works in plan.per_channel:
        t, ready = 0.0, -math.inf
        for w in works:
            t, ready = chunk_time(w, cfg, t, ready)
        best = max(best, t)
    return best
