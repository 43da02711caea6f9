"""DRAM timing, PIM organisation and energy constants for the PIM-GPT model: data, each with its source.

Times are in nanoseconds. Array timings (tRCD, tRP, tRAS, tRRD, tFAW, tRTP, tWR) come from Ramulator 2.0's JEDEC-derived
presets and are rounded up to whole cycles of the 1 ns command clock of SK hynix's GDDR6 AiM, the DRAM-PIM design we
take for PIM-GPT's banks (16 banks per channel, a 16-lane BF16 MAC unit beside each bank, a 2 KB global buffer per
channel); the paper's retrievable text says only "DRAM-based PIM designs" (see `CONFIG_SOURCES["banks"]`). The
interface numbers (burst, column period) follow from the 16 Gb/s/pin x16 channel, not from Ramulator, whose GDDR6
burst length gives a rate far below GDDR6's (ramulator2 issue #121).

Every constant that is an assumption says so in its `source`, and `assumptions()` lists them for the report. PIM-GPT's
own configuration (its sections on the architecture and the evaluation setup) is in no text retrievable here: the
stored copies of the paper give the abstract and the opening of the introduction only (README.md, "Paper facts", lists
what they do state, with addresses). Where the paper is silent the constant comes from AiM, JEDEC or Ramulator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace

_RAMULATOR_GDDR6 = ("ramulator2 src/dram/impl/GDDR6.cpp preset GDDR6_2000_1350mV_double (tCK 0.570 ns): nRCDRD 26, "
                    "nRP 26, nRAS 53, nRRDS 5 (x16), nFAW 28 (x16), nRTP 4, nWR 26, nCL 24, nCWL 6; in ns rounded up "
                    "to the AiM 1 ns command clock")
_RAMULATOR_HBM2 = ("ramulator2 src/dram/impl/HBM2.cpp preset HBM2_2Gbps (tCK 1.0 ns): nRCDRD 7, nRP 7, nRAS 17, "
                   "nRRDS 2, nFAW 15, nRTPS 2, nWR 8, nCL 7, nCWL 2, nBL 4; ramulator marks these HBM2 timings "
                   "'TODO: find more sources', so this preset is a what-if, not a datasheet")
_AIM = ("SK hynix GDDR6-AiM (Lee et al., ISSCC 2022; Kwon et al., Hot Chips 2022): 16 Gb/s/pin x16 channels, "
        "16 banks per channel, a 16-multiplier BF16 MAC unit per bank at 1 GHz (1 TFLOPS per 2-channel chip), "
        "2 KB global buffer per channel")


@dataclass(frozen=True)
class DramTiming:
    """Command timing of one DRAM channel, in ns. `tCCD` is the column period on the shared data bus (one 32 B burst
    of a x16 channel at 16 Gb/s/pin = 1 ns); `tMAC` the column period of an all-bank MAC (each bank's unit takes one
    32 B column per tMAC)."""

    name: str
    tCK: float
    tRCD: float  # ACT -> first column command of that bank
    tRP: float  # PRE -> next ACT of that bank
    tRAS: float  # ACT -> PRE of that bank
    tRRD: float  # ACT -> ACT, different banks of one channel
    tFAW: float  # at most four ACTs in any window of this length (one channel)
    tRTP: float  # last read/MAC column -> PRE
    tWR: float  # end of write data -> PRE
    tCL: float  # read command -> first data on the bus
    tCWL: float  # write command -> first data on the bus
    tCCD: float  # one burst on the data bus
    tMAC: float  # one all-bank MAC column
    source: str

    def cycles(self, t_ns: float) -> int:
        return math.ceil(t_ns / self.tCK - 1e-9)


def _ns(n_cycles: int, tck_ps: int) -> float:
    """JEDEC rounding to the 1 ns PIM command clock: n cycles of tck_ps picoseconds, rounded up to whole ns."""
    return float(math.ceil(n_cycles * tck_ps / 1000 - 1e-9))


TIMINGS: dict[str, DramTiming] = {
    "gddr6": DramTiming(
        name="GDDR6-AiM 16 Gb/s", tCK=1.0, tRCD=_ns(26, 570), tRP=_ns(26, 570), tRAS=_ns(53, 570),
        tRRD=_ns(5, 570), tFAW=_ns(28, 570), tRTP=_ns(4, 570), tWR=_ns(26, 570), tCL=_ns(24, 570),
        tCWL=_ns(6, 570), tCCD=1.0, tMAC=1.0,
        source=_RAMULATOR_GDDR6 + "; tCCD = 32 B / (16 pins x 16 Gb/s); tMAC = 1 ns: " + _AIM),
    "hbm2": DramTiming(
        name="HBM2 2 Gb/s (what-if)", tCK=1.0, tRCD=7.0, tRP=7.0, tRAS=17.0, tRRD=2.0, tFAW=15.0, tRTP=2.0, tWR=8.0,
        tCL=7.0, tCWL=2.0, tCCD=1.0, tMAC=1.0, source=_RAMULATOR_HBM2 + "; the PIM organisation is kept"),
}


@dataclass(frozen=True)
class PimConfig:
    """The PIM-GPT machine: `channels` GDDR6-PIM channels, each with `banks` banks and a MAC unit per bank, and one
    ASIC (softmax, LayerNorm, GELU, residuals, partial sums, data movement) with a link to each channel."""

    channels: int = 8
    banks: int = 16
    row_bytes: int = 2048  # one DRAM row (page) of a bank
    col_bytes: int = 32  # one column access = one x16 BL16 burst = 16 BF16 values
    gb_bytes: int = 2048  # the channel's global buffer, which holds the input vector a MAC multiplies
    elem_bytes: int = 2  # BF16 weights, activations and KV cache
    act_mode: str = "all-bank"  # "all-bank": one ACT for 16 banks (AiM's), no tFAW; "per-bank": 16 ACTs, tRRD/tFAW
    asic_lanes: int = 32  # vector lanes of the ASIC
    asic_ghz: float = 1.0
    asic_latency_ns: float = 10.0  # pipeline fill of one ASIC vector op
    timing: DramTiming = TIMINGS["gddr6"]
    sources: dict[str, str] = field(default_factory=lambda: dict(CONFIG_SOURCES))

    @property
    def macs_per_col(self) -> int:
        return self.col_bytes // self.elem_bytes

    @property
    def cols_per_row(self) -> int:
        return self.row_bytes // self.col_bytes

    @property
    def gb_elems(self) -> int:
        return self.gb_bytes // self.elem_bytes

    @property
    def link_Bps(self) -> float:
        """ASIC <-> one channel: the channel's own x16 data bus, one burst per tCCD."""
        return self.col_bytes / self.timing.tCCD * 1e9

    @property
    def internal_Bps(self) -> float:
        """Peak in-bank MAC bandwidth of the whole machine: every bank reads one column per tMAC."""
        return self.channels * self.banks * self.col_bytes / self.timing.tMAC * 1e9

    def with_(self, **kw) -> PimConfig:
        if "timing" in kw and isinstance(kw["timing"], str):
            if kw["timing"] not in TIMINGS:
                raise ValueError(f"unknown DRAM timing {kw['timing']!r}; known: {', '.join(TIMINGS)}")
            kw["timing"] = TIMINGS[kw["timing"]]
        return replace(self, **kw)

    def validate(self) -> None:
        if self.channels < 1 or self.banks < 1:
            raise ValueError(f"channels and banks must be >= 1 (got {self.channels}, {self.banks})")
        if self.act_mode not in ("per-bank", "all-bank"):
            raise ValueError(f"act_mode must be 'per-bank' or 'all-bank', not {self.act_mode!r}")
        if self.row_bytes % self.col_bytes or self.gb_bytes % self.col_bytes:
            raise ValueError("row_bytes and gb_bytes must be whole numbers of columns (col_bytes)")


