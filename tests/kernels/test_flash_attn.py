"""flash_attn against an fp64 reference on CPU, through Triton's interpreter (IOAWARE_INTERPRET=1).

Tolerance rule (flash-attention's): the kernel's max error against fp64 must be at most 2x the max error
of plain PyTorch in the same dtype, plus the dtype's rounding at that magnitude.
"""

import pytest
import torch

import ioaware
from ioaware.kernels.attention.flash.reference import attention_ref

CASES = [
    # B, Tq, Tk, Hq, Hkv, D, causal, dtype
    pytest.param(2, 63, 63, 4, 2, 59, False, torch.float32, id="B2-T63-H4-Hkv2-D59-fp32"),
    pytest.param(1, 97, 130, 4, 2, 64, True, torch.bfloat16, id="B1-Tq97-Tk130-H4-Hkv2-D64-causal-bf16"),
    pytest.param(1, 130, 97, 2, 2, 111, True, torch.float16, id="B1-Tq130-Tk97-H2-D111-causal-fp16"),
    pytest.param(2, 1, 63, 4, 1, 64, True, torch.bfloat16, id="B2-Tq1-Tk63-H4-MQA-D64-causal-bf16"),
    pytest.param(1, 1, 1, 1, 1, 16, False, torch.float32, id="B1-T1-H1-D16-fp32"),
    pytest.param(1, 130, 130, 2, 1, 64, False, torch.float16, id="B1-T130-H2-Hkv1-D64-fp16"),
    pytest.param(1, 97, 97, 3, 1, 96, True, torch.float32, id="B1-T97-H3-Hkv1-D96-causal-fp32"),
    pytest.param(1, 63, 97, 2, 2, 111, False, torch.bfloat16, id="B1-Tq63-Tk97-H2-D111-bf16"),
    pytest.param(1, 40, 40, 1, 1, 256, True, torch.float32, id="B1-T40-H1-D256-causal-fp32"),
    pytest.param(1, 33, 20, 2, 1, 8, True, torch.float16, id="B1-Tq33-Tk20-H2-D8-causal-fp16"),
]


def _atol(ref: torch.Tensor, dtype) -> float:
    """The dtype's rounding error at the reference's magnitude."""
    if dtype == torch.float32:
        return 1e-6
    r = ref.detach().to(dtype)
    return 2 * (r + 0.3 - 0.3 - r).abs().max().item()


def _inputs(B, Tq, Tk, Hq, Hkv, D, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Tq, Hq, D, generator=g).to(dtype).requires_grad_()
    k = torch.randn(B, Tk, Hkv, D, generator=g).to(dtype).requires_grad_()
    v = torch.randn(B, Tk, Hkv, D, generator=g).to(dtype).requires_grad_()
    do = torch.randn(B, Tq, Hq, D, generator=g).to(dtype)
    return q, k, v, do


@pytest.mark.parametrize("B,Tq,Tk,Hq,Hkv,D,causal,dtype", CASES)
def test_flash_attn_fwd_bwd(B, Tq, Tk, Hq, Hkv, D, causal, dtype, poison):
    q, k, v, do = _inputs(B, Tq, Tk, Hq, Hkv, D, dtype, seed=Tq * 1000 + Tk + D)
    out, lse = ioaware.flash_attn(q, k, v, causal=causal, return_lse=True)
    assert ioaware.last_backend("flash_attn") == "interpret"
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), do)
    assert ioaware.last_backend("flash_attn_bwd") == "interpret"
    assert out.dtype == dtype and out.shape == q.shape and dk.shape == k.shape

    # fp64 reference and plain PyTorch in the same dtype
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref, lse_ref = attention_ref(q64, k64, v64, causal)
    ref_grads = torch.autograd.grad(ref, (q64, k64, v64), do.double())
    qp, kp, vp = (t.detach().clone().requires_grad_() for t in (q, k, v))
    pt, _ = attention_ref(qp, kp, vp, causal, upcast=False)
    pt_grads = torch.autograd.grad(pt, (qp, kp, vp), do)

    assert not out.isnan().any(), "unwritten or NaN output"
    err, err_pt = (out.double() - ref).abs().max().item(), (pt.double() - ref).abs().max().item()
    assert err <= 2 * err_pt + _atol(ref, dtype), f"out: {err:.3g} vs PyTorch {err_pt:.3g}"
    fin = lse_ref.isfinite()
    assert torch.equal(lse.isfinite(), fin), "rows that see no key must have LSE = -inf"
    assert (lse[fin].double() - lse_ref[fin]).abs().max().item() < 1e-4
    for name, g, gr, gp in zip("qkv", (dq, dk, dv), ref_grads, pt_grads):
        assert not g.isnan().any(), f"d{name} has NaN"
        e, e_pt = (g.double() - gr).abs().max().item(), (gp.double() - gr).abs().max().item()
        assert e <= 2 * e_pt + _atol(gr, dtype), f"d{name}: {e:.3g} vs PyTorch {e_pt:.3g}"


