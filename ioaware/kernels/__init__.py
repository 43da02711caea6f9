"""How work runs: one folder per op (reference.py, kernel.py, interface.py, cost.py, README.md)."""

from ._dispatch import last_backend
from .attention import attention_ref, flash_attn

__all__ = ["attention_ref", "flash_attn", "last_backend"]
