"""NASAIC's comparison: co-exploration against NAS-then-ASIC under the same specs, plus the cost model's speed.

The specs are this reproduction's (the paper's own could not be checked, ../shared/reference/hwmodel.md): chosen so
that a budget-class ASIC can run two moderate networks and cannot run the largest ones, which is the regime the
paper's claim is about.
"""

from __future__ import annotations

import datetime as dt
import platform
import time
from pathlib import Path

import numpy as np

from .costmodel import Designs, Layers, evaluate
from .search import co_explore, nas_then_asic
from .space import MAX_BW, MAX_PES, Specs

# latency of the slower network, energy of both, area of the ASIC (assumed; see the module docstring)
SPECS = Specs(latency_s=10e-6, energy_j=20e-6, area_mm2=8.0)
PAPER = {"latency_lower": 0.1777, "energy_x": 2.49, "area_x": 2.32, "accuracy_loss": 0.0076}


def throughput(n_layers: int = 200, n_designs: int = 500, repeats: int = 5, seed: int = 0) -> dict:
    """Layer x design points the cost model evaluates per second (best of `repeats`)."""
    rng = np.random.default_rng(seed)
    rows = np.stack([rng.choice([8, 16, 32, 64, 128], n_layers), rng.choice([3, 16, 32, 64], n_layers),
                     rng.choice([4, 8, 16, 32], n_layers), rng.choice([4, 8, 16, 32], n_layers),
                     rng.choice([1, 3, 5], n_layers), np.zeros(n_layers), rng.choice([1, 2], n_layers)], 1)
    rows[:, 5] = rows[:, 4]
    layers = Layers.of(rows)
    d = Designs(rng.integers(0, 3, n_designs), rng.choice([64, 256, 1024], n_designs).astype(float),
                rng.choice([4, 16, 64], n_designs).astype(float))
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        evaluate(layers, d)
        best = min(best, time.perf_counter() - t0)
    pts = n_layers * n_designs
    return {"points": pts, "seconds": best, "points_per_s": pts / best}


def _design(r: dict) -> dict:
    return {"networks": [list(map(list, n)) for n in r["nets"]], "hardware": [list(h) for h in r["hw"]],
            "accuracy": list(r["acc"]), "latency_s": r["latency_s"], "energy_j": r["energy_j"],
            "area_mm2": r["area_mm2"], "meets_specs": bool(r["meets"])}


def reproduce(episodes: int = 200, seed: int = 0, specs: Specs = SPECS, out: Path | None = None, command: str = "",
              progress=None) -> dict:
    t0 = time.perf_counter()
    co, tr_co = co_explore(specs, episodes, seed, progress=(lambda i, n: progress("co", i, n)) if progress else None)
    seq, tr_seq = nas_then_asic(specs, episodes, seed,
                                progress=(lambda i, n: progress("seq", i, n)) if progress else None)
    tp = throughput()
    comp = None
    if co is not None:
        comp = {"latency_lower": 1 - co["latency_s"] / seq["latency_s"], "energy_x": seq["energy_j"] / co["energy_j"],
                "area_x": seq["area_mm2"] / co["area_mm2"],
                "accuracy_loss": float(np.mean(seq["acc"]) - np.mean(co["acc"]))}
    import torch

    res = {"experiment": "NASAIC (Yang et al., DAC'20, arXiv 2002.04116): co-exploration vs NAS-then-ASIC",
           "date": str(dt.date.today()), "machine": f"{platform.machine()} cpu, 2 cores (CI VM)",
           "torch": torch.__version__, "command": command, "episodes": episodes, "seed": seed,
           "specs": {"latency_s": specs.latency_s, "energy_j": specs.energy_j, "area_mm2": specs.area_mm2},
           "hardware_budget": {"max_pes": MAX_PES, "max_noc_bytes_per_cycle": MAX_BW},
           "nasaic": None if co is None else _design(co), "nas_then_asic": _design(seq),
           "comparison": comp, "paper": PAPER, "throughput": tp,
           "trainings": {"nasaic": tr_co.trainings, "nas_then_asic": tr_seq.trainings},
           "search_seconds": {"nasaic": tr_co.seconds, "nas_then_asic": tr_seq.seconds},
           "bars": {"co-explored design meets all specs": co is not None and bool(co["meets"]),
                    "NAS-then-ASIC violates a spec": not seq["meets"],
                    "cost model >= 1e4 points/s": tp["points_per_s"] >= 1e4},
           "trace": [_trace_row(e) for e in tr_co.episodes], "runtime_s": None}
    res["runtime_s"] = round(time.perf_counter() - t0, 1)
    if out is not None:
        from ...files import write_json_atomic

        write_json_atomic(out, res)
        plot(res, Path(out).with_suffix(".png"))
    return res


def _trace_row(e: dict) -> list:
    return [e["episode"], e["latency_s"], e["energy_j"], e["area_mm2"], int(e["meets"]), e.get("reward")]


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tr = res["trace"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, 4.8))
    ok = [r for r in tr if r[4]]
    if ok:
        ep = [r[0] for r in ok]
        rew = [r[5] for r in ok]
        a1.scatter(ep, rew, s=8, label="spec-meeting samples (reward)")
        a1.plot(ep, np.maximum.accumulate(rew), color="k", label="best so far")
    a1.set_xlabel("episode")
    a1.set_ylabel("reward = mean accuracy + 0.1 x slack")
    a1.set_title(f"NASAIC search: {sum(r[4] for r in tr)} of {len(tr)} sampled designs meet the specs")
    a1.legend(fontsize=8)
    bad = [r for r in tr if not r[4]]
    a2.scatter([r[1] * 1e6 for r in bad], [r[2] * 1e6 for r in bad], s=5, c="0.75", label="violates (pruned)")
    a2.scatter([r[1] * 1e6 for r in ok], [r[2] * 1e6 for r in ok], s=8, c="C0", label="meets specs")
    s = res["specs"]
    a2.axvline(s["latency_s"] * 1e6, color="r", lw=0.8)
    a2.axhline(s["energy_j"] * 1e6, color="r", lw=0.8, label="specs")
    for key, mk, lab in (("nasaic", "*", "NASAIC"), ("nas_then_asic", "X", "NAS then ASIC")):
        d = res[key]
        if d:
            a2.scatter([d["latency_s"] * 1e6], [d["energy_j"] * 1e6], marker=mk, s=160, edgecolor="k",
                       label=f"{lab} ({d['area_mm2']:.1f} mm2, acc {np.mean(d['accuracy']):.3f})")
    a2.set_xscale("log")
    a2.set_yscale("log")
    a2.set_xlabel("latency (us, slower network)")
    a2.set_ylabel("energy (uJ, both networks)")
    a2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
