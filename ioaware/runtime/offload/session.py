"""Opening a model for a budgeted run (`ioaware generate --memory-budget`): convert it to a store once, fit the
sparsity thresholds and predictors once, find the disk's curve, and build the streamed model. Everything slow is
cached under IOAWARE_CACHE_DIR so a later run only opens files."""

from __future__ import annotations

from pathlib import Path

import torch

from ...env import settings
from ...files import direct_io_supported
from ...hardware.probe_disk import load_curve, probe, save_curve
from ..llm.checkpoint import build_model, default_model_path, load_checkpoint
from .predictors import Predictors, train_predictors
from .store import convert, model_fingerprint, open_store
from .streamed_ffn import build_streamed_model, parse_budget, plan_cache
from .text import load_text, token_batches
from .thresholds import calibrate_thresholds

PREDICTOR_RANK = 64


def predictor_bytes_estimate(a, rank: int, elem: int) -> int:
    return a.n_layers * (rank * a.dim + a.hidden_dim * rank + a.hidden_dim) * elem


def train_for_store(model_path, sparsity: float, rank: int = PREDICTOR_RANK, max_tokens: int = 8000,
                    progress: bool = True, text: str | None = None):
    """Thresholds and predictors fitted on the shipped calibration text. Needs the dense model once, in fp32 (a
    one-off preparation step before any budgeted run; its memory is not the run's)."""
    ckpt = load_checkpoint(model_path)
    dense = build_model(ckpt, "cpu", torch.float32, "dense")
    text = load_text("calibration") if text is None else text
    batches = token_batches(ckpt.tokenizer, text, 256, max_tokens=max_tokens)
    th = calibrate_thresholds(dense, batches, sparsity, progress=progress)
    pr = train_predictors(dense, batches, th, rank=rank, progress=progress)
    return pr, th


def open_streamed(model_path=None, budget_text: str = "50%", store_path=None, window: int = 5, threads: int = 8,
                  sparsity: float = 0.5, progress: bool = True, calibration_text: str | None = None,
                  probe_if_missing: bool = False, prefetch: bool = False):
    """Everything `ioaware generate --memory-budget` needs: converts the model into the cache dir if it has no
    store, checks the budget against the minimum at once, loads (or trains once, then caches) the predictors,
    and with `probe_if_missing` measures the store's disk once (`ioaware probe disk`, cached) so the run can
    print the iomodel's predicted I/O time. Returns (model, runtime, accounting, tokenizer, store)."""
    path = Path(model_path) if model_path else default_model_path()
    if not path.exists():
        raise FileNotFoundError(f"model not found: {path}")
    fp = model_fingerprint(path)
    cache = settings().cache_dir
    store_path = Path(store_path) if store_path else cache / "stores" / f"{path.stem}-{fp[:12]}.store"
    if not store_path.exists():
        convert(path, store_path, progress=progress)
    store = open_store(store_path, fp)
    budget = parse_budget(budget_text, store.weight_bytes)
    plan_cache(store, budget, predictor_bytes_estimate(store.args, PREDICTOR_RANK, 2),
               direct_io_supported(store.path))  # fail before any training
    pred_path = cache / "predictors" / f"{fp[:16]}-s{sparsity:g}-r{PREDICTOR_RANK}.safetensors"
    if pred_path.exists():
        pr = Predictors.load(pred_path, fp)
    else:
        pr, _ = train_for_store(path, sparsity, progress=progress, text=calibration_text)
        pred_path.parent.mkdir(parents=True, exist_ok=True)
        pr.save(pred_path, fp)
    curve = load_curve(store_path.parent)
    if curve is None and probe_if_missing:
        if progress:
            print(f"probing the disk under {store_path.parent} once (about 20 s; cached for later runs)")
        curve = probe(store_path.parent, progress=progress)
        save_curve(curve)
    model, rt, acct = build_streamed_model(store, pr, pr.thresholds, budget, window, threads, curve=curve,
                                           prefetch=prefetch)
    acct["predictors_file"] = str(pred_path)
    return model, rt, acct, _tokenizer(path), store


def _tokenizer(path):
    from ..llm.tokenizer import Tokenizer

    if path.is_dir():
        from ..llm.safetensors_loader import read_config

        return Tokenizer.from_folder(path, read_config(path))
    from ..llm.gguf_loader import open_gguf

    return Tokenizer.from_gguf(open_gguf(path))
