"""Composition of experts on SN40L sockets, event by event (SimPy): experts live in DDR, a router picks one per
request, and a routed expert that is not in HBM is copied there (least recently used expert evicted) before it runs.

The copy is the model-switching time: every socket holds 1/sockets of the expert and its DMA engine moves its shard
DDR -> HBM in chunks; a reader process (DDR) and a writer process (HBM) per socket overlap through a one-chunk
buffer, so a copy takes about shard / DDR bandwidth, plus a descriptor setup per chunk, plus the last chunk's write.
`switch_closed_form` is the same in one line; a test holds the two together.

The DGX it is compared with keeps experts in host DRAM and copies them over each GPU's PCIe link (8 GPUs, 1/8 each),
from pinned or from pageable host memory, capped by the host's DRAM bandwidth.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import simpy

from .dataflow import Workload, fused_s
from .spec import GpuBox, LlamaShape, RduSocket


def switch_event_s(nbytes: float, sockets: int, s: RduSocket) -> float:
    """Event-driven DDR -> HBM copy of one expert sharded over `sockets` (all sockets in parallel)."""
    env = simpy.Environment()
    shard = nbytes / sockets
    n = max(1, math.ceil(shard / s.dma_chunk_bytes))
    ends: list[float] = []

    def socket():
        buf = simpy.Store(env, capacity=1)  # one chunk staged between the DDR read and the HBM write

        def reader():
            left = shard
            for _ in range(n):
                c = min(s.dma_chunk_bytes, left)
                left -= c
                yield env.timeout(s.dma_setup_s + c / s.ddr_Bps)
                yield buf.put(c)

        def writer():
            for _ in range(n):
                c = yield buf.get()
                yield env.timeout(c / s.hbm_Bps)
            ends.append(env.now)

        env.process(reader())
        yield env.process(writer())

    for _ in range(sockets):
        env.process(socket())
    env.run()
    return max(ends)


def switch_closed_form(nbytes: float, sockets: int, s: RduSocket) -> float:
    shard = nbytes / sockets
    n = max(1, math.ceil(shard / s.dma_chunk_bytes))
    last = shard - (n - 1) * s.dma_chunk_bytes
    # the reader is the bottleneck (DDR << HBM): n setups + the shard at DDR speed, then the last chunk's write
    return n * s.dma_setup_s + shard / s.ddr_Bps + last / s.hbm_Bps


def dgx_switch_s(nbytes: float, box: GpuBox, pinned: bool) -> float:
    """Host DRAM -> 8 GPUs' HBM, each GPU its 1/gpus over its own PCIe link; the links share the host DRAM."""
    per_gpu = box.h2d_pinned_Bps if pinned else box.h2d_pageable_Bps
    rate = min(box.gpus * per_gpu, box.host_dram_Bps)
    return nbytes / rate


@dataclass
class CoeResult:
    machine: str
    experts: int
    requests: int
    cache_slots: int
    hits: int
    switches: int
    switch_s: float
    compute_s: float
    total_s: float
    tokens: int
    timeline: list[tuple[float, str]] = field(default_factory=list)  # (time, "switch"|"run") for plots

    @property
    def hit_rate(self) -> float:
        return self.hits / self.requests

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.total_s


def expert_popularity(n: int, zipf: float) -> np.ndarray:
    p = 1.0 / np.arange(1, n + 1) ** zipf
    return p / p.sum()


def simulate_coe(expert: LlamaShape, n_experts: int, n_requests: int, switch_s: float, cache_slots: int,
                 step_s: dict[str, float], prompt: int, gen: int, zipf: float = 1.0, seed: int = 0,
                 machine: str = "SN40L") -> CoeResult:
    """Requests served one after another: route (the router is itself an expert-sized model, always resident),
    switch if the routed expert is not in HBM, prefill the prompt, decode `gen` tokens. `step_s` holds the seconds
    of one 'prefill' and of one 'decode' step on the machine."""
    if n_experts < 1 or n_requests < 1 or cache_slots < 1:
        raise ValueError(f"experts, requests and HBM slots must be >= 1 (got {n_experts}, {n_requests}, "
                         f"{cache_slots})")
    rng = np.random.default_rng(seed)
    routed = rng.choice(n_experts, size=n_requests, p=expert_popularity(n_experts, zipf))
    env = simpy.Environment()
    hbm: OrderedDict[int, None] = OrderedDict()  # resident experts, least recently used first
    res = CoeResult(machine, n_experts, n_requests, cache_slots, 0, 0, 0.0, 0.0, 0.0, n_requests * gen)
    run_s = 2 * step_s["prefill"] + step_s["decode"] + gen * step_s["decode"]  # router + expert

    def serve():
        for e in routed:
            e = int(e)
            if e in hbm:
                hbm.move_to_end(e)
                res.hits += 1
            else:
                if len(hbm) >= cache_slots:
                    hbm.popitem(last=False)
                res.timeline.append((env.now, "switch"))
                yield env.timeout(switch_s)
                res.switch_s += switch_s
                res.switches += 1
                hbm[e] = None
            res.timeline.append((env.now, "run"))
            yield env.timeout(run_s)
            res.compute_s += run_s
        res.total_s = env.now

    env.process(serve())
    env.run()
    return res


def rdu_steps(expert: LlamaShape, sockets: int, s: RduSocket, prompt: int, ctx: int) -> dict[str, float]:
    return {"prefill": fused_s(Workload("p", expert, prompt, prompt, True, sockets), s),
            "decode": fused_s(Workload("d", expert, 1, ctx, False, sockets), s)}


def dgx_steps(expert: LlamaShape, box: GpuBox, prompt: int, ctx: int, mem_eff: float = 0.9,
              gemm_eff: float = 0.7) -> dict[str, float]:
    """The DGX at its roofline (weights streamed once per step across 8 GPUs): an optimistic GPU side, so the CoE
    comparison does not hinge on GPU kernel overheads."""
    w = expert.bytes()
    kv = 2 * expert.n_layers * ctx * expert.n_kv_heads * expert.d_head * 2
    decode = max((w + kv) / (box.hbm_Bps * mem_eff), 2 * expert.params / (box.peak_bf16 * gemm_eff))
    prefill = max(w / (box.hbm_Bps * mem_eff), 2 * expert.params * prompt / (box.peak_bf16 * gemm_eff))
    return {"prefill": prefill, "decode": decode}


def cache_slots(hbm_bytes: float, expert_bytes: float, reserve: float = 0.1) -> int:
    """Experts that fit in HBM after `reserve` of it is kept for KV cache and activations, less the router's slot."""
    return max(1, int(hbm_bytes * (1 - reserve) // expert_bytes) - 1)
