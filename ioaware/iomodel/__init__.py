"""What work costs: `Cost` (FLOPs, bytes per memory level), roofline time, attention's traffic and bounds.

This is the one place FLOP and byte counts are defined; kernels, benchmarks, the runtime and the
simulators ask it rather than re-deriving a formula. Ops register their cost functions in `REGISTRY`.
"""

from collections.abc import Callable

from .attention import (
    attention_flops,
    attention_min_cost,
    blocks_for_sram,
    flash_attention_cost,
    standard_attention_cost,
)
from .cost import LEVELS, Cost, Traffic
from .roofline import Roofline, roofline

REGISTRY: dict[str, Callable[..., Cost]] = {}


def register(name: str):
    def deco(fn):
        REGISTRY[name] = fn
        return fn

    return deco


__all__ = ["LEVELS", "REGISTRY", "Cost", "Roofline", "Traffic", "attention_flops", "attention_min_cost",
           "blocks_for_sram", "flash_attention_cost", "register", "roofline", "standard_attention_cost"]
