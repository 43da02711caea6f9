"""Integer-only inference, TensorFlow Lite's scheme (Jacob et al., CVPR 2018; gemmlowp's fixed-point arithmetic).

Why this scheme: the paper's quantisation is "compatible with deep learning frameworks (e.g., TensorFlow) within a
selected subset of layer types" and uses one scale per layer (hwmodel.md reads it as integer-only with one scale per
layer; the exact scheme is unverified). TFLite's full-integer scheme is the framework scheme that runs with integers
alone, which an FPGA/ASIC engine needs:

* real = S * (q - Z). Weights: int8, symmetric, one scale per layer (S_w = max|w| / 127, Z = 0, q in [-127, 127]).
  Activations: int8, one scale per layer, zero point at the bottom of the range after a ReLU (Z = -128).
* The input is the ADC code itself, less the pedestal (and shifted up a bit for small pulses: `pulses.front_end`):
  S_in = one LSB, Z_in = 0. Requantising a 12-bit code to 8 bits would add rounding noise of FS/256/sqrt(12), 0.3 to
  0.9 of the analog noise at 47.4 dB over our amplitudes.
* Bias: int32 on the accumulator's grid, S = S_in * S_w. Accumulators: int32 (the engine checks none overflows).
* Requantisation: M = S_in * S_w / S_out = M0 * 2^(shift - 31) with M0 an int32 in [2^30, 2^31);
  q_out = Z_out + RoundingDivideByPOT(SaturatingRoundingDoublingHighMul(acc * 2^max(shift, 0), M0), max(-shift, 0)),
  clamped to the activation range (the clamp at Z_out is the fused ReLU). No float anywhere at inference.
* Max pooling commutes with the monotone int8 mapping, so it runs on the codes. The last layer is not requantised:
  its int32 accumulator, times S_in * S_w, is the output (see model.py for why).

`QuantizedPulseNet` runs this arithmetic with PyTorch tensors (convolutions as float64 on integer values, exact
because every partial sum stays below 2^53); `engine.py` runs it again in numpy, formulated independently. The two
must agree on every output, bit for bit. With bits < 8 the same grids shrink to b bits (still int32 accumulators).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .model import PulseNet, decode
from .pulses import PulseConfig, front_end

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


def quantize_multiplier(m: float) -> tuple[int, int]:
    """M > 0 as (M0, shift) with M = M0 * 2^(shift - 31), M0 in [2^30, 2^31) (TFLite's QuantizeMultiplier)."""
    if not m > 0 or not math.isfinite(m):
        raise ValueError(f"requantisation multiplier must be positive and finite, got {m}")
    q, e = math.frexp(m)  # m = q * 2^e, q in [0.5, 1)
    m0 = int(math.floor(q * 2**31 + 0.5))
    if m0 == 2**31:
        m0, e = m0 // 2, e + 1
    if not -31 <= e <= 30:
        raise ValueError(f"requantisation multiplier {m:.3g} is outside what a 32-bit shift can express")
    return m0, e


@dataclass
class IntLayer:
    kind: str  # "conv" or "dense"
    w: np.ndarray  # int8 (conv: (C_out, C_in, K); dense: (out, in))
    b: np.ndarray  # int32 (C_out,)
    z_in: int
    s_in: float
    s_w: float
    pad: int = 0
    pool: int = 1  # max-pool after the activation
    # requantisation (None on the output layer, whose int32 accumulator is the output)
    m0: int | None = None
    shift: int | None = None
    z_out: int | None = None
    qmin: int | None = None
    qmax: int | None = None
    s_out: float | None = None


@dataclass
class IntModel:
    layers: list[IntLayer]
    bits: int
    adc_bits: int
    out_scale: float  # real output = out_scale * int32 accumulator
    meta: dict = field(default_factory=dict)

    range_switch: bool = True

    def decode(self, acc: np.ndarray, cfg: PulseConfig, gain: np.ndarray):
        return decode(np.asarray(acc, dtype=np.float64) * self.out_scale, cfg, gain)

    def front_end(self, codes: np.ndarray, cfg: PulseConfig):
        return front_end(codes, cfg, self.range_switch)

    @property
    def weight_bytes(self) -> int:
        return int(sum(layer.w.size + 4 * layer.b.size for layer in self.layers))


@torch.no_grad()
def convert(model: PulseNet, cfg: PulseConfig) -> IntModel:
    """The QAT model's grids as integers: same weight codes, bias codes and activation scales it trained with."""
    if not model.qat:
        raise ValueError("convert needs a calibrated model (PulseNet.calibrate, then quantisation-aware training)")
    bits = model.bits
    lo = -(2 ** (bits - 1))
    # cfg.adc_bits may differ from training: the first layer's bias and multiplier absorb the new LSB (bits sweep)
    s_in, z_in = cfg.lsb, 0  # the front end has removed the pedestal
    layers = []
    mods = [(c, "conv", p) for c, p in zip(model.convs, model.net.pools)] + [(model.fc1, "dense", 1),
                                                                              (model.fc2, "dense", 1)]
    for i, (mod, kind, pool) in enumerate(mods):
        wq, s_w = model.quantized_weight(mod.weight)
        w = torch.round(wq / s_w).numpy().astype(np.int8)
        b = torch.round(mod.bias / (s_in * s_w)).numpy().astype(np.int64)
        if np.abs(b).max(initial=0) > INT32_MAX:
            raise ValueError(f"layer {i}: bias does not fit int32 at this scale")
        layer = IntLayer(kind, w, b.astype(np.int32), int(z_in), s_in, s_w,
                         pad=mod.padding[0] if kind == "conv" else 0, pool=pool)
        if i < len(mods) - 1:
            s_out = float(model.act_scale[i])
            layer.m0, layer.shift = quantize_multiplier(s_in * s_w / s_out)
            layer.z_out, layer.qmin, layer.qmax, layer.s_out = lo, lo, 2 ** (bits - 1) - 1, s_out
            s_in, z_in = s_out, lo
        layers.append(layer)
    return IntModel(layers, bits, cfg.adc_bits, layers[-1].s_in * layers[-1].s_w, range_switch=model.net.range_switch,
                    meta={"scheme": "TFLite full-integer (per-layer scales, int32 accumulators, gemmlowp requant)"})


def requantize_torch(acc: torch.Tensor, m0: int, shift: int) -> torch.Tensor:
    """gemmlowp's MultiplyByQuantizedMultiplier on int64 tensors, written as the C reference is."""
    left, right = max(shift, 0), max(-shift, 0)
    x = acc * (1 << left)
    if bool(((x < INT32_MIN) | (x > INT32_MAX)).any()):
        raise OverflowError("left-shifted accumulator leaves int32")
    ab = x * m0
    nudge = torch.where(ab >= 0, torch.full_like(ab, 1 << 30), torch.full_like(ab, 1 - (1 << 30)))
    hi = torch.div(ab + nudge, 1 << 31, rounding_mode="trunc")  # SaturatingRoundingDoublingHighMul (m0 > 0: no sat)
    if right == 0:
        return hi
    mask = (1 << right) - 1
    remainder = hi & mask
    threshold = (mask >> 1) + (hi < 0).long()
    return (hi >> right) + (remainder > threshold).long()  # RoundingDivideByPOT


class QuantizedPulseNet(nn.Module):
    """The quantised model in PyTorch: integer tensors in, the output layer's int32 accumulators out."""

    def __init__(self, im: IntModel):
        super().__init__()
        self.im = im
        for i, layer in enumerate(im.layers):
            self.register_buffer(f"w{i}", torch.from_numpy(layer.w.astype(np.int64)))
            self.register_buffer(f"b{i}", torch.from_numpy(layer.b.astype(np.int64)))

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: the front end's integers (pulses.front_end), (B, W)."""
        h = x.long()[:, None, :]  # (B, 1, W)
        for i, layer in enumerate(self.im.layers):
            w, b = getattr(self, f"w{i}").double(), getattr(self, f"b{i}")
            x = (h - layer.z_in).double()
            if layer.kind == "conv":
                acc = F.conv1d(x, w, padding=layer.pad).round().long() + b[None, :, None]
            else:
                acc = (x.flatten(1) @ w.T).round().long() + b[None, :]
            if bool(((acc < INT32_MIN) | (acc > INT32_MAX)).any()):
                raise OverflowError(f"layer {i}: accumulator leaves int32")
            if layer.m0 is None:
                return acc
            h = (requantize_torch(acc, layer.m0, layer.shift) + layer.z_out).clamp(layer.qmin, layer.qmax)
            if layer.pool > 1:
                n = h.shape[-1] // layer.pool
                h = h[..., : n * layer.pool].unflatten(-1, (n, layer.pool)).amax(-1)
        raise AssertionError("the last layer must be the unrequantised output layer")

    def predict(self, codes: np.ndarray, cfg: PulseConfig):
        x, gain = self.im.front_end(codes, cfg)
        return self.im.decode(self(torch.from_numpy(x)).numpy(), cfg, gain)
