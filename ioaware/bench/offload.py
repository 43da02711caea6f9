"""Models larger than memory, one machine, one budget, three ways to get the FFN weights per token:

  (a) naive   every layer's FFN read whole from the store for every token (O_DIRECT, the probed best chunk)
  (b) mmap    a dense fp16 FFN file mapped with numpy.memmap, as llama.cpp does; the OS pages in what the matmul
              touches. Held to the budget by pinning as many whole layers as fit (they stay in the page cache)
              and dropping every other layer after use (madvise DONTNEED on the mapping + posix_fadvise DONTNEED
              on the file range: MADV alone leaves the pages in the page cache, so the next touch would be free).
              No cgroup in this mode (--memory-cap runs each case under one). Its I/O time is the layer's FFN
              time with cold pages minus the same FFN again with the pages resident.
  (c) ioaware predictor -> window cache -> bundle reads (O_DIRECT, preadv pool) -> sparse_ffn

The page cache is dropped (posix_fadvise DONTNEED) on the store and the dense file before each case. All three run
the same resident part (embeddings, attention, norms in fp16) under the same budget and generate the same number
of tokens greedily from the same prompt; (a) and (b) compute the dense FFN, (c) the thresholded sparse one.

    ioaware bench offload [--budget 50%] [--tokens 24] [--sparsity 0.5] [--checksum-compare N] [--checksum-replay N]
        -> benchmarks/results/flash-cpu-<date>.json and .png
    ioaware bench offload --memory-cap [--budget 50%] [--tokens 16] [--json F]
        each provider (ioaware, naive, plain mmap, llama.cpp) in its own child under a real memory limit
        (offload_capped.py) -> benchmarks/results/flash-memcap-cpu-<date>.json

--checksum-compare N adds N rounds of the ioaware case in each bundle-checksum mode of the reader ("after": the earlier
path, "fused", "threads": the default, "off"), interleaved in a rotating order so that load from other jobs falls on
every mode alike; --checksum-replay N replays the decode steps' reads on the reader alone, modes interleaved token by
token, and reports each mode's I/O time paired with "off"'s.
"""

from __future__ import annotations

import argparse
import mmap
import os
import platform
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from ..env import settings
from ..files import write_json_atomic
from ..hardware.probe_disk import probe_file, throughput_at
from ..iomodel.io import predict_read_seconds
from ..report import print_table
from ..runtime import generate
from ..runtime.offload.reader import VERIFY_MODES, NeuronReader, drop_page_cache
from ..runtime.offload.session import open_streamed
from ..runtime.offload.streamed_ffn import stream_summary
from ..units import human_bytes
from .common import RESULTS_DIR
from .offload_common import PROMPT, Clock, MmapFFN, NaiveFFN, write_dense_file


def reset_runtime(rt) -> None:
    """A streamed runtime as built: empty window cache, zero counters (the model's KV cache is reset by generate)."""
    from ..runtime.offload.cache import NeuronCache
    from ..runtime.offload.streamed_ffn import StreamStats

    c = rt.cache
    rt.cache = NeuronCache(len(c), c[0].n_neurons, c[0].capacity, c[0].hidden, c[0].window, dtype=c[0].buf.dtype)
    rt.stats, rt.prefill, rt._forwards = StreamStats(), StreamStats(), 0


