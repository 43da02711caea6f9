"""I/O-only timing on a 1B Llama-shaped model with RANDOM fp16 weights (Llama-3.2-1B shapes: dim 2048, FFN 8192,
16 layers, GQA 32/8, vocab 128256, tied): no compute, no text, only the reads each case would issue per token.

The neuron sets are not predicted here (random weights have no meaningful activations). They are replayed from a
real SmolLM2 run (`ioaware bench offload --trace`): 1B layer l uses SmolLM2 layer round(l * 29 / 15), and each SmolLM2
neuron stands for a fixed random group of 5-6 of the 8192 neurons, so the density per layer and the token-to-token
overlap are SmolLM2's while the positions on disk are scattered.

Cases (page cache dropped before each): (a) naive, every layer's FFN read whole per token (O_DIRECT); (b) mmap of a
dense fp16 FFN file, the layers that fit in the budget pinned, others faulted in by touching every page and then
dropped (madvise + fadvise DONTNEED); (c) ioaware: window cache under the budget + bundle reads of the misses.

A trace from `ioaware bench synthetic-trace` (ReLU-level sparsity, no model) is labelled SYNTHETIC in the output.

    ioaware bench offload-replay --trace /tmp/trace.npz [--budget 50%] [--tokens 8]
        -> benchmarks/results/flash-random1b-cpu-<date>.json
"""

from __future__ import annotations

import argparse
import mmap
import os
import time
import zlib
from pathlib import Path

import numpy as np
import torch

from ..env import settings
from ..files import write_json_atomic
from ..hardware.probe_disk import best_chunk, load_curve, throughput_at
from ..iomodel.io import merge_gap_bytes, predict_read_seconds
from ..report import print_table
from ..runtime.llm.model import ModelArgs
from ..runtime.offload.cache import LayerNeuronCache
from ..runtime.offload.reader import NeuronReader, drop_page_cache
from ..runtime.offload.session import PREDICTOR_RANK, predictor_bytes_estimate
from ..runtime.offload.store import open_store, write_store
from ..runtime.offload.streamed_ffn import parse_budget, plan_cache
from ..units import human_bytes
from .common import RESULTS_DIR
from .offload import write_dense_file

ARGS_1B = ModelArgs(dim=2048, n_layers=16, n_heads=32, n_kv_heads=8, hidden_dim=8192, vocab_size=128256,
                    head_dim=64, rope_base=500000.0, max_seq_len=2048, tie_embeddings=True)


class RandomWeights(dict):
    """A lazy state dict: each tensor is drawn (seeded by its name) when the writer asks for it, so the 2.5 GB
    model never sits in memory whole."""

    def __init__(self, a: ModelArgs):
        super().__init__()
        H, Hkv, D, d, h = a.n_heads, a.n_kv_heads, a.head_dim, a.dim, a.hidden_dim
        self.shapes = {"model.embed_tokens.weight": (a.vocab_size, d), "model.norm.weight": (d,)}
        for i in range(a.n_layers):
            p = f"model.layers.{i}."
            self.shapes.update({p + "input_layernorm.weight": (d,), p + "post_attention_layernorm.weight": (d,),
                                p + "self_attn.q_proj.weight": (H * D, d), p + "self_attn.k_proj.weight": (Hkv * D, d),
                                p + "self_attn.v_proj.weight": (Hkv * D, d), p + "self_attn.o_proj.weight": (d, H * D),
                                p + "mlp.gate_proj.weight": (h, d), p + "mlp.up_proj.weight": (h, d),
                                p + "mlp.down_proj.weight": (d, h)})

    def keys(self):
        return self.shapes.keys()

    def __getitem__(self, name):
        rng = np.random.default_rng(zlib.crc32(name.encode()))  # same weights every run
        return torch.from_numpy(rng.standard_normal(self.shapes[name], dtype=np.float32) * 0.02)


