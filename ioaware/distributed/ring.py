"""Context-parallel exact attention: each rank holds a slice of the sequence (q, k, v), the K/V slices travel.

ring:      K/V blocks pass around the ring with isend/irecv while the block already here is computed; the
           backward sends K/V around again, with the dK/dV accumulators one hop behind them.
allgather: one async all-gather of K/V; the rank's own (diagonal) block computes while it runs; the remote blocks
           follow in one call per query chunk; the backward reduce-scatters dK/dV to their owners.

Partial results are merged by their log-sum-exp in fp32 (out = sum_i exp(lse_i - lse) out_i); the backward uses
the merged out and LSE, so every block's gradient is exact (FlashAttention-2's backward with the global statistics).

Causal load balance (zig-zag): the sequence is cut into 2N chunks and rank r holds chunks r and 2N-1-r, so every
ring step costs the same half block: an earlier source is seen by both query chunks through its first chunk only,
a later source by the second query chunk only, and the rank's own block is one causal call.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from ..errors import DeviceError, ShapeError, UnsupportedError
from ..kernels import attention_ref, flash_attn
from ..kernels._dispatch import backend_for, load_kernel_module
from ..kernels.attention.flash.reference import causal_mask

LAYOUTS = ("zigzag", "contiguous")
VARIANTS = ("ring", "allgather")
LOCALS = ("auto", "flash_attn", "reference")


# ------------------------------------------------------------------------------------------------ sharding helpers
def chunks_of(rank: int, world: int, layout: str) -> list[int]:
    """Global chunk indices a rank holds, in its local order (the sequence is cut into 2N chunks for zig-zag)."""
    return [rank, 2 * world - 1 - rank] if layout == "zigzag" else [rank]


def shard_sequence(x: torch.Tensor, rank: int, world: int, layout: str = "zigzag", dim: int = 1) -> torch.Tensor:
    """This rank's slice of a full sequence tensor (a contiguous copy)."""
    n = 2 * world if layout == "zigzag" else world
    if x.shape[dim] % n:
        raise ShapeError(f"shard_sequence: length {x.shape[dim]} is not a multiple of {n} chunks "
                         f"({layout}, {world} ranks); pad the sequence")
    parts = x.chunk(n, dim=dim)
    return torch.cat([parts[c] for c in chunks_of(rank, world, layout)], dim=dim).contiguous()


def unshard_sequence(shards: list[torch.Tensor], layout: str = "zigzag", dim: int = 1) -> torch.Tensor:
    """The full sequence from every rank's slice (rank order), inverting `shard_sequence`."""
    world = len(shards)
    n_local = 2 if layout == "zigzag" else 1
    chunks: dict[int, torch.Tensor] = {}
    for r, s in enumerate(shards):
        for c, part in zip(chunks_of(r, world, layout), s.chunk(n_local, dim=dim), strict=True):
            chunks[c] = part
    return torch.cat([chunks[c] for c in sorted(chunks)], dim=dim)


# ------------------------------------------------------------------------------------------------ local kernels
def use_kernel(local: str, device: torch.device) -> bool:
    if local == "auto":
        return backend_for(device.type) != "reference"
    return local == "flash_attn"


