"""`ioaware bench decode`: flash_decode's KV read bandwidth against SDPA's flash and cuDNN backends, same run.

Setting of the decoding issue: bf16, Hq = 32, Hkv = 8, D = 128, one new token; B = 8 at L = 4k and 32k, B = 1 at
L = 128k. GB/s counts the K and V bytes of the cache read once (the compulsory traffic; decoding is bound by it).
Each case is checked against an fp32 reference first; no speedup is reported for a failing case.
"""

from __future__ import annotations

import math

ROUNDS = 3


def cases():
    for B, L in ((8, 4096), (8, 32768), (1, 131072)):
        yield {"B": B, "L": L, "Hq": 32, "Hkv": 8, "D": 128}


def _sdpa(backend_name):
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {"sdpa-flash": SDPBackend.FLASH_ATTENTION, "sdpa-cudnn": SDPBackend.CUDNN_ATTENTION}[backend_name]

    def run(q, kc, vc):
        with sdpa_kernel([backend]):
            return torch.nn.functional.scaled_dot_product_attention(
                q.transpose(1, 2), kc.transpose(1, 2), vc.transpose(1, 2), enable_gqa=True)

    return run


def _bench_case(c: dict) -> list[dict]:
    import torch

    from ..kernels.attention.decode import decode_ref, flash_decode
    from .common import graphed, time_ms

    rows = []
    B, L, Hq, Hkv, D = c["B"], c["L"], c["Hq"], c["Hkv"], c["D"]
    dt = torch.bfloat16
    q = torch.randn(B, 1, Hq, D, device="cuda", dtype=dt)
    kc = torch.randn(B, L, Hkv, D, device="cuda", dtype=dt)
    vc = torch.randn(B, L, Hkv, D, device="cuda", dtype=dt)
    lens = torch.full((B,), L, device="cuda", dtype=torch.int32)
    page = 16
    perm = torch.randperm(B * L // page, device="cuda").to(torch.int32)
    bt = perm.view(B, L // page)
    kp = torch.empty(B * L // page, page, Hkv, D, device="cuda", dtype=dt)
    vp = torch.empty_like(kp)
    kp[bt.long()] = kc.view(B, L // page, page, Hkv, D)
    vp[bt.long()] = vc.view(B, L // page, page, Hkv, D)
    # unified max from calibration: the 99.99th percentile of scaled scores on this data
    s = (kc[0, :4096, 0].float() @ q[0, 0, 0].float()) / math.sqrt(D)
    phi = float(s.quantile(0.9999))
    providers = {
        "ioaware": lambda: flash_decode(q, kc, vc, lens),
        "ioaware-paged16": lambda: flash_decode(q, kp, vp, lens, bt),
        "ioaware-unified-max": lambda: flash_decode(q, kc, vc, lens, unified_max=phi),
        "sdpa-flash": lambda: _sdpa("sdpa-flash")(q, kc, vc),
        "sdpa-cudnn": lambda: _sdpa("sdpa-cudnn")(q, kc, vc),
    }
    # correctness on two rows (fp32 reference)
    ref, _ = decode_ref(q[:2].float(), kc[:2].float(), vc[:2].float(), lens[:2])
    checks = {}
    for name in ("ioaware", "ioaware-paged16", "ioaware-unified-max"):
        o = providers[name]()[:2].float()
        checks[name] = ((o - ref).norm() / ref.norm()).item()
    kv_bytes = 2 * B * L * Hkv * D * 2
    # each provider also as a CUDA-graph replay: a decoding step is captured in a graph in real serving, and at
    # short contexts the eager numbers measure Python and launch latency rather than the kernel
    for name in list(providers):
        providers[name + " (graph)"] = graphed(providers[name])
    best: dict = {}
    for _ in range(ROUNDS):
        for name, fn in providers.items():
            try:
                ms, err = time_ms(fn), None
            except Exception as e:  # noqa: BLE001 - a backend that refuses the shape is reported
                ms, err = math.nan, f"{type(e).__name__}: {str(e)[:100]}"
            if name not in best or (ms == ms and not ms >= best[name][0]):
                best[name] = (ms, err)
    for name, (ms, err) in best.items():
        ok = checks.get(name.removesuffix(" (graph)"), 0.0) < 1e-2
        rows.append({**c, "provider": name, "ms": ms, "kv_GBps": kv_bytes / ms / 1e6 if ms == ms else None,
                     "rel_err": checks.get(name.removesuffix(" (graph)")), "ok": ok, "error": err})
    return rows


def run(progress=None) -> dict:
    from .common import ceilings, machine_info

    rows = []
    all_cases = list(cases())
    for n, c in enumerate(all_cases):
        rows += _bench_case(c)
        if progress:
            progress(n + 1, len(all_cases))
    for c in all_cases:
        for mode in ("", " (graph)"):
            grp = [r for r in rows if r["B"] == c["B"] and r["L"] == c["L"] and r["provider"].endswith(mode)
                   and (mode or not r["provider"].endswith(" (graph)"))]
            base = {r["provider"]: r["ms"] for r in grp if r["provider"].startswith("sdpa") and r["ms"] == r["ms"]}
            contig = next(r["ms"] for r in grp if r["provider"] == "ioaware" + mode)
            for r in grp:
                if r["provider"].startswith("ioaware") and r["ok"] and base:
                    r["speedup_vs_best_sdpa"] = min(base.values()) / r["ms"]
                if r["provider"] == "ioaware-paged16" + mode:
                    r["paged_vs_contiguous"] = contig / r["ms"]
    return {"machine": machine_info(), "ceilings": ceilings(), "rows": rows,
            "setting": "bf16, Hq=32, Hkv=8, D=128, one new token; GB/s = K+V cache bytes / time",
            "timing": f"do_bench median, providers round-robin, best of {ROUNDS}"}


TABLE_COLUMNS = ["B", "L", "provider", "ms", "KV GB/s", "vs best SDPA", "paged/contig", "check"]


def table_rows(res: dict) -> list[list]:
    out = []
    for r in res["rows"]:
        sp, pc = r.get("speedup_vs_best_sdpa"), r.get("paged_vs_contiguous")
        out.append([r["B"], r["L"], r["provider"], r["ms"], r["kv_GBps"] or "", f"{sp:.2f}x" if sp else "",
                    f"{pc:.2f}" if pc else "", ("ok" if r["ok"] else "FAIL") if r["rel_err"] is not None else
                    (r["error"] or "")[:30]])
    return out
