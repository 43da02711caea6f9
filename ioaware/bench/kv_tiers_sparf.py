"""`ioaware bench kv-tiers --sparf F --sparf-tier dram`: the pieces for SparF on the DRAM tier (kv_tiers.py runs
the variants): which transports, the attention-output cosine on the bench's data, and the results' summary."""

from __future__ import annotations

import torch

# Random K/V and a random q make every key about as likely as any other: what SparF keeps (the few pages holding
# most of the mass) says nothing on such data. Real activations are in this file (`--sparf-quality`).
QUALITY_FILE = "benchmarks/results/kvtiers-sparf-smollm2-cpu-2026-12-03b.json"


def transports(a) -> list[str]:
    """The DRAM SparF transports to run: the command line's, else all three on CUDA and copy on a CPU-only run.
    'uva' on CUDA runs 'uva-serial' (its kernels on the compute stream) and 'uva-gather' (the older zero-copy
    path) too; 'both': copy, uva and uva-gather."""
    if not a.sparf or a.sparf_tier != "dram":
        return []
    t = a.sparf_transport or ("both" if a.device == "cuda" else "copy")
    if t == "both":
        return ["copy", "uva", "uva-gather"]
    return ["uva", "uva-serial", "uva-gather"] if t == "uva" and a.device == "cuda" else [t]


@torch.no_grad()
def random_quality(tiers, ma, device, dtype, seed: int = 0) -> dict:
    """Layer 0, a random q: cosine of SparF-on-DRAM's output to exact, the DRAM tier's partial alone and merged
    with the device tier's (per query head: mean and min). Meaningless on random data (see QUALITY_FILE)."""
    from ..kernels import flash_decode
    from ..runtime.kvtiers import dram_sparf as ds
    from ..runtime.kvtiers.cache import device_partial, to_device
    from ..runtime.kvtiers.partial import lse_merge

    lk = tiers.layers[0]
    g = torch.Generator(device=device).manual_seed(seed)
    q = torch.randn(1, 1, ma.n_heads, ma.head_dim, device=device, generator=g).to(dtype)
    scale = ma.head_dim ** -0.5
    exact = lse_merge([device_partial(q, to_device(k, device), to_device(v, device), scale)
                       for k, v in lk.dram_views()])
    ks, vs, _, _ = ds.host_select(tiers.spec.sparf, lk, q.float().cpu(), scale)
    approx = ds.attend_selected(q, to_device(ks, device), to_device(vs, device), scale)
    lens = torch.full((1,), lk.hbm_tokens(), dtype=torch.int32, device=device)
    hb = flash_decode(q, lk.hk, lk.hv, lens, lk.table(), softmax_scale=scale, causal=False, return_lse=True)

    def cos(a, b):
        c = torch.nn.functional.cosine_similarity(a[0].float().reshape(-1, ma.head_dim),
                                                  b[0].float().reshape(-1, ma.head_dim), dim=-1)
        return {"mean": c.mean().item(), "min": c.min().item()}

    return {"dram_partial": cos(approx, exact), "merged_with_hbm": cos(lse_merge([hb, approx]), lse_merge([hb, exact])),
            "note": "random K/V and q: no structure for SparF to find; quality on real SmolLM2 activations: "
                    + QUALITY_FILE}


def sparf_summary(probe: dict, quality: dict | None, res: dict) -> dict:
    """The DRAM SparF's probes, the iomodel's per-part prediction against the measured parts, and speed-ups."""
    out = {"probe": {"host_select": probe["host_select"].__dict__,
                     **{k: probe[k].__dict__ if probe.get(k) else None for k in ("uva", "uva_select", "uva_attend")},
                     "sync_s": probe["sync_s"],
                     "uva_error": probe["uva_error"], "points": probe["points"]},
           "quality_random_data": quality, "quality_real_activations": QUALITY_FILE, "variants": {}}
    base = res["move_all"]["tok_s"]
    for key, r in res.items():
        if "predicted_dram_parts_s" not in r:
            continue
        meas = r.get("measured_dram_parts_s", {})
        pred = r["predicted_dram_parts_s"]
        out["variants"][key] = {
            "tok_s": r["tok_s"], "vs_move_all": r["tok_s"] / base, "predicted_parts_s": pred, "measured_parts_s": meas,
            "part_error": {k: (pred[k] / meas[k] - 1) if meas.get(k) else None for k in pred}}
    return out


def print_parts(summary: dict) -> None:
    """The DRAM tier's parts per layer, the iomodel's prediction against the measurement (each part synchronised)."""
    from ..report import print_table

    rows = []
    for key, v in summary["variants"].items():
        for part in ("select", "copy", "dev"):
            p, m = v["predicted_parts_s"][part], v["measured_parts_s"].get(part, 0.0)
            if p or m:
                e = v["part_error"][part]
                rows.append([key, part, f"{p * 1e3:.3f}", f"{m * 1e3:.3f}", f"{e:+.0%}" if e is not None else "-"])
    print_table("DRAM tier per layer, by part (ms): iomodel vs measured", ["variant", "part", "predicted",
                                                                           "measured", "error"], rows)
    q = summary.get("quality_random_data")
    if q:
        print(f"SparF on DRAM, attention-output cosine to exact on the bench's random data (meaningless: no "
              f"structure to find): DRAM partial {q['dram_partial']['mean']:.3f}, merged with the device tier "
              f"{q['merged_with_hbm']['mean']:.3f}; on real SmolLM2 activations see {QUALITY_FILE}")