def local_fwd(q, k, v, causal: bool, scale: float, kernel: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One block: (out (B, Tq, H, D) in q's dtype, lse (B, H, Tq) fp32). kernel: ioaware.flash_attn (Triton on
    CUDA, the interpreter under IOAWARE_INTERPRET); else the PyTorch reference (any float dtype, fp64 included)."""
    if kernel:
        with torch.no_grad():
            return flash_attn(q, k, v, causal=causal, softmax_scale=scale, return_lse=True)
    if q.dtype in (torch.float16, torch.bfloat16):
        o, lse = attention_ref(q, k, v, causal, scale)  # computed in fp32
        return o, lse.float()
    # fp32/fp64 inputs: computed in fp64, the LSE kept in fp64 for fp64 inputs (attention_ref's is fp32)
    g = q.shape[2] // k.shape[2]
    q64, k64, v64 = q.double(), k.double(), v.double()
    s = torch.einsum("bqhd,bkhd->bhqk", q64, k64.repeat_interleave(g, dim=2)) * scale  # (B, H, Tq, Tk)
    if causal:
        s = s.masked_fill(~causal_mask(q.shape[1], k.shape[1], q.device), float("-inf"))
    lse = torch.logsumexp(s, dim=-1)  # (B, H, Tq)
    p = torch.nan_to_num(torch.exp(s - lse[..., None]), nan=0.0)
    o = torch.einsum("bhqk,bkhd->bqhd", p, v64.repeat_interleave(g, dim=2))
    return o.to(q.dtype), lse if q.dtype == torch.float64 else lse.float()


def local_bwd(do, q, k, v, o, lse, causal: bool, scale: float, kernel: bool):
    """One block's dq, dk, dv given the *merged* out and LSE of the rows (what makes a block's share exact)."""
    if kernel:
        mod = load_kernel_module("ioaware.kernels.attention.flash.kernel")
        return mod.flash_attn_bwd(do.contiguous(), q, k, v, o.contiguous(), lse.contiguous(), causal, scale)
    return attention_bwd_ref(do, q, k, v, o, lse, causal, scale)


def attention_bwd_ref(do, q, k, v, o, lse, causal: bool, scale: float):
    """FlashAttention-2's backward in PyTorch with given statistics: P = exp(S - lse), dV = P^T dO,
    dS = P * (dO V^T - rowsum(dO * O)), dQ = dS K scale, dK = dS^T Q scale. Computed in fp64 (fp16/bf16: fp32)."""
    B, Tq, Hq, D = q.shape
    Tk, Hkv = k.shape[1], k.shape[2]
    wt = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else torch.float64
    g = Hq // Hkv
    qf, kf, vf, of, dof = (t.to(wt) for t in (q, k, v, o, do))
    kr, vr = kf.repeat_interleave(g, dim=2), vf.repeat_interleave(g, dim=2)
    s = torch.einsum("bqhd,bkhd->bhqk", qf, kr) * scale  # (B, H, Tq, Tk)
    if causal:
        r = torch.arange(Tq, device=q.device)[:, None]
        c = torch.arange(Tk, device=q.device)[None, :]
        s = s.masked_fill(c > r + (Tk - Tq), float("-inf"))
    p = torch.exp(s - lse.to(wt)[..., None])  # (B, H, Tq, Tk); rows with lse = -inf give NaN, zeroed below
    p = torch.nan_to_num(p, nan=0.0)
    dv = torch.einsum("bhqk,bqhd->bkhd", p, dof)  # (B, Tk, H, D)
    dp = torch.einsum("bqhd,bkhd->bhqk", dof, vr)
    delta = (dof * of).sum(-1).transpose(1, 2)  # (B, H, Tq)
    ds = p * (dp - delta[..., None])
    dq = torch.einsum("bhqk,bkhd->bqhd", ds, kr) * scale
    dk = torch.einsum("bhqk,bqhd->bkhd", ds, qf) * scale
    if g > 1:  # sum the query heads that share a KV head
        dk = dk.view(B, Tk, Hkv, g, D).sum(3)
        dv = dv.view(B, Tk, Hkv, g, D).sum(3)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


def merge_into(out: torch.Tensor, lse: torch.Tensor, o_p: torch.Tensor, lse_p: torch.Tensor) -> None:
    """out (B, t, H, D) fp32, lse (B, H, t) fp32 <- their log-sum-exp merge with a partial (o_p, lse_p), in place."""
    new = torch.logaddexp(lse, lse_p)  # (B, H, t); -inf only where both are
    safe = torch.where(torch.isinf(new), torch.zeros_like(new), new)
    w_old = torch.exp(lse - safe).transpose(1, 2)[..., None]  # (B, t, H, 1)
    w_new = torch.exp(lse_p - safe).transpose(1, 2)[..., None]
    out.mul_(w_old).add_(o_p.to(out.dtype) * w_new)
    lse.copy_(new)


# ------------------------------------------------------------------------------------------------ block plans
def block_calls(q_chunks: list[int], kv_chunks: list[int], causal: bool):
    """Which (query rows, key rows, causal) calls cover one (query shard, K/V shard) pair: a list of
    (q_idx, kv_idx, causal) with q_idx/kv_idx positions in the local chunk lists. Equal-length chunks; a query
    chunk sees earlier key chunks whole, its own chunk causally (bottom-right), later ones not at all."""
    if not causal:
        return [(list(range(len(q_chunks))), list(range(len(kv_chunks))), False)]
    if q_chunks == kv_chunks:  # sorted equal chunk lists: one causal call over the concatenation is exact
        return [(list(range(len(q_chunks))), list(range(len(kv_chunks))), True)]
    calls: dict[tuple, list[int]] = {}
    for qi, c in enumerate(q_chunks):
        seen = tuple(j for j, kc in enumerate(kv_chunks) if kc <= c)
        if seen:
            diag = kv_chunks[seen[-1]] == c
            calls.setdefault((seen, diag), []).append(qi)
    out = []
    for (seen, diag), qis in calls.items():
        if diag:  # a diagonal call needs its query chunk alone (bottom-right alignment)
            out.extend(([qi], list(seen), True) for qi in qis)
        else:
            out.append((qis, list(seen), False))
    return out


def _rows(idx: list[int], c: int) -> list[slice]:
    """Merge consecutive chunk positions into row slices."""
    out, start = [], None
    for n, i in enumerate(idx):
        if start is None:
            start = i
        if n + 1 == len(idx) or idx[n + 1] != i + 1:
            out.append(slice(start * c, (i + 1) * c))
            start = None
    return out


def _take(x: torch.Tensor, idx: list[int], c: int) -> torch.Tensor:
    parts = [x[:, s] for s in _rows(idx, c)]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def _take_lse(x: torch.Tensor, idx: list[int], c: int) -> torch.Tensor:
    parts = [x[:, :, s] for s in _rows(idx, c)]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)


def _put(dst: torch.Tensor, idx: list[int], c: int, val: torch.Tensor, dim: int = 1) -> None:
    """dst[rows of idx] += val (val stacks those rows in order)."""
    off = 0
    for s in _rows(idx, c):
        n = s.stop - s.start
        d = dst.narrow(dim, s.start, n)
        d.add_(val.narrow(dim, off, n).to(dst.dtype))
        off += n


def _fwd_block(q, kv, calls, c, out, lse, scale, kernel):
    k, v = kv[0], kv[1]
    for qi, ki, cz in calls:
        o_p, lse_p = local_fwd(_take(q, qi, c), _take(k, ki, c), _take(v, ki, c), cz, scale, kernel)
        o_v, l_v = _take(out, qi, c), _take_lse(lse, qi, c)
        merge_into(o_v, l_v, o_p, lse_p)
        if len(_rows(qi, c)) > 1:  # _take copied: write the merged rows back
            _write(out, qi, c, o_v)
            _write_lse(lse, qi, c, l_v)


def _write(dst, idx, c, val):
    off = 0
    for s in _rows(idx, c):
        n = s.stop - s.start
        dst[:, s] = val[:, off:off + n]
        off += n


def _write_lse(dst, idx, c, val):
    off = 0
    for s in _rows(idx, c):
        n = s.stop - s.start
        dst[:, :, s] = val[:, :, off:off + n]
        off += n


def _bwd_block(do, q, kv, o, lse, calls, c, dq, dkv, scale, kernel):
    k, v = kv[0], kv[1]
    for qi, ki, cz in calls:
        dq_p, dk_p, dv_p = local_bwd(_take(do, qi, c), _take(q, qi, c), _take(k, ki, c), _take(v, ki, c),
                                     _take(o, qi, c), _take_lse(lse, qi, c), cz, scale, kernel)
        _put(dq, qi, c, dq_p)
        _put(dkv[0], ki, c, dk_p)
        _put(dkv[1], ki, c, dv_p)


# ------------------------------------------------------------------------------------------------ communication
class _Ring:
    """This rank's place in the group: rank, world, and the global ranks of its ring neighbours."""

    def __init__(self, group):
        self.group = group
        self.rank, self.world = dist.get_rank(group), dist.get_world_size(group)
        glob = (lambda r: dist.get_global_rank(group, r)) if group is not None else (lambda r: r)
        self.next, self.prev = glob((self.rank + 1) % self.world), glob((self.rank - 1) % self.world)

    def exchange(self, send: torch.Tensor, recv: torch.Tensor, tag: int) -> list:
        """Start sending `send` to the next rank and receiving the previous rank's into `recv`."""
        ops = [dist.P2POp(dist.isend, send, self.next, self.group, tag),
               dist.P2POp(dist.irecv, recv, self.prev, self.group, tag)]
        return dist.batch_isend_irecv(ops)


