"""`ioaware bench offload --memory-cap`: each provider in its own child process under a real memory limit.

Issue #27 item 3, in one run:

  ioaware     the streamed runtime (predictor -> window cache -> O_DIRECT bundle reads -> sparse FFN)
  naive       every layer's FFN read whole per token (O_DIRECT), dense FFN
  mmap        plain mmap of the dense fp16 FFN file: no pinning, no madvise; the cap alone decides what stays
  llama.cpp   llama-cpp-python (mmap on) on an F16 GGUF of the same dequantised weights (--llama-gguf f16, the
              default: the same bytes per weight as the store) or on the source GGUF (--llama-gguf source)

The limit of each child is the memory budget (--budget, of the fp16 weight bytes) + that child's own baseline,
measured after its imports (memcap.py), so page-cache pages it faults in count against the cap as on a small machine.
The model files are dropped from the page cache before every child. Same prompt token ids (ioaware's tokenizer),
greedy, --tokens tokens. Per provider: decode tokens/s, time to first token, read_bytes per decode token from
/proc/self/io (page-cache misses and O_DIRECT reads; the child's own), the provider's own byte counter where it
has one, peak RSS (wait4) and the cgroup's peak charge, the cap. Greedy agreement is reported, never enforced.

Without a writable cgroup (or a systemd scope) it says which mechanism failed and why, runs uncapped, and writes
"cap": null with "cap_reason". llama.cpp is a benchmark-only peer: imported only inside its child; when the package
is missing that provider is skipped with a message. `make peers` installs it.

    ioaware bench offload --memory-cap [--budget 50%] [--tokens 16] [--providers ...] [--json F]
        -> benchmarks/results/flash-memcap-cpu-<date>.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from ..files import write_json_atomic
from ..report import emit_json, print_table
from ..units import human_bytes
from . import memcap
from .common import RESULTS_DIR

PROVIDERS = ("ioaware", "naive", "mmap", "llama.cpp")
CHILD = "import sys; from ioaware.bench.offload_capped import main; sys.exit(main(sys.argv[1:]))"
REFERENCE = "naive"
PHASE = "memcap-phase: "  # the dense fp16 FFN, exactly: what greedy agreement is measured against


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="ioaware bench offload --memory-cap", description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--budget", default="50%")
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--window", type=int, default=5)
    ap.add_argument("--threads", type=int, default=8, help="read threads (ioaware, naive)")
    ap.add_argument("--torch-threads", type=int, default=2, help="compute threads of every provider (llama.cpp too)")
    ap.add_argument("--providers", nargs="+", default=list(PROVIDERS), choices=PROVIDERS)
    ap.add_argument("--cap-mechanism", default="auto", choices=["auto", *memcap.MECHANISMS, "none"],
                    help="auto: cgroup v2, then cgroup v1, then systemd-run; none: run uncapped")
    ap.add_argument("--llama-gguf", choices=["f16", "source"], default="f16")
    ap.add_argument("--relufy", default=None, metavar="ADAPTER",
                    help="a relufy adapter merged into the FFN of ioaware/naive/mmap (the store they all read); by "
                         "default, as `ioaware generate`: the shipped one for the default model. llama.cpp cannot load "
                         "an adapter and runs the original GGUF")
    ap.add_argument("--no-relufy", action="store_true", help="every provider on the model as it is (SwiGLU)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per child")
    ap.add_argument("--out", default=None)
    ap.add_argument("--json", default=None, metavar="FILE", help="also write the results to FILE ('-' for stdout)")
    ap.add_argument("--provider-child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--spec", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.tokens < 2:
        ap.error("--tokens must be at least 2 (one prefill token and one decode step)")
    if a.relufy and a.no_relufy:
        ap.error("--relufy and --no-relufy contradict each other; give one")
    return a


def write_f16_gguf(src: Path, dst: Path) -> Path:
    """The source GGUF with every quantised tensor dequantised to F16 (F32 ones kept): llama.cpp's file with the
    fp16 store's bytes per weight, the same values. Written once, atomically."""
    import gguf
    import numpy as np
    from gguf.quants import dequantize

    if dst.exists():
        return dst
    r = gguf.GGUFReader(src)
    tmp = dst.with_name(dst.name + f".tmp-{os.getpid()}")
    w = gguf.GGUFWriter(tmp, arch=str(r.fields["general.architecture"].contents()))
    for f in r.fields.values():
        if f.name.startswith("GGUF.") or f.name in ("general.architecture", "general.file_type"):
            continue
        sub = f.types[-1] if f.types[0] == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(f.name, f.contents(), f.types[0], sub_type=sub)
    w.add_file_type(1)  # LLAMA_FTYPE_MOSTLY_F16
    for t in r.tensors:
        if t.tensor_type in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            w.add_tensor(t.name, np.asarray(t.data), raw_dtype=t.tensor_type)
        else:
            w.add_tensor(t.name, dequantize(t.data, t.tensor_type).astype(np.float16),
                         raw_dtype=gguf.GGMLQuantizationType.F16)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(tmp, dst)
    return dst


