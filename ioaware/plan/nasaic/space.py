"""The joint search space: two networks (one per task) and a heterogeneous ASIC of two sub-accelerators.

Network: four convolution layers, each (filters, kernel) from FILTERS x KERNELS; layers 2 and 4 halve the
resolution; then global pooling and a classifier. Its hardware cost is taken at CIFAR scale (3 x 32 x 32 input, the
paper's image workloads); its accuracy proxy trains the same layers on 8 x 8 digits (accuracy.py).
Hardware: per sub-accelerator a template (dla / shi / rs), PEs and NoC bytes/cycle, under a global budget of
MAX_PES and MAX_BW (NASAIC's hardware space comment reads "dataflow 1, dataflow 2, PE for d1, BW for d1"; the
budget values are assumed). Network i runs on sub-accelerator i; both run at once, so the ASIC's latency is the
slower one's, energy and area add up.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from .costmodel import TEMPLATES, Designs, Layers, evaluate

FILTERS = (8, 16, 32, 64)
KERNELS = (1, 3, 5)
N_LAYERS = 4
INPUT = (3, 32, 32)  # CIFAR-scale input for the hardware cost
PES = (64, 128, 256, 512, 1024, 2048)
BWS = (4, 8, 16, 32, 64)  # NoC bytes per cycle (GB/s at 1 GHz)
MAX_PES = 4096  # global PE budget of the ASIC (assumed; MAESTRO-scale)
MAX_BW = 64  # global NoC budget, bytes per cycle (assumed)
TASK_CLASSES = (10, 4)  # the two tasks of accuracy.py: digits, rotation


@dataclass(frozen=True)
class Specs:
    latency_s: float
    energy_j: float
    area_mm2: float

    def ratios(self, lat, en, area):
        return lat / self.latency_s, en / self.energy_j, area / self.area_mm2

    def met(self, lat, en, area) -> bool:
        return lat <= self.latency_s and en <= self.energy_j and area <= self.area_mm2


def layers(arch, classes: int) -> Layers:
    """The layer table (K, C, Y, X, R, S, stride) of one network at INPUT resolution, classifier included."""
    c, h, w = INPUT
    rows = []
    for i, (f, k) in enumerate(arch):
        s = 2 if i in (1, 3) else 1
        h, w = (h + s - 1) // s, (w + s - 1) // s
        rows.append((f, c, h, w, k, k, s))
        c = f
    rows.append((classes, c, 1, 1, 1, 1, 1))
    return Layers.of(rows)


def all_sub_designs() -> Designs:
    combos = list(itertools.product(range(len(TEMPLATES)), PES, BWS))
    t, p, b = (np.asarray(x) for x in zip(*combos))
    return Designs(t, p.astype(np.float64), b.astype(np.float64))


def network_costs(arch, classes: int, designs: Designs) -> tuple[np.ndarray, np.ndarray]:
    """(latency s, energy J) of one network on each design: sums over its layers."""
    r = evaluate(layers(arch, classes), designs)
    return r["latency_s"].sum(0), r["energy_j"].sum(0)


def asic_costs(archs, hw) -> tuple[float, float, float]:
    """hw: ((template, pes, bw), (template, pes, bw)); returns (latency s, energy J, area mm^2) of the ASIC."""
    lat, en, area = 0.0, 0.0, 0.0
    for arch, classes, (t, p, b) in zip(archs, TASK_CLASSES, hw):
        d = Designs.of([t], [p], [b])
        r = evaluate(layers(arch, classes), d)
        lat = max(lat, float(r["latency_s"].sum()))
        en += float(r["energy_j"].sum())
        area += float(r["area_mm2"][0])
    return lat, en, area


def within_budget(hw) -> bool:
    return sum(p for _, p, _ in hw) <= MAX_PES and sum(b for _, _, b in hw) <= MAX_BW


def best_hardware(archs, specs: Specs, objective: str = "worst_ratio"):
    """Exhaustive search of the hardware for fixed networks (the 'then ASIC' step; 8100 pairs, vectorised).
    objective: worst_ratio = the design closest to meeting every spec (max of the three ratios, smallest),
    or a spec-meeting design with the least sum of ratios when one exists. Returns (hw, (lat, en, area))."""
    d = all_sub_designs()
    cost = [network_costs(a, c, d) for a, c in zip(archs, TASK_CLASSES)]
    area = evaluate(layers(archs[0], TASK_CLASSES[0]), d)["area_mm2"]
    n = len(d.pes)
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    i, j = i.ravel(), j.ravel()
    ok = (d.pes[i] + d.pes[j] <= MAX_PES) & (d.bw[i] + d.bw[j] <= MAX_BW)
    i, j = i[ok], j[ok]
    lat = np.maximum(cost[0][0][i], cost[1][0][j])
    en = cost[0][1][i] + cost[1][1][j]
    ar = area[i] + area[j]
    rl, re, ra = lat / specs.latency_s, en / specs.energy_j, ar / specs.area_mm2
    worst = np.maximum(np.maximum(rl, re), ra)
    key = np.where(worst <= 1, rl + re + ra, 10 + worst) if objective == "worst_ratio" else rl + re + ra
    k = int(np.argmin(key))
    hw = tuple((TEMPLATES[int(d.template[x])], int(d.pes[x]), int(d.bw[x])) for x in (i[k], j[k]))
    return hw, (float(lat[k]), float(en[k]), float(ar[k]))
