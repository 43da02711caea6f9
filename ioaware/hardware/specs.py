"""Spec tables for the machines ioaware models. Every number carries its source.

Peaks are dense (no 2:4 sparsity). Bandwidths are in bytes/s, sizes in bytes, rates in FLOP/s.
PCIe figures are per direction.
"""

from __future__ import annotations

from dataclasses import dataclass, field

KB = 1024
MB = 1024**2
GB = 1e9  # decimal: vendors quote HBM capacity and bandwidth in decimal units
TB = 1e12
T = 1e12  # TFLOP/s


@dataclass(frozen=True)
class MemoryLevel:
    """One level of a machine's memory: its size, its bandwidth (None where no datasheet gives one) and the
    source of the numbers.

    Examples:
        >>> hbm = get_spec("h100").levels()[2]
        >>> hbm.name, hbm.size_bytes / 1e9, hbm.bandwidth_Bps / 1e12
        ('hbm', 80.0, 3.35)
    """

    name: str
    size_bytes: float
    bandwidth_Bps: float | None
    source: str


@dataclass(frozen=True)
class HardwareSpec:
    """A machine's datasheet numbers, each with its source in `sources` (`ioaware hardware --sources` prints them).

    Examples:
        >>> h = get_spec("h100")
        >>> h.peak("bf16") / 1e12, h.hbm_bandwidth_Bps / 1e12, h.num_sms
        (989.4, 3.35, 132)
    """

    key: str
    name: str
    peak_flops: dict[str, float]  # dtype -> FLOP/s (tensor cores where the dtype has them)
    hbm_bytes: float
    hbm_bandwidth_Bps: float
    l2_bytes: float
    smem_per_sm_bytes: float
    num_sms: int
    pcie_Bps: float  # host link, one direction
    sources: dict[str, str] = field(default_factory=dict)
    kind: str = "gpu"
    # datasheets give no L2 bandwidth; `measured_spec` fills it from a probe (the roofline's level "l2" needs it)
    l2_bandwidth_Bps: float | None = None

    def peak(self, dtype: str) -> float:
        """Peak FLOP/s in `dtype` ('bfloat16', 'bf16', 'torch.float16', ...); ValueError if the table has none."""
        key = _dtype_key(dtype)
        if key not in self.peak_flops:
            raise ValueError(f"{self.name} has no peak listed for dtype {dtype!r}; known: {sorted(self.peak_flops)}")
        return self.peak_flops[key]

    def peak_source(self, dtype: str) -> str:
        """Where peak(dtype) comes from: a measured peak's own entry (measured_spec), else the datasheet's.

        Examples:
            >>> get_spec("h100").peak_source("bf16") != ""
            True
        """
        return self.sources.get(f"flops.{_dtype_key(dtype)}") or self.sources.get("flops", "")

    @property
    def sram_bytes(self) -> float:
        """On-chip memory one thread block can use (the M of the IO-complexity bounds).

        Examples:
            >>> get_spec("h100").sram_bytes / 1024
            228.0
        """
        return self.smem_per_sm_bytes

    def levels(self) -> list[MemoryLevel]:
        """sram (all SMs), l2, hbm and the host link, fastest first."""
        return [
            MemoryLevel("sram", self.smem_per_sm_bytes * self.num_sms, None, self.sources.get("smem", "")),
            MemoryLevel("l2", self.l2_bytes, self.l2_bandwidth_Bps, self.sources.get("l2", "")),
            MemoryLevel("hbm", self.hbm_bytes, self.hbm_bandwidth_Bps, self.sources.get("hbm", "")),
            MemoryLevel("host", float("inf"), self.pcie_Bps, self.sources.get("pcie", "")),
        ]


def _dtype_key(dtype: object) -> str:
    s = str(dtype).replace("torch.", "")
    return {"half": "float16", "fp16": "float16", "bf16": "bfloat16", "fp32": "float32", "float": "float32",
            "tf32": "tfloat32", "fp8": "float8", "fp64": "float64", "double": "float64"}.get(s, s)


_H100_WP = "NVIDIA H100 Tensor Core GPU datasheet (SXM5 column) and Hopper architecture whitepaper (2022)"
_A100_WP = "NVIDIA A100 Tensor Core GPU datasheet (SXM4 80GB column) and Ampere GA100 whitepaper (2020)"
_V100_WP = "NVIDIA Tesla V100 datasheet (SXM2 column) and Volta GV100 whitepaper (2017)"
_H200_DS = "NVIDIA H200 Tensor Core GPU datasheet (SXM column, 2024); compute as H100 SXM (same GH100 die and clocks)"

