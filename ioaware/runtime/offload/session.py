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
from ..llm.tokenizer import Tokenizer
from . import packed_resident
from .gate_copy import DEFAULT_RECALL, GATE_COPY, gate_copy_bytes_estimate, train_gate_copy
from .predictors import Predictors, train_predictors
from .store import convert, model_fingerprint, open_store
from .streamed_ffn import build_streamed_model, parse_budget, plan_cache
from .text import load_text, token_batches
from .thresholds import calibrate_thresholds

PREDICTOR_RANK = 64
# a relufied store's predictor: the gate copy (gate_copy.py) at this recall of firing neurons; in its cache file's name
RELU_RECALL = DEFAULT_RECALL


def predictor_file(cache: Path, fp: str, sparsity: float, relufied: bool) -> Path:
    """The cached predictor file of a store: the low-rank head for a SwiGLU model (by sparsity and rank), the gate
    copy for a relufied one (by its recall target; sparsity means nothing for exact zeros)."""
    if relufied:
        return cache / "predictors" / f"{fp[:16]}-{GATE_COPY}-recall{RELU_RECALL:g}.safetensors"
    return cache / "predictors" / f"{fp[:16]}-s{sparsity:g}-r{PREDICTOR_RANK}.safetensors"


def predictor_bytes_estimate(a, rank: int, elem: int) -> int:
    return a.n_layers * (rank * a.dim + a.hidden_dim * rank + a.hidden_dim) * elem


def train_for_store(model_path, sparsity: float, rank: int = PREDICTOR_RANK, max_tokens: int = 8000,
                    progress: bool = True, text: str | None = None, relufy=None):
    """Thresholds and predictors fitted on the shipped calibration text. Needs the dense model once, in fp32 (a
    one-off preparation step before any budgeted run: `open_streamed` runs it in a child process, so its memory is
    never the generating process's). relufy: an adapter file merged in (a ReLU model: thresholds 0, exact)."""
    if relufy is not None:
        from ..relufy.apply import load_relufied

        ckpt = load_relufied(model_path, relufy)
    else:
        ckpt = load_checkpoint(model_path)
    dense = build_model(ckpt, "cpu", torch.float32, "dense")
    text = load_text("calibration") if text is None else text
    batches = token_batches(ckpt.tokenizer, text, 256, max_tokens=max_tokens)
    th = calibrate_thresholds(dense, batches, sparsity, progress=progress)
    if relufy is not None:  # exact zeros: the gate copy, not a low-rank head (gate_copy.py says why)
        return train_gate_copy(dense, batches, RELU_RECALL, progress=progress), th
    pr = train_predictors(dense, batches, th, rank=rank, progress=progress)
    return pr, th


def _train_and_save(model_path, sparsity: float, dest: Path, fingerprint: str, progress: bool,
                    text: str | None, relufy=None) -> None:
    pr, _ = train_for_store(model_path, sparsity, progress=progress, text=text, relufy=relufy)
    pr.save(dest, fingerprint)


