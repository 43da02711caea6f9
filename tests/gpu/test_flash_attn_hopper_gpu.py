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


# ------------------------------------------------------------------------------------------- dK/dV (backward)
def _ref_dkdv(q, k, v, do, causal, upcast):
    qs, ks, vs = ((t.float() if upcast else t).detach().requires_grad_() for t in (q, k, v))
    out, _ = attention_ref(qs, ks, vs, causal, upcast=upcast)
    return torch.autograd.grad(out, (ks, vs), do.float() if upcast else do)


BWD_TILES = {  # hopper._hopper_bwd_table's tile, and the two runners-up of run B1 (dev/attention/NOTES.md)
    "tma_64x128_w8_s3": {"BM": 64, "BN": 128, "num_warps": 8, "STAGES": 3, "WS": False, "ONE_LOOP": False},
    "tma_64x128_w8_s2": {"BM": 64, "BN": 128, "num_warps": 8, "STAGES": 2, "WS": False, "ONE_LOOP": False},
    "ws_64x128_s2": {"BM": 64, "BN": 128, "num_warps": 4, "STAGES": 2, "WS": True, "ONE_LOOP": True},
}
BWD_CASES = [  # B, T, Hq, Hkv, causal, dtype (D = 128)
    pytest.param(2, 1000, 4, 4, False, torch.bfloat16, id="B2-T1000-H4-D128-bf16"),
    pytest.param(2, 1000, 4, 4, True, torch.bfloat16, id="B2-T1000-H4-D128-causal-bf16"),
    pytest.param(1, 4097, 8, 2, False, torch.bfloat16, id="B1-T4097-H8-Hkv2-D128-bf16"),
    pytest.param(1, 4097, 8, 2, True, torch.float16, id="B1-T4097-H8-Hkv2-D128-causal-fp16"),
    pytest.param(2, 1000, 4, 1, True, torch.float16, id="B2-T1000-H4-MQA-D128-causal-fp16"),
    pytest.param(3, 77, 2, 2, True, torch.bfloat16, id="B3-T77-H2-D128-causal-bf16"),
]


@pytest.mark.parametrize("tile", list(BWD_TILES))
@pytest.mark.parametrize("B,T,Hq,Hkv,causal,dtype", BWD_CASES)
def test_hopper_bwd_dkdv_tiles(tile, B, T, Hq, Hkv, causal, dtype, poison):
    hopper = _hopper_or_skip()
    from ioaware.kernels.attention.flash import kernel

    D = 128
    q, k, v = _inputs(B, T, Hq, Hkv, D, dtype, T + Hkv)
    do = torch.randn_like(q)
    o, lse = kernel.flash_attn_fwd(q, k, v, causal, 1 / math.sqrt(D))
    delta = (o.float() * do.float()).sum(-1).transpose(1, 2).contiguous()
    dk, dv = hopper.hopper_flash_attn_bwd_dkdv(q, k, v, do, lse, delta, causal, 1 / math.sqrt(D),
                                               config=BWD_TILES[tile])
    refs, pts = _ref_dkdv(q, k, v, do, causal, True), _ref_dkdv(q, k, v, do, causal, False)
    for name, x, xr, xp in zip(("dk", "dv"), (dk, dv), refs, pts):
        assert not x.isnan().any(), name
        e, e_pt = (x.float() - xr).abs().max().item(), (xp.float() - xr).abs().max().item()
        atol = 2 * (xr.to(dtype) + 0.3 - 0.3 - xr.to(dtype)).abs().max().item()
        assert e <= 2 * e_pt + atol, f"{name}: max error {e:.3g}, PyTorch {dtype} {e_pt:.3g}"


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_flash_attn_dispatches_hopper_bwd(causal, monkeypatch):
    """At D = 128, T >= HOPPER_BWD_MIN_T the public op's backward takes dK/dV from hopper.py (GQA here)."""
    hopper = _hopper_or_skip()
    from ioaware.kernels.attention.flash import kernel

    calls = []
    real = hopper.hopper_flash_attn_bwd_dkdv
    monkeypatch.setattr(hopper, "hopper_flash_attn_bwd_dkdv", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    B, T, Hq, Hkv, D = 1, kernel.HOPPER_BWD_MIN_T, 4, 2, 128
    q, k, v = (t.requires_grad_() for t in _inputs(B, T, Hq, Hkv, D, torch.bfloat16, 9))
    do = torch.randn_like(q)
    out = ioaware.flash_attn(q, k, v, causal=causal)
    grads = torch.autograd.grad(out, (q, k, v), do)
    assert calls, "flash_attn's backward did not run the Hopper dK/dV kernel"
    qr, kr, vr = (t.detach().float().requires_grad_() for t in (q, k, v))
    ref, _ = attention_ref(qr, kr, vr, causal)
    ref_grads = torch.autograd.grad(ref, (qr, kr, vr), do.float())
    qp, kp, vp = (t.detach().clone().requires_grad_() for t in (q, k, v))
    pt, _ = attention_ref(qp, kp, vp, causal, upcast=False)
    pt_grads = torch.autograd.grad(pt, (qp, kp, vp), do)
    for name, x, xr, xp in zip(("dq", "dk", "dv"), grads, ref_grads, pt_grads):
        e, e_pt = (x.float() - xr).abs().max().item(), (xp.float() - xr).abs().max().item()
        atol = 2 * (xr.bfloat16() + 0.3 - 0.3 - xr.bfloat16()).abs().max().item()
        assert e <= 2 * e_pt + atol, f"{name}: max error {e:.3g}, PyTorch bf16 {e_pt:.3g}"


def test_no_hopper_bwd_below_threshold_or_other_head_dims():
    _hopper_or_skip()
    from ioaware.kernels.attention.flash import kernel

    T = kernel.HOPPER_BWD_MIN_T
    q, k, v = _inputs(1, T, 2, 2, 128, torch.bfloat16, 0)
    lse = torch.empty(1, 2, T, device="cuda")
    assert kernel._use_hopper_bwd(q, k, v, torch.randn_like(q), lse)
    assert not kernel._use_hopper_bwd(q, k, v, torch.randn_like(q).transpose(1, 2).contiguous().transpose(1, 2), lse)
    assert not kernel._use_hopper_bwd(q.float(), k.float(), v.float(), torch.randn_like(q).float(), lse)
    q1, k1, v1 = _inputs(1, T - 1, 2, 2, 128, torch.bfloat16, 0)
    assert not kernel._use_hopper_bwd(q1, k1, v1, torch.randn_like(q1), lse[..., 1:])
    q2, k2, v2 = _inputs(1, T, 2, 2, 64, torch.bfloat16, 0)
    assert not kernel._use_hopper_bwd(q2, k2, v2, torch.randn_like(q2), lse)


# ------------------------------------------------------------------------------- sliding window (forward)
def _check_window_fwd(o, lse, q, k, v, wl):
    from ioaware.kernels.attention.flash.reference import attention_masked_ref

    dtype, kw = q.dtype, dict(causal=True, window_size=(wl, 0))
    ref, lse_ref = attention_masked_ref(q, k, v, **kw)
    pt, _ = attention_masked_ref(q, k, v, upcast=False, **kw)
    assert not o.isnan().any()
    e, e_pt = (o.float() - ref).abs().max().item(), (pt.float() - ref).abs().max().item()
    atol = 2 * (ref.to(dtype) + 0.3 - 0.3 - ref.to(dtype)).abs().max().item()
    assert e <= 2 * e_pt + atol, f"max error {e:.3g}, PyTorch {dtype} {e_pt:.3g}"
    assert (lse - lse_ref).abs().max().item() < 1e-3


WINDOW_TILES = {  # hopper._hopper_window_table's tile and the other variants timed (dev/attention/NOTES.md)
    "table": None,
    "tma_128x128_w8_s3": {"BM": 128, "BN": 128, "num_warps": 8, "STAGES": 3, "WS": False, "ONE_LOOP": False},
    "tma_128x64_w8_s3": {"BM": 128, "BN": 64, "num_warps": 8, "STAGES": 3, "WS": False, "ONE_LOOP": False},
    "tma_64x32_w4_s3": {"BM": 64, "BN": 32, "num_warps": 4, "STAGES": 3, "WS": False, "ONE_LOOP": False},
    "ws_128x128_s2": {"BM": 128, "BN": 128, "num_warps": 4, "STAGES": 2, "WS": True, "ONE_LOOP": True},
}
WINDOW_CASES = [  # B, T, Hq, Hkv, window left, dtype (D = 128, causal)
    pytest.param(2, 1000, 4, 2, 127, torch.bfloat16, id="B2-T1000-H4-Hkv2-W127-bf16"),
    pytest.param(1, 4097, 4, 4, 1024, torch.float16, id="B1-T4097-H4-W1024-fp16"),
    pytest.param(2, 2049, 4, 1, 127, torch.bfloat16, id="B2-T2049-H4-MQA-W127-bf16"),
    pytest.param(1, 16384, 2, 1, 1024, torch.bfloat16, id="B1-T16384-H2-MQA-W1024-bf16"),
    pytest.param(1, 16384, 2, 2, 127, torch.float16, id="B1-T16384-H2-W127-fp16"),
    pytest.param(3, 77, 2, 2, 0, torch.bfloat16, id="B3-T77-H2-W0-bf16"),
]


@pytest.mark.parametrize("tile", list(WINDOW_TILES))
@pytest.mark.parametrize("B,T,Hq,Hkv,wl,dtype", WINDOW_CASES)
def test_hopper_fwd_window_tiles(tile, B, T, Hq, Hkv, wl, dtype, poison):
    hopper = _hopper_or_skip()
    q, k, v = _inputs(B, T, Hq, Hkv, 128, dtype, T + wl)
    cfg = WINDOW_TILES[tile]
    o, lse = hopper.hopper_flash_attn_fwd(q, k, v, True, 1 / math.sqrt(128),
                                          config=None if cfg is None else dict(cfg, REV=False), window_left=wl)
    _check_window_fwd(o, lse, q, k, v, wl)


@pytest.mark.parametrize("causal,window", [(True, (1023, -1)), (False, (300, 0))], ids=["causal-1023", "right0-300"])
def test_flash_attn_dispatches_hopper_window_fwd(causal, window, monkeypatch):
    """A causal sliding window at D = 128, T >= HOPPER_WINDOW_MIN_T: the forward runs hopper.py, masked.py's backward
    takes its LSE (GQA here)."""
    hopper = _hopper_or_skip()
    from ioaware.kernels.attention.flash import masked
    from ioaware.kernels.attention.flash.reference import attention_masked_ref

    calls = []
    real = hopper.hopper_flash_attn_fwd
    monkeypatch.setattr(hopper, "hopper_flash_attn_fwd", lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    B, T, Hq, Hkv, D = 1, masked.HOPPER_WINDOW_MIN_T, 4, 2, 128
    q, k, v = (t.requires_grad_() for t in _inputs(B, T, Hq, Hkv, D, torch.bfloat16, 11))
    do = torch.randn_like(q)
    out = ioaware.flash_attn(q, k, v, causal=causal, window_size=window)
    assert calls == [{"window_left": window[0]}], "flash_attn did not run the Hopper windowed forward"
    grads = torch.autograd.grad(out, (q, k, v), do)
    kw = dict(causal=True, window_size=(window[0], 0))
    qr, kr, vr = (t.detach().float().requires_grad_() for t in (q, k, v))
    ref, _ = attention_masked_ref(qr, kr, vr, **kw)
    ref_grads = torch.autograd.grad(ref, (qr, kr, vr), do.float())
    qp, kp, vp = (t.detach().clone().requires_grad_() for t in (q, k, v))
    pt, _ = attention_masked_ref(qp, kp, vp, upcast=False, **kw)
    pt_grads = torch.autograd.grad(pt, (qp, kp, vp), do)
    for name, x, xr, xp in zip(("out", "dq", "dk", "dv"), (out, *grads), (ref, *ref_grads), (pt, *pt_grads)):
        e, e_pt = (x.float() - xr).abs().max().item(), (xp.float() - xr).abs().max().item()
        atol = 2 * (xr.bfloat16() + 0.3 - 0.3 - xr.bfloat16()).abs().max().item()
        assert e <= 2 * e_pt + atol, f"{name}: max error {e:.3g}, PyTorch bf16 {e_pt:.3g}"


def test_no_hopper_window_below_threshold_or_with_other_options():
    _hopper_or_skip()
    from ioaware.kernels.attention.flash import masked

    T = masked.HOPPER_WINDOW_MIN_T
    spec = dict(wl=1023, wr=0, cu_q=None, block_mask=None, alibi=None, softcap=0.0, dropout_p=0.0, prefix=None)
    q, k, v = _inputs(1, T, 2, 2, 128, torch.bfloat16, 0)
    assert masked._use_hopper_window(q, k, v, spec)
    assert not masked._use_hopper_window(q, k, v, dict(spec, softcap=30.0))
    assert not masked._use_hopper_window(q, k, v, dict(spec, wr=16))
    assert not masked._use_hopper_window(q.float(), k.float(), v.float(), spec)
    q1, k1, v1 = _inputs(1, T - 1, 2, 2, 128, torch.bfloat16, 0)
    assert not masked._use_hopper_window(q1, k1, v1, spec)
    q2, k2, v2 = _inputs(1, T, 2, 2, 64, torch.bfloat16, 0)
    assert not masked._use_hopper_window(q2, k2, v2, spec)


# ------------------------------------------------------------------------------- block-sparse (forward, dK/dV)
SPARSE_TILES = {  # hopper._hopper_sparse_table's tile and the other variants timed (dev/attention/NOTES.md); the
    # 128x128 w8 s5 forward was timed too but needs 360 KB of shared memory at a ragged T (5 K/V buffers), so not here
    "table": None,
    "ws_128x128_s2": {"BM": 128, "BN": 128, "num_warps": 4, "STAGES": 2, "WS": True, "ONE_LOOP": True},
    "tma_128x128_w8_s3": {"BM": 128, "BN": 128, "num_warps": 8, "STAGES": 3, "WS": False, "ONE_LOOP": False},
    "tma_64x64_w4_s3": {"BM": 64, "BN": 64, "num_warps": 4, "STAGES": 3, "WS": False, "ONE_LOOP": False},
}
SPARSE_BWD_TILES = {
    "table": None,
    "tma_64x128_w8_s3": {"BM": 64, "BN": 128, "num_warps": 8, "STAGES": 3, "WS": False, "ONE_LOOP": False},
    "tma_64x128_w8_s5": {"BM": 64, "BN": 128, "num_warps": 8, "STAGES": 5, "WS": False, "ONE_LOOP": False},
}
SPARSE_CASES = [  # B, T, Hq, Hkv, mask (batch, heads) (1: broadcast), density, dtype (D = 128, 128 x 128 blocks)
    pytest.param(2, 1000, 4, 2, (2, 4), 0.3, torch.bfloat16, id="B2-T1000-H4-Hkv2-d30-bf16"),
    pytest.param(1, 4097, 4, 4, (1, 4), 0.5, torch.float16, id="B1-T4097-H4-d50-fp16"),
    pytest.param(2, 2048, 4, 1, (1, 1), 0.25, torch.bfloat16, id="B2-T2048-H4-MQA-d25-bf16"),
    pytest.param(1, 8192, 2, 2, (1, 2), 0.25, torch.bfloat16, id="B1-T8192-H2-d25-bf16"),
    pytest.param(3, 77, 2, 2, (3, 2), 0.6, torch.bfloat16, id="B3-T77-H2-d60-bf16"),
]


def _sparse_mask(mb, mh, T, density, seed):
    n = -(-T // 128)
    g = torch.Generator(device="cuda").manual_seed(seed)
    bm = torch.rand(mb, mh, n, n, device="cuda", generator=g) < density
    bm[..., 0, :] = False  # an empty block row: output 0, LSE -inf
    return bm


def _sparse_lists(bm, q):
    from ioaware.kernels.attention.flash import masked

    return masked._hopper_sparse_lists(bm, q, (128, 128)), masked._hopper_sparse_lists(bm.transpose(-1, -2), q,
                                                                                          (128, 128))


@pytest.mark.parametrize("tile", list(SPARSE_TILES))
@pytest.mark.parametrize("B,T,Hq,Hkv,mbh,density,dtype", SPARSE_CASES)
def test_hopper_fwd_sparse_tiles(tile, B, T, Hq, Hkv, mbh, density, dtype, poison):
    hopper = _hopper_or_skip()
    from ioaware.kernels.attention.flash.reference import attention_masked_ref

    q, k, v = _inputs(B, T, Hq, Hkv, 128, dtype, T + Hq)
    bm = _sparse_mask(*mbh, T, density, T)
    cfg = SPARSE_TILES[tile]
    fwd_lists, _ = _sparse_lists(bm, q)
    o, lse = hopper.hopper_flash_attn_fwd(q, k, v, False, 1 / math.sqrt(128),
                                          config=None if cfg is None else dict(cfg, REV=False), sparse=fwd_lists)
    kw = dict(block_mask=bm, block_size=(128, 128))
    ref, lse_ref = attention_masked_ref(q, k, v, **kw)
    pt, _ = attention_masked_ref(q, k, v, upcast=False, **kw)
    assert not o.isnan().any()
    e, e_pt = (o.float() - ref).abs().max().item(), (pt.float() - ref).abs().max().item()
    atol = 2 * (ref.to(dtype) + 0.3 - 0.3 - ref.to(dtype)).abs().max().item()
    assert e <= 2 * e_pt + atol, f"max error {e:.3g}, PyTorch {dtype} {e_pt:.3g}"
    empty = lse_ref == float("-inf")
    assert empty.any() and (lse[empty] == float("-inf")).all() and (o.transpose(1, 2)[empty] == 0).all()
    if (~empty).any():  # T77: one block row, and it is empty
        assert (lse[~empty] - lse_ref[~empty]).abs().max().item() < 1e-3


@pytest.mark.parametrize("tile", list(SPARSE_BWD_TILES))
@pytest.mark.parametrize("B,T,Hq,Hkv,mbh,density,dtype", SPARSE_CASES)
def test_hopper_bwd_dkdv_sparse_tiles(tile, B, T, Hq, Hkv, mbh, density, dtype, poison):
    hopper = _hopper_or_skip()
    from ioaware.kernels.attention.flash import masked
    from ioaware.kernels.attention.flash.reference import attention_masked_ref

    q, k, v = _inputs(B, T, Hq, Hkv, 128, dtype, T + Hkv)
    do = torch.randn_like(q)
    bm = _sparse_mask(*mbh, T, density, T + 1)
    _, t_lists = _sparse_lists(bm, q)
    spec = dict(batch=B, scale=1 / math.sqrt(128), causal=False, wl=-1, wr=-1, alibi=None, softcap=0.0,
                dropout_p=0.0, seed=0, prefix=None, cu_q=None, cu_k=None, max_q=T, max_k=T, block_mask=bm,
                block_size=(128, 128))
    o, lse = masked.flash_attn_masked_fwd(q, k, v, spec)
    delta = (o.float() * do.float()).sum(-1).transpose(1, 2).contiguous()
    dk, dv = hopper.hopper_flash_attn_bwd_dkdv(q, k, v, do, lse, delta, False, 1 / math.sqrt(128),
                                               config=SPARSE_BWD_TILES[tile], sparse=t_lists)
    kw = dict(block_mask=bm, block_size=(128, 128))
    xs = [t.float().requires_grad_() for t in (q, k, v)]
    refs = torch.autograd.grad(attention_masked_ref(*xs, **kw)[0], xs[1:], do.float())
    xp = [t.clone().requires_grad_() for t in (q, k, v)]
    pts = torch.autograd.grad(attention_masked_ref(*xp, upcast=False, **kw)[0], xp[1:], do)
    for name, x, xr, xq in zip(("dk", "dv"), (dk, dv), refs, pts):
        assert not x.isnan().any(), name
        e, e_pt = (x.float() - xr).abs().max().item(), (xq.float() - xr).abs().max().item()
        atol = 2 * (xr.to(dtype) + 0.3 - 0.3 - xr.to(dtype)).abs().max().item()
        assert e <= 2 * e_pt + atol, f"{name}: max error {e:.3g}, PyTorch {dtype} {e_pt:.3g}"


def test_flash_attn_dispatches_hopper_sparse(monkeypatch):
    """Block-sparse with 128 x 128 blocks at D = 128, T >= HOPPER_SPARSE_MIN_T: the forward and dK/dV run hopper.py
    (dQ masked.py's); output and gradients against fp32 (GQA, an empty block row)."""
    hopper = _hopper_or_skip()
    from ioaware.kernels.attention.flash import masked
    from ioaware.kernels.attention.flash.reference import attention_masked_ref

    calls = []
    real_f, real_b = hopper.hopper_flash_attn_fwd, hopper.hopper_flash_attn_bwd_dkdv
    monkeypatch.setattr(hopper, "hopper_flash_attn_fwd", lambda *a, **kw: calls.append("fwd") or real_f(*a, **kw))
    monkeypatch.setattr(hopper, "hopper_flash_attn_bwd_dkdv",
                        lambda *a, **kw: calls.append("dkdv") or real_b(*a, **kw))
    B, T, Hq, Hkv, D = 1, masked.HOPPER_SPARSE_MIN_T, 4, 2, 128
    q, k, v = (t.requires_grad_() for t in _inputs(B, T, Hq, Hkv, D, torch.bfloat16, 13))
    do = torch.randn_like(q)
    bm = _sparse_mask(B, Hq, T, 0.4, 5)
    out = ioaware.flash_attn(q, k, v, block_mask=bm, block_size=(128, 128))
    grads = torch.autograd.grad(out, (q, k, v), do)
    assert calls == ["fwd", "dkdv"], calls
    kw = dict(block_mask=bm, block_size=(128, 128))
    qr, kr, vr = (t.detach().float().requires_grad_() for t in (q, k, v))
    ref, _ = attention_masked_ref(qr, kr, vr, **kw)
    ref_grads = torch.autograd.grad(ref, (qr, kr, vr), do.float())
    qp, kp, vp = (t.detach().clone().requires_grad_() for t in (q, k, v))
    pt, _ = attention_masked_ref(qp, kp, vp, upcast=False, **kw)
    pt_grads = torch.autograd.grad(pt, (qp, kp, vp), do)
    for name, x, xr, xp in zip(("out", "dq", "dk", "dv"), (out, *grads), (ref, *ref_grads), (pt, *pt_grads)):
        assert not x.isnan().any(), name
        e, e_pt = (x.float() - xr).abs().max().item(), (xp.float() - xr).abs().max().item()
        atol = 2 * (xr.bfloat16() + 0.3 - 0.3 - xr.bfloat16()).abs().max().item()
        assert e <= 2 * e_pt + atol, f"{name}: max error {e:.3g}, PyTorch bf16 {e_pt:.3g}"


def test_no_hopper_sparse_below_threshold_or_with_other_options():
    _hopper_or_skip()
    from ioaware.kernels.attention.flash import masked

    T = masked.HOPPER_SPARSE_MIN_T
    q, k, v = _inputs(1, T, 2, 2, 128, torch.bfloat16, 0)
    spec = dict(wl=-1, wr=-1, cu_q=None, block_mask=_sparse_mask(1, 1, T, 0.5, 0), block_size=(128, 128),
                causal=False, alibi=None, softcap=0.0, dropout_p=0.0, prefix=None)
    assert masked._use_hopper_sparse(q, k, v, spec)
    assert not masked._use_hopper_sparse(q, k, v, dict(spec, causal=True, wr=0))
    assert not masked._use_hopper_sparse(q, k, v, dict(spec, block_size=(64, 64)))
    assert not masked._use_hopper_sparse(q.float(), k.float(), v.float(), spec)
    q1, k1, v1 = _inputs(1, T - 1, 2, 2, 128, torch.bfloat16, 0)
    assert not masked._use_hopper_sparse(q1, k1, v1, spec)
    q2, k2, v2 = _inputs(1, T, 2, 2, 64, torch.bfloat16, 0)
    assert not masked._use_hopper_sparse(q2, k2, v2, spec)
