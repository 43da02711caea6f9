"""FlashSVD's kernels compiled on a CUDA GPU at real sizes (run on the device machine: `pytest -m gpu tests/gpu`).

Tolerance rule: the kernel's error against an fp32 reference is at most 2x (+ a floor) the error of plain PyTorch
running the same factors unfused in bf16."""

from pathlib import Path

import pytest
import torch

from ioaware.kernels import last_backend
from ioaware.kernels.lowrank import lowrank_attn, lowrank_attn_ref, lowrank_ffn, lowrank_swiglu, lowrank_swiglu_ref

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def rel_rms(a, b):
    a, b = a.double(), b.double()
    return ((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt()).item()


def _rope(S, D, base=10000.0):
    inv = 1.0 / (base ** (torch.arange(0, D, 2, dtype=torch.float64, device="cuda") / D))
    ang = torch.outer(torch.arange(S, dtype=torch.float64, device="cuda"), inv)
    return ang.cos().float(), ang.sin().float()


@pytest.mark.parametrize("B,Tq,Tk,Hq,Hkv,D,R,seqlens", [
    pytest.param(2, 1000, 1000, 8, 8, 128, 32, False, id="B2-T1000-H8-D128-R32"),
    pytest.param(1, 777, 777, 8, 2, 64, 38, False, id="B1-T777-GQA4-D64-R38"),
    pytest.param(3, 1, 2048, 8, 2, 128, 32, True, id="B3-decode-L2048-seqlens"),
    pytest.param(1, 300, 1300, 4, 4, 128, 96, False, id="B1-Tq300-Tk1300-R96"),
])
def test_lowrank_attn_gpu(B, Tq, Tk, Hq, Hkv, D, R, seqlens):
    g = torch.Generator(device="cuda").manual_seed(0)

    def r(*s, scale=1.0):
        return (torch.randn(*s, device="cuda", generator=g) * scale).to(torch.bfloat16)

    ts = (r(B, Tq, Hq, R), r(Hq, R, D, scale=R ** -0.5), r(B, Tk, Hkv, R), r(Hkv, R, D, scale=R ** -0.5),
          r(B, Tk, Hkv, R), r(Hkv, R, D, scale=R ** -0.5))
    rope = _rope(Tk, D)
    lens = torch.randint(Tk // 2, Tk, (B,), device="cuda", dtype=torch.int32) if seqlens else None
    o = lowrank_attn(*ts, causal=True, rope=rope, cache_seqlens=lens, schedule="fused")  # slab: its own file
    assert last_backend("lowrank_attn") == "triton"
    ref = lowrank_attn_ref(*(t.float() for t in ts), causal=True, rope=rope, cache_seqlens=lens)
    base = rel_rms(lowrank_attn_ref(*ts, causal=True, rope=rope, cache_seqlens=lens, upcast=False), ref)
    assert rel_rms(o, ref) <= 2 * base + 2e-3


@pytest.mark.parametrize("M,F,RG,RU,R2", [
    pytest.param(4096, 11008, 256, 256, 256, id="M4096-F11008-R256"),
    pytest.param(1000, 1536, 346, 346, 346, id="M1000-F1536-R346-smollm2"),
    pytest.param(3, 2000, 100, 60, 90, id="M3-decode-F2000"),
])
@pytest.mark.parametrize("schedule", ["fused", "slab"])
def test_lowrank_swiglu_gpu(M, F, RG, RU, R2, schedule):
    g = torch.Generator(device="cuda").manual_seed(1)

    def r(*s, scale=1.0):
        return (torch.randn(*s, device="cuda", generator=g) * scale).to(torch.bfloat16)

    ts = (r(M, RG), r(M, RU), r(RG, F, scale=RG ** -0.5), r(RU, F, scale=RU ** -0.5), r(F, R2, scale=F ** -0.5))
    s = lowrank_swiglu(*ts, schedule=schedule, slab_rows=1500)
    assert last_backend("lowrank_swiglu") == f"triton:{schedule}"
    ref = lowrank_swiglu_ref(*(t.float() for t in ts))
    base = rel_rms(lowrank_swiglu_ref(*ts, upcast=False), ref)
    assert rel_rms(s, ref) <= 2 * base + 2e-3


def test_lowrank_ffn_peak_memory_stays_below_one_intermediate():
    """The point of the fusion: no (M, F) gate, up or hidden tensor of the whole batch is ever allocated."""
    M, d, F, R = 16384, 1024, 4096, 256
    x = torch.randn(M, d, device="cuda", dtype=torch.bfloat16)
    fs = [torch.randn(*s, device="cuda", dtype=torch.bfloat16) * s[0] ** -0.5
          for s in ((d, 2 * R), (R, F), (R, F), (F, R), (R, d))]
    for schedule in ("fused", "slab"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        y = lowrank_ffn(x, *fs, schedule=schedule, slab_rows=2048)
        torch.cuda.synchronize()
        transient = torch.cuda.max_memory_allocated() - base
        assert transient < M * F * 2, f"{schedule}: {transient / 2**20:.0f} MiB, one (M, F) tensor is " \
                                      f"{M * F * 2 / 2**20:.0f} MiB"
        del y


def _hf_state_dict(a, seed=0):
    """Random weights under Hugging Face Llama names (what a checkpoint loader returns)."""
    g = torch.Generator().manual_seed(seed)
    d, H, Hkv, D, F = a.dim, a.n_heads, a.n_kv_heads, a.head_dim, a.hidden_dim
    sd = {"model.embed_tokens.weight": torch.randn(a.vocab_size, d, generator=g) * 0.5,
          "model.norm.weight": torch.ones(d)}
    for i in range(a.n_layers):
        p = f"model.layers.{i}."
        for n, shape in (("self_attn.q_proj", (H * D, d)), ("self_attn.k_proj", (Hkv * D, d)),
                         ("self_attn.v_proj", (Hkv * D, d)), ("self_attn.o_proj", (d, H * D)),
                         ("mlp.gate_proj", (F, d)), ("mlp.up_proj", (F, d)), ("mlp.down_proj", (d, F))):
            sd[p + n + ".weight"] = torch.randn(*shape, generator=g) * shape[1] ** -0.5
        sd[p + "input_layernorm.weight"] = torch.ones(d)
        sd[p + "post_attention_layernorm.weight"] = torch.ones(d)
    return sd


def test_compressed_model_on_cuda_matches_cpu():
    """Factors of a SmolLM2-shaped model run on CUDA through the fused kernels (prefill, the rank-space KV cache,
    the static decode step) and agree with the CPU run of the same factors (the PyTorch reference)."""
    from types import SimpleNamespace

    from ioaware.runtime import ModelArgs
    from ioaware.runtime.compress import build_lowrank_model, factorize_checkpoint

    a = ModelArgs(dim=576, n_layers=2, n_heads=9, n_kv_heads=3, hidden_dim=1536, vocab_size=1000, max_seq_len=512)
    tensors, ranks, _ = factorize_checkpoint(
        SimpleNamespace(args=a, state_dict=_hf_state_dict(a), format="hf", path=Path("synthetic")), 0.6)
    ids = torch.randint(0, a.vocab_size, (1, 300))
    cpu = build_lowrank_model(a, ranks, tensors, "cpu", torch.float32)
    gpu = build_lowrank_model(a, ranks, tensors, "cuda", torch.float32)
    with torch.inference_mode():
        cpu.setup_cache(1, 320)
        gpu.setup_cache(1, 320)
        ref = cpu(ids, 0)
        out = gpu(ids.cuda(), 0)
        assert last_backend("lowrank_attn") == "triton"
        assert last_backend("lowrank_swiglu").startswith("triton")
        assert rel_rms(out.cpu(), ref) < 1e-3  # tf32-free fp32 kernels vs the fp32 reference
        nxt = ids[:, :1]
        step = gpu.decode_static(nxt.cuda(), torch.tensor([300], device="cuda"))
        assert rel_rms(step.cpu(), cpu(nxt, 300)) < 1e-3