def prepare(a) -> dict:
    """In the (uncapped) parent: the one-off files (store, predictors, tokenizer, dense FFN file, F16 GGUF), the
    prompt ids and the budget in bytes. The model built here is dropped before any child runs."""
    import gc

    from ..env import settings
    from ..runtime.llm.checkpoint import default_model_path
    from ..runtime.offload.session import open_streamed
    from ..runtime.relufy.apply import resolve_adapter
    from .offload_common import PROMPT, write_dense_file

    relufy = resolve_adapter(a.relufy, a.no_relufy, a.model)  # as `ioaware generate` picks it
    model, rt, acct, tok, store = open_streamed(a.model, a.budget, None, a.window, a.threads, a.sparsity,
                                                max_new_tokens=a.tokens, relufy=relufy, count_prompt=_prompt_len)
    text = tok.apply_chat_template([{"role": "user", "content": PROMPT}])
    ids = tok.encode(text)
    src = Path(a.model) if a.model else default_model_path()
    stores = settings().cache_dir / "stores"
    dense = stores / (store.path.stem + ".dense-ffn.f16")
    write_dense_file(store, dense)
    gguf_path = src
    if "llama.cpp" in a.providers and a.llama_gguf == "f16" and src.suffix == ".gguf":
        gguf_path = write_f16_gguf(src, stores / (src.stem + ".f16.gguf"))
    spec = {"ids": ids, "text": text, "store": str(store.path), "dense": str(dense), "gguf": str(gguf_path),
            "source": str(src),
            "budget_bytes": int(acct["budget"]), "weight_bytes": int(acct["weight_bytes"]), "memory": acct,
            "model": store.header["source"], "relufy": str(relufy) if relufy else None,
            "store_fingerprint": store.fingerprint, "ffn_activation": store.args.ffn_act,
            "ffn_activation_shift": store.args.ffn_act_shift, "predictors": acct.get("predictors_file")}
    if relufy:
        from ..runtime.relufy.adapter import file_sha256

        spec["relufy_sha256"] = file_sha256(relufy)
    rt.close()
    del model, rt
    gc.collect()
    return spec


def _prompt_len(tok) -> int:
    """The bench prompt's length in tokens: the KV cache is planned for it, as `ioaware generate` plans for its own
    prompt (not for PROMPT_ALLOWANCE tokens, which a 50% budget of SmolLM2 no longer holds beside the gate copy)."""
    from .offload_common import PROMPT

    return len(tok.encode(tok.apply_chat_template([{"role": "user", "content": PROMPT}])))


class DecodeIO:
    """/proc/self/io read_bytes at the first decode step and at the end: bytes from the device per decode token.
    Hooked on the first layer's forward (its second call is the first decode step)."""

    def __init__(self):
        self.calls, self.at_decode = 0, None

    def hook(self, *_):
        self.calls += 1
        if self.calls == 2:
            self.at_decode = memcap.snapshot()

    def per_token(self, end: dict, steps: int) -> dict:
        """read_bytes and major faults per decode step between the first decode step and `end`."""
        s = self.at_decode or {}
        return {f"{k}_per_token": (end[k] - s[k]) / steps if end.get(k) is not None and s.get(k) is not None
                else None for k in ("read_bytes", "majflt")}


