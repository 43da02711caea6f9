"""The predictor of a relufied model: a 4-bit copy of its gate, kept resident, with a per-layer cut.

Why not the low-rank head (predictors.py) there: a relufied neuron fires iff gate_i x > s (s: the shifted ReLU's
shift, 0 for ReLU / ReLU^2), a half-space whose normal is the gate row itself. A rank-64 head sees 64 of the gate's
576 directions: on the shipped SmolLM2 adapter, at 95% recall it predicts 43.7% of the neurons where 13.9% fire
(precision 0.29, benchmarks/results/relu-predictor-recall-smollm2-cpu-2026-12-03.json). The gate quantised to
4-bit groups (GGUF Q4_1's layout, the CPU int4 kernel of llm/quant.py) decides nearly as the real gate does: ~0.55
MiB a layer (2x the rank-64 head's fp16 bytes), and a small per-layer margin below s buys back the quantisation's
misses (98% recall: 14.9% predicted, top-1 agreement with the dense model 99.6%, same file).

Label: act(gate x) > 0 on the model's own FFN inputs. Logit: Wq x - s. Cut per layer: the largest value whose
recall on the calibration tokens is >= target (predictors._tune_cut), so the missed fraction is a chosen number.

Forms of the same predictor (`Predictors` with activation GATE_COPY):
- file form (as trained): A = q (H, dim) uint8 in 0..15, B = scale and w = zero (H, dim/32) fp32, w_gate ~= (q - 8)
  scale + zero; a model whose dim is not a multiple of 32 keeps A = the gate itself (float), B = w = empty. A saved
  file holds the codes two a byte and scale/zero in bf16 (`file_tensors`); `Predictors.load` returns the run form;
- run form (`pack`): A = the int4 kernel's packed weight, B = its (dim/32, H, 2) bf16 scales and zeros, w empty;
  where the kernel is missing, A = the dequantised gate in the run's dtype.
"""

from __future__ import annotations

import torch

from .activations import collect_ffn_inputs
from .gate_q4 import (
    DEFAULT_RECALL,
    FILE_CODES,
    GATE_COPY,
    GROUP,
    dequantize,
    file_tensors,
    from_file,
    gate_shift,
    is_packed,
    logits,
    pack,
    quantize,
)
from .predictors import Predictors, _tune_cut
from .sparse_ffn import ffn_act, gate_weight, is_relu_family

__all__ = ["DEFAULT_RECALL", "FILE_CODES", "GATE_COPY", "GROUP", "dequantize", "file_tensors", "from_file",
           "gate_copy_bytes_estimate", "gate_shift", "is_packed", "logits", "pack", "quantize", "train_gate_copy"]


def train_gate_copy(model, token_batches=None, target_recall: float = DEFAULT_RECALL,
                    max_tokens: int | None = 8000, progress: bool = True, inputs: list[torch.Tensor] | None = None):
    """The gate-copy predictor (py) of a relufied `model` (dense): per layer its gate quantised to 4 bits
    and the cut whose recall of firing neurons on the model's own FFN inputs is >= target_recall. No gradient
    training: the only fitted number is the cut (seconds). Returns `Predictors` (file form) with meta per layer: recall,
    precision, predicted_frac, active_frac, missed_frac (= 1 - recall)."""
    a = model.args
    if not is_relu_family(getattr(a, "ffn_act", "silu")):
        raise ValueError(f"the gate-copy predictor is for relufied models (exact zeros); this one's FFN activation is "
                         f"{getattr(a, 'ffn_act', 'silu')!r}: use train_predictors")
    if not 0 < target_recall <= 1:
        raise ValueError(f"target_recall must be in (0, 1], got {target_recall}")
    if inputs is None:
        inputs = collect_ffn_inputs(model, token_batches, max_tokens=max_tokens, progress=progress)
    s = gate_shift(a)
    As, Bs, bs, ws, report = [], [], [], [], []
    cuts = torch.empty(a.n_layers)
    for i in range(a.n_layers):
        ffn = model.layers[i].feed_forward
        W = gate_weight(ffn)  # (H, dim) fp32
        x = inputs[i].float()
        with torch.no_grad():
            y = ffn_act(ffn)(x @ W.T) > 0  # the exact firing set
            if W.shape[1] % GROUP == 0:
                A, B, w = quantize(W)
            else:
                A, B, w = W.clone(), torch.empty(0), torch.empty(0)
            b = torch.full((W.shape[0],), -s)
            run = pack(A, B, w)  # cut tuned on the logits the run computes (int4 kernel, bf16 activations)
            cuts[i], stats = _tune_cut(logits(x, *run, b), y, target_recall)
        stats["missed_frac"] = 1 - stats["recall"]
        report.append(stats)
        As.append(A)
        Bs.append(B)
        ws.append(w)
        bs.append(b)
    meta = {"rank": a.dim, "activation": GATE_COPY, "target_recall": target_recall, "shift": s,
            "group": GROUP, "calibration_tokens": int(inputs[0].shape[0]), "layers": report}
    return Predictors(As, Bs, bs, ws, cuts, torch.zeros(a.n_layers), GATE_COPY, meta)


def gate_copy_bytes_estimate(args) -> int:
    """Resident bytes of the run form for a model of these args (int4 gate + bf16 scale/zero + fp32 bias and cut)."""
    H, d, L = args.hidden_dim, args.dim, args.n_layers
    per = H * d // 2 + H * (d // GROUP) * 2 * 2 if d % GROUP == 0 else H * d * 2
    return L * (per + H * 4)
