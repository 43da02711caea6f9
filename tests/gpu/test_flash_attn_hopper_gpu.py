"""The Hopper forward (hopper.py: TMA, warp specialisation) on an sm_90 GPU: every tile of its table, ragged T, GQA,
causal, fp16 and bf16, against an fp32 reference with the 2x-of-PyTorch rule; and the dispatch from flash_attn."""

import math

import pytest
import torch

import ioaware
from ioaware.kernels.attention.flash.reference import attention_ref

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _hopper_or_skip():
    if torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("needs a Hopper (sm_90) GPU")
    from ioaware.kernels.attention.flash import hopper

    return hopper


def _inputs(B, T, Hq, Hkv, D, dtype, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return [torch.randn(B, T, h, D, device="cuda", generator=g).to(dtype) for h in (Hq, Hkv, Hkv)]


def _check_fwd(o, lse, q, k, v, causal):
    dtype = q.dtype
    ref, lse_ref = attention_ref(q.float(), k.float(), v.float(), causal)
    pt, _ = attention_ref(q, k, v, causal, upcast=False)
    assert not o.isnan().any()
    e, e_pt = (o.float() - ref).abs().max().item(), (pt.float() - ref).abs().max().item()
    atol = 2 * (ref.to(dtype) + 0.3 - 0.3 - ref.to(dtype)).abs().max().item()
    assert e <= 2 * e_pt + atol, f"max error {e:.3g}, PyTorch {dtype} {e_pt:.3g}"
    assert (lse - lse_ref).abs().max().item() < 1e-3


TILES = {  # the table's tiles (hopper._hopper_table) as explicit configs
    "ws_128x128": {"BM": 128, "BN": 128, "num_warps": 4, "STAGES": 2, "WS": True, "ONE_LOOP": True},
    "tma_128x128_w8_s3": {"BM": 128, "BN": 128, "num_warps": 8, "STAGES": 3, "WS": False, "ONE_LOOP": False},
    "tma_128x64_w4_s3": {"BM": 128, "BN": 64, "num_warps": 4, "STAGES": 3, "WS": False, "ONE_LOOP": False},
}
CASES = [  # B, T, Hq, Hkv, D, causal, dtype
    pytest.param(2, 1000, 4, 4, 128, False, torch.bfloat16, id="B2-T1000-H4-D128-bf16"),
    pytest.param(2, 1000, 4, 4, 128, True, torch.bfloat16, id="B2-T1000-H4-D128-causal-bf16"),
    pytest.param(1, 4097, 8, 2, 128, False, torch.bfloat16, id="B1-T4097-H8-Hkv2-D128-bf16"),
    pytest.param(1, 4097, 4, 4, 128, True, torch.float16, id="B1-T4097-H4-D128-causal-fp16"),
    pytest.param(2, 1000, 4, 4, 64, True, torch.bfloat16, id="B2-T1000-H4-D64-causal-bf16"),
    pytest.param(1, 4097, 8, 2, 64, False, torch.float16, id="B1-T4097-H8-Hkv2-D64-fp16"),
    pytest.param(2, 256, 2, 2, 128, True, torch.bfloat16, id="B2-T256-H2-D128-causal-bf16"),
    pytest.param(3, 77, 2, 1, 64, False, torch.bfloat16, id="B3-T77-H2-MQA-D64-bf16"),
]


@pytest.mark.parametrize("tile", list(TILES))
@pytest.mark.parametrize("B,T,Hq,Hkv,D,causal,dtype", CASES)
def test_hopper_fwd_tiles(tile, B, T, Hq, Hkv, D, causal, dtype, poison):
    hopper = _hopper_or_skip()
    q, k, v = _inputs(B, T, Hq, Hkv, D, dtype, T + D)
    o, lse = hopper.hopper_flash_attn_fwd(q, k, v, causal, 1 / math.sqrt(D), config=dict(TILES[tile], REV=causal))
    _check_fwd(o, lse, q, k, v, causal)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_flash_attn_dispatches_hopper_fwd(causal, monkeypatch):
    """At D = 128, T >= HOPPER_MIN_T[causal] the public op's forward runs hopper.py; kernel.py's backward takes its
    LSE."""
    hopper = _hopper_or_skip()
    from ioaware.kernels.attention.flash import kernel

    calls = []
    real = hopper.hopper_flash_attn_fwd
    monkeypatch.setattr(hopper, "hopper_flash_attn_fwd", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    B, T, H, D = 1, kernel.HOPPER_MIN_T[causal], 2, 128
    q, k, v = (t.requires_grad_() for t in _inputs(B, T, H, H, D, torch.bfloat16, 5))
    do = torch.randn_like(q)
    out = ioaware.flash_attn(q, k, v, causal=causal)
    assert calls, "flash_attn did not run the Hopper forward"
    grads = torch.autograd.grad(out, (q, k, v), do)
    qr, kr, vr = (t.detach().float().requires_grad_() for t in (q, k, v))
    ref, _ = attention_ref(qr, kr, vr, causal)
    ref_grads = torch.autograd.grad(ref, (qr, kr, vr), do.float())
    qp, kp, vp = (t.detach().clone().requires_grad_() for t in (q, k, v))
    pt, _ = attention_ref(qp, kp, vp, causal, upcast=False)
    pt_grads = torch.autograd.grad(pt, (qp, kp, vp), do)
    for name, x, xr, xp in zip(("out", "dq", "dk", "dv"), (out, *grads), (ref, *ref_grads), (pt, *pt_grads)):
        e, e_pt = (x.float() - xr).abs().max().item(), (xp.float() - xr).abs().max().item()
        atol = 2 * (xr.bfloat16() + 0.3 - 0.3 - xr.bfloat16()).abs().max().item()
        assert e <= 2 * e_pt + atol, f"{name}: max error {e:.3g}, PyTorch bf16 {e_pt:.3g}"


def test_no_hopper_fwd_below_threshold_or_other_head_dims():
    _hopper_or_skip()
    from ioaware.kernels.attention.flash import kernel

    for causal in (False, True):
        T = kernel.HOPPER_MIN_T[causal]
        q, k, v = _inputs(1, T - 1, 2, 2, 128, torch.bfloat16, 0)
        assert not kernel._use_hopper(q, k, v, causal)
        q, k, v = _inputs(1, T, 2, 2, 64, torch.bfloat16, 0)
        assert not kernel._use_hopper(q, k, v, causal)
        q, k, v = _inputs(1, T, 2, 2, 128, torch.bfloat16, 0)
        assert kernel._use_hopper(q, k, v, causal)
        assert not kernel._use_hopper(q.float(), k.float(), v.float(), causal)
        assert not kernel._use_hopper(q, k[:, :-1], v[:, :-1], causal)  # Tq != Tk
