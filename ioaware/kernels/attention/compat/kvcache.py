"""flash-attn 2's `flash_attn_with_kvcache` on ioaware's kernels.

Two paths, one result:
- decode path: `flash_decode` (split-KV, contiguous or paged cache, in-place append) when the call needs nothing
  it lacks: up to 16 query tokens, no ALiBi, no local window, no softcap, no cache_leftpad. cache_batch_idx on a
  contiguous cache becomes a block table over the same memory (the cache viewed as pages of a divisor of its
  length), so no cache row is copied.
- gather path, for everything else (ALiBi, a window, softcap, cache_leftpad, > 16 query tokens = chunked prefill
  against a cache, pages > 256 tokens): k/v are appended in place in PyTorch, each row's live keys
  [cache_leftpad, cache_seqlens + seqlen_new) are gathered into a packed tensor and `flash_attn_varlen` attends
  with every mask option. Exact, but it copies the live cache once and reads the lengths on the host (a sync on
  a GPU): the price of the features, not a fast decode step.
Rotary embedding (rotary_cos/sin) is applied in PyTorch before either path: the new keys are rotated before they
are written into the cache, the queries only for the call (the caller's q and k are not modified).

Bad indices never reach a kernel: on the CPU (and wherever the lengths are read anyway) every check runs on the
host and raises ShapeError; on a GPU's decode path, where reading cache_seqlens back would stall each step, the
same checks run as one device-side assertion queued before the launch.
"""

from __future__ import annotations

import math

import torch

from ....errors import DeviceError, DTypeError, ShapeError, UnsupportedError
from ..decode import flash_decode
from ..flash import flash_attn_varlen
from .rotary import apply_rotary

OP = "flash_attn_with_kvcache"
MAX_DECODE_TQ = 16  # flash_decode packs GROUP x Tq query rows into one tile; more rows go through the gather path
MAX_DECODE_PAGE = 256


def _int_vec(name: str, t: object, B: int, device: torch.device) -> torch.Tensor | None:
    if t is None:
        return None
    if not isinstance(t, torch.Tensor) or t.dtype not in (torch.int32, torch.int64) or tuple(t.shape) != (B,):
        raise ShapeError(f"{OP}: {name} must be an int32 tensor of shape ({B},), got "
                         f"{getattr(t, 'dtype', type(t).__name__)} {tuple(getattr(t, 'shape', ()))}")
    if t.device != device:
        raise DeviceError(f"{OP}: {name} is on {t.device}, q on {device}")
    return t


