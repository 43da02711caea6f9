"""The probe for people: tables (each number beside the paper's and the datasheet's, with the ratios), the bars,
and a four-panel figure (latency per level, the L2 capacity curve, tensor-core rates, the L2 latency histogram)."""

from __future__ import annotations

from ...report import print_table

GROUPS = ("clock", "latency", "bw", "l2", "tc", "tcclk", "async")
GROUP_TITLES = {"clock": "clock", "latency": "latency", "bw": "bandwidth", "l2": "L2 capacity",
                "tc": "tensor cores", "tcclk": "tensor cores per SM per clock (the clock read inside each kernel)",
                "async": "async copy (GB/s through shared memory)"}


def _r(x) -> str:
    """A value for the tables: 4 significant figures at most, 1 decimal from 100 up."""
    if x is None:
        return "-"
    x = float(x)
    return f"{x:.1f}" if abs(x) >= 100 else f"{x:.4g}"


def _x(x) -> str:
    """A ratio: always 3 decimals, so 0.897 never reads as 0.90 beside a 0.90 threshold."""
    return "-" if x is None else f"{float(x):.3f}"


def table_rows(result: dict, group: str) -> list[list]:
    out = []
    for r in result["rows"]:
        if r["group"] != group:
            continue
        out.append([r["key"].split(".", 1)[1] if "." in r["key"] else r["key"], r["unit"], _r(r["value"]),
                    _r(r["paper_h800"]), _x(r["paper_ratio"]), _r(r["paper_scaled"]), _x(r["paper_scaled_ratio"]),
                    _r(r["datasheet"]), _x(r["datasheet_ratio"])])
    return out


