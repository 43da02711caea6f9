"""The factor checkpoint: one safetensors file holding the factors, the dense tensors the method leaves alone
(embeddings, norms, an untied output head), and in its metadata the model config, the ranks, the tokenizer and
how the file was made. Self-contained: `ioaware generate --model OUT.safetensors` needs nothing else.

Written atomically (a temporary file in the same folder, then a rename): a failed run leaves no file behind.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ...errors import ShapeError, UnsupportedError
from ..llm.model import ModelArgs
from ..llm.tokenizer import Tokenizer
from .model import KINDS, expected_shapes

FORMAT = "ioaware.lowrank/1"


@dataclass
class FactorCheckpoint:
    path: Path
    args: ModelArgs
    ranks: list[dict[str, int]]  # per layer {kind: rank}; q, k, v per head
    tensors: dict[str, torch.Tensor]
    tokenizer: Tokenizer
    info: dict = field(default_factory=dict)  # rank_ratio, whiten, source, errors, parameter counts...


def _tokenizer_meta(tok: Tokenizer) -> dict[str, str]:
    return {"tokenizer": tok.tok.to_str(), "tokenizer_meta": json.dumps(
        {"bos_id": tok.bos_id, "eos_ids": tok.eos_ids, "add_bos": tok.add_bos, "chat_template": tok.chat_template})}


def _tokenizer_from(meta: dict[str, str]) -> Tokenizer:
    from tokenizers import Tokenizer as HFTokenizer

    m = json.loads(meta["tokenizer_meta"])
    return Tokenizer(HFTokenizer.from_str(meta["tokenizer"]), m["bos_id"], m["eos_ids"], m["add_bos"],
                     m["chat_template"])


def save_factors(path: str | Path, args: ModelArgs, ranks: list[dict[str, int]], tensors: dict[str, torch.Tensor],
                 tokenizer: Tokenizer, info: dict) -> Path:
    """Write the checkpoint atomically; `tensors` must match expected_shapes(args, ranks)."""
    from safetensors.torch import save_file

    path = Path(path)
    check_tensors(path, args, ranks, tensors)
    meta = {"format": FORMAT, "args": json.dumps(dataclasses.asdict(args)), "ranks": json.dumps(ranks),
            "info": json.dumps(info, default=str), **_tokenizer_meta(tokenizer)}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=meta)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes the file private; the checkpoint is an ordinary output
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _metadata(path: Path) -> dict | None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return f.metadata() or {}
    except Exception:  # noqa: BLE001 - not a safetensors file: the caller decides what that means
        return None


def is_factor_checkpoint(path: str | Path | None) -> bool:
    """True for a file written by save_factors (what `ioaware generate --model` dispatches on)."""
    if path is None:
        return False
    path = Path(path)
    if not path.is_file() or path.suffix != ".safetensors":
        return False
    meta = _metadata(path)
    return bool(meta) and meta.get("format") == FORMAT


def check_tensors(path: Path, args: ModelArgs, ranks: list[dict[str, int]], tensors: dict[str, torch.Tensor]) -> None:
    """Every tensor the config and ranks call for is there with its shape, and nothing else: one-line errors."""
    if len(ranks) != args.n_layers:
        raise ShapeError(f"{path}: ranks are given for {len(ranks)} layers but the model has {args.n_layers}")
    limits = {"q": args.head_dim, "k": args.head_dim, "v": args.head_dim, "o": min(args.dim, args.n_heads *
              args.head_dim), "gate": min(args.dim, args.hidden_dim), "up": min(args.dim, args.hidden_dim),
              "down": min(args.dim, args.hidden_dim)}
    for i, r in enumerate(ranks):
        if set(r) != set(KINDS):
            raise ShapeError(f"{path}: layer {i} ranks name {sorted(r)}, expected {list(KINDS)}")
        for k, v in r.items():
            if not isinstance(v, int) or not 1 <= v <= limits[k]:
                raise ShapeError(f"{path}: layer {i} rank of {k} is {v}; it must be an integer in [1, {limits[k]}]")
    want = expected_shapes(args, ranks)
    missing = [n for n in want if n not in tensors]
    if missing:
        raise ShapeError(f"{path}: factors do not match the model: missing {missing[0]!r}"
                         + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))
    extra = [n for n in tensors if n not in want]
    if extra:
        raise ShapeError(f"{path}: factors do not match the model: unexpected tensor {extra[0]!r}")
    for n, shape in want.items():
        if tuple(tensors[n].shape) != shape:
            raise ShapeError(f"{path}: factors do not match the model: {n!r} has shape {tuple(tensors[n].shape)}, "
                             f"the config and ranks give {shape}")


def load_factors(path: str | Path) -> FactorCheckpoint:
    """Read and validate a factor checkpoint (format, config, ranks, every tensor's shape) before any model is
    built."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"factor checkpoint not found: {path}")
    meta = _metadata(path)
    if meta is None:
        raise ValueError(f"{path} is not a readable safetensors file")
    if meta.get("format") != FORMAT:
        raise UnsupportedError(f"{path} is not an ioaware factor checkpoint (metadata format {meta.get('format')!r}, "
                               f"expected {FORMAT!r}); write one with `ioaware compress svd`")
    try:
        args = ModelArgs(**json.loads(meta["args"]))
        ranks = json.loads(meta["ranks"])
        info = json.loads(meta.get("info", "{}"))
        tok = _tokenizer_from(meta)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: the factor checkpoint's metadata is damaged ({type(e).__name__}: {e})") from None
    tensors = load_file(str(path))
    check_tensors(path, args, ranks, tensors)
    return FactorCheckpoint(path, args, ranks, tensors, tok, info)
