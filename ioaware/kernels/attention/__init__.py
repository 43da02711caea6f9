from .flash import attention_ref, flash_attn

__all__ = ["attention_ref", "flash_attn"]
