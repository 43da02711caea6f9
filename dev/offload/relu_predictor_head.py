"""Which predictor head for a ReLU model: 'none' (B A x + b, starts at the gate's rank-r SVD) or the paper's 'relu'
(B relu(A x) + b)? SmolLM2-135M with its SiLU swapped for ReLU (no adapter: the label's shape, gate x > 0, is what
matters), FFN inputs of 3000 tokens of the calibration text, rank 64, 2 epochs, cut at 95% recall on held-out tokens.
Fewer neurons predicted at the same recall = fewer bytes read.

    .venv/bin/python dev/offload/relu_predictor_head.py
    -> benchmarks/results/relu-predictor-head-smollm2-cpu-2026-12-03.json
"""

import platform
import time

import torch

from ioaware.files import write_json_atomic
from ioaware.runtime import build_model, load_checkpoint
from ioaware.runtime.llm.model import gate_activation
from ioaware.runtime.offload.activations import collect_ffn_inputs
from ioaware.runtime.offload.predictors import train_predictors
from ioaware.runtime.offload.text import load_text, token_batches

OUT = "benchmarks/results/relu-predictor-head-smollm2-cpu-2026-12-03.json"


def main() -> None:
    torch.set_num_threads(1)
    ck = load_checkpoint()
    m = build_model(ck, "cpu", torch.float32, "dense")
    m.args.ffn_act = "relu"
    for layer in m.layers:
        layer.feed_forward.act = gate_activation("relu")
    bs = token_batches(ck.tokenizer, load_text("calibration"), 256, max_tokens=3000)
    inputs = collect_ffn_inputs(m, bs, max_tokens=3000)
    heads = {}
    for head in ("none", "relu"):
        t0 = time.perf_counter()
        p = train_predictors(m, bs, torch.zeros(m.args.n_layers), rank=64, epochs=2, activation=head, inputs=inputs,
                             progress=False)
        L = p.meta["layers"]
        heads[head] = {k: sum(x[k] for x in L) / len(L) for k in ("predicted_frac", "active_frac", "recall",
                                                                     "precision")}
        heads[head]["train_s"] = time.perf_counter() - t0
        heads[head]["per_layer"] = L
        print(head, {k: v for k, v in heads[head].items() if k != "per_layer"}, flush=True)
    write_json_atomic(OUT, {"what": __doc__.strip().splitlines()[0], "model": str(ck.path), "tokens": 3000,
                            "rank": 64, "epochs": 2, "target_recall": 0.95, "heads": heads,
                            "machine": platform.node(), "cpu": platform.processor(), "torch": torch.__version__,
                            "date": time.strftime("%Y-%m-%d %H:%M:%S")})


if __name__ == "__main__":
    main()
