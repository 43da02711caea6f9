"""`ioaware pulsedl`: PulseDL-II in software: a 1D CNN times and weighs detector pulses with integers only.

    ioaware pulsedl train --out pulsedl.pt                  # float training + 8-bit quantisation-aware fine-tune
    ioaware pulsedl eval [--model pulsedl.pt]               # every method at 47.4 dB beside the paper; accelerator
    ioaware pulsedl sweep --plot r.png --json r.json        # + resolution vs SNR and vs bits (r-snr.png, r-bits.png)

Without --model, eval and sweep train first (about two minutes on a 2-core CPU with the defaults).
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

from ...report import emit_json, print_table

RUN_DATE = "2026-12-02"
DEFAULT_SNRS = "30,35,40,44,47.4,50,55,60"


def _floats(s: str, name: str) -> list[float]:
    try:
        return [float(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--{name} takes comma-separated numbers, got {s!r}") from None


def _ints(s: str, name: str) -> list[int]:
    try:
        return [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--{name} takes comma-separated integers, got {s!r}") from None


def _parser() -> argparse.ArgumentParser:
    from .model import TrainConfig  # one source for the training defaults (torch loads only when a command runs)

    ap = argparse.ArgumentParser(prog="ioaware pulsedl", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="{train,eval,sweep}")
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("pulses (defaults: our assumptions, see README)")
    g.add_argument("--shape", default="crrc", choices=["crrc", "dexp"], help="CR-RC^4 or double exponential")
    g.add_argument("--tau-ns", type=float, default=5.0, help="CR-RC^n time constant (ns)")
    g.add_argument("--fs-mhz", type=float, default=125.0, help="ADC sampling rate (MS/s)")
    g.add_argument("--adc-bits", type=int, default=12)
    g.add_argument("--tau-spread", type=float, default=0.0, help="per-pulse relative spread of the shape")
    g = common.add_argument_group("network and training")
    g.add_argument("--model", default=None, help="a file from `ioaware pulsedl train` (skips training)")
    g.add_argument("--channels", default="8,16,16", help="conv channels")
    g.add_argument("--hidden", type=int, default=64)
    g.add_argument("--steps", type=int, default=TrainConfig.steps, help="float training steps (fresh pulses each step)")
    g.add_argument("--qat-steps", type=int, default=TrainConfig.qat_steps, help="quantisation-aware fine-tuning steps")
    g.add_argument("--train-snr", default="47.4", help="training SNR in dB, or lo,hi for a range")
    g.add_argument("--bits", type=int, default=8, help="weight/activation bits of the integer model")
    g.add_argument("--seed", type=int, default=0)
    g = common.add_argument_group("evaluation and accelerator")
    g.add_argument("--snr-db", type=float, default=47.4, help="SNR of the test pulses (dB)")
    g.add_argument("--n-test", type=int, default=20000, help="test pulses per point")
    g.add_argument("--n-pe", type=int, default=8, help="processing elements")
    g.add_argument("--au-per-pe", type=int, default=8, help="arithmetic units per PE")
    g.add_argument("--clock-mhz", type=float, default=100.0)
    g.add_argument("--det-channels", type=int, default=4, help="detector channels sharing the accelerator")
    g.add_argument("--json", default=None, help="write the results as JSON (- for stdout)")
    p = sub.add_parser("train", parents=[common], help="train and save a model")
    p.add_argument("--out", required=True, help="where to save the trained models (.pt)")
    sub.add_parser("eval", parents=[common], help="all methods at one SNR, beside the paper")
    p = sub.add_parser("sweep", parents=[common], help="resolution vs SNR and vs bits")
    p.add_argument("--snrs", default=DEFAULT_SNRS, help="SNR points (dB)")
    p.add_argument("--adc-bits-list", default="6,7,8,9,10,12,14", help="ADC resolutions")
    p.add_argument("--nn-bits-list", default="4,5,6,7,8", help="weight/activation bit widths")
    p.add_argument("--bits-qat-steps", type=int, default=500, help="fine-tune steps per bit width")
    p.add_argument("--sweep-n-test", type=int, default=10000, help="test pulses per sweep point")
    p.add_argument("--spread", type=float, default=0.02,
                   help="also train and test on pulses whose shape varies by this much (0: skip)")
    p.add_argument("--plot", default=None, help="PNG stem: writes STEM-snr.png and STEM-bits.png")
    return ap


def _progress(desc: str):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    prog = Progress(desc, BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=Console(stderr=True),
                    transient=True)
    prog.start()
    task = prog.add_task(desc, total=None)

    def update(i: int, n: int) -> None:
        prog.update(task, completed=i, total=n)

    return update, prog.stop


def _configs(args):
    """Validate every flag and build the configs, before any work."""
    from .accel import AccelConfig
    from .model import NetConfig, TrainConfig
    from .pulses import PulseConfig

    snr = _floats(args.train_snr, "train-snr")
    if len(snr) not in (1, 2) or min(snr) < 0:
        raise ValueError(f"--train-snr takes one SNR or lo,hi in dB (>= 0), got {args.train_snr!r}")
    if args.snr_db < 0:
        raise ValueError(f"--snr-db must be >= 0 dB, got {args.snr_db}")
    if args.n_test < 100 or args.steps < 0 or args.qat_steps < 1:
        raise ValueError("need --n-test >= 100, --steps >= 0 and --qat-steps >= 1")
    if args.model and not Path(args.model).is_file():
        raise ValueError(f"--model {args.model}: no such file (make one with `ioaware pulsedl train --out FILE`)")
    cfg = PulseConfig(shape=args.shape, tau_ns=args.tau_ns, fs_mhz=args.fs_mhz, adc_bits=args.adc_bits,
                      tau_spread=args.tau_spread)
    chans = tuple(_ints(args.channels, "channels"))
    net = NetConfig(channels=chans, kernels=((5, 5, 3) + (3,) * len(chans))[: len(chans)],
                    pools=((1, 2, 2) + (2,) * len(chans))[: len(chans)], hidden=args.hidden)
    if not 2 <= args.bits <= 8:
        raise ValueError(f"--bits {args.bits}: the engine takes 2..8 bit weights and activations")
    tc = TrainConfig(steps=args.steps, qat_steps=args.qat_steps, snr_db=snr[0] if len(snr) == 1 else tuple(snr),
                     bits=args.bits, seed=args.seed)
    hw = AccelConfig(n_pe=args.n_pe, au_per_pe=args.au_per_pe, clock_mhz=args.clock_mhz, channels=args.det_channels)
    return cfg, net, tc, hw


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    cfg, net, tc, hw = _configs(args)
    sweep = {}
    if args.cmd == "sweep":
        sweep = {"snrs": _floats(args.snrs, "snrs"), "adc": _ints(args.adc_bits_list, "adc-bits-list"),
                 "nn": _ints(args.nn_bits_list, "nn-bits-list")}
        if not sweep["snrs"] or min(sweep["snrs"]) < 0:
            raise ValueError(f"--snrs needs SNRs >= 0 dB, got {args.snrs!r}")
        if any(not 4 <= b <= 16 for b in sweep["adc"]) or any(not 2 <= b <= 8 for b in sweep["nn"]):
            raise ValueError("--adc-bits-list takes 4..16 and --nn-bits-list 2..8")
        if args.sweep_n_test < 100 or args.bits_qat_steps < 1:
            raise ValueError("need --sweep-n-test >= 100 and --bits-qat-steps >= 1")
        if not 0 <= args.spread < 0.2:
            raise ValueError(f"--spread {args.spread}: use 0 (skip) up to 0.2")

    import torch

    from . import experiment as ex
    from .accel import schedule

    out: dict = {"command": "ioaware pulsedl " + " ".join(argv if argv is not None else sys.argv[1:]),
                 "date": RUN_DATE, "machine": platform.machine(), "python": platform.python_version(),
                 "torch": torch.__version__, "paper": ex.PAPER}
    tr = _get_model(args, cfg, net, tc)
    out.update({"pulse": tr.cfg.to_dict(), "net": tr.net.to_dict(), "train": {**vars(tr.tc), **_log(tr.log)}})
    if args.cmd == "train":
        tr.save(args.out)
        print(f"saved {args.out} (trained in {tr.log['seconds']:.0f} s)")
        emit_json(out, args.json)
        return 0
    out["eval"] = ex.evaluate(tr, args.snr_db, args.n_test, args.seed)
    _print_eval(out["eval"], tr)
    out["accelerator"] = schedule(tr.int_model, tr.cfg.n_samples, hw)
    _print_accel(out["accelerator"])
    if args.cmd == "sweep":
        out["sweep"] = _sweeps(args, tr, sweep)
        if args.spread > 0:
            out["shape_spread"] = _spread(args, cfg, net, tc)
        if args.plot:
            from .plots import plot

            for p in plot(args.plot, out):
                print(f"plot: {p}")
    emit_json(out, args.json)
    return 0


def _log(log: dict) -> dict:
    return {"train_seconds": log["seconds"], "final_loss": log["loss"][-1][1] if log["loss"] else None}


def _get_model(args, cfg, net, tc):
    from . import experiment as ex

    if args.model:
        return ex.load(args.model)
    update, stop = _progress("training")
    try:
        return ex.train_all(cfg, tc, net, progress=update)
    finally:
        stop()


def _print_eval(e: dict, tr) -> None:
    from .experiment import PAPER

    b = e["crlb"]
    names = {"cfd": "CFD (phase-corrected)", "template_fit": "least-squares template fit",
             "template_fit_shape": "template fit, shape free", "nn_float": "CNN float",
             "nn_fake_quant": f"CNN fake-quant int{e['nn_bits']} (torch)",
             "nn_int_engine": f"CNN integer engine int{e['nn_bits']} (numpy)"}
    rows = [["Cramer-Rao bound (known shape)", b["time_ps"], "", b["energy_pct"], ""]]
    if "crlb_shape_free" in e:
        rows.append(["Cramer-Rao bound (shape free)", e["crlb_shape_free"]["time_ps"], "",
                     e["crlb_shape_free"]["energy_pct"], ""])
    for k, r in e["methods"].items():
        rows.append([names.get(k, k), r["time_ps"], f"{r['time_ps'] / PAPER['time_ps'] - 1:+.0%}", r["energy_pct"],
                     f"{r['energy_pct'] / PAPER['energy_pct'] - 1:+.0%}"])
    rows.append(["paper (PulseDL-II, FPGA + DDS/ADC)", PAPER["time_ps"], "", PAPER["energy_pct"], ""])
    print_table(f"resolution at {e['snr_db']} dB SNR, {e['n_test']} pulses ({tr.cfg.shape}, {tr.cfg.fs_mhz:g} MS/s, "
                f"{e['adc_bits']}-bit ADC)", ["method", "time (ps)", "vs paper", "energy (%)", "vs paper"], rows)
    x = e["bit_exact"]
    print(f"integer engine vs quantised PyTorch model: {x['equal']}/{x['outputs']} outputs equal; "
          f"widest accumulator {e['accumulator_bits']} bits")


def _print_accel(a: dict) -> None:
    rows = [[x["layer"], x["macs"], x["cycles"], f"{x['utilisation']:.0%}", x["weight_bytes"], x["act_read_bytes"],
             x["act_write_bytes"]] for x in a["layers"]]
    t = a["total"]
    rows.append(["total", t["macs"], t["cycles"], f"{t['utilisation']:.0%}", t["weight_bytes"], t["act_read_bytes"],
                 t["act_write_bytes"]])
    c = a["config"]
    print_table(f"accelerator: {c['n_pe']} PEs x {c['au_per_pe']} AUs at {c['clock_mhz']:g} MHz",
                ["layer", "MACs", "cycles", "util", "weight B", "act read B", "act write B"], rows)
    print(f"latency {t['latency_us']:.2f} us; {t['inferences_per_s'] / 1e3:.0f} k pulses/s; "
          f"{t['events_per_s_per_channel'] / 1e3:.0f} k/s per channel over {c['channels']} channels; "
          f"{t['gops']:.2f} GOPS ({t['gops_per_channel']:.2f} per channel; peak {t['peak_gops']:.1f})")


def _sweeps(args, tr, sweep: dict) -> dict:
    from . import experiment as ex

    res = {}
    update, stop = _progress("SNR sweep")
    try:
        res["snr"] = ex.sweep_snr(tr, sweep["snrs"], args.sweep_n_test, args.seed, progress=update)
    finally:
        stop()
    update, stop = _progress("ADC bits sweep")
    try:
        res["adc_bits"] = ex.sweep_adc_bits(tr, sweep["adc"], args.snr_db, args.sweep_n_test, args.seed,
                                            progress=update)
    finally:
        stop()
    update, stop = _progress("network bits sweep")
    try:
        res["nn_bits"] = ex.sweep_nn_bits(tr, sweep["nn"], args.snr_db, args.sweep_n_test, args.seed,
                                          args.bits_qat_steps, progress=update)
    finally:
        stop()
    for key, label, col in (("snr", "SNR (dB)", "snr_db"), ("adc_bits", "ADC bits", "adc_bits"),
                            ("nn_bits", "network bits", "nn_bits")):
        rows = []
        for e in res[key]:
            m = e["methods"]
            fit = m.get("template_fit", {})
            rows.append([e[col], e["crlb"]["time_ps"], m["cfd"]["time_ps"], fit.get("time_ps", ""),
                         m["nn_int_engine"]["time_ps"], e["crlb"]["energy_pct"], m["cfd"]["energy_pct"],
                         fit.get("energy_pct", ""), m["nn_int_engine"]["energy_pct"]])
        print_table(f"resolution vs {label} (time ps | energy %)", [label, "t CRLB", "t CFD", "t fit", "t engine",
                                                                   "E CRLB", "E CFD", "E fit", "E engine"], rows)
    return res


def _spread(args, cfg, net, tc) -> dict:
    """A second condition: the pulse shape varies from pulse to pulse (which a fixed template does not know)."""
    from . import experiment as ex

    scfg = cfg.with_(tau_spread=args.spread)
    update, stop = _progress(f"training on {args.spread:.0%} shape spread")
    try:
        tr = ex.train_all(scfg, tc, net, progress=update)
    finally:
        stop()
    e = ex.evaluate(tr, args.snr_db, args.n_test, args.seed, fit_shape=True)
    _print_eval(e, tr)
    return {"tau_spread": args.spread, "train": _log(tr.log), "eval": e}
