"""Batch-1 text generation, ioaware against its peers on the same weights, same machine, same run.

CPU:  ioaware vs llama.cpp (llama-cpp-python, a benchmark-only dependency) on the same GGUF file.
CUDA: ioaware (bf16, CUDA graph decode) vs transformers' eager `generate` with the same dequantised weights in bf16.

Reports prefill and decode tokens/s (median of --reps runs) and compares the greedy continuations token by token.

    python benchmarks/bench_generate.py                      # CPU -> benchmarks/results/generate-cpu-<date>.json
    python benchmarks/bench_generate.py --device cuda --out benchmarks/results/generate-h100.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from ioaware.files import write_json_atomic
from ioaware.report import print_table
from ioaware.runtime import build_model, generate, load_checkpoint

PROMPT = "Explain in three sentences why reading memory, not arithmetic, limits how fast a language model writes text."


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def compare(a: list[int], b: list[int]) -> dict:
    n = min(len(a), len(b))
    first = next((i for i in range(n) if a[i] != b[i]), None)
    return {"compared": n, "identical": first is None and len(a) == len(b), "first_difference": first,
            "same_position_agreement": sum(x == y for x, y in zip(a, b)) / max(n, 1)}


def top2_gap(model, prompt: list[int], tokens: list[int], at: int) -> float:
    """The dense fp32 model's logit gap between its top two candidates at step `at`: small means a near-tie,
    where any rounding difference (quantised activations, bf16) can flip the greedy choice."""
    with torch.inference_mode():
        model.setup_cache(1, len(prompt) + at + 1)
        lg = model(torch.tensor([prompt + tokens[:at]], device=model.norm.weight.device), 0, last_only=True)
    v = lg[0, -1].float().topk(2).values
    return float(v[0] - v[1])


def run_ioaware(model, tok, ids, n, reps, cuda_graphs=False, compile=False) -> tuple[dict, list[int]]:
    generate(model, tok, ids, 8, stop_at_eos=False, cuda_graphs=cuda_graphs, compile=compile)  # warm-up
    runs = [generate(model, tok, ids, n, stop_at_eos=False, cuda_graphs=cuda_graphs, compile=compile)
            for _ in range(reps)]
    s = runs[-1].summary
    return {"prefill_tok_s": statistics.median(r.summary["prefill_tok_s"] for r in runs),
            "decode_tok_s": statistics.median(r.summary["decode_tok_s"] for r in runs),
            "decode_tok_s_runs": [r.summary["decode_tok_s"] for r in runs],
            "weight_bytes_per_token": s["weight_bytes_per_token"],
            "achieved_weight_GBps": s["weight_bytes_per_token"] * statistics.median(
                r.summary["decode_tok_s"] for r in runs) / 1e9,
            "peak_memory_bytes": s["peak_memory_bytes"], "attention": s["attention"], "linear": s["linear"],
            "dtype": s["dtype"],
            "cuda_graphs": s["cuda_graphs"]}, runs[-1].tokens


def run_llama_cpp(path, text, ids, n, reps, threads) -> tuple[dict, list[int], dict]:
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(path), n_ctx=len(ids) + n + 8, n_batch=512, n_threads=threads,
                          n_threads_batch=threads, verbose=False, seed=0)
    pre, dec, out = [], [], []
    for r in range(reps + 1):  # the first is a warm-up
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(ids)
        nxt = int(llm.sample(temp=0.0))  # greedy
        t1 = time.perf_counter()
        toks = [nxt]
        while len(toks) < n:
            llm.eval([nxt])
            nxt = int(llm.sample(temp=0.0))
            toks.append(nxt)
        t2 = time.perf_counter()
        if r:
            pre.append(len(ids) / (t1 - t0))
            dec.append((n - 1) / (t2 - t1))
        out = toks
    text_ids = llm.tokenize(text.encode(), add_bos=False, special=True)  # llama.cpp's own tokenizer
    info = {"version": llama_cpp.__version__, "threads": threads,
            "system_info": llama_cpp.llama_print_system_info().decode(errors="replace").strip()}
    return {"prefill_tok_s": statistics.median(pre), "decode_tok_s": statistics.median(dec),
            "decode_tok_s_runs": dec, "tokenizes_prompt_identically": text_ids == ids}, out, info


def bench_cpu(a) -> dict:
    ck = load_checkpoint(a.model)
    tok = ck.tokenizer
    text = tok.apply_chat_template([{"role": "user", "content": PROMPT}])
    ids = tok.encode(text)
    threads = a.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    rows, res, toks = [], {}, {}
    for name, weights in (("ioaware quantized (Q4_1 packed, bf16 act.)", "quantized"),
                          ("ioaware dense fp32", "dense")):
        m = build_model(ck, "cpu", None if weights == "quantized" else torch.float32, weights=weights)
        m.set_attention("sdpa")
        res[name], toks[name] = run_ioaware(m, tok, ids, a.new_tokens, a.reps)
        if weights == "dense":
            dense = m
    name = "llama.cpp (Q4_1 x Q8 dot products)"
    res[name], toks[name], lcpp = run_llama_cpp(ck.path, text, ids, a.new_tokens, a.reps, threads)
    base = res[name]["decode_tok_s"]
    for k, r in res.items():
        r["decode_vs_llama_cpp"] = r["decode_tok_s"] / base
        rows.append([k, r["prefill_tok_s"], r["decode_tok_s"], r["decode_vs_llama_cpp"]])
    print_table(f"generate, CPU ({cpu_name()}, {threads} threads), prompt {len(ids)} tok, {a.new_tokens} new, "
                f"median of {a.reps}", ["provider", "prefill tok/s", "decode tok/s", "decode vs llama.cpp"], rows)
    ref = toks["ioaware dense fp32"]
    cmp = {}
    for k, t in toks.items():
        c = compare(t, ref)
        if c["first_difference"] is not None:
            c["dense_top2_gap_at_difference"] = top2_gap(dense, ids, ref, c["first_difference"])
        c["text"] = tok.decode(t)
        cmp[k] = c
        print(f"{k}: vs ioaware dense fp32 greedy: first difference at {c['first_difference']}, "
              f"agreement {c['same_position_agreement']:.2f}"
              + (f", fp32 top-2 gap there {c['dense_top2_gap_at_difference']:.3f}" if "dense_top2_gap_at_difference"
                 in c else ""))
    return {"results": res, "greedy_vs_ioaware_dense_fp32": cmp, "llama_cpp": lcpp, "prompt_tokens": len(ids),
            "new_tokens": a.new_tokens, "threads": threads, "model": str(ck.path), "tensor_types": ck.tensor_types}


def bench_cuda(a) -> dict:
    from transformers import LlamaConfig, LlamaForCausalLM

    ck = load_checkpoint(a.model)
    tok = ck.tokenizer
    ids = tok.encode(tok.apply_chat_template([{"role": "user", "content": PROMPT}]))
    res, toks, rows = {}, {}, []
    m = build_model(ck, "cuda", torch.bfloat16, weights="dense")
    # the CUDA-graph decode step before #6 (SDPA over the whole cache with a validity mask, cuBLAS projections)
    # and after (flash_decode reading only the filled cache, flat_linear's measured dataflow), same run
    steps = {"SDPA step, torch linear": ("sdpa", "torch", False),
             "flash_decode step, torch linear": ("flash_attn", "torch", False),
             "flash_decode step, flat linear": ("flash_attn", "flat", False),
             "flash_decode step, torch linear, compiled": ("flash_attn", "torch", True)}
    # the chat prompt, then a long context, where the decode step's attention is a real share of the bytes read per
    # token (only the chat prompt's tokens are compared, and only it has an eager run, timed between the two)
    long_ids = (ids * (a.long_prompt // len(ids) + 1))[:a.long_prompt]
    long_res = {}
    for p_ids, p_res, p_toks in ((ids, res, toks), (long_ids, long_res, {})):
        for label, (att, lin, comp) in steps.items():
            m.set_attention(att)
            m.set_linear(lin)
            key = f"ioaware bf16 + CUDA graph, {label}"
            p_res[key], p_toks[key] = run_ioaware(m, tok, p_ids, a.new_tokens, a.reps, cuda_graphs=True, compile=comp)
        if p_res is res:
            m.set_attention("flash_attn")
            m.set_linear("torch")
            res["ioaware bf16 eager"], toks["ioaware bf16 eager"] = run_ioaware(m, tok, ids, a.new_tokens, a.reps)
    print_table(f"generate, {len(long_ids)}-token prompt, {a.new_tokens} new, median of {a.reps}",
                ["provider", "prefill tok/s", "decode tok/s"],
                [[k, r["prefill_tok_s"], r["decode_tok_s"]] for k, r in long_res.items()])
    del m
    ar = ck.args
    cfg = LlamaConfig(vocab_size=ar.vocab_size, hidden_size=ar.dim, intermediate_size=ar.hidden_dim,
                      num_hidden_layers=ar.n_layers, num_attention_heads=ar.n_heads,
                      num_key_value_heads=ar.n_kv_heads, head_dim=ar.head_dim, max_position_embeddings=ar.max_seq_len,
                      rms_norm_eps=ar.norm_eps, rope_theta=ar.rope_base, rope_scaling=ar.rope_scaling,
                      tie_word_embeddings=ar.tie_embeddings, attn_implementation="eager")
    hf = LlamaForCausalLM(cfg)
    sd = dict(ck.state_dict)
    if ar.tie_embeddings:
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
    hf.load_state_dict(sd)
    hf = hf.to("cuda", torch.bfloat16).eval()
    x = torch.tensor([ids], device="cuda")
    mask = torch.ones_like(x)

    def hf_gen(n):
        torch.cuda.synchronize()
        t = time.perf_counter()
        out = hf.generate(x, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                          pad_token_id=tok.eos_ids[0])
        torch.cuda.synchronize()
        return time.perf_counter() - t, out[0, len(ids):].tolist()

    with torch.inference_mode():
        hf_gen(8)
        t1 = [hf_gen(1)[0] for _ in range(a.reps)]
        tn = [hf_gen(a.new_tokens) for _ in range(a.reps)]
    p1 = statistics.median(t1)
    name = "transformers eager generate bf16"
    res[name] = {"prefill_tok_s": len(ids) / p1,
                 "decode_tok_s": (a.new_tokens - 1) / (statistics.median(t for t, _ in tn) - p1)}
    toks[name] = tn[-1][1]
    base = res[name]["decode_tok_s"]
    for k, r in res.items():
        r["decode_vs_transformers"] = r["decode_tok_s"] / base
        rows.append([k, r["prefill_tok_s"], r["decode_tok_s"], r["decode_vs_transformers"]])
    print_table(f"generate, {torch.cuda.get_device_name()}, bf16, prompt {len(ids)} tok, {a.new_tokens} new, "
                f"median of {a.reps}", ["provider", "prefill tok/s", "decode tok/s", "decode vs transformers"], rows)
    cmp = {k: {**compare(t, toks[name]), "text": tok.decode(t)} for k, t in toks.items()}
    for k, c in cmp.items():
        print(f"{k}: vs transformers greedy: first difference at {c['first_difference']}")
    return {"results": res, "greedy_vs_transformers": cmp, "prompt_tokens": len(ids), "new_tokens": a.new_tokens,
            "model": str(ck.path), "long_prompt": {"prompt_tokens": len(long_ids), "results": long_res}}


def gpu_info() -> dict:
    try:
        drv = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20).stdout.strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        drv = None
    import triton

    return {"card": torch.cuda.get_device_name(), "driver": drv, "cuda": torch.version.cuda,
            "triton": triton.__version__}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--model", default=None, help="GGUF file (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--long-prompt", type=int, default=4000, help="CUDA: tokens of the long-context case")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/generate-<device>-<date>.json)")
    a = p.parse_args(argv)
    if a.device == "cuda" and not torch.cuda.is_available():
        print("bench_generate: error: --device cuda but no CUDA GPU is visible", file=sys.stderr)
        return 2
    body = bench_cuda(a) if a.device == "cuda" else bench_cpu(a)
    meta = {"date": dt.datetime.now().isoformat(timespec="seconds"), "host": platform.node(), "cpu": cpu_name(),
            "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__}
    if a.device == "cuda":
        meta.update(gpu_info())
    out = Path(a.out or Path(__file__).parent / "results" / f"generate-{a.device}-{dt.date.today().isoformat()}.json")
    write_json_atomic(out, {"benchmark": "generate", "device": a.device, **meta, **body})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
