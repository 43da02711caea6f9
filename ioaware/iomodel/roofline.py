"""Roofline time: max(FLOPs / peak, bytes / bandwidth), and which of the two binds."""

from __future__ import annotations

from dataclasses import dataclass

from ..hardware.specs import HardwareSpec
from .cost import Cost


@dataclass(frozen=True)
class Roofline:
    compute_s: float
    memory_s: float
    time_s: float
    bound: str  # "compute" or "memory"
    intensity: float  # FLOP/byte at the level
    ridge: float  # FLOP/byte where the two roofs meet


def roofline(cost: Cost, spec: HardwareSpec, dtype: str = "bfloat16", level: str = "hbm",
             bandwidth_Bps: float | None = None) -> Roofline:
    peak = spec.peak(dtype)
    bw = bandwidth_Bps if bandwidth_Bps is not None else spec.hbm_bandwidth_Bps
    if bw <= 0:
        raise ValueError(f"{spec.name} has no bandwidth for level {level!r}; pass bandwidth_Bps")
    compute_s = cost.flops / peak
    memory_s = cost.bytes(level) / bw
    t = max(compute_s, memory_s)
    return Roofline(compute_s, memory_s, t, "compute" if compute_s >= memory_s else "memory",
                    cost.intensity(level), peak / bw)