def in_child(fn, *args) -> None:
    """Run fn(*args) in a fresh process and wait: one-off preparation (conversion, training) whose peak memory (a
    dense fp32 model, its activations) must not become the generating process's resident set. Exceptions come
    back as they were raised; Ctrl-C reaches the child too (same process group)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as ex:
        return ex.submit(_on_stderr, fn, *args).result()


def _on_stderr(fn, *args):
    """fn(*args) with the child's stdout pointed at stderr: its progress bars and notes must not land in the parent's
    stdout, which holds only JSON under `--json -` (the parent's own redirect does not reach a spawned process)."""
    import os
    import sys

    sys.stdout.flush()
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return fn(*args)


# Working memory of a streamed run above its baseline, besides what the plan counts byte for byte (resident weights,
# predictors, neuron cache, I/O buffers, KV cache). Measured on SmolLM2-135M (2026-12-03, /proc/self/smaps deltas):
# the tokenizer object holds 19.4 MiB for 49k entries (~414 B each) once the heap its JSON parse freed is returned
# (release_free_memory; 44 MiB before); the rest (prefill activations, the read threads' allocations, allocator
# slack, with limit_malloc_arenas) peaked at 17.9 MiB with a 50-token prompt and 34 new tokens, 21.8 MiB with a
# 515-token prompt and 2 (the prefill's activations: hidden states, q/k/v, the FFN's gate and up over the predicted
# neurons). 24 MiB + 16 KiB a prompt token covers both with 6-10 MiB to spare.
TOKENIZER_BYTES_PER_ENTRY = 420
FIXED_WORKING_BYTES = 24 << 20
PREFILL_BYTES_PER_TOKEN = 16 << 10
PROMPT_ALLOWANCE = 512  # tokens of prompt the KV cache is reserved for before the prompt is tokenised


def working_memory_bytes(a, max_new_tokens: int, prompt_tokens: int = PROMPT_ALLOWANCE) -> int:
    kv = 2 * a.n_layers * a.n_kv_heads * a.head_dim * 2 * min(a.max_seq_len, prompt_tokens + max_new_tokens)
    return FIXED_WORKING_BYTES + PREFILL_BYTES_PER_TOKEN * prompt_tokens + TOKENIZER_BYTES_PER_ENTRY * a.vocab_size + kv


def store_path_for(model_path: Path, fingerprint: str) -> Path:
    """The cache dir's store for a model: named by the model's fingerprint and the store format, so a store of an
    older format is never opened for a newer ioaware (it converts anew)."""
    from .store import FORMAT_VERSION

    return settings().cache_dir / "stores" / f"{model_path.stem}-{fingerprint[:12]}.v{FORMAT_VERSION}.store"


def open_streamed(model_path=None, budget_text: str = "50%", store_path=None, window: int = 5, threads: int = 8,
                  sparsity: float = 0.5, progress: bool = True, calibration_text: str | None = None,
                  probe_if_missing: bool = False, prefetch: bool = False, convert_missing: bool | None = None,
                  max_new_tokens: int = 256, say=print, relufy=None, pack_resident: bool = True,
                  count_prompt=None):
    """Everything `ioaware generate --memory-budget` needs: converts the model into the cache dir if it has no
    store (an explicit `store_path` must exist unless `convert_missing`), says up front which one-off steps a first
    run takes, checks the budget against the minimum before any training, loads (or trains once in a child process,
    then caches) the predictors, and with `probe_if_missing` measures the store's disk once (cached) so the run can
    print the iomodel's predicted I/O time. pack_resident: keep the attention and embedding packed as the 4-bit GGUF
    has them (packed_resident.py; 43 instead of 105 MiB for SmolLM2) when the model allows it. count_prompt:
    tokenizer -> the prompt's length; the KV cache is then planned for that prompt (checked before any training)
    instead of PROMPT_ALLOWANCE tokens.
    relufy: a relufy adapter file, hash-checked against the model before
    anything is written; its merged FFN is what the store holds, and the store's fingerprint includes it.
    Returns (model, runtime, accounting, tokenizer, store)."""
    from ...units import size_unit

    path = Path(model_path) if model_path else default_model_path()
    if not path.exists():
        raise FileNotFoundError(f"model not found: {path}")
    limit_malloc_arenas()
    if store_path is not None:
        store_path = Path(store_path)
        if store_path.is_dir():
            raise ValueError(f"--store {store_path} is a folder; give the store file")
        if not store_path.exists() and not convert_missing:
            raise FileNotFoundError(f"--store {store_path}: no such store; give an existing store, or add --convert "
                                    "to write one there")
    fp = tok_fp = model_fingerprint(path)
    if relufy is not None:  # checked (hash, shapes) before any store or predictor is made
        from ..relufy.apply import check_base, relufied_fingerprint

        check_base(relufy, path)  # metadata only, no tensors here; shapes are checked where they are merged
        fp = relufied_fingerprint(fp, relufy)
    store_path = store_path or store_path_for(path, fp)
    cache = settings().cache_dir
    pred_path = predictor_file(cache, fp, sparsity, relufy is not None)
    probe_dir = store_path.parent if store_path.parent.exists() else cache
    curve = load_curve(probe_dir)
    todo = []
    if not store_path.exists():
        est = max(5, _size(path) // 20_000_000)  # ~20 MB/s of source weights dequantised and bundled on 2 cores
        todo.append(f"convert {path.name} into a store of row-column bundles (~{est} s)")
    if not pred_path.exists():
        todo.append("fit the sparsity thresholds and train the neuron predictors (1-4 min on 2 cores)")
    if curve is None and probe_if_missing:
        todo.append(f"probe the disk under {probe_dir} (~20 s)")
    res_file, res_key = packed_resident.resident_path(cache, tok_fp)  # the base model's attention and embedding
    packed_ok = pack_resident and _packable_hint(path, res_file)
    if packed_ok and not res_file.exists():
        todo.append("pack the resident attention and embedding weights (~10 s)")
    if todo and progress:
        say("first run for this model and disk: will " + "; ".join(todo) + ". Each result is cached; later runs "
            "start at once.")
    if not store_path.exists():
        in_child(convert, path, store_path, "float16", progress, relufy)
    store = open_store(store_path, fp)
    # the tokenizer before the budget check, so that a budget too small for this prompt's KV cache fails before the
    # predictors are trained (minutes), not after
    tok_path = cache / "tokenizers" / f"{tok_fp[:16]}.json"
    if not tok_path.exists():  # parsing the GGUF for its vocabulary peaks at ~180 MB: done once, in a child
        in_child(_save_tokenizer, path, tok_path)
    tok = Tokenizer.from_json(tok_path.read_text())
    release_free_memory()  # the tokenizer's parse leaves ~25 MiB of freed heap behind (measured)
    other_bytes = working_memory_bytes(store.args, max_new_tokens,
                                       count_prompt(tok) if count_prompt else PROMPT_ALLOWANCE)
    unit = "MiB" if budget_text.strip().endswith("%") else size_unit(budget_text)
    budget = parse_budget(budget_text, store.weight_bytes)
    pred_est = (gate_copy_bytes_estimate(store.args) if relufy is not None
                else predictor_bytes_estimate(store.args, PREDICTOR_RANK, 2))
    plan_cache(store, budget, pred_est,
               direct_io_supported(store.path), unit, other_bytes,
               packed_resident.packed_bytes(store.args) if packed_ok else None)  # fail before any training
    if not pred_path.exists():
        in_child(_train_and_save, path, sparsity, pred_path, fp, progress, calibration_text, relufy)
    pr = Predictors.load(pred_path, fp).to(dtype=store.torch_dtype)
    # tensors safetensors returns are views of its memory map: held on to (cut, thresholds), they kept the whole
    # fp32 file's pages resident (15.8 MiB for SmolLM2, measured); owned copies let it unmap
    pr.cut, pr.thresholds = pr.cut.clone(), pr.thresholds.clone()
    if curve is None and probe_if_missing:  # its read buffers (up to 16 threads x 16 MiB) stay out of this process
        in_child(_probe_and_save, probe_dir, progress)
        curve = load_curve(probe_dir)
    packed = None
    if packed_ok:  # built once, in a child: the GGUF reader and the unpacked ints stay out of this process
        if not res_file.exists() and not in_child(packed_resident.save, path, res_file, res_key):
            res_file.parent.mkdir(parents=True, exist_ok=True)
            _not_packable_marker(res_file).touch()  # attention not all Q4: the store's fp16 tensors, every run
        else:
            packed = packed_resident.load(res_file, res_key)
    model, rt, acct = build_streamed_model(store, pr, pr.thresholds, budget, window, threads, curve=curve,
                                           prefetch=prefetch, unit=unit, other_bytes=other_bytes, packed=packed)
    release_free_memory()  # transients of the build (the store's norms read through 8 MiB verification buffers)
    acct["predictors_file"] = str(pred_path)
    return model, rt, acct, tok, store


def _not_packable_marker(res_file: Path) -> Path:
    return res_file.with_name(res_file.name.split("-", 1)[0] + ".not-packable")


def _packable_hint(path: Path, res_file: Path) -> bool:
    """Whether to plan for packed resident weights: a GGUF not already found unpackable, with the int4 CPU kernel.
    Deciding for sure parses the GGUF (~180 MB), so that is left to the child process that packs it."""
    from ..llm.quant import int4_cpu_available

    return (res_file.exists() or (path.is_file() and path.suffix == ".gguf" and int4_cpu_available()
                                  and not _not_packable_marker(res_file).exists()))


def limit_malloc_arenas(n: int = 2, mmap_threshold: int = 128 << 10) -> None:
    """glibc's allocator, tuned for a process whose resident set is capped (a no-op off glibc). At most `n` arenas:
    each read thread otherwise gets its own, whose freed pages stay resident (7 MiB of peak RSS on SmolLM2 with 8
    read threads). A fixed mmap threshold: glibc raises it to the size of each large block freed, after which
    blocks up to 32 MiB (activations, neuron bundles) come from the heap, and the heap's freed holes stay resident;
    fixed, every block over 128 KiB is its own mapping, unmapped when freed (measured on SmolLM2 with a 515-token
    prompt: peak 139 -> 121 MiB above the baseline, after the prefill 139 -> 109)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-8, n)  # M_ARENA_MAX
        libc.mallopt(-3, mmap_threshold)  # M_MMAP_THRESHOLD (setting it turns the dynamic raise off)
    except (OSError, AttributeError):
        pass


def release_free_memory() -> None:
    """Give the C heap's free pages back to the kernel (glibc's malloc_trim): memory freed after a parse or a cast
    otherwise stays in this process's resident set, and the budget is on that set. A no-op off glibc."""
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.glob("*.safetensors"))


def _probe_and_save(folder: Path, progress: bool) -> None:
    save_curve(probe(folder, progress=progress))


def _save_tokenizer(model_path: Path, dest: Path) -> None:
    from ...files import tmp_name

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(dest)
    tmp.write_text(_tokenizer(model_path).to_json())
    tmp.replace(dest)


def _tokenizer(path):
    if path.is_dir():
        from ..llm.safetensors_loader import read_config

        return Tokenizer.from_folder(path, read_config(path))
    from ..llm.gguf_loader import open_gguf

    return Tokenizer.from_gguf(open_gguf(path))
