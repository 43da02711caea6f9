"""Resolution vs SNR and vs bits, from a sweep's JSON-shaped results (matplotlib, imported only here)."""

from __future__ import annotations

from pathlib import Path

STYLE = {"cfd": ("CFD", "tab:orange", "s"), "template_fit": ("template fit", "tab:green", "^"),
         "nn_float": ("CNN float", "tab:gray", "x"), "nn_int_engine": ("CNN integer engine", "tab:blue", "o")}


def _curves(ax, rows, xkey, qty, paper, log=True):
    xs = [r[xkey] for r in rows]
    ax.plot(xs, [r["crlb"][qty] for r in rows], "k--", lw=1, label="Cramer-Rao bound")
    for k, (label, color, marker) in STYLE.items():
        if k in rows[0]["methods"]:
            ax.plot(xs, [r["methods"][k][qty] for r in rows], marker=marker, color=color, label=label, ms=4)
    ax.axhline(paper[qty], color="tab:red", lw=0.8, ls=":", label="paper's figure")
    if log:
        from matplotlib.ticker import MaxNLocator, ScalarFormatter

        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(ScalarFormatter())
        if xkey != "snr_db":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3, which="both")


def plot(path: str, out: dict) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = Path(path)
    stem = p.with_suffix("")
    paper = out["paper"]
    cfg = out["pulse"]
    title = f"{cfg['shape']}, tau {cfg['tau_ns']:g} ns, {cfg['fs_mhz']:g} MS/s"
    files = []

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    rows = out["sweep"]["snr"]
    _curves(axes[0], rows, "snr_db", "time_ps", paper)
    _curves(axes[1], rows, "snr_db", "energy_pct", paper)
    for ax, q in zip(axes, ("time resolution (ps)", "energy resolution (%)")):
        ax.axvline(paper["snr_db"], color="tab:red", lw=0.8, ls=":")
        ax.set_xlabel("SNR = 20 log10(A / sigma) (dB)")
        ax.set_ylabel(q)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"PulseDL-II in software: resolution vs SNR ({title}, {cfg['adc_bits']}-bit ADC, int8 network)")
    fig.tight_layout()
    f = f"{stem}-snr.png"
    fig.savefig(f, dpi=120)
    plt.close(fig)
    files.append(f)

    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    for j, (key, xlabel) in enumerate((("adc_bits", "ADC bits"), ("nn_bits", "network weight/activation bits"))):
        rows = out["sweep"][key]
        _curves(axes[0, j], rows, key, "time_ps", paper)
        _curves(axes[1, j], rows, key, "energy_pct", paper)
        axes[1, j].set_xlabel(xlabel)
    axes[0, 0].set_ylabel("time resolution (ps)")
    axes[1, 0].set_ylabel("energy resolution (%)")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(f"resolution vs bits at {paper['snr_db']} dB ({title}); network trained on 12-bit codes")
    fig.tight_layout()
    f = f"{stem}-bits.png"
    fig.savefig(f, dpi=120)
    plt.close(fig)
    files.append(f)
    return files
