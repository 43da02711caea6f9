"""flash_attn's options and flash_attn_varlen on a CUDA GPU at real sizes (`pytest -m gpu tests/gpu`).

Reference: fp32 math with an explicit mask (attention_masked_ref); tolerance: at most 2x the error of the same math
in the inputs' dtype, plus the dtype's rounding at that magnitude.
"""

import pytest
import torch

import ioaware
from ioaware.kernels.attention.flash.reference import attention_masked_ref, attention_varlen_ref

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
BF16, F16 = torch.bfloat16, torch.float16


def _keep(rows, max_k, Tk, p, seed):
    from ioaware.kernels.attention.flash.masked import dropout_keep_mask

    return dropout_keep_mask(rows, max_k, Tk, p, seed, "cuda")


def _check(out, lse, grads, ref_fn, ins, do, dtype):
    qr, kr, vr = (t.detach().float().requires_grad_() for t in ins)
    ref, lse_ref = ref_fn(qr, kr, vr, True)
    ref_grads = torch.autograd.grad(ref, (qr, kr, vr), do.float())
    qp, kp, vp = (t.detach().clone().requires_grad_() for t in ins)
    pt, _ = ref_fn(qp, kp, vp, False)
    pt_grads = torch.autograd.grad(pt, (qp, kp, vp), do)
    for name, x, xr, xp in zip(("out", "dq", "dk", "dv"), (out, *grads), (ref, *ref_grads), (pt, *pt_grads)):
        assert not x.isnan().any(), f"{name} has NaN"
        e, e_pt = (x.float() - xr).abs().max().item(), (xp.float() - xr).abs().max().item()
        atol = 2 * (xr.to(dtype) + 0.3 - 0.3 - xr.to(dtype)).abs().max().item()
        assert e <= 2 * e_pt + atol, f"{name}: max error {e:.3g}, PyTorch {dtype} {e_pt:.3g}"
    fin = lse_ref.isfinite()
    assert torch.equal(lse.isfinite(), fin)
    assert (lse[fin] - lse_ref[fin]).abs().max().item() < 1e-3


CASES = [
    # B, Tq, Tk, Hq, Hkv, D, dtype, options
    pytest.param(2, 2048, 2048, 8, 2, 128, BF16, dict(causal=True, window_size=(256, -1)), id="sliding256-GQA-D128"),
    pytest.param(1, 1500, 2000, 4, 4, 64, F16, dict(window_size=(100, 50), alibi=(4,)), id="window-alibi-D64-fp16"),
    pytest.param(2, 1024, 1024, 8, 8, 128, BF16, dict(causal=True, softcap=30.0), id="causal-softcap30-D128"),
    pytest.param(1, 1000, 1000, 4, 2, 96, BF16, dict(causal=True, prefix_lens=[300], dropout_p=0.1),
                 id="prefixLM-dropout-D96"),
    pytest.param(1, 2048, 2048, 4, 4, 128, BF16, dict(causal=True, block=(128, 128)), id="blocksparse128-causal"),
    pytest.param(2, 1000, 1100, 4, 2, 64, F16, dict(block=(64, 64), alibi=(2, 4), dropout_p=0.2),
                 id="blocksparse64-alibiBH-dropout-fp16"),
    pytest.param(2, 2048, 1024, 8, 2, 128, BF16, dict(block=(128, 128), softcap=20.0),
                 id="blocksparse128-exact-tiles-unmasked-softcap"),
]


