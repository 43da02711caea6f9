"""How much of a FlashAttention kernel's traffic reaches DRAM: its schedule replayed through a model of the L2.

The iomodel counts what programs request (`flash_attention_cost`); ncu's L2-side bytes match it. What DRAM sees
depends on whether a block another program of the same head read earlier is still in L2. This model replays the
kernel's launch order, block by block:

* `concurrent` programs run at once (SMs x resident CTAs per SM); a finished program's slot takes the next one in
  launch order. Every tick each running program takes its next step (reads Q or a K/V block, writes O ...); reads
  of one block in the same tick are one request.
* Programs drift apart: slot s starts `desync * s / concurrent` of a program's length late. desync = 0 is lockstep
  (whole waves start and end together); 1 spreads the starts evenly over a program.
* The L2 is an LRU cache of `capacity` bytes. Reads that miss are DRAM reads; written blocks are dirty and reach
  DRAM when evicted. Dirty blocks still in L2 when the kernel ends are not counted, as Nsight Compute does not see
  them within the kernel.

Two parameters describe a GPU (`L2Model`). For the H100 the capacity comes from a probe, not a fit: a buffer re-read
in the same order hits L2 up to 18 MiB and misses entirely from 19 MiB on, although the L2 holds 50 MB
(dev/iomodel/l2_probe.py; data shared by all SMs is kept in both of the L2's partitions). desync = 0.5 was fitted on
the six forward shapes of the first ncu table; the backward kernels and the other shapes are checked against it.
Errors against Nsight Compute: benchmarks/results/attention-dram-h100-*.json.

It is a model: it knows neither the L2's real replacement policy nor register spills (local-memory traffic).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

from ..iomodel.bounds import kv_rows_seen, q_rows_seen

MiB = 2**20
FP32 = 4


@dataclass(frozen=True)
class L2Model:
    capacity: float  # bytes of L2 that keep data shared between SMs
    desync: float  # how far programs drift out of lockstep (0 = lockstep waves)
    name: str = ""


H100_L2 = L2Model(capacity=18 * MiB, desync=0.5, name="H100 SXM (probe: 18 MiB re-read capacity; desync fitted)")


@dataclass(frozen=True)
class L2Traffic:
    sm_read: float  # bytes SMs read through L2 (the iomodel's schedule count)
    sm_write: float
    dram_read: float
    dram_write: float
    hit_rate: float  # of read requests (bytes)

    @property
    def dram_bytes(self) -> float:
        return self.dram_read + self.dram_write


# a step is a tuple of (key, bytes, is_write); a program is an iterator of steps
Program = Iterator[tuple]


def _query_major(kernel: str, B: int, H: int, Hkv: int, Tq: int, Tk: int, D: int, bq: int, bk: int, causal: bool,
                 rev: bool, e: int) -> tuple[list[Program], int]:
    """Forward and dQ: one program per (query block, batch x head), query blocks fastest; each walks its K/V."""
    nq, group = math.ceil(Tq / bq), H // Hkv
    row_in = D * e if kernel == "fwd" else 2 * D * e + 2 * FP32  # q | q, dO, LSE, delta
    row_out = D * e + FP32 if kernel == "fwd" else D * e  # o, LSE | dq

    def program(bh: int, i: int, n: int) -> Program:
        kv = (bh // H) * Hkv + (bh % H) // group
        rows = min(bq, Tq - i * bq)
        yield ((("in", bh, i), rows * row_in, False),)
        for j in range(n):
            yield ((("kv", kv, j), 2 * min(bk, Tk - j * bk) * D * e, False),)
        yield ((("out", bh, i), rows * row_out, True),)

    blocks = [math.ceil(rows / bk) for rows in kv_rows_seen(Tq, Tk, bq, bk, causal)]  # key blocks per query block
    progs, longest = [], 0
    for bh in range(B * H):
        for p in range(nq):
            i = nq - 1 - p if (rev and causal) else p
            n = blocks[i]
            longest = max(longest, n + 2)
            progs.append(program(bh, i, n))
    return progs, longest


def _key_major(B: int, H: int, Hkv: int, Tq: int, Tk: int, D: int, bq: int, bk: int, causal: bool,
               e: int) -> tuple[list[Program], int]:
    """dK/dV: one program per (key block, batch x KV head); it walks the query blocks of every head of its group."""
    nk, nq, group = math.ceil(Tk / bk), math.ceil(Tq / bq), H // Hkv

    def program(b: int, hk: int, j: int, lo: int) -> Program:
        cols = min(bk, Tk - j * bk)
        yield ((("kv", b, hk, j), 2 * cols * D * e, False),)
        for g in range(group):
            for i in range(lo, nq):
                yield ((("in", b, hk * group + g, i), min(bq, Tq - i * bq) * (2 * D * e + 2 * FP32), False),)
        yield ((("out", b, hk, j), 2 * cols * D * e, True),)

    # the first query block each key block's program visits: it skips the rows that see none of its keys
    first = [(Tq - rows) // bq for rows in q_rows_seen(Tq, Tk, bq, bk, causal)]
    progs, longest = [], 0
    for b in range(B):
        for hk in range(Hkv):
            for j in range(nk):
                longest = max(longest, group * (nq - first[j]) + 2)
                progs.append(program(b, hk, j, first[j]))
    return progs, longest


def replay(programs: list[Program], concurrent: int, model: L2Model, length: int) -> L2Traffic:
    """Run programs through `concurrent` slots and an LRU L2 (see the module docstring); `length` scales the drift."""
    lru: OrderedDict = OrderedDict()  # key -> (bytes, dirty)
    used = 0.0
    req_r = req_w = miss_r = written = 0.0
    pending = iter(programs)
    slots = []
    for s in range(concurrent):
        prog = next(pending, None)
        if prog is None:
            break
        slots.append([int(model.desync * s / concurrent * length), prog])
    tick = 0
    while slots:
        seen = set()
        keep = []
        for slot in slots:
            if slot[0] > tick:
                keep.append(slot)
                continue
            step = next(slot[1], None)
            while step is None:
                slot[1] = next(pending, None)
                if slot[1] is None:
                    break
                step = next(slot[1], None)
            if step is None:
                continue
            keep.append(slot)
            for key, size, write in step:
                if write:
                    req_w += size
                else:
                    req_r += size
                if key in seen:
                    continue
                seen.add(key)
                if key in lru:
                    lru.move_to_end(key)
                    if write:
                        lru[key] = (size, True)
                    continue
                if not write:
                    miss_r += size
                lru[key] = (size, write)
                used += size
                while used > model.capacity and lru:
                    _, (sz, dirty) = lru.popitem(last=False)
                    used -= sz
                    written += sz if dirty else 0.0
        slots = keep
        tick += 1
    return L2Traffic(sm_read=req_r, sm_write=req_w, dram_read=miss_r, dram_write=written,
                     hit_rate=1 - miss_r / max(req_r, 1.0))


def flash_l2_traffic(kernel: str, B: int, H: int, T: int, D: int, block_q: int, block_k: int, *,
                     Hkv: int | None = None, Tk: int | None = None, causal: bool = False, rev: bool = False,
                     concurrent: int = 132, model: L2Model = H100_L2, elem: int = 2) -> L2Traffic:
    """DRAM traffic of one of ioaware's attention kernels: `kernel` is "fwd", "dkdv" or "dq".

    The dK/dV kernel's requests are only its own (K, V, Q, dO, LSE, delta; dK, dV); the delta preprocess is separate.
    """
    if kernel not in ("fwd", "dkdv", "dq"):
        raise ValueError(f"kernel must be 'fwd', 'dkdv' or 'dq', not {kernel!r}")
    Hkv, Tk = Hkv or H, Tk or T
    if H % Hkv:
        raise ValueError(f"query heads ({H}) must be a multiple of key/value heads ({Hkv})")
    if kernel == "dkdv":
        progs, longest = _key_major(B, H, Hkv, T, Tk, D, block_q, block_k, causal, elem)
    else:
        progs, longest = _query_major(kernel, B, H, Hkv, T, Tk, D, block_q, block_k, causal, rev, elem)
    return replay(progs, max(1, concurrent), model, longest)


def h100_ctas_per_sm(D: int) -> int:
    """Resident programs per SM of ioaware's attention kernels on the H100 (ncu's occupancy, Triton 3.6).

    The launch table's D <= 64 tiles use <= 128 registers per thread at 8 warps or 4 warps at 255 (dK/dV), and fit
    two per SM; the D = 128 tiles are limited to one by shared memory or registers.
    """
    return 2 if D <= 64 else 1


def flash_kernels_dram(B: int, H: int, T: int, D: int, *, Hkv: int | None = None, causal: bool = False,
                       backward: bool = False, sms: int = 132, model: L2Model = H100_L2) -> dict[str, L2Traffic]:
    """The L2 model run on the tiles ioaware's launch table picks: {"fwd": ...} or {"dkdv": ..., "dq": ...}."""
    from ..kernels.attention.flash.kernel import tile_table

    out = {}
    for kernel in ("dkdv", "dq") if backward else ("fwd",):
        t = tile_table(kernel, D, T, causal)
        out[kernel] = flash_l2_traffic(kernel, B, H, T, D, t["BM"], t["BN"], Hkv=Hkv, causal=causal, rev=t["REV"],
                                       concurrent=sms * h100_ctas_per_sm(D), model=model)
    return out
