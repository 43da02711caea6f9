"""Pruned models in and out: the block projections, their packed replacement `SparseLinear`, and the pruned
checkpoint file (one safetensors file: dense embeddings and norms, packed projections, config and tokenizer in the
metadata), written atomically (temp file + rename).

`load_pruned(path, device)` rebuilds a ready-to-run `Transformer` (`read_pruned` checks the file, `build_pruned`
builds it; `ioaware generate --model PRUNED.safetensors` reaches them through llm.checkpoint's loader);
`sparsify_model(model)` packs an in-memory model's (pruned) projections.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ...env import settings
from ...errors import ShapeError
from ...kernels.spmm import PackedWeight, matmul, pack, unpack
from ..llm.model import Linear, ModelArgs, Transformer
from ..llm.tokenizer import Tokenizer

CHECKPOINT_KIND = "ioaware-pruned"
CHECKPOINT_VERSION = 1
PROJECTIONS = ("attention.wqkv", "attention.wo", "feed_forward.w13", "feed_forward.w2")


def block_linears(model: Transformer) -> Iterator[tuple[int, str, nn.Module]]:
    """(layer index, 'attention.wqkv' | ..., module) for every projection of every block (embeddings, norms and
    the output head are never pruned, as in Flash-LLM and Wanda)."""
    for i, layer in enumerate(model.layers):
        for name in PROJECTIONS:
            parent, attr = name.split(".")
            yield i, name, getattr(getattr(layer, parent), attr)


def row_splits(args: ModelArgs, name: str) -> list[int] | None:
    """Rows of each Hugging Face matrix inside a fused projection: wqkv = [q; k; v], w13 = [gate; up]; None for
    the unfused ones (wo, w2)."""
    if name == "attention.wqkv":
        return [args.n_heads * args.head_dim, args.n_kv_heads * args.head_dim, args.n_kv_heads * args.head_dim]
    if name == "feed_forward.w13":
        return [args.hidden_dim, args.hidden_dim]
    return None


class SparseLinear(nn.Module):
    """y = x W^T with W packed (ioaware.spmm). CUDA runs the Flash-LLM SpMM kernel; CPU has no sparse tensor-core
    path, so it multiplies by the unpacked dense weight, unpacked once and kept (IOAWARE_INTERPRET=1 runs the
    kernel in Triton's interpreter instead, for tests). The packed tensors are buffers, so `.to(device)` moves
    them and `weight_bytes_per_token` counts them."""

    def __init__(self, packed: PackedWeight):
        super().__init__()
        self.out_features, self.in_features = packed.shape
        self.index = packed.index
        self.register_buffer("values", packed.values)
        self.register_buffer("rowoff", packed.rowoff)
        self.register_buffer("idx", packed.masks if packed.index == "bitmap" else packed.cols)
        for b in (self.values, self.rowoff, self.idx):
            b._ioaware_weight = True
        self._dense: torch.Tensor | None = None

    @property
    def packed(self) -> PackedWeight:
        kw = {"masks": self.idx} if self.index == "bitmap" else {"cols": self.idx}
        return PackedWeight((self.out_features, self.in_features), self.index, self.values, self.rowoff, **kw)

    def _apply(self, fn, *args, **kwargs):
        self._dense = None  # a moved or cast module re-unpacks on its new device
        out = super()._apply(fn, *args, **kwargs)
        for b in (self.values, self.rowoff, self.idx):
            b._ioaware_weight = True
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_cuda or settings().interpret:
            return matmul(x.to(self.values.dtype), self.packed).to(x.dtype)
        if self._dense is None:
            self._dense = unpack(self.packed)
        return F.linear(x.to(self._dense.dtype), self._dense).to(x.dtype)

    def extra_repr(self) -> str:
        p = self.packed
        return (f"in_features={self.in_features}, out_features={self.out_features}, index={self.index}, "
                f"density={p.density:.3f}, {p.bytes_per_nnz:.2f} B/nnz")


def _set(model: Transformer, i: int, name: str, module: nn.Module) -> None:
    parent, attr = name.split(".")
    setattr(getattr(model.layers[i], parent), attr, module)


@torch.no_grad()
def sparsify_model(model: Transformer, packed: dict[str, PackedWeight] | None = None, index: str = "auto",
                   progress: bool = False) -> dict[str, PackedWeight]:
    """Replace every block projection by a SparseLinear: from `packed` ({"layers.{i}.attention.wqkv": Wp, ...})
    or, when None, by packing the projection's current (pruned) weight in the model's dtype. Returns the packs."""
    from ..offload.activations import progress_bar

    todo = list(block_linears(model))
    out = {}
    prog, task = progress_bar("packing", len(todo), progress)
    with prog:
        for i, name, lin in todo:
            key = f"layers.{i}.{name}"
            if packed is not None:
                if key not in packed:
                    raise KeyError(f"no packed weight for {key}")
                p = packed[key]
            elif isinstance(lin, SparseLinear):
                p = lin.packed
            else:
                p = pack(lin.weight.detach(), index=index)
            if p.shape != (lin.out_features, lin.in_features):
                raise ValueError(f"{key}: packed shape {p.shape} does not match the model's "
                                 f"{(lin.out_features, lin.in_features)}")
            _set(model, i, name, SparseLinear(p))
            out[key] = p
            prog.advance(task)
    model.weight_format = "sparse"
    return out


def _dense_tensors(model: Transformer) -> dict[str, torch.Tensor]:
    sd = {"tok_embeddings.weight": model.tok_embeddings.weight, "norm.weight": model.norm.weight}
    if not model.args.tie_embeddings:
        sd["output.weight"] = model.output.weight
    for i, layer in enumerate(model.layers):
        sd[f"layers.{i}.attention_norm.weight"] = layer.attention_norm.weight
        sd[f"layers.{i}.ffn_norm.weight"] = layer.ffn_norm.weight
    return sd


def _tokenizer_meta(tok: Tokenizer) -> str:
    return json.dumps({"tokenizer_json": tok.tok.to_str(), "bos_id": tok.bos_id, "eos_ids": tok.eos_ids,
                       "add_bos": tok.add_bos, "chat_template": tok.chat_template})


def _tokenizer_from_meta(s: str) -> Tokenizer:
    from tokenizers import Tokenizer as HFTokenizer

    d = json.loads(s)
    return Tokenizer(HFTokenizer.from_str(d["tokenizer_json"]), d["bos_id"], d["eos_ids"], d["add_bos"],
                     d["chat_template"])


def save_pruned(path: str | Path, model: Transformer, packed: dict[str, PackedWeight], tokenizer: Tokenizer,
                meta: dict, dtype: torch.dtype | None = None) -> Path:
    """Write the pruned checkpoint atomically: a temp file in the same folder, then a rename."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {k: v.detach().to("cpu", dtype or v.dtype).contiguous() for k, v in _dense_tensors(model).items()}
    for key, p in packed.items():
        tensors.update({k: v.to("cpu").contiguous() for k, v in p.tensors(f"{key}.").items()})
    a = model.args
    args = {k: getattr(a, k) for k in a.__dataclass_fields__}
    md = {"kind": CHECKPOINT_KIND, "version": str(CHECKPOINT_VERSION), "args": json.dumps(args, default=str),
          "tokenizer": _tokenizer_meta(tokenizer), "meta": json.dumps(meta, default=str)}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=md)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def read_metadata(path: str | Path) -> dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except Exception as e:  # noqa: BLE001 - any unreadable file gets one line
        raise ValueError(f"{path} is not a readable safetensors file ({e})") from None


