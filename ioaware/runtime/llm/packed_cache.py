"""The CPU model of a 4-bit GGUF with nothing dequantised kept, and its packed weights cached for the next start.

What the process holds (the issue's memory bar): the int4 projections in the kernel's packed layout, the token
embedding once as int8 rows with a per-row scale (the lookup reads a row, the output head reads it all through
`_weight_int8pack_mm`; the tied head no longer has its own bf16 copy), the fp32 norms. Nothing else: the dense
fp32 state_dict of `load_checkpoint` is lazy and never built on this path.

Start-up: packing reads every GGUF block (and parsing the GGUF's 49k-token vocabulary alone takes seconds), so the
packed tensors, the model's hyper-parameters and the tokenizer are written once to one safetensors file under
`<cache dir>/packed/` and memory-mapped on later starts (copy-on-write: pages stay the file's until written, which
nothing does). The file's name carries a key of the GGUF (resolved path, size, mtime, a hash of its first MiB),
torch's version and the CPU's capability (the int4 packing is the kernel's, per torch build and ISA); a changed
GGUF gets a new name and the stale one is removed. Written to a temporary sibling and renamed, so a crash leaves
no half file; a file whose length does not match its header (truncated, say) is refused and rebuilt.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import mmap
import os
import struct
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ...env import settings
from ...files import remove_orphans, tmp_name
from .model import ModelArgs, Transformer

FORMAT = "ioaware-packed-cpu/2"  # 2: every tensor 64-byte aligned in the file (see ALIGN)
# ATen's CPU int8/int4 kernels use aligned vector loads: `_weight_int8pack_mm` segfaults on a weight whose address
# is only 8-byte aligned (measured: offsets 8, 24, 56 mod 64 crash, 0 and 32 run), and safetensors' own writer
# aligns to 8 only. The cache is written here with every tensor at a multiple of ALIGN (page-aligned mmap base), and
# a file whose tensors are not is refused and rebuilt.
ALIGN = 64
_DTYPES = {"BF16": torch.bfloat16, "F32": torch.float32, "F16": torch.float16, "U8": torch.uint8,
           "I8": torch.int8, "I32": torch.int32, "I64": torch.int64}
_NAMES = {v: k for k, v in _DTYPES.items()}
_PAD = "__pad"  # uint8 filler tensors between aligned tensors: the byte buffer stays fully indexed (no holes)
EMB_ROWS_PER_CHUNK = 4096  # rows dequantised at a time when the embedding is quantised: bounds the transient fp32


class Int8Embedding(nn.Module):
    """Token lookup from int8 rows: row t = q[t] * scale[t], in fp32 (the activation dtype of the packed model)."""

    def __init__(self, q: torch.Tensor, scale: torch.Tensor):
        super().__init__()
        self.register_buffer("q", q, persistent=False)  # (V, dim) int8
        self.register_buffer("scale", scale, persistent=False)  # (V,) bf16

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.embedding(tokens, self.q).float() * self.scale[tokens].float().unsqueeze(-1)  # (B, T, dim)


class Int8Linear(nn.Module):
    """y = x @ (q * scale)^T through ATen's weight-only int8 CPU matmul (bf16 activations, one scale per row):
    half the bytes of bf16 for the output head, which reads its whole matrix every token."""

    def __init__(self, q: torch.Tensor, scale: torch.Tensor):
        super().__init__()
        self.out_features, self.in_features = q.shape
        self.register_buffer("q", q, persistent=False)
        self.register_buffer("scale", scale, persistent=False)
        self.q._ioaware_weight = True  # counted as weight bytes read per token
        self.scale._ioaware_weight = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features).to(torch.bfloat16)  # (N, in)
        y = torch.ops.aten._weight_int8pack_mm(x2, self.q, self.scale)  # (N, out) bf16
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)


def quantize_rows_int8(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(R, K) fp32 -> int8 (R, K) and a bf16 scale (R,) with rows ≈ q * scale (symmetric, round to nearest). The
    scale is rounded to bf16 first and q computed against the rounded scale, so only q's rounding is an error."""
    scale = (rows.abs().amax(dim=1) / 127.0).clamp_min(1e-30).to(torch.bfloat16)
    q = torch.round(rows / scale.float().unsqueeze(1)).clamp_(-127, 127).to(torch.int8)
    return q, scale


# ---- building the packed tensors from the GGUF ----

