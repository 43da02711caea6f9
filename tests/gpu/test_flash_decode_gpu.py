"""flash_decode on a CUDA GPU at real sizes (run on the device machine: `pytest -m gpu tests/gpu`)."""

import pytest
import torch

import ioaware
from ioaware.kernels.attention.decode import interface as decode_iface
from ioaware.kernels.attention.decode.reference import decode_ref

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.mark.parametrize("B,Tq,Hq,Hkv,D,L,page,unified", [
    pytest.param(8, 1, 32, 8, 128, 4096, 0, None, id="B8-L4k-contig"),
    pytest.param(4, 1, 32, 8, 128, 5000, 16, None, id="B4-L5000-page16"),
    pytest.param(2, 4, 32, 8, 128, 3000, 1, None, id="B2-Tq4-L3000-page1"),
    pytest.param(2, 16, 16, 2, 64, 2000, 256, 2.0, id="B2-Tq16-L2000-page256-unified"),
    pytest.param(1, 1, 32, 8, 128, 65536, 0, 2.0, id="B1-L64k-unified"),
])
def test_flash_decode_gpu(B, Tq, Hq, Hkv, D, L, page, unified):
    dt = torch.bfloat16
    q = torch.randn(B, Tq, Hq, D, device="cuda", dtype=dt)
    lens = torch.randint(L // 2, L - Tq, (B,), device="cuda", dtype=torch.int32)
    if page:
        n = B * (-(-L // page))
        kc = torch.randn(n, page, Hkv, D, device="cuda", dtype=dt)
        vc = torch.randn(n, page, Hkv, D, device="cuda", dtype=dt)
        bt = torch.randperm(n, device="cuda").view(B, -1).to(torch.int32)
    else:
        kc = torch.randn(B, L, Hkv, D, device="cuda", dtype=dt)
        vc = torch.randn(B, L, Hkv, D, device="cuda", dtype=dt)
        bt = None
    kn = torch.randn(B, Tq, Hkv, D, device="cuda", dtype=dt)
    vn = torch.randn(B, Tq, Hkv, D, device="cuda", dtype=dt)
    kc2, vc2 = kc.clone(), vc.clone()
    decode_iface._append(kc2, kn, lens, bt)
    decode_iface._append(vc2, vn, lens, bt)
    out = ioaware.flash_decode(q, kc, vc, lens, bt, kn, vn, unified_max=unified)
    assert ioaware.last_backend("flash_decode") == "triton"
    assert torch.equal(kc, kc2)
    ref, _ = decode_ref(q.float(), kc2.float(), vc2.float(), lens + Tq, bt)
    pt, _ = decode_ref(q, kc2, vc2, lens + Tq, bt)
    err, err_pt = (out.float() - ref).abs().max().item(), (pt.float() - ref).abs().max().item()
    assert err <= 2 * err_pt + 1e-2, f"{err} vs PyTorch {err_pt}"