@pytest.mark.parametrize("B,Tq,Tk,Hq,Hkv,D,dtype,opt", CASES)
def test_flash_attn_options_gpu(B, Tq, Tk, Hq, Hkv, D, dtype, opt):
    g = torch.Generator(device="cuda").manual_seed(Tq + Tk + D)
    q = torch.randn(B, Tq, Hq, D, device="cuda", generator=g).to(dtype).requires_grad_()
    k = torch.randn(B, Tk, Hkv, D, device="cuda", generator=g).to(dtype).requires_grad_()
    v = torch.randn(B, Tk, Hkv, D, device="cuda", generator=g).to(dtype).requires_grad_()
    do = torch.randn(B, Tq, Hq, D, device="cuda", generator=g).to(dtype)
    kw = {key: opt[key] for key in ("causal", "window_size", "softcap", "dropout_p") if key in opt}
    ref_kw = dict(kw)
    if "alibi" in opt:
        kw["alibi_slopes"] = ref_kw["alibi_slopes"] = torch.rand(*opt["alibi"], device="cuda", generator=g)
    if "prefix_lens" in opt:
        kw["prefix_lens"] = ref_kw["prefix_lens"] = torch.tensor(opt["prefix_lens"], device="cuda", dtype=torch.int32)
    if "block" in opt:
        bq, bk = opt["block"]
        bm = torch.rand(B, Hq, -(-Tq // bq), -(-Tk // bk), device="cuda", generator=g) < 0.5
        kw.update(block_mask=bm, block_size=(bq, bk))
        ref_kw.update(block_mask=bm, block_size=(bq, bk))
    if "dropout_p" in opt:
        kw["seed"] = 77
        ref_kw["keep"] = _keep(B * Hq * Tq, Tk, Tk, opt["dropout_p"], 77).reshape(B, Hq, Tq, Tk)
    out, lse = ioaware.flash_attn(q, k, v, return_lse=True, **kw)
    assert ioaware.last_backend("flash_attn") == "triton"
    grads = torch.autograd.grad(out, (q, k, v), do)
    _check(out, lse, grads, lambda q, k, v, up: attention_masked_ref(q, k, v, upcast=up, **ref_kw), (q, k, v), do,
           dtype)


@pytest.mark.parametrize("lens_q,lens_k,Hq,Hkv,D,dtype,opt", [
    pytest.param([1, 700, 1500, 33, 0, 900], None, 8, 2, 128, BF16, dict(causal=True), id="document-causal-D128"),
    pytest.param([300, 1000, 77], [500, 800, 1200], 4, 4, 64, F16, dict(window_size=(128, 64), softcap=20.0),
                 id="window-softcap-q!=k-D64-fp16"),
])
def test_flash_attn_varlen_gpu(lens_q, lens_k, Hq, Hkv, D, dtype, opt):
    lens_k = lens_k or lens_q
    cu_q = torch.tensor([0] + lens_q, device="cuda").cumsum(0).to(torch.int32)
    cu_k = torch.tensor([0] + lens_k, device="cuda").cumsum(0).to(torch.int32)
    g = torch.Generator(device="cuda").manual_seed(sum(lens_q))
    q = torch.randn(sum(lens_q), Hq, D, device="cuda", generator=g).to(dtype).requires_grad_()
    k = torch.randn(sum(lens_k), Hkv, D, device="cuda", generator=g).to(dtype).requires_grad_()
    v = torch.randn(sum(lens_k), Hkv, D, device="cuda", generator=g).to(dtype).requires_grad_()
    do = torch.randn(sum(lens_q), Hq, D, device="cuda", generator=g).to(dtype)
    out, lse = ioaware.flash_attn_varlen(q, k, v, cu_q, cu_k, max(lens_q), max(lens_k), return_lse=True, **opt)
    grads = torch.autograd.grad(out, (q, k, v), do)
    _check(out, lse, grads, lambda q, k, v, up: attention_varlen_ref(q, k, v, cu_q, cu_k, upcast=up, **opt),
           (q, k, v), do, dtype)


def test_backward_bitwise_deterministic_gpu():
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(2, 2048, 16, 128, device="cuda", generator=g).to(BF16).requires_grad_()
    k, v = (torch.randn(2, 2048, 2, 128, device="cuda", generator=g).to(BF16).requires_grad_() for _ in range(2))
    do = torch.randn(2, 2048, 16, 128, device="cuda", generator=g).to(BF16)
    runs = []
    for _ in range(3):
        out = ioaware.flash_attn(q, k, v, causal=True, window_size=(512, -1), deterministic=True)
        runs.append(torch.autograd.grad(out, (q, k, v), do))
    for a, b, c in zip(*runs):
        assert torch.equal(a, b) and torch.equal(a, c)
