"""Run ZigZag (zigzag-dse, KU Leuven) on ResNet-18's layers for the cross-check of costmodel.py; writes JSON data.

Run it in a venv that has zigzag-dse (the library and its tests only read data/zigzag_resnet18_tpu_like.json):

    /tmp/tvenv/bin/pip install zigzag-dse six
    /tmp/tvenv/bin/python ioaware/plan/nasaic/zigzag_check.py        # about 3 minutes on 2 cores

ZigZag's own example accelerator `tpu_like` (a 32 x 32 array, K x C spatial: the NVDLA-style `dla` dataflow) and
its mapping file, on its bundled resnet18.onnx, searching temporal mappings for latency (LOMA). Per layer we keep the
loop sizes, MACs, ZigZag's ideal cycles (MACs over the spatially used MACs) and its latency with memory stalls.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent / "data" / "zigzag_resnet18_tpu_like.json"


def main() -> int:
    import pickle

    import zigzag
    from zigzag.api import get_hardware_performance_zigzag

    base = os.path.join(os.path.dirname(zigzag.__file__), "inputs")
    energy, latency, cmes = get_hardware_performance_zigzag(
        workload=f"{base}/workload/resnet18.onnx", accelerator=f"{base}/hardware/tpu_like.yaml",
        mapping=f"{base}/mapping/tpu_like.yaml", opt="latency", dump_folder="/tmp/zigzag_out",
        loma_show_progress_bar=False)
    with open("/tmp/zigzag_out/list_of_cmes.pickle", "rb") as f:  # the per-layer evaluations ZigZag saved
        per_layer = pickle.load(f)
    rows = []
    for cme in per_layer:
        L = cme.layer
        size = {str(k): int(v) for k, v in L.layer_dim_sizes.items()}
        rows.append({"name": L.name, "dims": size, "relations": [str(r) for r in L.dimension_relations],
                     "macs": int(L.total_mac_count),
            "ideal_cycle": float(cme.ideal_cycle), "ideal_temporal_cycle": float(cme.ideal_temporal_cycle),
            "latency_cycles": float(cme.latency_total2), "energy_pj": float(cme.energy_total),
            "mac_energy_pj": float(cme.mac_energy), "spatial_mapping": str(cme.spatial_mapping)})
    from importlib.metadata import version

    data = {"tool": f"zigzag-dse {version('zigzag-dse')}", "accelerator": "tpu_like (32x32, K x C spatial)",
            "workload": "resnet18.onnx (bundled with zigzag)", "opt": "latency",
            "command": " ".join(["python", *sys.argv]), "total_energy_pj": float(energy),
            "total_latency_cycles": float(latency), "layers": rows}
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(data, indent=1) + "\n")
    print(f"{len(rows)} layers -> {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