def load_trace(path, a: ModelArgs, seed: int = 0):
    """{token: {layer: ids}} for the 1B model, from a SmolLM2 trace (see the module docstring)."""
    z = np.load(path)
    layers, H_small = z["layers"], int(z["hidden"])
    n_src = int(layers.max()) + 1
    groups = np.array_split(np.random.default_rng(seed).permutation(a.hidden_dim), H_small)
    steps, cur = [], {}
    for i, layer in enumerate(layers):
        if layer == 0 and cur:
            steps.append(cur)
            cur = {}
        cur[int(layer)] = z[f"ids{i}"]
    steps.append(cur)
    out = []
    for st in steps:
        tok = {}
        for lb in range(a.n_layers):
            ls = round(lb * (n_src - 1) / (a.n_layers - 1))
            src = st.get(ls, np.array([], dtype=np.int32))
            tok[lb] = np.sort(np.concatenate([groups[j] for j in src])) if len(src) else np.array([], dtype=np.int64)
        out.append(tok)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="ioaware bench offload-replay", description=__doc__.split("\n")[0])
    ap.add_argument("--trace", required=True)
    ap.add_argument("--budget", default="50%")
    ap.add_argument("--tokens", type=int, default=8)
    ap.add_argument("--window", type=int, default=5)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    a = ARGS_1B
    stores = settings().cache_dir / "stores"
    path = stores / "random-llama-1b.store"
    if not path.exists():
        write_store(path, a, RandomWeights(a), "random-llama-1b-seeded", source="random weights (Llama-3.2-1B shapes)")
    store = open_store(path)
    curve = load_curve(path.parent)
    if curve is None:
        raise SystemExit("no disk curve: run `ioaware probe disk` first")
    dense = stores / "random-llama-1b.dense-ffn.f16"
    write_dense_file(store, dense)
    budget = parse_budget(args.budget, store.weight_bytes)
    cap, acct = plan_cache(store, budget, predictor_bytes_estimate(a, PREDICTOR_RANK, 2), True)
    trace = load_trace(args.trace, a)[: args.tokens]
    n = len(trace)
    chunk = best_chunk(curve, args.threads, True)
    cases = {}

    # (a) naive
    for f in (path, dense):
        drop_page_cache(f)
    r = NeuronReader(store, args.threads, chunk, True, slots=1)
    io = pred = nbytes = 0.0
    for _ in trace:
        for layer in range(a.n_layers):
            res = r.read(layer, np.arange(a.hidden_dim))
            io += res.stats.seconds
            nbytes += res.stats.bytes
            pred += predict_read_seconds(res.stats.chunk_sizes, curve, r.threads, True)
    r.close()
    cases["naive"] = {"io_s_per_token": io / n, "predicted_io_s_per_token": pred / n, "bytes_per_token": nbytes / n}

    # (b) mmap, the layers that fit pinned
    for f in (path, dense):
        drop_page_cache(f)
    layer_bytes = 3 * a.hidden_dim * a.dim * 2
    pinned = max(0, min(a.n_layers, (budget - store.resident_bytes) // layer_bytes))
    fd = os.open(dense, os.O_RDONLY)
    raw = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
    arr = np.frombuffer(raw, dtype=np.uint8)
    io = nbytes = 0.0
    for t in range(n):
        for layer in range(a.n_layers):
            off = layer * layer_bytes
            t0 = time.perf_counter()
            int(arr[off:off + layer_bytes:4096].sum())  # one byte per page: every page faulted in, as a matmul would
            dt = time.perf_counter() - t0
            if layer >= pinned or t == 0:
                io += dt if t > 0 else 0.0  # token 0 warms the pinned layers; only decode tokens 1.. count
            if layer >= pinned:
                raw.madvise(mmap.MADV_DONTNEED, off, layer_bytes)
                os.posix_fadvise(fd, off, layer_bytes, os.POSIX_FADV_DONTNEED)
                nbytes += layer_bytes if t > 0 else 0
    del arr
    raw.close()
    os.close(fd)
    nd = max(n - 1, 1)
    cases["mmap"] = {"io_s_per_token": io / nd, "bytes_per_token": nbytes / nd, "pinned_layers": int(pinned),
                     "predicted_io_s_per_token": nbytes / nd / throughput_at(curve, 128 << 10, 1, False)}

    # (c) ioaware: window cache + reads of the misses
    for f in (path, dense):
        drop_page_cache(f)
    gap = merge_gap_bytes(curve, args.threads, True)
    r = NeuronReader(store, args.threads, chunk, True, slots=1, max_neurons=512, max_gap=gap)
    caches = [LayerNeuronCache(a.hidden_dim, cap, a.dim, args.window, dtype=torch.float16) for _ in range(a.n_layers)]
    io = pred = nbytes = 0.0
    hits = looks = loaded = 0
    for t, tok in enumerate(trace):
        for layer in range(a.n_layers):
            ids = torch.from_numpy(tok[layer].astype(np.int64))
            c = caches[layer]
            h0, l0 = c.stats.hits, c.stats.lookups
            _, miss = c.lookup(ids)
            fits = ids.numel() <= c.capacity
            for g in range(0, miss.numel(), r.max_neurons):
                res = r.read(layer, miss[g:g + r.max_neurons].numpy())
                if fits:
                    c.insert(torch.from_numpy(res.ids), res.bundles)
                if t > 0:  # token 0 fills the window (the prefill's role); decode tokens 1.. count
                    io += res.stats.seconds
                    nbytes += res.stats.bytes
                    pred += predict_read_seconds(res.stats.chunk_sizes, curve, r.threads, True)
            c.step_window(ids)
            c.evict_outside_window()
            if t > 0:
                hits += c.stats.hits - h0
                looks += c.stats.lookups - l0
                loaded += miss.numel()
    r.close()
    cases["ioaware"] = {"io_s_per_token": io / nd, "predicted_io_s_per_token": pred / nd,
                        "bytes_per_token": nbytes / nd,
                        "window_hit_rate": hits / max(looks, 1), "cache_neurons_per_layer": cap,
                        "ffn_frac_loaded_per_token": loaded / (nd * a.n_layers * a.hidden_dim),
                        "ffn_frac_needed_per_token": looks / (nd * a.n_layers * a.hidden_dim), "merge_gap": gap}
    rows = []
    for k, c in cases.items():
        c["measured_vs_predicted"] = c["io_s_per_token"] / c["predicted_io_s_per_token"]
        c["GBps"] = c["bytes_per_token"] / c["io_s_per_token"] / 1e9 if c["io_s_per_token"] else 0.0
        rows.append([k, c["io_s_per_token"] * 1e3, c["predicted_io_s_per_token"] * 1e3, c["measured_vs_predicted"],
                     human_bytes(c["bytes_per_token"]), c["GBps"]])
    print_table(f"bench_flash_replay: RANDOM-weight Llama-1B shapes, I/O only, budget {args.budget} "
                f"({human_bytes(budget)} of {human_bytes(store.weight_bytes)})",
                ["case", "I/O ms/token", "predicted ms", "meas/pred", "read/token", "GB/s"], rows)
    io_ = cases["ioaware"]["io_s_per_token"]
    bar = {"io_vs_naive": cases["naive"]["io_s_per_token"] / io_, "io_vs_mmap": cases["mmap"]["io_s_per_token"] / io_,
           "ioaware_measured_vs_predicted": cases["ioaware"]["measured_vs_predicted"]}
    print(f"I/O {bar['io_vs_naive']:.2f}x below naive, {bar['io_vs_mmap']:.2f}x below mmap, ioaware measured/"
          f"predicted {bar['ioaware_measured_vs_predicted']:.2f}")
    out = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "cores": os.cpu_count(), "weights": "RANDOM fp16, I/O only",
           "shapes": "Llama-3.2-1B", "neuron_sets": (
               f"SYNTHETIC, OPT-6.7B-like statistics (benchmarks/make_synthetic_trace.py), from {args.trace}"
               if "synthetic" in np.load(args.trace) else f"replayed from {args.trace}"), "budget": args.budget,
           "memory": acct, "tokens": n, "window": args.window, "chunk": chunk, "disk_peak_GBps": curve["peak_GBps"],
           "loadavg_after": os.getloadavg(), "cases": cases, "bar": bar}
    dest = Path(args.out) if args.out else RESULTS_DIR / f"flash-random1b-cpu-{time.strftime('%Y-%m-%d')}.json"
    write_json_atomic(dest, out)
    print(f"wrote {dest}")
    return 0

