"""ioaware's attention inside Hugging Face transformers models: `attn_implementation="ioaware"`.

    import ioaware.flash_attn_interface as fai
    fai.register_transformers()              # once; transformers is imported here, not by `import ioaware`
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="ioaware")

The attention function follows transformers' AttentionInterface contract (the one its SDPA and flash-attention
integrations follow): query (batch, heads, q_len, head_dim), key and value (batch, kv_heads, kv_len, head_dim) with
the KV cache already concatenated, output (batch, q_len, heads, head_dim). The mask is flash-attention's
(`flash_attention_mask`): None when the batch has no padding (then one `ioaware.flash_attn` call, causal
bottom-right, which is what decoding against the cache needs), else the 2-D padding mask, and the padded batch runs
as packed sequences through `ioaware.flash_attn_varlen`. Both are differentiable, so training steps backpropagate
through ioaware's kernels.
"""

from __future__ import annotations

from typing import Any

import torch

from ....errors import UnsupportedError
from ..flash import flash_attn, flash_attn_varlen

NAME = "ioaware"


def attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                      is_causal: bool | None = None, sliding_window: int | None = None,
                      softcap: float | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature on ioaware.flash_attn / flash_attn_varlen.

    Examples:
        >>> import torch
        >>> from ioaware.kernels.attention.compat.hf import attention_forward
        >>> q = torch.randn(1, 4, 6, 16); k = v = torch.randn(1, 2, 6, 16)
        >>> attention_forward(torch.nn.Module(), q, k, v, None)[0].shape
        torch.Size([1, 6, 4, 16])
    """
    if kwargs.get("output_attentions"):
        raise UnsupportedError("ioaware attention: output_attentions=True is not supported (use 'eager')")
    if kwargs.get("s_aux") is not None:
        raise UnsupportedError("ioaware attention: attention sinks (s_aux) are not supported")
    causal = bool(is_causal if is_causal is not None else getattr(module, "is_causal", True))
    q, k, v = (t.transpose(1, 2) for t in (query, key, value))  # (B, T, H, D), no copy
    opts: dict[str, Any] = dict(causal=causal and q.shape[1] > 0, softmax_scale=scaling, dropout_p=float(dropout),
                softcap=float(softcap or 0.0),
                window_size=(sliding_window - 1, -1 if causal else sliding_window - 1) if sliding_window else (-1, -1))
    if attention_mask is None:
        return flash_attn(q, k, v, **opts), None
    if attention_mask.dim() != 2 or attention_mask.shape != (k.shape[0], k.shape[1]):
        raise UnsupportedError(f"ioaware attention: expects no mask or flash-attention's 2-D padding mask (batch, "
                               f"kv_len) = {(k.shape[0], k.shape[1])}, got {tuple(attention_mask.shape)}")
    return _padded(q, k, v, attention_mask.bool(), opts), None


def _padded(q, k, v, kv_mask, opts):
    """A padded batch as packed sequences: each row's live queries and keys (left padding: the last q_len entries of
    the key mask are the queries'; right padding in training: q_len == kv_len), attended with the masks aligned
    bottom-right within each row, scattered back into zeros at the padded places."""
    B, T, Hq, D = q.shape
    q_mask = kv_mask[:, -T:]
    lq, lk = q_mask.sum(1), kv_mask.sum(1)
    cu_q = torch.nn.functional.pad(torch.cumsum(lq, 0, dtype=torch.int32), (1, 0))
    cu_k = torch.nn.functional.pad(torch.cumsum(lk, 0, dtype=torch.int32), (1, 0))
    out_packed = flash_attn_varlen(q[q_mask], k[kv_mask], v[kv_mask], cu_q, cu_k, max(int(lq.max()), 1),
                                   max(int(lk.max()), 1), **opts)
    out = q.new_zeros(B, T, Hq, D)
    out[q_mask] = out_packed
    return out


def register_transformers(name: str = NAME) -> str:
    """Register `attention_forward` (and flash-attention's mask builder) with transformers under `name`; returns
    it, for `from_pretrained(..., attn_implementation=name)`. Needs transformers (the `test` extra).

    Examples:
        >>> import ioaware.flash_attn_interface as fai
        >>> fai.register_transformers()
        'ioaware'
    """
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask
    except ImportError as e:
        raise UnsupportedError(f"register_transformers needs a transformers with AttentionInterface ({e})") from None
    AttentionInterface.register(name, attention_forward)
    AttentionMaskInterface.register(name, flash_attention_mask)
    return name
