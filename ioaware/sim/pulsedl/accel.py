"""A cycle and traffic model of the SoC's accelerator: arithmetic unit -> processing element -> network.

The paper's abstract names the three levels and nothing more (hwmodel.md § PulseDL-II); this is the plainest
machine with those levels that runs the integer engine's layers, with every choice a named parameter:

* **AU** (arithmetic unit): one int8 x int8 multiplier into the PE's adder tree: one MAC per cycle.
* **PE** (processing element): `au_per_pe` AUs reduce one chunk of a dot product per cycle into an int32 accumulator.
  A PE makes one output value at a time: ceil(C_in * K / au_per_pe) cycles per value. Requantisation, ReLU and
  max pooling happen in the PE's output stage, pipelined behind the next value (`tail_cycles` once per layer: the
  adder tree's depth plus the requantiser's stages).
* **NN** level: `n_pe` PEs compute `n_pe` output channels of the same position at once; the input window is
  broadcast to all of them, so one activation-buffer read feeds every PE. Loop order is weight-stationary: for each
  group of output channels the PEs load their weights once, then sweep all positions. With `line_buffer` each input
  value is read from the activation buffer once per channel group (a K-tap shift register slides the window);
  without it every window is read whole (im2col). Layers run one after another out of two ping-pong buffers.

Traffic per inference, in bytes: weight SRAM -> PEs (int8 weights + int32 biases), activation buffer reads and writes
(int8; the first layer reads the ADC samples, 2 bytes each), and what crosses the SoC bus: samples in, two int32
outputs out. The weights are written once at configuration by the RISC CPU and are not counted per inference.

`schedule` gives the counts in closed form; `replay` walks the same loop nest cycle by cycle and counts again (the
tests hold one to the other). Not modelled: bus contention with the CPU, overlap of successive pulses across
layers, clock-domain crossings, energy. The defaults (8 PEs x 8 AUs, 100 MHz, 4 channels) are assumptions: the
abstract gives none of them (4 channels is the predecessor PulseDL's count, NST 2020).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from .quant import IntModel

SAMPLE_BYTES = 2  # a 12-bit ADC sample travels in a 16-bit word
OUT_BYTES = 4  # int32 outputs


@dataclass(frozen=True)
class AccelConfig:
    n_pe: int = 8
    au_per_pe: int = 8
    clock_mhz: float = 100.0
    channels: int = 4  # detector channels sharing the accelerator, time-multiplexed
    tail_cycles: int = 4  # per layer: adder tree (log2 au_per_pe = 3) + 1 requantiser stage, drained once
    line_buffer: bool = True

    def __post_init__(self):
        if self.n_pe < 1 or self.au_per_pe < 1 or self.clock_mhz <= 0 or self.channels < 1:
            raise ValueError("n_pe, au_per_pe, channels must be >= 1 and clock_mhz > 0")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class LayerShape:
    name: str
    kind: str  # "conv" or "dense"
    c_in: int
    c_out: int
    k: int  # kernel taps (1 for dense)
    l_in: int
    l_out: int  # positions computed (before pooling)
    pool: int
    in_bytes: int  # bytes per input value (ADC samples: 2)
    out_bytes: int = 1  # bytes per output value (int8; the last layer's int32: 4)

    @property
    def macs(self) -> int:
        return self.l_out * self.c_out * self.c_in * self.k

    @property
    def weights(self) -> int:
        return self.c_out * self.c_in * self.k


def layer_shapes(im: IntModel, n_samples: int) -> list[LayerShape]:
    shapes, length, first = [], n_samples, True
    for i, layer in enumerate(im.layers):
        if layer.kind == "conv":
            c_out, c_in, k = layer.w.shape
            l_out = length + 2 * layer.pad - k + 1
            shapes.append(LayerShape(f"conv{i + 1}", "conv", c_in, c_out, k, length, l_out, layer.pool,
                                     SAMPLE_BYTES if first else 1))
            length = l_out // layer.pool
        else:
            out, inp = layer.w.shape
            last = i == len(im.layers) - 1
            shapes.append(LayerShape(f"fc{i + 1}", "dense", inp, out, 1, 1, 1, 1, 1, OUT_BYTES if last else 1))
        first = False
    return shapes


def _layer_counts(s: LayerShape, hw: AccelConfig) -> dict:
    groups = math.ceil(s.c_out / hw.n_pe)
    chunks = math.ceil(s.c_in * s.k / hw.au_per_pe)
    cycles = s.l_out * groups * chunks + hw.tail_cycles
    if s.kind == "dense":
        reads = groups * s.c_in  # the input vector, broadcast, once per channel group
    elif hw.line_buffer:
        reads = groups * s.c_in * s.l_in  # every input value once per group (padding is generated, not read)
    else:
        reads = groups * s.l_out * s.c_in * s.k - groups * s.c_in * _pad_taps(s)
    return {"layer": s.name, "macs": s.macs, "cycles": cycles,
            "utilisation": s.macs / (cycles * hw.n_pe * hw.au_per_pe),
            "weight_bytes": s.weights + 4 * s.c_out,  # each weight and bias leaves the SRAM once (weight-stationary)
            "act_read_bytes": reads * s.in_bytes,
            "act_write_bytes": s.c_out * (s.l_out // s.pool) * s.out_bytes}


def _pad_taps(s: LayerShape) -> int:
    """Window taps that fall on padding over all positions (im2col reads skip them)."""
    pad = (s.l_out - s.l_in + s.k - 1) // 2
    return sum(max(0, pad - p) + max(0, p + s.k - pad - s.l_in) for p in range(s.l_out))


def schedule(im: IntModel, n_samples: int, hw: AccelConfig = AccelConfig()) -> dict:
    """Per-layer and total cycles, MACs and bytes for one inference; throughput at the clock."""
    shapes = layer_shapes(im, n_samples)
    layers = [_layer_counts(s, hw) for s in shapes]
    tot = {k: sum(x[k] for x in layers) for k in ("macs", "cycles", "weight_bytes", "act_read_bytes",
                                                  "act_write_bytes")}
    tot["outputs"] = im.layers[-1].w.shape[0]
    tot["bus_bytes"] = n_samples * SAMPLE_BYTES + tot["outputs"] * OUT_BYTES
    tot["utilisation"] = tot["macs"] / (tot["cycles"] * hw.n_pe * hw.au_per_pe)
    per_s = hw.clock_mhz * 1e6 / tot["cycles"]
    tot["latency_us"] = tot["cycles"] / hw.clock_mhz
    tot["inferences_per_s"] = per_s
    tot["events_per_s_per_channel"] = per_s / hw.channels
    tot["gops"] = 2 * tot["macs"] * per_s / 1e9
    tot["gops_per_channel"] = tot["gops"] / hw.channels
    tot["peak_gops"] = 2 * hw.n_pe * hw.au_per_pe * hw.clock_mhz / 1e3
    return {"config": hw.to_dict(), "layers": layers, "total": tot}


def replay(im: IntModel, n_samples: int, hw: AccelConfig = AccelConfig()) -> dict:
    """Walk the loop nest cycle by cycle, counting MACs, cycles and activation reads as the hardware issues them."""
    out = []
    for s in layer_shapes(im, n_samples):
        macs = cycles = reads = 0
        taps = s.c_in * s.k
        pad = (s.l_out - s.l_in + s.k - 1) // 2
        for g0 in range(0, s.c_out, hw.n_pe):  # weight-stationary: a group of output channels at a time
            active = min(hw.n_pe, s.c_out - g0)
            seen = set()  # input values already in the line buffer for this group
            for p in range(s.l_out):
                for c0 in range(0, taps, hw.au_per_pe):
                    cycles += 1
                    lanes = range(c0, min(c0 + hw.au_per_pe, taps))
                    macs += active * len(lanes)
                    for t in lanes:  # tap t = (input channel, kernel offset); one broadcast read feeds every PE
                        ci, j = divmod(t, s.k)
                        x = p + j - pad if s.kind == "conv" else ci
                        if s.kind == "conv" and not 0 <= x < s.l_in:
                            continue  # padding: generated, not read
                        key = (ci, x)
                        if not hw.line_buffer or key not in seen:
                            reads += 1
                            seen.add(key)
        out.append({"layer": s.name, "macs": macs, "cycles": cycles + hw.tail_cycles,
                    "act_read_bytes": reads * s.in_bytes})
    return {"layers": out, "cycles": sum(x["cycles"] for x in out), "macs": sum(x["macs"] for x in out)}
