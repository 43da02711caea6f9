"""The tiered KV cache: recent pages in device memory (HBM, flash_decode's paged layout), older pages in (pinned)
host DRAM, the oldest in an SSD file; each tier attends where its data lives and the partials merge by LSE.

Per layer, in token order:   [ SSD segments ... | DRAM pages (ring) ... | device pages (ring), last one partial ]
Pages move down as the context grows: a full device page goes to DRAM when the device ring needs a slot; when DRAM
is full its oldest `seg_pages` pages go to the SSD file in one aligned write. Budgets are for the whole model and
split evenly over the layers.

Tier modes ('near' | 'move'): 'near' computes the tier's partial where its data is (DRAM: the CPU's threads, SSD:
the worker process); 'move' brings the data to the compute device first (DRAM: a pinned copy; SSD: read by this
process) as FlexGen does. `ioaware.iomodel.kv_tiers.choose_modes` picks them from probed rates.
SparF on the DRAM tier (approximate, `spec.sparf_tier="dram"`): dram_sparf.py; only the chosen pages move.
On CUDA the DRAM tier's device work is queued on its own streams (copies: 'copy'; zero-copy SparF: 'side') before
the device tier's kernel, so they overlap; timed runs go tier by tier.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ...errors import UnsupportedError
from ...files import remove_orphans
from ...kernels import flash_decode
from ...units import human_bytes
from .partial import lse_merge, partial_attention
from .sparf import SparFConfig, sparf_from_file
from .ssd import KVFile
from .worker import TierWorker

PAGE = 16


@dataclass
class KVTierSpec:
    hbm_bytes: float
    dram_bytes: float
    ssd_path: str | None = None
    page: int = PAGE
    seg_pages: int = 16  # pages per SSD segment (one aligned write)
    modes: dict = field(default_factory=lambda: {"dram": "near", "ssd": "near"})
    sparf: SparFConfig | None = None
    worker_threads: int = 1
    # which tier SparF reads ("ssd", "dram", "both"); "dram"/"both" keep the DRAM tier's K channel-major too (on top
    # of dram=, half the tier's bytes again) from the start, so SparF can be switched on later
    sparf_tier: str = "ssd"
    # DRAM SparF on CUDA: "copy" (host selects, pinned copy), "uva" (zero-copy, fused kernels) or "uva-gather"
    sparf_transport: str = "copy"

    def sparf_on(self, tier: str) -> bool:
        return self.sparf is not None and self.sparf_tier in (tier, "both")

    def describe(self) -> str:
        from ...units import human_bytes

        s = f"hbm={human_bytes(self.hbm_bytes)}, dram={human_bytes(self.dram_bytes)}"
        return s + (f", ssd={self.ssd_path}" if self.ssd_path else "")


def parse_kv_budget(text: str) -> KVTierSpec:
    """'hbm=2GB,dram=8GB[,ssd=PATH]' -> KVTierSpec. ValueError (one line) for anything else."""
    from ...units import parse_bytes

    parts: dict[str, str] = {}
    for item in str(text).split(","):
        key, eq, val = item.partition("=")
        key = key.strip().lower()
        if not eq or not val.strip():
            raise ValueError(f"--kv-budget {text!r}: {item!r} is not KEY=VALUE (write hbm=2GB,dram=8GB[,ssd=PATH])")
        if key not in ("hbm", "dram", "ssd"):
            raise ValueError(f"--kv-budget {text!r}: unknown tier {key!r} (tiers: hbm, dram, ssd)")
        if key in parts:
            raise ValueError(f"--kv-budget {text!r}: tier {key!r} given twice")
        parts[key] = val.strip()
    if "hbm" not in parts or "dram" not in parts:
        raise ValueError(f"--kv-budget {text!r}: give both hbm= and dram= (e.g. hbm=2GB,dram=8GB)")
    sizes = {}
    for k in ("hbm", "dram"):
        try:
            sizes[k] = parse_bytes(parts[k])
        except ValueError as e:
            raise ValueError(f"--kv-budget {k}=: {e}") from None
    if sizes["hbm"] <= 0:
        raise ValueError(f"--kv-budget hbm={parts['hbm']}: the device tier needs a positive budget")
    if sizes["dram"] < 0:
        raise ValueError(f"--kv-budget dram={parts['dram']}: a budget cannot be negative")
    return KVTierSpec(sizes["hbm"], sizes["dram"], parts.get("ssd"))


class KVTiers:
    """What the layers share: budgets in pages, the SSD file and its worker, counters for reports."""

    def __init__(self, spec: KVTierSpec, n_layers: int, n_kv_heads: int, head_dim: int, dtype, device):
        self.spec, self.n_layers, self.Hkv, self.D = spec, n_layers, n_kv_heads, head_dim
        self.dtype, self.device = dtype, torch.device(device)
        self.esize = torch.empty(0, dtype=dtype).element_size()
        self.file: KVFile | None = None
        self.worker: TierWorker | None = None
        self.layers: list[LayerKV] = []
        self.batch = 0
        self.q_per_kv = 1  # query heads per KV head (install_kv_tiers sets it; the probes use it)
        self.timed = False  # on CUDA: synchronise after each tier so per-tier times are real (costs overlap)
        self.stats = zero_stats()
        self.tick = 0.0  # timed runs: the last sub-step's end (LayerKV._tick; CPU)
        self.marks: list = []  # timed runs on CUDA: (part, event) in order (LayerKV._tick)
        self.sparf_info = None  # a dict to get each DRAM SparF call's pages (tests, quality checks)
        self.uva_consts: dict = {}  # dram_sparf.device_select's q-independent offsets, per tier size
        self._streams: dict = {}

    def stream(self, name: str, device: torch.device):
        """A CUDA stream of this cache's own ('copy': host-to-device copies; 'side': the DRAM tier's zero-copy
        work), made on first use."""
        if name not in self._streams:
            self._streams[name] = torch.cuda.Stream(device)
        return self._streams[name]

    def page_bytes(self, batch: int) -> int:
        return 2 * batch * self.spec.page * self.Hkv * self.D * self.esize  # K and V

    def pages_for(self, batch: int) -> tuple[int, int]:
        """Pages per layer the budgets hold in the device tier and in DRAM."""
        per_layer = self.n_layers * self.page_bytes(batch)
        return int(self.spec.hbm_bytes // per_layer), int(self.spec.dram_bytes // per_layer)

    def setup(self, batch: int, seq_len: int) -> list[LayerKV]:
        """(Re)start empty for `batch` rows of up to `seq_len` tokens; the budgets must hold them (or ssd= given)."""
        self.close()
        s = self.spec
        hbm_pages, dram_pages = self.check(batch, seq_len)
        self.batch = batch
        self.hbm_pages, self.dram_pages = hbm_pages, dram_pages
        if s.ssd_path:
            p = Path(s.ssd_path)
            path = p / f"kvcache-{id(self):x}.iokv" if p.is_dir() or not p.suffix else p
            remove_orphans(path.parent, "*.iokv.tmp-*")  # KV files of killed runs (never sealed, never trusted)
            self.file = KVFile(path, batch, self.Hkv, self.D, self.dtype)
            self.worker = TierWorker(self.file.path, s.worker_threads)  # started now: modes may change later
        self.layers = [LayerKV(self, i) for i in range(self.n_layers)]
        self.stats = zero_stats()
        return self.layers

    def check(self, batch: int, seq_len: int) -> tuple[int, int]:
        """The budgets' pages per layer (device, DRAM), or a one-line ValueError if they cannot hold the run."""
        s, per_layer = self.spec, self.n_layers * self.page_bytes(batch)
        hbm_pages, dram_pages = self.pages_for(batch)
        if hbm_pages < 1:
            raise ValueError(f"--kv-budget hbm={human_bytes(s.hbm_bytes)} is under one {s.page}-token page per "
                             f"layer ({human_bytes(per_layer)} for {self.n_layers} layers); raise hbm=")
        if s.ssd_path and dram_pages < s.seg_pages:
            raise ValueError(f"--kv-budget dram= holds {dram_pages} pages per layer, fewer than one SSD segment "
                             f"({s.seg_pages} pages, {s.seg_pages * per_layer} B); raise dram=")
        need = -(-seq_len // s.page)
        if not s.ssd_path and hbm_pages + dram_pages < need:
            raise ValueError(f"the KV of {seq_len} tokens needs {need * per_layer / 1e9:.3g} GB; --kv-budget "
                             f"({s.describe()}) holds {(hbm_pages + dram_pages) * per_layer / 1e9:.3g} GB: add "
                             "ssd=PATH or raise a budget")
        return hbm_pages, dram_pages

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()
            self.worker = None
        if self.file is not None:
            self.file.close()
            self.file = None

    def meta(self) -> dict:
        return {"batch": self.batch, "n_kv_heads": self.Hkv, "head_dim": self.D, "dtype": self.dtype}

    def summary(self) -> dict:
        """What the run moved and where the time went, for reports (--json)."""
        st = self.stats
        return {"budgets": {"hbm": self.spec.hbm_bytes, "dram": self.spec.dram_bytes, "ssd": self.spec.ssd_path},
                "pages_per_layer": {"hbm": getattr(self, "hbm_pages", 0), "dram": getattr(self, "dram_pages", 0)},
                "modes": dict(self.spec.modes), "sparf": self.spec.sparf.__dict__ if self.spec.sparf else None,
                "tokens_per_tier_per_layer": self.tokens_per_tier(), "attend_s": dict(st["s"]),
                "worker_s": st["worker_s"], "bytes_attended": dict(st["bytes"]),
                "ssd_bytes_written": st["ssd_bytes_written"], "pages_to_dram": st["pages_to_dram"],
                "segments_to_ssd": st["segments_to_ssd"]}

    def tokens_per_tier(self) -> dict:
        L = self.layers[0] if self.layers else None
        if L is None:
            return {"hbm": 0, "dram": 0, "ssd": 0}
        return {"hbm": L.hbm_tokens(), "dram": L.dram_n * self.spec.page, "ssd": L.ssd_tokens}


def zero_stats() -> dict:
    return {"steps": 0, "s": {"hbm": 0.0, "dram": 0.0, "ssd": 0.0, "merge": 0.0, "dram_select": 0.0,
                              "dram_copy": 0.0, "dram_dev": 0.0},
            "bytes": {"hbm": 0, "dram": 0, "ssd": 0, "dram_sparf": 0}, "ssd_bytes_written": 0, "pages_to_dram": 0,
            "segments_to_ssd": 0, "worker_s": 0.0}


class LayerKV:
    """One layer's pages in the three tiers, and attention over them."""

    def __init__(self, tiers: KVTiers, layer: int):
        t = self.t = tiers
        B, P, Hkv, D = t.batch, t.spec.page, t.Hkv, t.D
        self.layer = layer
        nh = t.hbm_pages
        self.hk = torch.zeros(B * nh, P, Hkv, D, dtype=t.dtype, device=t.device)  # flash_decode's paged layout
        self.hv = torch.zeros_like(self.hk)
        self.h_slots: deque[int] = deque()  # device slots in token order; the last may be partial
        self.h_fill = 0  # tokens in the last slot
        self.h_free = list(range(nh))[::-1]
        self._table = None
        pin = t.device.type == "cuda"
        nd = max(t.dram_pages, 0)
        self.dk = torch.zeros(B, nd * P, Hkv, D, dtype=t.dtype, pin_memory=pin)  # a ring of DRAM pages
        self.dv = torch.zeros(self.dk.shape, dtype=t.dtype, pin_memory=pin)
        self.dram_head, self.dram_n = 0, 0
        self.dkc = None  # the DRAM ring's K channel-major (B, Hkv, D, ring tokens), for SparF on this tier
        if t.spec.sparf_tier in ("dram", "both"):
            self.dkc = torch.zeros(B, Hkv, D, nd * P, dtype=t.dtype, pin_memory=pin)
        self.segs = []  # this layer's SSD segments, oldest first
        self.ssd_tokens = 0
        self.v_sum = torch.zeros(B, Hkv, D, dtype=torch.float64)  # Σ V over the SSD tier, for SparF's v̄

    # -------------------------------------------------------------- bookkeeping
    def hbm_tokens(self) -> int:
        return 0 if not self.h_slots else (len(self.h_slots) - 1) * self.t.spec.page + self.h_fill

    def tokens(self) -> int:
        return self.ssd_tokens + self.dram_n * self.t.spec.page + self.hbm_tokens()

    def _rows(self, slot: int) -> torch.Tensor:
        return torch.arange(self.t.batch, device=self.t.device) * self.t.hbm_pages + slot  # (B,) pool pages

    def _evict_hbm_page(self) -> None:
        """The oldest (full) device page moves to DRAM; DRAM overflow moves a segment to the SSD file first."""
        slot = self.h_slots.popleft()
        rows = self._rows(slot)
        k, v = self.hk[rows], self.hv[rows]  # (B, P, Hkv, D)
        self._dram_push(k, v)
        self.h_free.append(slot)
        self._table = None
        self.t.stats["pages_to_dram"] += 1

    def _dram_push(self, k: torch.Tensor, v: torch.Tensor) -> None:
        t, P = self.t, self.t.spec.page
        if t.dram_pages == 0 or self.dram_n == t.dram_pages:
            if t.file is None:
                raise ValueError(f"layer {self.layer}: the KV of {self.tokens() + 1}+ tokens exceeds --kv-budget "
                                 f"({t.spec.describe()}); add ssd=PATH or raise a budget")
            if t.dram_pages == 0:
                raise ValueError("the SSD tier needs DRAM pages to stage its segments (raise dram=)")
            self._dram_to_ssd(t.spec.seg_pages)
        slot = (self.dram_head + self.dram_n) % t.dram_pages
        self.dk[:, slot * P:(slot + 1) * P].copy_(k)
        self.dv[:, slot * P:(slot + 1) * P].copy_(v)
        if self.dkc is not None:
            self.dkc[..., slot * P:(slot + 1) * P].copy_(k.permute(0, 2, 3, 1))
        self.dram_n += 1

    def _dram_to_ssd(self, n: int) -> None:
        t, P = self.t, self.t.spec.page
        slots = [(self.dram_head + i) % t.dram_pages for i in range(n)]
        idx = torch.cat([torch.arange(s * P, (s + 1) * P) for s in slots])
        k, v = self.dk[:, idx], self.dv[:, idx]  # (B, n*P, Hkv, D), oldest first
        seg = t.file.append(self.layer, k, v)
        self.segs.append(seg)
        self.ssd_tokens += n * P
        self.v_sum += v.double().sum(dim=1)
        self.dram_head = (self.dram_head + n) % t.dram_pages
        self.dram_n -= n
        t.stats["ssd_bytes_written"] += seg.nbytes(t.batch, t.Hkv, t.D, t.esize)
        t.stats["segments_to_ssd"] += 1

    def push(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Append k, v (B, T, Hkv, D) after the cached tokens, evicting pages down as the device ring fills."""
        P, T, i = self.t.spec.page, k.shape[1], 0
        while i < T:
            if not self.h_slots or self.h_fill == P:
                if not self.h_free:
                    self._evict_hbm_page()
                self.h_slots.append(self.h_free.pop())
                self.h_fill = 0
                self._table = None
            n = min(P - self.h_fill, T - i)
            rows = self._rows(self.h_slots[-1])
            self.hk[rows, self.h_fill:self.h_fill + n] = k[:, i:i + n].to(self.hk.dtype)
            self.hv[rows, self.h_fill:self.h_fill + n] = v[:, i:i + n].to(self.hv.dtype)
            self.h_fill += n
            i += n

    def _room_for(self, T: int) -> bool:
        """Make room for T tokens in the device ring by evicting full pages; False if that cannot be done."""
        P = self.t.spec.page
        while True:
            tail_room = (P - self.h_fill) if self.h_slots else 0
            if tail_room + len(self.h_free) * P >= T:
                return True
            full = len(self.h_slots) - (1 if self.h_fill < P else 0)
            if full <= 0:
                return False
            self._evict_hbm_page()

    def table(self) -> torch.Tensor:
        if self._table is None:
            order = list(self.h_slots) + self.h_free[::-1]  # used pages in token order, then room to append
            nh = self.t.hbm_pages
            self._table = (torch.arange(self.t.batch)[:, None] * nh + torch.tensor(order)[None, :]).to(
                torch.int32).to(self.t.device)
        return self._table

    # -------------------------------------------------------------- attention
    def dram_views(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The occupied DRAM ring as at most two contiguous runs (order does not matter to softmax)."""
        t, P = self.t, self.t.spec.page
        if self.dram_n == 0:
            return []
        a, b = self.dram_head, self.dram_head + self.dram_n
        if b <= t.dram_pages:
            return [(self.dk[:, a * P:b * P], self.dv[:, a * P:b * P])]
        b -= t.dram_pages
        return [(self.dk[:, a * P:], self.dv[:, a * P:]), (self.dk[:, :b * P], self.dv[:, :b * P])]

    def _dram_move(self, q: torch.Tensor, scale: float, timed: bool):
        """'move': the pages copied to the compute device (on a CUDA run, on the copy stream, issued before the
        device tier's kernel so the copy engine works while the SMs attend), then the device's kernel. On a
        CPU-only run the copy is a memcpy into fresh memory, what moving costs there."""
        views = self.dram_views()
        if not views:
            return lambda: []
        if not q.is_cuda or timed:
            def run():
                moved = [(to_device(k, q.device), to_device(v, q.device)) for k, v in views]
                self._tick("dram_copy", q)
                out = [device_partial(q, k, v, scale) for k, v in moved]
                self._tick("dram_dev", q)
                return out
            return run
        cs = self.t.stream("copy", q.device)  # no wait: the pages were written synchronously, q is not needed
        with torch.cuda.stream(cs):
            moved = [(to_device(k, q.device), to_device(v, q.device)) for k, v in views]

        def finish():
            main = torch.cuda.current_stream(q.device)
            main.wait_stream(cs)
            for k, v in moved:  # allocated on the copy stream, read on this one
                k.record_stream(main), v.record_stream(main)
            return [device_partial(q, k, v, scale) for k, v in moved]
        return finish

    def _dram_sparf(self, q: torch.Tensor, q_cpu, scale: float, timed: bool):
        """SparF on this tier (dram_sparf.py): only the chosen pages reach the device. Returns a thunk giving
        [(out, lse)]; on CUDA (untimed) the device-side work is already queued on a side stream when it returns."""
        from ...kernels._dispatch import interpreting
        from . import dram_sparf as ds

        t, cfg = self.t, self.t.spec.sparf
        info = t.sparf_info
        if t.spec.sparf_transport.startswith("uva") and (q.is_cuda or interpreting()):
            fused = t.spec.sparf_transport in ("uva", "uva-serial") and ds.fused_ok(q, t.Hkv)

            def work():
                if fused:  # the kernels read the pinned pool themselves (uva_sparf_kernel.py)
                    pages, nb = ds.fused_select(cfg, self, q, scale, info)
                    self._tick("dram_select", q)
                    o = ds.fused_attend(self, q, pages, scale)
                else:  # "uva-gather": gathers into device buffers, torch selects, flash_decode attends
                    k, v, pages, nb = ds.device_select(cfg, self, q, scale, info)
                    self._tick("dram_select", q)
                    o = ds.attend_selected(q, k, v, scale)
                self._tick("dram_dev", q)
                t.stats["bytes"]["dram_sparf"] += nb
                return [o]
            # "uva-serial" queues the same kernels on the compute stream (no side stream): whether the side stream's
            # overlap pays, or its zero-copy kernels hold SMs the device tier's attention waits for, is measured
            if not q.is_cuda or timed or t.spec.sparf_transport == "uva-serial":
                return work
            side = t.stream("side", q.device)
            side.wait_stream(torch.cuda.current_stream(q.device))
            with torch.cuda.stream(side):
                res = work()
            q.record_stream(side)  # made on the compute stream, read on the side one: not reused before that

            def join():
                main = torch.cuda.current_stream(q.device)
                main.wait_stream(side)
                for x in res[0]:  # made on the side stream, read on this one
                    x.record_stream(main)
                return res
            return join

        def host():  # transport "copy" (and every CPU-only run): select and gather on the host, then one copy
            ks, vs, pages, nb = ds.host_select(cfg, self, q_cpu, scale, info)
            self._tick("dram_select", q)
            t.stats["bytes"]["dram_sparf"] += nb
            if not q.is_cuda:
                o = ds.attend_selected(q_cpu, ks, vs, scale)
                self._tick("dram_dev", q)
                return [o]
            if timed:
                k, v = ks.to(q.device, non_blocking=True), vs.to(q.device, non_blocking=True)
                self._tick("dram_copy", q)
            else:
                cs, main = t.stream("copy", q.device), torch.cuda.current_stream(q.device)
                with torch.cuda.stream(cs):
                    k, v = ks.to(q.device, non_blocking=True), vs.to(q.device, non_blocking=True)
                main.wait_stream(cs)
                k.record_stream(main), v.record_stream(main)
            o = ds.attend_selected(q, k, v, scale)
            self._tick("dram_dev", q)
            return [o]
        return host

    def _tick(self, name: str, q: torch.Tensor) -> None:
        """In a timed run, end part `name` of the DRAM tier's work: on CUDA an event on the stream (no sync, so the
        host's launches still overlap the device's work, as in an untimed run; booked by _book_ticks), else the
        host's clock."""
        t = self.t
        if not t.timed:
            return
        if q.is_cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            t.marks.append((name, ev))
            return
        now = time.perf_counter()
        t.stats["s"][name] += now - t.tick
        t.tick = now

    def _book_ticks(self) -> None:
        """After the tier's sync: the device time between consecutive events, per part."""
        t = self.t
        for (_, a), (name, b) in zip(t.marks, t.marks[1:], strict=False):
            t.stats["s"][name] += a.elapsed_time(b) / 1e3
        t.marks = []

    def _ssd_local(self, q: torch.Tensor, q_cpu: torch.Tensor, scale: float):
        """'move' for the SSD tier: this process reads the file (what FlexGen does) and computes on the device."""
        import os

        from .ssd import read_segment

        t = self.t
        fd = os.open(t.file.path, os.O_RDONLY)
        try:
            if t.spec.sparf_on("ssd"):  # SparF's reads are the point; its small compute stays on the host
                return sparf_from_file(fd, self.segs, t.meta(), q_cpu, scale, self._v_mean(), t.spec.sparf)
            ks, vs = zip(*(read_segment(fd, s, t.batch, t.Hkv, t.D, t.dtype) for s in self.segs), strict=True)
            k = to_device(torch.cat(ks, 2).transpose(1, 2), q.device)  # (B, L, Hkv, D)
            v = to_device(torch.cat(vs, 2).transpose(1, 2), q.device)
            o, lse = device_partial(q, k, v, scale)
            return o, lse, 2 * k.numel() * k.element_size()
        finally:
            os.close(fd)

    def _v_mean(self) -> torch.Tensor:
        return (self.v_sum / max(self.ssd_tokens, 1)).float()

    def _sparf_dram_ok(self) -> bool:
        """SparF on this tier this step: asked for, and the budget holds at least one page of a non-empty tier
        (a young tier below that is attended exactly: its bytes are few)."""
        t = self.t
        if not (t.spec.sparf_on("dram") and self.dram_n > 0):
            return False
        from .dram_sparf import check_config

        check_config(t.spec.sparf, t.spec.sparf_transport)
        if self.dkc is None:
            raise UnsupportedError("SparF on the DRAM tier needs its channel-major K: set the spec's sparf_tier to "
                                   "'dram' or 'both' before setup_cache")
        try:
            t.spec.sparf.n_pages(self.dram_n * t.spec.page, t.D)
        except UnsupportedError:
            return False
        return True

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None) -> torch.Tensor:
        """q (B, T, Hq, D), new k/v (B, T, Hkv, D) at the next positions -> attention output (B, T, Hq, D) over
        every cached token and the new ones (causal among the new), in q's dtype. Appends k/v."""
        t, st = self.t, self.t.stats
        T = q.shape[1]
        scale = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
        timed = q.is_cuda and t.timed
        sync = (lambda: torch.cuda.synchronize(q.device)) if timed else (lambda: None)
        fast = T <= 16 and self._room_for(T)  # flash_decode appends in place into the paged ring
        sparf = self._sparf_dram_ok()
        dram_mode = "sparf" if sparf else (t.spec.modes.get("dram", "near") if self.dram_n else "none")
        host_sparf = sparf and not (t.spec.sparf_transport.startswith("uva") and q.is_cuda)
        need_cpu = dram_mode == "near" or host_sparf or bool(self.segs)
        q_cpu = q.detach().float().cpu() if need_cpu else None  # a GPU step's one sync
        ssd_near = bool(self.segs) and t.spec.modes.get("ssd", "near") == "near"
        if ssd_near:  # the worker reads and computes while this process does the rest
            sp = t.spec.sparf if t.spec.sparf_on("ssd") else None
            t.worker.submit(self.segs, t.meta(), q_cpu, scale, sp, self._v_mean() if sp else None)
        # the DRAM tier's device work that needs nothing from the device tier is queued first (copy stream / side
        # stream on CUDA), so it runs beside the device tier's kernel; timed runs go tier by tier instead
        dram = (self._dram_sparf(q, q_cpu, scale, timed) if sparf else
                self._dram_move(q, scale, timed) if dram_mode == "move" else None)
        parts = []
        t0 = time.perf_counter()
        if fast:  # launched before the host's DRAM work: on a GPU it runs while the CPU computes
            L = self.hbm_tokens()
            lens = torch.full((t.batch,), L, dtype=torch.int32, device=q.device)
            o, lse = flash_decode(q, self.hk, self.hv, lens, self.table(), k_new=k, v_new=v, softmax_scale=scale,
                                  return_lse=True)
            self._advance(T)
            parts.append((o, lse))
        else:
            hk, hv = self._hbm_contiguous()
            parts.append(partial_attention(q, torch.cat([hk, k], 1), torch.cat([hv, v], 1), scale, causal=True))
        sync()
        t1 = t.tick = time.perf_counter()
        if timed:
            self._tick("start", q)
        if dram is not None:
            got = dram()
        elif dram_mode == "near":  # the CPU's threads, next to the data
            got = [partial_attention(q_cpu, kk, vv, scale) for kk, vv in self.dram_views()]
        else:
            got = []
        parts += [(o.to(q.device, non_blocking=True), lse.to(q.device, non_blocking=True)) for o, lse in got]
        sync()
        t2 = time.perf_counter()
        if timed:
            self._book_ticks()
        if self.segs:
            if ssd_near:
                o, lse, nb, ws = t.worker.result()
                st["worker_s"] += ws
            else:
                o, lse, nb = self._ssd_local(q, q_cpu, scale)
            parts.append((o.to(q.device), lse.to(q.device)))
            st["bytes"]["ssd"] += nb
        t3 = time.perf_counter()
        out, _ = lse_merge(parts)
        if not fast:
            self.push(k, v)
        sync()
        t4 = time.perf_counter()
        if self.layer == 0:
            st["steps"] += 1
        for name, dt in (("hbm", t1 - t0), ("dram", t2 - t1), ("ssd", t3 - t2), ("merge", t4 - t3)):
            st["s"][name] += dt
        st["bytes"]["hbm"] += 2 * self.hbm_tokens() * t.batch * t.Hkv * t.D * t.esize
        if not sparf:
            st["bytes"]["dram"] += 2 * self.dram_n * t.spec.page * t.batch * t.Hkv * t.D * t.esize
        return out.to(q.dtype)

    def _advance(self, T: int) -> None:
        """Book the T tokens flash_decode appended into the ring (tail first, then fresh slots in table order)."""
        P = self.t.spec.page
        while T:
            if not self.h_slots or self.h_fill == P:
                self.h_slots.append(self.h_free.pop())
                self.h_fill = 0
            n = min(P - self.h_fill, T)
            self.h_fill += n
            T -= n

    def _hbm_contiguous(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The device tier's tokens in order, (B, L, Hkv, D) (a gather; the prefill path only)."""
        if not self.h_slots:
            e = self.hk.new_zeros(self.t.batch, 0, self.t.Hkv, self.t.D)
            return e, e
        B = self.t.batch
        pages = torch.stack([self._rows(s) for s in self.h_slots], 1)  # (B, n)
        L = self.hbm_tokens()
        k = self.hk[pages].reshape(B, -1, self.t.Hkv, self.t.D)[:, :L]
        v = self.hv[pages].reshape(B, -1, self.t.Hkv, self.t.D)[:, :L]
        return k, v


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device.type == "cpu":
        return x.contiguous().clone() if x.is_contiguous() else x.contiguous()
    return x.to(device, non_blocking=True).contiguous()


def device_partial(q, k, v, scale):
    """Partial over a contiguous (B, L, Hkv, D) cache on the compute device: flash_decode (no new tokens, not
    causal: every key is older than the queries) when it takes the shape, else vectorised torch."""
    if q.is_cuda and q.shape[1] <= 16:
        lens = torch.full((q.shape[0],), k.shape[1], dtype=torch.int32, device=q.device)
        return flash_decode(q, k, v, lens, softmax_scale=scale, causal=False, return_lse=True)
    return partial_attention(q, k, v, scale)
