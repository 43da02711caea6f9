"""A command-level model of one GDDR6-PIM channel: banks with open rows, an ACT window, a shared data bus.

`Channel.earliest(cmd, ...)` is the first time a command may issue under the timing rules; `Channel.issue(...)`
issues it there (or later) and returns when its effect ends. Commands:

    ACT    open a row in each named bank (per-bank: tRRD between ACTs and at most four per tFAW; ACT_AB, the
           all-bank form of AiM, is one command and is exempt from tRRD/tFAW)
    MAC    n all-bank MAC columns: every named bank reads one 32 B column per tMAC into its MAC unit, no bus use
    RD/WR  n bursts between one bank's open row and the bus (tRCD after ACT; data tCL / tCWL after the command)
    RDMAC  n bursts of latched MAC results to the ASIC; WRGB n bursts from the ASIC into the global buffer (bus only)
    PRE    close each named bank: tRAS after ACT, tRTP after its last read/MAC column, tWR after its write data

`check_trace` re-checks a recorded trace against the same rules, written independently (pairwise over the trace),
so a test can show the controller never breaks one. Refresh and read/write bus turnaround are not modelled.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .timing import DramTiming

NEG = -1e18  # "long ago": no constraint from a command that never happened


@dataclass(frozen=True)
class Command:
    t: float
    kind: str
    banks: tuple[int, ...] = ()
    n: int = 1  # columns (MAC) or bursts (RD/WR/RDMAC/WRGB) issued back to back from t
    all_bank: bool = False  # ACT_AB / PRE_AB: one command for all named banks


@dataclass
class _Bank:
    open: bool = False
    t_act: float = NEG
    t_pre: float = NEG
    t_col: float = NEG  # last read or MAC column issued
    t_wr_end: float = NEG  # end of the last write data


@dataclass
class Counters:
    acts: int = 0  # bank activations (an ACT_AB of 16 banks counts 16)
    act_cmds: int = 0
    mac_cols: int = 0  # bank-column reads into MAC units (an all-bank MAC column over 16 banks counts 16)
    rd_bursts: int = 0
    wr_bursts: int = 0
    rdmac_bursts: int = 0
    wrgb_bursts: int = 0

    def add(self, other: Counters) -> None:
        for k in vars(self):
            setattr(self, k, getattr(self, k) + getattr(other, k))

    def scaled(self, k: int) -> Counters:
        return Counters(**{n: v * k for n, v in vars(self).items()})


@dataclass
class Channel:
    timing: DramTiming
    n_banks: int
    record: bool = False
    banks: list[_Bank] = field(init=False)
    acts: list[float] = field(init=False)  # issue times of per-bank ACTs, for tRRD and tFAW
    bus_free: float = field(init=False, default=NEG)
    mac_free: float = field(init=False, default=NEG)
    trace: list[Command] = field(init=False, default_factory=list)
    count: Counters = field(init=False, default_factory=Counters)

    def __post_init__(self):
        self.banks = [_Bank() for _ in range(self.n_banks)]
        self.acts = []

    # ------------------------------------------------------------------ timing rules
    def earliest(self, kind: str, banks: tuple[int, ...] = (), n: int = 1, all_bank: bool = False) -> float:
        t, bk = self.timing, [self.banks[b] for b in banks]
        if kind == "ACT":
            if not all_bank and len(banks) != 1:
                raise ValueError("per-bank ACTs address one bank each (all_bank=True is ACT_AB)")
            if any(b.open for b in bk):
                raise RuntimeError(f"ACT to an open bank in {banks}: precharge it first")
            e = max((b.t_pre + t.tRP for b in bk), default=NEG)
            if not all_bank:  # one ACT per bank, each under tRRD and the four-activation window
                e = max(e, (self.acts[-1] + t.tRRD) if self.acts else NEG)
                e = max(e, (self.acts[-4] + t.tFAW) if len(self.acts) >= 4 else NEG)
            return e
        if kind in ("MAC", "RD", "WR"):
            if not all(b.open for b in bk):
                raise RuntimeError(f"{kind} to a closed bank in {banks}: activate it first")
            e = max(b.t_act + t.tRCD for b in bk)
            if kind == "MAC":
                return max(e, self.mac_free)
            lat = t.tCL if kind == "RD" else t.tCWL
            return max(e, self.bus_free - lat)  # its data may not start before the bus is free
        if kind in ("RDMAC", "WRGB"):
            return self.bus_free - (t.tCL if kind == "RDMAC" else t.tCWL)
        if kind == "PRE":
            return max(max(b.t_act + t.tRAS, b.t_col + t.tRTP, b.t_wr_end + t.tWR) for b in bk)
        raise ValueError(f"unknown DRAM command {kind!r}")

    def issue(self, kind: str, banks: tuple[int, ...] = (), t: float | None = None, n: int = 1,
              all_bank: bool = False) -> float:
        """Issue at max(t, earliest); return when its effect ends (data off the bus, last MAC column done)."""
        e = self.earliest(kind, banks, n, all_bank)
        t0 = e if t is None else max(t, e)
        tm = self.timing
        if self.record:
            self.trace.append(Command(t0, kind, tuple(banks), n, all_bank))
        c = self.count
        if kind == "ACT":
            for b in banks:
                self.banks[b].open, self.banks[b].t_act = True, t0
            if not all_bank:
                self.acts.append(t0)
            c.acts += len(banks)
            c.act_cmds += 1 if all_bank else len(banks)
            return t0
        if kind == "MAC":
            end = t0 + n * tm.tMAC
            self.mac_free = end
            for b in banks:
                self.banks[b].t_col = end - tm.tMAC
            c.mac_cols += n * len(banks)
            return end
        if kind in ("RD", "WR", "RDMAC", "WRGB"):
            lat = tm.tCL if kind in ("RD", "RDMAC") else tm.tCWL
            end = t0 + lat + n * tm.tCCD
            self.bus_free = end
            for b in banks:
                if kind == "RD":
                    self.banks[b].t_col = t0 + (n - 1) * tm.tCCD
                else:
                    self.banks[b].t_wr_end = end
            setattr(c, kind.lower() + "_bursts", getattr(c, kind.lower() + "_bursts") + n)
            return end
        if kind == "PRE":
            for b in banks:
                self.banks[b].open, self.banks[b].t_pre = False, t0
            return t0
        raise ValueError(f"unknown DRAM command {kind!r}")

    # ------------------------------------------------------------------ composite operations
    def activate(self, banks: tuple[int, ...], all_bank: bool, t: float | None = None) -> float:
        """Open one row in each bank; returns when the last bank may take a column command (ACT + tRCD)."""
        if all_bank:
            return self.issue("ACT", banks, t, all_bank=True) + self.timing.tRCD
        last = NEG
        for b in banks:
            last = self.issue("ACT", (b,), t)
        return last + self.timing.tRCD

    def precharge(self, banks: tuple[int, ...], t: float | None = None) -> float:
        return self.issue("PRE", banks, t, all_bank=len(banks) > 1)

    @property
    def all_closed(self) -> bool:
        return not any(b.open for b in self.banks)


def check_trace(trace: list[Command], timing: DramTiming) -> list[str]:
    """Every timing rule the trace breaks, as readable lines (empty when it obeys them all). Independent of Channel:
    it walks each bank's command sequence and the channel-wide ACT and bus sequences on their own."""
    t, bad = timing, []
    eps = 1e-9
    per_bank: dict[int, list[Command]] = {}
    for c in trace:
        for b in c.banks:
            per_bank.setdefault(b, []).append(c)
    for b, cmds in per_bank.items():
        is_open, t_act, t_pre, t_col, t_wend = False, None, None, None, None
        for c in sorted(cmds, key=lambda c: c.t):
            if c.kind == "ACT":
                if is_open:
                    bad.append(f"bank {b}: ACT at {c.t} while open")
                if t_pre is not None and c.t < t_pre + t.tRP - eps:
                    bad.append(f"bank {b}: ACT at {c.t} < PRE {t_pre} + tRP")
                is_open, t_act, t_col, t_wend = True, c.t, None, None
            elif c.kind in ("MAC", "RD", "WR"):
                if not is_open:
                    bad.append(f"bank {b}: {c.kind} at {c.t} on a closed bank")
                elif c.t < t_act + t.tRCD - eps:
                    bad.append(f"bank {b}: {c.kind} at {c.t} < ACT {t_act} + tRCD")
                step = t.tMAC if c.kind == "MAC" else t.tCCD
                if c.kind == "WR":
                    t_wend = c.t + t.tCWL + c.n * t.tCCD
                else:
                    t_col = c.t + (c.n - 1) * step
            elif c.kind == "PRE":
                if t_act is not None and c.t < t_act + t.tRAS - eps:
                    bad.append(f"bank {b}: PRE at {c.t} < ACT {t_act} + tRAS")
                if t_col is not None and c.t < t_col + t.tRTP - eps:
                    bad.append(f"bank {b}: PRE at {c.t} < last column {t_col} + tRTP")
                if t_wend is not None and c.t < t_wend + t.tWR - eps:
                    bad.append(f"bank {b}: PRE at {c.t} < write end {t_wend} + tWR")
                is_open, t_pre = False, c.t
    acts = sorted(c.t for c in trace if c.kind == "ACT" and not c.all_bank)
    for i in range(1, len(acts)):
        if acts[i] < acts[i - 1] + t.tRRD - eps:
            bad.append(f"ACT at {acts[i]} < previous ACT {acts[i - 1]} + tRRD")
        if i >= 4 and acts[i] < acts[i - 4] + t.tFAW - eps:
            bad.append(f"fifth ACT at {acts[i]} inside the tFAW window opened at {acts[i - 4]}")
    spans = []
    for c in trace:
        if c.kind in ("RD", "RDMAC"):
            spans.append((c.t + t.tCL, c.t + t.tCL + c.n * t.tCCD))
        elif c.kind in ("WR", "WRGB"):
            spans.append((c.t + t.tCWL, c.t + t.tCWL + c.n * t.tCCD))
    spans.sort()
    for (_, a1), (b0, _) in zip(spans, spans[1:]):
        if b0 < a1 - eps:
            bad.append(f"data bus: burst at {b0} overlaps one ending at {a1}")
    macs = sorted((c.t, c.t + c.n * t.tMAC) for c in trace if c.kind == "MAC")
    for (_, a1), (b0, _) in zip(macs, macs[1:]):
        if b0 < a1 - eps:
            bad.append(f"MAC columns at {b0} overlap a MAC run ending at {a1}")
    return bad
