"""LLM in a flash on a GPU: attention, embeddings and norms in HBM; FFN layers streamed from pinned host memory
(and from disk) into HBM copy slots, one layer ahead, on a copy stream (gpu_plan.py decides what lives where).

One FFN layer is one flat block of 3·hidden·dim weights, in one of two layouts:

    dense    [w13 (2H, dim) | w2 (dim, H)]: the model's own FeedForward matrices, so a streamed layer runs the
             very F.linear calls the all-in-HBM model runs (bit-equal logits; tested).
    bundles  [gate (H, dim) | up (H, dim) | down^T (H, dim)]: neuron i is row i of each third, so the sparse
             mode gathers the predicted neurons' rows (LLM in a flash's row-column bundling, on the device).

Dense schedule (per streamed layer s_j, all asynchronous; the host never waits on the device):

    copy stream:     wait freed[slot(j+1)] -> copy block(s_{j+1}) into slot(j+1) -> record ready[slot(j+1)]
    compute stream:  wait ready[slot(j)] -> FFN of s_j from slot(j) -> record freed[slot(j)]

The copy for the next streamed layer is issued when layer s_j's FFN is, so it runs under s_j's FFN and the
attention of the layers in between; after the last streamed layer, the first one's copy for the next token is
issued (it runs under the head, the sampling and the HBM-resident layers). Layers on the disk tier are read
by threads into pinned staging first (that waits on the disk and on the staging slot's previous copy: the disk
tier syncs the host, the pinned tier never does).

Sparse mode (a ReLU-family model, predictors as on CPU): the predictor picks the layer's neurons from its FFN
input; a Triton gather (runtime/kvtiers/uva_kernel.py) reads their rows straight from pinned memory (UVA) into
the slot, then the FFN runs over them. The predicted set's size is read by the host once a layer (the prediction
is data-dependent): sparse mode syncs once a layer by design.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import DeviceError, UnsupportedError
from ..llm.model import FeedForward, Transformer
from .gpu_plan import OffloadPlan
from .sparse_ffn import is_relu_family

ALIGN = 4096
READ_CHUNK = 8 << 20  # disk tier: bytes per read call (one per thread at a time)


@dataclass
class GpuStreamStats:
    tokens: int = 0  # decode forwards counted (the prefill apart)
    h2d_bytes: int = 0  # host->device weight bytes (pinned and disk tiers)
    disk_bytes: int = 0  # of them, read from disk first
    disk_s: float = 0.0  # host time in disk reads
    layer_copies: int = 0
    neurons_loaded: int = 0  # sparse mode: neurons gathered (rows of the union over the step's tokens)
    neuron_slots: int = 0  # sparse mode: layers x hidden of the streamed layers visited


def pack_block(ffn: FeedForward, layout: str) -> torch.Tensor:
    """A FeedForward's weights as one flat block (see the module doc)."""
    w13, w2 = ffn.w13.weight.detach(), ffn.w2.weight.detach()  # (2H, dim), (dim, H)
    if layout == "dense":
        return torch.cat([w13.reshape(-1), w2.reshape(-1)])
    if layout == "bundles":
        return torch.cat([w13.reshape(-1), w2.t().contiguous().reshape(-1)])
    raise ValueError(f"block layout {layout!r} is not one of dense, bundles")


def block_ffn(x: torch.Tensor, blk: torch.Tensor, H: int, d: int, layout: str, act) -> torch.Tensor:
    """x (B, T, dim) through the FFN held in a flat block of H neurons -> (B, T, dim)."""
    w13 = blk[:2 * H * d].view(2 * H, d)  # [gate; up]
    w2 = blk[2 * H * d:3 * H * d]
    w2 = w2.view(d, H) if layout == "dense" else w2.view(H, d).t()  # (dim, H)
    gate, up = F.linear(x, w13).split(H, dim=-1)  # (B, T, H) each
    return F.linear(act(gate) * up, w2)


