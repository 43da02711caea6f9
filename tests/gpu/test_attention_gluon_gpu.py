"""The Gluon forward (flash/gluon_fwd.py, FA3's schedule) on an sm_90 GPU with Triton 3.6: every variant of its
bisection ladder against an fp32 reference with the 2x-of-PyTorch rule, ragged T (1000: the last key tile masked,
the last query tile's rows past T not stored), causal and not, GQA, D 128 and 64, outputs poisoned; the gate and the
opt-in dispatch. One variant: `pytest -m gpu tests/gpu/test_attention_gluon_gpu.py -k fa3_s2` (names in
gluon_fwd.VARIANTS are distinct as substrings)."""

import math

import pytest
import torch

from ioaware.kernels.attention.flash.gluon_gate import gluon_refusal, triton_refusal
from ioaware.kernels.attention.flash.reference import attention_ref

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

VARIANTS = ["fa3_s2", "fa3_s3", "coop", "one_wg", "simple"]  # gluon_fwd.VARIANTS, listed without importing it


def _gluon_or_skip():
    if torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("needs a Hopper (sm_90) GPU")
    reason = triton_refusal()
    if reason is not None:
        pytest.skip(reason)
    from ioaware.kernels.attention.flash import gluon_fwd

    assert sorted(gluon_fwd.VARIANTS) == sorted(VARIANTS)
    return gluon_fwd


