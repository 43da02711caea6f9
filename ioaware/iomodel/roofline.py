"""Roofline time: max(FLOPs / peak, bytes / bandwidth), and which of the two binds.

The peaks are the datasheet's by default, so a model's answer does not change with whichever probe files sit in a
cache folder. `measured=True` uses what `ioaware probe gpu` measured on that card where a probe file exists
(`ioaware.hardware.measured`: the newest file in the cache folder or the checkout's benchmarks/results/), quantity
by quantity, and the datasheet where not; the result says which it used (`source`).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..hardware.probe_results import Measured, measured_spec
from ..hardware.probe_results import measured as find_measured
from ..hardware.specs import HardwareSpec
from .cost import Cost


@dataclass(frozen=True)
class Roofline:
    """`roofline`'s answer: the compute and memory times, the larger as `time_s` and which one binds, the cost's
    intensity and the machine's ridge point (FLOP/byte), the roofs used and where they came from.

    Examples:
        >>> from ioaware.hardware import get_spec
        >>> from ioaware.iomodel import Cost
        >>> r = roofline(Cost.of(flops=1e9, hbm=(1e9, 0)), get_spec("h100"))
        >>> r.bound, r.time_s == r.memory_s, r.intensity < r.ridge
        ('memory', True, True)
    """

    compute_s: float
    memory_s: float
    time_s: float
    bound: str  # "compute" or "memory"
    intensity: float  # FLOP/byte at the level
    ridge: float  # FLOP/byte where the two roofs meet
    peak_flops: float = 0.0  # the roofs used
    bandwidth_Bps: float = 0.0
    source: str = "datasheet"  # "datasheet", or the measured peak's and bandwidth's keys, files and dates


def _level_bandwidth(spec: HardwareSpec, level: str) -> float | None:
    if level == "hbm":
        return spec.hbm_bandwidth_Bps
    if level == "l2":
        return spec.l2_bandwidth_Bps  # datasheets give none; a probe measures it
    return None


def roofline(cost: Cost, spec: HardwareSpec, dtype: str = "bfloat16", level: str = "hbm",
             bandwidth_Bps: float | None = None, measured: bool | Measured | None = False) -> Roofline:
    """measured: False (default) the spec's peaks; True the newest probe of this card where there is one (else the
    spec's); or a `Measured` from `ioaware.hardware.measured(...)`. bandwidth_Bps overrides the level's bandwidth.

    Examples:
        >>> from ioaware.hardware import get_spec
        >>> from ioaware.iomodel import Cost
        >>> n = 4096                                   # a bf16 n x n x n GEMM on an H100 SXM's datasheet roofs
        >>> r = roofline(Cost.of(flops=2 * n**3, hbm=(2 * n * n * 2, n * n * 2)), get_spec("h100"))
        >>> r.bound, round(r.ridge), f"{r.time_s * 1e6:.0f} us"
        ('compute', 295, '139 us')
    """
    if measured is True:
        measured = find_measured(spec.name) if spec.kind == "gpu" else None
    used = measured_spec(spec, measured or None)
    peak = used.peak(dtype)
    bw = bandwidth_Bps if bandwidth_Bps is not None else _level_bandwidth(used, level)
    if not bw or bw <= 0:
        raise ValueError(f"{spec.name} has no bandwidth for level {level!r}; pass bandwidth_Bps")
    compute_s = cost.flops / peak
    memory_s = cost.bytes(level) / bw
    t = max(compute_s, memory_s)
    return Roofline(compute_s, memory_s, t, "compute" if compute_s >= memory_s else "memory",
                    cost.intensity(level), peak / bw, peak, bw, _source(used, dtype, level, bandwidth_Bps))


def _source(used: HardwareSpec, dtype: str, level: str, bandwidth_Bps: float | None) -> str:
    parts = [s for s in (used.peak_source(dtype),) if s.startswith("measured")]
    if bandwidth_Bps is None and f"{level}_bandwidth" in used.sources:
        parts.append(used.sources[f"{level}_bandwidth"])
    return "; ".join(parts) if parts else "datasheet"