def _wait(reqs) -> None:
    for r in reqs:
        r.wait()


def _ring_fwd(q, k, v, causal, scale, kernel, ring: _Ring, layout):
    n_local = len(chunks_of(0, 1, layout))
    c = q.shape[1] // n_local
    out = torch.zeros(q.shape, dtype=torch.float32 if q.dtype != torch.float64 else q.dtype, device=q.device)
    lse = torch.full((q.shape[0], q.shape[2], q.shape[1]), float("-inf"), dtype=out.dtype, device=q.device)
    kv = torch.stack([k, v])  # (2, B, T, Hkv, D): one message per hop
    mine = chunks_of(ring.rank, ring.world, layout)
    for step in range(ring.world):
        src = (ring.rank - step) % ring.world
        reqs, nxt = [], None
        if step < ring.world - 1:  # the next block travels while this one computes
            nxt = torch.empty_like(kv)
            reqs = ring.exchange(kv, nxt, tag=0)
        _fwd_block(q, kv, block_calls(mine, chunks_of(src, ring.world, layout), causal), c, out, lse, scale, kernel)
        _wait(reqs)
        kv = nxt if nxt is not None else kv
    return out.to(q.dtype), lse


def _ring_bwd(do, q, k, v, o, lse, causal, scale, kernel, ring: _Ring, layout):
    n_local = len(chunks_of(0, 1, layout))
    c = q.shape[1] // n_local
    wt = torch.float64 if q.dtype == torch.float64 else torch.float32
    dq = torch.zeros(q.shape, dtype=wt, device=q.device)
    kv = torch.stack([k, v])
    mine = chunks_of(ring.rank, ring.world, layout)
    acc_in, acc_reqs = None, []
    for step in range(ring.world):
        src = (ring.rank - step) % ring.world
        reqs, nxt = [], None
        if step < ring.world - 1:
            nxt = torch.empty_like(kv)
            reqs = ring.exchange(kv, nxt, tag=0)
        part = torch.zeros(kv.shape, dtype=wt, device=q.device)  # this rank's dK/dV share of source src
        _bwd_block(do, q, kv, o, lse, block_calls(mine, chunks_of(src, ring.world, layout), causal), c, dq, part,
                   scale, kernel)
        if step > 0:  # the shares of the ranks before this one, for the same source, one hop behind the K/V
            _wait(acc_reqs)
            part += acc_in
        if ring.world > 1:
            acc_in = torch.empty_like(part)
            acc_reqs = ring.exchange(part, acc_in, tag=1)
        else:
            acc_in = part
        _wait(reqs)
        kv = nxt if nxt is not None else kv
    _wait(acc_reqs)  # after N hops the accumulator of this rank's own K/V has come home
    return dq.to(q.dtype), acc_in[0].to(k.dtype), acc_in[1].to(v.dtype)