def _int8_table(t) -> tuple[torch.Tensor, torch.Tensor]:
    """A (V, dim) GGUF tensor of any supported type -> int8 rows + scales, dequantised a chunk of rows at a time."""
    import numpy as np
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize as _deq

    qtype = GGMLQuantizationType(t.tensor_type)
    V, K = int(t.shape[1]), int(t.shape[0])
    raw = np.asarray(t.data).reshape(V, -1)  # (V, bytes or elements per row)
    q, s = torch.empty(V, K, dtype=torch.int8), torch.empty(V, dtype=torch.bfloat16)
    for r in range(0, V, EMB_ROWS_PER_CHUNK):
        rows = torch.from_numpy(np.array(_deq(raw[r:r + EMB_ROWS_PER_CHUNK], qtype), dtype=np.float32))  # a copy
        q[r:r + EMB_ROWS_PER_CHUNK], s[r:r + EMB_ROWS_PER_CHUNK] = quantize_rows_int8(rows.reshape(-1, K))
    return q, s


def build_packed(reader, args: ModelArgs) -> dict[str, torch.Tensor]:
    """Every tensor the packed model holds, named after the module that holds it, built straight from the GGUF
    blocks: one projection's unpacked ints alive at a time, never a dense fp32 model."""
    from gguf import GGMLQuantizationType

    from . import gguf_loader as gl
    from .quant import GROUP, Q4_TYPES, Int4Linear, _sources, q4_blocks

    tensors = {t.name: t for t in reader.tensors}
    out: dict[str, torch.Tensor] = {}
    for i in range(args.n_layers):
        b = f"blk.{i}."
        out[f"layers.{i}.attention_norm.weight"] = gl.dequantize(tensors[b + "attn_norm.weight"])
        out[f"layers.{i}.ffn_norm.weight"] = gl.dequantize(tensors[b + "ffn_norm.weight"])
        for path, srcs in _sources(i).items():
            packable = all(GGMLQuantizationType(tensors[s].tensor_type).name in Q4_TYPES
                           and int(tensors[s].shape[0]) % GROUP == 0 for s, _ in srcs)
            parts = []
            for s, kind in srcs:
                parts.append(q4_blocks(tensors[s]) if packable else (gl.dequantize(tensors[s]),))
                if kind:  # undo llama.cpp's rotary row permutation on q/k (and on the groups' scales)
                    heads = args.n_heads if kind == "q" else args.n_kv_heads
                    parts[-1] = tuple(gl.unpermute_qk(x, heads) for x in parts[-1])
            if packable:
                packed, sz = Int4Linear.pack(*(torch.cat(x) for x in zip(*parts)))
                out[f"layers.{i}.{path}.packed"], out[f"layers.{i}.{path}.scales_zeros"] = packed, sz
            else:  # a mixed or other-typed projection: dense bf16 (half of fp32; see quant.BF16Linear)
                out[f"layers.{i}.{path}.weight"] = torch.cat([p[0] for p in parts]).to(torch.bfloat16)
            del parts
    out["norm.weight"] = gl.dequantize(tensors["output_norm.weight"])
    out["tok_embeddings.q"], out["tok_embeddings.scale"] = _int8_table(tensors["token_embd.weight"])
    if not args.tie_embeddings:
        out["output.q"], out["output.scale"] = _int8_table(tensors["output.weight"])
    return out


def build_model(args: ModelArgs, t: Mapping[str, torch.Tensor]) -> Transformer:
    """The Transformer with its projections, embedding and head made of the packed tensors (which it keeps by
    reference: memory-mapped ones stay in the page cache), norms fp32, everything else fp32 activations."""
    from .quant import BF16Linear, Int4Linear

    model = _skeleton(args)
    for i, layer in enumerate(model.layers):
        for mod in ("attention_norm", "ffn_norm"):
            getattr(layer, mod).weight = nn.Parameter(t[f"layers.{i}.{mod}.weight"], requires_grad=False)
        for path in ("attention.wqkv", "attention.wo", "feed_forward.w13", "feed_forward.w2"):
            p = f"layers.{i}.{path}"
            new = (Int4Linear.from_packed(t[p + ".packed"], t[p + ".scales_zeros"]) if p + ".packed" in t
                   else BF16Linear(t[p + ".weight"]))
            parent, name = path.split(".")
            setattr(getattr(layer, parent), name, new)
    model.norm.weight = nn.Parameter(t["norm.weight"], requires_grad=False)
    model.tok_embeddings = Int8Embedding(t["tok_embeddings.q"], t["tok_embeddings.scale"])
    head = "tok_embeddings" if args.tie_embeddings else "output"
    model.output = Int8Linear(t[f"{head}.q"], t[f"{head}.scale"])  # tied: the same int8 tensor, held once
    model.cos, model.sin = torch.empty(0), torch.empty(0)  # RoPE tables: built by setup_cache
    left = [n for n, x in list(model.named_parameters()) + list(model.named_buffers()) if x.is_meta]
    if left:
        raise RuntimeError(f"packed model: tensors not loaded: {left[:4]}")
    model.weight_format = "quantized"
    return model.eval().requires_grad_(False)


