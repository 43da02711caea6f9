"""What `ioaware bench offload` and its --memory-cap mode (offload_capped.py) share: the prompt, the baseline FFNs
(naive whole-FFN reads, mmap of the dense file) and the dense FFN file they read."""

from __future__ import annotations

import mmap
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..iomodel.io import predict_read_seconds
from ..runtime.offload.reader import NeuronReader

PROMPT = "Explain how a lighthouse works and why ships need them, in a few paragraphs."


class Clock:
    """Per-token accumulators of a baseline FFN."""

    def __init__(self):
        self.io_s = self.pred_s = self.pred_cached_s = 0.0
        self.bytes = 0
        self.forwards = 0
        self.decode = False

    def start_layer0(self):
        self.decode = self.forwards > 0
        self.forwards += 1
        if self.forwards == 2:  # the first decode step: reset what the prefill accumulated
            self.io_s = self.pred_s = self.pred_cached_s = 0.0
            self.bytes = 0


def dense_ffn(x, gate, up, down, act=F.silu):
    xf = x.reshape(-1, x.shape[-1])
    y = (act(xf @ gate.T) * (xf @ up.T)) @ down.T
    return y.reshape(x.shape)


def ffn_act(a):
    """The gate activation of a model's args (a ReLU-fied store's too), for the baselines' dense FFNs."""
    from ..runtime.llm.model import gate_activation

    return gate_activation(getattr(a, "ffn_act", "silu"), getattr(a, "ffn_act_shift", 0.0))


class NaiveFFN(nn.Module):
    def __init__(self, reader: NeuronReader, layer: int, clock: Clock, curve, cached_curve=None):
        super().__init__()
        self.r, self.layer, self.clock, self.curve, self.cached = [reader], layer, clock, curve, cached_curve
        self.act = ffn_act(reader.store.args)

    def forward(self, x):
        r = self.r[0]
        if self.layer == 0:
            self.clock.start_layer0()
        res = r.read(self.layer, np.arange(r.hidden))
        self.clock.io_s += res.stats.seconds
        self.clock.bytes += res.stats.bytes
        if self.curve is not None:  # None: not priced (--memory-cap measures, the iomodel is not asked)
            self.clock.pred_s += predict_read_seconds(res.stats.chunk_sizes, self.curve, r.threads, r.direct)
        if self.cached is not None:
            self.clock.pred_cached_s += predict_read_seconds(res.stats.chunk_sizes, self.cached, r.threads, r.direct)
        b = res.bundles
        return dense_ffn(x, b[:, 0], b[:, 1], b[:, 2].T, self.act)


class MmapFFN(nn.Module):
    """The FFN from a numpy.memmap of the dense file; layers >= pinned are dropped after use."""

    def __init__(self, mm: np.memmap, raw: mmap.mmap, fd: int, layer: int, a, pinned: int, clock: Clock,
                 measure: bool = True):
        super().__init__()
        self.measure = measure  # False: plain mmap (one pass, no I/O timing), as under --memory-cap
        H, d = a.hidden_dim, a.dim
        self.n = 3 * H * d
        self.off = layer * self.n * 2
        self.mm, self.raw, self.fd = mm, raw, fd
        self.layer, self.H, self.d, self.pinned, self.clock = layer, H, d, pinned, clock
        self.act = ffn_act(a)

    def weights(self):
        w = torch.from_numpy(self.mm[self.off // 2: self.off // 2 + self.n])
        H, d = self.H, self.d
        return w[:H * d].view(H, d), w[H * d:2 * H * d].view(H, d), w[2 * H * d:].view(d, H)

    def forward(self, x):
        if self.layer == 0:
            self.clock.start_layer0()
        if not self.measure:
            return dense_ffn(x, *self.weights(), self.act)
        t0 = time.perf_counter()
        y = dense_ffn(x, *self.weights(), self.act)  # page faults happen inside the matmul
        t1 = time.perf_counter()
        dense_ffn(x, *self.weights(), self.act)  # the same FFN with the pages now resident: the compute-only time
        t2 = time.perf_counter()
        self.clock.io_s += max(0.0, (t1 - t0) - (t2 - t1))
        self.clock.hot_s = getattr(self.clock, "hot_s", 0.0) + (t2 - t1)
        if self.layer >= self.pinned:
            nbytes = self.n * 2
            self.raw.madvise(mmap.MADV_DONTNEED, self.off, nbytes)
            os.posix_fadvise(self.fd, self.off, nbytes, os.POSIX_FADV_DONTNEED)
            self.clock.bytes += nbytes  # read again next token
        return y


def write_dense_file(store, path: Path) -> None:
    """The FFN in the ordinary dense layout (gate (H,d), up (H,d), down (d,H) per layer), fp16, as a GGUF/llama.cpp
    file would hold it: what mmap maps."""
    if path.exists() and path.stat().st_size == store.ffn_bytes:
        return
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        for i in range(store.args.n_layers):
            g, u, d = store.read_layer_dense(i)
            for t in (g, u, d):
                f.write(t.contiguous().numpy().tobytes())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