def _remote_plan(mine: list[int], world: int, rank: int, layout: str, causal: bool):
    """All-gather variant: for each local query chunk, the remote (source, chunk position) pairs it sees."""
    plan = []
    for qi, cq in enumerate(mine):
        seen = [(s, j) for s in range(world) if s != rank for j, cs in enumerate(chunks_of(s, world, layout))
                if not causal or cs < cq]
        if seen:
            plan.append((qi, seen))
    return plan


def _gather(kv, ring: _Ring, async_op: bool):
    bufs = [torch.empty_like(kv) for _ in range(ring.world)]
    work = dist.all_gather(bufs, kv.contiguous(), group=ring.group, async_op=async_op)
    return bufs, work


def _allgather_fwd(q, k, v, causal, scale, kernel, ring: _Ring, layout):
    n_local = len(chunks_of(0, 1, layout))
    c = q.shape[1] // n_local
    out = torch.zeros(q.shape, dtype=torch.float32 if q.dtype != torch.float64 else q.dtype, device=q.device)
    lse = torch.full((q.shape[0], q.shape[2], q.shape[1]), float("-inf"), dtype=out.dtype, device=q.device)
    kv = torch.stack([k, v])
    bufs, work = _gather(kv, ring, async_op=True)
    mine = chunks_of(ring.rank, ring.world, layout)
    _fwd_block(q, kv, block_calls(mine, mine, causal), c, out, lse, scale, kernel)  # overlaps the gather
    work.wait()
    for qi, seen in _remote_plan(mine, ring.world, ring.rank, layout, causal):
        kr = torch.cat([bufs[s][:, :, j * c:(j + 1) * c] for s, j in seen], dim=2)  # (2, B, len*c, Hkv, D)
        o_p, lse_p = local_fwd(q[:, qi * c:(qi + 1) * c], kr[0], kr[1], False, scale, kernel)
        merge_into(out[:, qi * c:(qi + 1) * c], lse[:, :, qi * c:(qi + 1) * c], o_p, lse_p)
    return out.to(q.dtype), lse