_SILENT = ("PIM-GPT's retrievable text (abstract, opening of the introduction; README 'Paper facts') does not give "
           "this")

CONFIG_SOURCES = {
    "channels": "ASSUMED 8 = 4 two-channel AiM chips: " + _SILENT + "; the paper says only that matrices are "
                "partitioned among DRAM channels and banks (v2 abstract)",
    "banks": "16 banks per GDDR6 channel (JEDEC JESD250; " + _AIM + "); that PIM-GPT's PIM DRAM is GDDR6 AiM-like is "
             "ASSUMED: its retrievable text says 'DRAM-based PIM designs' (v2 abstract) and a third-party summary "
             "(sciencestack.ai/paper/2310.09385, TL;DR) that it 'avoids expensive HBM integration'",
    "row_bytes": "2 KB page of a x16 GDDR6 channel (ramulator2 GDDR6_8Gb_x16: 1024 columns x 16 bits)",
    "col_bytes": "x16 x BL16 = 256 bits per column access; AiM's MAC consumes one such column per bank",
    "gb_bytes": "AiM's 2 KB global buffer per channel holds the input vector (1024 BF16)",
    "elem_bytes": "BF16, the AiM MAC format",
    "act_mode": "all-bank: one command opens the same row in all 16 banks, as AiM's all-bank activate does; ASSUMED "
                "exempt from tRRD/tFAW (AiM's power window for it was not retrieved). 'per-bank' (JEDEC: 16 ACTs "
                "under tRRD and tFAW) is the standard-DRAM what-if",
    "asic_lanes": "ASSUMED 32 lanes: " + _SILENT + " (the ASIC was synthesised, v2 abstract; its width is not stated)",
    "asic_ghz": "ASSUMED 1 GHz ASIC clock: " + _SILENT,
    "asic_latency_ns": "ASSUMED 10 ns pipeline fill per ASIC vector op: " + _SILENT,
}


