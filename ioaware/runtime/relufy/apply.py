"""Running a relufy adapter (adapter.py) on top of its base checkpoint: everywhere the FFN runs.

The adapter's LoRA deltas are merged into the FFN weights when they are read (W + B @ A, `MergedStateDict`), and the
model's gate activation becomes the adapter's (`ModelArgs.ffn_act`). What consumes the merged weights stores them in
its own format, as it does the base weights: the dense model in its dtype, the flash store in fp16 (`convert`), the
packed CPU model as 4-bit groups (`requantize_ffn`: the merged weights are no longer the GGUF's Q4 blocks, so they
are quantised again, Q4_1-style, min/max per group of 32).

Which adapter runs (`resolve_adapter`): `--relufy FILE`; none with `--no-relufy`; otherwise the shipped one
(`SHIPPED`) for the default model when that file exists. Every load checks the base file's SHA-256 first
(`AdapterMismatchError`, one line saying what to do), before a store or cache is written.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch

from ...errors import UnsupportedError
from .adapter import Adapter, AdapterMismatchError, file_sha256, load_adapter

# the adapter `make run` and `ioaware generate` use for the default model, when it exists (`ioaware relufy` makes it)
SHIPPED = Path(__file__).resolve().parents[1] / "offload" / "data" / "smollm2-relu.safetensors"
_FFN = {"mlp.gate_proj.weight": "gate_proj", "mlp.up_proj.weight": "up_proj", "mlp.down_proj.weight": "down_proj"}


def resolve_adapter(relufy: str | Path | None = None, no_relufy: bool = False, model: str | Path | None = None,
                    shipped: Path | None = None) -> Path | None:
    """The adapter a run uses: `relufy` if given (must exist), none with `no_relufy`, else the shipped adapter when
    the model is the default one (no `model`, no IOAWARE_MODEL) and the file exists; else none (plain SwiGLU).

    Examples:
        >>> resolve_adapter(no_relufy=True) is None
        True
    """
    from ...env import settings

    if no_relufy:
        if relufy:
            raise ValueError("--relufy and --no-relufy contradict each other; give one")
        return None
    if relufy:
        p = Path(relufy)
        if not p.is_file():
            raise FileNotFoundError(f"--relufy {p}: no such adapter file (make one with `ioaware relufy`)")
        return p
    shipped = SHIPPED if shipped is None else shipped
    if model is None and not settings().model and shipped.is_file():
        return shipped
    return None


def check_adapter(adapter_path: str | Path, model_path: str | Path) -> Adapter:
    """Load the adapter, checking that it was made from exactly `model_path` (SHA-256), and that its shapes fit
    that model: one line saying what to do otherwise, before any work."""
    model_path = Path(model_path)
    if not model_path.is_file():
        raise UnsupportedError(f"a relufy adapter loads on top of the single model file it was trained on (a GGUF); "
                               f"{model_path} is a folder")
    return load_adapter(adapter_path, model_path)


def check_base(adapter_path: str | Path, model_path: str | Path) -> dict[str, str]:
    """`check_adapter`'s hash check from the file's metadata alone (no tensor is read: a budgeted run checks here
    and merges in a child process). Returns the adapter's metadata."""
    from safetensors import safe_open

    from .adapter import FORMAT

    adapter_path, model_path = Path(adapter_path), Path(model_path)
    if not adapter_path.is_file():
        raise FileNotFoundError(f"no relufy adapter at {adapter_path}")
    if not model_path.is_file():
        raise UnsupportedError(f"a relufy adapter loads on top of the single model file it was trained on (a GGUF); "
                               f"{model_path} is a folder")
    with safe_open(str(adapter_path), framework="pt") as f:
        meta = dict(f.metadata() or {})
    if meta.get("format") != FORMAT:
        raise AdapterMismatchError(f"{adapter_path} is not a relufy adapter (format {meta.get('format')!r}, "
                                   f"expected {FORMAT!r})")
    got = file_sha256(model_path)
    if got != meta.get("base_sha256"):  # the same words as load_adapter's
        raise AdapterMismatchError(
            f"adapter {adapter_path} was trained on a base file with SHA-256 {str(meta.get('base_sha256'))[:12]}…, "
            f"but {model_path} has {got[:12]}…; pass the model it was made from, retrain it with `ioaware relufy` "
            f"(its command is in the adapter's metadata), or run without it (--no-relufy)")
    return meta


def adapter_args(args, adapter: Adapter):
    """The base ModelArgs with the adapter's gate activation (relu2 ignores the shift, as `Adapter.act` does)."""
    shift = 0.0 if adapter.activation == "relu2" else float(adapter.shift)
    return dataclasses.replace(args, ffn_act=adapter.activation, ffn_act_shift=shift)


