"""Read a Hugging Face Llama folder: config.json -> ModelArgs, *.safetensors -> HF-named fp32 tensors."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ...errors import UnsupportedError
from .model import ModelArgs

LLAMA_MODEL_TYPES = ("llama",)


def read_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no config.json (a model folder needs config.json, *.safetensors "
                                "and tokenizer.json)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None


def args_from_config(cfg: dict) -> ModelArgs:
    mt = cfg.get("model_type")
    if mt not in LLAMA_MODEL_TYPES:
        raise UnsupportedError(f"model_type {mt!r} is not supported (supported: {', '.join(LLAMA_MODEL_TYPES)})")
    if cfg.get("attention_bias") or cfg.get("mlp_bias"):
        raise UnsupportedError("Llama configs with attention_bias or mlp_bias are not supported")
    if cfg.get("hidden_act", "silu") != "silu":
        raise UnsupportedError(f"hidden_act {cfg.get('hidden_act')!r} is not supported (supported: silu)")
    # transformers < 5 writes rope_theta + rope_scaling; 5.x writes rope_parameters holding both
    rp = dict(cfg.get("rope_parameters") or {})
    theta = float(cfg.get("rope_theta") or rp.pop("rope_theta", 10000.0))
    scaling = cfg.get("rope_scaling") or rp or None
    if scaling and (scaling.get("rope_type") or scaling.get("type")) in (None, "default"):
        scaling = None
    try:
        n_heads = int(cfg["num_attention_heads"])
        return ModelArgs(
            dim=int(cfg["hidden_size"]), n_layers=int(cfg["num_hidden_layers"]), n_heads=n_heads,
            n_kv_heads=int(cfg.get("num_key_value_heads") or n_heads),
            hidden_dim=int(cfg["intermediate_size"]), vocab_size=int(cfg["vocab_size"]),
            head_dim=int(cfg.get("head_dim") or cfg["hidden_size"] // n_heads),
            norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            rope_base=theta, rope_scaling=scaling, max_seq_len=int(cfg.get("max_position_embeddings", 2048)),
            tie_embeddings=bool(cfg.get("tie_word_embeddings", False)), arch="llama")
    except KeyError as e:
        raise KeyError(f"config.json lacks {e.args[0]!r}") from None


def read_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{folder} has no *.safetensors files")
    sd = {}
    for f in files:
        try:
            part = load_file(str(f))
        except (SafetensorError, OSError) as e:
            raise ValueError(f"{f} is not a readable safetensors file ({e})") from None
        sd.update({k: v.float() for k, v in part.items()})
    return sd
