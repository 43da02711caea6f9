"""Triton helpers shared by every kernel family."""

import triton
import triton.language as tl

LOG2E = 1.4426950408889634


# Triton 3.9's interpreter returns garbage for tl.dot on bfloat16 tiles (seen on 2026-11-26: errors of 1e10
# on a 16x16 product), so under the interpreter bf16 tiles are upcast to fp32 as they are loaded. Compiled
# kernels never take this branch (UPCAST is False), so the GPU path is exactly the bf16 kernel.
@triton.jit
def upcast(x, UPCAST: tl.constexpr):
    if UPCAST:
        return x.to(tl.float32)
    else:
        return x
