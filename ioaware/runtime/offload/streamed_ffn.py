"""Models larger than memory: a Transformer whose FFN weights stay in the flash store and stream in per token.

Resident in DRAM, under a hard cap (`--memory-budget`): the store's resident tensors (embeddings, attention,
norms; fp16), the low-rank neuron predictors, a preallocated window cache of neuron bundles per layer, and the
reader's I/O buffers. The cache gets whatever the cap leaves.

Per layer and step: predictor(FFN input) -> neuron ids -> `lookup` in the window cache -> the misses are read
from the store (bundles, coalesced runs, preadv pool, O_DIRECT) and inserted -> `sparse_ffn` over the cache's
resident bundles (a superset of the predicted ones: the threshold on the real gate decides, so the result is the
thresholded FFN over predicted ∪ window neurons). A step whose predicted set is larger than the cache caches what
fits and uses the overflow once from the I/O buffer without caching it (exact, just more I/O).

Prefetch (`prefetch=True`): when block l starts a decode step, its FFN's neurons are predicted from the block's
input (the residual stream before attention, through block l's FFN norm: the FFN input less attention's update)
and the ones missing from the window cache are read in the background while attention runs. At the FFN the exact
prediction is made; prefetched neurons it needs are used, the rest of its misses are read then, and prefetched
neurons it does not need are wasted bytes (counted). `io_s` is the reads' busy time (what the iomodel prices),
`stall_s` the time the decode step actually waited on the disk.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ...errors import IOAwareError
from ..llm.model import Transformer, gate_activation, load_hf_state_dict
from .reader import NeuronReader, slot_sizes
from .sparse_ffn import sparse_ffn_counted
from .store import StoreError, WeightStore

MIN_CACHE_FRAC = 0.02  # the smallest useful window cache, per layer, as a fraction of its neurons
MAX_READ_NEURONS = 512  # I/O buffer size in neurons: reads larger than this go in groups


class BudgetError(IOAwareError, ValueError):
    pass


def parse_budget(text: str, weight_bytes: int) -> int:
    """'40%' (of the model's weight bytes in the store) or a size ('300MB', '2GiB', '123456789') -> bytes."""
    from ...units import parse_bytes

    t = str(text).strip()
    if t.endswith("%"):
        pct = float(t[:-1])
        if not 0 < pct <= 100:
            raise BudgetError(f"--memory-budget {text}: a percentage must be in (0, 100]")
        return int(weight_bytes * pct / 100)
    return int(parse_bytes(t))


@dataclass
class StreamStats:
    tokens: int = 0  # decode steps (prefill counted apart)
    bytes_read: int = 0
    useful_bytes: int = 0
    chunks: int = 0
    io_s: float = 0.0  # busy time of the reads (each read's wall time; prefetches overlap attention)
    issue_s: float = 0.0  # of io_s, the time requests were in flight (ReadStats.issue_s)
    verify_s: float = 0.0  # of io_s, the decode step's wait on checksums after its reads were done
    verify_thread_s: float = 0.0  # hashing done inside the read threads as chunks land (CPU time, summed over threads)
    stall_s: float = 0.0  # time the decode step waited on reads (= io_s without prefetch)
    prefetched: int = 0  # neurons read ahead by speculation
    prefetch_used: int = 0  # of those, the ones the exact prediction then asked for
    predicted_io_s: float = 0.0  # the iomodel's price of the same chunks
    predicted_serial_s: float = 0.0  # of it, the reader's serial work around the requests (curve["reader_overhead"])
    neurons_predicted: int = 0
    neurons_read: int = 0
    overflow_reads: int = 0  # neurons read but not cached because one step's set exceeded the cache
    layer_steps: int = 0
    ffn_rows: int = 0  # (row, layer) pairs the FFN ran on: each could use all hidden_dim neurons
    neurons_computed: int = 0  # (row, neuron) pairs whose gate was computed (loaded: cache + reads)
    neurons_active: int = 0  # of those, |act(gate x)| > threshold (a ReLU model: the exact nonzeros)
    per_token_io_s: list[float] = field(default_factory=list)

    def reset(self) -> None:
        self.__init__()


class StreamingRuntime:
    """The streamed FFN's shared state: store reader, window cache, predictors, thresholds and the stats."""

    def __init__(self, store: WeightStore, predictors, thresholds: torch.Tensor, cache_neurons: int, window: int,
                 threads: int = 8, chunk: int | None = None, direct: bool | None = None, curve: dict | None = None,
                 prefetch: bool = False, verify: bool = True):
        from .cache import NeuronCache

        a = store.args
        self.store, self.args = store, a
        self.predictors = predictors
        self.thresholds = [float(t) for t in thresholds]
        self.act = gate_activation(a.ffn_act, a.ffn_act_shift)  # the store's model: SiLU, or a relufied one's ReLU
        self.reader = NeuronReader(store, threads, chunk, direct, slots=1,
                                   max_neurons=min(MAX_READ_NEURONS, a.hidden_dim), verify=verify)
        self.cache = NeuronCache(a.n_layers, a.hidden_dim, cache_neurons, a.dim, window, dtype=store.torch_dtype)
        self.curve = None
        self.use_curve(curve)
        self.stats = StreamStats()
        self.trace: list | None = None  # set to a list to record (layer, predicted ids) per decode step
        self.counting = False  # decode steps only: prefill's reads are reported apart
        self._forwards = 0
        self.prefill = StreamStats()
        self.prefetch = prefetch
        self._pending: dict[int, object] = {}  # layer -> Future of its speculative read

    def use_curve(self, curve: dict | None) -> None:
        """Price reads with this disk curve and set the reader's merge gap from the same curve
        (`iomodel.io.choose_merge_gap`), so the gap read through and the time predicted for it never come from two
        different measurements of the disk. None: no pricing, no merging."""
        self.curve = curve
        gap = 0
        if curve is not None:
            from ...iomodel.io import choose_merge_gap

            gap = choose_merge_gap(curve, self.reader.threads, True)
        self.reader.max_gap = gap if self.reader.direct else 0

    def speculate(self, layer: int, ffn_norm: nn.Module, x: torch.Tensor) -> None:
        """Block `layer` is starting on input x: read ahead the neurons its FFN will probably need (decode steps
        only; a no-op unless prefetch is on)."""
        if not self.prefetch or self._forwards == 0 or x.reshape(-1, x.shape[-1]).shape[0] != 1:
            return
        ids = self.predictors.predict(layer, ffn_norm(x).reshape(1, -1))
        miss = ids[self.cache[layer].slot_of[ids] < 0]  # not lookup(): that would mark hits used by this token
        # one reader batch at most, the lowest ids: a contiguous stretch of the layer's file, so the rest read at the
        # FFN merges into runs as well as one whole read would (a scattered pick would double the gap bytes)
        miss = miss[:self.reader.max_neurons]
        if miss.numel():
            self._pending[layer] = self.reader.prefetch(layer, miss.numpy())

    def _price(self, chunk_sizes) -> float:
        if self.curve is None:
            return float("nan")
        from ...iomodel.io import predict_read_seconds

        return predict_read_seconds(chunk_sizes, self.curve, self.reader.threads, self.reader.direct)

    def ffn(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """x: (B, T, dim) FFN input -> (B, T, dim)."""
        if layer == 0:  # the first forward is the prefill; every later one is a decode step
            self.counting = self._forwards > 0
            self._forwards += 1
            if self.counting:
                self.stats.tokens += 1
        st = self.stats if self.counting else self.prefill
        shape = x.shape
        xf = x.reshape(-1, shape[-1])  # (B*T, dim)
        t = self.thresholds[layer]
        ids = self.predictors.predict(layer, xf)  # (n,) sorted
        if self.trace is not None and self.counting:
            self.trace.append((layer, ids.numpy().astype("int32")))
        c = self.cache[layer]
        hits, miss = c.lookup(ids)
        # slots this token may fill: all of them, less its hits (insert evicts only neurons this token does not
        # use). When the predicted set is larger than the cache, the misses that do not fit are used once from
        # the I/O buffer (exact, just not cached), and the ones that do fit still stay for the next tokens.
        room = c.capacity - hits.numel()
        y = None
        st.neurons_read += miss.numel()
        pending = self._pending.pop(layer, None)
        if pending is not None:  # the speculative read: use what the exact prediction asks for, read the rest
            t0 = time.perf_counter()
            res = pending.result()
            st.stall_s += time.perf_counter() - t0
            self._account(st, res.stats)
            m = miss.numpy()
            use = np.isin(res.ids, m)
            st.prefetched += len(res.ids)
            st.prefetch_used += int(use.sum())
            miss = miss[torch.from_numpy(~np.isin(m, res.ids))]
            y, room = self._use(c, xf, t, res.ids[use], res.bundles[torch.from_numpy(use)], room, y, st, self.act)
        for g in range(0, miss.numel(), self.reader.max_neurons):
            group = miss[g:g + self.reader.max_neurons]
            res = self.reader.read(layer, group.numpy())
            st.stall_s += res.stats.seconds
            self._account(st, res.stats)
            y, room = self._use(c, xf, t, res.ids, res.bundles, room, y, st, self.act)
        resident, _ = c.resident()  # (n, 3, dim) view: hits + what was just read + the rest of the window
        part, n_active = sparse_ffn_counted(xf, resident, t, self.act)
        part = part.float()
        st.neurons_computed += xf.shape[0] * resident.shape[0]
        st.neurons_active += n_active
        st.ffn_rows += xf.shape[0]
        y = part if y is None else y + part
        c.step_window(ids)
        c.evict_outside_window()
        st.neurons_predicted += ids.numel()
        st.layer_steps += 1
        return y.to(x.dtype).reshape(shape)

    def _account(self, st: StreamStats, rs) -> None:
        st.bytes_read += rs.bytes
        st.useful_bytes += rs.useful_bytes
        st.chunks += rs.chunks
        st.io_s += rs.seconds
        st.issue_s += rs.issue_s
        st.verify_s += rs.verify_s
        st.verify_thread_s += rs.verify_thread_s
        st.predicted_io_s += self._price(rs.chunk_sizes)
        over = (self.curve or {}).get("reader_overhead")
        if over and rs.chunk_sizes:
            st.predicted_serial_s += over["batch_s"] + over["chunk_s"] * len(rs.chunk_sizes)

    @staticmethod
    def _use(c, xf, t, ids, bundles, room, y, st, act):
        """Cache what fits of a read's bundles (copied out of the I/O buffer); the FFN over the rest, now."""
        k = max(0, min(room, len(ids)))
        if k:
            c.insert(torch.from_numpy(np.ascontiguousarray(ids[:k])), bundles[:k])
            room -= k
        if k < len(ids):
            part, n_active = sparse_ffn_counted(xf, bundles[k:], t, act)  # used once, not cached
            part = part.float()
            st.neurons_computed += xf.shape[0] * (len(ids) - k)
            st.neurons_active += n_active
            y = part if y is None else y + part
            st.overflow_reads += len(ids) - k
        return y, room

    def buffer_bytes(self) -> dict[str, int]:
        return {"predictors": predictor_bytes(self.predictors),
                "neuron_cache": self.cache.stats()["bytes_capacity"], "io_buffers": self.reader.buffer_bytes}

    def close(self) -> None:
        self.reader.close()


def predictor_bytes(p) -> int:
    if hasattr(p, "nbytes"):  # Predictors: the gate copy's tensors are not all one dtype
        return p.nbytes()
    return p.n_params() * p.A[0].element_size()


class StreamedFFN(nn.Module):
    """Stands in for `FeedForward`: owns no weights; asks the runtime for this layer's output."""

    def __init__(self, runtime: StreamingRuntime, layer: int):
        super().__init__()
        self.layer = layer
        self._rt = [runtime]  # in a list: not a submodule, so the model's parameters stay the resident ones

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._rt[0].ffn(self.layer, x)


def cache_neuron_work_bytes(a) -> int:
    """Working memory a cached neuron adds while sparse_ffn runs over one layer's cache: fp32 bundles and the
    contiguous gate/up/down operands, ~2 x 3 x dim x 4 bytes (SmolLM2 at 85%, 1158 neurons/layer, ran 1.1 MiB over
    its cap without it, measured)."""
    return 2 * 3 * a.dim * 4


def plan_cache(store: WeightStore, budget: int, pred_bytes: int, direct: bool, unit: str = "MiB",
               other_bytes: int = 0, resident_bytes: int | None = None) -> tuple[int, dict]:
    """Neurons per layer the window cache can hold under `budget` bytes, and the accounting. `other_bytes`: what
    else the run holds above its baseline (KV cache, activations, tokenizer). Raises BudgetError naming the minimum,
    in the user's `unit`, when the budget cannot hold what must stay resident plus the smallest cache.
    `resident_bytes`: the resident weights as they will be held (packed: packed_resident.py), else the store's."""
    from ...units import in_unit

    a = store.args
    resident = store.resident_bytes if resident_bytes is None else resident_bytes
    B, S = store.bundle_bytes, store.bundle_stride
    io_n = min(MAX_READ_NEURONS, a.hidden_dim)
    io = sum(slot_sizes(io_n, B, a.hidden_dim * S, direct or S != B))  # NeuronReader's one slot
    fixed = resident + pred_bytes + io + other_bytes
    min_cache = max(1, math.ceil(MIN_CACHE_FRAC * a.hidden_dim))
    work = cache_neuron_work_bytes(a)
    minimum = fixed + min_cache * (B * a.n_layers + work)
    acct = {"budget": budget, "resident": resident, "predictors": pred_bytes, "io_buffers": io,
            "other": other_bytes, "minimum": minimum, "weight_bytes": store.weight_bytes}
    if budget < minimum:
        raise BudgetError(
            f"--memory-budget of {in_unit(budget, unit)} is below the minimum of {in_unit(minimum, unit)} "
            f"({minimum / store.weight_bytes:.0%} of the weights: resident {in_unit(resident, unit)} + "
            f"predictors {in_unit(pred_bytes, unit)} + I/O buffers {in_unit(io, unit)} + KV cache and working "
            f"memory {in_unit(other_bytes, unit)} + a cache of {min_cache} neurons/layer)")
    cap = min(a.hidden_dim, (budget - fixed) // (B * a.n_layers + work))
    acct["cache_neurons_per_layer"] = int(cap)
    acct["ffn_working"] = int(cap) * work
    return int(cap), acct


def build_streamed_model(store: WeightStore, predictors, thresholds, budget: int, window: int = 5, threads: int = 8,
                         chunk: int | None = None, direct: bool | None = None, curve: dict | None = None,
                         prefetch: bool = False, unit: str = "MiB", other_bytes: int = 0,
                         verify: bool = True, packed=None) -> tuple[Transformer, StreamingRuntime, dict]:
    """A Transformer with the store's resident tensors (in the store's dtype) and StreamedFFN layers; no dense FFN
    weight is ever allocated. Returns (model, runtime, accounting) where accounting['resident_total'] is the
    measured bytes of every weight-holding buffer and is checked against `budget`. `packed`: the packed resident
    tensors of packed_resident.py (int4 attention, int8 embedding) in place of the store's fp16 ones."""
    from ...files import direct_io_supported

    if direct is None:
        direct = direct_io_supported(store.path)
    from . import packed_resident

    predictors = predictors.to(dtype=store.torch_dtype)
    cap, acct = plan_cache(store, budget, predictor_bytes(predictors), direct, unit, other_bytes,
                           None if packed is None else packed_resident.packed_bytes(store.args))
    if chunk is None and curve is not None:
        from ...hardware.probe_disk import best_chunk

        chunk = best_chunk(curve, threads, direct)
    rt = StreamingRuntime(store, predictors, thresholds, cap, window, threads, chunk, direct, curve, prefetch, verify)
    a = store.args
    with torch.device("meta"):
        model = Transformer(a)
    for i, layer in enumerate(model.layers):
        layer.feed_forward = StreamedFFN(rt, i)  # before materialising: the dense FFN is never allocated
    # the store's tensors become the parameters of a model built on meta: nothing is allocated twice (an fp32 or
    # empty model filled by copies held 2.4x the resident bytes at its peak)
    if packed is not None:
        packed_resident.attach(model, store, packed)
    else:
        load_hf_state_dict(model, store.resident_tensors(), ffn=False, assign=True)
    if a.tie_embeddings and packed is None:
        model.output.weight = model.tok_embeddings.weight
    left = [n for n, p in model.named_parameters() if p.is_meta]
    if left:
        raise StoreError(f"{store.path}: the store holds no tensor for {left[:3]}")
    model.weight_format = f"flash-streamed ({store.dtype}" + (", resident int4/int8)" if packed is not None else ")")
    for i, layer in enumerate(model.layers):  # the speculative read of block i starts when block i does
        layer.register_forward_pre_hook(lambda mod, args, i=i: rt.speculate(i, mod.ffn_norm, args[0]))
    seen, res = set(), 0
    for p in [*model.parameters(), *model.buffers()]:  # packed modules hold their weights as buffers
        if id(p) not in seen:
            seen.add(id(p))
            res += p.numel() * p.element_size()
    acct.update(rt.buffer_bytes())
    acct["resident_measured"] = res
    acct["resident_total"] = res + sum(rt.buffer_bytes().values())
    if acct["resident_total"] + other_bytes > budget:  # the plan above is exact; this guards it
        raise BudgetError(f"resident weights {acct['resident_total']} B + {other_bytes} B of other memory exceed "
                          f"the budget {budget} B")
    return model.eval().requires_grad_(False), rt, acct


def naive_reads(rt: StreamingRuntime) -> tuple[int, float]:
    """What naive whole-FFN reads cost per token: every layer's dense FFN (its weight bytes, without the store's
    bundle padding) read whole, in the reader's chunks, one batch a layer -> (bytes, seconds the iomodel prices
    them at; nan without a disk curve)."""
    from .reader import _page_ranges, split_chunks

    layer_bytes = rt.args.hidden_dim * rt.store.bundle_bytes
    nbytes, secs = 0, 0.0
    for _ in range(rt.args.n_layers):
        ranges = _page_ranges([(0, layer_bytes)]) if rt.reader.direct else [(0, layer_bytes)]
        sizes = [k for _, k in split_chunks(ranges, rt.reader.chunk)]
        nbytes += sum(sizes)
        secs += rt._price(sizes)
    return nbytes, secs


def stream_summary(rt: StreamingRuntime, acct: dict, decode_s: float) -> dict:
    """The numbers every streamed run prints: per decode token, measured beside predicted, and against naive
    whole-FFN reads (priced by the same iomodel on the same disk curve)."""
    s = rt.stats
    n = max(s.tokens, 1)
    cs = rt.cache.stats()
    a = rt.args
    peak = rt.curve["peak_GBps"] if rt.curve else float("nan")
    gbps = s.bytes_read / s.io_s / 1e9 if s.io_s > 0 else 0.0
    return {
        "flash_bytes_read_per_token": s.bytes_read / n, "flash_useful_bytes_per_token": s.useful_bytes / n,
        "flash_io_s_per_token": s.io_s / n, "flash_verify_s_per_token": s.verify_s / n,
        "flash_verify_thread_s_per_token": s.verify_thread_s / n,
        "verify_share_of_io": s.verify_s / s.io_s if s.io_s > 0 else None,
        "flash_predicted_io_s_per_token": s.predicted_io_s / n,
        "flash_io_vs_predicted": (s.io_s / s.predicted_io_s) if s.predicted_io_s else None,
        "flash_GBps": gbps, "flash_peak_GBps": peak, "flash_chunks_per_token": s.chunks / n,
        "window_hit_rate": cs["hit_rate"], "window": rt.cache[0].window,
        "ffn_frac_loaded_per_token": s.neurons_read / (n * a.n_layers * a.hidden_dim),
        "ffn_frac_predicted_per_token": s.neurons_predicted / (n * a.n_layers * a.hidden_dim),
        "overflow_neurons": s.overflow_reads, "io_share_of_decode": s.io_s / decode_s if decode_s > 0 else None,
        "prefetch": rt.prefetch, "flash_stall_s_per_token": s.stall_s / n,
        "prefetch_neurons_per_token": s.prefetched / n,
        "prefetch_used_frac": s.prefetch_used / s.prefetched if s.prefetched else None,
        "direct_io": rt.reader.direct, "read_threads": rt.reader.threads, "read_chunk": rt.reader.chunk,
        "read_merge_gap": rt.reader.max_gap, "store_bundle_stride": rt.store.bundle_stride,
        "disk_curve_reader_points": [p for p in (rt.curve or {}).get("points", []) if p.get("source") == "reader"],
        "disk_curve_reader_overhead": (rt.curve or {}).get("reader_overhead"),
        "flash_predicted_serial_s_per_token": s.predicted_serial_s / n,
        "flash_issue_s_per_token": s.issue_s / n,
        "prefill_bytes_read": rt.prefill.bytes_read, "prefill_io_s": rt.prefill.io_s,
        "memory": acct, "decode_tokens_counted": s.tokens,
        **_sparsity_and_naive(rt),
    }


def _sparsity_and_naive(rt: StreamingRuntime) -> dict:
    """FFN sparsity measured while decoding (neurons off: |act| at or below the threshold, or never loaded because
    predicted off) and the speed-up against naive whole-FFN reads, in bytes and in the iomodel's I/O time."""
    s, a = rt.stats, rt.args
    n = max(s.tokens, 1)
    slots = max(s.ffn_rows, 1) * a.hidden_dim  # (row, layer, neuron) triples of the decode steps
    naive_b, naive_s = naive_reads(rt)
    pred_s, io_s = s.predicted_io_s / n, s.io_s / n
    if naive_s != naive_s:  # no disk curve: nothing to price with
        naive_s = None
    return {
        "ffn_activation": a.ffn_act, "ffn_activation_shift": a.ffn_act_shift,
        "ffn_sparsity_measured": 1 - s.neurons_active / slots if s.ffn_rows else None,
        "ffn_frac_computed_per_token": s.neurons_computed / slots if s.ffn_rows else None,
        "ffn_frac_skipped_per_token": 1 - s.neurons_computed / slots if s.ffn_rows else None,  # never loaded
        "ffn_frac_loaded_zero_per_token": (s.neurons_computed - s.neurons_active) / slots if s.ffn_rows else None,
        "naive_bytes_per_token": naive_b, "naive_predicted_io_s_per_token": naive_s,
        "bytes_vs_naive": naive_b / (s.bytes_read / n) if s.bytes_read else None,
        "io_vs_naive_predicted": naive_s / pred_s if naive_s and pred_s > 0 else None,  # both priced by the iomodel
        "io_vs_naive_measured": naive_s / io_s if naive_s and io_s > 0 else None,  # measured vs iomodel's naive
    }
