"""Decode throughput of a GPU whose KV cache lives on flash: FlexGen (KV on an SSD, behind the host) vs InstInfer
(KV and decode attention inside computational storage drives).

Both keep as much of the FP16 weights on the GPU as fits (the rest stream from host DRAM every step) and run the
weight GeMVs there; they differ in where the KV cache is read and attention runs:

* FlexGen, its cost model's generation step (cache on disk, cn = 1): per layer ctog + max(gtoc, dtoc, ctod, comp);
  ctog = CPU-resident weights, dtoc = the layer's K and V from the SSD (through the host at the SSD's read rate),
  ctod = the new token's K and V written back, comp = the GPU's GeMVs + attention on the CPU (FlexGen computes
  attention where a disk/CPU cache lands). Prefill writes the prompt's KV to the SSD (overlapped with its compute).
* InstInfer: per layer the GPU computes q, k, v and sends them peer to peer to the CSD (PCIe 4.0 x4); the CSD reads
  SparF's bytes over its internal channels (channel-major K in large blocks, then whole 4 KiB token pages, each
  costing a plane's array read), computes the attention and returns the output; the new K (twice: token- and
  channel-major) and V are programmed. Two micro-batches let the GPU work on one while the CSD serves the other.

`instinfer_step` is the closed form; `InstInferSim` runs the same step as events (SimPy). Neither is fitted to
InstInfer's numbers: the comparison checks the *shape* (speedup rising with sequence length toward a ceiling set by
the internal/external bandwidth ratio and SparF's read fraction), and the README says what the 11.1x implies.
"""

from __future__ import annotations

from dataclasses import dataclass

import simpy

from ..cambricon.models import DecoderShape
from .configs import CSD, HOST, SPARF, SSD, Csd, GpuHost, SparF, Ssd
from .sparf import sparf_bytes

FP16 = 2


@dataclass(frozen=True)
class Setup:
    model: DecoderShape
    batch: int = 16
    host: GpuHost = HOST
    ssd: Ssd = SSD
    csd: Csd = CSD
    sparf: SparF = SPARF
    micro_batches: int = 2  # InstInfer: GPU and CSD work on different halves of the batch at once

    def __post_init__(self):
        if self.batch < 1 or self.micro_batches < 1 or self.batch % self.micro_batches:
            raise ValueError(f"batch ({self.batch}) must be a positive multiple of micro_batches "
                             f"({self.micro_batches})")

    # -- weights and the GPU --------------------------------------------------------------------------------
    @property
    def layer_weight_bytes(self) -> float:
        return FP16 * sum(o * i for _, o, i in self.model.layer_gemvs())

    @property
    def head_weight_bytes(self) -> float:
        return FP16 * self.model.vocab * self.model.d

    @property
    def gpu_weight_fraction(self) -> float:
        """wg: the share of weights that fits on the GPU (the KV cache is off the GPU in both systems)."""
        total = self.model.layers * self.layer_weight_bytes + self.head_weight_bytes
        return min(1.0, max(0.0, (self.host.gpu_mem - self.host.gpu_reserve) / total))

    def gpu_gemv_time(self, weight_bytes: float, batch: int) -> float:
        """Roofline of batch x weight GeMVs on the GPU, plus the CPU-resident part of the weights over PCIe."""
        h = self.host
        wg = self.gpu_weight_fraction
        compute = max(weight_bytes / h.hbm_Bps, 2.0 * batch * weight_bytes / FP16 / h.gpu_flops)
        return compute + (1.0 - wg) * weight_bytes / h.ctog_Bps

    def kv_layer_bytes(self, ctx: int, batch: int | None = None) -> float:
        return 2 * FP16 * (batch or self.batch) * ctx * self.model.kv_dim