def child_ioaware(name: str, spec: dict, a, t0: float) -> dict:
    """One of ioaware / naive / mmap, in this (capped) child."""
    import mmap as mmap_mod
    import warnings

    import numpy as np
    import torch

    from ..runtime import generate
    from ..runtime.offload.reader import NeuronReader
    from ..runtime.offload.session import open_streamed
    from ..runtime.offload.streamed_ffn import stream_summary
    from .offload_common import Clock, MmapFFN, NaiveFFN

    torch.set_num_threads(a.torch_threads)
    _warm_up_torch()
    applied = memcap.apply_in_child()  # baseline: torch and the runtime imported and warmed up, no model yet
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
    _phase("open_streamed (loading the resident part, predictors, cache)")
    # the parent's adapter: open_streamed checks its hash against the model and opens the store only under the
    # fingerprint of base + this adapter, so every provider here reads the weights the parent prepared
    model, rt, acct, tok, store = open_streamed(a.model, a.budget, spec["store"], a.window, a.threads, a.sparsity,
                                                progress=False, max_new_tokens=a.tokens, say=lambda *_: None,
                                                relufy=spec.get("relufy"), count_prompt=lambda _: len(spec["ids"]))
    model.set_attention("sdpa")
    clock, extra, closers = Clock(), {}, []
    if name != "ioaware":
        if name == "naive":
            reader = NeuronReader(store, a.threads, rt.reader.chunk, rt.reader.direct, slots=1)
            closers.append(reader.close)
            ffns = [NaiveFFN(reader, i, clock, None) for i in range(len(model.layers))]
        else:
            fd = os.open(spec["dense"], os.O_RDONLY)
            raw = mmap_mod.mmap(fd, 0, prot=mmap_mod.PROT_READ)
            mm = np.frombuffer(raw, dtype=np.float16)
            n = store.args.n_layers
            ffns = [MmapFFN(mm, raw, fd, i, store.args, n, clock, measure=False) for i in range(n)]
        for layer, f in zip(model.layers, ffns):
            layer.feed_forward = f
        rt.cache = None  # the neuron cache is ioaware's: under the cap its bytes go to this provider instead
        rt.reader.close()
        import gc

        gc.collect()
    io = DecodeIO()
    model.layers[0].register_forward_pre_hook(io.hook)
    load_s = time.perf_counter() - t0
    _phase("generate")
    res = generate(model, tok, spec["ids"], a.tokens, stop_at_eos=False)
    end = memcap.snapshot()
    steps = max(io.calls - 1, 1)
    if name == "ioaware":
        s = stream_summary(rt, acct, res.summary["decode_s"])
        extra = {"provider_bytes_per_token": s["flash_bytes_read_per_token"], "window_hit_rate": s["window_hit_rate"],
                 "ffn_frac_loaded_per_token": s["ffn_frac_loaded_per_token"],
                 "ffn_frac_predicted_per_token": s["ffn_frac_predicted_per_token"],
                 "ffn_sparsity_measured": s["ffn_sparsity_measured"],
                 "naive_bytes_per_token": s["naive_bytes_per_token"],
                 "predicted_io_s_per_token": s["flash_predicted_io_s_per_token"],
                 "io_s_per_token": s["flash_io_s_per_token"], "predictor": rt.predictors.activation,
                 "predictor_bytes": acct.get("predictors"),
                 "cache_neurons_per_layer": acct.get("cache_neurons_per_layer")}
        rt.close()
    elif name == "naive":
        extra = {"provider_bytes_per_token": clock.bytes / max(res.summary["decode_tokens"], 1)}
    for c in closers:
        c()
    return {"applied_cap": applied, "load_s": load_s, "prefill_s": res.summary["prefill_s"],
            "time_to_first_token_s": load_s + res.summary["prefill_s"], "decode_tok_s": res.summary["decode_tok_s"],
            "decode_steps": steps, **io.per_token(end, steps), "tokens": res.tokens, "text": res.text,
            "cgroup_stat": memcap.cgroup_stat(applied), "weights": _weights(spec, store), **extra}


