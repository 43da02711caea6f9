"""The low-rank attention's 'slab' schedule compiled on a CUDA GPU at real sizes (run on the device machine:
`pytest -m gpu tests/gpu/test_lowrank_slab_gpu.py`). Tolerance rule: the error against an fp32 reference is at most
2x (+ a floor) that of plain PyTorch running the same factors unfused in bf16. Memory: the slab's transient
buffers stay within interface.SLAB_BYTES (plus the output), far below the unfused path's full-size Q, K, V."""

import pytest
import torch
from test_lowrank_gpu import _rope, rel_rms  # the fused kernel's GPU tests' helpers (this folder is on sys.path)

from ioaware.kernels import last_backend
from ioaware.kernels.lowrank import lowrank_attn, lowrank_attn_ref
from ioaware.kernels.lowrank.interface import SLAB_BYTES

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]




def _inputs(B, Tq, Tk, Hq, Hkv, D, R):
    g = torch.Generator(device="cuda").manual_seed(0)

    def r(*s, scale=1.0):
        return (torch.randn(*s, device="cuda", generator=g) * scale).to(torch.bfloat16)

    return (r(B, Tq, Hq, R), r(Hq, R, D, scale=R ** -0.5), r(B, Tk, Hkv, R), r(Hkv, R, D, scale=R ** -0.5),
            r(B, Tk, Hkv, R), r(Hkv, R, D, scale=R ** -0.5))


@pytest.mark.parametrize("B,Tq,Tk,Hq,Hkv,D,R,heads", [
    pytest.param(2, 1000, 1000, 8, 8, 128, 32, None, id="B2-T1000-H8-D128-R32-auto"),
    # the fused kernel faulted here with 8 warps (Triton 3.6, H200): kernel.attn_num_warps gives D 64 four
    pytest.param(1, 777, 777, 8, 2, 64, 38, 1, id="B1-T777-GQA4-D64-R38-1head"),
    pytest.param(1, 300, 1300, 4, 4, 128, 96, 3, id="B1-Tq300-Tk1300-R96-3heads"),
])
def test_lowrank_attn_slab_gpu(B, Tq, Tk, Hq, Hkv, D, R, heads):
    ts = _inputs(B, Tq, Tk, Hq, Hkv, D, R)
    rope = _rope(Tk, D)
    o = lowrank_attn(*ts, causal=True, rope=rope, schedule="slab", slab_heads=heads)
    assert last_backend("lowrank_attn") == "triton" and last_backend("lowrank_attn_schedule") == "slab"
    ref = lowrank_attn_ref(*(t.float() for t in ts), causal=True, rope=rope)
    base = rel_rms(lowrank_attn_ref(*ts, causal=True, rope=rope, upcast=False), ref)
    assert rel_rms(o, ref) <= 2 * base + 2e-3
    fused = lowrank_attn(*ts, causal=True, rope=rope, schedule="fused")
    assert rel_rms(o, fused) <= 2 * base + 2e-3


def test_slab_transient_memory_is_bounded():
    B, T, H, D, R = 4, 4096, 16, 128, 32
    ts = _inputs(B, T, T, H, H, D, R)
    rope = _rope(T, D)
    out_bytes = B * T * H * D * 2
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    o = lowrank_attn(*ts, causal=True, rope=rope, schedule="slab")
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    assert o.shape == (B, T, H, D)
    assert peak <= out_bytes + SLAB_BYTES + 64 * 2**20, peak  # + flash attention's LSE and the rope tables
    # at this size SLAB_BYTES holds every head at once (as much as the unfused path); with 2 of 16 KV heads per
    # slab the transient buffers are 1/8 of the unfused path's q, k, v (3 x out) and o
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    o = lowrank_attn(*ts, causal=True, rope=rope, schedule="slab", slab_heads=2)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    assert peak < out_bytes + 4 * out_bytes / 8 + 64 * 2**20, peak


@pytest.mark.parametrize("Hkv,R,rope", [(2, 38, True), (2, 38, False), (8, 38, True), (2, 24, True), (2, 50, False),
                                        (1, 40, True)])
def test_fused_kernel_at_head_dim_64(Hkv, R, rope):
    """The shapes around the 8-warp fault at D 64 (dev/compress/diag_lowrank.py): the fused kernel, now at 4 warps
    there, runs and matches the reference (a fault would lose the CUDA context: this test runs last in the file)."""
    ts = _inputs(1, 777, 777, 8, Hkv, 64, R)
    r = _rope(777, 64) if rope else None
    o = lowrank_attn(*ts, causal=True, rope=r, schedule="fused")
    torch.cuda.synchronize()
    ref = lowrank_attn_ref(*(t.float() for t in ts), causal=True, rope=r)
    base = rel_rms(lowrank_attn_ref(*ts, causal=True, rope=r, upcast=False), ref)
    assert rel_rms(o, ref) <= 2 * base + 2e-3
