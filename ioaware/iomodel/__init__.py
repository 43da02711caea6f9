"""What work costs: `Cost` (FLOPs, bytes per memory level), roofline time, attention's traffic and bounds.

This is the one place FLOP and byte counts are defined; kernels, benchmarks, the runtime and the
simulators ask it rather than re-deriving a formula. Ops register their cost functions in `REGISTRY`.
"""

from collections.abc import Callable
from typing import TypeVar

from .attention import (
    attention_flops,
    attention_min_cost,
    blocks_for_sram,
    flash_attention_cost,
    standard_attention_cost,
)
from .bounds import (
    IOBound,
    attention_io_lower_bound,
    decode_io,
    fa1_forward_io,
    fa2_backward_io,
    fa2_forward_io,
    small_sram_io,
    standard_attention_io,
)
from .cost import LEVELS, Cost, Traffic
from .io import predict_batches_seconds, predict_read_seconds
from .roofline import Roofline, roofline

REGISTRY: dict[str, Callable[..., Cost]] = {}


_CostFn = TypeVar("_CostFn", bound=Callable[..., Cost])


def register(name: str) -> Callable[[_CostFn], _CostFn]:
    """Decorator: file an op's cost function in `REGISTRY` under `name` (each kernel's cost.py does this).

    Examples:
        >>> @register("example_copy")
        ... def copy_cost(n_bytes: int) -> Cost:
        ...     return Cost.of(hbm=(n_bytes, n_bytes))
        >>> REGISTRY["example_copy"](1024).bytes("hbm")
        2048.0
        >>> del REGISTRY["example_copy"]
    """

    def deco(fn: _CostFn) -> _CostFn:
        REGISTRY[name] = fn
        return fn

    return deco


__all__ = ["LEVELS", "REGISTRY", "Cost", "IOBound", "Roofline", "Traffic", "attention_flops",
           "attention_io_lower_bound", "attention_min_cost", "blocks_for_sram", "decode_io", "fa1_forward_io",
           "fa2_backward_io", "fa2_forward_io", "flash_attention_cost", "predict_batches_seconds",
           "predict_read_seconds", "register", "roofline", "small_sram_io",
           "standard_attention_cost", "standard_attention_io"]
