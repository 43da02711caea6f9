"""What the command does, as functions: calibrate, compress to a file, load factors into a model, sweep ratios."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ...errors import UnsupportedError
from ..llm.checkpoint import Checkpoint, build_model, load_checkpoint
from ..llm.tokenizer import Tokenizer
from ..offload.text import load_text, token_batches
from .calibrate import input_covariances
from .compress import check_ratio, check_source, factorize_checkpoint
from .evaluate import perplexity
from .factors import FactorCheckpoint, load_factors, save_factors
from .model import LowRankTransformer, build_lowrank_model
from .text import batch_chunks, chunk_ids, generate_tokens, repo_prose
from .update import DEFAULT_LR, TARGET_CACHE_TOKENS, check_update, dense_targets, update_factors

SEQ_LEN = 256  # tokens per calibration and evaluation chunk, as `ioaware bench sparsity` uses
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
EVAL_SETS = ("shipped", "generated", "prose")  # eval_texts
EVAL_GEN_TOKENS = 16384  # held-out tokens sampled for the 'generated' evaluation
GEN_TOKENS_PER_PROMPT = 512  # new tokens per sampled prompt (cut earlier at the end of the turn)
GEN_BATCH_CUDA, GEN_BATCH_CPU = 256, 8  # prompts sampled together (a decode step costs about the same per batch)
EVAL_BATCH_CUDA = 32  # chunks per forward when measuring perplexity on a GPU
TRAIN_PPL_TOKENS = 32768  # the overfitting check's perplexity is on the first this-many training tokens


def check_out(out: str | Path) -> Path:
    out = Path(out)
    if out.suffix != ".safetensors":
        raise ValueError(f"OUT must be a .safetensors file, got {out}")
    if out.is_dir():
        raise ValueError(f"OUT {out} is a folder; give a file name ending in .safetensors")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"OUT's folder {out.parent} does not exist; create it first")
    return out


def check_device(device: str | torch.device) -> torch.device:
    """'cpu' or 'cuda' (with a GPU present): one line otherwise, before any work."""
    dev = torch.device(device) if not isinstance(device, torch.device) else device
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"--device must be cpu or cuda, got {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UnsupportedError("--device cuda: no CUDA device is available to PyTorch here")
    return dev


def check_eval_sets(sets) -> tuple[str, ...]:
    sets = tuple(sets)
    bad = [s for s in sets if s not in EVAL_SETS]
    if not sets or bad:
        raise ValueError(f"--eval-sets takes names from {', '.join(EVAL_SETS)}, got {','.join(sets) or 'nothing'}")
    return sets


def default_precision(device: torch.device) -> str:
    """bf16 autocast for the update's forward and backward on CUDA (tensor cores), fp32 on the CPU."""
    return "bf16" if device.type == "cuda" else "fp32"


def dense_model(ckpt: Checkpoint, device: str | torch.device = "cpu"):
    """The reference the factors are measured against: the checkpoint dequantised to float32, on `device`."""
    return build_model(ckpt, device, torch.float32, weights="dense")


def calibration_batches(tok: Tokenizer, max_tokens: int | None = None) -> list[torch.Tensor]:
    return token_batches(tok, load_text("calibration"), SEQ_LEN, max_tokens=max_tokens)


def calibration_covariances(ckpt: Checkpoint, max_tokens: int | None = None, progress: bool = False, model=None,
                            batches: list[torch.Tensor] | None = None):
    """The dense model's input covariances, per layer and site (on the model's device), and the token count:
    on `batches` when given, else on the shipped calibration text."""
    if batches is None:
        batches = calibration_batches(ckpt.tokenizer, max_tokens)
    model = model if model is not None else dense_model(ckpt)
    if model.norm.weight.device.type == "cuda":  # the same sum over tokens, fewer launches
        batches = batch_chunks(batches, EVAL_BATCH_CUDA)
    return input_covariances(model, batches, progress)


def heldout_batches(tok: Tokenizer, max_tokens: int | None = None) -> list[torch.Tensor]:
    return token_batches(tok, load_text("heldout"), SEQ_LEN, max_tokens=max_tokens)


def _gen_batch(dense) -> int:
    return GEN_BATCH_CUDA if dense.norm.weight.device.type == "cuda" else GEN_BATCH_CPU


