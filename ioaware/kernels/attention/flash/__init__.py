from . import cost  # noqa: F401  (registers the op's cost in the iomodel)
from .interface import flash_attn, flash_attn_varlen
from .reference import attention_ref

__all__ = ["attention_ref", "flash_attn", "flash_attn_varlen"]
