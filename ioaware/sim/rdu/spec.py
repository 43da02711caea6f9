"""SambaNova SN40L and the DGX it is compared with: machines, models and the paper's headlines, as data with sources.

Per-socket bandwidths are the SN40L-16 rack's published totals divided by 16 (our division: the paper's own per-socket
figures were not retrieved; ../shared/reference/offload.md, "SambaNova SN40L"). Every other constant that is an
assumption says ASSUMED in its source.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ...hardware.specs import get_spec

_HC = "SN40L paper (arXiv 2405.07518) and Hot Chips 2024 slides"


@dataclass(frozen=True)
class RduSocket:
    name: str = "SambaNova SN40L"
    pcus: int = 1040
    pmus: int = 1040
    sram_bytes: float = 520e6
    hbm_bytes: float = 64e9
    hbm_Bps: float = 25.6e12 / 16
    ddr_bytes: float = 1.5e12
    ddr_Bps: float = 1600e9 / 16
    peak_bf16: float = 638e12
    gemm_eff: float = 0.7  # fraction of peak a large GEMM reaches
    mem_eff: float = 0.9  # fraction of peak HBM bandwidth a streaming kernel reaches
    kernel_overhead_s: float = 10e-6  # one kernel boundary when unfused: launch, reprogram, drain
    fused_overhead_s: float = 10e-6  # one launch of a fused graph (one per decoder layer)
    dma_chunk_bytes: float = 64 * 2**20  # DDR -> HBM copies move in chunks of this size
    dma_setup_s: float = 2e-6  # per-chunk descriptor setup of the DMA engine
    sources: dict[str, str] = field(default_factory=lambda: dict(SN40L_SOURCES))


SN40L_SOURCES = {
    "pcus": _HC + ": 1,040 PCUs and 1,040 PMUs per socket",
    "sram_bytes": _HC + ": 520 MB on-chip SRAM per socket",
    "hbm_bytes": _HC + ": 64 GB HBM3 per socket",
    "hbm_Bps": _HC + ": SN40L-16 rack 25.6 TB/s HBM; / 16 sockets (our division)",
    "ddr_bytes": _HC + ": up to 1.5 TB DDR5 per socket",
    "ddr_Bps": _HC + ": SN40L-16 rack 24 TB DDR at 1600 GB/s; / 16 sockets (our division)",
    "peak_bf16": _HC + ": 638 BF16 TFLOPS per socket",
    "gemm_eff": "ASSUMED 0.7 of peak for large GEMMs, fused and unfused alike (it cancels in their ratio)",
    "mem_eff": "ASSUMED 0.9 of peak HBM bandwidth for streaming kernels, fused and unfused alike",
    "kernel_overhead_s": "ASSUMED 10 us per kernel boundary unfused: a GPU launch + sync is ~5 us, an RDU boundary "
                         "also reprograms the PCU/PMU array and drains the pipeline",
    "fused_overhead_s": "ASSUMED the same 10 us, paid once per fused decoder layer",
    "dma_chunk_bytes": "ASSUMED 64 MiB DMA chunks",
    "dma_setup_s": "ASSUMED 2 us descriptor setup per chunk",
}


@dataclass(frozen=True)
class GpuBox:
    """A DGX: `gpus` GPUs, experts kept in host DRAM and copied over each GPU's PCIe link."""

    name: str
    gpus: int
    hbm_bytes: float
    hbm_Bps: float
    peak_bf16: float
    host_bytes: float
    host_dram_Bps: float  # caps the sum of the GPUs' host-to-device copies
    h2d_pinned_Bps: float  # one GPU, from page-locked host memory
    h2d_pageable_Bps: float  # one GPU, from ordinary (pageable) host memory, as checkpoint loaders copy
    sources: dict[str, str]


def dgx_h100(measured_h2d: dict | None = None) -> GpuBox:
    """DGX H100: 8 x H100 SXM5 80 GB (ioaware.hardware spec), 2 TB host memory. Host-to-GPU copy rates are measured:
    on our H100 lease (offload.md sect. 5: 55.0 GB/s pinned, 8.2 GB/s pageable, 1 GiB buffers) unless a newer
    measurement is passed in."""
    h = get_spec("h100")
    pinned, pageable, src = 55.0e9, 8.2e9, "measured on our H100 lease, 1 GiB torch copies (offload.md sect. 5)"
    if measured_h2d:
        pinned, pageable = measured_h2d["pinned_GBps"] * 1e9, measured_h2d["pageable_GBps"] * 1e9
        src = measured_h2d.get("source", "measured (measure.py)")
    return GpuBox("DGX H100", 8, 8 * h.hbm_bytes, 8 * h.hbm_bandwidth_Bps, 8 * h.peak("bfloat16"), 2e12,
                  2 * 8 * 4800e6 * 8,
                  pinned, pageable,
                  {"gpus": "DGX H100: 8 x H100 SXM5 80 GB; " + h.sources["hbm"],
                   "host_bytes": "DGX H100 datasheet: 2 TB system memory",
                   "host_dram_Bps": "2 sockets x 8 channels DDR5-4800 x 8 B = 614 GB/s (Xeon 8480C platform)",
                   "h2d": src})


@dataclass(frozen=True)
class LlamaShape:
    name: str
    n_layers: int
    d_model: int
    d_ff: int
    n_heads: int
    n_kv_heads: int
    vocab: int

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    @property
    def layer_params(self) -> int:
        d, kv = self.d_model, self.n_kv_heads * self.d_head
        return d * (d + 2 * kv) + d * d + 3 * d * self.d_ff

    @property
    def params(self) -> int:
        return self.n_layers * self.layer_params + 2 * self.vocab * self.d_model

    def bytes(self, elem: int = 2) -> int:
        return self.params * elem


MODELS = {  # Meta's model cards / HF configs
    "llama-3.1-8b": LlamaShape("llama-3.1-8b", 32, 4096, 14336, 32, 8, 128256),
    "llama-2-7b": LlamaShape("llama-2-7b", 32, 4096, 11008, 32, 32, 32000),
    "llama-2-13b": LlamaShape("llama-2-13b", 40, 5120, 13824, 40, 40, 32000),
    "llama-2-70b": LlamaShape("llama-2-70b", 80, 8192, 28672, 64, 8, 32000),
}


def get_model(name: str) -> LlamaShape:
    if name.lower() not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    return MODELS[name.lower()]


PAPER = {
    "switch_llama31_8b_16sockets_s": (0.010, "Hot Chips 2024 slide: model switching '0.01 s for llama3.1 8B' "
                                             "(SN40L-16)"),
    "fused_vs_unfused": ((2.0, 13.0), "arXiv 2405.07518 abstract: 2x to 13x over an unfused baseline, 8 sockets"),
    "switch_vs_dgx": ((15.0, 31.0), "arXiv 2405.07518 abstract: model switching 15x to 31x faster (8-socket node "
                                    "vs DGX; which DGX gives which end was not retrieved)"),
    "footprint_vs_dgx": (19.0, "arXiv 2405.07518 abstract: up to 19x smaller machine footprint for CoE"),
    "coe_experts": (150, "Samba-CoE: 150 experts, about 1T parameters"),
}