def _allgather_bwd(do, q, k, v, o, lse, causal, scale, kernel, ring: _Ring, layout):
    n_local = len(chunks_of(0, 1, layout))
    c = q.shape[1] // n_local
    wt = torch.float64 if q.dtype == torch.float64 else torch.float32
    kv = torch.stack([k, v])
    bufs, work = _gather(kv, ring, async_op=True)  # gathered again rather than kept: memory stays O(T / N)
    mine = chunks_of(ring.rank, ring.world, layout)
    dq = torch.zeros(q.shape, dtype=wt, device=q.device)
    parts = [torch.zeros(kv.shape, dtype=wt, device=q.device) for _ in range(ring.world)]
    _bwd_block(do, q, kv, o, lse, block_calls(mine, mine, causal), c, dq, parts[ring.rank], scale, kernel)
    work.wait()
    for qi, seen in _remote_plan(mine, ring.world, ring.rank, layout, causal):
        kr = torch.cat([bufs[s][:, :, j * c:(j + 1) * c] for s, j in seen], dim=2)
        rows = slice(qi * c, (qi + 1) * c)
        dq_p, dk_p, dv_p = local_bwd(do[:, rows], q[:, rows], kr[0], kr[1], o[:, rows], lse[:, :, rows], False,
                                     scale, kernel)
        dq[:, rows] += dq_p.to(wt)
        for n, (s, j) in enumerate(seen):
            parts[s][0][:, j * c:(j + 1) * c] += dk_p[:, n * c:(n + 1) * c].to(wt)
            parts[s][1][:, j * c:(j + 1) * c] += dv_p[:, n * c:(n + 1) * c].to(wt)
    mine_grad = torch.empty_like(parts[0])
    if ring.world > 1:
        dist.reduce_scatter(mine_grad, parts, group=ring.group)  # each source's shares summed at its owner
    else:
        mine_grad = parts[0]
    return dq.to(q.dtype), mine_grad[0].to(k.dtype), mine_grad[1].to(v.dtype)


class RingAttnFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal, scale, kernel, group, layout, variant):
        ring = _Ring(group)
        fwd = _ring_fwd if variant == "ring" else _allgather_fwd
        out, lse = fwd(q, k, v, causal, scale, kernel, ring, layout)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.args = (causal, scale, kernel, group, layout, variant)
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, dlse):
        q, k, v, out, lse = ctx.saved_tensors
        causal, scale, kernel, group, layout, variant = ctx.args
        bwd = _ring_bwd if variant == "ring" else _allgather_bwd
        dq, dk, dv = bwd(dout.contiguous(), q, k, v, out, lse, causal, scale, kernel, _Ring(group), layout)
        return dq, dk, dv, None, None, None, None, None, None