class DiskTier:
    """FFN blocks in one file, each at a 4 KiB boundary, read by threads into pinned staging. Written once by
    `write`; page-cache reads (no O_DIRECT): a run on a host whose RAM holds the file reads it at memory speed,
    which the summary's measured disk rate shows."""

    def __init__(self, path: Path, offsets: dict[int, int], nbytes: int, threads: int = 8):
        self.path, self.offsets, self.nbytes = Path(path), offsets, nbytes
        self.fd = os.open(self.path, os.O_RDONLY)
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="ioaware-gpu-disk")

    @classmethod
    def write(cls, path: Path, blocks: dict[int, torch.Tensor], threads: int = 8) -> DiskTier:
        from ...files import tmp_name

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = tmp_name(path)
        offsets, pos, nbytes = {}, 0, 0
        with open(tmp, "wb") as f:
            for layer, blk in sorted(blocks.items()):
                b = blk.contiguous().view(torch.uint8).numpy()
                offsets[layer], nbytes = pos, b.nbytes
                f.seek(pos)
                f.write(memoryview(b))
                pos = (pos + b.nbytes + ALIGN - 1) // ALIGN * ALIGN
        os.replace(tmp, path)
        return cls(path, offsets, nbytes, threads)

    def read_into(self, layer: int, dst: torch.Tensor) -> int:
        """Read layer's block into `dst` (pinned, flat, same byte size) with the thread pool; returns bytes."""
        buf = dst.view(torch.uint8).numpy()
        base = self.offsets[layer]

        def one(o: int) -> None:
            mv = memoryview(buf)[o:min(o + READ_CHUNK, self.nbytes)]
            got = 0
            while got < len(mv):
                k = os.preadv(self.fd, [mv[got:]], base + o + got)
                if k == 0:
                    raise OSError(f"{self.path}: truncated at byte {base + o + got}")
                got += k

        list(self.pool.map(one, range(0, self.nbytes, READ_CHUNK)))
        return self.nbytes

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class PinnedHost:
    """Page-locks host blocks for full-rate DMA (and UVA reads by the sparse gather), without the 2x: torch's
    pinned allocator (`pin_memory()`) rounds every allocation up to a power of two (ATen CachingHostAllocator:
    a 352 MB Llama-8B FFN layer takes 512 MB), so a block is registered where it lies with cudaHostRegister
    (portable, mapped) and unregistered by `release`. Falls back to `pin_memory()` where registering fails or
    torch does not then see the memory as pinned. `nbytes`: the page-locked bytes, as allocated."""

    PORTABLE_MAPPED = 1 | 2  # cudaHostRegisterPortable | cudaHostRegisterMapped

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self.registered: list[torch.Tensor] = []
        self.nbytes = 0
        self.fallbacks = 0

    def pin(self, t: torch.Tensor) -> torch.Tensor:
        if not self.cuda:
            return t
        t = t.contiguous()
        size = t.numel() * t.element_size()
        cudart = torch.cuda.cudart()
        if int(cudart.cudaHostRegister(t.data_ptr(), size, self.PORTABLE_MAPPED)) == 0:
            if t.is_pinned():
                self.registered.append(t)
                self.nbytes += size
                return t
            cudart.cudaHostUnregister(t.data_ptr())
        self.fallbacks += 1
        self.nbytes += 1 << max(size - 1, 1).bit_length()  # what the caching allocator takes
        return t.pin_memory()

    def release(self) -> None:
        """Unregister (after the device is done with them: the streamer synchronizes first)."""
        if self.registered:
            cudart = torch.cuda.cudart()
            for t in self.registered:
                cudart.cudaHostUnregister(t.data_ptr())
            self.registered.clear()


