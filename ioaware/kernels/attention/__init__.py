from .decode import decode_ref, flash_decode
from .flash import attention_ref, flash_attn, flash_attn_varlen

__all__ = ["attention_ref", "decode_ref", "flash_attn", "flash_attn_varlen", "flash_decode"]