# -- FlexGen ------------------------------------------------------------------------------------------------------
def flexgen_step(st: Setup, ctx: int) -> dict[str, float]:
    """One decode step (every layer once, then the LM head) at `ctx` cached tokens, FlexGen's generation formula."""
    h, m, B = st.host, st.model, st.batch
    wg = st.gpu_weight_fraction
    ctog = (1.0 - wg) * st.layer_weight_bytes / h.ctog_Bps
    dtoc = st.kv_layer_bytes(ctx) / st.ssd.read_Bps
    ctod = st.kv_layer_bytes(1) / st.ssd.write_Bps
    gtoc = st.kv_layer_bytes(1) / h.gtoc_Bps  # the new K, V leave the GPU for the disk
    attn_cpu = max(4.0 * B * ctx * m.d / h.cpu_flops, st.kv_layer_bytes(ctx) / h.cpu_dram_Bps)
    gpu = max(st.layer_weight_bytes / h.hbm_Bps, 2.0 * B * st.layer_weight_bytes / FP16 / h.gpu_flops)
    comp = gpu + attn_cpu
    layer = ctog + max(gtoc, dtoc, ctod, comp)
    head = st.gpu_gemv_time(st.head_weight_bytes, B)
    return {"seconds": m.layers * layer + head, "layer": layer, "ctog": ctog, "dtoc": dtoc, "ctod": ctod,
            "comp": comp, "attn_cpu": attn_cpu}


def flexgen_prefill(st: Setup, prompt: int) -> float:
    m, h, B = st.model, st.host, st.batch
    params = m.weight_elems()
    compute = 2.0 * params * B * prompt / h.gpu_flops + (1 - st.gpu_weight_fraction) * params * FP16 / h.ctog_Bps
    write = m.layers * st.kv_layer_bytes(prompt) / min(st.ssd.write_Bps, h.gtoc_Bps)
    return max(compute, write)


# -- InstInfer ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class InstStages:
    """Per layer and micro-batch: GPU before / after attention, link in / out, CSD attention."""

    gpu_pre: float
    gpu_post: float
    link_in: float
    link_out: float
    csd: float
    csd_read: float
    csd_write: float
    csd_compute: float


def instinfer_stages(st: Setup, ctx: int) -> InstStages:
    m, c, sp = st.model, st.csd, st.sparf
    b = st.batch // st.micro_batches
    gemvs = m.layer_gemvs()
    pre = FP16 * gemvs[0][1] * gemvs[0][2]  # qkv
    post = st.layer_weight_bytes - pre  # o, up, down
    per_head = sparf_bytes(ctx, m.head_dim, sp)
    heads = b * m.kv_heads / c.count  # one CSD's share of (sequence, kv head) pairs
    step1 = heads * per_head["step1_channels"]
    step2 = heads * per_head["step2_pages"]
    read = step1 / c.read_Bps(c.flash_page) + step2 / c.read_Bps(sp.page_tokens * m.head_dim * sp.elem)
    write = b * (2 * m.kv_dim + m.kv_dim) * FP16 / c.count / c.write_Bps  # new K twice, V once
    group = m.heads // m.kv_heads
    kept = per_head["pages_kept"] * sp.page_tokens
    flops = heads * group * (2.0 * ctx * round(m.head_dim * sp.r_frac) + 4.0 * kept * m.head_dim)
    compute = flops / c.engine_flops
    link_in = b * (m.d + 2 * m.kv_dim) * FP16 / c.count / c.link_Bps  # q, k, v peer to peer
    link_out = b * m.d * FP16 / c.count / c.link_Bps
    return InstStages(st.gpu_gemv_time(pre, b), st.gpu_gemv_time(post, b), link_in, link_out,
                      max(read + write, compute), read, write, compute)


def instinfer_step(st: Setup, ctx: int) -> dict[str, float]:
    """Closed form of one decode step. One micro-batch: the stages in series (equal to the event model). M > 1: a
    two-resource pipeline (GPU, CSD with its link) whose busier resource sets the pace, plus one micro-batch's fill:
    within 3% of the event model when one resource dominates, optimistic by up to ~10% when GPU and CSD times are
    close (short contexts), where the micro-batches leave bubbles."""
    s = instinfer_stages(st, ctx)
    M, L = st.micro_batches, st.model.layers
    gpu = s.gpu_pre + s.gpu_post
    csd = s.link_in + s.csd + s.link_out
    if M == 1:
        layers = L * (gpu + csd)
    else:
        layers = L * max(M * gpu, M * csd) + min(gpu, csd)
    head = st.gpu_gemv_time(st.head_weight_bytes, st.batch)
    return {"seconds": layers + head, "gpu": gpu, "csd": s.csd, "csd_read": s.csd_read, "link": s.link_in + s.link_out}