@dataclass(frozen=True)
class EnergyModel:
    """Energy per event. PIM-GPT's energy model is in no retrievable text, so every number is an order-of-magnitude
    assumption for a GDDR6-class die; they are named here so the energy result can be traced (and re-run with
    others)."""

    act_nj: float = 1.5  # one ACT+PRE of one bank's 2 KB row
    col_pj_per_bit: float = 1.0  # one in-bank column read into the bank's MAC unit (no global I/O)
    mac_pj: float = 1.0  # one BF16 multiply-accumulate in DRAM-process logic
    io_pj_per_bit: float = 6.0  # a byte over the ASIC <-> channel link (both ends)
    background_w_per_channel: float = 0.75  # refresh, clocks and standby of one channel
    asic_w: float = 0.5  # the ASIC while it computes or moves data
    sources: dict[str, str] = field(default_factory=lambda: dict(ENERGY_SOURCES))

    def with_(self, **kw) -> EnergyModel:
        return replace(self, **kw)


ENERGY_SOURCES = {
    "act_nj": "ASSUMED 1.5 nJ per 2 KB row ACT+PRE: IDD0-style estimate for a 1.35 V GDDR6 bank",
    "col_pj_per_bit": "ASSUMED 1.0 pJ/bit: array + bank-local datapath, the part of a ~4-7 pJ/bit DRAM access that "
                      "stays when the global I/O is skipped",
    "mac_pj": "ASSUMED 1.0 pJ per BF16 MAC in a DRAM process (about 2x a logic-process MAC)",
    "io_pj_per_bit": "ASSUMED 6 pJ/bit for the off-chip GDDR6 interface (the commonly quoted 5.5-7.5 pJ/bit range)",
    "background_w_per_channel": "ASSUMED 0.75 W per channel: refresh, DLL/clock tree and standby",
    "asic_w": "ASSUMED 0.5 W: a small synthesised ASIC; " + _SILENT,
}


def assumptions(cfg: PimConfig, energy: EnergyModel) -> list[dict]:
    """Every constant the model uses, its value and where it comes from (ASSUMED ones say so)."""
    out = []
    for f in fields(cfg):
        if f.name in CONFIG_SOURCES:
            out.append({"name": f.name, "value": getattr(cfg, f.name), "source": CONFIG_SOURCES[f.name]})
    t = cfg.timing
    for f in fields(t):
        if f.name not in ("name", "source"):
            out.append({"name": f.name, "value": getattr(t, f.name), "source": t.source})
    for f in fields(energy):
        if f.name in ENERGY_SOURCES:
            out.append({"name": f.name, "value": getattr(energy, f.name), "source": ENERGY_SOURCES[f.name]})
    return out
