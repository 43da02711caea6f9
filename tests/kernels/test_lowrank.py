"""FlashSVD's kernels (low-rank attention, low-rank SwiGLU) against fp64 references, through Triton's interpreter.

Shapes are deliberately not multiples of any tile (T = 1, 37; D = 48; ranks 5, 11, 13). Low-precision runs follow
the tolerance rule: the kernel's error against fp64 is at most 2x (+ a floor) the error of plain PyTorch running
the same factors unfused in that precision."""

from __future__ import annotations

import pytest
import torch

from ioaware.env import settings
from ioaware.errors import DTypeError, ShapeError, UnsupportedError
from ioaware.iomodel import REGISTRY
from ioaware.kernels import last_backend
from ioaware.kernels.lowrank import (
    apply_rope_half,
    lowrank_attn,
    lowrank_attn_ref,
    lowrank_ffn,
    lowrank_ffn_ref,
    lowrank_swiglu,
    lowrank_swiglu_ref,
)
from ioaware.kernels.lowrank.cost import lowrank_attn_cost, lowrank_attn_unfused_cost, lowrank_swiglu_cost
from ioaware.runtime.llm.model import ModelArgs, apply_rope, rope_tables

BACKEND = "interpret" if settings().interpret else "reference"


def rel_rms(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt()).item()


def _attn_inputs(B, Tq, Tk, Hq, Hkv, D, Rq, Rk, Rv, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*s, scale=1.0):
        return (torch.randn(*s, generator=g, dtype=torch.float64) * scale).to(dtype)

    return (r(B, Tq, Hq, Rq), r(Hq, Rq, D, scale=Rq ** -0.5), r(B, Tk, Hkv, Rk), r(Hkv, Rk, D, scale=Rk ** -0.5),
            r(B, Tk, Hkv, Rv), r(Hkv, Rv, D, scale=Rv ** -0.5))


def _rope(S, D, base=100.0):
    inv = 1.0 / (base ** (torch.arange(0, D, 2, dtype=torch.float64) / D))
    ang = torch.outer(torch.arange(S, dtype=torch.float64), inv)
    return ang.cos().float(), ang.sin().float()


def _ref64(ts, **kw):
    rope = kw.pop("rope", None)
    rope64 = None if rope is None else (rope[0].double(), rope[1].double())
    return lowrank_attn_ref(*(t.double() for t in ts), rope=rope64, **kw)


ATTN_CASES = [
    pytest.param(dict(B=2, Tq=37, Tk=37, Hq=4, Hkv=2, D=48, Rq=11, Rk=13, Rv=5), True, True,
                 id="B2-T37-H4-KV2-D48-causal-rope"),
    pytest.param(dict(B=1, Tq=29, Tk=29, Hq=2, Hkv=2, D=32, Rq=7, Rk=7, Rv=9), False, False, id="B1-T29-D32-noncausal"),
    pytest.param(dict(B=2, Tq=1, Tk=23, Hq=4, Hkv=1, D=16, Rq=5, Rk=6, Rv=5), True, True, id="B2-Tq1-Tk23-MQA-decode"),
    pytest.param(dict(B=1, Tq=9, Tk=40, Hq=3, Hkv=3, D=64, Rq=17, Rk=3, Rv=20), True, True, id="B1-Tq9-Tk40-chunk"),
]


@pytest.mark.parametrize("shape,causal,rope", ATTN_CASES)
def test_attention_fp32_matches_fp64_reference(poison, shape, causal, rope):
    ts = _attn_inputs(dtype=torch.float32, **shape)
    tab = _rope(shape["Tk"], shape["D"]) if rope else None
    o = lowrank_attn(*ts, causal=causal, rope=tab)
    assert last_backend("lowrank_attn") == BACKEND
    ref = _ref64(ts, causal=causal, rope=tab)
    assert o.shape == ref.shape and o.dtype == torch.float32
    assert rel_rms(o, ref) < 1e-5


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_attention_low_precision_within_twice_pytorch_error(poison, dtype):
    shape = dict(B=1, Tq=33, Tk=33, Hq=2, Hkv=1, D=32, Rq=9, Rk=12, Rv=7)
    ts = _attn_inputs(dtype=dtype, seed=1, **shape)
    tab = _rope(33, 32)
    ref = _ref64(ts, causal=True, rope=tab)
    base = rel_rms(lowrank_attn_ref(*ts, causal=True, rope=tab, upcast=False), ref)
    err = rel_rms(lowrank_attn(*ts, causal=True, rope=tab), ref)
    assert err <= 2 * base + 1e-3, f"kernel {err:.3g} vs plain PyTorch {base:.3g}"


