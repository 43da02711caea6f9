"""FP8 attention (ioaware.kernels.attention.flash.fp8): quantisation, the kernel through Triton's interpreter against
the same arithmetic in PyTorch, and the approximation's error against fp64 beside bf16 attention's.

FP8 attention is an approximation: the tests bound its error (measured here: 4-6.5% relative RMS on Gaussian inputs,
against 0.17% for bf16 attention; e4m3 keeps 3 mantissa bits)
and check that the Hadamard rotation lowers it where an outlier channel inflates the block scales.
"""

import pytest
import torch

from ioaware.errors import DeviceError, DTypeError, ShapeError, UnsupportedError
from ioaware.kernels.attention.flash import fp8
from ioaware.kernels.attention.flash.reference import attention_ref

CASES = [
    # B, Tq, Tk, Hq, Hkv, D, causal
    pytest.param(1, 97, 130, 4, 2, 64, True, id="Tq97-Tk130-GQA2-D64-causal"),
    pytest.param(2, 63, 63, 2, 2, 32, False, id="B2-T63-D32"),
    pytest.param(1, 1, 75, 3, 1, 16, True, id="Tq1-Tk75-MQA-D16-causal"),
    pytest.param(1, 130, 97, 2, 1, 128, True, id="Tq130-Tk97-D128-causal"),
]


def _qkv(B, Tq, Tk, Hq, Hkv, D, seed, outlier=0.0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Tq, Hq, D, generator=g)
    k = torch.randn(B, Tk, Hkv, D, generator=g)
    v = torch.randn(B, Tk, Hkv, D, generator=g)
    if outlier:
        q[..., 3] *= outlier
        k[..., 3] *= outlier
    return q.bfloat16(), k.bfloat16(), v.bfloat16()


def _rel_rms(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x.double() - ref).norm() / ref.norm()).item()


def test_block_quantisation_rounds_each_element_to_e4m3_of_its_block():
    q, k, v = _qkv(1, 300, 300, 2, 1, 64, seed=1)
    x = fp8.quantize_fp8(q, k, v)
    assert x.q_scale.shape == (1, 2, 3) and x.k_scale.shape == (1, 1, 3) and x.v_scale.shape == (1, 1, 64)
    assert x.vt8.shape == (1, 1, 64, 304) and x.vt8.dtype == fp8.FP8
    qd, kd, vd = fp8.dequantize_fp8(x)
    for orig, deq, scale in ((q, qd, x.q_scale), (k, kd, x.k_scale)):
        per_row = scale.transpose(1, 2).repeat_interleave(fp8.SCALE_BLOCK, 1)[:, :orig.shape[1], :, None]
        err = (orig.float() - deq).abs()
        # e4m3: 3 mantissa bits (half-step 2^-4 relative) for normals, a 2^-10 step of the scale below 2^-6
        assert (err <= orig.float().abs() * 2 ** -4 + per_row * 2 ** -9 + 1e-7).all()
        # each block's largest magnitude maps to 448: the scale is that block's amax / 448
        assert torch.allclose(deq.abs().amax(), orig.float().abs().amax(), rtol=2 ** -4)
    assert ((v.float() - vd).abs() <= v.float().abs() * 2 ** -4 + x.v_scale[:, None] * 2 ** -9 + 1e-7).all()


def test_hadamard_rotation_is_orthogonal_and_keeps_q_k_products():
    r = fp8.hadamard_rotation(64, seed=3)
    assert torch.allclose(r @ r.T, torch.eye(64), atol=1e-6)
    q, k, v = _qkv(1, 40, 40, 1, 1, 64, seed=2)
    x = fp8.quantize_fp8(q, k, v, hadamard=True)
    qd, kd, _ = fp8.dequantize_fp8(x)  # rotated back
    s = torch.einsum("bqhd,bkhd->bqk", q.double(), k.double())
    sd = torch.einsum("bqhd,bkhd->bqk", qd.double(), kd.double())
    assert (sd - s).abs().max() < 0.1 * s.abs().max()