def _weights(spec: dict, store=None) -> dict:
    """What a provider computed with: the store (base + adapter, by fingerprint) or, for llama.cpp, a GGUF."""
    if store is None:
        return {"file": spec["gguf"], "relufy": None, "ffn_activation": "silu",
                "differs_from_store": spec.get("relufy") is not None,
                "note": ("llama.cpp cannot load a relufy adapter: it runs the original model (SwiGLU, every FFN "
                         "neuron read), not the relufied one the other providers run") if spec.get("relufy") else
                        "the same dequantised weights as the store"}
    return {"file": str(store.path), "store_fingerprint": store.fingerprint, "relufy": spec.get("relufy"),
            "ffn_activation": store.args.ffn_act, "ffn_activation_shift": store.args.ffn_act_shift}


def _warm_up_torch() -> None:
    """What `ioaware generate --memory-budget` loads before it takes its baseline (cli/generate.py's
    _warm_up_torch; the bench may not import the cli): torch's lazily loaded kernels and tables, the same for any
    model. Without it the capped child's baseline lacked them and they were charged to the budget: ioaware and
    naive were OOM-killed in open_streamed at 50% with a relufy adapter (2026-12-03, cgroup v1, all of the charge
    anonymous memory)."""
    import torch

    from ..runtime.offload.packed_resident import warm_up_kernels

    x = torch.zeros(1, 1, 8, 8)
    torch.nn.functional.scaled_dot_product_attention(x, x, x)
    (x.half() @ x.half()).sum()
    with torch.device("meta"):
        torch.nn.Embedding(2, 2)
    warm_up_kernels()


def _phase(what: str) -> None:
    """Where a child is, on stderr: a child the cap kills says nothing else, so the parent reports the last one."""
    print(f"{PHASE}{what}", file=sys.stderr, flush=True)


def child_llama(spec: dict, a, t0: float) -> dict:
    import llama_cpp

    applied = memcap.apply_in_child()  # baseline: llama_cpp imported, no model yet
    _phase("load and generate")
    ids = spec["ids"]
    llm = llama_cpp.Llama(model_path=spec["gguf"], use_mmap=True, n_ctx=len(ids) + a.tokens + 8, n_batch=512,
                          n_threads=a.torch_threads, n_threads_batch=a.torch_threads, verbose=False, seed=0)
    load_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    llm.eval(ids)
    nxt = int(llm.sample(temp=0.0))
    t2 = time.perf_counter()
    io = DecodeIO()
    io.at_decode = memcap.snapshot()
    toks = [nxt]
    while len(toks) < a.tokens:
        llm.eval([nxt])
        nxt = int(llm.sample(temp=0.0))
        toks.append(nxt)
    t3 = time.perf_counter()
    end = memcap.snapshot()
    steps = a.tokens - 1
    text_ids = llm.tokenize(spec["text"].encode(), add_bos=False, special=True)  # its own tokenizer, same text
    return {"applied_cap": applied, "load_s": load_s, "prefill_s": t2 - t1, "time_to_first_token_s": t2 - t0,
            "decode_tok_s": steps / (t3 - t2), "decode_steps": steps, **io.per_token(end, steps),
            "cgroup_stat": memcap.cgroup_stat(applied), "tokens": toks,
            "text": llm.detokenize(toks).decode(errors="replace"), "version": llama_cpp.__version__,
            "weights": _weights(spec),
            "gguf": spec["gguf"], "tokenizes_prompt_identically": text_ids == ids}


def child_main(a) -> int:
    t0 = time.perf_counter()
    spec = json.loads(Path(a.spec).read_text())
    if a.provider_child == "llama.cpp":
        out = child_llama(spec, a, t0)
    else:
        out = child_ioaware(a.provider_child, spec, a, t0)
    out["vm_hwm_bytes"] = memcap.read_rss().get("VmHWM")
    out["loadavg_1min"] = os.getloadavg()[0]
    print(json.dumps(out), flush=True)
    return 0