def is_pruned_checkpoint(path: str | Path) -> bool:
    p = Path(path)
    return p.is_file() and p.suffix == ".safetensors" and read_metadata(p).get("kind") == CHECKPOINT_KIND


@dataclass
class PrunedCheckpoint:
    """A pruned checkpoint read and checked (`read_pruned`), not yet a model (`build_pruned`)."""

    path: Path
    args: ModelArgs
    tensors: dict[str, torch.Tensor]  # dense tensors by the runtime's names, packed ones as `{key}.header` etc.
    packed: dict[str, PackedWeight]  # "layers.{i}.attention.wqkv" -> its packed weight (on the CPU, as stored)
    tokenizer: Tokenizer
    meta: dict


def _dense_shapes(a: ModelArgs) -> dict[str, tuple[int, ...]]:
    out = {"tok_embeddings.weight": (a.vocab_size, a.dim), "norm.weight": (a.dim,)}
    if not a.tie_embeddings:
        out["output.weight"] = (a.vocab_size, a.dim)
    for i in range(a.n_layers):
        out[f"layers.{i}.attention_norm.weight"] = (a.dim,)
        out[f"layers.{i}.ffn_norm.weight"] = (a.dim,)
    return out


def _projection_shapes(a: ModelArgs) -> dict[str, tuple[int, int]]:
    H, Hkv, D = a.n_heads, a.n_kv_heads, a.head_dim
    per = {"attention.wqkv": ((H + 2 * Hkv) * D, a.dim), "attention.wo": (a.dim, H * D),
           "feed_forward.w13": (2 * a.hidden_dim, a.dim), "feed_forward.w2": (a.dim, a.hidden_dim)}
    return {f"layers.{i}.{n}": shape for i in range(a.n_layers) for n, shape in per.items()}