def run_case(name, model, tok, ids, n_tokens, files):
    for f in files:
        drop_page_cache(f)
    t0 = time.perf_counter()
    res = generate(model, tok, ids, n_tokens, stop_at_eos=False)
    return res, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    if argv is not None and "--memory-cap" in argv:  # each provider in its own capped child: offload_capped.py
        from .offload_capped import main as capped_main

        return capped_main([a for a in argv if a != "--memory-cap"])
    ap = argparse.ArgumentParser(prog="ioaware bench offload", description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--budget", default="50%")
    ap.add_argument("--tokens", type=int, default=24)
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--window", type=int, default=5)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--prefetch", action="store_true", help="ioaware reads each block's FFN ahead during attention")
    # consumed before parsing (above): listed here so that --help shows the mode
    ap.add_argument("--memory-cap", action="store_true",
                    help="each provider in its own child under a real memory limit (options: --memory-cap --help)")
    ap.add_argument("--torch-threads", type=int, default=2)
    ap.add_argument("--calibration", default=None, help="text file to fit thresholds/predictors on (default: the "
                    "text shipped in ioaware/runtime/offload/data)")
    ap.add_argument("--trace", default=None, help="save the predicted neuron ids per decode step (npz) for "
                    "`ioaware bench offload-replay`")
    ap.add_argument("--curve", choices=["same-run", "cached"], default="same-run",
                    help="price reads with a ~2 s curve measured on the store file right before each case (default; "
                         "this VM's disk drifts between a cached probe and a run) or with the cached probe alone; "
                         "the cached curve's prediction is reported beside either way")
    ap.add_argument("--checksum", choices=list(VERIFY_MODES), default="threads",
                    help="how the ioaware cases check bundle checksums: in the read 'threads' as chunks land (the "
                         "runtime's default), 'fused' with the gather after the reads, 'after' all reads and the "
                         "gather (the earlier path), or 'off' (see runtime/offload/reader.py)")
    ap.add_argument("--checksum-compare", type=int, default=0, metavar="N",
                    help="also run N interleaved rounds of the ioaware case in each checksum mode")
    ap.add_argument("--checksum-replay", type=int, default=0, metavar="N",
                    help="replay the ioaware case's decode reads N times per token in each checksum mode, modes "
                         "interleaved token by token (the reader alone: differences are paired per token)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    loadavg_before = os.getloadavg()
    torch.set_num_threads(args.torch_threads)
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")  # the read-only memmap

    text = Path(args.calibration).read_text() if args.calibration else None
    model, rt, acct, tok, store = open_streamed(args.model, args.budget, None, args.window, args.threads,
                                                args.sparsity, calibration_text=text, prefetch=args.prefetch)
    rt.reader.verify = args.checksum
    cached_curve = rt.curve
    if cached_curve is None:
        raise SystemExit("no disk curve for this disk: run `ioaware probe disk` first")

    def curve_now(path):
        return probe_file(path) if args.curve == "same-run" else cached_curve
    model.set_attention("sdpa")
    ids = tok.encode(tok.apply_chat_template([{"role": "user", "content": PROMPT}]))
    a = store.args
    dense_path = settings().cache_dir / "stores" / (store.path.stem + ".dense-ffn.f16")
    write_dense_file(store, dense_path)
    files = [store.path, dense_path]
    rows, cases = [], {}

    # (c) ioaware, then (c') the same with the speculative read-ahead (a fresh cache and counters)
    for name, pf in (("ioaware", False), ("ioaware_prefetch", True)):
        if pf:
            reset_runtime(rt)
        rt.prefetch = pf
        rt.trace = [] if args.trace and not pf else None
        rt.use_curve(curve_now(store.path))  # the merge gap from the curve that prices the reads
        priced = {"cached_s": 0.0}
        same_run_price = rt._price

        def both_prices(chunk_sizes, _same=same_run_price, _acc=priced):  # the cached curve's price, kept aside
            if rt.counting:
                _acc["cached_s"] += predict_read_seconds(chunk_sizes, cached_curve, rt.reader.threads, rt.reader.direct)
            return _same(chunk_sizes)

        rt._price = both_prices
        if not pf:  # the decode steps' reads, kept for --checksum-replay
            reads, real_read = [], rt.reader.read

            def recording(layer, nids, _read=real_read, _out=reads):
                if rt.counting:
                    _out.append((rt.stats.tokens, layer, np.array(nids, dtype=np.int64)))
                return _read(layer, nids)

            rt.reader.read = recording
        res, wall = run_case(name, model, tok, ids, args.tokens, files)
        del rt._price  # back to the class's method
        if not pf:
            del rt.reader.read
        if rt.trace is not None:
            np.savez_compressed(args.trace, layers=np.array([t[0] for t in rt.trace]), hidden=a.hidden_dim,
                                **{f"ids{i}": t[1] for i, t in enumerate(rt.trace)})
        fs_ = stream_summary(rt, acct, res.summary["decode_s"])
        cases[name] = {"io_s_per_token": fs_["flash_io_s_per_token"], "bytes_per_token": fs_[
            "flash_bytes_read_per_token"], "predicted_io_s_per_token": fs_["flash_predicted_io_s_per_token"],
            "tok_s": res.summary["decode_tok_s"], "GBps": fs_["flash_GBps"], "window_hit_rate": fs_["window_hit_rate"],
            "ffn_frac_loaded_per_token": fs_["ffn_frac_loaded_per_token"],
            "ffn_frac_predicted_per_token": fs_["ffn_frac_predicted_per_token"],
            "stall_s_per_token": fs_["flash_stall_s_per_token"], "prefetch_used_frac": fs_["prefetch_used_frac"],
            "overflow_neurons": fs_["overflow_neurons"], "resident_bytes": acct["resident_total"], "text": res.text,
            "predicted_cached_curve_io_s_per_token": priced["cached_s"] / max(rt.stats.tokens, 1),
            "curve": rt.curve, "detail": fs_}
    checksum_compare = compare_checksum_modes(rt, acct, model, tok, ids, args, files) if args.checksum_compare \
        else None
    checksum_replay = replay_checksum_modes(rt, store, reads, args.checksum_replay) if args.checksum_replay else None
    rt.reader.verify = args.checksum
    ffns = [layer.feed_forward for layer in model.layers]

    # (a) naive: same resident model, FFN read whole per layer per token
    clock = Clock()
    reader = NeuronReader(store, args.threads, rt.reader.chunk, rt.reader.direct, slots=1)
    curve = curve_now(store.path)
    for i, layer in enumerate(model.layers):
        layer.feed_forward = NaiveFFN(reader, i, clock, curve, cached_curve)
    res, wall = run_case("naive", model, tok, ids, args.tokens, files)
    n = res.summary["decode_tokens"]
    cases["naive"] = {"io_s_per_token": clock.io_s / n, "bytes_per_token": clock.bytes / n,
                      "predicted_io_s_per_token": clock.pred_s / n, "tok_s": res.summary["decode_tok_s"],
                      "predicted_cached_curve_io_s_per_token": clock.pred_cached_s / n, "curve": curve,
                      "GBps": clock.bytes / clock.io_s / 1e9, "resident_bytes": acct["resident_measured"] +
                      reader.buffer_bytes, "text": res.text}
    reader.close()

    # (b) mmap under the same budget
    clock = Clock()
    layer_bytes = 3 * a.hidden_dim * a.dim * 2
    pinned = max(0, min(a.n_layers, (acct["budget"] - acct["resident_measured"]) // layer_bytes))
    fd = os.open(dense_path, os.O_RDONLY)
    raw = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
    mm = np.frombuffer(raw, dtype=np.float16)
    curve = curve_now(dense_path)
    for i, layer in enumerate(model.layers):
        layer.feed_forward = MmapFFN(mm, raw, fd, i, a, pinned, clock)
    res, wall = run_case("mmap", model, tok, ids, args.tokens, files)
    n = res.summary["decode_tokens"]
    hot = getattr(clock, "hot_s", 0.0) * (n / max(clock.forwards, 1))  # the extra measuring pass, per decode
    dec_s = res.summary["decode_s"] - hot
    readahead = 128 << 10  # the kernel's default readahead window: the size mmap's faults read in
    cases["mmap"] = {"io_s_per_token": clock.io_s / n, "bytes_per_token": clock.bytes / n,
                     "predicted_io_s_per_token": clock.bytes / n / throughput_at(curve, readahead, 1, False),
                     "predicted_cached_curve_io_s_per_token": clock.bytes / n / throughput_at(cached_curve, readahead,
                                                                                               1, False),
                     "curve": curve,
                     "tok_s": n / dec_s if dec_s > 0 else 0.0, "GBps": clock.bytes / max(clock.io_s, 1e-9) / 1e9,
                     "pinned_layers": int(pinned), "resident_bytes": acct["resident_measured"] + pinned * layer_bytes,
                     "text": res.text}
    del mm
    for i, layer in enumerate(model.layers):
        layer.feed_forward = ffns[i]
    os.close(fd)
    rt.close()

    naive, mm_, io = cases["naive"], cases["mmap"], cases["ioaware"]
    for k, c in cases.items():
        p = c["predicted_io_s_per_token"]
        c["measured_vs_predicted"] = c["io_s_per_token"] / p if p else None
        pc = c["predicted_cached_curve_io_s_per_token"]
        c["measured_vs_predicted_cached_curve"] = c["io_s_per_token"] / pc if pc else None
        rows.append([k, c["io_s_per_token"] * 1e3, p * 1e3, c["measured_vs_predicted"],
                     c["measured_vs_predicted_cached_curve"], human_bytes(
            c["bytes_per_token"]), c["GBps"], c["tok_s"], human_bytes(c["resident_bytes"])])
    print_table(f"bench_flash: {store.header['source']} at budget {args.budget} ({human_bytes(acct['budget'])} of "
                f"{human_bytes(acct['weight_bytes'])})", ["case", "I/O ms/token", "predicted ms", "meas/pred",
                                                          "meas/pred (cached curve)",
                                                          "read/token", "GB/s", "tok/s", "resident"], rows)
    bar = {"io_vs_naive": naive["io_s_per_token"] / io["io_s_per_token"] if io["io_s_per_token"] else None,
           "io_vs_mmap": mm_["io_s_per_token"] / io["io_s_per_token"] if io["io_s_per_token"] else None,
           "ioaware_measured_vs_predicted": io["measured_vs_predicted"],
           "budget_frac": acct["budget"] / acct["weight_bytes"],
           "bytes_vs_naive": naive["bytes_per_token"] / io["bytes_per_token"] if io["bytes_per_token"] else None,
           "ffn_frac_predicted_per_token": io["ffn_frac_predicted_per_token"]}
    if "ioaware_prefetch" in cases:  # the decode step's wait on the disk, with the read-ahead hiding some of it
        w = cases["ioaware_prefetch"]["stall_s_per_token"]
        bar["prefetch_wait_vs_naive"] = naive["io_s_per_token"] / w if w else None
    bar["pass"] = bool(bar["io_vs_naive"] and bar["io_vs_naive"] >= 4 and bar["io_vs_mmap"] >= 2 and
                       io["measured_vs_predicted"] and abs(io["measured_vs_predicted"] - 1) <= 0.2
                       and bar["budget_frac"] <= 0.5)
    print(f"bar: I/O {bar['io_vs_naive']:.2f}x below naive (need 4), {bar['io_vs_mmap']:.2f}x below mmap (need 2), "
          f"measured/predicted {io['measured_vs_predicted']:.2f} (need 0.8-1.2): {'PASS' if bar['pass'] else 'FAIL'}")
    out = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": platform.node(), "cpu": platform.processor(),
           "cores": os.cpu_count(), "torch": torch.__version__, "model": store.header["source"],
           "store": str(store.path), "weights": "real (SmolLM2 GGUF dequantised to fp16)" if args.model is None else
           "real", "budget": args.budget, "memory": acct, "tokens": args.tokens, "sparsity": args.sparsity,
           "window": args.window, "read_threads": args.threads, "direct_io": rt.reader.direct,
           "chunk": rt.reader.chunk, "disk_peak_GBps": cached_curve["peak_GBps"], "curve_date": cached_curve["date"],
           "curve_mode": args.curve, "checksum": args.checksum, "checksum_compare": checksum_compare,
           "checksum_replay": checksum_replay,
           "loadavg_before": loadavg_before,
           "loadavg_after": os.getloadavg(), "calibration": args.calibration or "shipped",
           "cases": cases, "bar": bar}
    dest = Path(args.out) if args.out else RESULTS_DIR / f"flash-cpu-{time.strftime('%Y-%m-%d')}.json"
    write_json_atomic(dest, out)
    plot(out, dest.with_suffix(".png"))
    print(f"wrote {dest}")
    return 0


def compare_checksum_modes(rt, acct, model, tok, ids, args, files) -> dict:
    """N rounds of the ioaware case (no read-ahead) in each checksum mode, the order rotated every round. Per mode:
    I/O and the time the decode step waited on checksums after its reads, per token. "threads" hashes mostly inside
    the read threads; what that costs shows as I/O time above "off" and as process CPU time, not as waiting."""
    modes = ["after", "fused", "threads", "off"]
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    rt.prefetch, rt.trace = False, None
    for r in range(args.checksum_compare):
        for m in modes[r % len(modes):] + modes[:r % len(modes)]:
            reset_runtime(rt)
            rt.reader.verify = m
            hashed0, cpu0 = rt.reader.total.verify_thread_s, time.process_time()
            res, _ = run_case(f"ioaware/{m}", model, tok, ids, args.tokens, files)
            cpu = time.process_time() - cpu0  # all threads, prefill + decode: hashing costs CPU wherever it runs
            s = stream_summary(rt, acct, res.summary["decode_s"])
            n = max(rt.stats.tokens, 1)
            runs[m].append({"round": r, "loadavg": os.getloadavg()[0], "io_s_per_token": s["flash_io_s_per_token"],
                            "verify_wait_s_per_token": s["flash_verify_s_per_token"],
                            "verify_thread_s_per_token_incl_prefill": (rt.reader.total.verify_thread_s - hashed0) / n,
                            "bytes_per_token": s["flash_bytes_read_per_token"], "tok_s": res.summary["decode_tok_s"],
                            "process_cpu_s_per_token_incl_prefill": cpu / n,
                            "text": res.text})
    keys = ("io_s_per_token", "verify_wait_s_per_token", "verify_thread_s_per_token_incl_prefill", "tok_s",
            "process_cpu_s_per_token_incl_prefill")
    med = {m: {k: float(np.median([x[k] for x in v])) for k in keys} for m, v in runs.items()}
    off = med["off"]["io_s_per_token"]
    for m in ("after", "fused", "threads"):
        d = med[m]
        d["verify_wait_share_of_io"] = d["verify_wait_s_per_token"] / d["io_s_per_token"]
        d["io_above_off_s_per_token"] = d["io_s_per_token"] - off
        d["io_above_off_share"] = (d["io_s_per_token"] - off) / d["io_s_per_token"]
    rows = [[m, d["io_s_per_token"] * 1e3, d["verify_wait_s_per_token"] * 1e3,
             d["verify_thread_s_per_token_incl_prefill"] * 1e3, (d["io_s_per_token"] - off) * 1e3,
             d["process_cpu_s_per_token_incl_prefill"] * 1e3] for m, d in med.items()]
    print_table(f"checksums: medians of {args.checksum_compare} interleaved rounds", [
        "mode", "I/O ms/token", "waited on checksums ms", "hashed in threads ms", "I/O above off ms",
        "process CPU ms/token"], rows)
    same_text = len({x["text"] for v in runs.values() for x in v}) == 1
    return {"rounds": args.checksum_compare, "order": "rotated per round", "median": med, "runs": runs,
            "same_text_every_run": same_text}


def replay_checksum_modes(rt, store, reads, rounds: int) -> dict:
    """The reader alone, on the exact reads of the ioaware case's decode steps: for each round and each token, that
    token's reads once in every checksum mode (order rotated), page cache dropped before each. Model compute and
    its noise are left out, and each mode's time is paired with "off"'s on the same token in the same round, so a
    few ms stand out of a loaded machine's drift. Reports means per token and the paired differences."""
    modes = ["after", "fused", "threads", "off"]
    by_tok: dict[int, list] = {}
    for t, layer, nids in reads:
        by_tok.setdefault(t, []).append((layer, nids))
    toks = sorted(by_tok)
    r0 = rt.reader
    rec = {m: [] for m in modes}  # per (round, token): (I/O s, waited on checksums s, hashed in threads s, CPU s)
    with NeuronReader(store, r0.threads, r0.chunk, r0.direct, slots=1, max_neurons=r0.max_neurons,
                      max_gap=r0.max_gap) as r:
        for rnd in range(rounds):
            for k, t in enumerate(toks):
                j = (rnd * len(toks) + k) % len(modes)
                for m in modes[j:] + modes[:j]:
                    r.verify = m
                    drop_page_cache(store.path)
                    io = wait = hashed = 0.0
                    c0 = time.process_time()
                    for layer, nids in by_tok[t]:
                        st = r.read(layer, nids).stats
                        io, wait, hashed = io + st.seconds, wait + st.verify_s, hashed + st.verify_thread_s
                    rec[m].append((io, wait, hashed, time.process_time() - c0))
    a = {m: np.array(v) for m, v in rec.items()}
    out: dict = {"rounds": rounds, "tokens": len(toks), "reads_per_token": len(reads) / max(len(toks), 1),
                 "order": "modes rotated per (round, token)", "modes": {}}
    rows = []
    for m in modes:
        x = a[m]
        d = {"io_s_per_token": float(x[:, 0].mean()), "io_s_per_token_median": float(np.median(x[:, 0])),
             "verify_wait_s_per_token": float(x[:, 1].mean()), "verify_thread_s_per_token": float(x[:, 2].mean()),
             "cpu_s_per_token": float(x[:, 3].mean())}
        for base in ("off", "after"):
            if m != base:
                diff = x[:, 0] - a[base][:, 0]  # paired: same token, same round
                d[f"io_minus_{base}_s"] = float(diff.mean())
                d[f"io_minus_{base}_stderr_s"] = float(diff.std(ddof=1) / np.sqrt(len(diff)))
                d[f"cpu_minus_{base}_s"] = float((x[:, 3] - a[base][:, 3]).mean())
        if m != "off":
            d["verify_wait_share_of_io"] = d["verify_wait_s_per_token"] / d["io_s_per_token"]
            d["io_above_off_share"] = d["io_minus_off_s"] / d["io_s_per_token"]
        out["modes"][m] = d
        rows.append([m, d["io_s_per_token"] * 1e3, d["verify_wait_s_per_token"] * 1e3,
                     d["verify_thread_s_per_token"] * 1e3,
                     f"{d['io_minus_off_s'] * 1e3:+.2f} ± {d['io_minus_off_stderr_s'] * 1e3:.2f}" if m != "off" else "",
                     d["cpu_s_per_token"] * 1e3])
    print_table(f"checksums, reader replay: {len(toks)} tokens x {rounds} rounds per mode, means per token", [
        "mode", "I/O ms", "waited on checksums ms", "hashed in threads ms", "I/O minus off ms (± s.e.)",
        "CPU ms"], rows)
    return out


def plot(out: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [k for k in ("naive", "mmap", "ioaware", "ioaware_prefetch") if k in out["cases"]]
    c = out["cases"]
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    x = np.arange(len(names))
    ax[0].bar(x - 0.2, [c[k]["io_s_per_token"] * 1e3 for k in names], 0.4, label="measured")
    ax[0].bar(x + 0.2, [c[k]["predicted_io_s_per_token"] * 1e3 for k in names], 0.4, label="iomodel")
    ax[0].set_xticks(x, names)
    ax[0].set_ylabel("I/O ms per token")
    ax[0].legend()
    ax[1].bar(x, [c[k]["bytes_per_token"] / 1e6 for k in names], color="tab:gray")
    ax[1].set_xticks(x, names)
    ax[1].set_ylabel("MB read per token")
    fig.suptitle(f"{Path(out['model']).name}: budget {out['budget']} of weights, {out['cores']}-core CPU")
    fig.tight_layout()
    fig.savefig(path, dpi=110)

