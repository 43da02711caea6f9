"""One decode token on Cambricon-LLM in closed form: each GeMV split between read-compute and sliced plain reads.

Per GeMV (B = out x in weight bytes), on every channel at once (the work is spread evenly, so one channel stands for
all of them):

* read-compute: n tile requests. A request sends the channel its input slice (t_in), then the dies read their pages
  (tR, plus tR again on the request's slowest die if it had to retry, tR x (1-(1-p)^cores) on average); the partial
  sums of the previous request leave during that read (t_out). n requests take n (w + t_in + tR + retry) + t_out,
  where w is the wait for plain-read transfers ahead of it on the bus: half a 512 B slice on average with read
  slicing; without it, half the 16 KiB page in flight plus the pages queued before it (`Design`).
* plain reads: the NPU's share, B - n x tile bytes, 1/channels of it per channel. A weight page does not depend on
  the activations, so the dies' other planes read the NPU's pages ahead (during the previous GeMV, the attention) and
  keep them ready (cpc pages per tR outrun the bus); the transfers fill the bus time read-compute leaves, all of it
  once read-compute is done. The NPU may also take in the *next* GeMV's share early (one GeMV ahead, into its
  buffer): whenever the bus would idle, at the end of a GeMV whose plain share is done or during the attention.
  Those bytes (`credit`) are already there when that GeMV starts.
* n is the integer that balances the two (the paper's "split chosen to balance both paths").

A layer runs qkv, attention on the NPU (the KV cache in its DRAM: max(KV bytes / DRAM bandwidth, FLOPs / peak)), o,
up, down; then the LM head. Each step's computation waits for the one before it (its input is the previous output):
read-compute stops at every GeMV boundary and during the attention; only the plain stream runs through them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .configs import NPU, RETRY_PROBABILITY, SLICE_BYTES, FlashConfig, NpuConfig
from .models import DecoderShape
from .tiling import Tile, hardware_tile, retry_delay, t_input, t_output


@dataclass(frozen=True)
class Design:
    """What an ablation turns off: the tile shape, read slicing; and the retry probability.

    With read slicing the controller gives read-compute transfers the bus first and plain transfers yield it every
    `slice_bytes`. Without it a plain read is one whole-page transfer and the bus serves requests in arrival order, the
    NPU keeping `unsliced_depth` page reads queued per channel (double buffering), so a read-compute request finds on
    average half a page in flight and `unsliced_depth - 1` whole pages ahead of it.
    """

    tile: Tile
    slicing: bool = True
    slice_bytes: int = SLICE_BYTES
    p: float = RETRY_PROBABILITY
    unsliced_depth: int = 2

    def granule(self, cfg: FlashConfig) -> int:
        """Bytes a plain transfer holds the bus for before a read-compute request may take it."""
        return self.slice_bytes if self.slicing else cfg.page_bytes


def default_design(cfg: FlashConfig, **kw) -> Design:
    return Design(hardware_tile(cfg), **kw)


@dataclass(frozen=True)
class GemvPlan:
    name: str
    out: int
    inp: int
    rounds: int  # read-compute requests
    rc_bytes: int
    plain_bytes: int  # the NPU's share, all channels
    plain_per_channel: int
    t_rc_path: float
    t_plain_path: float
    credit: float = 0.0  # bytes per channel of the plain share delivered before the GeMV started
    spare_bytes: float = 0.0  # bytes per channel the bus could carry after the plain share, before the GeMV ends

    @property
    def time(self) -> float:
        return max(self.t_rc_path, self.t_plain_path)


@dataclass
class TokenTime:
    model: str
    config: str
    seconds: float
    flash_s: float  # GeMVs (both paths, per GeMV the slower)
    attention_s: float  # NPU attention, serial with the GeMVs
    rounds: int
    rc_bytes: float
    plain_bytes: float
    plans: list[GemvPlan] = field(default_factory=list, repr=False)

    @property
    def tokens_per_s(self) -> float:
        return 1.0 / self.seconds

    @property
    def rc_fraction(self) -> float:
        return self.rc_bytes / (self.rc_bytes + self.plain_bytes)


def _round_period(cfg: FlashConfig, d: Design, plain_active: bool) -> float:
    g = d.granule(cfg) / cfg.channel_Bps
    wait = (g / 2 if d.slicing else (d.unsliced_depth - 0.5) * g) if plain_active else 0.0
    return wait + t_input(d.tile, cfg) + cfg.tR + retry_delay(cfg, d.p)


def rc_path_time(cfg: FlashConfig, d: Design, n: int, plain_active: bool) -> float:
    if n == 0:
        return 0.0
    return n * _round_period(cfg, d, plain_active) + t_output(d.tile, cfg)


def plain_path_time(cfg: FlashConfig, d: Design, per_channel: int, n: int, t_rc_path: float,
                    npu: NpuConfig = NPU) -> float:
    """Per-channel plain bytes (their pages read ahead) at the bus share read-compute leaves, then the full bus."""
    if per_channel <= 0:
        return 0.0
    bw = cfg.channel_Bps
    if n == 0:
        t = per_channel / bw
    else:
        period = _round_period(cfg, d, True)
        free = 1.0 - (t_input(d.tile, cfg) + t_output(d.tile, cfg)) / period
        during = t_rc_path * free * bw  # bytes that fit while read-compute runs
        t = per_channel / (free * bw) if per_channel <= during else t_rc_path + (per_channel - during) / bw
    npu_compute = 2.0 * per_channel * cfg.channels / npu.peak_ops  # a MAC per plain weight
    return max(t, npu_compute)


def plan_gemv(cfg: FlashConfig, d: Design, name: str, out: int, inp: int, npu: NpuConfig = NPU,
              rounds: int | None = None, credit: float = 0.0) -> GemvPlan:
    """The balanced split of one GeMV (or a given number of read-compute `rounds`); `credit` bytes per channel of
    its plain share arrived before it started."""
    B = out * inp * cfg.weight_bytes
    N = math.ceil(B / cfg.tile_bytes)

    def make(n: int) -> GemvPlan:
        rc = min(n * cfg.tile_bytes, B)
        plain = B - rc
        per_ch = math.ceil(plain / cfg.channels)
        left = max(0.0, per_ch - credit)
        trc = rc_path_time(cfg, d, n, left > 0)
        tpl = plain_path_time(cfg, d, left, n, trc, npu)
        spare = 0.0
        if n and tpl < trc:
            period = _round_period(cfg, d, True)
            spare = (trc - tpl) * (1.0 - (t_input(d.tile, cfg) + t_output(d.tile, cfg)) / period) * cfg.channel_Bps
        return GemvPlan(name, out, inp, n, rc, plain, per_ch, trc, tpl, min(credit, per_ch), spare)

    if rounds is not None:
        if not 0 <= rounds <= N:
            raise ValueError(f"{name}: rounds must be in [0, {N}], got {rounds}")
        return make(rounds)
    lo, hi = 0, N  # smallest n whose read-compute path is no faster than its plain path
    while lo < hi:
        mid = (lo + hi) // 2
        p = make(mid)
        if p.t_rc_path >= p.t_plain_path:
            hi = mid
        else:
            lo = mid + 1
    cands = [make(n) for n in {max(lo - 1, 0), lo}]
    return min(cands, key=lambda p: (p.time, p.rounds))


def attention_time(model: DecoderShape, npu: NpuConfig = NPU) -> float:
    """One layer's attention on the NPU: K and V of `context` tokens from DRAM, or its FLOPs, whichever binds."""
    kv = 2 * npu.context * model.kv_dim * npu.kv_bytes
    flops = 4.0 * npu.context * model.d
    return max(kv / npu.dram_Bps, flops / npu.peak_ops)