def read_pruned(path: str | Path) -> PrunedCheckpoint:
    """Read a pruned checkpoint and check it against its own config before any model is built: kind, version,
    every dense tensor's shape, every packed weight's format version and shape. Each failure is one line."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pruned checkpoint not found: {path}")
    md = read_metadata(path)
    if md.get("kind") != CHECKPOINT_KIND:
        raise ValueError(f"{path} is not an ioaware pruned checkpoint (write one with `ioaware prune`)")
    if md.get("version") != str(CHECKPOINT_VERSION):
        raise ValueError(f"{path}: pruned checkpoint version {md.get('version')}, this ioaware reads "
                         f"{CHECKPOINT_VERSION}; re-run `ioaware prune`")
    try:
        args = ModelArgs(**json.loads(md["args"]))
        tok = _tokenizer_from_meta(md["tokenizer"])
        meta = json.loads(md.get("meta", "{}"))
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: the pruned checkpoint's metadata is damaged ({type(e).__name__}: {e})") from None
    t = load_file(str(path))
    for name, shape in _dense_shapes(args).items():
        if name not in t:
            raise ShapeError(f"{path}: tensors do not match the model: missing {name!r}")
        if tuple(t[name].shape) != shape:
            raise ShapeError(f"{path}: tensors do not match the model: {name!r} has shape {tuple(t[name].shape)}, "
                             f"the config gives {shape}")
    packed = {}
    for key, shape in _projection_shapes(args).items():
        p = PackedWeight.from_tensors(t, f"{key}.")  # format version, index type, tensors present: one line each
        if tuple(p.shape) != shape:
            raise ShapeError(f"{path}: tensors do not match the model: {key} is packed as {tuple(p.shape)}, the "
                             f"config gives {shape}")
        packed[key] = p
    return PrunedCheckpoint(path, args, t, packed, tok, meta)


def build_pruned(pc: PrunedCheckpoint, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
                 ) -> Transformer:
    """The model of a checked pruned checkpoint on `device`. dtype (default: float32 on CPU, the stored values'
    dtype on CUDA, float16 as `ioaware prune` writes them) is the model's; packed values are cast to it."""
    args, device = pc.args, torch.device(device)
    stored = next(iter(pc.packed.values())).values.dtype if pc.packed else torch.float32
    dtype = dtype or (torch.float32 if device.type == "cpu" else stored)
    with torch.device("meta"):
        model = Transformer(args)
    model = model.to_empty(device=device).to(dtype)
    if args.tie_embeddings:
        model.output.weight = model.tok_embeddings.weight
    params = dict(model.named_parameters())
    with torch.no_grad():
        for k in _dense_shapes(args):
            params[k].copy_(pc.tensors[k])
    sparsify_model(model, {k: p.to(device, dtype) for k, p in pc.packed.items()})
    return model.eval().requires_grad_(False)


def load_pruned(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
                ) -> tuple[Transformer, Tokenizer, dict]:
    """(model with SparseLinear projections, tokenizer, metadata) from a pruned checkpoint (read_pruned, then
    build_pruned). `ioaware generate --model PRUNED.safetensors` reaches the same two through llm.checkpoint."""
    pc = read_pruned(path)
    return build_pruned(pc, device, dtype), pc.tokenizer, pc.meta


def dense_linear(lin: nn.Module) -> Linear:
    """A plain Linear holding `lin`'s dense weight (unpacked if sparse): to compare or to undo."""
    w = unpack(lin.packed) if isinstance(lin, SparseLinear) else lin.weight.detach()
    out = Linear(w.shape[1], w.shape[0], bias=False, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        out.weight.copy_(w)
    return out
