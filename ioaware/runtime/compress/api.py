"""What the command does, as functions: calibrate, compress to a file, load factors into a model, sweep ratios."""

from __future__ import annotations

from pathlib import Path

import torch

from ..llm.checkpoint import Checkpoint, build_model, load_checkpoint
from ..llm.tokenizer import Tokenizer
from ..offload.text import load_text, token_batches
from .calibrate import input_covariances
from .compress import check_ratio, check_source, factorize_checkpoint
from .evaluate import perplexity
from .factors import FactorCheckpoint, load_factors, save_factors
from .model import LowRankTransformer, build_lowrank_model
from .update import DEFAULT_LR, check_update, dense_targets, update_factors

SEQ_LEN = 256  # tokens per calibration and evaluation chunk, as `ioaware bench sparsity` uses
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def check_out(out: str | Path) -> Path:
    out = Path(out)
    if out.suffix != ".safetensors":
        raise ValueError(f"OUT must be a .safetensors file, got {out}")
    if out.is_dir():
        raise ValueError(f"OUT {out} is a folder; give a file name ending in .safetensors")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"OUT's folder {out.parent} does not exist; create it first")
    return out


def dense_model(ckpt: Checkpoint):
    """The reference the factors are measured against: the checkpoint dequantised to float32 on the CPU."""
    return build_model(ckpt, "cpu", torch.float32, weights="dense")


def calibration_batches(tok: Tokenizer, max_tokens: int | None = None) -> list[torch.Tensor]:
    return token_batches(tok, load_text("calibration"), SEQ_LEN, max_tokens=max_tokens)


def calibration_covariances(ckpt: Checkpoint, max_tokens: int | None = None, progress: bool = False, model=None):
    """The dense model's input covariances, per layer and site, and the calibration token count."""
    batches = calibration_batches(ckpt.tokenizer, max_tokens)
    return input_covariances(model if model is not None else dense_model(ckpt), batches, progress)


def heldout_batches(tok: Tokenizer, max_tokens: int | None = None) -> list[torch.Tensor]:
    return token_batches(tok, load_text("heldout"), SEQ_LEN, max_tokens=max_tokens)


def updated_tensors(ckpt: Checkpoint, ranks: list[dict[str, int]], tensors: dict[str, torch.Tensor], dense,
                    steps: int, lr: float = DEFAULT_LR, seed: int = 0, loss: str = "kl",
                    calib_tokens: int | None = None, progress: bool = False, batches: list | None = None,
                    targets=None) -> tuple[dict[str, torch.Tensor], dict]:
    """The factors after SVD-LLM's parameter update (update.py) on the calibration text (or `batches`, with the
    dense model's `targets` if already computed), in float32, and its report. `tensors` (float32,
    factorize_checkpoint's) are not modified."""
    model = build_lowrank_model(ckpt.args, ranks, tensors, "cpu", torch.float32)
    if batches is None:
        batches = calibration_batches(ckpt.tokenizer, calib_tokens)
    rep = update_factors(model, dense, batches, steps, lr, seed, loss, progress, targets)
    params = dict(model.named_parameters())
    return {k: params[k].detach().clone() for k in tensors}, rep


def compress_file(model: str | Path | None, out: str | Path, ratio: float, whiten: bool = False,
                  dtype: torch.dtype = torch.bfloat16, calib_tokens: int | None = None, progress: bool = False,
                  ckpt: Checkpoint | None = None, update: int = 0, update_lr: float = DEFAULT_LR,
                  update_seed: int = 0, update_loss: str = "kl") -> dict:
    """Factor `model` (a GGUF file or HF folder; None: the default model) and write OUT atomically. Inputs are
    checked before any work; the report says what was kept and how much was lost. `update` > 0: then train the
    factors that many steps by distillation from the dense model (update.py); the report's and the file's
    `update` entry holds the settings and the losses."""
    check_ratio(ratio)
    check_update(update, update_lr, update_loss)
    out = check_out(out)
    ckpt = ckpt or load_checkpoint(model)
    check_source(ckpt)
    dense = dense_model(ckpt) if whiten or update else None
    covs, n_calib = calibration_covariances(ckpt, calib_tokens, progress, dense) if whiten else (None, 0)
    tensors, ranks, report = factorize_checkpoint(ckpt, ratio, covs, progress)
    if update:
        tensors, report["update"] = updated_tensors(ckpt, ranks, tensors, dense, update, update_lr, update_seed,
                                                    update_loss, calib_tokens, progress)
    tensors = {k: v.to(dtype) for k, v in tensors.items()}
    report.update(source=str(ckpt.path), calibration_tokens=n_calib, dtype=str(dtype).replace("torch.", ""))
    save_factors(out, ckpt.args, ranks, tensors, ckpt.tokenizer, report)
    report.update(out=str(out), out_bytes=out.stat().st_size, source_bytes=ckpt.file_bytes)
    return report


