"""flash_attn on a CUDA GPU at real sizes (run on the device machine: `pytest -m gpu tests/gpu`)."""

import pytest
import torch

import ioaware
from ioaware.kernels.attention.flash.reference import attention_ref

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

CASES = [
    pytest.param(2, 1024, 1024, 16, 16, 64, False, torch.bfloat16, id="B2-T1024-H16-D64-bf16"),
    pytest.param(2, 1024, 1024, 16, 16, 64, True, torch.bfloat16, id="B2-T1024-H16-D64-causal-bf16"),
    pytest.param(1, 2048, 2048, 8, 2, 128, True, torch.bfloat16, id="B1-T2048-H8-Hkv2-D128-causal-bf16"),
    pytest.param(2, 1000, 1500, 8, 8, 96, True, torch.float16, id="B2-Tq1000-Tk1500-H8-D96-causal-fp16"),
    pytest.param(1, 1500, 1000, 4, 4, 111, True, torch.bfloat16, id="B1-Tq1500-Tk1000-H4-D111-causal-bf16"),
    pytest.param(1, 4097, 4097, 4, 1, 128, False, torch.bfloat16, id="B1-T4097-H4-MQA-D128-bf16"),
    pytest.param(2, 513, 513, 4, 4, 256, True, torch.bfloat16, id="B2-T513-H4-D256-causal-bf16"),
    pytest.param(1, 777, 777, 4, 2, 59, False, torch.float32, id="B1-T777-H4-Hkv2-D59-fp32"),
    pytest.param(4, 1, 4096, 32, 8, 128, True, torch.bfloat16, id="B4-Tq1-Tk4096-H32-Hkv8-D128-decode-bf16"),
    pytest.param(2, 16, 3000, 16, 4, 64, True, torch.float16, id="B2-Tq16-Tk3000-H16-Hkv4-D64-verify-fp16"),
]


@pytest.mark.parametrize("B,Tq,Tk,Hq,Hkv,D,causal,dtype", CASES)
def test_flash_attn_gpu(B, Tq, Tk, Hq, Hkv, D, causal, dtype):
    g = torch.Generator(device="cuda").manual_seed(Tq + Tk + D)
    q = torch.randn(B, Tq, Hq, D, device="cuda", generator=g).to(dtype).requires_grad_()
    k = torch.randn(B, Tk, Hkv, D, device="cuda", generator=g).to(dtype).requires_grad_()
    v = torch.randn(B, Tk, Hkv, D, device="cuda", generator=g).to(dtype).requires_grad_()
    do = torch.randn(B, Tq, Hq, D, device="cuda", generator=g).to(dtype)
    out, lse = ioaware.flash_attn(q, k, v, causal=causal, return_lse=True)
    assert ioaware.last_backend("flash_attn") == "triton"
    grads = torch.autograd.grad(out, (q, k, v), do)

    hi = torch.float64 if dtype == torch.float32 else torch.float32
    qr, kr, vr = (t.detach().to(hi).requires_grad_() for t in (q, k, v))
    ref, lse_ref = attention_ref(qr, kr, vr, causal)
    ref_grads = torch.autograd.grad(ref, (qr, kr, vr), do.to(hi))
    qp, kp, vp = (t.detach().clone().requires_grad_() for t in (q, k, v))
    pt, _ = attention_ref(qp, kp, vp, causal, upcast=False)
    pt_grads = torch.autograd.grad(pt, (qp, kp, vp), do)

    def check(name, x, xr, xp):
        assert not x.isnan().any(), f"{name} has NaN"
        e, e_pt = (x.to(hi) - xr).abs().max().item(), (xp.to(hi) - xr).abs().max().item()
        atol = 1e-5 if dtype == torch.float32 else 2 * (xr.to(dtype) + 0.3 - 0.3 - xr.to(dtype)).abs().max().item()
        assert e <= 2 * e_pt + atol, f"{name}: max error {e:.3g}, PyTorch {dtype} {e_pt:.3g}"

    check("out", out, ref, pt)
    fin = lse_ref.isfinite()
    assert torch.equal(lse.isfinite(), fin)
    assert (lse[fin] - lse_ref[fin].float()).abs().max().item() < 1e-3
    for name, x, xr, xp in zip(("dq", "dk", "dv"), grads, ref_grads, pt_grads):
        check(name, x, xr, xp)


def test_torch_compile_inductor_gpu():
    q, k, v = (torch.randn(2, 256, 8, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))

    def f(q, k, v):
        return torch.nn.functional.silu(ioaware.flash_attn(q, k, v, causal=True)).float().sum()

    compiled = torch.compile(f, fullgraph=True)
    loss = compiled(q, k, v)
    g = torch.autograd.grad(loss, (q, k, v))
    ref = f(q, k, v)
    g_ref = torch.autograd.grad(ref, (q, k, v))
    assert torch.allclose(loss, ref, rtol=1e-3)
    for a, b in zip(g, g_ref):
        assert torch.allclose(a.float(), b.float(), atol=1e-2)


def test_import_does_not_initialise_cuda_even_with_a_gpu():
    import subprocess
    import sys

    code = "import ioaware, torch; assert not torch.cuda.is_initialized(); print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr
