"""Batch-1 text generation, ioaware against its peers on the same weights, same machine, same run.

CPU:  --providers (default: ioaware's default generate path, llama.cpp through llama-cpp-python on the same GGUF
      when installed (a benchmark-only dependency: `make peers`), transformers on the same weights dequantised to
      fp32; opt-in: ioaware's module decode step, ioaware before #30), each in a FRESH PROCESS per round and prompt
      so its peak RSS and time to first token are its own; interleaved round by round (rotated) over --rounds rounds
      and two prompt lengths (the chat prompt, ~50 tokens, and --long-prompt-cpu ~1000); medians, ranges and
      same-round ratios of prefill tok/s, decode tok/s, time to first token, peak RSS; every provider is fed the
      same prompt token ids (ioaware's tokenizer), and llama.cpp's own tokenize of the text is checked against
      them; the CPU model and its flags; start-up with a cold and a warm packed-weight cache (--startup-rounds);
      the output head's candidate kernels timed.
CUDA: ioaware (bf16, CUDA graph decode) vs transformers' eager `generate` with the same dequantised weights in bf16.

Reports prefill and decode tokens/s (median of --reps runs) and compares the greedy continuations token by token.

    python benchmarks/bench_generate.py                      # CPU -> benchmarks/results/generate-cpu-<date>.json
    python benchmarks/bench_generate.py --device cuda --out benchmarks/results/generate-h100.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from ioaware.bench.memcap import run_child
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


CPU_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "avx_vnni",
             "amx_tile", "amx_bf16", "amx_int8")
LONG_TEXT = ("Memory bandwidth, not arithmetic, sets the pace of decoding: every generated token reads every weight "
             "once, while the multiply-adds per byte stay few. Caches help only when the working set fits. ")


def cpu_flags(every: bool = False) -> list[str]:
    """The CPU's flags that matter to these kernels (CPU_FLAGS), or every flag /proc/cpuinfo lists."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    listed = line.split(":", 1)[1].split()
                    return listed if every else [x for x in CPU_FLAGS if x in set(listed)]
    except OSError:
        pass
    return []


def _since_process_start() -> float | None:
    """Seconds since this process was started (Linux /proc), so start-up includes Python's and torch's imports."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            up = float(f.read().split()[0])
        return up - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _vm_hwm() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def startup_child(mode: str, model: str | None, threads: int) -> dict:
    """Run in a fresh process (`--startup-child MODE`): load, build, prefill the chat prompt, one token out.
    mode: 'legacy' (the path before #30: dense fp32 first, then packed, bf16 head) or 'packed' (cache as found)."""
    t0 = time.perf_counter()
    torch.set_num_threads(threads)
    ck = load_checkpoint(model, weight_cache=mode != "legacy")
    m = build_model(ck, "cpu", weights="quantized", legacy_quant=mode == "legacy", weight_cache=mode != "legacy")
    m.set_attention("sdpa")
    load_s = time.perf_counter() - t0
    tok = ck.tokenizer
    ids = tok.encode(tok.apply_chat_template([{"role": "user", "content": PROMPT}]))
    r = generate(m, tok, ids, 1, stop_at_eos=False)
    return {"mode": mode, "load_s": load_s, "prefill_s": r.summary["prefill_s"],
            "time_to_first_token_s": time.perf_counter() - t0, "since_process_start_s": _since_process_start(),
            "peak_rss_bytes": _vm_hwm(), "weight_cache": getattr(m, "packed_cache", {}).get("state"),
            "first_token": r.tokens[0]}


def startup_rounds(a, threads: int) -> dict:
    """Fresh processes, interleaved round by round: legacy, packed with an empty cache dir (builds and writes it),
    packed with the cache just written (a warm start)."""
    import tempfile

    runs: dict[str, list[dict]] = {"legacy": [], "packed, cold cache": [], "packed, warm cache": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.startup_rounds):
            cache = Path(tmp) / f"round{r}"
            for name, mode in (("legacy", "legacy"), ("packed, cold cache", "packed"),
                               ("packed, warm cache", "packed")):
                cmd = [sys.executable, __file__, "--startup-child", mode, "--threads", str(threads)]
                if a.model:
                    cmd += ["--model", a.model]
                env = {**os.environ, "IOAWARE_CACHE_DIR": str(cache)}
                out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
                if out.returncode:
                    raise RuntimeError(f"start-up child {mode} failed: {out.stderr.strip()[-500:]}")
                runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(f"  start-up round {r + 1}/{a.startup_rounds} {name}: "
                      f"ttft {runs[name][-1]['time_to_first_token_s']:.2f} s, "
                      f"peak RSS {runs[name][-1]['peak_rss_bytes'] / 2**20:.0f} MiB", flush=True)
    out = {}
    for name, rs in runs.items():
        out[name] = {k: _stats([x[k] for x in rs]) for k in ("load_s", "time_to_first_token_s", "since_process_start_s",
                                                            "peak_rss_bytes")}
        out[name]["weight_cache"] = sorted({x["weight_cache"] or "n/a" for x in rs})
        out[name]["first_tokens"] = sorted({x["first_token"] for x in rs})
        out[name]["runs"] = rs
    return out


def _stats(xs: list[float]) -> dict:
    xs = [x for x in xs if x is not None]
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)} if xs else {}


