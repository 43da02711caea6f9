"""Predictors on the relufied SmolLM2 (shipped adapter): the old rank-64 linear head (95% recall) against the gate copy
(gate_copy.py: the gate in 4 bits, a per-layer cut) at several recall targets. Per predictor, on the held-out text
(never calibrated on), with the 5-token window a streamed run has: neurons predicted per token against those that
fire, the fraction of firing neurons missed, and top-1 agreement / KL / mean |logit diff| against the same relufied
model run dense in memory (fp32).

    .venv/bin/python dev/offload/relu_predictor_recall.py [old-head predictor file]
    -> benchmarks/results/relu-predictor-recall-smollm2-cpu-2026-12-03.json
"""

import os
import platform
import sys
import time

import torch

from ioaware.files import write_json_atomic
from ioaware.runtime import build_model
from ioaware.runtime.offload.activations import collect_ffn_inputs
from ioaware.runtime.offload.evaluate import evaluate
from ioaware.runtime.offload.gate_copy import train_gate_copy
from ioaware.runtime.offload.predictors import Predictors, train_predictors
from ioaware.runtime.offload.text import load_text, token_batches
from ioaware.runtime.relufy.apply import SHIPPED, load_relufied

OUT = "benchmarks/results/relu-predictor-recall-smollm2-cpu-2026-12-03.json"
KEEP = ("tokens", "ppl_dense", "ppl_ratio_windowed", "ppl_ratio_predicted", "top1_agreement_windowed",
        "top1_agreement_predicted", "kl_vs_dense_windowed", "logit_mean_abs_diff_windowed", "kl_vs_dense_predicted",
        "recall", "precision", "predicted_frac", "active_frac", "used_frac", "predictor_rank")


def summary(p: Predictors, ev: dict, secs: float) -> dict:
    out = {k: ev.get(k) for k in KEEP}
    out["missed_firing_frac"] = 1 - ev["recall"]
    out["window5_loaded_frac_per_token"] = ev["window"]["5"]["loaded_frac_per_token"]
    out["resident_bytes"] = p.to(dtype=torch.float16).nbytes()
    out["fit_s"] = secs
    out["recall_per_layer"] = ev["recall_per_layer"]
    out["predicted_frac_per_layer"] = ev["predicted_frac_per_layer"]
    return out


def main() -> None:
    torch.set_num_threads(2)
    load0 = os.getloadavg()
    ck = load_relufied(None, SHIPPED)
    m = build_model(ck, "cpu", torch.float32, "dense")
    calib = token_batches(ck.tokenizer, load_text("calibration"), 256, max_tokens=8000)  # as train_for_store
    held = token_batches(ck.tokenizer, load_text("heldout"), 256, max_tokens=1024)
    inputs = collect_ffn_inputs(m, calib, max_tokens=8000)
    th = torch.zeros(m.args.n_layers)
    cases = {}
    t0 = time.perf_counter()
    if len(sys.argv) > 1:  # the predictor file the earlier run used (~/.cache/ioaware/predictors/969d...-s0.2-r64)
        old, src = Predictors.load(sys.argv[1], None), sys.argv[1]
    else:
        old, src = train_predictors(m, calib, th, rank=64, inputs=inputs, progress=False), "trained here"
    cases["lowrank64_recall0.95"] = summary(old, evaluate(m, held, th, old.to(dtype=torch.float16)
                                                          .to(dtype=torch.float32), window=5),
                                            time.perf_counter() - t0)
    cases["lowrank64_recall0.95"]["source"] = src
    print("lowrank64", {k: v for k, v in cases["lowrank64_recall0.95"].items() if "per_layer" not in k}, flush=True)
    for r in (0.95, 0.98, 0.99, 0.995):
        t0 = time.perf_counter()
        p = train_gate_copy(m, target_recall=r, inputs=inputs, progress=False)
        secs = time.perf_counter() - t0
        name = f"gate_q4_recall{r:g}"
        cases[name] = summary(p, evaluate(m, held, th, p.to(), window=5), secs)
        print(name, {k: v for k, v in cases[name].items() if "per_layer" not in k}, flush=True)
    write_json_atomic(OUT, {"what": __doc__.strip().splitlines()[0], "model": str(ck.path), "adapter": str(SHIPPED),
                            "calibration_tokens": int(inputs[0].shape[0]), "window": 5, "cases": cases,
                            "machine": "2-core VM (CPU only)", "node": platform.node(), "torch": torch.__version__,
                            "load_average_before": load0, "load_average_after": os.getloadavg(),
                            "date": time.strftime("%Y-%m-%d %H:%M:%S")})


if __name__ == "__main__":
    main()
