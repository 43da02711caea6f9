"""The gate copy's arithmetic and file format (gate_copy.py says what it is for and why): 4-bit codes, the int4
kernel's packing, logits from any form. Kept apart so predictors.py can use it without importing gate_copy.py."""

from __future__ import annotations

import torch

GATE_COPY = "gate_q4"  # Predictors.activation of this predictor
GROUP = 32  # the int4 kernel's group (llm/quant.py)
FILE_CODES = "u4x2-bf16"  # how a predictor file holds the codes (file_tensors); checked on load
DEFAULT_RECALL = 0.98  # of firing neurons on the calibration text (what it costs: gate_copy.py, its results file)


def gate_shift(args) -> float:
    """s in 'neuron fires iff gate x > s' for a relufied model's activation."""
    return float(args.ffn_act_shift) if args.ffn_act == "shifted_relu" else 0.0


def quantize(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(H, dim) fp32 -> q uint8 (H, dim) in 0..15, scale, zero (H, dim/32) fp32: w ~= (q - 8) scale + zero, round to
    nearest in each group's [min, max] (GGUF Q4_1's blocks)."""
    H, d = w.shape
    g = w.float().reshape(H, d // GROUP, GROUP)
    lo, hi = g.amin(-1), g.amax(-1)
    sc = ((hi - lo) / 15).clamp_min(1e-12)
    q = torch.round((g - lo[..., None]) / sc[..., None]).clamp_(0, 15).to(torch.uint8)
    return q.reshape(H, d), sc, lo + 8 * sc


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    return (q.float() - 8) * scale.repeat_interleave(GROUP, 1) + zero.repeat_interleave(GROUP, 1)


def is_packed(A: torch.Tensor, B: torch.Tensor) -> bool:
    return B.dim() == 3  # (dim/32, H, 2) scales and zeros of the packed form


def pack(A: torch.Tensor, B: torch.Tensor, w: torch.Tensor, dtype=None) -> tuple[torch.Tensor, torch.Tensor,
                                                                                   torch.Tensor]:
    """File form -> run form (see the module doc); a run form or a float gate is returned as it is (dtype applied to
    a float gate)."""
    from ..llm.quant import int4_cpu_available

    if is_packed(A, B):
        return A, B, w
    if A.is_floating_point():  # float gate (dim not a multiple of 32); a copy, never a view of a loaded file
        return A.to(dtype or A.dtype, copy=True), B, w
    if int4_cpu_available() and A.device.type == "cpu":
        from ..llm.quant import Int4Linear

        packed, sz = Int4Linear.pack(A.to(torch.int32), B.float(), w.float())
        return packed, sz, torch.empty(0)
    return dequantize(A, B, w).to(dtype or torch.float32), torch.empty(0), torch.empty(0)


def file_tensors(A: torch.Tensor, B: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor,
                                                                             torch.Tensor]:
    """File form -> what a predictor file holds: codes two a byte (element 2j low nibble, 2j+1 high), scale and
    zero in bf16 (the kernel's precision: the run form is the same whether packed before or after a save)."""
    if A.is_floating_point():
        return A, B, w
    q = A.to(torch.uint8)
    return q[:, 0::2] | (q[:, 1::2] << 4), B.to(torch.bfloat16), w.to(torch.bfloat16)


def from_file(A: torch.Tensor, B: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A predictor file's tensors of one layer -> the run form (`pack`), holding no view of the file."""
    if A.is_floating_point():
        return pack(A, B, w)
    q = torch.stack([A & 15, A >> 4], dim=-1).reshape(A.shape[0], -1)  # (H, dim) codes
    return pack(q, B.float(), w.float())


def logits(x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """x (..., dim) -> (..., H) fp32 logits Wq x + b, from any form."""
    shape = x.shape
    x2 = x.reshape(-1, shape[-1])
    if is_packed(A, B):
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2.to(torch.bfloat16), A, GROUP, B).float()
    elif A.is_floating_point():
        y = x2.to(A.dtype) @ A.T
    else:
        y = x2.float() @ dequantize(A, B, w).T
    return (y.float() + b.float()).reshape(*shape[:-1], -1)
