"""The low-rank attention's 'slab' schedule (a group of KV heads at a time: Q, K, V expanded and rotated once into
slab buffers by one Triton pass, then flash attention) against fp64 references, through Triton's interpreter, at
shapes that are multiples of no tile (T = 37, 41; D = 48; ranks 5..13). Tolerance rule as tests/kernels/
test_lowrank.py: fp32 to 1e-5 relative RMS; 16-bit within 2x (+ a floor) plain PyTorch's error unfused."""

from __future__ import annotations

import pytest
import torch

# the inputs, tables and references of the fused kernel's tests (pytest puts this folder on sys.path)
from test_lowrank import _attn_inputs, _ref64, _rope, rel_rms

from ioaware.env import settings
from ioaware.errors import UnsupportedError
from ioaware.kernels import last_backend
from ioaware.kernels.lowrank import apply_rope_half, choose_attn_schedule, expand_heads, lowrank_attn, lowrank_attn_ref
from ioaware.kernels.lowrank.interface import slab_kv_heads

needs_kernel = pytest.mark.skipif(not settings().interpret, reason="the kernel runs under IOAWARE_INTERPRET=1")

SLAB_CASES = [
    pytest.param(dict(B=2, Tq=37, Tk=37, Hq=4, Hkv=2, D=48, Rq=11, Rk=13, Rv=5), True, True, 1,
                 id="B2-T37-GQA2-D48-causal-rope-1head"),
    pytest.param(dict(B=1, Tq=41, Tk=41, Hq=3, Hkv=3, D=32, Rq=7, Rk=7, Rv=9), False, False, 2,
                 id="B1-T41-D32-noncausal-2heads"),  # 3 KV heads in slabs of 2: a short last slab
    pytest.param(dict(B=1, Tq=9, Tk=40, Hq=4, Hkv=1, D=16, Rq=5, Rk=6, Rv=5), True, True, None,
                 id="B1-Tq9-Tk40-MQA-chunk-auto"),  # queries bottom-right: positions 31..39
]


@needs_kernel
@pytest.mark.parametrize("shape,causal,rope,heads", SLAB_CASES)
def test_slab_fp32_matches_fp64_reference(poison, shape, causal, rope, heads):
    ts = _attn_inputs(dtype=torch.float32, seed=3, **shape)
    tab = _rope(shape["Tk"], shape["D"]) if rope else None
    o = lowrank_attn(*ts, causal=causal, rope=tab, schedule="slab", slab_heads=heads)
    assert last_backend("lowrank_attn") == "interpret" and last_backend("lowrank_attn_schedule") == "slab"
    ref = _ref64(ts, causal=causal, rope=tab)
    assert o.shape == ref.shape and o.dtype == torch.float32 and not o.isnan().any()
    assert rel_rms(o, ref) < 1e-5
    fused = lowrank_attn(*ts, causal=causal, rope=tab, schedule="fused")  # the two schedules agree
    assert last_backend("lowrank_attn_schedule") == "fused" and rel_rms(o, fused) < 1e-5


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_slab_low_precision_within_twice_pytorch_error(poison, dtype):
    shape = dict(B=1, Tq=35, Tk=35, Hq=4, Hkv=2, D=32, Rq=9, Rk=12, Rv=7)
    ts = _attn_inputs(dtype=dtype, seed=4, **shape)
    tab = _rope(35, 32)
    ref = _ref64(ts, causal=True, rope=tab)
    base = rel_rms(lowrank_attn_ref(*ts, causal=True, rope=tab, upcast=False), ref)
    err = rel_rms(lowrank_attn(*ts, causal=True, rope=tab, schedule="slab", slab_heads=1), ref)
    assert err <= 2 * base + 1e-3, f"slab {err:.3g} vs plain PyTorch {base:.3g}"


@needs_kernel
def test_expand_kernel_writes_the_rotated_heads_of_its_slab(poison):
    from ioaware.kernels.lowrank.kernel import lowrank_expand_fwd

    g = torch.Generator().manual_seed(5)
    B, T, H, R, D, h0, G, pos0 = 2, 37, 5, 11, 48, 1, 3, 6
    p = torch.randn(B, T, H, R, generator=g)
    v = torch.randn(H, R, D, generator=g) / R ** 0.5
    cos, sin = _rope(T + pos0, D)
    out = torch.empty(B, T, G, D)
    lowrank_expand_fwd(p, v, h0, out, (cos, sin), pos0)
    want = apply_rope_half(expand_heads(p[:, :, h0:h0 + G].double(), v[h0:h0 + G].double()), cos.double(),
                           sin.double(), torch.arange(pos0, pos0 + T))
    assert rel_rms(out, want) < 1e-6
    lowrank_expand_fwd(p, v, h0, out)  # no rope: the plain product
    assert rel_rms(out, expand_heads(p[:, :, h0:h0 + G].double(), v[h0:h0 + G].double())) < 1e-6