def _skeleton(args: ModelArgs) -> Transformer:
    """The model on the meta device, without nn.Embedding's random init: `normal_` on a meta tensor runs a Python
    decomposition that imports torch._dynamo, seconds of a warm start, to initialise a tensor replaced at once."""
    init = nn.Embedding.reset_parameters
    nn.Embedding.reset_parameters = lambda self: None
    try:
        with torch.device("meta"):
            return Transformer(args)
    finally:
        nn.Embedding.reset_parameters = init


# ---- the cache file ----

def cache_key(path: Path) -> str:
    st = path.stat()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))  # the header, metadata and first tensors: a cheap content check beside mtime
    cap = torch.backends.cpu.get_cpu_capability()
    h.update(f"{FORMAT}|{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{torch.__version__}|{cap}".encode())
    return h.hexdigest()[:24]


def cache_path(path: Path) -> Path:
    """<cache dir>/packed/<gguf stem>-<hash of its path>-<key>.safetensors"""
    where = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:8]
    return settings().cache_dir / "packed" / f"{path.stem}-{where}-{cache_key(path)}.safetensors"


def _meta(ckpt, key: str) -> dict[str, str]:
    tok = ckpt.tokenizer
    return {"format": FORMAT, "key": key, "source": str(ckpt.path), "args": json.dumps(dataclasses.asdict(ckpt.args)),
            "tensor_types": json.dumps(ckpt.tensor_types), "file_bytes": str(ckpt.file_bytes),
            "tokenizer": tok.tok.to_str(), "tokenizer_special": json.dumps(
                {"bos_id": tok.bos_id, "eos_ids": tok.eos_ids, "add_bos": tok.add_bos,
                 "chat_template": tok.chat_template})}


def write_cache(dest: Path, tensors: Mapping[str, torch.Tensor], meta: dict[str, str]) -> Path:
    """One safetensors file, written to `<dest>.tmp-<pid>` and renamed; older caches of the same GGUF removed."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_orphans(dest.parent)
    tmp = tmp_name(dest)
    try:
        _write_aligned(tmp, tensors, meta)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()
    prefix = dest.name.rsplit("-", 1)[0] + "-"
    for old in dest.parent.glob("*.safetensors"):
        if old != dest and (old.name.startswith(prefix) or not Path(_header_meta(old).get("source", "")).is_file()):
            old.unlink(missing_ok=True)  # a stale cache of this GGUF, or of a GGUF that is gone (tests' tmp files)
    return dest


def _write_aligned(path: Path, tensors: Mapping[str, torch.Tensor], meta: dict[str, str]) -> None:
    """A safetensors file whose every tensor starts at a multiple of ALIGN: the header is padded with spaces (the
    format allows it) and `__padN` uint8 tensors fill the gaps. Tensors are streamed to the file one at a time (no
    second copy of the whole model in memory), then fsync'd."""
    entries, parts, off = {}, [], 0
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        if t.dtype not in _NAMES:
            raise TypeError(f"packed cache: tensor {name} has dtype {t.dtype}, not one of {sorted(map(str, _NAMES))}")
        if off % ALIGN:
            gap = ALIGN - off % ALIGN
            entries[f"{_PAD}{len(parts)}"] = {"dtype": "U8", "shape": [gap], "data_offsets": [off, off + gap]}
            parts.append(bytes(gap))
            off += gap
        n = t.numel() * t.element_size()
        entries[name] = {"dtype": _NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [off, off + n]}
        parts.append(t)
        off += n
    header = json.dumps({"__metadata__": meta, **entries}, separators=(",", ":")).encode()
    header += b" " * ((-(8 + len(header))) % ALIGN)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)))
        f.write(header)
        for p in parts:
            f.write(p if isinstance(p, bytes) else p.reshape(-1).view(torch.uint8).numpy().data)
        f.flush()
        os.fsync(f.fileno())


