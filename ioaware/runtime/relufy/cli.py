"""`ioaware relufy MODEL OUT.safetensors`: swap SwiGLU's SiLU for ReLU (or a shifted ReLU / ReLU^2) and recover
quality by distillation from the original model on text it writes itself; write the LoRA adapter the runtime
loads on top of MODEL (adapter.py), with the command, seed, versions and final metrics in its metadata.

    ioaware relufy default relu.safetensors --device cuda                      # the default recipe
    ioaware relufy default r.safetensors --activation relu --target-sparsity 0.9 --steps 2000 --budget-s 90

MODEL is a .gguf file or `default` (the embedded SmolLM2-135M-Instruct); the adapter records its SHA-256. Default
recipe: shifted ReLU (shift 0.25) faded in over the first 30% of the run, rank 40, an L1 penalty on the activations
steered to 88% sparsity over the first half (dev/relufy/README.md says why and what it is expected to reach).
"""

from __future__ import annotations

import argparse
import json
import shlex
import time
from pathlib import Path

from .adapter import ACTIVATIONS
from .student import DEFAULT_SHIFT, check_activation, check_rank
from .train import BLEND, TrainConfig, check_config

DEFAULTS = {"rank": 40, "steps": 1000, "batch": 16, "seq_len": 512, "lr": 1e-3, "l1": 0.05, "target": 0.88,
            "tokens": 1_000_000, "gen_len": 448}


