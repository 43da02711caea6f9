"""ioaware: IO-aware deep learning — kernels, an out-of-core LLM runtime and cost models of the memory hierarchy.

Importing ioaware never initialises CUDA and needs no GPU.
"""

import os as _os

# Triton decides interpreted-or-compiled when a @triton.jit function is defined, including its own
# standard library, so the interpreter must be switched on before anything imports triton.
if _os.environ.get("IOAWARE_INTERPRET", "").strip().lower() in {"1", "true", "yes", "on"}:
    _os.environ["TRITON_INTERPRET"] = "1"

from . import hardware, iomodel, rnn  # noqa: E402
from .errors import DeviceError, DTypeError, IOAwareError, ShapeError, UnsupportedError  # noqa: E402
from .kernels import (  # noqa: E402
    attention_ref,
    fftconv,
    flash_attn,
    flash_attn_varlen,
    flash_decode,
    flat_linear,
    last_backend,
)

__version__ = "0.1.0"

__all__ = ["DTypeError", "DeviceError", "IOAwareError", "ShapeError", "UnsupportedError", "__version__",
           "attention_ref", "fftconv", "flash_attn", "flash_attn_varlen", "flash_decode", "flat_linear", "hardware",
           "iomodel", "last_backend", "rnn"]