def _header_meta(path: Path) -> dict[str, str]:
    try:
        with open(path, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            return json.loads(f.read(min(n, 64 << 20))).get("__metadata__", {})
    except (OSError, ValueError, struct.error):
        return {}


def read_cache(path: Path, key: str) -> tuple[dict[str, torch.Tensor], dict[str, str]] | None:
    """Memory-map a cache file -> (tensors, metadata), or None if it is missing, foreign, stale or damaged (its
    length must equal what its header describes: a truncated file is refused)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            if n > size - 8:
                return None
            header = json.loads(f.read(n))
            meta = header.pop("__metadata__", {})
            if meta.get("format") != FORMAT or meta.get("key") != key:
                return None
            end = max((v["data_offsets"][1] for v in header.values()), default=0)
            if 8 + n + end != size:
                return None
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)  # private: the file is never written through
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return None
    base, out = 8 + n, {}
    for name, v in header.items():
        if name.startswith(_PAD):
            continue
        lo, hi = v["data_offsets"]
        if (base + lo) % ALIGN:
            return None  # written without alignment: ATen's kernels may fault on it; rebuild
        dt = _DTYPES[v["dtype"]]
        t = torch.frombuffer(mm, dtype=dt, count=(hi - lo) // dt.itemsize, offset=base + lo) if hi > lo else \
            torch.empty(0, dtype=dt)
        out[name] = t.view(v["shape"])
    return out, meta


class LazyReader:
    """Opens the GGUF only if something asks for it (the legacy path, the dense weights): a warm start never does."""

    def __init__(self, path: Path):
        self._path, self._r = path, None

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        if self._r is None:
            from .gguf_loader import open_gguf

            self._r = open_gguf(self._path)
        return getattr(self._r, name)


class LazyStateDict(Mapping):
    """The HF-named fp32 state_dict of a GGUF, dequantised on first use: the packed path never uses it."""

    def __init__(self, reader, args: ModelArgs):
        self._reader, self._args, self._sd = reader, args, None

    def _get(self) -> dict[str, torch.Tensor]:
        if self._sd is None:
            from .gguf_loader import read_state_dict

            self._sd = read_state_dict(self._reader, self._args)
        return self._sd

    def __getitem__(self, key):
        return self._get()[key]

    def __iter__(self):
        return iter(self._get())

    def __len__(self):
        return len(self._get())

    @property
    def materialized(self) -> bool:
        return self._sd is not None


@dataclasses.dataclass
class CachedGGUF:
    """What a warm start reads from the cache instead of the GGUF: checkpoint.load_checkpoint makes it a Checkpoint."""

    args: ModelArgs
    tokenizer: object
    tensor_types: dict[str, int]
    file_bytes: int
    tensors: dict[str, torch.Tensor]  # memory-mapped, named as build_packed names them
    info: dict[str, str]
    reader: LazyReader
    state_dict: LazyStateDict


def cached_checkpoint(path: Path) -> CachedGGUF | None:
    """The packed cache of a GGUF, read without parsing the GGUF (None on a miss): args, tokenizer and the
    memory-mapped packed tensors; the reader and the dense weights open lazily if asked for."""
    from .quant import int4_cpu_available
    from .tokenizer import Tokenizer

    if not int4_cpu_available():
        return None
    cp = cache_path(path)
    got = read_cache(cp, cp.stem.rsplit("-", 1)[1])
    if got is None:
        return None
    tensors, meta = got
    from tokenizers import Tokenizer as HFTokenizer

    sp = json.loads(meta["tokenizer_special"])
    tok = Tokenizer(HFTokenizer.from_str(meta["tokenizer"]), sp["bos_id"], sp["eos_ids"], sp["add_bos"],
                    sp["chat_template"])
    args = ModelArgs(**json.loads(meta["args"]))
    reader = LazyReader(path)
    return CachedGGUF(args, tok, json.loads(meta["tensor_types"]), int(meta["file_bytes"]), tensors,
                      {"state": "hit", "path": str(cp)}, reader, LazyStateDict(reader, args))


def packed_model(ckpt, use_cache: bool = True) -> Transformer:
    """The packed CPU model of a 4-bit GGUF checkpoint: from its memory-mapped cache when the checkpoint came from
    it, else built from the GGUF blocks (and, with use_cache, written to the cache for the next start)."""
    tensors = getattr(ckpt, "packed", None)
    if tensors is None or not use_cache:
        tensors = build_packed(ckpt.reader, ckpt.args)
        state = {"state": "off"}
        if use_cache:
            cp = cache_path(ckpt.path)
            try:
                write_cache(cp, tensors, _meta(ckpt, cp.stem.rsplit("-", 1)[1]))
                state = {"state": "written", "path": str(cp)}
            except OSError as e:  # a read-only or full cache dir costs the next start time, not this run
                state = {"state": f"not written ({e.strerror or e})"}
        ckpt.packed_cache = state
    model = build_model(ckpt.args, tensors)
    model.packed_cache = dict(ckpt.packed_cache)
    return model


# for runtime/offload/packed_resident.py (a streamed model's resident weights, packed the same way)
int8_table = _int8_table
write_aligned = _write_aligned