def print_report(result: dict, console=None) -> None:
    dev, ver = result["device"], result["versions"]
    print(f"{dev['name']}: {dev['sms']} SMs, sm_{dev['compute_capability'].replace('.', '')}, L2 "
          f"{dev['l2_bytes'] / 2**20:.0f} MiB, driver {dev.get('driver')}, max SM clock {dev.get('max_sm_mhz')} MHz; "
          f"torch {ver['torch']}, triton {ver['triton']}, CUDA {ver['cuda_runtime']}, cupy {ver.get('cupy')}, "
          f"NVRTC {ver.get('nvrtc')}")
    cols = ["measure", "unit", "measured", "paper H800", "x paper", "paper scaled", "x scaled",
            f"datasheet ({result['datasheet_card']})", "x datasheet"]
    for g in GROUPS:
        rows = table_rows(result, g)
        if rows:
            print_table(f"probe gpu: {GROUP_TITLES[g]}", cols, rows, console=console)
    secs = [[n, s["status"], round(s["seconds"], 1), (s.get("clock") or {}).get("sm_mhz_median", "-"),
             (s.get("error") or s.get("reason") or "")[:110]] for n, s in result["sections"].items()]
    print_table("sections", ["section", "status", "s", "SM MHz (NVML median)", "error / reason"], secs,
                console=console)
    bars = [[b["bar"], _r(b["value"]), _r(b["baseline"]), _x(b["ratio"]), _x(b["threshold"]),
             {True: "met", False: "MISSED", None: "not measured"}[b["met"]]] for b in result["bars"]]
    print_table("bars", ["bar", "value", "baseline", "ratio", "threshold", ""], bars, console=console)
    print(f"probe took {result['seconds']:.1f} s ({'quick' if result['quick'] else 'full'}); paper card: "
          f"{result['paper_card']}; 'paper scaled' = paper x (SMs x measured clock) / (114 x 1755 MHz)")


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    m = result["measured"]
    by_key = {r["key"]: r for r in result["rows"]}
    fig, ax = plt.subplots(2, 2, figsize=(13, 9))
    # (a) latency per level
    keys = [k for k in ("latency.smem", "latency.l1", "latency.dsm_local", "latency.dsm_remote", "latency.l2_near",
                        "latency.l2", "latency.l2_far", "latency.hbm", "latency.hbm_random") if k in m]
    x = np.arange(len(keys))
    a = ax[0][0]
    a.bar(x, [m[k] for k in keys], color="tab:blue", label="measured")
    px = [i for i, k in enumerate(keys) if by_key[k]["paper_h800"] is not None]
    a.scatter(px, [by_key[keys[i]]["paper_h800"] for i in px], color="tab:red", marker="_", s=400, lw=3,
              label="paper (H800 PCIe)", zorder=3)
    a.set_xticks(x, [k.split(".", 1)[1] for k in keys], rotation=30, ha="right")
    a.set_ylabel("cycles")
    a.set_title("latency per level (fine-grained P-chase, median)")
    a.legend()
    # (b) L2 capacity
    a = ax[0][1]
    cap = result["sections"].get("l2_capacity", {}).get("detail")
    if cap:
        a.plot(cap["footprint_mib"], [g / 1e3 for g in cap["GBps"]], marker="o")
        if cap["knee"].get("capacity"):
            a.axvline(cap["knee"]["capacity"], color="tab:red", ls="--",
                      label=f"apparent capacity {cap['knee']['capacity']:.1f} MiB")
        a.axvline(cap["device_l2_bytes"] / 2**20, color="gray", ls=":", label="L2 size the driver reports")
        a.set_xscale("log", base=2)
        a.legend()
    a.set_xlabel("footprint re-read (MiB)")
    a.set_ylabel("TB/s")
    a.set_title("L2: re-read bandwidth vs footprint (ld.global.cg)")
    # (c) tensor cores per dtype
    a = ax[1][0]
    dts = ["fp16", "bf16", "tf32", "e4m3", "e5m2", "int8"]
    fams = (("mma.sync", "tc.mma."), ("wgmma", "tc.wgmma."), ("torch 8192^3", "tc.torch."))
    w = 0.25
    for j, (label, pre) in enumerate(fams):
        vals = [max([v for k, v in m.items() if k.startswith(pre + dt + ".") or k == pre + dt] or [0]) for dt in dts]
        a.bar(np.arange(len(dts)) + (j - 1) * w, vals, w, label=label)
    ds = [by_key.get(f"tc.torch.{dt}", by_key.get(f"tc.wgmma.{dt}.n256", {})).get("datasheet") for dt in dts]
    a.scatter(np.arange(len(dts)), [v or np.nan for v in ds], color="k", marker="_", s=500, lw=2,
              label=f"datasheet ({result['datasheet_card']})", zorder=3)
    a.set_xticks(np.arange(len(dts)), dts)
    a.set_ylabel("TFLOP/s (TOP/s for int8)")
    a.set_title("tensor cores: best shape per instruction family")
    a.legend(fontsize=8)
    # (d) latency against footprint (the L2's steps and end), near/far where the walk at 0.8 of the L2 splits
    a = ax[1][1]
    walk = result["sections"].get("l2_latency", {}).get("detail")
    if walk:
        mib = [c["mib"] for c in walk["curve"]]
        a.plot(mib, [c["median"] for c in walk["curve"]], marker="o", label="median")
        a.fill_between(mib, [c["p10"] for c in walk["curve"]], [c["p90"] for c in walk["curve"]], alpha=0.25,
                       label="10th-90th percentile")
        for k, ls in (("latency.l2_near", "--"), ("latency.l2_far", ":")):
            if k in m:
                a.axhline(m[k], color="tab:red", ls=ls, label=f"{k.split('.')[1]} {m[k]:.0f} (split at "
                          f"{walk['split_at_mib']} MiB)")
        a.axvline(walk["device_l2_bytes"] / 2**20, color="gray", ls=":", label="L2 size the driver reports")
        a.set_xscale("log", base=2)
        a.legend(fontsize=8)
        a.set_xlabel("footprint walked (MiB)")
        a.set_ylabel("cycles per access")
        a.set_title("P-chase latency vs footprint (ld.global.cg, warmed)")
        return _save(fig, result, path)
    lat = result["sections"].get("latency", {}).get("detail", {}).get("run1", {})
    if "l2_hist" in lat:  # no footprint sweep in this result: the 4 MiB walk's per-access histogram instead
        edges = np.linspace(0, 900, len(lat["l2_hist"]) + 1)
        a.bar(edges[:-1], lat["l2_hist"], width=np.diff(edges), align="edge")
        sp = lat.get("l2_split") or {}
        if sp.get("threshold"):
            a.axvline(sp["threshold"], color="tab:red", ls="--", label=f"Otsu split {sp['threshold']:.0f} (eta "
                      f"{sp['eta']:.2f}, {'bimodal' if sp.get('bimodal') else 'not bimodal'})")
            a.legend(fontsize=8)
    a.set_xlabel("cycles per access")
    a.set_ylabel("accesses")
    a.set_title("L2 hits of one 4 MiB walk (ld.global.cg, warmed)")
    return _save(fig, result, path)


def _save(fig, result: dict, path: str) -> None:
    import matplotlib.pyplot as plt

    dev = result["device"]
    fig.suptitle(f"ioaware probe gpu: {dev['name']} ({dev['sms']} SMs, driver {dev.get('driver')}), "
                 f"{result['date']}{' (quick)' if result['quick'] else ''}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
