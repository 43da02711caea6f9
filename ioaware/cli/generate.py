"""`ioaware generate`: stream text from a Llama-family model (GGUF file or Hugging Face folder), then report
tokens/s, peak memory and the bandwidth achieved reading weights."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ._args import budget, fraction, nonneg_float, nonneg_int, positive_int, unit_fraction


def add_parser(sp) -> None:
    sp.add_argument("--prompt", required=True, help="the text to continue (or the user message with --chat)")
    sp.add_argument("--model", default=None, help="a .gguf file or a folder with config.json, *.safetensors and "
                    "tokenizer.json (default: IOAWARE_MODEL, else the embedded SmolLM2-135M-Instruct GGUF), or a "
                    "single .safetensors file from `ioaware compress svd` (factors: FlashSVD's kernels on CUDA) or "
                    "`ioaware prune` (packed sparse: ioaware.spmm on CUDA)")
    sp.add_argument("--relufy", default=None, metavar="ADAPTER",
                    help="a relufy adapter (`ioaware relufy`): LoRA deltas merged into the FFN weights at load and the "
                    "gate's SiLU replaced by its ReLU, so FFN activations have exact zeros the streamed FFN skips; its "
                    "base model's SHA-256 is checked (default: the shipped smollm2-relu adapter for the default model, "
                    "when it exists)")
    sp.add_argument("--no-relufy", action="store_true", help="run the model as it is (SwiGLU), without any adapter")
    sp.add_argument("--max-new-tokens", type=positive_int, default=128)
    sp.add_argument("--temperature", type=nonneg_float, default=0.0, help="0 = greedy (default)")
    sp.add_argument("--top-p", type=fraction, default=1.0, help="nucleus sampling mass, in (0, 1]")
    sp.add_argument("--seed", type=nonneg_int, default=None)
    sp.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    sp.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    sp.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                    help="weights and activations (default: float32 on CPU, bfloat16 on CUDA)")
    sp.add_argument("--weights", choices=["auto", "dense", "quantized"], default="auto",
                    help="dense: dequantise GGUF weights to --dtype; quantized: keep 4-bit GGUF blocks packed "
                    "(CPU; bf16 activations); auto: quantized on CPU for Q4_0/Q4_1 files with no --dtype, else dense")
    sp.add_argument("--attention", choices=["auto", "flash_attn", "sdpa"], default="auto",
                    help="auto: ioaware.flash_attn on CUDA; on CPU PyTorch's fused SDPA, because flash_attn's CPU "
                    "path is its readable (slow) reference")
    sp.add_argument("--linear", choices=["auto", "flat", "torch"], default="auto",
                    help="projections: flat = ioaware.flat_linear (GEMV / flat GEMM / cuBLAS per shape from the "
                    "measured dataflow table), torch = F.linear; auto: flat on CUDA, torch on CPU")
    sp.add_argument("--cuda-graphs", action="store_true", default=None,
                    help="capture the decode step in a CUDA graph (default on with --device cuda)")
    sp.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_false")
    sp.add_argument("--compile", action="store_true",
                    help="torch.compile the CUDA-graph decode step (fuses norms, RoPE and SiLU; ~1 min to compile)")
    sp.add_argument("--threads", type=positive_int, default=None, help="CPU threads (default: torch's choice)")
    sp.add_argument("--decode-step", choices=["auto", "module"], default="auto",
                    help="CPU decode: auto = the fused step (runtime/llm/cpu_decode.py) for packed models, module = "
                    "the model's modules one by one (the path before it)")
    sp.add_argument("--no-weight-cache", dest="weight_cache", action="store_false",
                    help="packed CPU weights: neither read nor write the memory-mapped cache in the cache dir "
                    "(default: built on first load, mapped on later starts)")
    sp.add_argument("--memory-budget", default=None, metavar="PCT|SIZE", type=budget,
                    help="cap on the process's memory above its baseline (the resident set once torch and ioaware "
                    "are loaded, printed): e.g. 50%% (of the model's fp16 weight bytes) or 120MiB / 120MB. FFN "
                    "neurons stream from a flash store (converted into the cache dir if needed), predicted per "
                    "token, kept in a window cache")
    sp.add_argument("--host-budget", default=None, metavar="PCT|SIZE",
                    help="--device cuda with --memory-budget: pinned host memory for the FFN layers not in HBM, as a "
                    "share of the weight bytes or a size (default: no cap); what it does not hold is read from a "
                    "layer file on disk (IOAWARE_CACHE_DIR) into pinned staging by --read-threads threads")
    sp.add_argument("--gpu-ffn", choices=["auto", "dense", "sparse"], default="auto",
                    help="--device cuda with --memory-budget: dense streams every weight of a streamed FFN layer; "
                    "sparse gathers only the predicted neurons (a relufied model: the gate-copy predictor); auto: "
                    "sparse for a relufied model, else dense")
    sp.add_argument("--store", default=None, help="the flash store to stream from (must exist unless --convert; "
                    "default: the cache dir's, converted on first use)")
    sp.add_argument("--convert", action="store_true", help="with --store PATH: write the store there if it is missing")
    sp.add_argument("--window", type=nonneg_int, default=5, help="tokens whose neurons stay cached (--memory-budget)")
    sp.add_argument("--read-threads", type=positive_int, default=8, help="parallel reads (--memory-budget)")
    sp.add_argument("--prefetch", action="store_true",
                    help="read each block's likely FFN neurons ahead, while its attention runs (--memory-budget)")
    sp.add_argument("--ffn-sparsity", type=unit_fraction, default=0.2,
                    help="fraction of FFN neurons the gate threshold zeroes (--memory-budget; default 0.2, the largest "
                         "within 5%% of dense perplexity on SmolLM2, benchmarks/results/sparsity-smollm2-*.json); "
                         "a relufied model (--relufy) needs no threshold: its zeros are exact, so this is ignored")
    sp.add_argument("--kv-budget", default=None, type=_kv_budget, metavar="hbm=SIZE,dram=SIZE[,ssd=PATH]",
                    help="tiered KV cache (runtime/kvtiers): the newest pages in device memory up to hbm=, older in "
                    "(pinned) host memory up to dram=, the oldest in a file under ssd=; each tier attends where its "
                    "data is or after moving it (the iomodel picks from probes, printed), merged exactly by LSE")
    sp.add_argument("--json", default=None, metavar="FILE", help="also write the summary as JSON (- for stdout)")
    sp.add_argument("--quiet", action="store_true", help="print nothing but errors: no text, no table, no progress "
                    "(the --json summary is still written)")
    sp.set_defaults(func=run)


def run(args) -> int:
    import torch

    from ..errors import DeviceError
    from ..report import emit_json, print_table
    from ..runtime import SamplingConfig, build_model, generate, load_checkpoint
    from ..units import human_bytes

    if not args.prompt.strip():
        raise ValueError("the prompt is empty; give some text with --prompt")
    if args.model and not Path(args.model).exists():
        raise FileNotFoundError(f"--model {args.model}: not found (no such file or folder)")
    if args.kv_budget and args.memory_budget:
        from ..errors import UnsupportedError

        raise UnsupportedError("--kv-budget and --memory-budget do not run together yet; pick one")
    if args.memory_budget and args.model and Path(args.model).suffix == ".safetensors":
        from ..errors import UnsupportedError

        raise UnsupportedError("--memory-budget streams a dense model's FFN from a flash store; a factor or pruned "
                               f"checkpoint ({Path(args.model).name}) runs without it")
    if not args.memory_budget:
        extra = [f for f, on in (("--store", args.store), ("--convert", args.convert), ("--prefetch", args.prefetch))
                 if on]
        if extra:
            raise ValueError(f"{', '.join(extra)} only apply with --memory-budget")
    if args.convert and not args.store:
        raise ValueError("--convert writes the store named by --store; give --store PATH too")
    if (args.host_budget or args.gpu_ffn != "auto") and not (args.memory_budget and args.device == "cuda"):
        raise ValueError("--host-budget and --gpu-ffn apply to the GPU stream: add --device cuda --memory-budget")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise DeviceError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    from ..distributed.launch import prepare_generate, shard_for_generate

    tp = prepare_generate(args)  # under torchrun: join the process group (tensor parallelism); else None
    sampling = SamplingConfig(args.temperature, args.top_p, args.seed)
    from ..runtime.relufy.apply import resolve_adapter

    args.relufy = resolve_adapter(args.relufy, args.no_relufy, args.model)  # the shipped one for the default model

    if args.memory_budget:
        return _run_streamed(args, sampling)
    t0 = time.perf_counter()
    if args.relufy is not None:  # hash checked before the model is read
        from ..runtime.relufy.apply import load_relufied

        ckpt = load_relufied(args.model, args.relufy, weight_cache=args.weight_cache)
    else:
        ckpt = load_checkpoint(args.model, weight_cache=args.weight_cache)
    tok = ckpt.tokenizer
    text = tok.apply_chat_template([{"role": "user", "content": args.prompt}]) if args.chat else args.prompt
    ids = tok.encode(text)
    _check_context(len(ids), args.max_new_tokens, ckpt.args.max_seq_len, args.quiet)  # before building the model
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, None: None}[args.dtype]
    model = build_model(ckpt, args.device, dtype, weights=args.weights, weight_cache=args.weight_cache)
    model = shard_for_generate(model, tp)
    weights = model.weight_format
    model.set_attention(("flash_attn" if args.device == "cuda" else "sdpa") if args.attention == "auto"
                        else args.attention)
    model.set_linear(("flat" if args.device == "cuda" else "torch") if args.linear == "auto" else args.linear)
    load_s = time.perf_counter() - t0
    graphs = args.device == "cuda" if args.cuda_graphs is None else args.cuda_graphs
    if graphs and args.device != "cuda":
        raise DeviceError("--cuda-graphs needs --device cuda")
    if args.compile and not graphs:
        raise DeviceError("--compile compiles the CUDA-graph decode step: it needs --device cuda with CUDA graphs")
    tiers = None
    if args.kv_budget:  # tiered KV: a step's shapes change as pages move, so no CUDA graph
        if args.cuda_graphs or args.compile:
            raise DeviceError("--kv-budget decodes without CUDA graphs; drop --cuda-graphs / --compile")
        graphs, tiers = False, _install_kv_tiers(model, args, len(ids) + args.max_new_tokens)

    def emit(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    try:
        res = generate(model, tok, ids, args.max_new_tokens, sampling, on_text=None if args.quiet else emit,
                       cuda_graphs=graphs, compile=args.compile, decode_step=args.decode_step)
    finally:
        if tiers is not None:
            tiers.close()  # stops the SSD worker, deletes the (unsealed) KV file
    if not args.quiet:
        sys.stdout.write("\n\n")
        _say_context_stop(res.summary)
    s = res.summary
    s.update(model=str(ckpt.path), format=ckpt.format, tensor_types=ckpt.tensor_types, weights=weights,
             load_s=load_s, time_to_first_token_s=load_s + s["prefill_s"],
             weight_cache=getattr(model, "packed_cache", {}).get("state"), chat=bool(args.chat),
             temperature=args.temperature, top_p=args.top_p, seed=args.seed,
             text=res.text, **_relufy_fields(ckpt.relufy))
    if tiers is not None:
        s["kv_tiers"] = tiers.summary()
    if tp:
        s["tensor_parallel"] = {**{k: v for k, v in model.tp.items() if k != "full_args"}, "tokens": res.tokens}
    rows = [
        ["model", f"{ckpt.path.name} ({ckpt.format}, {weights} weights, {s['dtype']}, {s['device']})"
         + (f" + {Path(s['relufy']).name} ({s['ffn_activation']})" if s["relufy"] else "")],
        ["prompt tokens", s["prompt_tokens"]],
        ["generated tokens", s["generated_tokens"]],
        ["prefill", f"{s['prefill_tok_s']:.1f} tok/s"],
        ["decode", f"{s['decode_tok_s']:.1f} tok/s" + (" (CUDA graph" + (", compiled)" if s["compiled_step"] else ")")
                                                        if s["cuda_graphs"] else "")
         + (" (fused CPU step)" if s.get("decode_step") == "cpu fused" else "")],
        ["attention", s["attention"]],
        ["linear", s["linear"]],
        ["peak memory", f"{human_bytes(s['peak_memory_bytes'])} ({s['peak_memory_kind']})"],
        ["weights read / token", human_bytes(s["weight_bytes_per_token"])],
        ["achieved weight bandwidth", f"{s['achieved_weight_GBps']:.1f} GB/s"],
        ["load time", f"{load_s:.1f} s" + (f" (packed weights cache: {s['weight_cache']})" if s["weight_cache"]
                                           else "")],
        ["time to first token", f"{s['time_to_first_token_s']:.2f} s (load + prefill)"],
    ]
    if tiers is not None:
        kv = s["kv_tiers"]
        rows.append(["kv tiers (tokens per layer hbm/dram/ssd)", "/".join(
            str(v) for v in kv["tokens_per_tier_per_layer"].values()) + f"; dram {kv['modes']['dram']}, ssd "
            f"{kv['modes']['ssd']}; {human_bytes(kv['ssd_bytes_written'])} written to the SSD tier"])
    if not args.quiet:
        print_table("ioaware generate", ["", "value"], rows)
    emit_json(s, args.json)
    return 0


def _relufy_fields(adapter) -> dict:
    """What the summary says about the relufy adapter a run used (none: the model's own SwiGLU)."""
    if adapter is None:
        return {"relufy": None, "ffn_activation": "silu"}
    return {"relufy": str(adapter.path), "ffn_activation": adapter.activation, "ffn_activation_shift": adapter.shift,
            "relufy_rank": adapter.rank, "relufy_meta": {k: v for k, v in adapter.meta.items() if k != "format"}}


def _kv_budget(text: str):
    """--kv-budget, parsed when the command line is (a bad spec is a one-line argparse error)."""
    import argparse

    from ..runtime.kvtiers.cache import parse_kv_budget

    try:
        return parse_kv_budget(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _install_kv_tiers(model, args, seq_len: int):
    """Give the model its tiered KV cache; probe and print each tier's mode (unless --quiet)."""
    from ..runtime.kvtiers import install_kv_tiers
    from ..runtime.kvtiers.probe import choose_for_context

    tiers = install_kv_tiers(model, args.kv_budget)
    tiers.check(1, seq_len)  # the budgets must hold the run: said before any work
    choose_for_context(tiers, seq_len, say=None if args.quiet else (lambda m: print(m, file=sys.stderr)))
    return tiers


def _check_context(n_prompt: int, max_new: int, ctx: int, quiet: bool) -> None:
    if n_prompt >= ctx:
        raise ValueError(f"the prompt has {n_prompt} tokens but the model's context is {ctx}; shorten it")
    if n_prompt + max_new > ctx and not quiet:
        print(f"note: the prompt has {n_prompt} tokens and the context is {ctx}: at most {ctx - n_prompt} of the "
              f"{max_new} new tokens fit", file=sys.stderr)


def _say_context_stop(s: dict) -> None:
    if s.get("stopped_at_context_limit"):
        print(f"stopped at the model's context limit after {s['generated_tokens']} new tokens", file=sys.stderr)


def _run_streamed(args, sampling) -> int:
    """--memory-budget: weights not resident stream from the flash store; the summary says what moved and how the
    process's memory compares with the cap."""
    from ..errors import UnsupportedError
    from ..report import emit_json, print_table
    from ..runtime import generate
    from ..runtime.offload.session import open_streamed
    from ..runtime.offload.streamed_ffn import stream_summary
    from ..units import human_bytes

    if args.device == "cuda":  # FFN layers streamed from pinned host memory into HBM (runtime/offload/gpu_stream.py)
        from .generate_gpu import run_gpu_streamed

        return run_gpu_streamed(args, sampling)
    if args.device != "cpu":
        raise UnsupportedError("--memory-budget runs on CPU for now (the GPU path stages through pinned memory)")
    _warm_up_torch()
    baseline = current_rss()  # torch and ioaware loaded, nothing of the model yet: what the budget sits above
    reset_peak_rss()  # the peak is measured from here (start-up transients before the baseline are not the model's)
    t0 = time.perf_counter()
    model, rt, acct, tok, store = open_streamed(
        args.model, args.memory_budget, args.store, args.window, args.read_threads, args.ffn_sparsity,
        progress=not args.quiet, probe_if_missing=True, prefetch=args.prefetch, convert_missing=args.convert,
        max_new_tokens=args.max_new_tokens, say=lambda m: print(m, file=sys.stderr), relufy=args.relufy,
        count_prompt=lambda tok: len(tok.encode(_prompt_text(tok, args))))  # KV planned for this prompt
    model.set_attention("sdpa" if args.attention == "auto" else args.attention)
    text = tok.apply_chat_template([{"role": "user", "content": args.prompt}]) if args.chat else args.prompt
    ids = tok.encode(text)
    _check_context(len(ids), args.max_new_tokens, model.args.max_seq_len, args.quiet)
    cached_curve = rt.curve
    if cached_curve is not None:  # the iomodel prices reads with the disk as it is now (see _recheck_disk)
        from ..runtime.offload.reader import probe_reads, with_reader_points

        # the disk now, and the reader's own per-request cost at the sizes it issues; the merge gap from the same
        rt.use_curve(with_reader_points(_recheck_disk(store.path, rt.reader.chunk, rt.reader.threads),
                                        probe_reads(rt.reader)))
    load_s = time.perf_counter() - t0

    def emit(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    try:
        res = generate(model, tok, ids, args.max_new_tokens, sampling, on_text=None if args.quiet else emit)
        streamed = stream_summary(rt, acct, res.summary["decode_s"])  # before close: naive_reads plans on the reader
    finally:
        rt.close()
    if not args.quiet:
        sys.stdout.write("\n\n")
        _say_context_stop(res.summary)
    s = res.summary
    s.update(streamed)
    peak = peak_rss()
    m = acct
    s.update(model=str(args.model or "default"), store=str(store.path), weights=model.weight_format, load_s=load_s,
             text=res.text, memory_budget=args.memory_budget, rss_baseline_bytes=baseline, rss_peak_bytes=peak,
             rss_above_baseline_bytes=peak - baseline, budget_bytes=m["budget"],
             within_budget=peak - baseline <= m["budget"], disk_curve=_curve_note(cached_curve),
             disk_recheck=_recheck_note(rt.curve) if cached_curve is not None else None,
             relufy=str(args.relufy) if args.relufy else None)
    pred = s["flash_predicted_io_s_per_token"]
    rows = [
        ["model", f"{Path(store.header['source']).name} → {store.path.name} ({model.weight_format})"
         + (f", relufied: {Path(args.relufy).name}" if args.relufy else "")],
        ["decode", f"{s['decode_tok_s']:.1f} tok/s ({s['decode_tokens']} tokens)"],
        ["process memory above baseline vs cap", f"{human_bytes(peak - baseline)} peak vs {human_bytes(m['budget'])} "
         f"({m['budget'] / m['weight_bytes']:.0%} of {human_bytes(m['weight_bytes'])} of weights)"
         + ("" if s["within_budget"] else "  OVER")],
        ["  baseline (torch + ioaware loaded and warmed up, before the model)", human_bytes(baseline)],
        ["  planned: resident / predictors / cache / I/O buffers / working", f"{human_bytes(m['resident_measured'])} / "
         f"{human_bytes(m['predictors'])} / {human_bytes(m['neuron_cache'])} "
         f"({m['cache_neurons_per_layer']} neurons/layer) / {human_bytes(m['io_buffers'])} / "
         f"{human_bytes(m['other'])}"],
        ["flash read / token", human_bytes(s["flash_bytes_read_per_token"])],
        ["I/O time / token: measured vs iomodel", f"{s['flash_io_s_per_token'] * 1e3:.2f} ms vs "
         + (f"{pred * 1e3:.2f} ms" if pred == pred else "n/a (run `ioaware probe disk`)")],
        ["  checksums: the wait after the reads / hashing inside the read threads",
         f"{s['flash_verify_s_per_token'] * 1e3:.2f} ms / {s['flash_verify_thread_s_per_token'] * 1e3:.2f} ms of CPU "
         "(its cost in I/O time: benchmarks/results/flash-checksum-*.json)"],
        ["I/O wait / token (reads not hidden behind compute)", f"{s['flash_stall_s_per_token'] * 1e3:.2f} ms"
         + (f" (prefetch: {s['prefetch_used_frac']:.0%} of read-ahead neurons used)"
            if s["prefetch_used_frac"] is not None else "")],
        ["flash GB/s vs probed peak", f"{s['flash_GBps']:.2f} vs {s['flash_peak_GBps']:.2f}"],
        ["disk curve (cached probe)", s["disk_curve"]],
        ["disk re-measured on the store at start (what the iomodel priced)", s["disk_recheck"] or "no"],
        ["window hit rate", f"{s['window_hit_rate']:.1%} (k={s['window']})"],
        ["FFN neurons loaded / token", f"{s['ffn_frac_loaded_per_token']:.1%} (predicted "
         f"{s['ffn_frac_predicted_per_token']:.1%})"],
        *_sparsity_rows(s),
        ["load time", f"{load_s:.1f} s"],
    ]
    if not args.quiet:
        print_table("ioaware generate --memory-budget", ["", "value"], rows)
    emit_json(s, args.json)
    return 0




def _sparsity_rows(s: dict) -> list[list[str]]:
    """FFN sparsity measured while decoding, and the streamed reads against naive whole-FFN reads."""
    from ..units import human_bytes

    def x(v):
        return f"{v:.2f}x" if v is not None else "n/a"

    rows = []
    if s.get("ffn_sparsity_measured") is not None:
        act = s["ffn_activation"] + (f" shift {s['ffn_activation_shift']:g}" if s["ffn_activation_shift"] else "")
        rows.append([f"FFN sparsity while decoding ({act})", f"{s['ffn_sparsity_measured']:.1%} of neurons off: "
                     f"{s['ffn_frac_skipped_per_token']:.1%} never read, {s['ffn_frac_loaded_zero_per_token']:.1%} "
                     "read and " + ("exactly zero" if s["ffn_activation"] != "silu" else "under the threshold")])
    naive_s = s.get("naive_predicted_io_s_per_token")
    rows.append(["naive whole-FFN reads / token (iomodel)", f"{human_bytes(s['naive_bytes_per_token'])}"
                 + (f", {naive_s * 1e3:.2f} ms" if naive_s is not None else ", n/a (no disk curve)")])
    rows.append(["speed-up vs naive: bytes / I/O time (iomodel both) / measured vs iomodel's naive",
                 f"{x(s['bytes_vs_naive'])} / {x(s['io_vs_naive_predicted'])} / {x(s['io_vs_naive_measured'])}"])
    return rows


def _prompt_text(tok, args) -> str:
    return tok.apply_chat_template([{"role": "user", "content": args.prompt}]) if args.chat else args.prompt


def _warm_up_torch() -> None:
    """Load what torch loads lazily on first use (its CPU kernels, SDPA, the meta device's decompositions: ~150 MB
    of library code and tables, the same for any model) so the baseline holds it and the budget measures the
    model's own memory."""
    import torch

    x = torch.zeros(1, 1, 8, 8)
    torch.nn.functional.scaled_dot_product_attention(x, x, x)
    (x.half() @ x.half()).sum()
    with torch.device("meta"):
        torch.nn.Embedding(2, 2)
    from ..runtime.offload.packed_resident import warm_up_kernels

    warm_up_kernels()  # the streamed decode step's kernels (int4/int8 matmuls, fp16 SDPA): library code, not model


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_peak_rss() -> None:
    """Restart the kernel's high-water mark of this process's RSS (VmHWM) at the current RSS (Linux: writing 5
    to /proc/self/clear_refs); elsewhere the peak stays the lifetime one, an upper bound."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss() -> int:
    """Peak RSS since `reset_peak_rss` (VmHWM), else the lifetime peak (ru_maxrss)."""
    hwm = _status_kib("VmHWM")
    if hwm is not None:
        return hwm
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_rss() -> int:
    """This process's resident set now (Linux /proc; else the peak so far, an upper bound)."""
    try:
        with open("/proc/self/statm") as f:
            import os

            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _recheck_disk(path: Path, chunk: int, threads: int) -> dict:
    """A ~0.3 s curve of the store's own disk at the reader's chunk sizes and thread counts, taken before decoding:
    on the 2-core VM the disk's rate drifted 1.5x between a cached probe and a run (dev/offload/NOTES.md,
    2026-12-03), more than the iomodel's +-20% target. Buffers: threads x chunk, freed before decoding starts."""
    from ..hardware.probe_disk import CHUNKS, probe_file

    small = (8 << 10,)  # a run of two padded neurons: the reader's commonest request after one page
    return probe_file(path, chunks=sorted({*small, *(c for c in CHUNKS if c <= max(chunk, CHUNKS[0]))}),
                      threads=sorted({1, threads}),
                      seconds_per_case=0.04, buffered_chunks=())


def _recheck_note(curve: dict) -> str:
    best = curve["best"]
    return (f"{len(curve['points'])} points in {curve['seconds_per_case'] * len(curve['points']):.1f} s, best "
            f"{best['GBps']:.2f} GB/s at {best['chunk'] >> 10} KiB x {best['threads']} threads")


def _curve_note(curve: dict | None) -> str:
    if not curve:
        return "none"
    import datetime as dt

    try:
        age = dt.datetime.now() - dt.datetime.strptime(curve["date"], "%Y-%m-%d %H:%M:%S")
        when = f"{age.days} days old" if age.days else f"{age.seconds // 3600} h old"
    except (KeyError, ValueError):
        when = "age unknown"
    return (f"{curve['date']} ({when}), {curve['file_bytes'] >> 20} MiB file, {curve['seconds_per_case']} s/case, "
            f"{len(curve['points'])} points")
