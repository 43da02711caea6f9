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


def compress_file(model: str | Path | None, out: str | Path, ratio: float, whiten: bool = False,
                  dtype: torch.dtype = torch.bfloat16, calib_tokens: int | None = None, progress: bool = False,
                  ckpt: Checkpoint | None = None) -> dict:
    """Factor `model` (a GGUF file or HF folder; None: the default model) and write OUT atomically. Inputs are
    checked before any work; the report says what was kept and how much was lost."""
    check_ratio(ratio)
    out = check_out(out)
    ckpt = ckpt or load_checkpoint(model)
    check_source(ckpt)
    covs, n_calib = calibration_covariances(ckpt, calib_tokens, progress) if whiten else (None, 0)
    tensors, ranks, report = factorize_checkpoint(ckpt, ratio, covs, progress)
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
          eval_tokens: int | None = None, progress: bool = False) -> dict:
    """Held-out perplexity of the dense model and of its factors at each ratio, plain and whitened. The factors
    are rounded to `dtype` (what a file holds) and run in float32 on the CPU."""
    for r in ratios:
        check_ratio(r)
    check_source(ckpt)
    dense = dense_model(ckpt)
    held = heldout_batches(ckpt.tokenizer, eval_tokens)
    base = perplexity(dense, held, progress, "dense perplexity")
    covs, n_calib = calibration_covariances(ckpt, calib_tokens, progress, model=dense)
    rows = []
    for whiten in (False, True):
        for r in ratios:
            tensors, ranks, rep = factorize_checkpoint(ckpt, r, covs if whiten else None, progress)
            tensors = {k: v.to(dtype) for k, v in tensors.items()}
            m = build_lowrank_model(ckpt.args, ranks, tensors, "cpu", torch.float32)
            res = perplexity(m, held, progress, f"perplexity at {r}" + (" (whitened)" if whiten else ""))
            rows.append({**rep, "ppl": res["ppl"], "ppl_ratio": res["ppl"] / base["ppl"]})
            del m, tensors
    return {"ppl_dense": base["ppl"], "eval_tokens": base["tokens"], "calibration_tokens": n_calib,
            "factor_dtype": str(dtype).replace("torch.", ""), "rows": rows}