def load_factor_model(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
                      ) -> tuple[LowRankTransformer, Tokenizer, FactorCheckpoint]:
    """A factor checkpoint as a runnable model (the `ioaware generate --model FACTORS` path) and its tokenizer."""
    fc = load_factors(path)
    return build_lowrank_model(fc.args, fc.ranks, fc.tensors, device, dtype), fc.tokenizer, fc


def sweep(ckpt: Checkpoint, ratios: list[float], dtype: torch.dtype = torch.bfloat16, calib_tokens: int | None = None,
          eval_tokens: int | None = None, progress: bool = False, whiten_only: bool = False, update: int = 0,
          update_lr: float = DEFAULT_LR, update_seed: int = 0, update_loss: str = "kl") -> dict:
    """Held-out perplexity of the dense model and of its factors at each ratio, plain and whitened (only whitened
    with `whiten_only`). The factors are rounded to `dtype` (what a file holds) and run in float32 on the CPU.
    `update` > 0 adds, after each whitened row, the same factors after the parameter update (update.py), and
    to those rows (and the dense model) the perplexity on the training text: the overfitting check."""
    for r in ratios:
        check_ratio(r)
    check_update(update, update_lr, update_loss)
    check_source(ckpt)
    dense = dense_model(ckpt)
    held = heldout_batches(ckpt.tokenizer, eval_tokens)
    base = perplexity(dense, held, progress, "dense perplexity")
    covs, n_calib = calibration_covariances(ckpt, calib_tokens, progress, model=dense)
    train = calibration_batches(ckpt.tokenizer, calib_tokens) if update else []
    base_train = perplexity(dense, train, progress, "dense perplexity (training text)") if update else None
    rows = []

    def measure(tensors, ranks, rep, label):
        m = build_lowrank_model(ckpt.args, ranks, {k: v.to(dtype) for k, v in tensors.items()}, "cpu", torch.float32)
        res = perplexity(m, held, progress, label)
        row = {**rep, "ppl": res["ppl"], "ppl_ratio": res["ppl"] / base["ppl"]}
        if update:
            tr = perplexity(m, train, progress, label + " (training text)")
            row.update(ppl_train=tr["ppl"], ppl_train_ratio=tr["ppl"] / base_train["ppl"])
        rows.append(row)

    targets = None
    for whiten in ((True,) if whiten_only else (False, True)):
        for r in ratios:
            tensors, ranks, rep = factorize_checkpoint(ckpt, r, covs if whiten else None, progress)
            label = f"perplexity at {r}" + (" (whitened)" if whiten else "")
            measure(tensors, ranks, {**rep, "update": None}, label)
            if whiten and update:
                if targets is None:  # the dense model's targets, once for all ratios
                    targets = dense_targets(dense, train, update_loss, progress)
                updated, urep = updated_tensors(ckpt, ranks, tensors, dense, update, update_lr, update_seed,
                                                update_loss, progress=progress, batches=train, targets=targets)
                measure(updated, ranks, {**rep, "update": urep}, label + f", updated {update} steps")
                del updated
            del tensors
    res = {"ppl_dense": base["ppl"], "eval_tokens": base["tokens"], "calibration_tokens": n_calib,
           "factor_dtype": str(dtype).replace("torch.", ""), "rows": rows}
    if update:
        res.update(ppl_dense_train=base_train["ppl"], train_tokens=base_train["tokens"])
    return res