def test_attention_cache_seqlens_ignores_keys_past_the_fill(poison):
    """The static decode step: the whole cache is passed; each row's fill says which keys exist."""
    ts = _attn_inputs(B=2, Tq=3, Tk=30, Hq=2, Hkv=2, D=16, Rq=4, Rk=5, Rv=6, dtype=torch.float32, seed=2)
    lens = torch.tensor([11, 30], dtype=torch.int32)
    tab = _rope(30, 16)
    o = lowrank_attn(*ts, causal=True, rope=tab, cache_seqlens=lens)
    pq, vq, pk, vk, pv, vv = ts
    garbage = pk.clone()
    garbage[0, 11:] = 1e4  # keys past the fill must not matter
    o2 = lowrank_attn(pq, vq, garbage, vk, pv, vv, causal=True, rope=tab, cache_seqlens=lens)
    ref = _ref64(ts, causal=True, rope=tab, cache_seqlens=lens)
    assert rel_rms(o, ref) < 1e-5
    assert torch.equal(o, o2)


def test_rope_half_tables_equal_the_models_rotate_half():
    """The kernels take one angle per frequency; the runtime's tables repeat them: both rotate the same way."""
    args = ModelArgs(dim=64, n_layers=1, n_heads=2, n_kv_heads=2, hidden_dim=96, vocab_size=10, rope_base=500.0)
    cos, sin = rope_tables(args, 20)  # (20, 32)
    x = torch.randn(1, 20, 2, 32)
    ours = apply_rope_half(x, cos[:, :16], sin[:, :16], torch.arange(20))
    assert torch.allclose(ours, apply_rope(x, cos, sin), atol=1e-6)


SWIGLU = dict(M=45, F=70, RG=13, RU=9, R2=37)  # R2 spans two interpreter tiles: the rebuild path


def _swiglu_inputs(M, F, RG, RU, R2, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*s, scale=1.0):
        return (torch.randn(*s, generator=g, dtype=torch.float64) * scale).to(dtype)

    return r(M, RG), r(M, RU), r(RG, F, scale=RG ** -0.5), r(RU, F, scale=RU ** -0.5), r(F, R2, scale=F ** -0.5)