def instinfer_prefill(st: Setup, prompt: int) -> float:
    m, h, c = st.model, st.host, st.csd
    params = m.weight_elems()
    compute = 2.0 * params * st.batch * prompt / h.gpu_flops + (1 - st.gpu_weight_fraction) * params * FP16 / h.ctog_Bps
    kv = m.layers * st.kv_layer_bytes(prompt) * 1.5 / c.count  # K twice (token- and channel-major), V once
    return max(compute, kv / min(c.link_Bps, c.write_Bps))


class InstInferSim:
    """One decode step as events: a GPU, the CSD's link (each direction) and the CSD, M micro-batches."""

    def __init__(self, st: Setup):
        self.st = st
        self.env = simpy.Environment()
        self.gpu = simpy.Resource(self.env, 1)
        self.up = simpy.Resource(self.env, 1)
        self.down = simpy.Resource(self.env, 1)
        self.csd = simpy.Resource(self.env, 1)

    def _use(self, res, dt: float):
        with res.request() as r:
            yield r
            yield self.env.timeout(dt)

    def _micro_batch(self, s: InstStages):
        for _ in range(self.st.model.layers):
            yield from self._use(self.gpu, s.gpu_pre)
            yield from self._use(self.up, s.link_in)
            yield from self._use(self.csd, s.csd)
            yield from self._use(self.down, s.link_out)
            yield from self._use(self.gpu, s.gpu_post)

    def step(self, ctx: int) -> float:
        s = instinfer_stages(self.st, ctx)
        t0 = self.env.now
        mbs = [self.env.process(self._micro_batch(s)) for _ in range(self.st.micro_batches)]
        self.env.run(simpy.AllOf(self.env, mbs))
        self.env.run(self.env.process(self._use(self.gpu, self.st.gpu_gemv_time(self.st.head_weight_bytes,
                                                                                  self.st.batch))))
        return self.env.now - t0


# -- a whole generation ----------------------------------------------------------------------------------------
def generation(st: Setup, prompt: int, gen: int, engine: str = "closed", stride: int = 1) -> dict:
    """Tokens/s of both systems over `gen` decode steps after a `prompt`-token prefill (every `stride`-th step is
    computed and the steps between are taken equal to it). Decode throughput counts decode time only; end-to-end
    adds the prefill."""
    if prompt < 1 or gen < 1:
        raise ValueError(f"prompt and gen must be >= 1 tokens, got {prompt} and {gen}")
    if engine not in ("closed", "event"):
        raise ValueError(f"engine must be 'closed' or 'event', got {engine!r}")
    fg, ii = 0.0, 0.0
    for j in range(0, gen, stride):
        n = min(stride, gen - j)
        ctx = prompt + j
        fg += n * flexgen_step(st, ctx)["seconds"]
        ii += n * (InstInferSim(st).step(ctx) if engine == "event" else instinfer_step(st, ctx)["seconds"])
    tokens = st.batch * gen
    fg_pre, ii_pre = flexgen_prefill(st, prompt), instinfer_prefill(st, prompt)
    return {"model": st.model.name, "batch": st.batch, "prompt": prompt, "gen": gen,
            "flexgen_decode_tok_s": tokens / fg, "instinfer_decode_tok_s": tokens / ii,
            "speedup_decode": fg / ii,
            "flexgen_e2e_tok_s": tokens / (fg + fg_pre), "instinfer_e2e_tok_s": tokens / (ii + ii_pre),
            "speedup_e2e": (fg + fg_pre) / (ii + ii_pre),
            "gpu_weight_fraction": st.gpu_weight_fraction,
            "sparf_read_fraction": sparf_bytes(prompt + gen // 2, st.model.head_dim, st.sparf)["total"]
            / sparf_bytes(prompt + gen // 2, st.model.head_dim, st.sparf)["dense"]}


def asymptotic_speedup(st: Setup, ctx: int) -> float:
    """The ceiling the speedup approaches as KV traffic dominates: FlexGen's disk read time of a layer's KV over
    InstInfer's CSD time for it (micro-batching and the GPU hidden)."""
    dtoc = st.kv_layer_bytes(ctx) / st.ssd.read_Bps
    s = instinfer_stages(st, ctx)
    return dtoc / (st.micro_batches * s.csd)
