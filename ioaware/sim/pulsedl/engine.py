"""The integer engine in numpy: what the accelerator computes, from the front end's integers to int32 outputs.

It takes an `IntModel` (quant.py) and is written apart from `QuantizedPulseNet` on purpose, so that agreement means
something: convolutions as explicit windows (im2col) and int64 matrix products instead of float64 `conv1d`, padding
with the zero point instead of zero after subtracting it, and the fixed-point steps in arithmetic-shift form:

* SaturatingRoundingDoublingHighMul(a, M0) = floor((a * M0 + 2^30) / 2^31): the C reference's nudge-and-truncate
  rounds halves up (towards +inf) for either sign, which is this floor. Saturation only hits a = M0 = -2^31,
  impossible with M0 > 0.
* RoundingDivideByPOT(x, e) = sign(x) * ((|x| + 2^(e-1)) >> e): round to nearest, halves away from zero.

Every accumulator is checked to fit int32, and the largest magnitude seen is reported (`EngineStats`), so the claim
"int32 accumulators suffice" is measured on the data, not assumed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .pulses import PulseConfig
from .quant import INT32_MAX, INT32_MIN, IntModel


def srdhm(a: np.ndarray, m0: int) -> np.ndarray:
    return (a.astype(np.int64) * np.int64(m0) + np.int64(1 << 30)) >> np.int64(31)


def rounding_divide_by_pot(x: np.ndarray, e: int) -> np.ndarray:
    if e == 0:
        return x
    return np.sign(x) * ((np.abs(x) + np.int64(1 << (e - 1))) >> np.int64(e))


def multiply_by_quantized_multiplier(acc: np.ndarray, m0: int, shift: int) -> np.ndarray:
    x = acc.astype(np.int64) << np.int64(max(shift, 0))
    if x.size and (x.min() < INT32_MIN or x.max() > INT32_MAX):
        raise OverflowError("left-shifted accumulator leaves int32")
    return rounding_divide_by_pot(srdhm(x, m0), max(-shift, 0))


@dataclass
class EngineStats:
    max_abs_acc: list[int] = field(default_factory=list)  # per layer, over the batch

    @property
    def acc_bits(self) -> int:
        """Bits (with sign) the widest accumulator needed."""
        return int(max(self.max_abs_acc)).bit_length() + 1


def run(im: IntModel, x: np.ndarray, stats: EngineStats | None = None) -> np.ndarray:
    """x: (n, W) front-end integers (pulses.front_end) -> (n, outputs) int64 holding the output layer's int32
    accumulators."""
    x = np.asarray(x)
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.integer):
        raise ValueError(f"input must be a 2-D integer array (pulses, samples), got {x.dtype} {x.shape}")
    if np.abs(x).max(initial=0) >= 2 ** (im.adc_bits + 1):
        raise ValueError(f"input outside the {im.adc_bits}-bit ADC range (after the front end's one-bit shift)")
    h = x.astype(np.int64)[:, None, :]  # (n, C=1, L)
    for i, layer in enumerate(im.layers):
        w = layer.w.astype(np.int64)
        if layer.kind == "conv":
            k = w.shape[2]
            hp = np.pad(h, ((0, 0), (0, 0), (layer.pad, layer.pad)), constant_values=layer.z_in)
            win = sliding_window_view(hp, k, axis=2) - layer.z_in  # (n, C_in, L, K)
            acc = np.einsum("ncLk,ock->noL", win, w, optimize=True) + layer.b.astype(np.int64)[None, :, None]
        else:
            x = h.reshape(h.shape[0], -1) - layer.z_in  # channel-major flatten, as torch's
            acc = x @ w.T + layer.b.astype(np.int64)[None, :]
        lo, hi = int(acc.min()), int(acc.max())
        if lo < INT32_MIN or hi > INT32_MAX:
            raise OverflowError(f"layer {i}: accumulator {lo}..{hi} leaves int32")
        if stats is not None:
            stats.max_abs_acc.append(max(-lo, hi))
        if layer.m0 is None:
            return acc
        h = np.clip(multiply_by_quantized_multiplier(acc, layer.m0, layer.shift) + layer.z_out, layer.qmin,
                    layer.qmax)
        if layer.pool > 1:
            n = h.shape[-1] // layer.pool
            h = h[..., : n * layer.pool].reshape(*h.shape[:-1], n, layer.pool).max(axis=-1)
    raise ValueError("the model's last layer must be an output layer without requantisation")


def infer(im: IntModel, codes: np.ndarray, cfg: PulseConfig, stats: EngineStats | None = None):
    """ADC codes -> (t0 in samples, A): front end, integer engine, then the one division (model.decode)."""
    x, gain = im.front_end(codes, cfg)
    return im.decode(run(im, x, stats), cfg, gain)