def _inputs(B, T, Hq, Hkv, D, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return [torch.randn(B, T, h, D, device="cuda", generator=g).to(torch.bfloat16) for h in (Hq, Hkv, Hkv)]


def _check_fwd(o, lse, q, k, v, causal):
    """Max error against fp32 at most 2x plain PyTorch's bf16 error, plus one bf16 rounding of the result."""
    ref, lse_ref = attention_ref(q.float(), k.float(), v.float(), causal)
    pt, _ = attention_ref(q, k, v, causal, upcast=False)
    assert not o.isnan().any() and not lse.isnan().any(), "unwritten (NaN-poisoned) output elements"
    e, e_pt = (o.float() - ref).abs().max().item(), (pt.float() - ref).abs().max().item()
    atol = 2 * (ref.bfloat16() + 0.3 - 0.3 - ref.bfloat16()).abs().max().item()
    assert e <= 2 * e_pt + atol, f"max error {e:.3g}, PyTorch bf16 {e_pt:.3g}"
    assert (lse - lse_ref).abs().max().item() < 1e-3


CASES = [  # B, T, Hq, Hkv, D, causal; smallest first (a compile error shows on the first)
    pytest.param(1, 128, 1, 1, 128, False, id="B1-T128-H1-D128"),
    pytest.param(3, 77, 2, 2, 128, True, id="B3-T77-H2-D128-causal"),
    pytest.param(2, 1000, 4, 4, 128, False, id="B2-T1000-H4-D128"),
    pytest.param(2, 1000, 4, 4, 128, True, id="B2-T1000-H4-D128-causal"),
    pytest.param(1, 4096, 4, 4, 128, False, id="B1-T4096-H4-D128"),
    pytest.param(1, 4096, 4, 4, 128, True, id="B1-T4096-H4-D128-causal"),
    pytest.param(1, 4096, 8, 2, 128, False, id="B1-T4096-H8-Hkv2-D128"),
    pytest.param(2, 1000, 4, 1, 64, True, id="B2-T1000-H4-MQA-D64-causal"),
    pytest.param(1, 4096, 2, 2, 64, False, id="B1-T4096-H2-D64"),
]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("B,T,Hq,Hkv,D,causal", CASES)
def test_gluon_fwd(variant, B, T, Hq, Hkv, D, causal, poison):
    gluon_fwd = _gluon_or_skip()
    q, k, v = _inputs(B, T, Hq, Hkv, D, T + D + Hq)
    o, lse = gluon_fwd.gluon_flash_attn_fwd(q, k, v, causal, 1 / math.sqrt(D), variant=variant)
    _check_fwd(o, lse, q, k, v, causal)


@pytest.mark.parametrize("variant", VARIANTS)
def test_gluon_fwd_is_deterministic(variant):
    """Same inputs, same bits: the schedule has no atomics and each output row has one writer."""
    gluon_fwd = _gluon_or_skip()
    q, k, v = _inputs(2, 1000, 4, 4, 128, 3)
    a = gluon_fwd.gluon_flash_attn_fwd(q, k, v, True, 0.1, variant=variant)
    b = gluon_fwd.gluon_flash_attn_fwd(q, k, v, True, 0.1, variant=variant)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_gate_accepts_here_and_refuses_fp16():
    _gluon_or_skip()
    q, k, v = _inputs(1, 256, 2, 2, 128, 0)
    assert gluon_refusal(q, k, v) is None
    assert "bf16 only" in gluon_refusal(q.half(), k.half(), v.half())
    assert "head_dim" in gluon_refusal(*(t[..., :96].contiguous() for t in (q, k, v)))


@pytest.mark.parametrize("variant", VARIANTS)
def test_flash_attn_opt_in_dispatches_gluon(variant, monkeypatch):
    """IOAWARE_GLUON=1: the public op's forward runs gluon_fwd (its DEFAULT_VARIANT, set here to the variant under
    test); kernel.py's backward takes its LSE, and the gradients pass the same 2x rule."""
    gluon_fwd = _gluon_or_skip()
    import ioaware

    monkeypatch.setattr(gluon_fwd, "DEFAULT_VARIANT", variant)
    calls = []
    real = gluon_fwd.gluon_flash_attn_fwd
    monkeypatch.setattr(gluon_fwd, "gluon_flash_attn_fwd", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    monkeypatch.setenv("IOAWARE_GLUON", "1")
    q, k, v = (t.requires_grad_() for t in _inputs(1, 1000, 2, 2, 128, 5))
    do = torch.randn_like(q)
    out = ioaware.flash_attn(q, k, v, causal=True)
    assert calls, "flash_attn did not run the Gluon forward"
    grads = torch.autograd.grad(out, (q, k, v), do)
    qr, kr, vr = (t.detach().float().requires_grad_() for t in (q, k, v))
    ref, _ = attention_ref(qr, kr, vr, True)
    ref_grads = torch.autograd.grad(ref, (qr, kr, vr), do.float())
    qp, kp, vp = (t.detach().clone().requires_grad_() for t in (q, k, v))
    pt, _ = attention_ref(qp, kp, vp, True, upcast=False)
    pt_grads = torch.autograd.grad(pt, (qp, kp, vp), do)
    for name, x, xr, xp in zip(("out", "dq", "dk", "dv"), (out, *grads), (ref, *ref_grads), (pt, *pt_grads)):
        e, e_pt = (x.float() - xr).abs().max().item(), (xp.float() - xr).abs().max().item()
        atol = 2 * (xr.bfloat16() + 0.3 - 0.3 - xr.bfloat16()).abs().max().item()
        assert e <= 2 * e_pt + atol, f"{name}: max error {e:.3g}, PyTorch bf16 {e_pt:.3g}"
    monkeypatch.setenv("IOAWARE_GLUON", "0")
    calls.clear()
    ioaware.flash_attn(q.detach(), k.detach(), v.detach(), causal=True)
    assert not calls, "with IOAWARE_GLUON=0 the Gluon forward must not run"
    monkeypatch.setenv("IOAWARE_GLUON", "auto")  # D 128 runs Gluon (measured faster), D 64 the Triton kernels
    ioaware.flash_attn(q.detach(), k.detach(), v.detach(), causal=True)
    assert calls, "IOAWARE_GLUON=auto at D 128 must run the Gluon forward"
    calls.clear()
    ioaware.flash_attn(*(t.detach()[..., :64].contiguous() for t in (q, k, v)), causal=True)
    assert not calls, "IOAWARE_GLUON=auto at D 64 must run the Triton kernels"
    monkeypatch.delenv("IOAWARE_GLUON")
    ioaware.flash_attn(q.detach(), k.detach(), v.detach(), causal=True)
    assert not calls, "by default (IOAWARE_GLUON unset) the Gluon forward must not run"
