"""How work runs: one folder per op (reference.py, kernel.py, interface.py, cost.py, README.md)."""

from ._dispatch import last_backend
from .attention import attention_ref, decode_ref, flash_attn, flash_attn_varlen, flash_decode
from .conv import fftconv, fftconv_ref
from .gemm import flat_linear

__all__ = ["attention_ref", "decode_ref", "fftconv", "fftconv_ref", "flash_attn", "flash_attn_varlen", "flash_decode",
           "flat_linear", "last_backend"]