def training_text(ckpt: Checkpoint, dense, update_tokens: int = 0, calib_tokens: int | None = None,
                  seed: int = 0, progress: bool = False) -> tuple[list[torch.Tensor], list[torch.Tensor], dict]:
    """The text the whitening is measured on and the update trains on, as (1, SEQ_LEN) chunks: with
    `update_tokens`, that many tokens sampled from `dense` (text.py, the train split's prompts); else the shipped
    calibration text. Returns (whitening chunks: at most `calib_tokens` tokens, update chunks, record)."""
    if update_tokens:
        ids, info = generate_tokens(dense, ckpt.tokenizer, update_tokens, "train", seed, _gen_batch(dense),
                                    GEN_TOKENS_PER_PROMPT, progress)
        chunks = chunk_ids(ids, SEQ_LEN)
        if not chunks:
            raise ValueError(f"--update-tokens {update_tokens} is less than one {SEQ_LEN}-token chunk")
        calib = chunks if calib_tokens is None else chunks[:max(1, -(-calib_tokens // SEQ_LEN))]
        return calib, chunks, {**info, "name": "generated"}
    chunks = calibration_batches(ckpt.tokenizer, calib_tokens)
    return chunks, chunks, {"name": "calibration", "source": "shipped calibration text (offload/data)",
                            "tokens": sum(c.numel() for c in chunks)}


def eval_texts(ckpt: Checkpoint, dense, sets=("shipped",), eval_tokens: int | None = None,
               eval_gen_tokens: int = EVAL_GEN_TOKENS, seed: int = 0, progress: bool = False) -> dict:
    """{set: (chunks, record)} for the held-out evaluation: 'shipped' (offload/data/heldout.txt, `eval_tokens`),
    'generated' (`eval_gen_tokens` sampled from `dense` on the held-out split's prompts: topics the training text
    never saw), 'prose' (the repository's README and docs, `eval_tokens`)."""
    out = {}
    for name in check_eval_sets(sets):
        if name == "shipped":
            chunks = heldout_batches(ckpt.tokenizer, eval_tokens)
            out[name] = (chunks, {"source": "shipped held-out text (offload/data/heldout.txt)"})
        elif name == "generated":
            ids, info = generate_tokens(dense, ckpt.tokenizer, eval_gen_tokens, "heldout", seed, _gen_batch(dense),
                                        GEN_TOKENS_PER_PROMPT, progress)
            out[name] = (chunk_ids(ids, SEQ_LEN) or [torch.tensor([ids])], info)
        else:
            text, info = repo_prose()
            out[name] = (token_batches(ckpt.tokenizer, text, SEQ_LEN, max_tokens=eval_tokens), info)
    return out


def evaluate_sets(model, texts: dict, progress: bool = False, label: str = "perplexity",
                  dense_ppl: dict | None = None) -> dict:
    """{set: {ppl, tokens[, ppl_ratio against dense_ppl[set]]}} on every text of eval_texts."""
    batch = EVAL_BATCH_CUDA if model.norm.weight.device.type == "cuda" else 1
    res = {}
    for name, (chunks, _) in texts.items():
        r = perplexity(model, chunks, progress, f"{label} ({name})", batch)
        if dense_ppl is not None:
            r["ppl_ratio"] = r["ppl"] / dense_ppl[name]["ppl"]
        res[name] = r
    return res


def updated_tensors(ckpt: Checkpoint, ranks: list[dict[str, int]], tensors: dict[str, torch.Tensor], dense,
                    steps: int, lr: float = DEFAULT_LR, seed: int = 0, loss: str = "kl",
                    calib_tokens: int | None = None, progress: bool = False, batches: list | None = None,
                    targets=None, batch: int = 1, precision: str = "fp32", text: str = "calibration"
                    ) -> tuple[dict[str, torch.Tensor], dict]:
    """The factors after SVD-LLM's parameter update (update.py) on the calibration text (or `batches`, (1, T)
    chunks, with the dense model's `targets` per chunk if already computed), `batch` chunks per step, on the
    dense model's device, in float32, and its report. `tensors` (float32, factorize_checkpoint's) are not
    modified."""
    device = dense.norm.weight.device
    model = build_lowrank_model(ckpt.args, ranks, tensors, device, torch.float32)
    if batches is None:
        batches = calibration_batches(ckpt.tokenizer, calib_tokens)
    if batch > 1:
        if targets is not None:
            raise ValueError("cached dense targets are per chunk; batch the chunks before computing them")
        batches = batch_chunks(batches, batch)
    rep = update_factors(model, dense, batches, steps, lr, seed, loss, progress, targets, text, precision)
    params = dict(model.named_parameters())
    return {k: params[k].detach().clone() for k in tensors}, rep


def compress_file(model: str | Path | None, out: str | Path, ratio: float, whiten: bool = False,
                  dtype: torch.dtype = torch.bfloat16, calib_tokens: int | None = None, progress: bool = False,
                  ckpt: Checkpoint | None = None, update: int = 0, update_lr: float = DEFAULT_LR,
                  update_seed: int = 0, update_loss: str = "kl", device: str | torch.device = "cpu",
                  update_tokens: int = 0, update_batch: int = 1, update_precision: str | None = None) -> dict:
    """Factor `model` (a GGUF file or HF folder; None: the default model) and write OUT atomically. Inputs are
    checked before any work; the report says what was kept and how much was lost. `update` > 0: then train the
    factors that many steps by distillation from the dense model (update.py); the report's and the file's
    `update` entry holds the settings and the losses. `update_tokens`: the whitening and the update use that many
    tokens sampled from the dense model instead of the shipped calibration text. `device`: where the dense model,
    the calibration, the SVDs and the update run."""
    check_ratio(ratio)
    dev = check_device(device)
    precision = update_precision or default_precision(dev)
    check_update(update, update_lr, update_loss, update_batch, precision)
    check_tokens(update_tokens)
    out = check_out(out)
    ckpt = ckpt or load_checkpoint(model)
    check_source(ckpt)
    dense = dense_model(ckpt, dev) if whiten or update else None
    calib, train, text = training_text(ckpt, dense, update_tokens, calib_tokens, update_seed, progress) \
        if dense is not None else ([], [], {})
    covs, n_calib = calibration_covariances(ckpt, progress=progress, model=dense, batches=calib) if whiten \
        else (None, 0)
    tensors, ranks, report = factorize_checkpoint(ckpt, ratio, covs, progress, dev)
    if update:
        tensors, report["update"] = updated_tensors(ckpt, ranks, tensors, dense, update, update_lr, update_seed,
                                                    update_loss, progress=progress, batches=train,
                                                    batch=update_batch, precision=precision, text=text["name"])
        report["update"]["text_record"] = text
    tensors = {k: v.to("cpu", dtype) for k, v in tensors.items()}
    report.update(source=str(ckpt.path), calibration_tokens=n_calib, dtype=str(dtype).replace("torch.", ""),
                  device=str(dev))
    if whiten:
        report["calibration_text"] = text
    save_factors(out, ckpt.args, ranks, tensors, ckpt.tokenizer, report)
    report.update(out=str(out), out_bytes=out.stat().st_size, source_bytes=ckpt.file_bytes)
    return report


def check_tokens(n: int, flag: str = "--update-tokens") -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n < 0 or 0 < n < SEQ_LEN:
        raise ValueError(f"{flag} must be 0 (off) or at least {SEQ_LEN} (one chunk), got {n}")


def load_factor_model(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
                      ) -> tuple[LowRankTransformer, Tokenizer, FactorCheckpoint]:
    """A factor checkpoint as a runnable model (the `ioaware generate --model FACTORS` path) and its tokenizer."""
    fc = load_factors(path)
    return build_lowrank_model(fc.args, fc.ranks, fc.tensors, device, dtype), fc.tokenizer, fc


def sweep(ckpt: Checkpoint, ratios: list[float], dtype: torch.dtype = torch.bfloat16, calib_tokens: int | None = None,
          eval_tokens: int | None = None, progress: bool = False, whiten_only: bool = False, update: int = 0,
          update_lr: float = DEFAULT_LR, update_seed: int = 0, update_loss: str = "kl",
          device: str | torch.device = "cpu", update_tokens: int = 0, update_batch: int = 1,
          update_precision: str | None = None, eval_sets=("shipped",), eval_gen_tokens: int = EVAL_GEN_TOKENS) -> dict:
    """Held-out perplexity of the dense model and of its factors at each ratio, plain and whitened (only whitened
    with `whiten_only`). The factors are rounded to `dtype` (what a file holds) and run in float32 on `device`.
    `update` > 0 adds, after each whitened row, the same factors after the parameter update (update.py), and
    to those rows (and the dense model) the perplexity on (the first TRAIN_PPL_TOKENS of) the training text: the
    overfitting check. `update_tokens`: whitening and update on that much text sampled from the dense model.
    `eval_sets`: the held-out texts (eval_texts); the rows' `ppl`/`ppl_ratio` are the first set's, `eval` has
    all. Each matrix is decomposed once for all ratios (svd.factorize's cache)."""
    for r in ratios:
        check_ratio(r)
    dev = check_device(device)
    precision = update_precision or default_precision(dev)
    check_update(update, update_lr, update_loss, update_batch, precision)
    check_tokens(update_tokens)
    check_tokens(eval_gen_tokens, "--eval-gen-tokens")
    sets = check_eval_sets(eval_sets)
    check_source(ckpt)
    t0 = time.perf_counter()
    phases: dict[str, float] = {}

    def phase(name):
        nonlocal t0
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        phases[name] = phases.get(name, 0.0) + t - t0
        t0 = t

    dense = dense_model(ckpt, dev)
    phase("load")
    calib, train_chunks, text = training_text(ckpt, dense, update_tokens, calib_tokens, update_seed, progress)
    texts = eval_texts(ckpt, dense, sets, eval_tokens, eval_gen_tokens, update_seed, progress)
    phase("text")
    base = evaluate_sets(dense, texts, progress, "dense perplexity")
    main = sets[0]
    covs, n_calib = calibration_covariances(ckpt, progress=progress, model=dense, batches=calib)
    train = train_chunks[:max(1, TRAIN_PPL_TOKENS // SEQ_LEN)] if update else []
    train_text = {"train": (train, {})}
    base_train = evaluate_sets(dense, train_text, progress, "dense perplexity")["train"] if update else None
    phase("dense evaluation and calibration")
    rows = []

    def measure(tensors, ranks, rep, label):
        m = build_lowrank_model(ckpt.args, ranks, {k: v.to(dtype) for k, v in tensors.items()}, dev, torch.float32)
        ev = evaluate_sets(m, texts, progress, label, base)
        row = {**rep, "ppl": ev[main]["ppl"], "ppl_ratio": ev[main]["ppl_ratio"], "eval": ev}
        if update:
            tr = evaluate_sets(m, train_text, progress, label)["train"]
            row.update(ppl_train=tr["ppl"], ppl_train_ratio=tr["ppl"] / base_train["ppl"])
        rows.append(row)
        phase("evaluation")

    targets = None
    cache_targets = update_batch == 1 and sum(c.numel() for c in train_chunks) <= TARGET_CACHE_TOKENS
    for whiten in ((True,) if whiten_only else (False, True)):
        svds: dict = {}  # one SVD per matrix for all ratios (of W plain, of W L whitened)
        for r in ratios:
            tensors, ranks, rep = factorize_checkpoint(ckpt, r, covs if whiten else None, progress, dev, svds)
            phase("factorisation")
            label = f"perplexity at {r}" + (" (whitened)" if whiten else "")
            measure(tensors, ranks, {**rep, "update": None}, label)
            if whiten and update:
                if targets is None and cache_targets:  # the dense model's targets, once for all ratios
                    targets = dense_targets(dense, train_chunks, update_loss, progress)
                updated, urep = updated_tensors(ckpt, ranks, tensors, dense, update, update_lr, update_seed,
                                                update_loss, progress=progress, batches=train_chunks,
                                                targets=targets, batch=update_batch, precision=precision,
                                                text=text["name"])
                phase("update")
                measure(updated, ranks, {**rep, "update": urep}, label + f", updated {update} steps")
                del updated
            del tensors
        del svds
    res = {"ppl_dense": base[main]["ppl"], "eval_tokens": base[main]["tokens"], "calibration_tokens": n_calib,
           "factor_dtype": str(dtype).replace("torch.", ""), "device": str(dev), "rows": rows,
           "eval_main": main, "eval_sets": {n: {"ppl_dense": base[n]["ppl"], "tokens": base[n]["tokens"],
                                                 **texts[n][1]} for n in sets},
           "calibration_text": text, "seconds_by_phase": phases}
    if dev.type == "cuda":
        res["gpu"] = torch.cuda.get_device_name(dev)
        res["peak_gpu_bytes"] = torch.cuda.max_memory_allocated(dev)
    if update:
        res.update(ppl_dense_train=base_train["ppl"], train_tokens=base_train["tokens"],
                   update_precision=precision)
    return res