def ring_attn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
              softmax_scale: float | None = None, return_lse: bool = False, *, variant: str = "ring",
              layout: str = "zigzag", local: str = "auto", group=None):
    """Exact attention over a sequence split across the ranks of `group` (torch.distributed, initialised).

    Args:
        q: (B, T_local, Hq, D), k, v: (B, T_local, Hkv, D): this rank's slice, as `shard_sequence(x, rank, world,
           layout)` cuts it (zig-zag: chunks r and 2N-1-r of 2N; contiguous: chunk r of N).
        causal: causal over the *global* positions. Zig-zag balances it; contiguous works but rank N-1 does N
           times rank 0's work.
        variant: 'ring' (isend/irecv of K/V blocks overlapping the local block, fwd and bwd) or 'allgather'
           (one async all-gather overlapping the local block; the backward reduce-scatters dK/dV).
        local: the per-block kernel: 'flash_attn' (ioaware's: Triton on CUDA), 'reference' (PyTorch, any float
           dtype) or 'auto' (flash_attn where it runs as a kernel: CUDA, or CPU under IOAWARE_INTERPRET).
    Returns out (B, T_local, Hq, D) in q's dtype (and lse (B, Hq, T_local) fp32 with return_lse); differentiable
    in q, k, v.
    """
    if not (dist.is_available() and dist.is_initialized()):
        raise UnsupportedError("ring_attn: torch.distributed is not initialised; call "
                               "torch.distributed.init_process_group (gloo on CPU, nccl on GPUs) or run under torchrun")
    if variant not in VARIANTS:
        raise ValueError(f"ring_attn: variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    if layout not in LAYOUTS:
        raise ValueError(f"ring_attn: layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if local not in LOCALS:
        raise ValueError(f"ring_attn: local must be one of {', '.join(LOCALS)}, got {local!r}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise ShapeError(f"ring_attn: {name} must be a 4-D tensor (batch, seqlen_local, heads, head_dim), got "
                             f"{tuple(getattr(t, 'shape', ()))}")
    if k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise ShapeError(f"ring_attn: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} must share batch, "
                         "local length and head dim (k and v equal)")
    if k.shape[2] == 0 or q.shape[2] % k.shape[2]:
        raise ShapeError(f"ring_attn: query heads ({q.shape[2]}) must be a multiple of key/value heads ({k.shape[2]})")
    if len({q.dtype, k.dtype, v.dtype}) != 1 or len({q.device, k.device, v.device}) != 1:
        raise ShapeError("ring_attn: q, k and v must share one dtype and one device")
    n_local = len(chunks_of(0, 1, layout))
    if q.shape[1] == 0 or q.shape[1] % n_local:
        raise ShapeError(f"ring_attn: the local length {q.shape[1]} must be a positive multiple of {n_local} "
                         f"({layout} layout)")
    backend = dist.get_backend(group)
    if backend == "nccl" and not q.is_cuda:
        raise DeviceError("ring_attn: the group is NCCL but the tensors are on the CPU; use gloo or CUDA tensors")
    kernel = use_kernel(local, q.device)
    if kernel and backend_for(q.device.type) == "reference":
        raise UnsupportedError("ring_attn: local='flash_attn' on CPU tensors runs the Triton kernels under the "
                               "interpreter: set IOAWARE_INTERPRET=1 before importing ioaware, or use 'reference'")
    if kernel and q.dtype == torch.float64:
        raise UnsupportedError("ring_attn: the flash_attn local kernel takes fp16/bf16/fp32; use local='reference'")
    scale = float(softmax_scale) if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    out, lse = RingAttnFunction.apply(q, k, v, bool(causal), scale, kernel, group, layout, variant)
    return (out, lse) if return_lse else out
