"""flash_decode against an fp64 reference on CPU through Triton's interpreter: contiguous and paged caches,
GQA packing, speculative Tq, split-KV combine, in-place append, and FlashDecoding++'s unified max with its
exact fallback forced by adversarial scores."""

import pytest
import torch

import ioaware
from ioaware.kernels.attention.decode import interface as decode_iface
from ioaware.kernels.attention.decode.reference import decode_ref

CASES = [
    # B, Tq, Hq, Hkv, D, page (0 = contiguous), splits, dtype
    pytest.param(3, 1, 8, 2, 64, 0, None, torch.float32, id="B3-Tq1-H8-Hkv2-D64-contig-fp32"),
    pytest.param(2, 1, 4, 4, 59, 16, 3, torch.float16, id="B2-Tq1-H4-MHA-D59-page16-split3-fp16"),
    pytest.param(2, 4, 8, 1, 64, 1, 2, torch.bfloat16, id="B2-Tq4-H8-MQA-D64-page1-bf16"),
    pytest.param(1, 16, 4, 2, 32, 0, 4, torch.float16, id="B1-Tq16-H4-Hkv2-D32-contig-split4-fp16"),
    pytest.param(2, 3, 6, 3, 111, 256, None, torch.float32, id="B2-Tq3-H6-Hkv3-D111-page256-fp32"),
    # one split: the split kernel writes the output itself, no combine launch
    pytest.param(2, 2, 6, 3, 40, 0, 1, torch.bfloat16, id="B2-Tq2-H6-Hkv3-D40-contig-split1-bf16"),
    pytest.param(3, 1, 4, 1, 24, 8, 1, torch.float16, id="B3-Tq1-H4-MQA-D24-page8-split1-fp16"),
]


