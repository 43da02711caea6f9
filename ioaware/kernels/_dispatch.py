"""Which implementation an op runs, made observable.

CUDA tensors run the Triton kernel. CPU tensors run the Triton kernel under Triton's interpreter when
IOAWARE_INTERPRET=1 (how CI tests kernels), otherwise the PyTorch reference. `last_backend(op)` tells
what the last call of an op ran; IOAWARE_DEBUG=1 logs every dispatch.
"""

from __future__ import annotations

import importlib
import logging
import os
from types import ModuleType

from ..env import settings

log = logging.getLogger("ioaware.dispatch")
_LAST: dict[str, str] = {}


def interpreting() -> bool:
    """Whether Triton runs in its interpreter in this process (TRITON_INTERPRET=1, which IOAWARE_INTERPRET sets)."""
    return os.environ.get("TRITON_INTERPRET", "") == "1"


def backend_for(device_type: str) -> str:
    """What an op runs on tensors of `device_type`: 'triton', 'interpret' or 'reference' (module docstring)."""
    if device_type == "cuda":
        return "interpret" if interpreting() else "triton"
    if settings().interpret:
        return "interpret"
    return "reference"


def load_kernel_module(name: str) -> ModuleType:
    """Import a Triton kernel module. Under IOAWARE_INTERPRET the interpreter must be on before the
    `@triton.jit` decorators run, so the switch is flipped here, just before the first import."""
    if settings().interpret and not interpreting():
        import sys

        if "triton.language" in sys.modules:
            raise RuntimeError("IOAWARE_INTERPRET=1 was set after triton was imported; set it before the first "
                               "`import ioaware` (or `import triton`), e.g. IOAWARE_INTERPRET=1 python ...")
        os.environ["TRITON_INTERPRET"] = "1"
    return importlib.import_module(name)


def record(op: str, backend: str) -> None:
    """Remember what `op` just ran on, for `last_backend`; log it under IOAWARE_DEBUG=1."""
    _LAST[op] = backend
    if settings().debug:
        log.warning("ioaware op %s ran on %s", op, backend)


def last_backend(op: str) -> str | None:
    """The implementation the last call of `op` ran: 'triton', 'interpret' or 'reference'; None before the first.

    Examples:
        >>> import torch, ioaware
        >>> q = torch.randn(1, 8, 2, 16)
        >>> o = ioaware.flash_attn(q, q, q, causal=True)
        >>> ioaware.last_backend("flash_attn") in ("reference", "interpret")   # 'interpret': IOAWARE_INTERPRET=1
        True
    """
    return _LAST.get(op)
