"""A streamed model's resident weights kept packed, as the 4-bit GGUF holds them, instead of the store's fp16.

What stays in DRAM under `--memory-budget` besides the streamed FFN is the token embedding (tied with the output
head in SmolLM2) and the attention projections. In the store they are fp16 (105 MiB for SmolLM2-135M, 41% of its
weight bytes: alone it made 50% budgets impossible). Packed they are 43 MiB:

- attention q/k/v/o: the GGUF's own Q4_0/Q4_1 blocks in the int4 CPU kernel's layout (`quant.Int4Linear`: the file's
  4-bit values, bf16 scale and zero per group of 32; no re-quantisation),
- the embedding: int8 rows with a bf16 scale per row (`packed_cache.Int8Embedding` gathers a row per token; the
  tied head runs the same int8 tensor through `_weight_int8pack_mm`),

which is exactly what plain `ioaware generate` runs on CPU (packed_cache.py), so the logits move from the fp16
streamed path's by no more than the packed model's from the dense one (measured in
tests/runtime/test_packed_resident.py). Norms stay the store's (fp16): they set the activation and KV dtype, so the
KV cache stays 2 bytes an element.

The tensors are built once from the GGUF in a child process (parsing it peaks near 180 MB) and written, 64-byte
aligned (ATen's int8 kernel faults on less), to `<cache dir>/resident/`, named by the model's fingerprint, torch's
version and the CPU capability (the int4 layout is the kernel's, per build and ISA). A blake2b of the tensor bytes
in the header is checked on every open: the file is mapped straight into the model, so a flipped byte there would
otherwise become text.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

import torch

from ..llm.packed_cache import ALIGN, FORMAT, Int8Embedding, Int8Linear, int8_table, read_cache, write_aligned
from ..llm.quant import GROUP, Q4_TYPES, Int4Linear, int4_cpu_available, projection_sources, q4_blocks
from .store import StoreError

KIND = "streamed-resident/1"
_ATTN = ("attention.wqkv", "attention.wo")


def packable(reader, a) -> bool:
    """True when the GGUF's attention projections are all Q4_0/Q4_1 (groups of 32) and this torch has the int4 CPU
    kernel: only then can the resident weights stay packed without re-quantising them."""
    if not int4_cpu_available():
        return False
    from gguf import GGMLQuantizationType

    tensors = {t.name: t for t in reader.tensors}
    for i in range(a.n_layers):
        for path in _ATTN:
            for s, _ in projection_sources(i)[path]:
                t = tensors.get(s)
                if t is None or GGMLQuantizationType(t.tensor_type).name not in Q4_TYPES or int(t.shape[0]) % GROUP:
                    return False
    return True


def packed_bytes(a) -> int:
    """Bytes of the packed resident tensors for ModelArgs `a`, before they are built: the budget is checked
    against this before any file is written. int4: half a byte a weight plus bf16 scale and zero per group of 32;
    int8 embedding: a byte an element plus a bf16 scale per row (twice when the head is not tied); fp16 norms."""
    H, Hkv, D, d = a.n_heads, a.n_kv_heads, a.head_dim, a.dim

    def int4(out: int, inp: int) -> int:
        return out * inp // 2 + (inp // GROUP) * out * 2 * 2

    attn = int4((H + 2 * Hkv) * D, d) + int4(d, H * D)
    emb = a.vocab_size * d + a.vocab_size * 2
    return a.n_layers * attn + emb * (1 if a.tie_embeddings else 2) + (2 * a.n_layers + 1) * d * 2


def resident_path(cache_dir: Path, fingerprint: str) -> tuple[Path, str]:
    """(file, key): the key covers the model, this format, torch's version and the CPU's capability."""
    cap = torch.backends.cpu.get_cpu_capability()
    key = hashlib.sha256(f"{KIND}|{fingerprint}|{torch.__version__}|{cap}".encode()).hexdigest()[:24]
    return Path(cache_dir) / "resident" / f"{fingerprint[:16]}-{key}.safetensors", key


def build_tensors(reader, a) -> dict[str, torch.Tensor]:
    """The packed attention projections and int8 embedding (and untied head) from the GGUF's blocks, named after
    the modules that hold them; one projection's unpacked ints alive at a time."""
    from ..llm.gguf_loader import unpermute_qk

    tensors = {t.name: t for t in reader.tensors}
    out: dict[str, torch.Tensor] = {}
    for i in range(a.n_layers):
        for path in _ATTN:
            parts = []
            for s, kind in projection_sources(i)[path]:
                q, sc, z = q4_blocks(tensors[s])
                if kind:  # undo llama.cpp's rotary row permutation on q/k, on the groups' scales too
                    heads = a.n_heads if kind == "q" else a.n_kv_heads
                    q, sc, z = (unpermute_qk(x, heads) for x in (q, sc, z))
                parts.append((q, sc, z))
            packed, sz = Int4Linear.pack(*(torch.cat(x) for x in zip(*parts)))
            out[f"layers.{i}.{path}.packed"], out[f"layers.{i}.{path}.scales_zeros"] = packed, sz
    out["tok_embeddings.q"], out["tok_embeddings.scale"] = int8_table(tensors["token_embd.weight"])
    if not a.tie_embeddings:
        out["output.q"], out["output.scale"] = int8_table(tensors["output.weight"])
    return out


