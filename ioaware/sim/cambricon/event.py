"""The same decode token as discrete events (SimPy): one channel's bus, its read-compute requests and plain reads.

Every channel does the same work (each GeMV is spread evenly over them, a tile request spans them all), so one
channel's timeline is the chiplet's. The GeMV splits come from the closed form's plan (`timing.token_plans`); what the
closed form averages (the wait for the plain granule in flight, retries, the plain stream running ahead across GeMV
boundaries and attention) happens here event by event.

The bus is a `PriorityResource`. With read slicing read-compute transfers go first and a plain transfer keeps the bus
for whole 512 B slices, so a read-compute request that arrives mid-slice waits for its end. Without slicing (the
ablation) plain reads are whole-page transfers, `unsliced_depth` queued per channel, first come first served.

* read-compute request i: take the bus, send the input slice (t_in); the dies start their array read (tR, 2 tR when
  a die of this request retries: drawn per request with P = 1-(1-p)^cores from a seeded generator); keep the bus t_out
  more for request i-1's partial sums; release; wait for the array read. After the last request its partial sums
  leave (t_out).
* plain reads: one stream for the whole token, GeMV after GeMV; the pages were read ahead on the dies' other planes
  (weights do not depend on the activations). The stream may work on a GeMV's share once the GeMV before it has
  started (the NPU buffers one GeMV ahead). A run of slices ends at the first slice boundary after read-compute next
  wants the bus, so it never delays a request by a slice or more.
* the token: per layer qkv, attention on the NPU (a timeout), o, up, down; then the LM head. A GeMV ends when its
  requests are done and its plain share has arrived; the next one starts then.
"""

from __future__ import annotations

import math

import numpy as np
import simpy

from .configs import NPU, FlashConfig, NpuConfig
from .models import DecoderShape
from .tiling import t_input, t_output
from .timing import Design, GemvPlan, TokenTime, attention_time, check_machine, default_design, token_plans


class ChannelSim:
    """One channel of a flash chiplet, run by SimPy. `run_gemvs`/`run_token` return simulated seconds."""

    def __init__(self, cfg: FlashConfig, design: Design | None = None, npu: NpuConfig = NPU, seed: int = 0):
        check_machine(cfg)
        self.cfg, self.npu = cfg, npu
        self.d = design or default_design(cfg)
        self.d.tile.check(cfg)
        self.rng = np.random.default_rng(seed)
        self.q = 1.0 - (1.0 - self.d.p) ** cfg.cores  # P(a tile request has a die that retries)
        self.t_in, self.t_out = t_input(self.d.tile, cfg), t_output(self.d.tile, cfg)
        self.env = simpy.Environment()
        self.bus = simpy.PriorityResource(self.env, capacity=1)
        self.next_rc = math.inf  # when read-compute next wants the bus (now: it is waiting to start)
        self.retries = 0

    # -- read-compute -----------------------------------------------------------------------------------------
    def _rc(self, n: int):
        env, bus, cfg = self.env, self.bus, self.cfg
        retry = self.rng.random(n) < self.q if self.q > 0 else np.zeros(n, bool)
        self.retries += int(retry.sum())
        prio = 0 if self.d.slicing else 1  # without slicing the bus is first come, first served
        self.next_rc = env.now
        for i in range(n):
            req = bus.request(priority=prio)
            yield req
            yield env.timeout(self.t_in)
            array = cfg.tR * (2.0 if retry[i] else 1.0)
            self.next_rc = env.now + array
            reading = env.timeout(array)
            if i > 0:
                yield env.timeout(self.t_out)  # partial sums of request i-1 leave during this read
            bus.release(req)
            yield reading
        if n:
            self.next_rc = env.now
            with bus.request(priority=prio) as req:
                yield req
                yield env.timeout(self.t_out)

    # -- plain reads ----------------------------------------------------------------------------------------------
    def _plain_sliced(self, nbytes: int):
        env, bus, bw, g = self.env, self.bus, self.cfg.channel_Bps, self.d.slice_bytes
        tg = g / bw
        left = nbytes
        while left > 0:
            req = bus.request(priority=1)
            yield req
            gap = self.next_rc - env.now
            k = math.ceil(gap / tg - 1e-9) if math.isfinite(gap) else math.inf
            chunk = left if k * g >= left else max(1, k) * g
            yield env.timeout(chunk / bw)
            bus.release(req)
            left -= chunk

    def _plain_pages(self, nbytes: int):
        pages = math.ceil(nbytes / self.cfg.page_bytes)
        depth = min(self.d.unsliced_depth, pages)
        yield simpy.AllOf(self.env, [self.env.process(self._page_queue(nbytes, range(k, pages, depth)))
                                     for k in range(depth)])

    def _page_queue(self, nbytes: int, which):
        """Without slicing: one of `unsliced_depth` page queues; each page is one transfer, first come first served."""
        env, bus, P = self.env, self.bus, self.cfg.page_bytes
        for k in which:
            with bus.request(priority=1) as req:
                yield req
                yield env.timeout(min(P, nbytes - k * P) / self.cfg.channel_Bps)

    def _plain_stream(self, plans: list[GemvPlan], started: list, arrived: list):
        for g, p in enumerate(plans):
            yield started[g - 1] if g else started[0]  # one GeMV ahead at most
            if p.plain_per_channel > 0:
                yield from (self._plain_sliced if self.d.slicing else self._plain_pages)(p.plain_per_channel)
            arrived[g].succeed()

    # -- the token --------------------------------------------------------------------------------------------
    def _run(self, plans: list[GemvPlan], t_attn: float, progress=None):
        env = self.env
        started = [env.event() for _ in plans]
        arrived = [env.event() for _ in plans]
        env.process(self._plain_stream(plans, started, arrived))
        for g, p in enumerate(plans):
            started[g].succeed()
            yield env.process(self._rc(p.rounds)) & arrived[g]
            self.next_rc = math.inf
            if p.name == "qkv" and t_attn > 0:
                self.next_rc = env.now + t_attn  # the next read-compute request comes after the attention
                yield env.timeout(t_attn)
            else:
                self.next_rc = env.now  # the next GeMV starts at once
            if progress and (g + 1) % 64 == 0:
                progress(g + 1, len(plans))

    def run_gemvs(self, plans: list[GemvPlan], t_attn: float = 0.0) -> float:
        t0 = self.env.now
        self.env.process(self._run(plans, t_attn))
        self.env.run()
        return self.env.now - t0

    def run_token(self, model: DecoderShape, progress=None) -> TokenTime:
        plans = token_plans(model, self.cfg, self.d, self.npu)
        t_attn = attention_time(model, self.npu)
        t0 = self.env.now
        self.env.process(self._run(plans, t_attn, progress))
        self.env.run()
        total = self.env.now - t0
        attn = model.layers * t_attn
        return TokenTime(model.name, self.cfg.name, total, total - attn, attn, sum(p.rounds for p in plans),
                         sum(p.rc_bytes for p in plans), sum(p.plain_bytes for p in plans), plans)


def simulate_token(model: DecoderShape, cfg: FlashConfig, design: Design | None = None, npu: NpuConfig = NPU,
                   seed: int = 0, progress=None) -> TokenTime:
    """Event-level seconds of one decode token (seeded: the same seed gives the same answer)."""
    return ChannelSim(cfg, design, npu, seed).run_token(model, progress)