def check_shapes(adapter: Adapter, args) -> None:
    """Every LoRA pair must name a layer of the model and fit its projection: (rank, in) and (out, rank)."""
    d, h = args.dim, args.hidden_dim
    want = {"gate_proj": (h, d), "up_proj": (h, d), "down_proj": (d, h)}
    for (i, proj), (A, B) in adapter.deltas.items():
        if not 0 <= i < args.n_layers:
            raise AdapterMismatchError(f"adapter {adapter.path} changes layer {i}; the model has {args.n_layers} "
                                       "layers (pass the model it was made from, or --no-relufy)")
        if (B.shape[0], A.shape[1]) != want[proj]:
            raise AdapterMismatchError(f"adapter {adapter.path}: layer {i} {proj} is {B.shape[0]}x{A.shape[1]}, "
                                       f"the model's is {want[proj][0]}x{want[proj][1]} (pass the model it was made "
                                       "from, or --no-relufy)")


class MergedStateDict(Mapping):
    """A checkpoint's state_dict (HF names) with the adapter merged into the FFN weights as each is asked for: the
    base mapping stays lazy (a GGUF's tensors are dequantised on first use), nothing is held twice."""

    def __init__(self, base: Mapping[str, torch.Tensor], adapter: Adapter):
        self.base, self.adapter = base, adapter

    def __getitem__(self, name: str) -> torch.Tensor:
        w = self.base[name]
        for suffix, proj in _FFN.items():
            if name.endswith(suffix) and name.startswith("model.layers."):
                return self.adapter.merged(int(name.split(".")[2]), proj, w)
        return w

    def __iter__(self) -> Iterator[str]:
        return iter(self.base)

    def __len__(self) -> int:
        return len(self.base)


def relufy_checkpoint(ckpt, adapter: Adapter):
    """A Checkpoint whose FFN weights are merged with the adapter and whose model uses its gate activation. The
    packed CPU weights of the base (if cached) stay: `build_model` re-quantises the FFN projections from the merged
    weights (`requantize_ffn`)."""
    if ckpt.format != "gguf" and ckpt.format != "safetensors":
        raise UnsupportedError(f"a relufy adapter loads on top of a dense model; {ckpt.path.name} is a {ckpt.format} "
                               "checkpoint (use --no-relufy)")
    check_shapes(adapter, ckpt.args)
    return dataclasses.replace(ckpt, args=adapter_args(ckpt.args, adapter),
                               state_dict=MergedStateDict(ckpt.state_dict, adapter), relufy=adapter,
                               pack_relufied=packed_relufied_model)


def load_relufied(model_path: str | Path | None, adapter_path: str | Path, weight_cache: bool = True):
    """`load_checkpoint` with the adapter applied, its hash checked against the model file before anything else."""
    from ..llm.checkpoint import default_model_path, load_checkpoint

    path = Path(model_path) if model_path is not None else default_model_path()
    adapter = check_adapter(adapter_path, path)
    return relufy_checkpoint(load_checkpoint(path, weight_cache=weight_cache), adapter)


def relufied_fingerprint(base_fingerprint: str, adapter_path: str | Path) -> str:
    """The fingerprint of base + adapter (a store's, a predictor file's): a store made without this adapter (or with
    another) never opens for a run with it, and the other way round."""
    return hashlib.sha256(f"{base_fingerprint}|relufy:{file_sha256(adapter_path)}".encode()).hexdigest()