class _Parser(argparse.ArgumentParser):
    """A bad flag is one line and exit 2, as everywhere in `ioaware` (cli.main.Parser; that layer is above this)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _target(s: str) -> float | None:
    if s.lower() in ("none", "off", "0"):
        return None
    try:
        return float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1) or 'none', got {s!r}") from None


def build_parser() -> argparse.ArgumentParser:
    d = DEFAULTS
    ap = _Parser(prog="ioaware relufy", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", metavar="MODEL", help="a .gguf file or 'default'")
    ap.add_argument("out", metavar="OUT", help="the adapter to write (.safetensors)")
    ap.add_argument("--activation", choices=ACTIVATIONS, default="shifted_relu")
    ap.add_argument("--shift", type=float, default=None,
                    help=f"shifted_relu's shift: relu(g - shift) (default {DEFAULT_SHIFT}; none for the others)")
    ap.add_argument("--rank", type=int, default=d["rank"], help=f"LoRA rank (default {d['rank']}: "
                    "15.2 MB in fp16 for SmolLM2-135M, under the device's 16 MiB return cap; 0.38 MB per unit of rank)")
    ap.add_argument("--steps", type=int, default=d["steps"], help=f"training steps (default {d['steps']})")
    ap.add_argument("--batch", type=int, default=d["batch"], help=f"rows per step (default {d['batch']})")
    ap.add_argument("--seq-len", type=int, default=d["seq_len"], help=f"tokens per row (default {d['seq_len']})")
    ap.add_argument("--lr", type=float, default=d["lr"], help=f"peak learning rate (default {d['lr']:g})")
    ap.add_argument("--l1", type=float, default=d["l1"], help="L1 coefficient on the FFN activations (the "
                    f"start of the steered one with --target-sparsity; default {d['l1']:g}; 0: no penalty)")
    ap.add_argument("--target-sparsity", type=_target, default=d["target"], metavar="S",
                    help=f"steer the L1 coefficient to this sparsity (default {d['target']}; 'none': plain "
                    "warm-up of --l1)")
    ap.add_argument("--blend", type=float, default=BLEND, help="fraction of the run over which SiLU is faded "
                    f"out (default {BLEND}; 0: swap at step 0)")
    ap.add_argument("--tokens", type=int, default=d["tokens"],
                    help=f"tokens of the teacher's own text to generate (default {d['tokens']:,})")
    ap.add_argument("--gen-batch", type=int, default=None, help="rows generated together (default 512 on "
                    "CUDA, 8 on CPU)")
    ap.add_argument("--gen-len", type=int, default=d["gen_len"], help="most tokens per generated answer")
    ap.add_argument("--text-cache", default=None, metavar="FILE",
                    help="keep the generated text here and reuse it when its settings match (a sweep's runs)")
    ap.add_argument("--eval-tokens", type=int, default=16384, help="most tokens per held-out text")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="cap the training's seconds: fewer steps if the measured step time needs it")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when available")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's choice)")
    ap.add_argument("--force", action="store_true", help="overwrite OUT")
    ap.add_argument("--eval-only", action="store_true", help="train nothing: measure the existing adapter OUT "
                    "against MODEL (sparsity per layer, held-out perplexity)")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--json", default=None, metavar="FILE", help="write the report as JSON ('-' for stdout)")
    return ap


def check_args(args) -> TrainConfig:
    """Every bad input is refused here, before the model is read."""
    if args.shift is None:
        args.shift = DEFAULT_SHIFT if args.activation == "shifted_relu" else 0.0
    check_activation(args.activation, args.shift)
    check_rank(args.rank)
    cfg = TrainConfig(steps=args.steps, batch=args.batch, lr=args.lr, l1=args.l1,
                      target_sparsity=args.target_sparsity if args.l1 > 0 else None, seed=args.seed,
                      blend=args.blend, budget_s=args.budget_s)
    check_config(cfg)
    if args.seq_len < 16:
        raise ValueError(f"--seq-len must be at least 16, got {args.seq_len}")
    if args.tokens < args.seq_len:
        raise ValueError(f"--tokens must be at least --seq-len ({args.seq_len}), got {args.tokens}")
    for name in ("gen_len", "eval_tokens"):
        if getattr(args, name) < 16:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 16")
    if args.gen_batch is not None and args.gen_batch < 1:
        raise ValueError(f"--gen-batch must be a positive integer, got {args.gen_batch}")
    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise ValueError(f"OUT must end in .safetensors, got {out.name}")
    if out.is_dir():
        raise ValueError(f"OUT {out} is a folder; give a file name ending in .safetensors")
    if args.eval_only:
        if not out.is_file():
            raise FileNotFoundError(f"--eval-only measures an existing adapter; {out} does not exist")
    elif out.exists() and not args.force:
        raise ValueError(f"OUT {out} exists; pass --force to overwrite it")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"OUT's folder {out.parent} does not exist; create it first")
    if args.json not in (None, "-") and not Path(args.json).parent.is_dir():
        raise FileNotFoundError(f"--json's folder {Path(args.json).parent} does not exist")
    if args.model != "default":
        p = Path(args.model)
        if not p.exists():
            raise FileNotFoundError(f"model not found: {args.model}")
        if not p.is_file() or p.suffix != ".gguf":
            raise ValueError(f"MODEL must be a .gguf file or 'default' (the adapter records the base file's "
                             f"SHA-256), got {args.model}")
    if args.device == "cuda":
        import torch

        from ...errors import DeviceError

        if not torch.cuda.is_available():
            raise DeviceError("--device cuda: no CUDA device here; use --device cpu")
    return cfg


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("torch", "triton", "gguf"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "absent"
    return out


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    argv = list(argv) if argv is not None else None
    args = ap.parse_args(argv)
    cfg = check_args(args)
    if args.eval_only:
        evaluate_only(args)
        return 0
    run(args, cfg, "ioaware relufy " + shlex.join(argv if argv is not None else __import__("sys").argv[1:]))
    return 0


def _print_metrics(title: str, metrics: dict, label: str) -> None:
    from ...report import print_table

    g = metrics["texts"].get("generated") or next(iter(metrics["texts"].values()))
    print_table(f"FFN activation sparsity per layer ({label})", ["layer", "zeros of act(gate)"],
                [[f"layer {i}", f"{s:.3f}"] for i, s in enumerate(g["sparsity_per_layer"])])
    print_table(title, ["held-out text", "tokens", "ppl original", "ppl relufied", "ratio", "sparsity mean", "min"],
                [[n, t["tokens"], f"{t['ppl_original']:.3f}", f"{t['ppl_relufied']:.3f}", f"{t['ppl_ratio']:.3f}",
                  f"{t['sparsity_mean']:.3f}", f"{t['sparsity_min']:.3f}"] for n, t in metrics["texts"].items()])


def evaluate_only(args) -> dict:
    import torch

    from ...report import emit_json
    from ..llm.checkpoint import load_checkpoint
    from .adapter import describe, load_adapter
    from .evaluate import evaluate_adapter

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    ck = load_checkpoint(None if args.model == "default" else args.model)
    adapter = load_adapter(args.out, base_path=ck.path)  # a foreign base: one line, before any work
    res = evaluate_adapter(ck, adapter, device, seq_len=args.seq_len, max_tokens=args.eval_tokens,
                           progress=not args.no_progress)
    res["meta"] = adapter.meta
    _print_metrics(f"{describe(adapter)} on {ck.path.name}", res, "generated held-out text")
    emit_json(res, args.json)
    return res


def run(args, cfg: TrainConfig, command: str) -> dict:
    import torch

    from ...report import emit_json
    from ..llm.checkpoint import build_model, load_checkpoint
    from ..offload.text import load_text
    from .adapter import Adapter, file_sha256, save_adapter
    from .evaluate import measure
    from .student import apply_adapter, lora_deltas, make_student
    from .text import cached_tokens, chunks, generate_tokens, heldout_texts, store_tokens, text_key
    from .train import train

    t0 = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    progress = not args.no_progress
    ck = load_checkpoint(None if args.model == "default" else args.model)
    if ck.format != "gguf":
        raise ValueError(f"{ck.path} is a {ck.format} checkpoint; relufy needs the .gguf file it runs on top of")
    sha = file_sha256(ck.path)
    check_rank(args.rank, ck.args.dim, ck.args.hidden_dim)
    torch.manual_seed(args.seed)
    teacher = build_model(ck, device, weights="dense")  # bf16 on CUDA, fp32 on CPU
    tok = ck.tokenizer

    gen_batch = args.gen_batch or (512 if device.type == "cuda" else 8)
    key = text_key(sha, args.tokens, args.seed, gen_batch, args.gen_len)
    t_text = time.perf_counter()
    stream = cached_tokens(args.text_cache, key)
    reused = stream is not None
    if stream is None:
        stream = generate_tokens(teacher, tok, args.tokens, args.seed, gen_batch, args.gen_len, progress=progress)
        if args.text_cache:
            store_tokens(args.text_cache, stream, key)
    text_s = time.perf_counter() - t_text
    calib = torch.tensor(tok.encode(load_text("calibration")), dtype=torch.int32)
    rows = chunks(torch.cat([stream, calib]), args.seq_len)

    student = make_student(build_model(ck, device, weights="dense"), args.activation, args.shift, args.rank,
                           args.seed)
    report = train(teacher, student, rows, cfg, progress)

    # what is evaluated is what the file holds: the pairs rounded to fp16 (save_adapter's dtype), merged
    deltas = {k: (A.to(torch.float16).cpu(), B.to(torch.float16).cpu()) for k, (A, B) in lora_deltas(student).items()}
    adapter = Adapter(args.activation, args.shift, args.rank, sha, deltas)
    apply_adapter(student, adapter)
    texts = heldout_texts(tok, args.seq_len, args.eval_tokens)
    metrics = measure(teacher, student, texts, progress)
    v = versions()
    summary = {"sparsity": metrics["sparsity"], "ppl_ratio": metrics["ppl_ratio"],
               **{f"{n}_{k}": t[k] for n, t in metrics["texts"].items()
                  for k in ("ppl_original", "ppl_relufied", "sparsity_mean")},
               "sparsity_per_layer": [round(s, 4) for s in metrics["texts"]["generated"]["sparsity_per_layer"]]
               if "generated" in metrics["texts"] else []}
    config = {"activation": args.activation, "shift": args.shift, "rank": args.rank, "lr": cfg.lr, "l1": cfg.l1,
              "target_sparsity": cfg.target_sparsity, "blend": cfg.blend, "batch": cfg.batch, "seq_len": args.seq_len,
              "gen_batch": gen_batch, "gen_len": args.gen_len}
    meta = {"command": command, "seed": str(args.seed), **{f"{k}_version": x for k, x in v.items()},
            "steps": str(report["steps"]), "tokens": str(args.tokens), "text_tokens": str(rows.numel()),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "config": json.dumps(config), "metrics": json.dumps(summary), "base_file": ck.path.name}
    path = save_adapter(args.out, deltas, activation=args.activation, base_sha256=sha, shift=args.shift, meta=meta)

    res = {"model": str(ck.path), "base_sha256": sha, "out": str(path), "adapter_bytes": path.stat().st_size,
           "command": command, "versions": v, "device": meta["device"], "config": config,
           "text": {"generated_tokens": int(stream.numel()), "calibration_tokens": int(calib.numel()),
                    "rows": rows.shape[0], "reused_cache": reused, "seconds": text_s, "key": key},
           "train": report, **metrics, "runtime_s": time.perf_counter() - t0}
    _print_metrics(f"ioaware relufy: {ck.path.name} -> {path.name} ({path.stat().st_size / 1e6:.1f} MB, rank "
                   f"{args.rank}, {report['steps']} steps, {report['tokens_seen']:,} tokens seen)", metrics,
                   f"generated held-out text, {args.activation}{f' shift {args.shift:g}' if args.shift else ''}")
    emit_json(res, args.json)
    return res