def _digest(tensors: Mapping[str, torch.Tensor]) -> str:
    h = hashlib.blake2b(digest_size=32)
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].contiguous().reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


def save(model_path: Path, dest: Path, key: str) -> bool:
    """Build the packed tensors from the GGUF and write them (temporary sibling, fsync, rename); False (nothing
    written) when its attention is not all 4-bit. Run in a child process: the GGUF reader and the unpacked ints
    never enter the generating process."""
    from ...files import remove_orphans, tmp_name
    from ..llm.gguf_loader import open_gguf, read_args

    reader = open_gguf(model_path)
    a = read_args(reader)
    if not packable(reader, a):
        return False
    tensors = build_tensors(reader, a)
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_orphans(dest.parent)
    tmp = tmp_name(dest)
    try:
        write_aligned(tmp, tensors, {"format": FORMAT, "key": key, "kind": KIND, "blake2b": _digest(tensors),
                                      "source": str(model_path)})
        tmp.replace(dest)
    finally:
        tmp.unlink(missing_ok=True)
    for old in dest.parent.glob(f"{dest.name.split('-', 1)[0]}-*.safetensors"):
        if old != dest:  # this model's file for another torch or CPU: never read again
            old.unlink(missing_ok=True)
    return True


def load(path: Path, key: str) -> dict[str, torch.Tensor] | None:
    """The packed tensors, memory-mapped (copy-on-write, never written) and checked against the blake2b in their
    header; None when the file is missing or of another key (then it is built anew). A file whose bytes do not
    match raises StoreError: it is never used."""
    got = read_cache(path, key)
    if got is None:
        return None
    tensors, meta = got
    if meta.get("kind") != KIND:
        return None
    if _digest(tensors) != meta.get("blake2b"):
        raise StoreError(f"{path}: the packed resident weights fail their checksum (a corrupt file); delete it and "
                         "run again to rebuild it")
    for t in tensors.values():
        if t.numel() and t.data_ptr() % ALIGN:
            return None
    return tensors


def attach(model, store, tensors: Mapping[str, torch.Tensor]) -> None:
    """Give a Transformer built on meta (its FFNs already streamed) the packed projections, embedding and head,
    and the store's norms (read lazily, one tensor at a time). The embedding returns the store's dtype, the
    activation dtype of the streamed model."""
    from torch import nn

    a = store.args
    norms = store.resident_tensors()
    for i, layer in enumerate(model.layers):
        for path in _ATTN:
            p = f"layers.{i}.{path}"
            parent, name = path.split(".")
            setattr(getattr(layer, parent), name, Int4Linear.from_packed(tensors[p + ".packed"],
                                                                         tensors[p + ".scales_zeros"]))
        for mod, hf in (("attention_norm", "input_layernorm"), ("ffn_norm", "post_attention_layernorm")):
            w = norms[f"model.layers.{i}.{hf}.weight"]
            getattr(layer, mod).weight = nn.Parameter(w, requires_grad=False)
    model.norm.weight = nn.Parameter(norms["model.norm.weight"], requires_grad=False)
    model.tok_embeddings = _Embedding(tensors["tok_embeddings.q"], tensors["tok_embeddings.scale"],
                                      store.torch_dtype)
    head = "tok_embeddings" if a.tie_embeddings else "output"
    model.output = Int8Linear(tensors[f"{head}.q"], tensors[f"{head}.scale"])  # tied: one int8 tensor


class _Embedding(Int8Embedding):
    """Int8 rows looked up in the streamed model's activation dtype (fp16 for a float16 store)."""

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype):
        super().__init__(q, scale)
        self.dtype = dtype

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return super().forward(tokens).to(self.dtype)


def warm_up_kernels() -> None:
    """Run, once on tiny tensors, the kernels a streamed decode step calls (int4 and int8 weight-only matmuls, fp16
    norms, SiLU, SDPA with GQA, gathers and sorts of neuron ids) so their code pages are loaded before the baseline
    is taken: 7 MiB of libtorch_cpu.so first touched mid-generation otherwise counted as the model's (measured)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 64, generator=g).half()
    lin = Int4Linear(torch.randint(0, 16, (64, 64), dtype=torch.int32, generator=g), torch.rand(64, 2, generator=g),
                     torch.rand(64, 2, generator=g))
    head = Int8Linear(torch.randint(-127, 128, (64, 64), dtype=torch.int8, generator=g),
                      torch.rand(64, generator=g).to(torch.bfloat16))
    emb = _Embedding(head.q, head.scale, torch.float16)
    for rows in (x[:1], x):
        y = head(lin(rows)) + emb(torch.arange(len(rows)))
        y = torch.nn.functional.silu(y) * torch.rsqrt(y.float().pow(2).mean(-1, keepdim=True) + 1e-5).half()
        q = y.view(1, 4, len(rows), 16)
        torch.nn.functional.scaled_dot_product_attention(q, q[:, :2], q[:, :2], is_causal=len(rows) > 1,
                                                         enable_gqa=True)
    ids = torch.randperm(64, generator=g)
    ids.sort()
    torch.isin(ids, ids[:5])
    torch.zeros(64, 3, 8).half().index_copy_(0, ids[:4], torch.ones(4, 3, 8).half())
    torch.topk(y.float(), 3)
