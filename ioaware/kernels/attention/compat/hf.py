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

Packed batches (`cu_seq_lens_q`/`cu_seq_lens_k` among the kwargs: transformers' continuous batching, whose paged
cache has gathered each request's keys, or padding-free training) run through `ioaware.flash_attn_varlen`;
continuous batching's decode fast path (a `block_table` and the layer's paged `k_cache`/`v_cache`) runs through
`flash_attn_with_kvcache`, which appends the new keys into the pages in place and attends there (no copy of the
cache). transformers 5.x lets continuous batching use only 'sdpa', 'paged|eager' or a name containing "flash", and
turns the decode fast path on only for a name matching "flash.*2|3" on CUDA; hence `PAGED_NAME` (see
`register_transformers`). docs/flash_attn_interface.md has the details and an example.
"""

from __future__ import annotations

from typing import Any

import torch

from ....errors import UnsupportedError
from ..flash import flash_attn, flash_attn_varlen

NAME = "ioaware"
PAGED_NAME = "ioaware_flash_attention_2"  # what continuous batching accepts; see the module docstring


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
    if kwargs.get("block_table") is not None or kwargs.get("k_cache") is not None:
        if attention_mask is not None:
            raise UnsupportedError("ioaware attention: an attention mask with a paged KV cache (block_table) is not "
                                   "supported")
        return _paged_decode(module, q, k, v, kwargs, opts), None
    if kwargs.get("cu_seq_lens_q") is not None or kwargs.get("cu_seq_lens_k") is not None:
        if attention_mask is not None:
            raise UnsupportedError("ioaware attention: an attention mask with packed sequences (cu_seq_lens_q/k) is "
                                   "not supported")
        return _packed(q, k, v, kwargs, opts), None
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


def _offsets(kw: dict[str, Any], name: str) -> torch.Tensor:
    cu = kw.get(name)
    if not isinstance(cu, torch.Tensor):
        # a dict here is one tensor per layer type, which the paged cache picks before attention; without it we cannot
        raise UnsupportedError(f"ioaware attention: {name} must be one tensor of offsets, got {type(cu).__name__}")
    return cu.to(torch.int32)


def _packed(q, k, v, kw, opts):
    """Packed sequences (batch 1, cu_seq_lens_q/k): continuous batching's varlen step, where the paged cache has
    already gathered each request's keys (cached + new) into k and v, or padding-free training."""
    if q.shape[0] != 1:
        raise UnsupportedError(f"ioaware attention: packed sequences (cu_seq_lens_q/k) need batch 1, got {q.shape[0]}")
    cu_q, cu_k = _offsets(kw, "cu_seq_lens_q"), _offsets(kw, "cu_seq_lens_k")
    max_q, max_k = kw.get("max_length_q"), kw.get("max_length_k")
    # transformers gives the maxima with continuous batching; otherwise reading them costs one sync
    max_q = int((cu_q[1:] - cu_q[:-1]).max()) if max_q is None else max_q
    max_k = int((cu_k[1:] - cu_k[:-1]).max()) if max_k is None else max_k
    if not isinstance(max_q, int) or not isinstance(max_k, int):
        raise UnsupportedError(f"ioaware attention: max_length_q/k must be ints, got {type(max_q).__name__}, "
                               f"{type(max_k).__name__}")
    out = flash_attn_varlen(q[0], k[0], v[0], cu_q, cu_k, max(max_q, 1), max(max_k, 1), **opts)
    return out.unsqueeze(0)


def _trash_page(cache: Any, layer_idx: int | None) -> int | None:
    """The page of the layer's paged cache that padding tokens may write to (transformers' "write trash"); None if
    the cache does not say."""
    try:
        alloc = cache.layer_to_allocator[layer_idx]
        return int(alloc.write_trash_index) // int(alloc.tokens_per_page)
    except (AttributeError, KeyError, TypeError, IndexError):
        return None


