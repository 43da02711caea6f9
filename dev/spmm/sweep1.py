"""Device sweep 1 (dev/spmm/NOTES.md, entry 3): kernel.py as of 2026-12-02 against v1_tileorder and
v2_oldexpand variants, fp16, random weights with random unstructured masks, CUDA-graphed calls over enough
weight copies to overrun the L2. Writes $OUT/sweep1.json; prints a table.

Variants: old = kernel.py (format version 1, as of 2026-12-02 and kept); new = v3_kernel.py (format 2: tile order,
row starts by a scan; it was kernel.py during the run); v3 = v2_oldexpand.py (tile order, int16 row-start table, and
the `mode` diagnostics); v2 = v1_tileorder.py; v4 = v4_prefetch.py (kernel.py's loop + L2 prefetch of the next
column group; prefetch off = kernel.py's loop, the control).
Every variant at N = 16, 80% sparsity, three shapes (the full table of the kept kernel is `ioaware bench spmm`'s,
run right after this in the same lease)."""

from __future__ import annotations

import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
import v3_format  # noqa: E402
import v3_kernel  # noqa: E402
from v1_tileorder import pack_v2, spmm_v2  # noqa: E402
from v2_oldexpand import spmm_v3  # noqa: E402
from v4_prefetch import spmm_v4  # noqa: E402

from ioaware.bench.common import ceilings, graphed_ms, machine_info  # noqa: E402
from ioaware.kernels.spmm import pack  # noqa: E402
from ioaware.kernels.spmm.kernel import spmm_lscd  # noqa: E402

SHAPES = [(28672, 4096), (4096, 4096), (7168, 28672)]
OUT = os.environ.get("OUT", "/tmp")


def variants():
    v = {"old_gs4_sm4": ("old", dict(gs=4, per_sm=4)), "old_gs4_sm8": ("old", dict(gs=4, per_sm=8))}
    for gs, sm, nw in ((4, 4, 4), (4, 8, 4), (2, 8, 4), (4, 2, 4), (4, 4, 8)):  # kernel.py now (v3 with scan)
        v[f"new_gs{gs}_sm{sm}_w{nw}"] = ("new", dict(gs=gs, per_sm=sm, num_warps=nw))
    for gs, sm in ((4, 4), (4, 8), (2, 8)):
        v[f"v3_table_gs{gs}_sm{sm}"] = ("v3", dict(rows="table", gs=gs, per_sm=sm))
    for mode in ("nogather", "skeleton"):  # wrong results on purpose: the loop without its gathers / expansion
        v[f"v3_table_gs4_sm4_{mode}"] = ("v3", dict(rows="table", gs=4, per_sm=4, mode=mode))
    v["v2_table_popc_gs4_sm4"] = ("v2", dict(rows="table", rank="popc", gs=4, per_sm=4))
    for pf in (True, False):  # entry 4: L2 prefetch of the next column group (not yet run on the device)
        for sm in (4, 8):
            v[f"v4_{'pf' if pf else 'nopf'}_sm{sm}"] = ("v4", dict(prefetch=pf, per_sm=sm))
    return v


def call(kind, kw, x, p):
    if kind == "old":
        return spmm_lscd(x, p[0], **kw)
    if kind == "new":
        return v3_kernel.spmm_lscd(x, p[1], **kw)
    if kind == "v3":
        return spmm_v3(x, p[2], **kw)
    if kind == "v4":
        return spmm_v4(x, p[0], **kw)
    return spmm_v2(x, p[2], **kw)


def weights(M, K, s, n):
    out = []
    for _ in range(n):
        w = torch.randn(M, K, device="cuda", dtype=torch.float16)
        w = w * (torch.rand(M, K, device="cuda") >= s)
        out.append((w, (pack(w, "bitmap"), v3_format.pack(w, "bitmap"), pack_v2(w))))
    return out


def main():
    res = {"machine": machine_info(), "ceilings": ceilings(), "stage1": [], "stage2": []}
    print("ceilings", res["ceilings"], flush=True)
    V = variants()
    if os.environ.get("SPMM_VARIANTS"):  # a comma-separated subset (the final lease: old, new, the diagnostics)
        V = {k: V[k] for k in os.environ["SPMM_VARIANTS"].split(",")}
    t0 = time.time()

    def case(M, K, s, N, names, dense_cache, sets):
        ws = sets[(M, K, s)]
        x = torch.randn(N, K, device="cuda", dtype=torch.float16)
        if (M, K, N) not in dense_cache:
            dense_cache[(M, K, N)] = graphed_ms([lambda w=w: x @ w.T for w, _ in ws])
        d = dense_cache[(M, K, N)]
        ref = x.float() @ ws[0][0].float().T
        rows = []
        for name in names:
            kind, kw = V[name]
            try:
                y = call(kind, kw, x, ws[0][1])
                err = ((y.float() - ref).norm() / ref.norm()).item()
                t = graphed_ms([lambda p=p, k=kind, kw=kw: call(k, kw, x, p) for _, p in ws])
            except Exception as e:  # noqa: BLE001
                rows.append({"variant": name, "error": f"{type(e).__name__}: {e}"[:300]})
                print(name, "ERROR", rows[-1]["error"], flush=True)
                continue
            nb = ws[0][1][1].nbytes + N * K * 2 + N * M * 2  # format version 2 (kernel.py now)
            r = {"variant": name, "M": M, "K": K, "N": N, "sparsity": s, "dense_us": d * 1e3, "us": t * 1e3,
                 "speedup": d / t, "rel_err": err, "GBps_compressed": nb / t / 1e6}
            rows.append(r)
            print(f"{M}x{K} s{s} N{N} {name:28s} {t * 1e3:7.1f}us dense {d * 1e3:6.1f} {d / t:5.2f}x "
                  f"{r['GBps_compressed']:6.0f}GB/s e{err:.0e} [{time.time() - t0:.0f}s]", flush=True)
        return rows

    sets = {}
    dense = {}
    for M, K in SHAPES:
        n = max(2, -(-(300 << 20) // (M * K * 2)))
        sets[(M, K, 0.8)] = weights(M, K, 0.8, n)
        res["stage1"] += case(M, K, 0.8, 16, list(V), dense, sets)
        with open(f"{OUT}/sweep1.json", "w") as f:
            json.dump(res, f, indent=1)
    tot = {}
    for r in res["stage1"]:
        if "us" in r:
            tot[r["variant"]] = tot.get(r["variant"], 0) + r["us"]
    res["total_us"] = tot
    with open(f"{OUT}/sweep1.json", "w") as f:
        json.dump(res, f, indent=1)
    for k in sorted(tot, key=tot.get):
        print(f"{k:32s} {tot[k]:8.1f} us over the three shapes")

if __name__ == "__main__":
    main()