def _check_shapes(q, k_cache, v_cache, k, v, rotary_cos, rotary_sin, block_table):
    for name, t in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache), ("k", k), ("v", v)):
        if t is not None and (not isinstance(t, torch.Tensor) or t.dim() != 4):
            raise ShapeError(f"{OP}: {name} must be a 4-D tensor, got "
                             f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
    if (k is None) != (v is None):
        raise ValueError(f"{OP}: give both k and v (the new tokens to append), or neither")
    B, Tq, Hq, D = q.shape
    if k_cache.shape != v_cache.shape:
        raise ShapeError(f"{OP}: k_cache {tuple(k_cache.shape)} and v_cache {tuple(v_cache.shape)} differ")
    if k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1:
        raise ShapeError(f"{OP}: k_cache and v_cache must have a contiguous last dimension")
    Hkv, Dk = k_cache.shape[2:]
    if Dk != D:
        raise ShapeError(f"{OP}: head dims differ: q has {D}, the cache {Dk}")
    if Hkv == 0 or Hq % Hkv:
        raise ShapeError(f"{OP}: query heads ({Hq}) must be a multiple of the cache's KV heads ({Hkv})")
    if k is not None and (k.shape != v.shape or k.shape[0] != B or tuple(k.shape[2:]) != (Hkv, D)):
        raise ShapeError(f"{OP}: k and v must be (batch={B}, seqlen_new, nheads_k={Hkv}, headdim={D}), got "
                         f"{tuple(k.shape)} and {tuple(v.shape)}")
    tensors = {"q": q, "k_cache": k_cache, "v_cache": v_cache, **({"k": k, "v": v} if k is not None else {})}
    dtypes = {t.dtype for t in tensors.values()}
    if len(dtypes) != 1:
        raise DTypeError(f"{OP}: {', '.join(tensors)} must share a dtype, got "
                         f"{', '.join(str(t.dtype) for t in tensors.values())}")
    if len({t.device for t in tensors.values()}) != 1:
        raise DeviceError(f"{OP}: {', '.join(tensors)} must be on one device")
    if (rotary_cos is None) != (rotary_sin is None):
        raise ValueError(f"{OP}: give both rotary_cos and rotary_sin, or neither")
    if rotary_cos is not None:
        if k is None:
            raise ValueError(f"{OP}: rotary_cos/rotary_sin need k and v (the new tokens are rotated as they are "
                             "appended), as in flash-attn")
        if rotary_cos.dim() != 2 or rotary_cos.shape != rotary_sin.shape or not 1 <= 2 * rotary_cos.shape[1] <= D:
            raise ShapeError(f"{OP}: rotary_cos and rotary_sin must both be (seqlen_ro, rotary_dim / 2) with "
                             f"rotary_dim <= headdim {D}, got {tuple(rotary_cos.shape)} and {tuple(rotary_sin.shape)}")
        if rotary_cos.device != q.device or rotary_sin.device != q.device:
            raise DeviceError(f"{OP}: rotary_cos/rotary_sin must be on {q.device}")
    if block_table is not None:
        if not isinstance(block_table, torch.Tensor) or block_table.dtype not in (torch.int32, torch.int64) \
                or block_table.dim() != 2 or block_table.shape[0] != B:
            raise ShapeError(f"{OP}: block_table must be an int32 tensor (batch={B}, max_num_blocks_per_seq), got "
                             f"{getattr(block_table, 'dtype', type(block_table).__name__)} "
                             f"{tuple(getattr(block_table, 'shape', ()))}")
        if block_table.device != q.device:
            raise DeviceError(f"{OP}: block_table is on {block_table.device}, q on {q.device}")


def _problems(lens, Tnew, Tq, cap, leftpad, batch_idx, n_rows, block_table, n_pages, page, ro_len, q_pos_span):
    """One bool per check, all on the device (nothing read back): True means that check fails."""
    end = lens.long() + Tnew
    bad = {"cache_seqlens negative": (lens < 0).any(),
           f"cache_seqlens + seqlen_new beyond the cache's capacity {cap}": (end > cap).any()}
    start = torch.zeros_like(end) if leftpad is None else leftpad.long()
    if leftpad is not None:
        bad["cache_leftpad outside 0..cache_seqlens + seqlen_new"] = ((start < 0) | (start > end)).any()
    if batch_idx is not None:
        bad[f"cache_batch_idx outside 0..{n_rows - 1}"] = ((batch_idx < 0) | (batch_idx >= n_rows)).any()
    if block_table is not None:
        j = torch.arange(block_table.shape[1], device=lens.device)[None, :]
        read = (j >= (start // page)[:, None]) & (j < (-(-end // page))[:, None])  # pages holding live tokens
        bad[f"block_table names a page outside 0..{n_pages - 1} for a live token"] = \
            (read & ((block_table < 0) | (block_table >= n_pages))).any()
    if ro_len is not None:
        bad[f"rotary_cos/rotary_sin have {ro_len} rows, fewer than the positions rotated"] = \
            (lens.long() + max(Tnew, q_pos_span) > ro_len).any()
    return bad


def _raise_or_assert(bad: dict, on_host: bool) -> None:
    if on_host:
        for what, flag in bad.items():
            if bool(flag):
                raise ShapeError(f"{OP}: {what}")
        return
    # a GPU decode step cannot afford a sync: one queued assertion stops the stream before the kernel reads
    ok = ~torch.stack(list(bad.values())).any()
    torch._assert_async(ok, f"{OP}: bad cache indices (one of: {'; '.join(bad)})")


def _append(cache, new, lens, batch_idx, block_table):
    """Write new (B, Tn, Hkv, D) at positions lens[b] + t of each row, in place."""
    B, Tn = new.shape[:2]
    pos = lens.long()[:, None] + torch.arange(Tn, device=new.device)[None, :]  # (B, Tn)
    if block_table is None:
        rows = (batch_idx.long() if batch_idx is not None else torch.arange(B, device=new.device))[:, None]
        cache[rows, pos] = new.to(cache.dtype)
    else:
        page = cache.shape[1]
        cache[torch.gather(block_table.long(), 1, pos // page), pos % page] = new.to(cache.dtype)


def _paged_view(cache: torch.Tensor, batch_idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """A contiguous cache (rows, S, Hkv, D) as pages of P | S tokens and the block table that maps row b to cache
    row batch_idx[b]: cache_batch_idx without copying. None if the memory cannot be viewed so."""
    rows, S = cache.shape[:2]
    P = max(p for p in range(1, min(S, MAX_DECODE_PAGE) + 1) if S % p == 0)
    try:
        pages = cache.view(rows * (S // P), P, *cache.shape[2:])
    except RuntimeError:
        return None
    bt = batch_idx.long()[:, None] * (S // P) + torch.arange(S // P, device=cache.device)[None, :]
    return pages, bt.to(torch.int32)


def _gather_live(cache, batch_idx, block_table, b_idx, pos):
    if block_table is None:
        rows = batch_idx.long()[b_idx] if batch_idx is not None else b_idx
        return cache[rows, pos]
    page = cache.shape[1]
    return cache[block_table.long()[b_idx, pos // page], pos % page]


def flash_attn_with_kvcache(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                            k: torch.Tensor | None = None, v: torch.Tensor | None = None,
                            rotary_cos: torch.Tensor | None = None, rotary_sin: torch.Tensor | None = None,
                            cache_seqlens: int | torch.Tensor | None = None,
                            cache_batch_idx: torch.Tensor | None = None, cache_leftpad: torch.Tensor | None = None,
                            block_table: torch.Tensor | None = None, softmax_scale: float | None = None,
                            causal: bool = False, window_size: tuple[int, int] = (-1, -1), softcap: float = 0.0,
                            rotary_interleaved: bool = True, alibi_slopes: torch.Tensor | None = None,
                            num_splits: int = 0, return_softmax_lse: bool = False
                            ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """flash-attn 2's `flash_attn_with_kvcache`: attention of q (batch, seqlen_q, nheads, headdim) against a KV cache,
    appending k/v (batch, seqlen_new, nheads_k, headdim) in place at cache_seqlens first.

    k_cache, v_cache: (batch_size_cache, seqlen_cache, nheads_k, headdim), or (num_blocks, page_block_size, nheads_k,
    headdim) with block_table (batch, max_num_blocks_per_seq). cache_seqlens: int or (batch,) int32, tokens in the
    cache before the append (None: the whole cache). cache_batch_idx: (batch,) cache rows to use. cache_leftpad:
    (batch,) first live cache position per row. rotary_cos/sin: (seqlen_ro, rotary_dim / 2): the new keys are
    rotated at positions cache_seqlens + t and written rotated; q is rotated at cache_seqlens + t if causal or local,
    else at cache_seqlens. Masks (causal, window_size) are bottom-right aligned on the live keys. Inference only.
    Returns out, or (out, softmax_lse (batch, nheads, seqlen_q)) with return_softmax_lse=True.

    Examples:
        >>> import torch
        >>> from ioaware.flash_attn_interface import flash_attn_with_kvcache
        >>> kc = torch.zeros(2, 32, 2, 16); vc = torch.zeros(2, 32, 2, 16)
        >>> q = torch.randn(2, 1, 4, 16); kn = torch.randn(2, 1, 2, 16); vn = torch.randn(2, 1, 2, 16)
        >>> lens = torch.tensor([5, 0], dtype=torch.int32)
        >>> flash_attn_with_kvcache(q, kc, vc, kn, vn, cache_seqlens=lens, causal=True).shape
        torch.Size([2, 1, 4, 16])
    """
    if not isinstance(q, torch.Tensor):
        raise TypeError(f"{OP}: q must be a torch.Tensor, got {type(q).__name__}")
    _check_shapes(q, k_cache, v_cache, k, v, rotary_cos, rotary_sin, block_table)
    B, Tq, Hq, D = q.shape
    Tnew = 0 if k is None else k.shape[1]
    dev = q.device
    if block_table is not None and cache_batch_idx is not None:
        raise UnsupportedError(f"{OP}: cache_batch_idx with a paged cache (block_table) is not supported, as in "
                               "flash-attn; select rows through block_table instead")
    n_rows, S = k_cache.shape[:2]
    cap = S if block_table is None else block_table.shape[1] * S
    if block_table is None and cache_batch_idx is None and n_rows != B:
        raise ShapeError(f"{OP}: a contiguous cache without cache_batch_idx needs batch {B} in dim 0, got {n_rows}")
    if isinstance(cache_seqlens, int):
        cache_seqlens = torch.full((B,), cache_seqlens, dtype=torch.int32, device=dev)
    elif cache_seqlens is None:
        if k is not None:
            raise ValueError(f"{OP}: appending k and v needs cache_seqlens (where they go)")
        cache_seqlens = torch.full((B,), cap, dtype=torch.int32, device=dev)
    lens = _int_vec("cache_seqlens", cache_seqlens, B, dev)
    assert lens is not None  # cache_seqlens was filled in above; for the type checker
    batch_idx = _int_vec("cache_batch_idx", cache_batch_idx, B, dev)
    leftpad = _int_vec("cache_leftpad", cache_leftpad, B, dev)
    if not isinstance(num_splits, int) or num_splits < 0:
        raise ValueError(f"{OP}: num_splits must be an int >= 0 (0 = heuristic), got {num_splits!r}")
    try:
        wl, wr = (max(int(w), -1) for w in window_size)
    except (TypeError, ValueError):
        raise ValueError(f"{OP}: window_size must be a pair of ints (left, right), got {window_size!r}") from None
    # flash-attn's normalisation: causal forces right = 0; a side as long as the cache is no limit
    wr = 0 if causal else wr
    wl, wr = (-1 if w >= cap else w for w in (wl, wr))
    causal = wl < 0 and wr == 0
    local = not causal and (wl >= 0 or wr >= 0)
    softcap = float(softcap)
    scale = float(softmax_scale) if softmax_scale is not None else 1.0 / math.sqrt(D)

    decode = Tq <= MAX_DECODE_TQ and not local and alibi_slopes is None and softcap == 0 and leftpad is None \
        and (block_table is None or S <= MAX_DECODE_PAGE)
    on_host = dev.type == "cpu" or not decode  # the gather path reads the lengths back anyway
    ro_len = None if rotary_cos is None else rotary_cos.shape[0]
    q_span = Tq if (causal or local) else 1
    bad = _problems(lens, Tnew, Tq, cap, leftpad, batch_idx, n_rows, block_table, k_cache.shape[0], S, ro_len, q_span)
    _raise_or_assert(bad, on_host and not torch.compiler.is_compiling())  # a traced step cannot read values

    if rotary_cos is not None:
        # _check_shapes made sure rotary_sin, k and v come with rotary_cos; for the type checker:
        assert rotary_sin is not None and k is not None
        t = torch.arange(max(Tq, Tnew), device=dev)[None, :]
        k_pos = lens.long()[:, None] + t[:, :Tnew]
        q_pos = lens.long()[:, None] + (t[:, :Tq] if (causal or local) else 0 * t[:, :Tq])
        k = apply_rotary(k, rotary_cos, rotary_sin, k_pos, rotary_interleaved)
        q = apply_rotary(q, rotary_cos, rotary_sin, q_pos, rotary_interleaved)

    if decode:
        kc, vc, bt = k_cache, v_cache, block_table
        if batch_idx is not None:
            kview, vview = _paged_view(k_cache, batch_idx), _paged_view(v_cache, batch_idx)
            if kview is None or vview is None:
                decode = False
            else:
                (kc, bt), (vc, _) = kview, vview
        if decode:
            out, lse = flash_decode(q, kc, vc, lens, bt, k_new=k, v_new=v, softmax_scale=scale, causal=causal,
                                    num_splits=num_splits or None, return_lse=True)
            return (out, lse) if return_softmax_lse else out

    if k is not None:
        _append(k_cache, k, lens, batch_idx, block_table)
        _append(v_cache, v, lens, batch_idx, block_table)
    end = lens.long() + Tnew
    start = torch.zeros_like(end) if leftpad is None else leftpad.long()
    n = end - start
    total, max_k = int(n.sum()), int(n.max())
    if total == 0:  # no live key anywhere: flash-attn's convention for an empty row
        out = torch.zeros_like(q)
        lse = torch.full((B, Hq, Tq), float("-inf"), device=dev)
        return (out, lse) if return_softmax_lse else out
    b_idx = torch.repeat_interleave(torch.arange(B, device=dev), n, output_size=total)
    cu_k = torch.zeros(B + 1, dtype=torch.int32, device=dev)
    cu_k[1:] = torch.cumsum(n, 0)
    pos = start[b_idx] + torch.arange(total, device=dev) - cu_k.long()[b_idx]
    kp = _gather_live(k_cache, batch_idx, block_table, b_idx, pos)
    vp = _gather_live(v_cache, batch_idx, block_table, b_idx, pos)
    cu_q = torch.arange(B + 1, dtype=torch.int32, device=dev) * Tq
    out, lse = flash_attn_varlen(q.reshape(B * Tq, Hq, D), kp, vp, cu_q, cu_k, Tq, max(max_k, 1), causal=causal,
                                 softmax_scale=scale, return_lse=True, window_size=(wl, wr), alibi_slopes=alibi_slopes,
                                 softcap=softcap)
    out = out.view(B, Tq, Hq, D)
    lse = lse.view(Hq, B, Tq).transpose(0, 1).contiguous()
    return (out, lse) if return_softmax_lse else out