SPECS: dict[str, HardwareSpec] = {
    "h100": HardwareSpec(
        key="h100", name="NVIDIA H100 SXM5 80GB",
        peak_flops={"float16": 989.4 * T, "bfloat16": 989.4 * T, "tfloat32": 494.7 * T, "float32": 66.9 * T,
                    "float64": 66.9 * T, "float8": 1978.9 * T},
        hbm_bytes=80 * GB, hbm_bandwidth_Bps=3.35 * TB, l2_bytes=50 * MB, smem_per_sm_bytes=228 * KB,
        num_sms=132, pcie_Bps=64 * GB,
        sources={"flops": _H100_WP + " (dense tensor-core rates)", "hbm": _H100_WP + " (80 GB HBM3, 3.35 TB/s)",
                 "l2": "Hopper whitepaper: 50 MB L2", "smem": "CUDA C Programming Guide, compute capability 9.0: "
                 "228 KB shared memory per SM (227 KB per block)", "sms": "Hopper whitepaper: 132 SMs on H100 SXM5",
                 "pcie": "PCIe Gen5 x16: 128 GB/s bidirectional, 64 GB/s each way (H100 datasheet)"},
    ),
    "h200": HardwareSpec(
        key="h200", name="NVIDIA H200 SXM 141GB",
        peak_flops={"float16": 989.4 * T, "bfloat16": 989.4 * T, "tfloat32": 494.7 * T, "float32": 66.9 * T,
                    "float64": 66.9 * T, "float8": 1978.9 * T},
        # L2: 60 MiB, not the H100 SXM5's 50. The H200 datasheet gives no L2 size; the driver reports
        # l2CacheSize = 62914560 B = 60 MiB (device.l2_bytes in benchmarks/results/probe-gpu-h200-2026-12-02.json),
        # the full GH100's 60 MB of the Hopper whitepaper, where the H100 SXM5 enables 50 MB. The same run's
        # apparent capacity (l2.capacity_mib, the re-read bandwidth half-way down) was 55.1 MiB: more than 50.
        hbm_bytes=141 * GB, hbm_bandwidth_Bps=4.8 * TB, l2_bytes=60 * MB, smem_per_sm_bytes=228 * KB,
        num_sms=132, pcie_Bps=64 * GB,
        sources={"flops": _H200_DS, "hbm": _H200_DS + " (141 GB HBM3e, 4.8 TB/s)",
                 "l2": "60 MiB as the driver reports it (cudaDeviceProp.l2CacheSize = 62914560 on an H200, "
                       "benchmarks/results/probe-gpu-h200-2026-12-02.json); the datasheet gives none",
                 "smem": "compute capability 9.0: 228 KB per SM", "sms": "GH100 SXM: 132 SMs",
                 "pcie": "PCIe Gen5 x16, 64 GB/s each way (H200 datasheet)"},
    ),
    "a100": HardwareSpec(
        key="a100", name="NVIDIA A100 SXM4 80GB",
        peak_flops={"float16": 312 * T, "bfloat16": 312 * T, "tfloat32": 156 * T, "float32": 19.5 * T,
                    "float64": 19.5 * T},
        hbm_bytes=80 * GB, hbm_bandwidth_Bps=2.039 * TB, l2_bytes=40 * MB, smem_per_sm_bytes=164 * KB,
        num_sms=108, pcie_Bps=32 * GB,
        sources={"flops": _A100_WP, "hbm": _A100_WP + " (80 GB HBM2e, 2,039 GB/s)", "l2": "GA100 whitepaper: 40 MB L2",
                 "smem": "CUDA C Programming Guide, compute capability 8.0: 164 KB per SM (163 KB per block)",
                 "sms": "GA100 whitepaper: 108 SMs on A100", "pcie": "PCIe Gen4 x16: 64 GB/s bidirectional"},
    ),
    "v100": HardwareSpec(
        key="v100", name="NVIDIA V100 SXM2 32GB",
        peak_flops={"float16": 125 * T, "float32": 15.7 * T, "float64": 7.8 * T},
        hbm_bytes=32 * GB, hbm_bandwidth_Bps=900 * GB, l2_bytes=6 * MB, smem_per_sm_bytes=96 * KB,
        num_sms=80, pcie_Bps=16 * GB,
        sources={"flops": _V100_WP + " (no bf16 support)", "hbm": _V100_WP + " (32 GB HBM2, 900 GB/s)",
                 "l2": "GV100 whitepaper: 6 MB L2", "smem": "compute capability 7.0: 96 KB per SM",
                 "sms": "GV100 whitepaper: 80 SMs on V100", "pcie": "PCIe Gen3 x16: 32 GB/s bidirectional"},
    ),
}

# Aliases people type.
ALIASES = {"h100-sxm": "h100", "h100_sxm": "h100", "h200-sxm": "h200", "a100-80gb": "a100", "v100-sxm2": "v100"}


def get_spec(name: str) -> HardwareSpec:
    """The spec of a known machine by key or alias (case-insensitive): h100, h200, a100, v100, ...

    Examples:
        >>> get_spec("H100-SXM").name
        'NVIDIA H100 SXM5 80GB'
        >>> get_spec("tpu")
        Traceback (most recent call last):
        ...
        KeyError: "unknown hardware 'tpu'; known: ..."
    """
    key = ALIASES.get(name.lower(), name.lower())
    if key not in SPECS:
        raise KeyError(f"unknown hardware {name!r}; known: {', '.join(sorted(SPECS))}")
    return SPECS[key]
