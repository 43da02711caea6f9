"""A SYNTHETIC neuron trace with the statistics LLM in a flash reports for OPT-6.7B (ReLU, 97% sparse),
for `ioaware bench offload-replay`: per layer and token, the predictor selects 10% of the FFN's neurons, and 76%
of them were used by one of the last 5 tokens, so a 5-token window leaves 2.4% of the FFN to load per token (the paper's
"about 10% with the predictor alone, 2.4% with windowing"). No model produced it: it shows what the reader and the
window cache do at ReLU-level sparsity, nothing about any model's quality.

    ioaware bench synthetic-trace --out /tmp/opt_like.npz [--tokens 24] [--active 0.10] [--new 0.24]
"""

from __future__ import annotations

import argparse
from collections import deque

import numpy as np


def synthetic_trace(tokens: int, layers: int, hidden: int, active: float, new: float, window: int = 5,
                    seed: int = 0) -> list[tuple[int, np.ndarray]]:
    """[(layer, sorted ids)] in decode order: token-major, layer-minor (the order bench_flash --trace writes)."""
    rng = np.random.default_rng(seed)
    k = max(1, round(active * hidden))
    k_new = round(new * k)
    recent = [deque(maxlen=window) for _ in range(layers)]
    out = []
    for _ in range(tokens):
        for layer in range(layers):
            union = np.unique(np.concatenate(list(recent[layer]))) if recent[layer] else np.array([], np.int64)
            n_old = min(k - k_new, len(union)) if len(union) else 0
            old = rng.choice(union, n_old, replace=False) if n_old else np.array([], np.int64)
            rest = np.setdiff1d(np.arange(hidden), old)
            fresh = rng.choice(rest, k - n_old, replace=False)
            ids = np.sort(np.concatenate([old, fresh])).astype(np.int32)
            recent[layer].append(ids)
            out.append((layer, ids))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="ioaware bench synthetic-trace", description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--tokens", type=int, default=24)
    ap.add_argument("--layers", type=int, default=30, help="layers of the trace (replay maps them onto the model's)")
    ap.add_argument("--hidden", type=int, default=1536, help="neurons per layer of the trace (replay groups them)")
    ap.add_argument("--active", type=float, default=0.10, help="fraction of neurons selected per token and layer")
    ap.add_argument("--new", type=float, default=0.24, help="fraction of a token's set not used in the window")
    ap.add_argument("--window", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    tr = synthetic_trace(a.tokens, a.layers, a.hidden, a.active, a.new, a.window, a.seed)
    np.savez_compressed(a.out, layers=np.array([t[0] for t in tr]), hidden=a.hidden, synthetic=True,
                        **{f"ids{i}": t[1] for i, t in enumerate(tr)})
    print(f"wrote {a.out}: {a.tokens} tokens x {a.layers} layers, {a.active:.0%} active, {a.new:.0%} new per token")
    return 0