@pytest.mark.parametrize("schedule", ["fused", "slab"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_swiglu_schedules_match_reference(poison, schedule, dtype):
    ts = _swiglu_inputs(dtype=dtype, **SWIGLU)
    s = lowrank_swiglu(*ts, schedule=schedule, slab_rows=16)  # 3 slabs, the last one partial
    assert last_backend("lowrank_swiglu") == (f"{BACKEND}:{schedule}" if BACKEND != "reference" else "reference")
    ref = lowrank_swiglu_ref(*(t.double() for t in ts))
    if dtype == torch.float32:
        assert rel_rms(s, ref) < 1e-5
    else:
        base = rel_rms(lowrank_swiglu_ref(*ts, upcast=False), ref)
        assert rel_rms(s, ref) <= 2 * base + 1e-3


def test_ffn_slices_one_rank_product_and_matches_reference(poison):
    """lowrank_ffn takes x U13 = [x Ug | x Uu] in one GEMM and passes column slices (strided views) on."""
    g = torch.Generator().manual_seed(3)
    d, F, rg, ru, r2 = 40, 70, 13, 9, 17
    x = torch.randn(2, 19, d, generator=g)
    ug, uu = torch.randn(d, rg, generator=g) / d ** .5, torch.randn(d, ru, generator=g) / d ** .5
    vg, vu = torch.randn(rg, F, generator=g) / rg ** .5, torch.randn(ru, F, generator=g) / ru ** .5
    u2, v2 = torch.randn(F, r2, generator=g) / F ** .5, torch.randn(r2, d, generator=g) / r2 ** .5
    y = lowrank_ffn(x, torch.cat([ug, uu], 1), vg, vu, u2, v2)
    ref = lowrank_ffn_ref(x.double(), ug.double(), vg.double(), uu.double(), vu.double(), u2.double(), v2.double())
    assert y.shape == (2, 19, d)
    assert rel_rms(y, ref) < 1e-5


def test_autograd_runs_the_reference():
    ts = [t.requires_grad_() for t in _swiglu_inputs(dtype=torch.float32, **SWIGLU)]
    lowrank_swiglu(*ts).sum().backward()
    assert last_backend("lowrank_swiglu") == "reference"
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in ts)


@pytest.mark.parametrize("bad,err,msg", [
    (lambda t: (t[0][0],) + t[1:], ShapeError, "must be 4-D"),
    (lambda t: (t[0], t[1][:, :-1]) + t[2:], ShapeError, "to expand pq"),
    (lambda t: (t[0], t[1].double()) + t[2:], DTypeError, "supported: float16"),
    (lambda t: (t[0], t[1].half()) + t[2:], DTypeError, "must share a dtype"),
], ids=["pq-3d", "vq-rank-mismatch", "fp64", "mixed-dtypes"])
def test_attention_bad_inputs_raise_one_line(bad, err, msg):
    ts = _attn_inputs(B=1, Tq=4, Tk=4, Hq=2, Hkv=1, D=16, Rq=3, Rk=3, Rv=3, dtype=torch.float32)
    with pytest.raises(err, match=msg) as e:
        lowrank_attn(*bad(ts))
    assert "\n" not in str(e.value)


def test_attention_rejects_odd_head_dim_rope_and_huge_ranks():
    ts = _attn_inputs(B=1, Tq=4, Tk=4, Hq=1, Hkv=1, D=15, Rq=3, Rk=3, Rv=3, dtype=torch.float32)
    with pytest.raises(ShapeError, match="even head_dim"):
        lowrank_attn(*ts, rope=_rope(4, 16))
    big = _attn_inputs(B=1, Tq=2, Tk=2, Hq=1, Hkv=1, D=16, Rq=300, Rk=3, Rv=3, dtype=torch.float32)
    with pytest.raises(UnsupportedError, match="per-head ranks"):
        lowrank_attn(*big)
    with pytest.raises(ShapeError, match=r"rope cos must be \(>= 4, 8\)"):
        lowrank_attn(*_attn_inputs(B=1, Tq=4, Tk=4, Hq=1, Hkv=1, D=16, Rq=3, Rk=3, Rv=3, dtype=torch.float32),
                     rope=_rope(3, 16))


def test_swiglu_bad_inputs():
    ts = _swiglu_inputs(dtype=torch.float32, **SWIGLU)
    with pytest.raises(ShapeError, match="FFN widths differ"):
        lowrank_swiglu(ts[0], ts[1], ts[2], ts[3], ts[4][:-1])
    with pytest.raises(ValueError, match="schedule must be one of"):
        lowrank_swiglu(*ts, schedule="tiled")


def test_costs_are_registered_and_order_the_schedules():
    """The iomodel counts: fused attention reads rank-R rows instead of writing and re-reading full-size Q/K/V;
    the fused SwiGLU does the unfused FLOPs exactly when R2 fits one tile and writes only s; the unfused FFN moves
    at least the 6 M F elements the reference annotates beyond the fused one."""
    assert "lowrank_attn" in REGISTRY and "lowrank_swiglu" in REGISTRY
    kw = dict(B=8, Tq=8192, Tk=8192, Hq=32, D=128, Rq=32, Rk=32, Rv=32)
    fused, unfused = lowrank_attn_cost(**kw), lowrank_attn_unfused_cost(**kw)
    assert fused.bytes("hbm") < unfused.bytes("hbm")
    assert fused.written("hbm") == 8 * 8192 * 32 * 128 * 2
    M, F, R = 4096, 11008, 128
    fu = lowrank_swiglu_cost(M, F, R, R, R, "fused", block_r2=128)
    un = lowrank_swiglu_cost(M, F, R, R, R, "unfused")
    assert fu.flops == un.flops == M * (2 * 2 * R * F + 2 * F * R)
    assert fu.written("hbm") == M * R * 2
    assert un.bytes("hbm") - M * R * 2 >= 6 * M * F * 2
    two = lowrank_swiglu_cost(M, F, R, R, 2 * R, "fused", block_r2=128)  # R2 spans two tiles: the rebuild twice
    assert two.flops == M * (4 * R * F * 2 + 2 * F * 2 * R)
    with pytest.raises(ValueError, match="schedule must be"):
        lowrank_swiglu_cost(M, F, R, R, R, "magic")