@pytest.mark.parametrize("B,Tq,Tk,Hq,Hkv,D,causal", CASES)
def test_kernel_matches_its_reference_and_bounds_the_error(B, Tq, Tk, Hq, Hkv, D, causal, monkeypatch):
    q, k, v = _qkv(B, Tq, Tk, Hq, Hkv, D, seed=Tq + Tk + D)
    x = fp8.quantize_fp8(q, k, v)
    # poison: every output element the kernel does not write stays NaN
    real_empty = torch.empty
    monkeypatch.setattr(torch, "empty", lambda *a, **kw: real_empty(*a, **kw).fill_(float("nan")))
    out, lse = fp8.flash_attn_fp8(x, causal=causal)
    monkeypatch.setattr(torch, "empty", real_empty)
    assert out.dtype == torch.bfloat16 and out.shape == (B, Tq, Hq, D) and lse.shape == (B, Hq, Tq)
    assert torch.isfinite(out).all() and not torch.isnan(lse).any()
    gold, gold_lse = attention_ref(q.double(), k.double(), v.double(), causal, D ** -0.5)
    emul = fp8.flash_attn_fp8_ref(x, causal=causal)
    err = _rel_rms(out, gold)
    err_emul = _rel_rms(emul, gold)
    err_bf16 = _rel_rms(attention_ref(q, k, v, causal, D ** -0.5)[0], gold)
    # kernel vs the same arithmetic untiled: P's e4m3 rounding depends on the running max per tile, so they differ
    # by a fraction of the approximation's own error, not bit for bit (measured: 0.15-0.4 of it)
    assert _rel_rms(out.double(), emul.double()) < 0.5 * err_emul, (err, err_emul)
    assert err <= 1.25 * err_emul, (err, err_emul)
    assert err < 0.08, f"FP8 attention's relative RMS error {err:.4f} (bf16: {err_bf16:.4f})"
    assert err > err_bf16  # an approximation, coarser than bf16 (a check that fp8 really ran)
    assert torch.allclose(lse.double(), gold_lse.double(), atol=0.05 + 0.02 * gold_lse.abs().max().item())


def test_hadamard_lowers_the_error_with_an_outlier_channel():
    q, k, v = _qkv(1, 128, 128, 2, 2, 64, seed=5, outlier=30.0)
    gold = attention_ref(q.double(), k.double(), v.double(), False, 64 ** -0.5)[0]
    plain = fp8.flash_attn_fp8(fp8.quantize_fp8(q, k, v))[0]
    rotated = fp8.flash_attn_fp8(fp8.quantize_fp8(q, k, v, hadamard=True))[0]
    e_plain, e_rot = _rel_rms(plain, gold), _rel_rms(rotated, gold)
    assert e_rot < 0.8 * e_plain, (e_rot, e_plain)


def test_bad_inputs_fail_before_work():
    q, k, v = _qkv(1, 8, 8, 2, 1, 64, seed=0)
    with pytest.raises(DTypeError, match="float16, bfloat16 or float32"):
        fp8.quantize_fp8(q.to(torch.int8), k, v)
    with pytest.raises(UnsupportedError, match="head_dim 48"):
        fp8.quantize_fp8(q[..., :48], k[..., :48], v[..., :48])
    with pytest.raises(ShapeError, match="same shape"):
        fp8.quantize_fp8(q, k, v[:, :4])
    with pytest.raises(UnsupportedError, match="power-of-two"):
        fp8.hadamard_rotation(48)
    with pytest.raises(TypeError, match="quantize_fp8"):
        fp8.flash_attn_fp8(q)


def test_cpu_tensors_without_the_interpreter_are_refused(monkeypatch):
    q, k, v = _qkv(1, 8, 8, 1, 1, 16, seed=0)
    x = fp8.quantize_fp8(q, k, v)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(fp8, "interpreting", lambda: False)
    with pytest.raises(DeviceError, match="flash_attn_fp8_ref"):
        fp8.flash_attn_fp8(x)