def test_schedule_choice_and_slab_size():
    assert choose_attn_schedule(1) == "fused" and choose_attn_schedule(128) == "fused"
    assert choose_attn_schedule(129) == "slab" and choose_attn_schedule(8192, torch.ones(2)) == "fused"
    # the bench's block: 8 x 8192 tokens, 32 heads of 128, bf16: 64 MiB per KV head (q, o, k, v): 4 per 256 MiB
    assert slab_kv_heads(8, 8192, 8192, 32, 32, 128, 2) == 4
    assert slab_kv_heads(8, 8192, 8192, 32, 8, 128, 2) == 1  # GQA 4: a KV head carries 4 query heads
    assert slab_kv_heads(1, 10, 10, 4, 2, 16, 4) == 2  # never more than there are


@pytest.mark.parametrize("kw,err,msg", [
    (dict(schedule="tiled"), ValueError, r"lowrank_attn: schedule must be one of fused, slab \(or None\), got 'tiled'"),
    (dict(schedule="slab", cache_seqlens=torch.tensor([5], dtype=torch.int32)), UnsupportedError,
     r"the 'slab' schedule takes no cache_seqlens"),
    (dict(slab_heads=0), ValueError, r"slab_heads must be in \[1, 2\] \(KV heads\), got 0"),
    (dict(slab_heads=3), ValueError, r"slab_heads must be in \[1, 2\]"),
], ids=["bad-schedule", "slab-seqlens", "zero-heads", "too-many-heads"])
def test_bad_schedule_arguments_are_one_line(kw, err, msg):
    ts = _attn_inputs(B=1, Tq=5, Tk=5, Hq=2, Hkv=2, D=16, Rq=3, Rk=3, Rv=3, dtype=torch.float32)
    with pytest.raises(err, match=msg) as e:
        lowrank_attn(*ts, **kw)
    assert "\n" not in str(e.value)


@needs_kernel
def test_bench_providers_agree_with_the_slab_schedule_chosen(monkeypatch):
    """`ioaware bench lowrank`'s 'fused' provider takes the automatic schedule, which at the bench's shape is the
    slab one: shrink the fused kernel's query tile so that the tiny shape (T = 37) picks it too."""
    from ioaware.bench import lowrank as bl
    from ioaware.kernels.lowrank import kernel as K

    monkeypatch.setitem(K.ATTN_TILES, "block_m", 16)
    s = {**bl.SHAPE, "B": 2, "T": 37, "d": 64, "F": 96, "H": 4, "Hkv": 2, "D": 16}
    r = bl._ranks(s)
    dense, lr = bl._weights(s, r, "cpu")
    provs = bl._providers(s, r, dense, lr, "cpu")
    x = torch.randn(s["B"], s["T"], s["d"], generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    with torch.inference_mode():
        un = provs["unfused"][0](x)
        slab = provs["fused"][0](x)
        assert last_backend("lowrank_attn_schedule") == "slab"
        kernel = provs["fused (in-kernel attention)"][0](x)
        assert last_backend("lowrank_attn_schedule") == "fused"
    assert bl._rel(slab, un) < 2e-2 and bl._rel(kernel, un) < 2e-2 and bl._rel(slab, kernel) < 2e-2


def test_slab_cost_is_registered_and_sits_between_the_others():
    from ioaware.iomodel import REGISTRY
    from ioaware.kernels.lowrank.cost import lowrank_attn_cost, lowrank_attn_slab_cost, lowrank_attn_unfused_cost

    assert "lowrank_attn_slab" in REGISTRY
    ck = dict(B=8, Tq=8192, Tk=8192, Hq=32, D=128, Rq=32, Rk=32, Rv=32, Hkv=32)
    fused, slab, unfused = (f(**ck) for f in (lowrank_attn_cost, lowrank_attn_slab_cost, lowrank_attn_unfused_cost))
    # the slab rebuilds each key once (+ the rotated products the unfused GEMMs do not count): far below the fused
    # kernel's rebuild per query tile. Traffic: the unfused path's less its separate RoPE pass (q, k read and written
    # once more), plus the O copy, with the RoPE rows read per head (L2 hits on the device; L2 is not modelled)
    assert unfused.flops < slab.flops < 0.75 * fused.flops
    o = 8 * 8192 * 32 * 128 * 2
    assert slab.written("hbm") == unfused.written("hbm") - 2 * o + o
    tables_slab, tables_unfused = 8 * (2 * 8192 * 32) * 64 * 2 * 2, 2 * 8192 * 128 * 4
    want = unfused.read("hbm") - 2 * o + o + tables_slab - tables_unfused
    assert slab.read("hbm") == pytest.approx(want, rel=1e-3)
