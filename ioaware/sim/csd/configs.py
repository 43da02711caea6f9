"""InstInfer's machine and its FlexGen baseline as data: every constant with its kind and source.

Kinds: "paper" (InstInfer, Pan et al., arXiv:2409.04992 / HPCA 2025, as summarised in shared/reference/offload.md),
"spec" (a vendor datasheet), "flexgen" (the structure of FlexGen's cost model, FMInference/FlexiGen
experimental/cost_model.py), "assumed" (our choice where the paper's value was not available, with the reason).
Nothing here is fitted to InstInfer's results.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

KiB = 1024
GB = 1e9
US = 1e-6


@dataclass(frozen=True)
class GpuHost:
    """The GPU server both systems run on: A6000 48 GB on PCIe 4.0 x16, Xeon 5320, 96 GB DDR4 (InstInfer's setup)."""

    gpu_mem: float = 48 * GB
    hbm_Bps: float = 768 * GB  # RTX A6000 datasheet: 768 GB/s GDDR6
    gpu_flops: float = 154.8e12  # RTX A6000 datasheet: FP16 tensor, dense (309.7 with sparsity)
    gpu_reserve: float = 4 * GB  # activations, workspace, CUDA context: not for weights
    ctog_Bps: float = 25.2 * GB  # PCIe 4.0 x16: 31.5 GB/s x 0.8 (pinned copies reach ~80% of the link)
    gtoc_Bps: float = 25.2 * GB
    cpu_mem: float = 96 * GB
    cpu_dram_Bps: float = 100 * GB  # Xeon 5320: 8 x DDR4-3200 = 204.8 GB/s peak; half of it for streaming attention
    cpu_flops: float = 1.0e12  # 26 cores x 2.2 GHz x 16 FP32 FMA lanes x 2 ~ 1.8 TFLOPS; ~half achieved


@dataclass(frozen=True)
class Ssd:
    """FlexGen's disk: Samsung 980 Pro (PCIe 4.0 x4), through the host (disk -> CPU -> GPU)."""

    read_Bps: float = 7.0 * GB  # 980 Pro 1 TB datasheet: sequential read 7,000 MB/s
    write_Bps: float = 5.0 * GB  # 980 Pro 1 TB datasheet: sequential write 5,000 MB/s


@dataclass(frozen=True)
class Csd:
    """A computational storage drive: flash channels inside, an attention engine, PCIe 4.0 x4 to the GPU (P2P)."""

    channels: int = 16
    channel_Bps: float = 1.25 * GB  # 16 x 1.25 = 20 GB/s: "more than 20 GB/s across internal channels"
    dies_per_channel: int = 4
    planes_per_die: int = 2
    flash_page: int = 16 * KiB
    tR: float = 50 * US  # TLC page read
    link_Bps: float = 7.88 * GB  # PCIe 4.0 x4
    write_Bps: float = 5.0 * GB  # program bandwidth, as the 980 Pro's sequential write
    engine_flops: float = 0.5e12  # the in-storage attention engine (FP16)
    count: int = 1  # CSDs; KV and attention split evenly over them

    @property
    def channel_total_Bps(self) -> float:
        return self.channels * self.channel_Bps

    def read_Bps(self, block: int) -> float:
        """Internal read rate for `block`-byte reads: the channels, or the planes when each read needs its own
        array read (a block smaller than a flash page still costs a whole tR)."""
        planes = self.channels * self.dies_per_channel * self.planes_per_die
        per_read = min(block, self.flash_page)
        array = planes * per_read / self.tR
        return min(self.channel_total_Bps, array)


@dataclass(frozen=True)
class SparF:
    """SparF (a flash-aware SparQ): top-r of the head's channels score all tokens approximately from the
    channel-major copy of K; whole 4 KiB token pages (16 tokens x 128 channels, FP16) are kept or skipped by that
    score, top-k tokens inside them are attended exactly; out = alpha softmax(q K_j^T/sqrt d) V_j + (1-alpha) v_mean."""

    r_frac: float = 1 / 8  # channels kept (r = head_dim / 8)
    k_frac: float = 1 / 8  # tokens kept ("compression of 1/8 is nearly lossless")
    page_tokens: int = 16
    elem: int = 2  # FP16 KV


@dataclass(frozen=True)
class Constant:
    name: str
    value: str
    kind: str
    source: str


HOST = GpuHost()
SSD = Ssd()
CSD = Csd()
SPARF = SparF()

CONSTANTS: list[Constant] = [
    Constant("GPU", "RTX A6000 48 GB, 768 GB/s, 154.8 TFLOPS FP16", "paper/spec", "InstInfer's GPU; NVIDIA datasheet"),
    Constant("host", "Xeon 5320, 96 GB DDR4", "paper", "InstInfer's host (reference file)"),
    Constant("PCIe GPU link", "25.2 GB/s per direction", "assumed",
             "PCIe 4.0 x16 31.5 GB/s x 0.8: pinned copies reach ~80-87% of the link (our H100 lease: 55 of 63)"),
    Constant("CPU attention", "100 GB/s DRAM, 1 TFLOPS", "assumed",
             "FlexGen runs attention on the CPU for disk-resident KV; Xeon 5320 8 x DDR4-3200 = 205 GB/s peak; "
             "never the bound here (the disk is 14x slower)"),
    Constant("980 Pro read / write", "7.0 / 5.0 GB/s", "spec",
             "Samsung datasheet sequential rates: FlexGen's best case (its own fitted T4 disk read was 0.47 GB/s)"),
    Constant("CSD internal channels", "16 x 1.25 GB/s = 20 GB/s", "assumed",
             "InstInfer's CSD internals were not retrieved; Cambricon-LLM quotes 'more than 20 GB/s across internal "
             "channels' for a PCIe 4.0 SSD; we take 20"),
    Constant("CSD dies x planes, page, tR", "4 x 2 per channel, 16 KiB, 50 us", "assumed",
             "a TLC drive of that class; only matters for SparF's 4 KiB reads (128 planes x 4 KiB / 50 us = "
             "10.5 GB/s)"),
    Constant("CSD link", "PCIe 4.0 x4, 7.88 GB/s", "spec", "PCIe 4.0 x4 (the reference: 8 GB/s at the interface)"),
    Constant("CSD program bandwidth", "5.0 GB/s", "assumed", "as the 980 Pro's sequential write"),
    Constant("CSD attention engine", "0.5 TFLOPS FP16", "assumed", "never binding: SparF needs < 0.1 TFLOP/s here"),
    Constant("SparF r, k", "head_dim/8 channels, 1/8 of tokens", "paper", "'compression of 1/8 is nearly lossless'"),
    Constant("SparF page", "4 KiB = 16 tokens x 128 ch FP16", "paper", "InstInfer's two-step page/token filter"),
    Constant("FlexGen generation step", "ctog + max(gtoc, dtoc, ctod, comp) per layer", "flexgen",
             "FMInference/FlexiGen experimental/cost_model.py, with cache on disk (cn = 1) and attention on the CPU"),
]

PAPER = {"headline_speedup": 11.1, "model": "opt-13b", "prompt": 1024, "gen": 1024,
         "note": "InstInfer: up to 11.1x throughput over FlexGen for long sequences, a 13B model on an A6000"}


def with_(obj, **kw):
    return replace(obj, **kw)


__all__ = ["CONSTANTS", "CSD", "HOST", "PAPER", "SPARF", "SSD", "Constant", "Csd", "GpuHost", "SparF", "Ssd", "with_"]
