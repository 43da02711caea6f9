"""What the swap alone does to SmolLM2 (no training): the gate's value distribution per layer (which sets how many
zeros a shift buys), and held-out perplexity and sparsity of each activation swapped in abruptly. Motivates
`ioaware relufy`'s defaults: the shift, the L1 steering and the gradual (blended) swap (dev/relufy/README.md).

    python dev/relufy/zero_shot.py --out dev/relufy/zero-shot-cpu-2026-12-03.json     # minutes on 2 busy cores
"""

from __future__ import annotations

import argparse
import time

import torch

from ioaware.files import write_json_atomic
from ioaware.runtime import build_model, load_checkpoint
from ioaware.runtime.compress.evaluate import perplexity
from ioaware.runtime.offload.activations import run_tokens, sdpa_attention
from ioaware.runtime.offload.text import load_text, token_batches
from ioaware.runtime.relufy.adapter import Adapter
from ioaware.runtime.relufy.evaluate import layer_sparsity
from ioaware.runtime.relufy.student import apply_adapter

SHIFTS = (0.0, 0.25, 0.5, 1.0)
SWAPS = (("relu", 0.0), ("shifted_relu", 0.25), ("shifted_relu", 0.5), ("relu2", 0.0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=512, help="held-out tokens (256-token chunks)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    t0 = time.perf_counter()
    ck = load_checkpoint()
    model = build_model(ck, "cpu", torch.float32, weights="dense")
    batches = token_batches(ck.tokenizer, load_text("heldout"), 256, max_tokens=args.tokens)
    gates: list[list[torch.Tensor]] = [[] for _ in model.layers]
    hooks = [layer.feed_forward.w13.register_forward_hook(
        lambda m, a, o, i=i: gates[i].append(o[..., :o.shape[-1] // 2].reshape(-1, o.shape[-1] // 2)))
        for i, layer in enumerate(model.layers)]
    with torch.inference_mode(), sdpa_attention(model):
        for b in batches:
            run_tokens(model, b)
    for h in hooks:
        h.remove()
    layers = []
    for i, g in enumerate(gates):
        g = torch.cat(g).flatten()
        layers.append({"layer": i, "std": float(g.std()),
                       "fraction_below": {f"{s:g}": float((g <= s).float().mean()) for s in SHIFTS}})
    base = perplexity(model, batches)
    swaps = []
    for act, shift in SWAPS:
        student = apply_adapter(build_model(ck, "cpu", torch.float32, weights="dense"), Adapter(act, shift, 0, "", {}))
        sp, _ = layer_sparsity(student, batches)
        ppl = perplexity(student, batches)["ppl"]
        swaps.append({"activation": act, "shift": shift, "ppl": ppl, "ppl_ratio": ppl / base["ppl"],
                      "sparsity_mean": sum(sp) / len(sp), "sparsity_per_layer": sp})
        print(f"{act} {shift:g}: ppl {ppl:.2f} ({ppl / base['ppl']:.1f}x), sparsity {sum(sp) / len(sp):.3f}")
    res = {"model": ck.path.name, "text": "ioaware/runtime/offload/data/heldout.txt", "tokens": base["tokens"],
           "ppl_original": base["ppl"], "swaps_untrained": swaps, "gate_per_layer": layers,
           "mean_fraction_below": {f"{s:g}": sum(x["fraction_below"][f"{s:g}"] for x in layers) / len(layers)
                                   for s in SHIFTS},
           "torch": torch.__version__, "device": "cpu", "seconds": time.perf_counter() - t0}
    print(f"original ppl {base['ppl']:.2f}; mean fraction of gate values below s: {res['mean_fraction_below']}")
    write_json_atomic(args.out, res)


if __name__ == "__main__":
    main()
