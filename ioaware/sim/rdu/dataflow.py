"""Operator fusion on the SN40L: one decoder layer as a streaming dataflow pipeline vs kernel by kernel.

A Llama decoder layer, tensor-parallel over `sockets` (weights, heads and the FFN split evenly), is 14 operators.

- Kernel by kernel (unfused): each operator is a kernel that reads its inputs from HBM and writes its outputs back,
  pays a kernel boundary (`kernel_overhead_s`), and takes max(FLOPs / compute, bytes / HBM bandwidth). Attention
  materialises the score matrix in HBM, as an unfused softmax must.
- Fused: the whole layer is one graph on the PCU/PMU array; operators overlap as a pipeline and intermediates stay in
  PMU SRAM, so the layer takes max(all FLOPs / compute, weights + KV cache / HBM bandwidth) plus one launch. An
  intermediate larger than half the SRAM is spilled (its write and read go to HBM), which keeps the model honest for
  long prefills.

Both sides use the same efficiencies (`gemm_eff`, `mem_eff`), so their ratio isolates what fusion changes. Not
modelled: the tensor-parallel all-reduces between sockets (the same in both), the overlap of a kernel's overhead with
its predecessor's tail.
"""

from __future__ import annotations

from dataclasses import dataclass

from .spec import LlamaShape, RduSocket


@dataclass(frozen=True)
class Op:
    name: str
    flops: float
    weight_bytes: float  # streamed from HBM in both modes
    kv_bytes: float  # KV cache read from HBM in both modes
    act_in: float  # activations read (HBM unfused; SRAM fused)
    act_out: float  # activations written (HBM unfused; SRAM fused)


@dataclass(frozen=True)
class Workload:
    name: str
    model: LlamaShape
    tokens: int  # new tokens per step through the layer (decode: batch; prefill: prompt length)
    context: int  # tokens attended to (KV length)
    prefill: bool
    sockets: int = 8


def layer_ops(w: Workload) -> list[Op]:
    m, S, T, L, b = w.model, w.sockets, w.tokens, w.context, 2
    d, ff, hd = m.d_model, m.d_ff, m.d_head
    kv = m.n_kv_heads * hd
    h = m.n_heads / S  # heads on this socket
    qkv = (d + 2 * kv) / S
    att_pairs = T * L / 2 if w.prefill else T * L  # causal prefill attends to half the square
    kv_read = 0 if w.prefill else 2 * L * kv / S * b  # decode reads the cache; prefill makes K, V itself
    return [
        Op("rmsnorm1", 4 * T * d, 0, 0, T * d * b, T * d * b),
        Op("qkv", 2 * T * d * qkv, d * qkv * b, 0, T * d * b, T * qkv * b),
        Op("rope", 6 * T * (d + kv) / S, 0, 0, T * qkv * b, T * qkv * b),
        Op("scores", 2 * att_pairs * h * hd, 0, kv_read / 2, T * d / S * b, att_pairs * h * b),
        Op("softmax", 5 * att_pairs * h, 0, 0, att_pairs * h * b, att_pairs * h * b),
        Op("pv", 2 * att_pairs * h * hd, 0, kv_read / 2, att_pairs * h * b, T * d / S * b),
        Op("o_proj", 2 * T * d * d / S, d * d / S * b, 0, T * d / S * b, T * d * b),
        Op("residual1", T * d, 0, 0, 2 * T * d * b, T * d * b),
        Op("rmsnorm2", 4 * T * d, 0, 0, T * d * b, T * d * b),
        Op("gate", 2 * T * d * ff / S, d * ff / S * b, 0, T * d * b, T * ff / S * b),
        Op("up", 2 * T * d * ff / S, d * ff / S * b, 0, T * d * b, T * ff / S * b),
        Op("silu_mul", 4 * T * ff / S, 0, 0, 2 * T * ff / S * b, T * ff / S * b),
        Op("down", 2 * T * ff * d / S, ff * d / S * b, 0, T * ff / S * b, T * d * b),
        Op("residual2", T * d, 0, 0, 2 * T * d * b, T * d * b),
    ]


def head_op(w: Workload) -> Op:
    """Final norm + LM head (vocab split over sockets); a prefill computes logits for its last token only."""
    m, S, b = w.model, w.sockets, 2
    t = w.tokens if not w.prefill else 1
    return Op("lm_head", 2 * t * m.d_model * m.vocab / S, m.d_model * m.vocab / S * b, 0, t * m.d_model * b,
              t * m.vocab / S * b)


def _compute_s(flops: float, s: RduSocket) -> float:
    return flops / (s.peak_bf16 * s.gemm_eff)


def _mem_s(nbytes: float, s: RduSocket) -> float:
    return nbytes / (s.hbm_Bps * s.mem_eff)


def unfused_s(w: Workload, s: RduSocket) -> float:
    """One step (all layers + head), kernel by kernel."""
    per_layer = sum(s.kernel_overhead_s + max(_compute_s(o.flops, s),
                                              _mem_s(o.weight_bytes + o.kv_bytes + o.act_in + o.act_out, s))
                    for o in layer_ops(w))
    h = head_op(w)
    head = s.kernel_overhead_s + max(_compute_s(h.flops, s), _mem_s(h.weight_bytes + h.act_in + h.act_out, s))
    return w.model.n_layers * per_layer + head


def fused_s(w: Workload, s: RduSocket) -> float:
    """One step with each decoder layer one streaming graph; spills counted when an intermediate overflows SRAM."""
    ops = layer_ops(w)
    flops = sum(o.flops for o in ops)
    streamed = sum(o.weight_bytes + o.kv_bytes for o in ops)
    spill = sum(2 * o.act_out for o in ops if o.act_out > s.sram_bytes / 2)
    per_layer = s.fused_overhead_s + max(_compute_s(flops, s), _mem_s(streamed + spill, s))
    h = head_op(w)
    head = s.fused_overhead_s + max(_compute_s(h.flops, s), _mem_s(h.weight_bytes, s))
    return w.model.n_layers * per_layer + head


def benchmarks(models: dict[str, LlamaShape], sockets: int = 8) -> list[Workload]:
    """The workloads the fused/unfused comparison runs (the paper's exact benchmark list was not retrieved)."""
    l7, l70, l8 = models["llama-2-7b"], models["llama-2-70b"], models["llama-3.1-8b"]
    return [
        Workload("llama-2-7b decode b1 ctx4k", l7, 1, 4096, False, sockets),
        Workload("llama-2-7b decode b16 ctx4k", l7, 16, 4096, False, sockets),
        Workload("llama-2-7b prefill 4k", l7, 4096, 4096, True, sockets),
        Workload("llama-3.1-8b decode b1 ctx8k", l8, 1, 8192, False, sockets),
        Workload("llama-2-70b decode b1 ctx4k", l70, 1, 4096, False, sockets),
        Workload("llama-2-70b prefill 4k", l70, 4096, 4096, True, sockets),
    ]