def head_kernels(ck, rounds: int, threads: int) -> dict:
    """The output head's shape (vocab x dim, bf16 activations, one row): ms per call of each CPU kernel that could
    run it, interleaved round by round; random weights (speed only). What the int8 head costs against the
    alternatives this CPU offers."""
    import warnings

    import torch.nn.functional as F

    V, K = ck.args.vocab_size, ck.args.dim
    g = torch.Generator().manual_seed(0)
    w = torch.randn(V, K, generator=g) * 0.05
    x = torch.randn(1, K, generator=g).bfloat16()
    q8 = torch.randint(-127, 128, (V, K), dtype=torch.int8, generator=g)
    s8 = torch.rand(V, generator=g).bfloat16()
    q4 = torch.ops.aten._convert_weight_to_int4pack_for_cpu(torch.randint(0, 16, (V, K), dtype=torch.int32), 1)
    sz = torch.rand(K // 32, V, 2, generator=g).bfloat16()
    wb = w.bfloat16()
    cands = {"bf16 dense (F.linear)": lambda: F.linear(x, wb),
             "int8 weight-only (_weight_int8pack_mm, the head now)": lambda: torch.ops.aten._weight_int8pack_mm(
                 x, q8, s8),
             "int4 g32 (_weight_int4pack_mm_for_cpu; would re-quantise the head)":
                 lambda: torch.ops.aten._weight_int4pack_mm_for_cpu(x, q4, 32, sz)}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lin = torch.nn.Sequential(torch.nn.Linear(K, V, bias=False))
            lin[0].weight.data = w
            dyn = torch.ao.quantization.quantize_dynamic(lin, {torch.nn.Linear}, dtype=torch.qint8)
        xf = x.float()
        cands["int8 dynamic (fbgemm, int8 activations like llama.cpp's Q8)"] = lambda: dyn(xf)
    except Exception as e:  # noqa: BLE001 - a torch build without fbgemm: say so
        print(f"  (fbgemm dynamic int8 not available: {type(e).__name__})")
    ms: dict[str, list[float]] = {k: [] for k in cands}
    with torch.inference_mode():
        for f in cands.values():
            f()
        for _ in range(rounds):
            for k, f in cands.items():
                ts = []
                for _ in range(15):
                    t = time.perf_counter()
                    f()
                    ts.append(time.perf_counter() - t)
                ms[k].append(statistics.median(ts) * 1e3)
    return {"shape": [V, K], "threads": threads, "ms": {k: _stats(v) for k, v in ms.items()}}


PROVIDERS = ("ioaware", "llama.cpp", "transformers", "ioaware-module-step", "ioaware-legacy")
DEFAULT_PROVIDERS = ("ioaware", "llama.cpp", "transformers")


def provider_child(name: str, model: str | None, prompt: dict, n: int, threads: int) -> dict:
    """One provider, one prompt, in this fresh process (`--provider-child NAME`): load, prefill, n greedy tokens.
    Time to first token counts from this function's start (imports done) to the first token; peak RSS is this
    process's own (VmHWM). prompt: {"text", "ids"}; every provider is fed `ids` (ioaware's tokenizer)."""
    t0 = time.perf_counter()
    ids = prompt["ids"]
    extra: dict = {}
    if name == "llama.cpp":
        import llama_cpp

        llm = llama_cpp.Llama(model_path=str(model), n_ctx=len(ids) + n + 8, n_batch=512, n_threads=threads,
                              n_threads_batch=threads, verbose=False, seed=0)
        load_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        llm.eval(ids)
        toks = [int(llm.sample(temp=0.0))]
        t2 = time.perf_counter()
        while len(toks) < n:
            llm.eval([toks[-1]])
            toks.append(int(llm.sample(temp=0.0)))
        t3 = time.perf_counter()
        extra = {"version": llama_cpp.__version__, "tokenized_ids_match": llm.tokenize(
            prompt["text"].encode(), add_bos=False, special=True) == ids,
            "system_info": llama_cpp.llama_print_system_info().decode(errors="replace").strip()}
    elif name == "transformers":
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.set_num_threads(threads)
        ck = load_checkpoint(model)
        ar = ck.args
        cfg = LlamaConfig(vocab_size=ar.vocab_size, hidden_size=ar.dim, intermediate_size=ar.hidden_dim,
                          num_hidden_layers=ar.n_layers, num_attention_heads=ar.n_heads,
                          num_key_value_heads=ar.n_kv_heads, head_dim=ar.head_dim,
                          max_position_embeddings=ar.max_seq_len, rms_norm_eps=ar.norm_eps, rope_theta=ar.rope_base,
                          rope_scaling=ar.rope_scaling, tie_word_embeddings=ar.tie_embeddings,
                          attn_implementation="sdpa")
        try:  # skip the random initialisation the checkpoint overwrites anyway (transformers >= 5)
            from transformers.initialization import no_init_weights
        except ImportError:
            from transformers.modeling_utils import no_init_weights
        with no_init_weights():
            hf = LlamaForCausalLM(cfg)
        sd = dict(ck.state_dict)  # the GGUF dequantised to fp32: transformers' own dense CPU path
        if ar.tie_embeddings:
            sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
        hf.load_state_dict(sd)
        hf.eval()
        del sd
        load_s = time.perf_counter() - t0
        with torch.inference_mode():
            t1 = time.perf_counter()
            out = hf(torch.tensor([ids]), use_cache=True)
            toks = [int(out.logits[0, -1].argmax())]
            t2 = time.perf_counter()
            past = out.past_key_values
            while len(toks) < n:
                out = hf(torch.tensor([[toks[-1]]]), past_key_values=past, use_cache=True)
                past = out.past_key_values
                toks.append(int(out.logits[0, -1].argmax()))
            t3 = time.perf_counter()
        extra = {"weights": "dense fp32 (the GGUF dequantised)", "tokenized_ids_match": None}
    else:  # ioaware: `ioaware generate`'s default CPU path, or a variant kept for the #30 comparison
        torch.set_num_threads(threads)
        legacy = name == "ioaware-legacy"
        ck = load_checkpoint(model, weight_cache=not legacy)
        m = build_model(ck, "cpu", weights="quantized" if legacy else "auto", legacy_quant=legacy,
                        weight_cache=not legacy)
        m.set_attention("sdpa")
        m.set_linear("torch")
        load_s = time.perf_counter() - t0
        r = generate(m, ck.tokenizer, ids, n, stop_at_eos=False,
                     decode_step="auto" if name == "ioaware" else "module")
        t1, toks = 0.0, r.tokens
        t2 = r.summary["prefill_s"]
        t3 = t2 + r.summary["decode_s"]
        extra = {"weights": m.weight_format, "weight_cache": getattr(m, "packed_cache", {}).get("state"),
                 "tokenized_ids_match": ck.tokenizer.encode(prompt["text"], add_bos=False) == ids or
                 ck.tokenizer.encode(prompt["text"]) == ids}
    return {"provider": name, "prompt_tokens": len(ids), "load_s": load_s, "prefill_s": t2 - t1,
            "prefill_tok_s": len(ids) / (t2 - t1), "decode_tok_s": (n - 1) / (t3 - t2),
            "time_to_first_token_s": load_s + (t2 - t1), "since_process_start_s": _since_process_start(),
            "peak_rss_bytes": _vm_hwm(), "loadavg_1min": os.getloadavg()[0], "tokens": toks, **extra}


def interleaved_order(names: list[str], rounds: int) -> list[list[str]]:
    """Round r runs every provider once, the list rotated by r: A B C, B C A, C A B, ... so none always runs first
    (a shared machine's load drifts; same-round ratios cancel most of it)."""
    return [names[r % len(names):] + names[:r % len(names)] for r in range(rounds)]


def run_provider_child(name: str, model: str | None, prompt: dict, n: int, threads: int,
                       timeout: float = 1800) -> dict:
    """A fresh process per (round, prompt, provider): its peak RSS (its own VmHWM) and start-up are its own."""
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(prompt, f)
    cmd = [sys.executable, __file__, "--provider-child", name, "--prompt-file", f.name, "--new-tokens", str(n),
           "--threads", str(threads)]
    if model:
        cmd += ["--model", str(model)]
    try:
        r = run_child(cmd, None, 0, timeout)
    finally:
        os.unlink(f.name)
    if r.returncode:
        raise RuntimeError(f"provider child {name} failed (exit {r.returncode}): {r.stderr.strip()[-600:]}")
    res = json.loads(r.stdout.strip().splitlines()[-1])
    res["wait4_maxrss_bytes"] = r.wait4_maxrss_bytes  # an upper bound (it starts from this parent's peak)
    return res


METRICS = ("prefill_tok_s", "decode_tok_s", "time_to_first_token_s", "peak_rss_bytes", "load_s")


def summarize(runs: dict[str, dict[str, list[dict]]], base: str | None) -> dict:
    """runs[prompt][provider] = the children's results in round order -> medians and ranges per metric, and each
    provider's same-round decode and prefill ratios to `base`."""
    res: dict = {}
    for p, by in runs.items():
        res[p] = {}
        for k, rs in by.items():
            d = {m: _stats([r[m] for r in rs]) for m in METRICS}
            if base and base in by and k != base:
                for m in ("decode_tok_s", "prefill_tok_s"):
                    d[f"{m}_vs_{base}_same_round"] = _stats([x[m] / y[m] for x, y in zip(rs, by[base])])
            d["runs"] = rs
            res[p][k] = d
    return res


def prompts_for(tok, long_target: int) -> dict[str, dict]:
    """The chat prompt (~50 tokens) and a long plain prompt of whole sentences (>= long_target tokens)."""
    text = tok.apply_chat_template([{"role": "user", "content": PROMPT}])
    ids = tok.encode(text)
    k = 1
    while len(tok.encode(LONG_TEXT * k, add_bos=False)) < long_target:
        k += 1
    long_text = LONG_TEXT * k
    long_ids = tok.encode(long_text, add_bos=False)
    return {f"{len(ids)}-token chat prompt": {"text": text, "ids": ids},
            f"{len(long_ids)}-token prompt": {"text": long_text, "ids": long_ids}}


def bench_cpu(a) -> dict:
    import importlib.util

    threads = a.threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    load0 = os.getloadavg()
    flags_all = cpu_flags(every=True)
    print(f"CPU: {cpu_name()}, flags {' '.join(cpu_flags())}, torch capability "
          f"{torch.backends.cpu.get_cpu_capability()}, {threads} threads, load average {load0[0]:.2f}", flush=True)
    startup = startup_rounds(a, threads) if a.startup_rounds else {}
    ck = load_checkpoint(a.model)
    tok = ck.tokenizer
    prompts = prompts_for(tok, a.long_prompt_cpu)
    p0 = next(iter(prompts))
    gguf_ids = load_checkpoint(a.model, weight_cache=False).tokenizer.encode(prompts[p0]["text"])
    n = a.new_tokens
    names, missing = [], {}
    for k in a.providers:
        if k == "llama.cpp" and importlib.util.find_spec("llama_cpp") is None:
            missing[k] = "llama-cpp-python is not installed (`make peers`; building it takes ~9 min of both cores)"
        elif k == "llama.cpp" and ck.format != "gguf":
            missing[k] = f"llama.cpp needs a GGUF; the model is {ck.format}"
        elif k == "transformers" and importlib.util.find_spec("transformers") is None:
            missing[k] = "transformers is not installed"
        else:
            names.append(k)
    for k, why in missing.items():
        print(f"bench_generate: skipping {k}: {why}", file=sys.stderr)
    print(f"providers: {', '.join(names)}; each in a fresh process per round and prompt", flush=True)
    for k in names:  # not counted: writes ioaware's packed-weight cache, brings each model file into the page cache
        run_provider_child(k, a.model or str(ck.path), prompts[p0], 2, threads)
    runs: dict[str, dict[str, list[dict]]] = {p: {k: [] for k in names} for p in prompts}
    for r, order in enumerate(interleaved_order(names, a.rounds)):
        for p, prompt in prompts.items():
            for k in order:
                runs[p][k].append(run_provider_child(k, a.model or str(ck.path), prompt, n, threads))
        print(f"  round {r + 1}/{a.rounds}: " + "; ".join(
            f"{k} {runs[p][k][-1]['decode_tok_s']:.1f}" for p in prompts for k in names)
            + f" decode tok/s; load {os.getloadavg()[0]:.2f}", flush=True)
    base = "llama.cpp" if "llama.cpp" in names else None
    res = summarize(runs, base)
    for p in prompts:
        rows = []
        for k in names:
            d = res[p][k]
            f, dd, tt, rss = (d[m] for m in ("prefill_tok_s", "decode_tok_s", "time_to_first_token_s",
                                             "peak_rss_bytes"))
            rows.append([k, f"{f['median']:.0f} [{f['min']:.0f}-{f['max']:.0f}]",
                         f"{dd['median']:.1f} [{dd['min']:.1f}-{dd['max']:.1f}]",
                         f"{tt['median']:.2f} [{tt['min']:.2f}-{tt['max']:.2f}]",
                         f"{rss['median'] / 2**20:.0f} [{rss['min'] / 2**20:.0f}-{rss['max'] / 2**20:.0f}]",
                         f"{d[f'decode_tok_s_vs_{base}_same_round']['median']:.2f}x"
                         if base and k != base else "-"])
        print_table(f"{p}, {n} new tokens, {a.rounds} interleaved rounds, {threads} threads, medians [range]",
                    ["provider", "prefill tok/s", "decode tok/s", "TTFT s", "peak RSS MiB",
                     f"decode vs {base or '-'}"], rows)
    # token ids: the same ids went to every provider; does each provider's own tokenizer agree with them?
    ids_match = {"cached tokenizer vs the GGUF's": gguf_ids == prompts[p0]["ids"]}
    for k in names:
        ids_match[k] = {p: sorted({r.get("tokenized_ids_match") for r in runs[p][k]}, key=str) for p in prompts}
    # greedy agreement on the chat prompt against the dequantised fp32 model (its own greedy continuation)
    dense = build_model(ck, "cpu", torch.float32, weights="dense")
    dense.set_attention("sdpa")
    ids = prompts[p0]["ids"]
    ref = generate(dense, tok, ids, n, stop_at_eos=False).tokens
    cmp = {}
    for k in names:
        c = compare(runs[p0][k][-1]["tokens"], ref)
        if c["first_difference"] is not None:
            c["dense_top2_gap_at_difference"] = top2_gap(dense, ids, ref, c["first_difference"])
        cmp[k] = c
        print(f"{k}: vs dense fp32 greedy: first difference at {c['first_difference']}")
    cross = {p: {k: compare(runs[p][k][-1]["tokens"], runs[p][names[0]][-1]["tokens"]) for k in names[1:]}
             for p in prompts}
    del dense
    heads = head_kernels(ck, a.rounds, threads) if a.head_kernels else None
    llama = next((r for r in runs[p0].get("llama.cpp", [])), None)
    return {"results": res, "startup": startup, "head_kernels": heads, "greedy_vs_dense_fp32": cmp,
            f"greedy_vs_{names[0]}": cross, "prompt_token_ids_match": ids_match,
            "llama_cpp": {k: llama[k] for k in ("version", "system_info")} if llama else None,
            "missing_providers": missing, "providers": names, "baseline": base, "rounds": a.rounds,
            "order": "providers rotated per round; a fresh process per (round, prompt, provider), after one uncounted "
                     "warm-up child per provider",
            "new_tokens": n, "threads": threads, "prompt_tokens": {p: len(v["ids"]) for p, v in prompts.items()},
            "model": str(ck.path), "tensor_types": ck.tensor_types, "cpu_flags": cpu_flags(),
            "cpu_flags_all": flags_all, "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "load_average_start": load0, "load_average_end": os.getloadavg(),
            "note": "measured on a VM shared with other sessions running CPU jobs (see the load averages): absolute "
                    "tok/s are noisy; compare providers within a round (the same-round ratios)"}


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
    p.add_argument("--threads", type=int, default=None, help="default: the cores this process may run on")
    p.add_argument("--rounds", type=int, default=5, help="CPU: interleaved rounds (each provider once per round)")
    p.add_argument("--long-prompt-cpu", type=int, default=991, help="CPU: tokens of the long prompt")
    p.add_argument("--startup-rounds", type=int, default=3,
                   help="CPU: fresh-process start-up rounds (legacy, cold cache, warm cache); 0 skips them")
    p.add_argument("--providers", nargs="+", choices=PROVIDERS, default=list(DEFAULT_PROVIDERS),
                   help="CPU: providers interleaved round by round (llama.cpp skipped with a message when missing)")
    p.add_argument("--no-head-kernels", dest="head_kernels", action="store_false",
                   help="CPU: skip timing the output head's candidate kernels")
    p.add_argument("--startup-child", choices=["legacy", "packed"], default=None, help=argparse.SUPPRESS)
    p.add_argument("--provider-child", choices=PROVIDERS, default=None, help=argparse.SUPPRESS)
    p.add_argument("--prompt-file", default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/generate-<device>-<date>.json)")
    a = p.parse_args(argv)
    if a.provider_child:  # one provider, one prompt, in this fresh process: JSON on the last line of stdout
        prompt = json.loads(Path(a.prompt_file).read_text())
        print(json.dumps(provider_child(a.provider_child, a.model, prompt, a.new_tokens,
                                        a.threads or len(os.sched_getaffinity(0)))))
        return 0
    if a.startup_child:  # one start-up measurement in this fresh process: JSON on the last line of stdout
        print(json.dumps(startup_child(a.startup_child, a.model, a.threads or len(os.sched_getaffinity(0)))))
        return 0
    if a.rounds < 5 and a.device == "cpu":
        print("bench_generate: note: fewer than 5 rounds; the issue's comparison asks for >= 5", file=sys.stderr)
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
