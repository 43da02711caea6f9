from . import cost  # noqa: F401  (registers the ops' costs in the iomodel)
from .interface import choose_attn_schedule, choose_schedule, lowrank_attn, lowrank_ffn, lowrank_swiglu
from .reference import (
    apply_rope_half,
    expand_heads,
    lowrank_attn_ref,
    lowrank_ffn_ref,
    lowrank_linear_ref,
    lowrank_swiglu_ref,
    swiglu_hidden_ref,
)

__all__ = ["apply_rope_half", "choose_attn_schedule", "choose_schedule", "expand_heads", "lowrank_attn",
           "lowrank_attn_ref", "lowrank_ffn", "lowrank_ffn_ref", "lowrank_linear_ref", "lowrank_swiglu",
           "lowrank_swiglu_ref", "swiglu_hidden_ref"]
