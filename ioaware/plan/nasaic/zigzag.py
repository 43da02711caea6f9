"""Compare costmodel.py with ZigZag's numbers for ResNet-18 on its tpu_like accelerator (data from zigzag_check.py).

tpu_like is a 32 x 32 array with K and C across it: our `dla` dataflow with the array's shape fixed. MACs and the
ideal cycles (spatial under-use included, no stalls) must agree exactly; the latencies differ by what each model
charges for memory (ZigZag: its port and buffer model; ours: one NoC and one DRAM bandwidth), reported, not tuned.
"""

from __future__ import annotations

import numpy as np

from .costmodel import Designs, Layers, evaluate

ARRAY = (32, 32)  # tpu_like's D1 (K) x D2 (C)
NOC_BYTES_PER_CYCLE = 64.0  # for the latency comparison: tpu_like's activation SRAM port is 512 bits wide (64 B)


def _stride(relations) -> int:
    for r in relations:
        r = r.replace(" ", "").lower()
        if r.startswith("iy=") or r.startswith("ix="):
            coef = r.split("=")[1].split("*")[0]
            try:
                return int(float(coef))
            except ValueError:
                return 1
    return 1


def compare(data: dict) -> list[dict]:
    rows = []
    for lay in data["layers"]:
        d = lay["dims"]
        K, C = d.get("K", 1), d.get("C", 1)
        oy, ox, fy, fx = d.get("OY", 1), d.get("OX", 1), d.get("FY", 1), d.get("FX", 1)
        L = Layers.of([(K, C, oy, ox, fy, fx, _stride(lay.get("relations", [])))])
        des = Designs.of(["dla"], [ARRAY[0] * ARRAY[1]], [NOC_BYTES_PER_CYCLE])
        des.c_width = np.asarray([float(ARRAY[1])])
        r = evaluate(L, des)
        ours_lat = float(r["latency_s"][0, 0]) * 1e9  # cycles at 1 GHz
        rows.append({"name": lay["name"], "macs": int(r["macs"][0, 0]), "zigzag_macs": lay["macs"],
                     "cycles": float(r["compute_cycles"][0, 0]),
                     "zigzag_ideal_temporal_cycle": lay["ideal_temporal_cycle"],
                     "latency_cycles": ours_lat, "zigzag_latency_cycles": lay["latency_cycles"],
                     "latency_error": ours_lat / lay["latency_cycles"] - 1})
    return rows
