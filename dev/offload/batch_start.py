"""What the iomodel misses per read batch (issue #29 item 5; dev/offload/NOTES.md, 2026-12-03 sections).

The iomodel prices a batch of reads from `ioaware probe disk`'s curve, which was measured with every thread reading
back to back. A decode step issues one batch per layer after that layer's compute, so each batch starts from an idle
pool and an idle disk queue. This script measures, on the default model's store, the time of single batches
(`NeuronReader.read`, checksums off so only the I/O is timed) of realistic shapes (whole layers as the naive baseline
reads them; random neuron subsets of the sizes the predictors pick) in three conditions:

- back-to-back: batches issued one after another (what the curve assumes);
- compute gap: a ~5 ms matmul between batches (what a decode step does);
- sleep gap: 5 ms of sleep between batches (idle CPU and disk);

and prints, per condition and shape, measured vs predicted and the residual per batch. The fitted per-batch start
cost (the median residual in the compute-gap condition) is what `iomodel.io` adds per batch when the curve carries it.

    PYTHONPATH=. .venv/bin/python dev/offload/batch_start.py [--repeats 20] [--json F]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np
import torch


def main(argv=None) -> int:
    from ioaware.hardware.probe_disk import best_chunk, load_curve
    from ioaware.iomodel.io import predict_read_seconds
    from ioaware.runtime.llm.checkpoint import default_model_path
    from ioaware.runtime.offload.reader import NeuronReader
    from ioaware.runtime.offload.session import store_path_for
    from ioaware.runtime.offload.store import model_fingerprint, open_store

    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--gap-ms", type=float, default=5.0)
    p.add_argument("--json", default=None)
    p.add_argument("--fresh-curve", action="store_true",
                   help="predict from a curve measured now on the store file itself (O_DIRECT, 0.15 s per point)")
    a = p.parse_args(argv)
    path = default_model_path()
    fp = model_fingerprint(path)
    sp = store_path_for(path, fp)
    if not sp.exists():
        print(f"no store at {sp}: run `make run` once first", file=sys.stderr)
        return 2
    store = open_store(sp, fp)
    curve = load_curve(sp.parent)
    if curve is None:
        print("no disk curve: run `ioaware probe disk` first", file=sys.stderr)
        return 2
    if a.fresh_curve:
        from ioaware.hardware.probe_disk import CHUNKS, THREADS, measure

        t0 = time.perf_counter()
        pts = [measure(sp, sp.stat().st_size, c, t, True, 0.15) for c in CHUNKS[:-1] for t in THREADS]
        curve = {"points": pts, "date": time.strftime("%Y-%m-%d %H:%M:%S") + " (store file, now)"}
        print(f"fresh curve in {time.perf_counter() - t0:.1f} s: "
              + ", ".join(f"{q['chunk'] >> 10}K x{q['threads']} {q['GBps']:.2f}" for q in pts if q['threads'] == 8))
    H = store.args.hidden_dim
    rng = np.random.default_rng(0)
    x = torch.randn(256, 1024)
    w = torch.randn(1024, 1024)
    reps = max(1, int(a.gap_ms / 1000 / 1.2e-3))  # ~1.2 ms per 256x1024x1024 matmul on one of these cores

    def compute_gap():
        for _ in range(reps):
            x @ w

    shapes = {"whole layer": lambda: np.arange(H), "600 random": lambda: np.sort(rng.choice(H, 600, replace=False)),
              "200 random": lambda: np.sort(rng.choice(H, 200, replace=False)),
              "50 random": lambda: np.sort(rng.choice(H, 50, replace=False))}
    conds = {"back-to-back": lambda: None, "compute gap": compute_gap, "sleep gap": lambda: time.sleep(a.gap_ms / 1e3)}
    chunk = best_chunk(curve, a.threads, True)
    rows = []
    with NeuronReader(store, threads=a.threads, chunk=chunk, verify=False) as r:
        for shape, ids_fn in shapes.items():
            for cond, gap in conds.items():
                meas, pred, nchunks = [], [], []
                for _i in range(a.repeats):
                    layer = int(rng.integers(store.args.n_layers))
                    ids = ids_fn()
                    gap()
                    res = r.read(layer, ids)
                    meas.append(res.stats.seconds)
                    pred.append(predict_read_seconds(res.stats.chunk_sizes, curve, r.threads, r.direct))
                    nchunks.append(res.stats.chunks)
                resid = [m - q for m, q in zip(meas, pred, strict=True)]
                row = {"shape": shape, "condition": cond, "chunks_median": statistics.median(nchunks),
                       "measured_ms_median": 1e3 * statistics.median(meas),
                       "predicted_ms_median": 1e3 * statistics.median(pred),
                       "residual_ms_median": 1e3 * statistics.median(resid),
                       "ratio_median": statistics.median(m / q for m, q in zip(meas, pred, strict=True))}
                rows.append(row)
                print(f"{shape:12s} {cond:13s} chunks {row['chunks_median']:5.0f}  measured "
                      f"{row['measured_ms_median']:7.3f} ms  predicted {row['predicted_ms_median']:7.3f}  "
                      f"residual {row['residual_ms_median']:+7.3f}  ratio {row['ratio_median']:.2f}", flush=True)
    out = {"store": str(sp), "threads": a.threads, "chunk": chunk, "gap_ms": a.gap_ms, "repeats": a.repeats,
           "curve_date": curve.get("date"), "rows": rows}
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