def quantize_q4(w: torch.Tensor, group: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(out, in) fp32 -> q (out, in) int32 in 0..15, scale and zero (out, in/group) fp32 with
    w ~= (q - 8) * scale + zero: GGUF's Q4_1 (d, m per block of 32: w = d q + m, zero = m + 8 d), as `q4_blocks` gives
    it for the base weights. Round to nearest; the error is at most scale / 2 per weight."""
    out, inp = w.shape
    g = w.float().reshape(out, inp // group, group)
    lo, hi = g.amin(-1), g.amax(-1)  # (out, in/group)
    d = ((hi - lo) / 15).clamp_min(1e-12)
    q = torch.round((g - lo[..., None]) / d[..., None]).clamp_(0, 15).to(torch.int32)
    return q.reshape(out, inp), d, lo + 8 * d


def _merged_ffn_weight(ckpt, tensors, layer: int, parts: tuple[str, ...]) -> torch.Tensor:
    """(out, in) fp32 merged weight of the projections `parts` of `layer`, concatenated. Q4 base blocks are expanded
    straight from the GGUF (`q4_blocks`, milliseconds a tensor) rather than through the checkpoint's lazy
    state_dict, which dequantises the whole model on first use (seconds, and every weight in fp32 at once)."""
    from ..llm.quant import GROUP, Q4_TYPES, q4_blocks

    gguf = {"gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}
    out = []
    for proj in parts:
        t = tensors.get(f"blk.{layer}.{gguf[proj]}.weight") if tensors is not None else None
        if t is not None and _qtype(t) in Q4_TYPES:
            q, sc, z = q4_blocks(t)
            w = (q - 8).float() * sc.repeat_interleave(GROUP, 1) + z.repeat_interleave(GROUP, 1)
        else:
            w = ckpt.state_dict.base[f"model.layers.{layer}.mlp.{proj}.weight"].float()
        out.append(ckpt.relufy.merged(layer, proj, w))
    return torch.cat(out)


def _qtype(t) -> str:
    from gguf import GGMLQuantizationType

    return GGMLQuantizationType(t.tensor_type).name


def packed_ffn_tensors(ckpt) -> dict[str, torch.Tensor]:
    """The relufied FFN projections in the packed CPU model's format, named as packed_cache names them: merged
    weights quantised to 4-bit groups (Int4Linear.pack), or bf16 where the width is not a multiple of 32."""
    from ..llm.quant import GROUP, Int4Linear

    tensors = {t.name: t for t in ckpt.reader.tensors} if ckpt.format == "gguf" else None
    out = {}
    for i in range(ckpt.args.n_layers):
        for name, parts in (("w13", ("gate_proj", "up_proj")), ("w2", ("down_proj",))):
            w = _merged_ffn_weight(ckpt, tensors, i, parts)
            p = f"layers.{i}.feed_forward.{name}"
            if w.shape[1] % GROUP == 0:
                out[p + ".packed"], out[p + ".scales_zeros"] = Int4Linear.pack(*quantize_q4(w, GROUP))
            else:
                out[p + ".weight"] = w.to(torch.bfloat16)
    return out


def packed_relufied_model(ckpt, use_cache: bool = True):
    """The packed CPU model of a relufied GGUF checkpoint: the base's packed model (built, cached and described
    with the base's own arguments, so the base's packed cache never says ReLU), then the adapter's activation and
    the FFN projections re-quantised from the merged weights (`requantize_ffn`)."""
    from ..llm.model import gate_activation
    from ..llm.packed_cache import packed_model

    base_args = dataclasses.replace(ckpt.args, ffn_act="silu", ffn_act_shift=0.0)
    base = dataclasses.replace(ckpt, args=base_args, state_dict=ckpt.state_dict.base, relufy=None,
                               pack_relufied=None)
    model = packed_model(base, use_cache=use_cache)
    ckpt.packed_cache = base.packed_cache
    model.args = ckpt.args
    for layer in model.layers:
        layer.feed_forward.act_name = ckpt.args.ffn_act
        layer.feed_forward.act = gate_activation(ckpt.args.ffn_act, ckpt.args.ffn_act_shift)
    requantize_ffn(model, ckpt, use_cache)
    return model


@torch.no_grad()
def requantize_ffn(model, ckpt, use_cache: bool = True) -> int:
    """Replace each FFN projection of a packed CPU model with the merged weights quantised to 4-bit groups. The
    result is cached beside the base's packed weights (packed_cache.py's file format, keyed by the GGUF's cache key
    and the adapter's SHA-256), so a later start maps it instead of reading the GGUF. Returns how many projections
    were replaced."""
    from ...env import settings
    from ..llm.packed_cache import FORMAT, cache_key, read_cache, write_cache
    from ..llm.quant import BF16Linear, Int4Linear

    t = None
    if use_cache and ckpt.format == "gguf":
        sha = file_sha256(ckpt.relufy.path)
        key = hashlib.sha256(f"{cache_key(ckpt.path)}|{sha}".encode()).hexdigest()[:24]
        dest = settings().cache_dir / "packed" / f"relufy-{sha[:12]}-{key}.safetensors"
        got = read_cache(dest, key)
        if got is not None:
            t = got[0]
        else:
            t = packed_ffn_tensors(ckpt)
            try:
                write_cache(dest, t, {"format": FORMAT, "key": key, "source": str(ckpt.path),
                                      "adapter": str(ckpt.relufy.path)})
            except OSError:  # a read-only or full cache dir costs the next start time, not this run
                pass
    if t is None:
        t = packed_ffn_tensors(ckpt)
    n = 0
    for i, layer in enumerate(model.layers):
        for name in ("w13", "w2"):
            p = f"layers.{i}.feed_forward.{name}"
            new = (Int4Linear.from_packed(t[p + ".packed"], t[p + ".scales_zeros"]) if p + ".packed" in t
                   else BF16Linear(t[p + ".weight"]))
            setattr(layer.feed_forward, name, new)
            n += 1
    return n
