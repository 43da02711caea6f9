"""Measure the baselines PIM-GPT is compared with, on a machine that has them (run on the GPU lease):

    python3 -m ioaware.sim.pim.measure --out measured.json

- GPU: Hugging Face GPT-2 (eager attention, the framework path of a 2023 baseline) decoding one token at a time at
  a fixed context, for the 8 model shapes, in fp16 and fp32; CUDA kernels per step counted with torch.profiler.
- CPU: the same models in fp32 on the host's cores, and the package energy counter (RAPL) when the host exposes it.
- Host-to-GPU copies of 1 GiB from pageable and from pinned memory (the SN40L model's DGX switching path).

Weights are random (timing does not depend on them); nothing is downloaded. Every number lands in the JSON with the
machine it came from; the PIM-GPT report reads it (baselines.py).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import statistics
import time

try:
    from .gpt import MODELS
except ImportError:  # run as a script (python3 measure.py) so the ioaware facade is not imported on the lease
    from gpt import MODELS


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _rapl_uj() -> int | None:
    """Sum of the package energy counters (microjoules), or None when the host does not expose them."""
    tot, found = 0, False
    for f in glob.glob("/sys/class/powercap/intel-rapl:*/energy_uj"):
        if f.count(":") == 1:  # packages only, not their sub-zones
            try:
                tot += int(open(f).read())
                found = True
            except OSError:
                return None
    return tot if found else None


def _build(name: str, dtype, device: str):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    m = MODELS[name]
    cfg = GPT2Config(n_layer=m.n_layers, n_embd=m.d_model, n_head=m.n_heads, vocab_size=m.vocab,
                     n_positions=max(m.max_context, 2048))
    try:
        cfg._attn_implementation = "eager"
    except Exception:  # older/newer transformers spell it differently
        cfg.attn_implementation = "eager"
    torch.manual_seed(0)
    with torch.device(device):
        model = GPT2LMHeadModel(cfg).to(dtype)
    model.eval()
    return model


def _decode_times(model, context: int, steps: int, device: str, sync) -> tuple[list[float], float | None]:
    """Per-step seconds of `steps` single-token decode steps after a prefill of context-1 tokens, and the average
    package power (W) over those steps when RAPL is readable."""
    import torch

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (1, context - 1), generator=g).to(device)
    with torch.no_grad():
        out = model(ids, use_cache=True)
        past = out.past_key_values
        tok = out.logits[:, -1:].argmax(-1)
        times = []
        e0, w0 = _rapl_uj(), time.perf_counter()
        for _ in range(steps):
            sync()
            t0 = time.perf_counter()
            out = model(tok, past_key_values=past, use_cache=True)
            tok = out.logits[:, -1:].argmax(-1)
            sync()
            times.append(time.perf_counter() - t0)
            past = out.past_key_values
            # keep the context fixed: drop the newest entry so every timed step sees `context` tokens
            if hasattr(past, "crop"):
                past.crop(-1)  # drop the newest entry
        e1, w1 = _rapl_uj(), time.perf_counter()
    watts = (e1 - e0) * 1e-6 / (w1 - w0) if e0 is not None and e1 is not None and e1 > e0 else None
    return times, watts


def _kernels_per_step(model, context: int) -> int:
    import torch
    from torch.profiler import ProfilerActivity, profile

    ids = torch.zeros((1, context - 1), dtype=torch.long, device="cuda")
    with torch.no_grad():
        out = model(ids, use_cache=True)
        tok = out.logits[:, -1:].argmax(-1)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            model(tok, past_key_values=out.past_key_values, use_cache=True)
            torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type.name == "CUDA")


def _h2d(nbytes: int) -> dict:
    import torch

    out = {}
    for kind, pin in (("pageable", False), ("pinned", True)):
        src = torch.empty(nbytes, dtype=torch.uint8, pin_memory=pin)
        src.fill_(1)
        dst = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
        dst.copy_(src)
        torch.cuda.synchronize()
        ts = []
        for _ in range(5):
            t0 = time.perf_counter()
            dst.copy_(src, non_blocking=pin)
            torch.cuda.synchronize()
            ts.append(time.perf_counter() - t0)
        out[kind + "_GBps"] = nbytes / statistics.median(ts) / 1e9
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m ioaware.sim.pim.measure", description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--gpu-steps", type=int, default=20)
    ap.add_argument("--cpu-steps", type=int, default=4)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--repeats", type=int, default=3, help="GPU rounds per model; the fastest round's median is kept "
                    "(host jitter only ever adds time)")
    ap.add_argument("--no-cpu", action="store_true")
    args = ap.parse_args(argv)
    import torch
    import transformers

    names = [n for n in args.models.split(",") if n]
    import sys

    res = {"command": "python3 measure.py " + " ".join(sys.argv[1:] if argv is None else argv), "context": args.context,
           "torch": torch.__version__, "transformers": transformers.__version__, "cpu": _cpu_name(),
           "cpu_threads": os.cpu_count(), "gpu": None, "gpu_decode": {}, "cpu_decode": {},
           "date": time.strftime("%Y-%m-%d")}
    if torch.cuda.is_available():
        res["gpu"] = torch.cuda.get_device_name(0)
        res["h2d_1GiB"] = _h2d(1 << 30)
        for name in names:
            for dt in ("float16", "float32"):
                try:
                    model = _build(name, getattr(torch, dt), "cuda")
                    rounds = []
                    for _ in range(args.repeats):
                        times, _ = _decode_times(model, args.context, args.gpu_steps + 3, "cuda",
                                                 torch.cuda.synchronize)
                        rounds.append(statistics.median(times[3:]))
                    k = _kernels_per_step(model, args.context)
                except Exception as e:  # keep the other models' numbers
                    res["gpu_decode"].setdefault(name, {})[dt] = {"error": repr(e)}
                    print(name, dt, repr(e), flush=True)
                    continue
                res["gpu_decode"].setdefault(name, {})[dt] = {"s_per_token": min(rounds), "round_medians_s": rounds,
                                                              "kernels_per_step": k}
                print(name, dt, " ".join(f"{r * 1e3:.2f}" for r in rounds), "ms;", k, "kernels", flush=True)
                del model
                torch.cuda.empty_cache()
    if not args.no_cpu:
        torch.set_num_threads(os.cpu_count() or 1)
        for name in names:
            try:
                model = _build(name, torch.float32, "cpu")
                times, watts = _decode_times(model, args.context, args.cpu_steps + 1, "cpu", lambda: None)
            except Exception as e:  # keep the other models' numbers
                res["cpu_decode"][name] = {"error": repr(e)}
                print(name, "cpu", repr(e), flush=True)
                continue
            res["cpu_decode"][name] = {"s_per_token": statistics.median(times[1:]), "rapl_package_w": watts}
            print(name, "cpu", f"{statistics.median(times[1:]) * 1e3:.1f} ms", watts, flush=True)
            del model
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
