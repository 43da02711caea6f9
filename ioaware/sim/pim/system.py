"""PIM-GPT as an event-driven machine (SimPy): GDDR6-PIM channels that run their command programs in parallel, and the
ASIC that broadcasts inputs, gathers results and computes softmax, LayerNorm, GELU, residuals and partial sums.

Each channel is a SimPy process; its controller times every DRAM command through `dram.Channel` (tRCD, tRP, tRAS,
tRRD, tFAW, tRTP, tWR, bus occupancy) and the process advances one row-burst at a time. A product ends when every
channel has read its results out; the ASIC then works on them. A decode step is the layers in order, then the head.

Identical layers: at one context length every layer runs the same program, and a layer starts with every bank closed
and the last PRE more than tRP and tFAW in the past (the LayerNorm on the ASIC comes first), so the step time is
embed + n_layers x layer + head with one layer simulated. `simulate_step(..., all_layers=True)` runs them all; a test
checks the two agree.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

import simpy

from .dram import Channel, Counters
from .gpt import AsicOp, GPTConfig, KvWrite, Vmm, head_ops, layer_ops
from .mapping import ChunkWork, plan_vmm, vmm_time_closed_form
from .timing import EnergyModel, PimConfig


@dataclass
class StepResult:
    model: str
    context: int
    time_s: float
    breakdown_s: dict[str, float]  # per operator name, over the whole step
    energy_j: dict[str, float]  # per component; sums to energy_total_j
    counters: Counters
    vmm_event_vs_closed_form: float  # max |event - closed form| / closed form over the layer's and head's products
    internal_bytes: float = 0.0  # weight + KV bytes the MAC units read
    extra: dict = field(default_factory=dict)

    @property
    def energy_total_j(self) -> float:
        return sum(self.energy_j.values())

    @property
    def power_w(self) -> float:
        return self.energy_total_j / self.time_s


class PimMachine:
    def __init__(self, cfg: PimConfig, record: bool = False):
        cfg.validate()
        self.cfg = cfg
        self.env = simpy.Environment()
        self.channels = [Channel(cfg.timing, cfg.banks, record) for _ in range(cfg.channels)]
        self.asic = simpy.Resource(self.env, capacity=1)
        self.op_s: dict[str, float] = defaultdict(float)
        self.asic_busy_s = 0.0
        self.vmm_check: list[tuple[str, float, float]] = []  # (name, event ns, closed-form ns)

    # ------------------------------------------------------------------ channel programs
    def _chunk(self, ch: Channel, w: ChunkWork):
        """One chunk on one channel: x into the global buffer, row-bursts through the MAC units, results out."""
        env, all_bank = self.env, self.cfg.act_mode == "all-bank"
        banks = tuple(range(w.active_banks))
        gb_end = ch.issue("WRGB", (), env.now, n=w.gb_bursts)
        end = gb_end
        for i, cols in enumerate(w.row_cols):
            ready = ch.activate(banks, all_bank, env.now)
            mac_end = ch.issue("MAC", banks, max(ready, gb_end), n=cols)
            if i == len(w.row_cols) - 1:  # results leave while the banks precharge
                end = ch.issue("RDMAC", (), mac_end, n=w.readout_bursts)
            pre = ch.precharge(banks, mac_end)
            yield env.timeout(max(pre, end) - env.now)
        if not w.row_cols:
            end = ch.issue("RDMAC", (), gb_end, n=w.readout_bursts) if w.readout_bursts else gb_end
            yield env.timeout(end - env.now)

    def _channel_vmm(self, ch: Channel, works: tuple[ChunkWork, ...]):
        for w in works:
            yield from self._chunk(ch, w)

    def vmm(self, v: Vmm):
        plan = plan_vmm(v, self.cfg)
        t0 = self.env.now
        procs = [self.env.process(self._channel_vmm(ch, works)) for ch, works in zip(self.channels, plan.per_channel)]
        yield simpy.AllOf(self.env, procs)
        self.vmm_check.append((v.name, self.env.now - t0, vmm_time_closed_form(plan, self.cfg)))
        if plan.partial_elems:
            yield from self.asic_op(AsicOp(v.name + "_partials", plan.partial_elems, 1))

    def asic_op(self, op: AsicOp):
        c = self.cfg
        ns = math.ceil(op.elems * op.passes / c.asic_lanes) / c.asic_ghz + c.asic_latency_ns
        with self.asic.request() as req:
            yield req
            yield self.env.timeout(ns)
        self.asic_busy_s += ns * 1e-9

    def kv_write(self, op: KvWrite, token: int):
        """The key as one new row of the K cache (bank of channel token % C); each value element into its row of V^T,
        whose d rows are dealt over all banks (one burst with a byte mask per row: ACT, WR, PRE)."""
        c, env = self.cfg, self.env
        all_bank = c.act_mode == "all-bank"

        def key_row(ch: Channel, bank: int):
            bursts = math.ceil(op.d * c.elem_bytes / c.col_bytes)
            for part in _split(bursts, c.cols_per_row):  # a key longer than a DRAM row spans two rows
                ready = ch.activate((bank,), False, env.now)
                end = ch.issue("WR", (bank,), ready, n=part)
                pre = ch.precharge((bank,), end)
                yield env.timeout(pre - env.now)

        def value_rows(ci: int, ch: Channel):
            rows_c = op.d // c.channels + (1 if ci < op.d % c.channels else 0)
            for r in range(math.ceil(rows_c / c.banks)):
                banks = tuple(range(min(c.banks, rows_c - r * c.banks)))
                ready = ch.activate(banks, all_bank, env.now)
                end = ready
                for b in banks:
                    end = ch.issue("WR", (b,), ready, n=1)
                pre = ch.precharge(banks, end)
                yield env.timeout(pre - env.now)

        kc = token % c.channels

        def channel(ci, ch):
            yield from value_rows(ci, ch)
            if ci == kc:
                yield from key_row(ch, (token // c.channels) % c.banks)

        procs = [env.process(channel(ci, ch)) for ci, ch in enumerate(self.channels)]
        yield simpy.AllOf(env, procs)

    def embed(self, d: int):
        """Read the token's and the position's embedding rows (channel 0) to the ASIC."""
        ch, env = self.channels[0], self.env
        bursts = math.ceil(d * self.cfg.elem_bytes / self.cfg.col_bytes)
        for _ in range(2):
            for part in _split(bursts, self.cfg.cols_per_row):
                ready = ch.activate((0,), False, env.now)
                end = ch.issue("RD", (0,), ready, n=part)
                pre = ch.precharge((0,), end)
                yield env.timeout(max(pre, end) - env.now)
        yield from self.asic_op(AsicOp("embed_add", d, 1))

    # ------------------------------------------------------------------ a decode step
    def run_ops(self, ops: list, token: int):
        for op in ops:
            t0 = self.env.now
            if isinstance(op, Vmm):
                yield from self.vmm(op)
            elif isinstance(op, AsicOp):
                yield from self.asic_op(op)
            elif isinstance(op, KvWrite):
                yield from self.kv_write(op, token)
            self.op_s[op.name] += (self.env.now - t0) * 1e-9

    def counters(self) -> Counters:
        total = Counters()
        for ch in self.channels:
            total.add(ch.count)
        return total


def _split(n: int, size: int) -> list[int]:
    full, last = divmod(n, size)
    return [size] * full + ([last] if last else [])


def simulate_step(m: GPTConfig, context: int, cfg: PimConfig | None = None, energy: EnergyModel | None = None,
                  all_layers: bool = False, record: bool = False) -> StepResult:
    """One decode step of model `m` with `context` tokens in the KV cache (the new one included)."""
    cfg = cfg or PimConfig()
    energy = energy or EnergyModel()
    if context < 1:
        raise ValueError(f"context must be >= 1 token (got {context})")
    mach = PimMachine(cfg, record)
    env = mach.env
    marks: dict[str, float] = {}
    snaps: dict[str, Counters] = {}

    def snap() -> Counters:
        return mach.counters().scaled(1)

    def step():
        yield from mach.embed(m.d_model)
        marks["l0"], snaps["l0"] = env.now, snap()
        for _ in range(m.n_layers if all_layers else 1):
            yield from mach.run_ops(layer_ops(m, context), context - 1)
        marks["l1"], snaps["l1"] = env.now, snap()
        yield from mach.run_ops(head_ops(m), context - 1)

    env.process(step())
    env.run()
    reps = 1 if all_layers else m.n_layers
    layer_ns = marks["l1"] - marks["l0"]
    total_ns = env.now + (reps - 1) * layer_ns
    cnt = mach.counters()
    if reps > 1:  # the simulated layer's events count n_layers times
        extra = Counters(**{k: (getattr(snaps["l1"], k) - getattr(snaps["l0"], k)) * (reps - 1)
                            for k in vars(cnt)})
        cnt.add(extra)
    layer_names = {op.name for op in layer_ops(m, context)}
    breakdown = {"embed": marks["l0"] * 1e-9}
    breakdown.update({k: v * (reps if k in layer_names else 1) for k, v in mach.op_s.items()})
    t = total_ns * 1e-9
    checks = [abs(ev - cf) / cf for _, ev, cf in mach.vmm_check if cf > 0]
    internal = cnt.mac_cols * cfg.col_bytes
    res = StepResult(m.name, context, t, dict(breakdown), energy_breakdown(cnt, t, mach.asic_busy_s, cfg, energy),
                     cnt, max(checks, default=0.0), internal)
    if record:
        res.extra["traces"] = [ch.trace for ch in mach.channels]
    return res


def energy_breakdown(cnt: Counters, t_s: float, asic_busy_s: float, cfg: PimConfig, e: EnergyModel) -> dict:
    """Joules per component. ASIC power is charged for the whole step (it is never gated off between its ops)."""
    bits_col = cfg.col_bytes * 8
    io_bursts = cnt.rd_bursts + cnt.wr_bursts + cnt.rdmac_bursts + cnt.wrgb_bursts
    return {
        "activate": cnt.acts * e.act_nj * 1e-9,
        "mac_column_reads": cnt.mac_cols * bits_col * e.col_pj_per_bit * 1e-12,
        "mac_compute": cnt.mac_cols * cfg.macs_per_col * e.mac_pj * 1e-12,
        "link_io": io_bursts * bits_col * e.io_pj_per_bit * 1e-12,
        "background": cfg.channels * e.background_w_per_channel * t_s,
        "asic": e.asic_w * t_s,
    }


def roofline_step_s(m: GPTConfig, context: int, cfg: PimConfig) -> float:
    """The floor: every weight and KV byte read once at the machine's peak in-bank bandwidth."""
    d = m.d_model
    per_layer = 12 * d * d + 2 * context * d
    return (m.n_layers * per_layer + m.vocab * d) * cfg.elem_bytes / cfg.internal_Bps


def streaming_read_Bps(cfg: PimConfig, rows_per_bank: int = 8) -> float:
    """Achieved bandwidth of an ordinary (non-PIM) streaming read: every channel reads whole rows, bank after bank,
    each channel's controller opening the next bank's row while the current one streams, all channels in parallel.
    With enough rows this approaches channels x the bus rate (one 32 B burst per tCCD per channel)."""
    mach = PimMachine(cfg)
    env, C = mach.env, cfg
    total = 0

    def channel(ch: Channel):
        nonlocal total
        n = C.cols_per_row
        for r in range(rows_per_bank * C.banks):
            b = r % C.banks
            ready = ch.activate((b,), False, max(env.now, ch.bus_free - C.timing.tRCD - C.timing.tCL))
            end = ch.issue("RD", (b,), ready, n=n)
            ch.precharge((b,), None)
            total += n * C.col_bytes
            yield env.timeout(max(0.0, end - n * C.timing.tCCD - env.now))  # next bank opens during this burst
        yield env.timeout(max(0.0, ch.bus_free - env.now))

    for ch in mach.channels:
        env.process(channel(ch))
    env.run()
    return total / (env.now * 1e-9)
