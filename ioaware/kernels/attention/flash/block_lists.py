"""Block-sparse attention's block lists, built on the host side in plain PyTorch (no Triton here).

A block mask (..., n_rows, n_cols) of bools becomes, per block row, the number of non-empty column blocks and their
column indices, non-empty first (int32), as FlexAttention's BlockMask stores them. masked.py's kernels (and hopper.py's
block-sparse kernels, through masked.py) walk these lists; the backward's dK/dV walks the lists of the transposed mask.

Lists are reused while the mask is unchanged (every training step, every benchmark round passes the same mask): an
LRU of SPARSE_CACHE_SIZE entries keyed on the mask's memory, version counter (bumped by every in-place write), shape,
strides, dtype, device and the current stream. An entry holds the mask itself, so its memory cannot be freed and
reused by another tensor while the key is live. Not used while a CUDA graph is being captured (the lists are then
built inside the graph, whose memory pool must not leak into the cache) nor for tensors without a version counter
(inference mode). IOAWARE_SPARSE_CACHE=0 (read at import, through ioaware.env) or `sparse_cache(False)` turns it off.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from ....env import settings

SPARSE_CACHE_SIZE = 8
SPARSE_CACHE: OrderedDict = OrderedDict()  # key -> (mask, count, indices), least recently used first
_SPARSE_CACHE_ON = [settings().sparse_cache]


def sparse_index(block_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of the block mask (..., n_rows, n_cols): the number of non-empty blocks and their column indices,
    non-empty first (int32), as FlexAttention's BlockMask stores them."""
    bm = block_mask.to(torch.bool)
    cnt = bm.sum(-1, dtype=torch.int32).contiguous()
    idx = torch.argsort((~bm).to(torch.int8), dim=-1, stable=True).to(torch.int32).contiguous()
    return cnt, idx


def sparse_cache(on: bool | None = None) -> bool:
    """Turn the block-list cache on/off (None: leave it); returns the previous setting. Turning it off clears it."""
    prev = _SPARSE_CACHE_ON[0]
    if on is not None:
        _SPARSE_CACHE_ON[0] = bool(on)
        if not on:
            SPARSE_CACHE.clear()
    return prev


def _mask_key(blk: torch.Tensor):
    """The cache key of a block mask, or None where it cannot be cached."""
    try:
        version = blk._version
    except RuntimeError:  # inference tensors track no version
        return None
    stream = 0
    if blk.is_cuda:
        if torch.cuda.is_current_stream_capturing():
            return None
        stream = torch.cuda.current_stream(blk.device).stream_id
    return blk.data_ptr(), version, tuple(blk.shape), blk.stride(), blk.dtype, blk.device, stream


def sparse_index_cached(blk: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`sparse_index(blk)`, from the cache when the same mask was seen unchanged."""
    key = _mask_key(blk) if _SPARSE_CACHE_ON[0] else None
    if key is None:
        return sparse_index(blk)
    hit = SPARSE_CACHE.get(key)
    if hit is not None:
        SPARSE_CACHE.move_to_end(key)
        return hit[1], hit[2]
    cnt, idx = sparse_index(blk)
    SPARSE_CACHE[key] = (blk, cnt, idx)
    while len(SPARSE_CACHE) > SPARSE_CACHE_SIZE:
        SPARSE_CACHE.popitem(last=False)
    return cnt, idx


def sparse_args(blk: torch.Tensor | None, dummy: torch.Tensor) -> tuple:
    """(count, indices, their (batch, head, row) strides) for the kernels; 0 strides on broadcast dimensions."""
    if blk is None:
        return dummy, dummy, (0, 0, 0), (0, 0, 0)
    cnt, idx = sparse_index_cached(blk)
    st = lambda t: (t.stride(0) if blk.shape[0] > 1 else 0, t.stride(1) if blk.shape[1] > 1 else 0, t.stride(2))
    return cnt, idx, st(cnt), st(idx)


__all__ = ["SPARSE_CACHE", "SPARSE_CACHE_SIZE", "sparse_args", "sparse_cache", "sparse_index", "sparse_index_cached"]
