"""`ioaware generate`: stream text from a Llama-family model (GGUF file or Hugging Face folder), then report
tokens/s, peak memory and the bandwidth achieved reading weights."""

from __future__ import annotations

import sys
import time
from pathlib import Path


def add_parser(sp) -> None:
    sp.add_argument("--prompt", required=True, help="the text to continue (or the user message with --chat)")
    sp.add_argument("--model", default=None, help="a .gguf file or a folder with config.json, *.safetensors and "
                    "tokenizer.json (default: IOAWARE_MODEL, else the embedded SmolLM2-135M-Instruct GGUF)")
    sp.add_argument("--max-new-tokens", type=int, default=128)
    sp.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    sp.add_argument("--top-p", type=float, default=1.0)
    sp.add_argument("--seed", type=int, default=None)
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
    sp.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    sp.add_argument("--memory-budget", default=None, metavar="PCT|BYTES",
                    help="cap on weight bytes resident in DRAM, e.g. 40%% (of the model's fp16 weights) or 120MB: "
                    "FFN neurons stream from a flash store (converted into the cache dir if needed), predicted per "
                    "token, kept in a window cache")
    sp.add_argument("--store", default=None, help="the flash store to stream from (default: the cache dir's)")
    sp.add_argument("--window", type=int, default=5, help="tokens whose neurons stay cached (--memory-budget)")
    sp.add_argument("--read-threads", type=int, default=8, help="parallel reads (--memory-budget)")
    sp.add_argument("--prefetch", action="store_true",
                    help="read each block's likely FFN neurons ahead, while its attention runs (--memory-budget)")
    sp.add_argument("--ffn-sparsity", type=float, default=0.2,
                    help="fraction of FFN neurons the gate threshold zeroes (--memory-budget; default 0.2, the largest "
                         "within 5%% of dense perplexity on SmolLM2, benchmarks/results/sparsity-smollm2-*.json)")
    sp.add_argument("--json", default=None, metavar="FILE", help="also write the summary as JSON (- for stdout)")
    sp.add_argument("--quiet", action="store_true", help="do not stream the text (the summary still prints)")
    sp.set_defaults(func=run)