def _paged_decode(module, q, k, v, kw, opts):
    """Continuous batching's decode fast path: one new token per request, the layer's cache as pages (num_pages,
    page_size, kv_heads, head_dim) addressed by block_table (requests, pages); the new keys are appended in place
    by flash_attn_with_kvcache, as transformers' flash path does."""
    from .kvcache import flash_attn_with_kvcache

    k_cache, v_cache, block_table = kw.get("k_cache"), kw.get("v_cache"), kw.get("block_table")
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache), ("block_table", block_table)):
        if not isinstance(t, torch.Tensor):
            raise UnsupportedError(f"ioaware attention: a paged call needs {name} as a tensor, got {type(t).__name__}")
    assert isinstance(block_table, torch.Tensor)  # for the type checker
    if q.shape[0] != 1:
        raise UnsupportedError(f"ioaware attention: a paged call needs packed tokens (batch 1), got {q.shape[0]}")
    if opts["dropout_p"]:
        raise UnsupportedError("ioaware attention: dropout with a paged KV cache (inference only) is not supported")
    n = q.shape[1]
    cu_k = _offsets(kw, "cu_seq_lens_k")
    if cu_k.shape[0] < n + 1:
        raise UnsupportedError(f"ioaware attention: the paged path takes one query token per request; got {n} tokens "
                               f"for {cu_k.shape[0] - 1} requests")
    # cu_seq_lens_k counts the new token; rows that CUDA-graph padding adds have length 0 (-1 here): they write their
    # garbage token into the cache's trash page instead, as transformers' index path does (no host sync)
    lens = (cu_k[1:n + 1] - cu_k[:n] - 1)
    pad = lens < 0
    trash = _trash_page(kw.get("cache"), getattr(module, "layer_idx", None))
    if trash is not None:
        first = torch.arange(block_table.shape[1], device=block_table.device) == 0
        block_table = torch.where(pad[:, None] & first[None, :], torch.full_like(block_table, trash), block_table)
    out = flash_attn_with_kvcache(q[0].unsqueeze(1), k_cache, v_cache, k[0].unsqueeze(1), v[0].unsqueeze(1),
                                  cache_seqlens=lens.clamp(min=0).to(torch.int32), block_table=block_table,
                                  softmax_scale=opts["softmax_scale"], causal=opts["causal"],
                                  window_size=opts["window_size"], softcap=opts["softcap"])
    assert isinstance(out, torch.Tensor)  # no return_softmax_lse
    return out.view(1, n, *out.shape[2:])


def _teach_flash_loader(name: str) -> bool:
    """transformers loads the functions of any implementation whose name contains "flash" (at from_pretrained,
    set_attn_implementation, and to decide continuous batching's decode fast path) through
    `modeling_flash_attention_utils._lazy_imports`, which knows only flash-attn's packages and Hub kernels. Wrap it
    once so that `name` resolves to ioaware.flash_attn_interface; False where this transformers has no such hook."""
    try:
        import transformers.modeling_flash_attention_utils as mfu
    except ImportError:
        return False
    lazy = getattr(mfu, "_lazy_imports", None)
    if lazy is None or not all(hasattr(mfu, a) for a in ("_pad_input", "_unpad_input")):
        return False
    names: set[str] | None = getattr(lazy, "_ioaware_names", None)
    if names is None:
        original, names = lazy, set()

        def _lazy_imports(implementation: str | None, attention_wrapper: Any = None,
                          allow_all_kernels: bool = False) -> tuple[Any, ...]:
            if implementation in _lazy_imports._ioaware_names:  # type: ignore[attr-defined]
                from .interface import flash_attn_func, flash_attn_varlen_func
                from .kvcache import flash_attn_with_kvcache
                return flash_attn_func, flash_attn_varlen_func, flash_attn_with_kvcache, mfu._pad_input, \
                    mfu._unpad_input
            return original(implementation, attention_wrapper, allow_all_kernels=allow_all_kernels)

        _lazy_imports._ioaware_names = names  # type: ignore[attr-defined]
        mfu._lazy_imports = _lazy_imports
    names.add(name)
    return True


def register_transformers(name: str = NAME, paged_name: str | None = PAGED_NAME) -> str:
    """Register `attention_forward` (and flash-attention's mask builder) with transformers under `name`; returns
    it, for `from_pretrained(..., attn_implementation=name)`. Needs transformers (the `test` extra).

    Also under `paged_name` (default "ioaware_flash_attention_2"; None: not), the same function under a name
    continuous batching (`model.generate_batch`, `init_continuous_batching`) accepts: transformers 5.x allows only
    names containing "flash" there, and loads their functions through its flash-attention loader, which is taught
    this name (ioaware.flash_attn_interface's functions). Where this transformers has no such loader the paged name
    is not registered (a warning says so).

    Examples:
        >>> import ioaware.flash_attn_interface as fai
        >>> fai.register_transformers()
        'ioaware'
        >>> from transformers import AttentionInterface
        >>> "ioaware_flash_attention_2" in AttentionInterface()
        True
    """
    if paged_name is not None and "flash" not in paged_name:
        raise ValueError(f"register_transformers: transformers' continuous batching accepts only names containing "
                         f"'flash'; got paged_name={paged_name!r}")
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask
    except ImportError as e:
        raise UnsupportedError(f"register_transformers needs a transformers with AttentionInterface ({e})") from None
    AttentionInterface.register(name, attention_forward)
    AttentionMaskInterface.register(name, flash_attention_mask)
    if paged_name is not None:
        if _teach_flash_loader(paged_name):
            AttentionInterface.register(paged_name, attention_forward)
            AttentionMaskInterface.register(paged_name, flash_attention_mask)
        else:
            import warnings

            warnings.warn(f"register_transformers: this transformers has no flash-attention loader to teach "
                          f"(modeling_flash_attention_utils._lazy_imports); {paged_name!r} is not registered",
                          stacklevel=2)
    return name
