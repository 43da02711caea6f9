"""Tensor parallelism for the runtime's Llama, applied to a built `ioaware.runtime.Transformer` in place.

Per rank r of N (Megatron-LM's split, gpt-fast's style of doing it after construction):
    wqkv   column-parallel: the query heads of this rank's KV heads, and those KV heads (KV heads split across ranks,
           as evenly as they go: SmolLM2's 3 KV heads over 2 ranks are 2 + 1, with their 6 + 3 query heads)
    wo     row-parallel: the columns of this rank's query heads, then an all-reduce of the partial sums, tiled
           (FastAttention's tiling-AllReduce: tile i's all-reduce runs while tile i+1 computes)
    w13    column-parallel: this rank's slice of the gate and up rows;  w2 row-parallel, tiled the same way
    tok_embeddings / output   vocab-parallel: rank r holds a contiguous slice of the vocabulary; the lookup zeroes
           ids outside it and all-reduces, the head all-gathers the logits (tied weights stay tied)
    norms  replicated. The KV cache holds this rank's KV heads only (model.args is the rank's local shape).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..errors import UnsupportedError
from ..iomodel.tiling import choose_tiles, link_for, projection_compute_s
from ..kernels import flat_linear
from ..runtime.llm.model import Linear, Transformer


def split_sizes(n: int, world: int) -> list[int]:
    """n items over world ranks as evenly as they go, the first ranks taking one more."""
    base, extra = divmod(n, world)
    return [base + (r < extra) for r in range(world)]


def _span(n: int, world: int, rank: int) -> tuple[int, int]:
    sizes = split_sizes(n, world)
    start = sum(sizes[:rank])
    return start, start + sizes[rank]


def _mm(x: torch.Tensor, w: torch.Tensor, flat: bool) -> torch.Tensor:
    if flat and x.is_cuda:
        y = flat_linear(x.reshape(-1, x.shape[-1]), w)  # (rows, out)
        return y.view(*x.shape[:-1], y.shape[-1])
    return F.linear(x, w)


def tiled_all_reduce(x: torch.Tensor, weight: torch.Tensor, tiles: int, group=None, flat: bool = False):
    """sum over ranks of x @ weight^T, the output features cut into `tiles`: each tile's all-reduce is started
    (async) as soon as the tile is computed, so it runs while the next tile computes. On CUDA, NCCL runs the
    collectives on its own stream; `wait()` makes the compute stream wait only at the end."""
    out = weight.shape[0]
    tiles = max(1, min(int(tiles), out))
    if tiles == 1:
        y = _mm(x, weight, flat)
        dist.all_reduce(y, group=group)
        return y
    parts, works, start = [], [], 0
    for n in split_sizes(out, tiles):
        y = _mm(x, weight[start:start + n], flat)  # (..., n) contiguous: all-reduced in place
        works.append(dist.all_reduce(y, group=group, async_op=True))
        parts.append(y)
        start += n
    for w in works:
        w.wait()
    return torch.cat(parts, dim=-1)


class RowParallelLinear(Linear):
    """y = all_reduce(x_local @ W_local^T): W's input columns split over the ranks. `tiles`: an int, or 'auto'
    (the iomodel's choice for the call's row count, `ioaware.iomodel.tiling`)."""

    def __init__(self, weight: torch.Tensor, group=None, tiles: int | str = "auto"):
        super().__init__(weight.shape[1], weight.shape[0], bias=False, device="meta")
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.group, self.tiles = group, tiles
        self.world = dist.get_world_size(group)
        self._plan: dict[int, int] = {}
        self._spec = None

    def tiles_for(self, rows: int) -> int:
        if self.tiles != "auto":
            return int(self.tiles)
        if rows not in self._plan:
            if self._spec is None:
                from ..hardware.detect import detect

                self._spec = detect(self.weight.device.type)
            w = self.weight
            dt = str(w.dtype).replace("torch.", "")
            try:
                comp = projection_compute_s(rows, w.shape[1], w.shape[0], w.element_size(), self._spec, dt)
            except ValueError:  # no peak listed for this dtype: fp32 rate
                comp = projection_compute_s(rows, w.shape[1], w.shape[0], w.element_size(), self._spec, "float32")
            self._plan[rows] = choose_tiles(comp, rows * w.shape[0] * w.element_size(), self.world,
                                            link_for(w.device.type))
        return self._plan[rows]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        return tiled_all_reduce(x, self.weight, self.tiles_for(rows), self.group, self.flat)


class VocabParallelEmbedding(nn.Module):
    """Rows [start, stop) of the embedding on this rank; ids outside give zeros, the all-reduce fills them in."""

    def __init__(self, weight: torch.Tensor, start: int, vocab: int, group=None):
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.start, self.stop, self.vocab, self.group = start, start + weight.shape[0], vocab, group

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mine = (ids >= self.start) & (ids < self.stop)
        local = torch.where(mine, ids - self.start, torch.zeros_like(ids))
        y = F.embedding(local, self.weight) * mine[..., None].to(self.weight.dtype)  # (B, T, dim)
        dist.all_reduce(y, group=self.group)
        return y


class VocabParallelHead(Linear):
    """Logits of this rank's vocabulary slice, all-gathered into the full (..., vocab) on every rank (so every
    rank samples the same token). Uneven slices are padded for the gather and trimmed."""

    def __init__(self, weight: torch.Tensor, sizes: list[int], group=None):
        super().__init__(weight.shape[1], weight.shape[0], bias=False, device="meta")
        self.weight = nn.Parameter(weight, requires_grad=False) if not isinstance(weight, nn.Parameter) else weight
        self.sizes, self.group = sizes, group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)  # (..., vocab_local)
        m = max(self.sizes)
        if y.shape[-1] < m:
            y = F.pad(y, (0, m - y.shape[-1]))
        parts = [torch.empty_like(y) for _ in self.sizes]
        dist.all_gather(parts, y.contiguous(), group=self.group)
        return torch.cat([p[..., :n] for p, n in zip(parts, self.sizes, strict=True)], dim=-1)


def shard_transformer(model: Transformer, group=None, tiles: int | str = "auto") -> Transformer:
    """Shard `model` (dense weights, built on every rank alike: same checkpoint, or meta) for this rank, in place.
    Returns it, with `model.tp` describing the split and `model.args` the rank's local shape."""
    if not (dist.is_available() and dist.is_initialized()):
        raise UnsupportedError("shard_transformer: torch.distributed is not initialised (run under torchrun)")
    if getattr(model, "tp", None):
        raise UnsupportedError("shard_transformer: this model is already sharded")
    if getattr(model, "weight_format", "dense") != "dense":
        raise UnsupportedError("tensor parallelism needs dense weights (--weights dense); packed 4-bit weights "
                               "are not sharded")
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    a = model.args
    H, Hkv, D = a.n_heads, a.n_kv_heads, a.head_dim
    if world > Hkv:
        raise UnsupportedError(f"tensor parallelism over {world} ranks needs at least {world} KV heads; this model "
                               f"has {Hkv} (use --nproc-per-node <= {Hkv})")
    g = H // Hkv
    k0, k1 = _span(Hkv, world, rank)  # this rank's KV heads; its query heads are their groups
    hid0, hid1 = _span(a.hidden_dim, world, rank)
    v_sizes = split_sizes(a.vocab_size, world)
    v0 = sum(v_sizes[:rank])
    with torch.no_grad():
        for layer in model.layers:
            at, ff = layer.attention, layer.feed_forward
            w = at.wqkv.weight  # [q (H*D); k (Hkv*D); v (Hkv*D)] rows
            q = w[k0 * g * D:k1 * g * D]
            k = w[H * D + k0 * D:H * D + k1 * D]
            v = w[(H + Hkv) * D + k0 * D:(H + Hkv) * D + k1 * D]
            at.wqkv.weight = nn.Parameter(torch.cat([q, k, v]).contiguous(), requires_grad=False)
            at.wqkv.out_features = at.wqkv.weight.shape[0]
            at.wo = RowParallelLinear(at.wo.weight[:, k0 * g * D:k1 * g * D].contiguous(), group, tiles)
            at.n_heads, at.n_kv = (k1 - k0) * g, k1 - k0
            w13 = ff.w13.weight  # [gate; up] rows
            h = a.hidden_dim
            ff.w13.weight = nn.Parameter(torch.cat([w13[hid0:hid1], w13[h + hid0:h + hid1]]).contiguous(),
                                         requires_grad=False)
            ff.w13.out_features = ff.w13.weight.shape[0]
            ff.w2 = RowParallelLinear(ff.w2.weight[:, hid0:hid1].contiguous(), group, tiles)
            ff.hidden = hid1 - hid0
        tied = model.output.weight is model.tok_embeddings.weight
        emb = VocabParallelEmbedding(model.tok_embeddings.weight[v0:v0 + v_sizes[rank]].contiguous(), v0,
                                     a.vocab_size, group)
        head_w = emb.weight if tied else model.output.weight[v0:v0 + v_sizes[rank]].contiguous()
        model.tok_embeddings = emb
        model.output = VocabParallelHead(head_w, v_sizes, group)
    model.args = dataclasses.replace(a, n_heads=(k1 - k0) * g, n_kv_heads=k1 - k0, hidden_dim=hid1 - hid0,
                                     head_dim=D)
    model.tp = {"rank": rank, "world": world, "kv_heads": [k0, k1], "q_heads": [k0 * g, k1 * g],
                "hidden": [hid0, hid1], "vocab": [v0, v0 + v_sizes[rank]], "tiles": tiles,
                "full_args": dataclasses.asdict(a)}
    model.set_linear(model.linear_impl)  # the new Linear modules take the model's choice
    return model
