"""The FP8 attention forward (flash/fp8.py) compiled on a GPU with e4m3 tensor cores (sm_89+): against the same
arithmetic untiled (flash_attn_fp8_ref) and fp64, outputs poisoned, ragged T, causal, GQA, D 64 / 128 / 256, with and
without the Hadamard rotation. FP8 attention is an approximation: the bounds are its measured error (4-6.5% relative
RMS on Gaussian inputs, tests/kernels/test_flash_attn_fp8.py), not bf16's."""

import pytest
import torch

from ioaware.kernels.attention.flash import fp8
from ioaware.kernels.attention.flash.reference import attention_ref

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

CASES = [  # B, Tq, Tk, Hq, Hkv, D, causal, hadamard
    (1, 1000, 1000, 4, 2, 128, True, False),
    (2, 4096, 4096, 2, 2, 128, False, True),
    (1, 777, 1500, 4, 1, 64, True, False),
    (1, 300, 300, 2, 2, 256, False, False),
    (1, 1, 513, 8, 2, 128, True, True),
]


def _rel(x, ref):
    return ((x.double() - ref).norm() / ref.norm()).item()


@pytest.mark.parametrize("B,Tq,Tk,Hq,Hkv,D,causal,hadamard", CASES)
def test_fp8_forward_on_gpu(B, Tq, Tk, Hq, Hkv, D, causal, hadamard, monkeypatch):
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("e4m3 tensor cores need sm_89+")
    g = torch.Generator(device="cuda").manual_seed(Tq + Tk + D)
    q, k, v = (torch.randn(B, t, h, D, device="cuda", generator=g).bfloat16()
               for t, h in ((Tq, Hq), (Tk, Hkv), (Tk, Hkv)))
    x = fp8.quantize_fp8(q, k, v, hadamard=hadamard)
    real_empty = torch.empty
    monkeypatch.setattr(torch, "empty", lambda *a, **kw: real_empty(*a, **kw).fill_(float("nan")))
    out, lse = fp8.flash_attn_fp8(x, causal=causal)
    torch.cuda.synchronize()
    monkeypatch.setattr(torch, "empty", real_empty)
    assert torch.isfinite(out).all() and not torch.isnan(lse).any()
    gold, gold_lse = attention_ref(q.double(), k.double(), v.double(), causal, D ** -0.5)
    emul = fp8.flash_attn_fp8_ref(x, causal=causal)
    err, err_emul = _rel(out, gold), _rel(emul, gold)
    assert _rel(out.double(), emul.double()) < 0.5 * err_emul
    assert err <= 1.25 * err_emul and err < 0.08, (err, err_emul)
    assert torch.allclose(lse.double(), gold_lse.double(), atol=0.05 + 0.02 * gold_lse.abs().max().item())
