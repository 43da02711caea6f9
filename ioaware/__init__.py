"""ioaware: IO-aware deep learning — kernels, an out-of-core LLM runtime and cost models of the memory hierarchy.

Importing ioaware never initialises CUDA and needs no GPU.
"""

import os as _os

# Triton decides interpreted-or-compiled when a @triton.jit function is defined, including its own
# standard library, so the interpreter must be switched on before anything imports triton.
if _os.environ.get("IOAWARE_INTERPRET", "").strip().lower() in {"1", "true", "yes", "on"}:
    _os.environ["TRITON_INTERPRET"] = "1"

from typing import TYPE_CHECKING, Any  # noqa: E402

from .errors import DeviceError, DTypeError, IOAwareError, ShapeError, UnsupportedError  # noqa: E402

# Type checkers see the real signatures (`X as X`: an explicit re-export); at run time these names load lazily
# (__getattr__ below), so `import ioaware` stays cheap.
if TYPE_CHECKING:
    from . import distributed as distributed
    from . import flash_attn_interface as flash_attn_interface
    from . import hardware as hardware
    from . import iomodel as iomodel
    from . import kernels as kernels
    from . import nn as nn
    from . import plan as plan
    from . import rnn as rnn
    from . import runtime as runtime
    from . import sim as sim
    from .kernels import attention_ref as attention_ref
    from .kernels import fftconv as fftconv
    from .kernels import flash_attn as flash_attn
    from .kernels import flash_attn_varlen as flash_attn_varlen
    from .kernels import flash_decode as flash_decode
    from .kernels import flat_linear as flat_linear
    from .kernels import last_backend as last_backend
    from .kernels import spmm as spmm
    from .kernels.attention.sparse import nsa as nsa
    from .kernels.lowrank import lowrank_attn as lowrank_attn
    from .kernels.lowrank import lowrank_swiglu as lowrank_swiglu

__version__ = "0.1.0"

# Public names are imported on first use (PEP 562), so `import ioaware` (and `ioaware --help`) does not pay for
# torch and Triton until a kernel or the runtime is touched.
_KERNELS = ("attention_ref", "fftconv", "flash_attn", "flash_attn_varlen", "flash_decode", "flat_linear",
            "last_backend")
_OPS = {"nsa": ".kernels.attention.sparse", "lowrank_attn": ".kernels.lowrank", "lowrank_swiglu": ".kernels.lowrank"}
_SUBMODULES = ("hardware", "iomodel", "kernels", "nn", "rnn", "runtime", "distributed", "sim", "plan",
               "flash_attn_interface")  # flash-attn 2's API on our kernels

__all__ = ["DTypeError", "DeviceError", "IOAwareError", "ShapeError", "UnsupportedError", "__version__",
           *_KERNELS, *_OPS, "spmm", *_SUBMODULES]


def __getattr__(name: str) -> Any:
    import importlib

    if name in _KERNELS:
        return getattr(importlib.import_module(".kernels", __name__), name)
    if name in _OPS:
        return getattr(importlib.import_module(_OPS[name], __name__), name)
    if name == "spmm":  # ioaware.spmm.pack / unpack / matmul (Flash-LLM)
        return importlib.import_module(".kernels.spmm", __name__)
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'ioaware' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