def test_empty_rows_are_zero():
    # Tq > Tk with a causal mask: the first Tq - Tk query rows see no key
    q, k, v, _ = _inputs(1, 50, 20, 2, 2, 32, torch.float32, seed=3)
    out, lse = ioaware.flash_attn(q, k, v, causal=True, return_lse=True)
    assert torch.all(out[:, :30] == 0)
    assert torch.all(lse[:, :, :30] == float("-inf"))
    assert lse[:, :, 30:].isfinite().all()


def test_strided_kv_views():
    # the runtime passes views of a preallocated KV cache: cache[:, :L]
    q, _, _, _ = _inputs(1, 5, 5, 4, 2, 64, torch.float32, seed=4)
    cache = torch.randn(1, 80, 2, 2, 64)  # (B, S, 2, Hkv, D): k and v interleaved, non-contiguous views
    k, v = cache[:, :37, 0], cache[:, :37, 1]
    out = ioaware.flash_attn(q.detach(), k, v, causal=True)
    ref, _ = attention_ref(q.detach().double(), k.double(), v.double(), causal=True)
    assert (out.double() - ref).abs().max() < 1e-5


def test_softmax_scale():
    q, k, v, _ = _inputs(1, 20, 20, 1, 1, 32, torch.float32, seed=5)
    out = ioaware.flash_attn(q.detach(), k.detach(), v.detach(), softmax_scale=0.05)
    ref, _ = attention_ref(q.detach().double(), k.detach().double(), v.detach().double(), softmax_scale=0.05)
    assert (out.double() - ref).abs().max() < 1e-5


def test_reference_backend_without_interpreter(monkeypatch):
    monkeypatch.delenv("IOAWARE_INTERPRET", raising=False)
    q, k, v, _ = _inputs(1, 9, 9, 2, 1, 16, torch.float32, seed=6)
    ioaware.flash_attn(q, k, v)
    assert ioaware.last_backend("flash_attn") == "reference"


def test_torch_compile_traces_without_graph_break():
    q, k, v, do = _inputs(1, 17, 17, 2, 1, 32, torch.float32, seed=7)

    def f(q, k, v):
        return (ioaware.flash_attn(q, k, v, causal=True) * 2).sum()

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    loss = compiled(q, k, v)
    g = torch.autograd.grad(loss, (q, k, v))
    ref = f(q, k, v)
    g_ref = torch.autograd.grad(ref, (q, k, v))
    assert torch.allclose(loss, ref, atol=1e-5)
    for a, b in zip(g, g_ref):
        assert torch.allclose(a, b, atol=1e-5)


def test_reference_backend_backward(monkeypatch):
    # the reference backend's backward runs inside a custom op, where autograd is off: it must still give gradients
    monkeypatch.delenv("IOAWARE_INTERPRET", raising=False)
    q, k, v, do = _inputs(1, 9, 12, 2, 1, 16, torch.float32, seed=8)
    dq, dk, dv = torch.autograd.grad(ioaware.flash_attn(q, k, v, causal=True), (q, k, v), do)
    assert ioaware.last_backend("flash_attn_bwd") == "reference"
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = torch.autograd.grad(attention_ref(q64, k64, v64, True)[0], (q64, k64, v64), do.double())
    for g, r in zip((dq, dk, dv), ref):
        assert (g.double() - r).abs().max() < 1e-5


def test_forward_without_autograd_skips_the_custom_op(monkeypatch):
    """No grad needed and nothing tracing: flash_attn calls the op's body directly (same result, no dispatch);
    with grad it goes through the registered op, so autograd and torch.compile keep working."""
    import ioaware
    from ioaware.kernels.attention.flash import interface as I

    calls = []
    for name in ("_flash_attn_fwd_op", "_flash_attn_masked_fwd_op"):
        real = getattr(I, name)
        monkeypatch.setattr(I, name, lambda *a, real=real, name=name: calls.append(name) or real(*a))
    q = torch.randn(1, 9, 2, 8)
    k = v = torch.randn(1, 9, 2, 8)
    want = [ioaware.flash_attn(q, k, v, causal=c, window_size=w) for c, w in ((True, (-1, -1)), (True, (3, 0)))]
    assert calls == []  # no input requires grad
    qg = q.clone().requires_grad_()
    got = [ioaware.flash_attn(qg, k, v, causal=c, window_size=w) for c, w in ((True, (-1, -1)), (True, (3, 0)))]
    assert calls == ["_flash_attn_fwd_op", "_flash_attn_masked_fwd_op"]
    for a, b in zip(want, got, strict=True):
        torch.testing.assert_close(a, b.detach(), rtol=0, atol=0)
    with torch.no_grad():
        ioaware.flash_attn(qg, k, v, window_size=(2, 2))
    assert len(calls) == 2  # grad mode off: direct again
