"""ioaware.nsa on a CUDA GPU at realistic shapes (run on the device machine: `pytest -m gpu tests/gpu`).

Same rule as the CPU tests: at fixed block indices, the kernels' max error against an fp32 materialised reference
is at most 2x that of plain PyTorch in the same dtype, plus the dtype's rounding; the selection itself agrees with an
fp32 selection up to near-ties.
"""

import pytest
import torch

import ioaware
from ioaware.kernels.attention.sparse import nsa, nsa_selected
from ioaware.kernels.attention.sparse.reference import (
    block_scores,
    cmp_probs,
    compress_kv,
    importance,
    masked_attention,
    nsa_ref,
    selected_mask,
)

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

NSA = dict(block_size=64, stride=16, select_blocks=16, select_size=64, window=512)
CASES = [
    # B, T, Hq, Hkv, D, causal, dtype, order
    pytest.param(1, 4097, 4, 4, 128, True, torch.bfloat16, "fsa", id="T4097-G1-D128-causal-bf16-fsa"),
    pytest.param(1, 4097, 16, 4, 128, True, torch.bfloat16, "fsa", id="T4097-G4-D128-causal-bf16-fsa"),
    pytest.param(1, 4097, 16, 4, 128, True, torch.bfloat16, "nsa", id="T4097-G4-D128-causal-bf16-nsa"),
    pytest.param(1, 2051, 32, 2, 128, True, torch.bfloat16, "auto", id="T2051-G16-D128-causal-bf16-auto"),
    pytest.param(2, 3000, 8, 4, 64, True, torch.float16, "fsa", id="B2-T3000-G2-D64-causal-fp16-fsa"),
    pytest.param(1, 2500, 8, 1, 64, False, torch.bfloat16, "auto", id="T2500-G8-D64-noncausal-bf16-auto"),
    pytest.param(1, 1500, 8, 2, 96, True, torch.float16, "nsa", id="T1500-G4-D96-causal-fp16-nsa"),
]


def _atol(ref, dtype) -> float:
    if dtype == torch.float32:
        return 1e-5
    r = ref.to(dtype)
    return 2 * (r + 0.3 - 0.3 - r).abs().max().item()


def _inputs(B, T, Hq, Hkv, D, dtype, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(B, T, Hq, D, device="cuda", generator=g).to(dtype).requires_grad_()
    k = torch.randn(B, T, Hkv, D, device="cuda", generator=g).to(dtype).requires_grad_()
    v = torch.randn(B, T, Hkv, D, device="cuda", generator=g).to(dtype).requires_grad_()
    gates = [torch.sigmoid(torch.randn(B, T, Hq, device="cuda", generator=g)).to(dtype).requires_grad_()
             for _ in range(3)]
    do = torch.randn(B, T, Hq, D, device="cuda", generator=g).to(dtype)
    return q, k, v, gates, do


@pytest.mark.parametrize("B,T,Hq,Hkv,D,causal,dtype,order", CASES)
def test_nsa_gpu(B, T, Hq, Hkv, D, causal, dtype, order):
    q, k, v, gates, do = _inputs(B, T, Hq, Hkv, D, dtype, seed=T + D)
    out, idx = nsa(q, k, v, *gates, causal=causal, order=order, return_indices=True, **NSA)
    assert ioaware.last_backend("nsa") == "triton"
    ins = (q, k, v, *gates)
    grads = torch.autograd.grad(out, ins, do)
    hi = torch.float64 if dtype == torch.float32 else torch.float32
    rin = [t.detach().to(hi).requires_grad_() for t in ins]
    ref, _ = nsa_ref(*rin, causal=causal, block_indices=idx, **NSA)
    ref_grads = torch.autograd.grad(ref, rin, do.to(hi))
    pin = [t.detach().clone().requires_grad_() for t in ins]
    pt, _ = nsa_ref(*pin, causal=causal, block_indices=idx, upcast=False, **NSA)
    pt_grads = torch.autograd.grad(pt, pin, do)
    for name, x, xr, xp in zip(("out", "dq", "dk", "dv", "dg_cmp", "dg_slc", "dg_swa"), (out, *grads),
                               (ref, *ref_grads), (pt, *pt_grads), strict=True):
        assert not x.isnan().any(), f"{name} has NaN"
        e, e_pt = (x.to(hi) - xr).abs().max().item(), (xp.to(hi) - xr).abs().max().item()
        assert e <= 2 * e_pt + _atol(xr, dtype), f"{name}: max error {e:.3g}, PyTorch {dtype} {e_pt:.3g}"
    # the selection: every row's chosen blocks outrank its unchosen candidates in fp32, up to near-ties
    with torch.no_grad():
        kc, _ = compress_kv(k.float(), v.float(), NSA["block_size"], NSA["stride"])
        p = cmp_probs(q.float(), kc, NSA["block_size"], NSA["stride"], causal, D ** -0.5)
        sc = block_scores(importance(p, Hkv, NSA["block_size"], NSA["stride"], NSA["select_size"]),
                          NSA["select_size"], 1, 2, causal)  # (B, Hkv, T, Ns)
        _assert_topn(sc, idx, tol=2e-2 if dtype != torch.float32 else 1e-4)


def _assert_topn(scores, idx, tol):
    """min score among chosen >= max score among unchosen candidates - tol * |max|, per row."""
    ns = scores.shape[-1]
    i = idx.permute(0, 2, 1, 3).long()
    sel = torch.zeros(*scores.shape[:-1], ns + 1, dtype=torch.bool)  # column ns catches the unused slots
    sel = sel.to(scores.device).scatter_(-1, torch.where(i >= 0, i, ns), True)[..., :ns]
    chosen = torch.where(sel, scores, float("inf")).min(-1).values
    other = torch.where(~sel & (scores > float("-inf")), scores, float("-inf")).max(-1).values
    fin = other.isfinite()
    gap = other[fin] - chosen[fin]
    assert (gap <= tol * other[fin].abs()).all(), f"selection misses a clearly better block: {gap.max().item():.3g}"


@pytest.mark.parametrize("order", ["fsa", "nsa"])
def test_selected_branch_orders_agree_gpu(order):
    """Both loop orders against one fp32 reference, T = 8192, G = 4, D = 128, bf16."""
    B, T, Hq, Hkv, D = 1, 8192, 16, 4, 128
    q, k, v, gates, do = _inputs(B, T, Hq, Hkv, D, torch.bfloat16, seed=3)
    _, idx = nsa(q, k, v, *gates, return_indices=True, **NSA)
    o = nsa_selected(q, k, v, idx, select_size=64, order=order)
    with torch.no_grad():
        qs, ks, vs = q[:, -1024:].float(), k.float(), v.float()  # the last 1024 queries against every key
        m = selected_mask(idx, T, 64, True)[:, :, -1024:]
        ref, _ = masked_attention(qs, ks, vs, m, D ** -0.5)
        pt, _ = masked_attention(q[:, -1024:].detach(), k.detach(), v.detach(), m, D ** -0.5)
    e, e_pt = (o[:, -1024:].float() - ref).abs().max().item(), (pt.float() - ref).abs().max().item()
    assert e <= 2 * e_pt + _atol(ref, torch.bfloat16)