def _make(B, Tq, Hq, Hkv, D, page, dtype, seed, lens=None):
    g = torch.Generator().manual_seed(seed)
    S = 300
    q = torch.randn(B, Tq, Hq, D, generator=g).to(dtype)
    if lens is None:
        lens = torch.randint(0, S - Tq, (B,), generator=g).to(torch.int32)
    if page:
        pages_per_row = -(-S // page)
        n_pages = B * pages_per_row + 3
        kc = torch.randn(n_pages, page, Hkv, D, generator=g).to(dtype)
        vc = torch.randn(n_pages, page, Hkv, D, generator=g).to(dtype)
        bt = torch.randperm(n_pages, generator=g)[: B * pages_per_row].view(B, pages_per_row).to(torch.int32)
    else:
        kc = torch.randn(B, S, Hkv, D, generator=g).to(dtype)
        vc = torch.randn(B, S, Hkv, D, generator=g).to(dtype)
        bt = None
    kn = torch.randn(B, Tq, Hkv, D, generator=g).to(dtype)
    vn = torch.randn(B, Tq, Hkv, D, generator=g).to(dtype)
    return q, kc, vc, lens, bt, kn, vn


def _expected(q, kc, vc, lens, bt, kn, vn):
    kc2, vc2 = kc.clone(), vc.clone()
    decode_iface._append(kc2, kn, lens, bt)
    decode_iface._append(vc2, vn, lens, bt)
    Tq = q.shape[1]
    ref, lse = decode_ref(q.double(), kc2.double(), vc2.double(), lens + Tq, bt)
    pt, _ = decode_ref(q, kc2, vc2, lens + Tq, bt)  # plain PyTorch in the inputs' dtype (upcast inside ref)
    return kc2, vc2, ref, lse, pt


@pytest.mark.parametrize("B,Tq,Hq,Hkv,D,page,splits,dtype", CASES)
@pytest.mark.parametrize("unified", [None, 1.0], ids=["online", "unified"])
def test_flash_decode(B, Tq, Hq, Hkv, D, page, splits, dtype, unified, poison):
    q, kc, vc, lens, bt, kn, vn = _make(B, Tq, Hq, Hkv, D, page, dtype, seed=B * 100 + Tq + D)
    kc2, vc2, ref, lse_ref, _ = _expected(q, kc, vc, lens, bt, kn, vn)
    out, lse = ioaware.flash_decode(q, kc, vc, lens, bt, kn, vn, unified_max=unified, num_splits=splits,
                                    return_lse=True)
    assert ioaware.last_backend("flash_decode") == "interpret"
    assert torch.equal(kc, kc2) and torch.equal(vc, vc2), "k_new/v_new not appended where expected"
    assert not out.isnan().any()
    tol = 1e-5 if dtype == torch.float32 else (2e-3 if dtype == torch.float16 else 1.6e-2)
    assert (out.double() - ref).abs().max().item() < tol
    fin = lse_ref.isfinite()
    assert torch.equal(lse.isfinite(), fin)
    assert (lse[fin].double() - lse_ref[fin]).abs().max().item() < 1e-3


@pytest.mark.parametrize("phi", [-40.0, 60.0], ids=["phi-too-low-overflow", "phi-too-high-underflow"])
def test_unified_max_fallback_is_exact(phi):
    # fp16: P is cast to fp16 for the P V product, so scores far above phi would overflow and far below would
    # vanish; the kernel must notice, recompute those splits with the online softmax, and stay exact
    q, kc, vc, lens, bt, kn, vn = _make(2, 1, 4, 2, 64, 0, torch.float16, seed=11)
    q = q * 4  # scores of a few units
    _, _, ref, _, _ = _expected(q, kc, vc, lens, bt, kn, vn)
    out = ioaware.flash_decode(q, kc, vc, lens, bt, kn, vn, unified_max=phi, num_splits=2)
    assert int(decode_iface.stats["fallbacks"]) > 0, "adversarial phi must force the fallback"
    assert (out.double() - ref).abs().max().item() < 2e-3


def test_unified_max_in_range_takes_no_fallback():
    q, kc, vc, lens, bt, kn, vn = _make(2, 1, 4, 2, 64, 0, torch.float16, seed=12)
    _, _, ref, _, _ = _expected(q, kc, vc, lens, bt, kn, vn)
    out = ioaware.flash_decode(q, kc, vc, lens, bt, kn, vn, unified_max=2.0, num_splits=2)
    assert int(decode_iface.stats["fallbacks"]) == 0
    assert (out.double() - ref).abs().max().item() < 2e-3


def test_empty_cache_rows_and_no_new_tokens():
    q, kc, vc, _, bt, _, _ = _make(2, 1, 4, 2, 32, 0, torch.float32, seed=13)
    lens = torch.tensor([0, 5], dtype=torch.int32)
    out, lse = ioaware.flash_decode(q, kc, vc, lens, return_lse=True)
    assert torch.all(out[0] == 0) and torch.all(lse[0] == float("-inf"))
    ref, _ = decode_ref(q.double(), kc.double(), vc.double(), lens)
    assert (out[1].double() - ref[1]).abs().max() < 1e-5


def test_matches_flash_attn_on_a_full_cache():
    q, kc, vc, _, _, _, _ = _make(1, 2, 4, 2, 64, 0, torch.float32, seed=14)
    lens = torch.tensor([300], dtype=torch.int32)
    out = ioaware.flash_decode(q, kc, vc, lens)
    ref = ioaware.flash_attn(q, kc, vc, causal=True)
    assert (out - ref).abs().max() < 1e-5


def _t(*s, dtype=torch.float32):
    return torch.zeros(*s, dtype=dtype)


@pytest.mark.parametrize("args,exc,msg", [
    pytest.param((_t(1, 17, 4, 32), _t(1, 64, 2, 32), _t(1, 64, 2, 32), torch.zeros(1, dtype=torch.int32)),
                 ioaware.UnsupportedError, "1 to 16", id="too-many-query-tokens"),
    pytest.param((_t(1, 1, 3, 32), _t(1, 64, 2, 32), _t(1, 64, 2, 32), torch.zeros(1, dtype=torch.int32)),
                 ioaware.ShapeError, "multiple", id="gqa"),
    pytest.param((_t(1, 1, 4, 32), _t(1, 64, 2, 32), _t(1, 64, 2, 32), torch.zeros(2, dtype=torch.int32)),
                 ioaware.ShapeError, "cache_seqlens", id="seqlens-shape"),
    pytest.param((_t(1, 1, 4, 32), _t(1, 64, 2, 32), _t(1, 64, 2, 32), torch.tensor([64], dtype=torch.int32),
                  None, _t(1, 1, 2, 32), _t(1, 1, 2, 32)), ioaware.ShapeError, "capacity", id="overflow"),
    pytest.param((_t(1, 1, 4, 32), _t(1, 64, 2, 32, dtype=torch.float16), _t(1, 64, 2, 32),
                  torch.zeros(1, dtype=torch.int32)), ioaware.DTypeError, "share a dtype", id="dtype"),
    pytest.param((_t(1, 1, 4, 32), _t(4, 16, 2, 32), _t(4, 16, 2, 32), torch.tensor([20], dtype=torch.int32),
                  torch.tensor([[0, 9]], dtype=torch.int32)), ioaware.ShapeError, "outside", id="bad-page"),
    pytest.param((_t(1, 1, 4, 32), _t(1, 64, 2, 32), _t(1, 64, 2, 32), torch.zeros(1, dtype=torch.int32), None,
                  _t(1, 1, 2, 32)), ioaware.ShapeError, "both", id="k-new-alone"),
])
def test_errors(args, exc, msg):
    with pytest.raises(exc, match=msg):
        ioaware.flash_decode(*args)


def test_compiles_as_one_op_that_appends():
    """torch.compile(fullgraph=True) traces through flash_decode (a custom op mutating the cache): same output,
    same cache as eager."""
    q, kc, vc, lens, bt, kn, vn = _make(2, 1, 4, 2, 32, 0, torch.float32, seed=5)
    kc_e, vc_e = kc.clone(), vc.clone()

    def f(q, kc, vc, lens, kn, vn):
        return ioaware.flash_decode(q * 1.5, kc, vc, lens, k_new=kn, v_new=vn) + 1

    got = torch.compile(f, backend="aot_eager", fullgraph=True)(q, kc, vc, lens, kn, vn)
    ref = f(q, kc_e, vc_e, lens, kn, vn)
    assert torch.allclose(got, ref, atol=1e-6)
    assert torch.equal(kc, kc_e) and torch.equal(vc, vc_e)
