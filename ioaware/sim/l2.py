"""How much of FlashAttention's K/V re-reading reaches DRAM: a schedule-level model of a GPU's L2.

The forward kernel runs one program per (query block, batch x head), launched query blocks fastest. Every
program streams its head's K and V blocks from the first to the last it needs. The iomodel counts those
requests (what SMs ask L2 for); what DRAM sees depends on whether a block is still in L2 when the next program
of the same head asks for it. This model replays the schedule: `concurrent` programs run in lockstep (each
step, every running program reads its next K/V block), a finished program's slot takes the next program in
launch order, and an LRU cache of `l2_bytes` decides hits. Q, O and the LSE move once (compulsory).

It is a model, not a simulator of the H100: real programs drift apart, the L2 is two partitions with its own
replacement policy, and writes can stay dirty in L2 after the kernel ends. Its error against Nsight Compute is
measured in benchmarks/results/attention-ncu-h100-*.json.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True)
class L2Traffic:
    sm_requests: float  # bytes SMs request from L2 (the iomodel's schedule count)
    dram_read: float
    dram_write: float
    kv_hit_rate: float


def _kv_blocks(i: int, Tq: int, Tk: int, bq: int, bk: int, causal: bool) -> int:
    """Key blocks query block i visits (causal aligned bottom-right, as the kernel)."""
    if not causal:
        return math.ceil(Tk / bk)
    last_row = min((i + 1) * bq, Tq) - 1
    need = min(max(last_row + Tk - Tq + 1, 0), Tk)
    return math.ceil(need / bk)


def flash_fwd_l2_traffic(B: int, H: int, T: int, D: int, block_q: int, block_k: int, *, Hkv: int | None = None,
                         Tk: int | None = None, causal: bool = False, rev: bool = False, concurrent: int = 132,
                         l2_bytes: float = 50e6, elem: int = 2) -> L2Traffic:
    Hkv = Hkv or H
    Tk = Tk or T
    group = H // Hkv
    nq = math.ceil(T / block_q)
    block_bytes = 2 * block_k * D * elem  # one K block and one V block
    capacity = max(1, int(l2_bytes // block_bytes))
    nk = math.ceil(Tk / block_k)
    size = [2 * min(block_k, Tk - j * block_k) * D * elem for j in range(nk)]  # the last block may be ragged
    # programs in launch order: (kv head id, number of key blocks)
    programs = []
    for bh in range(B * H):
        kv_head = (bh // H) * Hkv + (bh % H) // group
        for p in range(nq):
            i = nq - 1 - p if (rev and causal) else p
            programs.append((kv_head, _kv_blocks(i, T, Tk, block_q, block_k, causal)))
    lru: OrderedDict[tuple[int, int], None] = OrderedDict()
    slots: list[list[int]] = []  # [kv_head, next block, n blocks]
    nxt = requests = misses = 0
    req_bytes = miss_bytes = 0
    while nxt < len(programs) or slots:
        while len(slots) < concurrent and nxt < len(programs):
            h, n = programs[nxt]
            nxt += 1
            if n:
                slots.append([h, 0, n])
        for s in slots:
            key = (s[0], s[1])
            requests += 1
            req_bytes += size[s[1]]
            if key in lru:
                lru.move_to_end(key)
            else:
                misses += 1
                miss_bytes += size[s[1]]
                lru[key] = None
                if len(lru) > capacity:
                    lru.popitem(last=False)
            s[1] += 1
        slots = [s for s in slots if s[1] < s[2]]
    q_bytes = B * H * T * D * elem
    o_bytes = q_bytes + B * H * T * 4
    return L2Traffic(sm_requests=q_bytes + req_bytes, dram_read=q_bytes + miss_bytes,
                     dram_write=o_bytes, kv_hit_rate=1 - misses / max(requests, 1))
