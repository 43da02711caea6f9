"""Drop-in for `flash_attn.flash_attn_interface` (flash-attn 2): the same seven functions, signatures, defaults and
return conventions, on ioaware's kernels. Port by changing the import:

    from ioaware.flash_attn_interface import flash_attn_func, flash_attn_with_kvcache

What is not supported raises a one-line `ioaware.UnsupportedError` naming the argument; docs/flash_attn_interface.md
lists the differences. The code lives in ioaware/kernels/attention/compat/.
"""

from .kernels.attention.compat import (
    flash_attn_func,
    flash_attn_kvpacked_func,
    flash_attn_qkvpacked_func,
    flash_attn_varlen_func,
    flash_attn_varlen_kvpacked_func,
    flash_attn_varlen_qkvpacked_func,
    flash_attn_with_kvcache,
    register_transformers,  # not flash-attn's: attn_implementation="ioaware" in transformers models
)

__all__ = ["flash_attn_func", "flash_attn_kvpacked_func", "flash_attn_qkvpacked_func", "flash_attn_varlen_func",
           "flash_attn_varlen_kvpacked_func", "flash_attn_varlen_qkvpacked_func", "flash_attn_with_kvcache",
           "register_transformers"]