def run(args) -> int:
    import torch

    from ..errors import DeviceError
    from ..report import emit_json, print_table
    from ..runtime import SamplingConfig, build_model, generate, load_checkpoint
    from ..units import human_bytes

    if not args.prompt.strip():
        raise ValueError("the prompt is empty; give some text with --prompt")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise DeviceError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    sampling = SamplingConfig(args.temperature, args.top_p, args.seed)

    if args.memory_budget:
        return _run_streamed(args, sampling)
    t0 = time.perf_counter()
    ckpt = load_checkpoint(args.model)
    tok = ckpt.tokenizer
    text = tok.apply_chat_template([{"role": "user", "content": args.prompt}]) if args.chat else args.prompt
    ids = tok.encode(text)
    if len(ids) >= ckpt.args.max_seq_len:  # checked before building the model: a clear error, fast
        raise ValueError(f"the prompt has {len(ids)} tokens but the model's context is {ckpt.args.max_seq_len}; "
                         "shorten it")
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, None: None}[args.dtype]
    model = build_model(ckpt, args.device, dtype, weights=args.weights)
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

    def emit(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    res = generate(model, tok, ids, args.max_new_tokens, sampling, on_text=None if args.quiet else emit,
                   cuda_graphs=graphs, compile=args.compile)
    if not args.quiet:
        sys.stdout.write("\n\n")
    s = res.summary
    s.update(model=str(ckpt.path), format=ckpt.format, tensor_types=ckpt.tensor_types, weights=weights,
             load_s=load_s, chat=bool(args.chat), temperature=args.temperature, top_p=args.top_p, seed=args.seed,
             text=res.text)
    rows = [
        ["model", f"{ckpt.path.name} ({ckpt.format}, {weights} weights, {s['dtype']}, {s['device']})"],
        ["prompt tokens", s["prompt_tokens"]],
        ["generated tokens", s["generated_tokens"]],
        ["prefill", f"{s['prefill_tok_s']:.1f} tok/s"],
        ["decode", f"{s['decode_tok_s']:.1f} tok/s" + (" (CUDA graph" + (", compiled)" if s["compiled_step"] else ")")
                                                        if s["cuda_graphs"] else "")],
        ["attention", s["attention"]],
        ["linear", s["linear"]],
        ["peak memory", f"{human_bytes(s['peak_memory_bytes'])} ({s['peak_memory_kind']})"],
        ["weights read / token", human_bytes(s["weight_bytes_per_token"])],
        ["achieved weight bandwidth", f"{s['achieved_weight_GBps']:.1f} GB/s"],
        ["load time", f"{load_s:.1f} s"],
    ]
    print_table("ioaware generate", ["", "value"], rows)
    emit_json(s, args.json)
    return 0


def _run_streamed(args, sampling) -> int:
    """--memory-budget: weights not resident stream from the flash store; the summary says what moved."""
    from ..errors import UnsupportedError
    from ..report import emit_json, print_table
    from ..runtime import generate
    from ..runtime.offload.session import open_streamed
    from ..runtime.offload.streamed_ffn import stream_summary
    from ..units import human_bytes

    if args.device != "cpu":
        raise UnsupportedError("--memory-budget runs on CPU for now (the GPU path stages through pinned memory)")
    t0 = time.perf_counter()
    model, rt, acct, tok, store = open_streamed(args.model, args.memory_budget, args.store, args.window,
                                                args.read_threads, args.ffn_sparsity, probe_if_missing=True,
                                                prefetch=args.prefetch)
    model.set_attention("sdpa" if args.attention == "auto" else args.attention)
    text = tok.apply_chat_template([{"role": "user", "content": args.prompt}]) if args.chat else args.prompt
    ids = tok.encode(text)
    load_s = time.perf_counter() - t0

    def emit(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    try:
        res = generate(model, tok, ids, args.max_new_tokens, sampling, on_text=None if args.quiet else emit)
    finally:
        rt.close()
    if not args.quiet:
        sys.stdout.write("\n\n")
    s = res.summary
    s.update(stream_summary(rt, acct, s["decode_s"]))
    s.update(model=str(args.model or "default"), store=str(store.path), weights=model.weight_format, load_s=load_s,
             text=res.text, memory_budget=args.memory_budget)
    m = acct
    pred = s["flash_predicted_io_s_per_token"]
    rows = [
        ["model", f"{Path(store.header['source']).name} → {store.path.name} ({model.weight_format})"],
        ["decode", f"{s['decode_tok_s']:.1f} tok/s ({s['decode_tokens']} tokens)"],
        ["resident weights vs cap", f"{human_bytes(m['resident_total'])} ≤ {human_bytes(m['budget'])} "
         f"({m['budget'] / m['weight_bytes']:.0%} of {human_bytes(m['weight_bytes'])})"],
        ["  resident / predictors / cache / I/O buffers", f"{human_bytes(m['resident_measured'])} / "
         f"{human_bytes(m['predictors'])} / {human_bytes(m['neuron_cache'])} "
         f"({m['cache_neurons_per_layer']} neurons/layer) / {human_bytes(m['io_buffers'])}"],
        ["flash read / token", human_bytes(s["flash_bytes_read_per_token"])],
        ["I/O time / token: measured vs iomodel", f"{s['flash_io_s_per_token'] * 1e3:.2f} ms vs "
         + (f"{pred * 1e3:.2f} ms" if pred == pred else "n/a (run `ioaware probe disk`)")],
        ["I/O wait / token (reads not hidden behind compute)", f"{s['flash_stall_s_per_token'] * 1e3:.2f} ms"
         + (f" (prefetch: {s['prefetch_used_frac']:.0%} of read-ahead neurons used)"
            if s["prefetch_used_frac"] is not None else "")],
        ["flash GB/s vs probed peak", f"{s['flash_GBps']:.2f} vs {s['flash_peak_GBps']:.2f}"],
        ["window hit rate", f"{s['window_hit_rate']:.1%} (k={s['window']})"],
        ["FFN neurons loaded / token", f"{s['ffn_frac_loaded_per_token']:.1%} (predicted "
         f"{s['ffn_frac_predicted_per_token']:.1%})"],
        ["peak memory (process)", f"{human_bytes(s['peak_memory_bytes'])} ({s['peak_memory_kind']})"],
        ["load time", f"{load_s:.1f} s"],
    ]
    print_table("ioaware generate --memory-budget", ["", "value"], rows)
    emit_json(s, args.json)
    return 0
