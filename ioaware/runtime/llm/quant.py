"""Keep GGUF's 4-bit weights packed on CPU: 8x fewer bytes to read per decoded token than fp32.

A Q4_1 block of 32 weights stores d, m (fp16) and 4-bit q: w = d*q + m = (q - 8)*d + (m + 8d). That is exactly
the group-wise affine format of PyTorch's int4 CPU matmul (`_weight_int4pack_mm_for_cpu`, group size 32,
w = (q - 8)*scale + zero), so the file's weights run as they are, with no re-quantisation. Q4_0 is the case m = -8d.
The kernel wants bf16 activations and bf16 scales: that rounding is the only numerical difference from the
dequantised fp32 model (cf. llama.cpp, which rounds activations to 8 bits for its Q4 x Q8 dot products).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .gguf_loader import unpermute_qk

GROUP = 32
Q4_TYPES = ("Q4_0", "Q4_1")


def int4_cpu_available() -> bool:
    return hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu") and hasattr(
        torch.ops.aten, "_convert_weight_to_int4pack_for_cpu")


def q4_blocks(t) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A Q4_0/Q4_1 GGUF tensor -> q (out, in) int32 in 0..15, scale and zero (out, in/32) fp32 with
    w = (q - 8) * scale + zero."""
    from gguf import GGMLQuantizationType

    qtype = GGMLQuantizationType(t.tensor_type).name
    out, inp = int(t.shape[1]), int(t.shape[0])
    nb = inp // GROUP
    raw = np.asarray(t.data).reshape(out, nb, -1)  # (out, blocks, bytes per block)
    if qtype == "Q4_1":
        d = raw[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)  # (out, nb)
        m = raw[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
        qs = raw[..., 4:20]
    elif qtype == "Q4_0":
        d = raw[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
        m = -8.0 * d
        qs = raw[..., 2:18]
    else:
        raise ValueError(f"{t.name}: {qtype} is not a 4-bit type")
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).astype(np.int32)  # element j, then j + 16, as ggml packs
    q = torch.from_numpy(q.reshape(out, inp))
    scale = torch.from_numpy(d)
    zero = torch.from_numpy(m + 8.0 * d)
    return q, scale, zero


class Int4Linear(nn.Module):
    """y = x @ W^T with W held as packed 4-bit groups of 32 (bf16 scale and zero per group)."""

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor):
        self._init_packed(*self.pack(q, scale, zero), *q.shape)

    @staticmethod
    def pack(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(q, scale, zero) as q4_blocks gives them -> the kernel's packed weight and (in/32, out, 2) bf16 groups."""
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.contiguous(), 1)
        sz = torch.stack([scale.t(), zero.t()], dim=-1).to(torch.bfloat16).contiguous()  # (in/32, out, 2)
        return packed, sz

    @classmethod
    def from_packed(cls, packed: torch.Tensor, sz: torch.Tensor) -> Int4Linear:
        """From `pack`'s output (e.g. memory-mapped from the packed-weight cache): no unpacking, no copy."""
        m = cls.__new__(cls)
        m._init_packed(packed, sz, sz.shape[1], sz.shape[0] * GROUP)
        return m

    def _init_packed(self, packed: torch.Tensor, sz: torch.Tensor, out_features: int, in_features: int) -> None:
        super().__init__()
        self.out_features, self.in_features = out_features, in_features
        self.register_buffer("packed", packed, persistent=False)
        self.register_buffer("scales_zeros", sz, persistent=False)
        self.packed._ioaware_weight = True  # counted as weight bytes read per token
        self.scales_zeros._ioaware_weight = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features).to(torch.bfloat16)  # (N, in)
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, self.packed, GROUP, self.scales_zeros)  # (N, out)
        return y.to(x.dtype).reshape(*shape[:-1], self.out_features)


class BF16Linear(nn.Module):
    """A dense projection stored in bf16 (half the bytes of fp32), for weights that are not 4-bit in the file."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight.to(torch.bfloat16).contiguous(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(torch.bfloat16), self.weight).to(x.dtype)


# fused module -> the GGUF tensors (in order) that make it, and whether rows need the q/k un-permutation
def _sources(i: int) -> dict[str, list[tuple[str, str | None]]]:
    b = f"blk.{i}."
    return {
        "attention.wqkv": [(b + "attn_q.weight", "q"), (b + "attn_k.weight", "k"), (b + "attn_v.weight", None)],
        "attention.wo": [(b + "attn_output.weight", None)],
        "feed_forward.w13": [(b + "ffn_gate.weight", None), (b + "ffn_up.weight", None)],
        "feed_forward.w2": [(b + "ffn_down.weight", None)],
    }


def quantize_from_gguf(model, reader) -> int:
    """Replace the model's projections whose GGUF tensors are all Q4_0/Q4_1 with Int4Linear, and the output
    projection with a bf16 copy. Returns how many projections were packed. The model stays fp32 elsewhere."""
    from gguf import GGMLQuantizationType

    a = model.args
    tensors = {t.name: t for t in reader.tensors}
    n = 0
    for i, layer in enumerate(model.layers):
        for path, srcs in _sources(i).items():
            if any(GGMLQuantizationType(tensors[s].tensor_type).name not in Q4_TYPES for s, _ in srcs):
                continue  # mixed or other types stay dense
            if any(int(tensors[s].shape[0]) % GROUP for s, _ in srcs):
                continue
            qs, ss, zs = [], [], []
            for s, kind in srcs:
                q, sc, z = q4_blocks(tensors[s])
                if kind:  # undo llama.cpp's rotary row permutation on q/k, on the scales' rows too
                    heads = a.n_heads if kind == "q" else a.n_kv_heads
                    q, sc, z = (unpermute_qk(x, heads) for x in (q, sc, z))
                qs.append(q)
                ss.append(sc)
                zs.append(z)
            parent, name = path.split(".")
            setattr(getattr(layer, parent), name, Int4Linear(torch.cat(qs), torch.cat(ss), torch.cat(zs)))
            n += 1
    # the tied embedding is a lookup (one row per token) and the output projection (all rows): give the
    # projection its own bf16 copy and keep the fp32 table for the lookup
    model.output = BF16Linear(model.output.weight.detach())
    return n


projection_sources = _sources  # for runtime/offload/packed_resident.py: the GGUF tensors of each fused projection
