"""flash_attn's cost for concrete tensors, from the iomodel (the one source of the formulas)."""

from __future__ import annotations

from ....iomodel import Cost, flash_attention_cost, register


@register("flash_attn")
def flash_attn_cost(B: int, Tq: int, Tk: int, Hq: int, D: int, Hkv: int | None = None, causal: bool = False,
                    elem_bytes: int = 2, backward: bool = False, block_q: int = 128, block_k: int = 64) -> Cost:
    return flash_attention_cost(B, Hq, Tq, Tk, D, Hkv=Hkv, block_q=block_q, block_k=block_k,
                                elem_bytes=elem_bytes, causal=causal, backward=backward)
