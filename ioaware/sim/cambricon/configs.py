"""Cambricon-LLM's machines as data: the flash chiplet (Table II), the NPU beside it, and Fig. 9's points.

Every constant is in `CONSTANTS` with its kind: "paper" (Table II / Section V of Yu et al., MICRO 2024,
arXiv:2409.15654, as summarised in shared/reference/offload.md), "assumed" (a stated choice where the paper's value was
not available to us, with the reason) or "fitted" (set by `fig9.fit_retry_probability` on Fig. 9's 21 points). The
README lists them and counts each kind.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

KiB = 1024
US = 1e-6


@dataclass(frozen=True)
class FlashConfig:
    """One flash chiplet: `channels` buses, each shared by `chips_per_channel` chips of `dies_per_chip` dies."""

    name: str
    channels: int
    chips_per_channel: int
    dies_per_chip: int = 2
    planes_per_die: int = 2
    cores_per_die: int = 1
    page_bytes: int = 16 * KiB
    tR: float = 30 * US  # array read (page -> page register), seconds
    channel_Bps: float = 1e9  # 1000 MT/s x 8-bit ONFI bus
    weight_bytes: int = 1  # INT8 weights (W8A8)

    @property
    def cores_per_channel(self) -> int:
        return self.chips_per_channel * self.dies_per_chip * self.cores_per_die

    @property
    def dies(self) -> int:
        return self.channels * self.chips_per_channel * self.dies_per_chip

    @property
    def cores(self) -> int:
        return self.channels * self.cores_per_channel

    @property
    def tile_bytes(self) -> int:
        """One read-compute request: one page per compute core, every core of every channel (H x W)."""
        return self.page_bytes * self.cores

    def with_(self, **kw) -> FlashConfig:
        return replace(self, **kw)


# Table II: channels 8/16/32, chips 2/4/8 per channel; every design 2 dies/chip, 2 planes and 1 core per die,
# 1000 MT/s 8-bit channels, 16 KB pages, tR = 30 us, INT8.
FLASH: dict[str, FlashConfig] = {
    "S": FlashConfig("S", channels=8, chips_per_channel=2),
    "M": FlashConfig("M", channels=16, chips_per_channel=4),
    "L": FlashConfig("L", channels=32, chips_per_channel=8),
}


@dataclass(frozen=True)
class NpuConfig:
    """The NPU: it reduces partial sums, runs its share of each GeMV from plain (sliced) reads, and all attention
    against the KV cache in its DRAM."""

    dram_Bps: float = 67.2e9
    peak_ops: float = 2e12  # INT8 ops/s (2 per MAC)
    context: int = 1000  # tokens in the KV cache while decoding
    kv_bytes: int = 1  # INT8 KV (W8A8)


NPU = NpuConfig()

# Fitted on Fig. 9 (fig9.fit_retry_probability: the mean |relative error| over the 21 points, closed form; it returns
# 1.927e-3). A tile request waits for its slowest die; a page whose first read fails ECC is read again (one more tR).
RETRY_PROBABILITY = 1.93e-3

# Read slicing: the granule in which a plain page transfer gives the bus back to a read-compute request.
SLICE_BYTES = 512


@dataclass(frozen=True)
class Constant:
    name: str
    value: str
    kind: str  # "paper" | "assumed" | "fitted"
    source: str


CONSTANTS: list[Constant] = [
    Constant("channels", "8 / 16 / 32", "paper", "Table II (S / M / L)"),
    Constant("chips_per_channel", "2 / 4 / 8", "paper", "Table II; with 2 dies/chip this gives the paper's tiles"),
    Constant("dies_per_chip", "2", "paper", "Table II"),
    Constant("planes_per_die", "2", "paper", "Table II; one plane serves read-compute, the other plain reads"),
    Constant("cores_per_die", "1", "paper", "Table II / Section IV (one core shared by the die's planes)"),
    Constant("page_bytes", "16 KiB", "paper", "Table II"),
    Constant("tR", "30 us", "paper", "Table II"),
    Constant("channel bandwidth", "1 GB/s", "paper", "Table II: 1000 MT/s x 8-bit ONFI"),
    Constant("weight / KV precision", "INT8", "paper", "Table II (W8A8)"),
    Constant("tile H = sqrt(cores_per_channel x page), W = channels x H", "-", "paper", "Section V"),
    Constant("t_rc = tR + W/(channels x bw)", "-", "paper", "Section V"),
    Constant("u = (H + W/channels)/(tR x bw), t_r = page/((1-u) x bw)", "-", "paper", "Section V"),
    Constant("context", "1000 tokens", "assumed",
             "the public reproduction (dengls24/IFC-cambricon-llm) infers ~1000 tokens; the paper's Fig. 9 text "
             "gives no length we could read"),
    Constant("NPU DRAM bandwidth", "67.2 GB/s", "assumed",
             "LPDDR5X-8400 x 64-bit, the DRAM of the paper's phone baseline (Snapdragon 8 Gen 2); the paper's own "
             "NPU DRAM figure was not available to us"),
    Constant("NPU peak", "2 TOPS INT8", "assumed",
             "never binding: the NPU's largest load is its plain-read share, <= 64 GOPS on L; tokens/s move "
             "< 0.7% at 0.5 TOPS and not at all at 8 TOPS"),
    Constant("read slice", "512 B", "assumed",
             "ONFI random data-out lets a transfer pause at any column; 512 B keeps a read-compute request's wait "
             "<= 0.5 us (1.7% of tR); tokens/s move <= 1.4% at 256 B and <= 6.1% at 2 KiB"),
    Constant("NPU read-ahead", "one GeMV", "assumed",
             "weights do not depend on the activations, so the NPU takes the next GeMV's plain share into a buffer "
             "while the bus would idle (end of a GeMV, attention); one GeMV (<= 29 MB on L) fits the NPU's DRAM"),
    Constant("unsliced queue depth", "2 pages per channel", "assumed",
             "ablation baseline only: without slicing the NPU double-buffers whole-page reads, first come first "
             "served; the paper's baseline was not described in what we read"),
    Constant("retry probability p", f"{RETRY_PROBABILITY:g}", "fitted",
             "per page read; a tile request ends with its slowest die, so a round costs tR x (1-(1-p)^dies) more "
             "on average. One constant for all 21 points; it is what makes S near-ideal and L ~30% below"),
]


def optimal_tile(cfg: FlashConfig) -> tuple[float, float]:
    """Section V: minimise W + channels*H subject to H*W = page*channels*cores_per_channel -> H = sqrt(cpc*page)."""
    H = math.sqrt(cfg.cores_per_channel * cfg.page_bytes)
    return H, cfg.channels * H


# Fig. 9 decode tokens/s, S / M / L (shared/reference/offload.md, from dengls24/IFC-cambricon-llm src/profiles.c)
FIG9: dict[str, tuple[float, float, float]] = {
    "opt-6.7b": (3.6, 11.0, 36.3),
    "opt-13b": (1.9, 4.7, 14.2),
    "opt-30b": (0.8, 2.5, 7.6),
    "opt-66b": (0.4, 1.2, 2.6),
    "llama2-7b": (3.6, 10.4, 34.0),
    "llama2-13b": (1.9, 4.7, 14.0),
    "llama2-70b": (0.3, 1.0, 3.4),
}
FIG9_CONFIGS = ("S", "M", "L")

# Section VI ablations the paper reports (speedups of the full design over a design without the feature)
ABLATIONS_PAPER = {"read_slicing": (1.6, 1.8), "tiling": (1.3, 1.4)}
