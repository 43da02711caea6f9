"""An analytic, vectorised cost model of three dataflow accelerator templates (the MAESTRO family NASAIC builds on):

    dla  NVDLA-style weight-stationary: output and input channels (K x C) across the PEs, weights held in place
    shi  ShiDianNao-style output-stationary: output pixels (Y' x X') across the PEs, partial sums held in place
    rs   Eyeriss row-stationary: filter rows x output rows (R x Y') per PE set, sets replicated over K

A design point is (template, number of PEs, NoC bandwidth in bytes/cycle); L1 per PE and L2 per sub-accelerator are
template constants. Per convolution layer (K, C, Y, X, R, S, stride; int8, one byte per element) the model counts
MACs, the cycles the PE array needs (with the spatial under-use of ceil() tiling), the bytes each operand moves from
L2 to the PEs over the NoC (the reuse each dataflow gets), DRAM bytes, and then

    latency = max(compute, NoC bytes / BW, DRAM bytes / DRAM_BW) cycles / CLOCK_HZ
    energy  = MACs*E_MAC + L1 accesses*E_L1 + NoC bytes*E_NOC_L2 + DRAM bytes*E_DRAM
    area    = PEs*(A_MAC + L1 bytes*A_SRAM) + L2 bytes*A_SRAM + BW*A_NOC_PER_BYTE

Every array operation broadcasts (layers x designs), so one call costs a few numpy passes for all points.
The counts are exact for the stated dataflows (tests/plan/test_nasaic.py derives a few by hand); the energy and area
constants are the named ones below, from the sources given, and scale absolute numbers only: NASAIC's claims are
ratios between two designs under the same model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TEMPLATES = ("dla", "shi", "rs")

CLOCK_HZ = 1e9  # MAESTRO's default clock (1 GHz); latency in cycles converts with it
DRAM_BYTES_PER_CYCLE = 16.0  # off-chip bandwidth shared by the ASIC: 16 GB/s at 1 GHz (an LPDDR4 x32 channel, assumed)
# energy per event, pJ. E_MAC: 8-bit multiply 0.2 pJ + add 0.03 pJ at 45 nm (Horowitz, ISSCC 2014). The memory
# levels use Eyeriss' normalised costs relative to one MAC (Chen et al., ISCA 2016, Fig. 4): RF 1x, inter-PE NoC
# 2x, global buffer 6x, DRAM 200x; the NoC+buffer step counts 6x here (a global-buffer read carried to the PE).
E_MAC = 0.23
E_L1 = 1.0 * E_MAC
E_NOC_L2 = 6.0 * E_MAC
E_DRAM = 200.0 * E_MAC
L1_ACCESSES_PER_MAC = 3.0  # read weight, read input, read-modify-write partial sum in the PE's register file
# area, mm^2 at 45 nm. A_MAC: 8-bit multiplier 282 um^2 + adder 36 um^2 (Horowitz, ISSCC 2014). A_SRAM: 6T cell
# about 0.35 um^2 at 45 nm, times about 1.8 for decoders, sense amplifiers and wiring (a CACTI-like overhead, assumed).
A_MAC = 318e-6
A_SRAM = 8 * 0.35e-6 * 1.8
A_NOC_PER_BYTE = 0.02  # one byte/cycle of NoC (wires, buffers, crossbar port) per sub-accelerator (assumed)
# per-PE scratchpad and per-sub-accelerator buffer: Eyeriss' PE holds a filter row, an input row and a psum row
# (224 + 12 + 24 16-bit words, ~0.5 KB); NVDLA- and ShiDianNao-style PEs hold a few operands; L2 as Eyeriss' 108 KB
# global buffer rounded to 128 KB for all three so they differ by dataflow, not by memory
L1_BYTES = {"dla": 64, "shi": 64, "rs": 512}
L2_BYTES = 128 * 1024
N_CONSTANTS = 13  # the named constants above that are assumed or taken from a source (counted for the README)


@dataclass
class Layers:
    """Convolution (or, with R=S=Y=X=1, fully connected) layers as arrays; Y, X are the output sizes."""

    K: np.ndarray
    C: np.ndarray
    Y: np.ndarray
    X: np.ndarray
    R: np.ndarray
    S: np.ndarray
    stride: np.ndarray

    @classmethod
    def of(cls, rows) -> Layers:
        a = np.asarray(rows, dtype=np.float64).reshape(-1, 7)
        return cls(*(a[:, i] for i in range(7)))

    def __len__(self) -> int:
        return len(self.K)


@dataclass
class Designs:
    template: np.ndarray  # int index into TEMPLATES
    pes: np.ndarray
    bw: np.ndarray  # NoC bytes per cycle
    c_width: np.ndarray | None = None  # dla only: a fixed array of c_width x (pes / c_width) instead of the best fit

    @classmethod
    def of(cls, template, pes, bw) -> Designs:
        t = np.asarray([TEMPLATES.index(x) if isinstance(x, str) else int(x) for x in np.atleast_1d(template)])
        return cls(t, np.atleast_1d(np.asarray(pes, dtype=np.float64)), np.atleast_1d(np.asarray(bw, np.float64)))


def _cdiv(a, b):
    return np.ceil(a / b)


def evaluate(layers: Layers, designs: Designs) -> dict[str, np.ndarray]:
    """Per (layer, design): macs, compute/noc/dram cycles, latency s, energy J, and per design area mm^2."""
    K, C, Y, X, R, S, st = (v[:, None] for v in (layers.K, layers.C, layers.Y, layers.X, layers.R, layers.S,
                                                layers.stride))
    P, bw, tpl = designs.pes[None, :], designs.bw[None, :], designs.template[None, :]
    Yin, Xin = (Y - 1) * st + R, (X - 1) * st + S
    macs = K * C * Y * X * R * S
    w_bytes, i_bytes, o_bytes = K * C * R * S, C * Yin * Xin, K * Y * X

    # dla: K x C spatial, weights stationary. Inputs stream once per K tile (broadcast over the tile's K), partial
    # sums reduce across C in the array and leave once per C tile.
    if designs.c_width is None:  # the array takes the layer's shape: all of C across, K fills the rest
        cp = np.minimum(C, P)
        kp = np.minimum(K, np.floor(P / cp))
    else:  # a fixed K x C array (a TPU-like grid): unused columns stay idle
        cw = designs.c_width[None, :]
        cp = np.minimum(C, cw)
        kp = np.minimum(K, np.floor(P / cw))
    dla_cycles = _cdiv(K, kp) * _cdiv(C, cp) * Y * X * R * S
    dla_noc = w_bytes + i_bytes * _cdiv(K, kp) + o_bytes * (2 * _cdiv(C, cp) - 1)
    # shi: Y' x X' spatial, outputs stationary (one output channel at a time). Weights are broadcast once per output
    # tile; the input tile with its halo enters once per output tile and output channel (neighbours pass it on
    # inside the array, but a PE keeps no input across output channels).
    yp = np.minimum(Y, np.floor(np.sqrt(P)))
    xp = np.minimum(X, np.floor(P / yp))
    tiles = _cdiv(Y, yp) * _cdiv(X, xp)
    shi_cycles = tiles * K * C * R * S
    halo = ((yp - 1) * st + R) * ((xp - 1) * st + S)
    shi_noc = w_bytes * tiles + C * halo * tiles * K + o_bytes
    # rs: a PE set is R x Y' (a filter row meets an input row, psums climb the column); sets replicate over K.
    # Filter rows enter once per Y' tile, input rows once per K tile, outputs leave once.
    ry = np.minimum(Y, np.maximum(np.floor(P / R), 1))
    kr = np.minimum(K, np.maximum(np.floor(P / (R * ry)), 1))
    rs_cycles = _cdiv(Y, ry) * _cdiv(K, kr) * C * X * S
    rs_noc = w_bytes * _cdiv(Y, ry) + i_bytes * _cdiv(K, kr) + o_bytes
    rs_cycles = np.where(R > P, np.inf, rs_cycles)  # a filter column must fit in the array

    cycles = np.select([tpl == 0, tpl == 1, tpl == 2], [dla_cycles, shi_cycles, rs_cycles])
    noc = np.select([tpl == 0, tpl == 1, tpl == 2], [dla_noc, shi_noc, rs_noc])
    # DRAM: each operand once when the layer's working set fits L2; else the smallest operand streams again for
    # every L2-sized block of the others
    total = w_bytes + i_bytes + o_bytes
    small = np.minimum(np.minimum(w_bytes, i_bytes), o_bytes)
    refetch = np.maximum(_cdiv(total - small, L2_BYTES) - 1, 0)
    dram = total + small * refetch
    lat_cycles = np.maximum(np.maximum(cycles, noc / bw), dram / DRAM_BYTES_PER_CYCLE)
    energy_pj = macs * (E_MAC + L1_ACCESSES_PER_MAC * E_L1) + noc * E_NOC_L2 + dram * E_DRAM
    l1 = np.asarray([L1_BYTES[t] for t in TEMPLATES])[designs.template]
    area = designs.pes * (A_MAC + l1 * A_SRAM) + L2_BYTES * A_SRAM + designs.bw * A_NOC_PER_BYTE
    return {"macs": np.broadcast_to(macs, cycles.shape), "compute_cycles": cycles, "noc_bytes": noc,
            "dram_bytes": np.broadcast_to(dram, cycles.shape), "latency_s": lat_cycles / CLOCK_HZ,
            "energy_j": energy_pj * 1e-12, "area_mm2": area}