def check_machine(cfg: FlashConfig) -> None:
    """The closed form assumes the spare planes keep plain pages ready faster than the bus drains them."""
    per_tr = cfg.chips_per_channel * cfg.dies_per_chip * (cfg.planes_per_die - 1) * cfg.page_bytes
    if per_tr / cfg.tR < cfg.channel_Bps:
        raise ValueError(f"{cfg.name}: the spare planes read {per_tr / cfg.tR / 1e9:.2f} GB/s per channel, below the "
                         f"{cfg.channel_Bps / 1e9:.2f} GB/s bus; plain reads would be array-bound, which this model "
                         "does not cover")


def token_plans(model: DecoderShape, cfg: FlashConfig, d: Design, npu: NpuConfig = NPU) -> list[GemvPlan]:
    """Every GeMV of one token in order (layers x [qkv, o, up, down], then the LM head), each planned with the
    credit the one before it left. Layers repeat once the credit entering a layer repeats (after one or two)."""
    gemvs = model.layer_gemvs()
    t_attn_bytes = attention_time(model, npu) * cfg.channel_Bps  # the bus is free for plain bytes meanwhile

    def share(o: int, i: int) -> int:
        return math.ceil(o * i * cfg.weight_bytes / cfg.channels)

    def layer(credit: float) -> tuple[list[GemvPlan], float]:
        plans = []
        for k, (name, o, i) in enumerate(gemvs):
            p = plan_gemv(cfg, d, name, o, i, npu, credit=credit)
            plans.append(p)
            room = p.spare_bytes + (t_attn_bytes if name == "qkv" else 0.0)
            nxt = gemvs[k + 1] if k + 1 < len(gemvs) else gemvs[0]
            credit = min(float(share(nxt[1], nxt[2])), room)
        return plans, credit

    out: list[GemvPlan] = []
    memo: dict[float, tuple[list[GemvPlan], float]] = {}
    credit = 0.0
    for _ in range(model.layers):
        if credit not in memo:
            memo[credit] = layer(credit)
        plans, credit = memo[credit]
        out.extend(plans)
    _, o, i = model.head_gemv()
    out.append(plan_gemv(cfg, d, "lm_head", o, i, npu, credit=min(float(share(o, i)), out[-1].spare_bytes)))
    return out


def token_time(model: DecoderShape, cfg: FlashConfig, design: Design | None = None,
               npu: NpuConfig = NPU) -> TokenTime:
    """Closed-form seconds of one decode token."""
    check_machine(cfg)
    d = design or default_design(cfg)
    d.tile.check(cfg)
    plans = token_plans(model, cfg, d, npu)
    flash = sum(p.time for p in plans)
    attn = model.layers * attention_time(model, npu)
    rounds = sum(p.rounds for p in plans)
    rc = sum(p.rc_bytes for p in plans)
    plain = sum(p.plain_bytes for p in plans)
    return TokenTime(model.name, cfg.name, flash + attn, flash, attn, rounds, rc, plain, plans)