class GpuStreamer:
    """Owns the FFN blocks of every layer (HBM, pinned or disk, as the plan says) and runs each layer's FFN."""

    def __init__(self, plan: OffloadPlan, a, device, dtype, layout: str, hbm: dict, host: dict,
                 disk: DiskTier | None, act, predictors=None, pinned: PinnedHost | None = None):
        self.plan, self.args, self.device, self.dtype, self.layout = plan, a, torch.device(device), dtype, layout
        self.H, self.d = a.hidden_dim, a.dim
        self.hbm, self.host, self.disk, self.act, self.predictors = hbm, host, disk, act, predictors
        self.sparse = predictors is not None
        n = 3 * self.H * self.d
        self.order = list(plan.streamed_layers)
        self.pos = {layer: j for j, layer in enumerate(self.order)}
        self.slots = [torch.empty(n, dtype=dtype, device=self.device) for _ in range(plan.slots)]
        self.cuda = self.device.type == "cuda"
        self.pinned = pinned if pinned is not None else PinnedHost(self.cuda)
        self.staging = [self.pinned.pin(torch.empty(n, dtype=dtype)) for _ in range(2)] if plan.disk_layers else []
        self.in_slot: list[int | None] = [None] * plan.slots  # the layer each slot holds (or is being filled with)
        self._next_slot = 0
        self._next_stage = 0
        if self.cuda:
            self.copy_stream = torch.cuda.Stream(self.device)
            self.ready = [torch.cuda.Event() for _ in self.slots]
            self.freed = [torch.cuda.Event() for _ in self.slots]
            self.staged = [torch.cuda.Event() for _ in self.staging]
        self.stats, self.prefill = GpuStreamStats(), GpuStreamStats()
        self.counting, self._forwards = False, 0

    # ------------------------------------------------------------------ dense: the double-buffered copy schedule
    def _issue(self, layer: int, st: GpuStreamStats) -> int:
        """Enqueue layer's block into the next slot (after that slot's last FFN); returns the slot."""
        s = self._next_slot
        self._next_slot = (s + 1) % len(self.slots)
        self.in_slot[s] = layer
        src, g = self.host.get(layer), None
        if src is None:  # disk tier: threads read into pinned staging, then the same copy
            g = self._next_stage
            self._next_stage = (g + 1) % len(self.staging)
            src = self.staging[g]
            if self.cuda:
                self.staged[g].synchronize()  # the staging slot's previous copy must be done before it is overwritten
            t0 = time.perf_counter()
            st.disk_bytes += self.disk.read_into(layer, src)
            st.disk_s += time.perf_counter() - t0
        if self.cuda:
            with torch.cuda.stream(self.copy_stream):
                self.copy_stream.wait_event(self.freed[s])
                self.slots[s].copy_(src, non_blocking=True)
                self.ready[s].record(self.copy_stream)
                if g is not None:
                    self.staged[g].record(self.copy_stream)
        else:
            self.slots[s].copy_(src)
        st.h2d_bytes += src.numel() * src.element_size()
        st.layer_copies += 1
        return s

    def _dense(self, layer: int, x: torch.Tensor, st: GpuStreamStats) -> torch.Tensor:
        if layer in self.in_slot:
            s = self.in_slot.index(layer)
        else:  # the first streamed layer of the first forward (later ones were issued a layer ahead)
            s = self._issue(layer, st)
        j = self.pos[layer]
        nxt = self.order[(j + 1) % len(self.order)]
        if nxt not in self.in_slot:  # next layer's copy runs under this one's FFN
            self._issue(nxt, st)
        if self.cuda:
            torch.cuda.current_stream(self.device).wait_event(self.ready[s])
        y = block_ffn(x, self.slots[s], self.H, self.d, "dense" if self.layout == "dense" else "bundles", self.act)
        if self.cuda:
            self.freed[s].record(torch.cuda.current_stream(self.device))
        return y

    # ------------------------------------------------------------------ sparse: predicted neurons gathered
    def _sparse(self, layer: int, x: torch.Tensor, st: GpuStreamStats) -> torch.Tensor:
        H, d = self.H, self.d
        ids = self.predictors.predict(layer, x.reshape(-1, d))  # (n,) sorted; nonzero syncs once here
        n = int(ids.numel())
        st.neurons_loaded += n
        st.neuron_slots += H
        if n == 0:
            return torch.zeros_like(x)
        slot = self.slots[0]
        gather_bundles(self.host[layer], ids.to(self.device), H, d, slot, kernel=self.cuda)
        st.h2d_bytes += 3 * n * d * slot.element_size()
        return block_ffn(x, slot, n, d, "bundles", self.act)

    # ------------------------------------------------------------------
    def ffn(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """x: (B, T, dim) FFN input -> (B, T, dim)."""
        if layer == 0:  # the first forward is the prefill; every later one a decode step
            self.counting = self._forwards > 0
            self._forwards += 1
            if self.counting:
                self.stats.tokens += 1
        st = self.stats if self.counting else self.prefill
        blk = self.hbm.get(layer)
        if blk is not None:
            return block_ffn(x, blk, self.H, self.d, self.layout, self.act)
        return self._sparse(layer, x, st) if self.sparse else self._dense(layer, x, st)

    def bytes_per_token(self) -> dict[str, float]:
        n = max(self.stats.tokens, 1)
        return {"h2d": self.stats.h2d_bytes / n, "disk": self.stats.disk_bytes / n}

    def close(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)  # no copy may still read a staging buffer we let go of
        if self.disk is not None:
            self.disk.close()
        self.pinned.release()


def gather_bundles(block: torch.Tensor, ids: torch.Tensor, H: int, d: int, dst: torch.Tensor,
                   kernel: bool = True) -> None:
    """dst[:3 n d] viewed (3, n, d) <- rows `ids` of the bundles block's gate, up and down^T thirds. kernel: the
    Triton gather (uva_kernel.py) on dst's device, reading `block` where it lives (pinned host memory through UVA,
    no staging, no host sync; under IOAWARE_INTERPRET, CPU tensors); else index_select on the host."""
    n = ids.numel()
    if not kernel:
        dst[:3 * n * d].view(3, n, d).copy_(block.view(3, H, d).index_select(1, ids.cpu()))
        return
    from ...kernels._dispatch import load_kernel_module

    uva = load_kernel_module("ioaware.runtime.kvtiers.uva_kernel")
    part = torch.arange(3, device=dst.device, dtype=torch.int64)[:, None] * (H * d)  # (3, 1) thirds
    src_off = (part + ids.to(dst.device, torch.int64)[None, :] * d).reshape(-1)  # (3n,) row starts in block
    dst_off = torch.arange(3 * n, device=dst.device, dtype=torch.int64) * d  # (3n,)
    src = uva.HostPointer(block) if dst.is_cuda and not block.is_cuda else block
    uva.uva_gather_fwd(src, dst, src_off, dst_off, 1, d, d, d, _align(d))


def _align(d: int) -> int:
    """Largest power of two (at most 8 elements: 16 bytes of bf16) dividing every row offset (multiples of d)."""
    a = 1
    while a < 8 and d % (2 * a) == 0:
        a *= 2
    return a


class GpuStreamedFFN(nn.Module):
    """Stands in for `FeedForward`: owns no weights; asks the streamer for this layer's output."""

    def __init__(self, streamer: GpuStreamer, layer: int):
        super().__init__()
        self.layer = layer
        self._rt = [streamer]  # in a list: not a submodule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._rt[0].ffn(self.layer, x)


def offload_model(model: Transformer, plan: OffloadPlan, device, predictors=None, disk_path: Path | None = None,
                  read_threads: int = 8) -> tuple[Transformer, GpuStreamer]:
    """Turn a host model (its weights in the dtype to run in) into a streamed one on `device`, as `plan` says:
    FFN layers into HBM blocks, pinned host blocks or the disk file; everything else moved to the device. The
    model is consumed (its FFN modules replaced). predictors: sparse mode (a ReLU-family model only)."""
    device = torch.device(device)
    a = model.args
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    if predictors is not None and not is_relu_family(a.ffn_act):
        raise UnsupportedError(f"sparse GPU streaming needs a ReLU-family FFN (a relufied model); this one's gate "
                               f"is {a.ffn_act}: run dense (--gpu-ffn dense)")
    if plan.disk_layers and disk_path is None:
        raise ValueError("the plan has a disk tier: give disk_path for its layer file")
    p0 = model.norm.weight
    dtype = p0.dtype
    if p0.device.type != "cpu":
        raise DeviceError(f"offload_model wants the model on the host (it is on {p0.device})")
    layout = "bundles" if predictors is not None else "dense"
    pinned = PinnedHost(device.type == "cuda")
    hbm, host, disk_blocks = {}, {}, {}
    act = model.layers[0].feed_forward.act
    for i, layer in enumerate(model.layers):
        blk = pack_block(layer.feed_forward, layout)
        if i in plan.hbm_layers:
            hbm[i] = blk.to(device)
        elif i in plan.host_layers:
            host[i] = pinned.pin(blk)
        else:
            disk_blocks[i] = blk
        layer.feed_forward = nn.Identity()  # the dense FFN's host tensors go now, one layer at a time
    disk = DiskTier.write(disk_path, disk_blocks, read_threads) if disk_blocks else None
    disk_blocks.clear()
    model.to(device)
    if predictors is not None:
        predictors = predictors.to(device=device, dtype=dtype)
    rt = GpuStreamer(plan, a, device, dtype, layout, hbm, host, disk, act, predictors, pinned)
    for i, layer in enumerate(model.layers):
        layer.feed_forward = GpuStreamedFFN(rt, i)
    model.weight_format = f"gpu-streamed ({str(dtype).replace('torch.', '')}, {layout} FFN blocks)"
    return model.eval().requires_grad_(False), rt


def probe_pinned_h2d(device, nbytes: int = 256 << 20, reps: int = 5) -> dict:
    """Pinned host -> device copy rate (GB/s, decimal), timed with CUDA events on a side stream as the streamer
    copies: the median of `reps` copies of `nbytes` after a warm-up one. Also the pageable rate, for the peers
    that copy from pageable memory (accelerate's CPU offload)."""
    device = torch.device(device)
    if device.type != "cuda":
        raise DeviceError("probe_pinned_h2d needs a CUDA device")
    out = {}
    dst = torch.empty(nbytes, dtype=torch.uint8, device=device)
    s = torch.cuda.Stream(device)
    for kind, src in (("pinned", torch.empty(nbytes, dtype=torch.uint8).pin_memory()),
                      ("pageable", torch.ones(nbytes, dtype=torch.uint8))):
        ts = []
        for r in range(reps + 1):
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            with torch.cuda.stream(s):
                e0.record(s)
                dst.copy_(src, non_blocking=kind == "pinned")
                e1.record(s)
            e1.synchronize()
            if r:
                ts.append(e0.elapsed_time(e1) / 1e3)
        ts.sort()
        out[f"{kind}_GBps"] = nbytes / ts[len(ts) // 2] / 1e9
    out["bytes"] = nbytes
    return out