def compare(a: list[int], b: list[int]) -> dict:
    n = min(len(a), len(b))
    first = next((i for i in range(n) if a[i] != b[i]), None)
    return {"identical": first is None and len(a) == len(b), "first_difference": first,
            "agreement": sum(x == y for x, y in zip(a, b)) / max(n, 1)}


def choose_cap(which: str, tag: str, **fake) -> tuple[memcap.Cap | None, list[str], str | None]:
    """--cap-mechanism -> (cap or None, what was tried, why uncapped or None). fake: open_cap's test hooks."""
    if which == "none":
        return None, [], "--cap-mechanism none: ran uncapped"
    mechs = memcap.MECHANISMS if which == "auto" else (which,)
    cap, tried = memcap.open_cap(tag, mechs, **fake)
    if cap is None:
        return None, tried, "no memory cap could be set, so this ran UNCAPPED. Tried: " + "; ".join(tried)
    return cap, tried, None


def run_provider(name: str, a, spec_path: Path, spec: dict, argv_common: list[str]) -> dict:
    """Drop the model files from the page cache, open a cap, run the child, collect."""
    from ..runtime.offload.reader import drop_page_cache

    for f in {spec["store"], spec["dense"], spec["gguf"]}:
        if Path(f).exists():
            drop_page_cache(Path(f))
    cap, tried, cap_reason = choose_cap(a.cap_mechanism, name.replace(".", ""))
    cmd = [sys.executable, "-c", CHILD, *argv_common, "--provider-child", name, "--spec", str(spec_path)]
    try:
        r = memcap.run_child(cmd, cap, spec["budget_bytes"], a.timeout)
    finally:
        if cap is not None:
            cap.close()
    out: dict = {"returncode": r.returncode, "wait4_maxrss_bytes": r.wait4_maxrss_bytes, "wall_s": r.wall_s,
                 "cap_mechanism": cap.mechanism if cap else None, "cap_peak_bytes": r.cap_peak_bytes,
                 "oom_kills": r.oom_kills, "cap_reason": cap_reason, "cap_tried": tried}
    last = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""
    try:
        out.update(json.loads(last))
    except json.JSONDecodeError:
        said = [ln for ln in r.stderr.strip().splitlines() if not ln.startswith(PHASE)]
        out["error"] = (said or [f"exit {r.returncode}"])[-1][-400:]
        phases = [ln[len(PHASE):] for ln in r.stderr.splitlines() if ln.startswith(PHASE)]
        out["last_phase"] = phases[-1] if phases else None
        if r.oom_kills:
            out["error"] = (f"killed by the memory cap's OOM killer ({r.oom_kills} kill(s)) during "
                            f"{out['last_phase']}; " + out["error"])
    out["peak_rss_bytes"] = out.get("vm_hwm_bytes")  # the child's own; None when it died before reporting
    cap_ = out.get("applied_cap") or {}
    out["cap_bytes"] = cap_.get("limit_bytes", r.limit_bytes)
    return out


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.provider_child:
        return child_main(a)
    import importlib.util

    load0 = os.getloadavg()
    providers = list(a.providers)
    skipped = {}
    if "llama.cpp" in providers and importlib.util.find_spec("llama_cpp") is None:
        skipped["llama.cpp"] = "llama-cpp-python is not installed (`make peers` installs it; benchmarks only)"
        providers.remove("llama.cpp")
        print(f"bench offload --memory-cap: skipping llama.cpp: {skipped['llama.cpp']}", file=sys.stderr)
    spec = prepare(a)
    spec_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"ioaware-memcap-spec-{os.getpid()}.json"
    write_json_atomic(spec_path, spec)
    common = ["--budget", a.budget, "--tokens", str(a.tokens), "--sparsity", str(a.sparsity), "--window",
              str(a.window), "--threads", str(a.threads), "--torch-threads", str(a.torch_threads)]
    if a.model:
        common += ["--model", a.model]
    cases = {}
    try:
        for name in providers:
            print(f"  {name}: running in a capped child ...", flush=True)
            cases[name] = run_provider(name, a, spec_path, spec, common)
            c = cases[name]
            if c.get("cap_reason") and name == providers[0]:
                print(f"bench offload --memory-cap: {c['cap_reason']}", file=sys.stderr)
            if "error" in c:
                print(f"  {name}: failed: {c['error']}", file=sys.stderr)
    finally:
        spec_path.unlink(missing_ok=True)
    ref = cases.get(REFERENCE, {}).get("tokens")
    for c in cases.values():
        if ref is not None and c.get("tokens") is not None:
            c[f"greedy_vs_{REFERENCE}"] = compare(c["tokens"], ref)
    rows = []
    for k, c in cases.items():
        rows.append([k, c.get("decode_tok_s", float("nan")), c.get("time_to_first_token_s", float("nan")),
                     _hb(c.get("read_bytes_per_token")), _hb(c.get("provider_bytes_per_token")),
                     _hb(c.get("peak_rss_bytes")), _hb(c.get("cap_bytes"), "none"), _hb(c.get("cap_peak_bytes")),
                     c.get("majflt_per_token", float("nan")), _first_diff(c)])
    caps = {c.get("cap_mechanism") for c in cases.values()}
    mech = caps.pop() if len(caps) == 1 else None
    cap_reason = next((c["cap_reason"] for c in cases.values() if c.get("cap_reason")), None)
    print_table(f"bench_flash --memory-cap: {spec['model']} at budget {a.budget} ({human_bytes(spec['budget_bytes'])} "
                f"of {human_bytes(spec['weight_bytes'])}); cap = budget + each child's baseline, by "
                f"{mech or 'nothing (uncapped)'}", ["provider", "decode tok/s", "TTFT s", "read/token (/proc io)",
                                                    "read/token (own)", "peak RSS", "cap", "cgroup peak",
                                                    "major faults/token", f"1st diff vs {REFERENCE}"], rows)
    import torch

    out = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": platform.node(), "cpu": _cpu_name(),
           "cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
           "model": spec["model"], "source_model": spec["source"], "store": spec["store"], "dense_ffn": spec["dense"],
           "relufy": spec["relufy"], "relufy_sha256": spec.get("relufy_sha256"),
           "store_fingerprint": spec["store_fingerprint"], "ffn_activation": spec["ffn_activation"],
           "ffn_activation_shift": spec["ffn_activation_shift"], "predictors": spec["predictors"],
           "llama_cpp_weights": (_weights(spec)["note"] if "llama.cpp" in providers else None),
           "llama_gguf": spec["gguf"] if "llama.cpp" in providers else None, "budget": a.budget,
           "budget_bytes": spec["budget_bytes"], "weight_bytes": spec["weight_bytes"], "tokens": a.tokens,
           "prompt_tokens": len(spec["ids"]), "sparsity": a.sparsity, "torch_threads": a.torch_threads,
           "cap": ({"mechanism": mech, "rule": "budget_bytes + each child's cgroup charge after its imports (ioaware, "
                                                 "naive, mmap: and torch's warm-up, as ioaware generate's baseline)"}
                   if mech else None),
           "cap_reason": cap_reason, "skipped": skipped, "reference_for_greedy": REFERENCE,
           "loadavg_before": load0, "loadavg_after": os.getloadavg(), "providers": cases,
           "note": "read_bytes counts what the block device delivered to the child (page-cache misses, O_DIRECT); "
                   "pages another process had cached are free and uncounted, so the files are dropped from the "
                   "page cache before each child"}
    dest = Path(a.out) if a.out else RESULTS_DIR / f"flash-memcap-cpu-{time.strftime('%Y-%m-%d')}.json"
    write_json_atomic(dest, out)
    print(f"wrote {dest}")
    emit_json(out, a.json)
    return 0


def _first_diff(c: dict) -> str:
    if "error" in c:
        return "FAILED"
    g = c.get(f"greedy_vs_{REFERENCE}")
    return "-" if g is None else "same" if g["identical"] else str(g["first_difference"])


def _hb(v, none: str = "-") -> str:
    return human_bytes(v) if v is not None else none


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()
