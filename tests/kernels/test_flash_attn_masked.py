"""flash_attn's options (window, ALiBi, softcap, prefix-LM, block-sparse, dropout) and flash_attn_varlen against an
fp64 reference with an explicit mask, on CPU through Triton's interpreter (IOAWARE_INTERPRET=1).

Tolerance rule as in test_flash_attn.py: max error against fp64 at most 2x that of plain PyTorch in the same dtype
(the same masked reference, computed in that dtype), plus the dtype's rounding at that magnitude. Combinations are
covered by a few cases that each turn several options on, at sizes that are not multiples of the 32-row tiles.
"""

import functools

import pytest
import torch

import ioaware
from ioaware.kernels.attention.flash.reference import attention_masked_ref, attention_varlen_ref

F32, BF16, F16 = torch.float32, torch.bfloat16, torch.float16


def _atol(ref: torch.Tensor, dtype) -> float:
    """The dtype's rounding error at the reference's magnitude (as in test_flash_attn.py)."""
    if dtype == torch.float32:
        return 1e-6
    r = ref.detach().to(dtype)
    return 2 * (r + 0.3 - 0.3 - r).abs().max().item()


@functools.cache
def _keep_flat_kernel():
    # built on first use: triton must be imported after ioaware has switched on the interpreter
    import triton
    import triton.language as tl

    @triton.jit
    def kernel(KEEP, seed, drop_p, N, BLOCK: tl.constexpr):
        o = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        tl.store(KEEP + o, (tl.rand(seed, o) >= drop_p).to(tl.int8), mask=o < N)

    return kernel


def _keep(rows: int, max_k: int, Tk: int, p: float, seed: int) -> torch.Tensor:
    """The kernels' keep mask from its definition (masked.py's _keep): element (row, c) is kept when
    tl.rand(seed, row * max_k + c) >= p. Drawn as one flat range of offsets in 16k-wide programs: the library's
    dropout_keep_mask launches a program per row and 64 keys, ~20 ms each under the interpreter (15 s of a case's
    reference); test_keep_mask_equals_the_librarys checks that the two agree."""
    n = rows * max_k
    keep = torch.empty(n, dtype=torch.int8)
    _keep_flat_kernel()[(-(-n // 16384),)](keep, int(seed), float(p), n, BLOCK=16384)
    return keep.view(rows, max_k)[:, :Tk].bool()


@pytest.mark.parametrize("rows,max_k,Tk,p,seed", [(12, 150, 130, 0.2, 2**40 + 3), (5, 64, 64, 0.5, 7)])
def test_keep_mask_equals_the_librarys(rows, max_k, Tk, p, seed):
    from ioaware.kernels import _dispatch

    masked = _dispatch.load_kernel_module("ioaware.kernels.attention.flash.masked")
    want = masked.dropout_keep_mask(rows, max_k, Tk, p, seed, "cpu")
    assert want.shape == (rows, Tk) and torch.equal(_keep(rows, max_k, Tk, p, seed), want)


def _compare(out, lse, grads, ref_fn, ins, do, dtype):
    """ref_fn(q, k, v, upcast) -> (out, lse): fp64 reference vs the kernel, plain PyTorch sets the tolerance."""
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in ins)
    ref, lse_ref = ref_fn(q64, k64, v64, True)
    ref_grads = torch.autograd.grad(ref, (q64, k64, v64), do.double())
    qp, kp, vp = (t.detach().clone().requires_grad_() for t in ins)
    pt, _ = ref_fn(qp, kp, vp, False)
    pt_grads = torch.autograd.grad(pt, (qp, kp, vp), do)
    for name, x, xr, xp in zip(("out", "dq", "dk", "dv"), (out, *grads), (ref, *ref_grads), (pt, *pt_grads)):
        assert not x.isnan().any(), f"{name} has NaN"
        e, e_pt = (x.double() - xr).abs().max().item(), (xp.double() - xr).abs().max().item()
        assert e <= 2 * e_pt + _atol(xr, dtype), f"{name}: {e:.3g} vs PyTorch {e_pt:.3g}"
    fin = lse_ref.isfinite()
    assert torch.equal(lse.isfinite(), fin), "rows that see no key must have LSE = -inf (and only those)"
    assert (lse[fin].double() - lse_ref[fin]).abs().max().item() < 1e-4
    assert torch.all(out.transpose(-2, -3)[~fin] == 0) if out.dim() == 3 else True


CASES = [
    # B, Tq, Tk, Hq, Hkv, D, dtype, options
    pytest.param(1, 97, 130, 4, 2, 59, F32, dict(window_size=(17, 5)), id="window17-5-Tq97-Tk130-GQA-D59-fp32"),
    pytest.param(1, 130, 130, 4, 2, 64, BF16, dict(causal=True, window_size=(33, -1)), id="causal-sliding33-bf16"),
    pytest.param(2, 63, 97, 2, 1, 40, F16, dict(causal=True, alibi=(2,)), id="causal-alibiH-B2-MQA-fp16"),
    pytest.param(2, 70, 70, 2, 2, 32, F32, dict(alibi=(2, 2), softcap=5.0, window_size=(20, 20)),
                 id="alibiBH-softcap-window20-fp32"),
    pytest.param(1, 130, 97, 2, 1, 111, BF16, dict(softcap=2.0), id="softcap2-Tq130-Tk97-D111-bf16"),
    pytest.param(2, 97, 97, 2, 1, 64, F16, dict(causal=True, prefix_lens=[0, 50]), id="prefixLM-B2-fp16"),
    pytest.param(1, 90, 40, 2, 2, 24, F32, dict(causal=True, window_size=(7, -1)),
                 id="causal-window7-Tq>Tk-empty-rows"),
    pytest.param(1, 97, 97, 4, 1, 32, F32, dict(causal=True, dropout_p=0.2), id="causal-dropout0.2-MQA-fp32"),
    pytest.param(1, 40, 33, 2, 1, 200, F32, dict(window_size=(9, 2), softcap=1.5), id="window-softcap-D200-fp32"),
    pytest.param(1, 63, 80, 2, 2, 48, F16, dict(dropout_p=0.3, alibi=(2,), softcap=3.0, window_size=(25, 10)),
                 id="dropout-alibi-softcap-window-fp16"),
    pytest.param(1, 97, 130, 2, 1, 32, F32, dict(block=(32, 32)), id="blocksparse32-fp32"),
    pytest.param(1, 128, 96, 2, 1, 32, F32, dict(block=(32, 32), softcap=2.0), id="blocksparse-exact-tiles-unmasked"),
    pytest.param(2, 100, 100, 2, 2, 64, BF16, dict(block=(16, 64), causal=True, dropout_p=0.1, broadcast=True),
                 id="blocksparse16x64-causal-dropout-bcast-bf16"),
    pytest.param(1, 70, 70, 2, 1, 16, F32, dict(block=(32, 16), softcap=4.0, alibi=(2,), empty_row_block=True),
                 id="blocksparse-empty-rowblock-softcap-alibi"),
]


@pytest.mark.parametrize("B,Tq,Tk,Hq,Hkv,D,dtype,opt", CASES)
def test_flash_attn_options(B, Tq, Tk, Hq, Hkv, D, dtype, opt, poison):
    g = torch.Generator().manual_seed(Tq * 7 + Tk + D)
    q = torch.randn(B, Tq, Hq, D, generator=g).to(dtype).requires_grad_()
    k = torch.randn(B, Tk, Hkv, D, generator=g).to(dtype).requires_grad_()
    v = torch.randn(B, Tk, Hkv, D, generator=g).to(dtype).requires_grad_()
    do = torch.randn(B, Tq, Hq, D, generator=g).to(dtype)
    kw = {key: opt[key] for key in ("causal", "window_size", "softcap", "dropout_p") if key in opt}
    ref_kw = dict(kw)
    if "alibi" in opt:
        kw["alibi_slopes"] = ref_kw["alibi_slopes"] = torch.rand(*opt["alibi"], generator=g)
    if "prefix_lens" in opt:
        kw["prefix_lens"] = ref_kw["prefix_lens"] = torch.tensor(opt["prefix_lens"], dtype=torch.int32)
    if "block" in opt:
        bq, bk = opt["block"]
        shape = (1 if opt.get("broadcast") else B, Hq, -(-Tq // bq), -(-Tk // bk))
        bm = torch.rand(shape, generator=g) < 0.6
        if opt.get("empty_row_block"):
            bm[..., 1, :] = False
        kw.update(block_mask=bm, block_size=(bq, bk))
        ref_kw.update(block_mask=bm, block_size=(bq, bk))
    seed = 1234
    if "dropout_p" in opt:
        kw["seed"] = seed
        ref_kw["keep"] = _keep(B * Hq * Tq, Tk, Tk, opt["dropout_p"], seed).reshape(B, Hq, Tq, Tk)
    out, lse = ioaware.flash_attn(q, k, v, return_lse=True, **kw)
    assert ioaware.last_backend("flash_attn") == "interpret"
    grads = torch.autograd.grad(out, (q, k, v), do)
    if opt.get("empty_row_block"):
        assert torch.all(out[:, 32:64] == 0) and torch.all(lse[:, :, 32:64] == float("-inf"))
    _compare(out, lse, grads, lambda q, k, v, up: attention_masked_ref(q, k, v, upcast=up, **ref_kw), (q, k, v), do,
             dtype)


VARLEN = [
    # seqlens_q, seqlens_k, Hq, Hkv, D, dtype, options
    pytest.param([1, 63, 0, 97], None, 4, 2, 64, BF16, dict(causal=True), id="document-causal-len0-GQA-bf16"),
    pytest.param([17, 40, 5], [30, 40, 1], 2, 2, 59, F16, dict(window_size=(10, 3), alibi=True),
                 id="q!=k-window-alibiBH-fp16"),
    pytest.param([33, 70], None, 2, 1, 32, F32, dict(causal=True, prefix_lens=[5, 40], dropout_p=0.25),
                 id="prefixLM-dropout-fp32"),
    pytest.param([50, 20], [10, 45], 2, 2, 16, F32, dict(causal=True, softcap=3.0), id="softcap-Tq>Tk-empty-rows"),
    pytest.param([40, 1, 66], None, 4, 2, 48, BF16, dict(causal=True, window_size=(20, -1), dropout_p=0.15),
                 id="sliding-dropout-GQA-bf16"),
]


@pytest.mark.parametrize("lens_q,lens_k,Hq,Hkv,D,dtype,opt", VARLEN)
def test_flash_attn_varlen(lens_q, lens_k, Hq, Hkv, D, dtype, opt, poison):
    lens_k = lens_k or lens_q
    cu_q = torch.tensor([0] + lens_q, dtype=torch.int32).cumsum(0, dtype=torch.int32)
    cu_k = torch.tensor([0] + lens_k, dtype=torch.int32).cumsum(0, dtype=torch.int32)
    g = torch.Generator().manual_seed(sum(lens_q) + D)
    q = torch.randn(int(cu_q[-1]), Hq, D, generator=g).to(dtype).requires_grad_()
    k = torch.randn(int(cu_k[-1]), Hkv, D, generator=g).to(dtype).requires_grad_()
    v = torch.randn(int(cu_k[-1]), Hkv, D, generator=g).to(dtype).requires_grad_()
    do = torch.randn(int(cu_q[-1]), Hq, D, generator=g).to(dtype)
    kw = {key: opt[key] for key in ("causal", "window_size", "softcap", "dropout_p") if key in opt}
    ref_kw = dict(kw)
    if opt.get("alibi"):
        kw["alibi_slopes"] = ref_kw["alibi_slopes"] = torch.rand(len(lens_q), Hq, generator=g)
    if "prefix_lens" in opt:
        kw["prefix_lens"] = ref_kw["prefix_lens"] = torch.tensor(opt["prefix_lens"], dtype=torch.int32)
    mq, mk = max(lens_q), max(lens_k)
    if "dropout_p" in opt:
        kw["seed"] = 99
        ref_kw["keep"] = _keep(Hq * q.shape[0], mk, mk, opt["dropout_p"], 99).reshape(Hq, q.shape[0], mk)
    out, lse = ioaware.flash_attn_varlen(q, k, v, cu_q, cu_k, mq, mk, return_lse=True, **kw)
    assert out.shape == q.shape and lse.shape == (Hq, q.shape[0])
    grads = torch.autograd.grad(out, (q, k, v), do)
    _compare(out, lse, grads, lambda q, k, v, up: attention_varlen_ref(q, k, v, cu_q, cu_k, upcast=up, **ref_kw),
             (q, k, v), do, dtype)


def test_tiles_outside_the_band_are_not_loaded():
    # NaN in keys/values 0..31 and queries/grads 0..31: a tile that held them and was loaded would spread NaN
    # (0 * NaN) to every row or key it touched. With a causal window of 31, query rows >= 96 never see key tile
    # [0, 32), and keys >= 96 are never seen by query rows < 32: their results must be clean and exact.
    T, W = 160, 31
    g = torch.Generator().manual_seed(0)
    q, k, v, do = (torch.randn(1, T, 2, 16, generator=g) for _ in range(4))
    for t in (q, k, v, do):
        t[:, :32] = float("nan")
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    out = ioaware.flash_attn(q, k, v, causal=True, window_size=(W, -1))
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), do)
    qc, kc, vc = (t.detach()[:, 32:].double().requires_grad_() for t in (q, k, v))
    ref, _ = attention_masked_ref(qc, kc, vc, causal=True, window_size=(W, -1))
    rg = torch.autograd.grad(ref, (qc, kc, vc), do[:, 32:].double())
    assert (out[:, 96:].double() - ref[:, 64:]).abs().max() < 1e-5  # rows >= 96 see keys >= 65 only
    assert (dq[:, 96:].double() - rg[0][:, 64:]).abs().max() < 1e-5
    assert (dk[:, 96:].double() - rg[1][:, 64:]).abs().max() < 1e-5  # keys >= 96 are seen by rows >= 96 only
    assert (dv[:, 96:].double() - rg[2][:, 64:]).abs().max() < 1e-5


def test_empty_block_rows_are_not_loaded():
    # a key block that no query block of the mask lists is never loaded: NaN there must not reach the output
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 64, 1, 16, generator=g) for _ in range(3))
    k[:, 32:], v[:, 32:] = float("nan"), float("nan")
    bm = torch.tensor([[[[True, False], [True, False]]]])
    out = ioaware.flash_attn(q, k, v, block_mask=bm, block_size=(32, 32))
    ref, _ = attention_masked_ref(q.double(), k[:, :32].double(), v[:, :32].double())
    assert (out.double() - ref).abs().max() < 1e-5


def test_block_lists_cached_per_mask_and_invalidated_by_in_place_writes(monkeypatch):
    """block_lists.py builds a block mask's lists once: a second call with the same, unchanged mask reuses them
    (forward, and the backward's transposed lists); an in-place write (version bump) rebuilds them, with the new
    mask's result."""
    from ioaware.kernels.attention.flash import block_lists as bl

    builds = []
    orig = bl.sparse_index
    monkeypatch.setattr(bl, "sparse_index", lambda blk: builds.append(tuple(blk.stride())) or orig(blk))
    prev = bl.sparse_cache(True)
    bl.SPARSE_CACHE.clear()
    try:
        g = torch.Generator().manual_seed(5)
        q, k, v = (torch.randn(1, 64, 2, 16, generator=g) for _ in range(3))
        bm = torch.tensor([[[True, False], [True, True]], [[False, True], [True, False]]])[None]  # (1, 2, 2, 2)
        ref = lambda m: attention_masked_ref(q.double(), k.double(), v.double(), block_mask=m, block_size=(32, 32))[0]
        a = ioaware.flash_attn(q, k, v, block_mask=bm, block_size=(32, 32))
        assert len(builds) == 1
        cnt, idx = bl.sparse_index_cached(bm)
        b = ioaware.flash_attn(q, k, v, block_mask=bm, block_size=(32, 32))
        assert len(builds) == 1 and torch.equal(a, b)  # reused: no rebuild
        assert bl.sparse_index_cached(bm)[0] is cnt and bl.sparse_index_cached(bm)[1] is idx
        assert (a.double() - ref(bm)).abs().max() < 1e-5
        bm[0, 0, 0, 1] = True  # in place: the version counter moves, the cached lists are stale
        c = ioaware.flash_attn(q, k, v, block_mask=bm, block_size=(32, 32))
        assert len(builds) == 2
        assert (c.double() - ref(bm)).abs().max() < 1e-5 and not torch.equal(a, c)
        assert bl.sparse_index_cached(bm)[0] is not cnt
        # the backward: the forward's lists (dQ) from the cache, the transposed ones (dK/dV) built once
        qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
        for _ in range(2):
            ioaware.flash_attn(qg, kg, vg, block_mask=bm, block_size=(32, 32)).sum().backward()
        assert len(builds) == 3 and builds[-1] == tuple(bm.transpose(-1, -2).stride())
        bl.sparse_cache(False)  # off: every call builds
        ioaware.flash_attn(q, k, v, block_mask=bm, block_size=(32, 32))
        assert len(builds) == 4 and not bl.SPARSE_CACHE
    finally:
        bl.sparse_cache(prev)
        bl.SPARSE_CACHE.clear()


def test_dropout_is_reproducible_and_drops_p():
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 40, 2, 16, generator=g).requires_grad_() for _ in range(3))
    a = ioaware.flash_attn(q, k, v, dropout_p=0.5, seed=7)
    b = ioaware.flash_attn(q, k, v, dropout_p=0.5, seed=7)
    c = ioaware.flash_attn(q, k, v, dropout_p=0.5, seed=8)
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.manual_seed(11)  # seed=None draws the seed from torch's generator: reproducible under manual_seed
    d = ioaware.flash_attn(q, k, v, dropout_p=0.5)
    torch.manual_seed(11)
    assert torch.equal(d, ioaware.flash_attn(q, k, v, dropout_p=0.5))
    assert ioaware.flash_attn(q, k, v, dropout_p=0.5, seed=2**40 + 3).isfinite().all()  # a 64-bit seed
    keep = _keep(32, 2048, 2048, 0.3, 5)
    assert abs(keep.float().mean().item() - 0.7) < 0.01  # 65k draws: the standard error is 0.0018


def test_backward_is_bitwise_deterministic():
    g = torch.Generator().manual_seed(3)
    q = torch.randn(2, 75, 4, 32, generator=g).to(BF16).requires_grad_()
    k, v = (torch.randn(2, 75, 1, 32, generator=g).to(BF16).requires_grad_() for _ in range(2))
    do = torch.randn(2, 75, 4, 32, generator=g).to(BF16)
    runs = []
    for _ in range(2):
        out = ioaware.flash_attn(q, k, v, causal=True, window_size=(20, -1), dropout_p=0.1, seed=4, deterministic=True)
        runs.append(torch.autograd.grad(out, (q, k, v), do))
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_reference_backend_matches(monkeypatch):
    monkeypatch.delenv("IOAWARE_INTERPRET", raising=False)
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, 30, 2, 16, generator=g).requires_grad_() for _ in range(3))
    out = ioaware.flash_attn(q, k, v, causal=True, window_size=(5, 0), softcap=2.0)
    assert ioaware.last_backend("flash_attn") == "reference"
    dq, = torch.autograd.grad(out.sum(), (q,))
    ref, _ = attention_masked_ref(q.double(), k.double(), v.double(), causal=True, window_size=(5, 0), softcap=2.0)
    assert (out.double() - ref).abs().max() < 1e-5
    assert dq.isfinite().all()
    d1 = ioaware.flash_attn(q, k, v, dropout_p=0.5, seed=3)
    assert torch.equal(d1, ioaware.flash_attn(q, k, v, dropout_p=0.5, seed=3))


def test_torch_compile_traces_options_without_graph_break():
    g = torch.Generator().manual_seed(6)
    q, k, v = (torch.randn(1, 33, 2, 16, generator=g).requires_grad_() for _ in range(3))
    slopes = torch.tensor([0.3, 0.1])

    def f(q, k, v):
        return ioaware.flash_attn(q, k, v, causal=True, window_size=(9, -1), alibi_slopes=slopes).sum()

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    loss = compiled(q, k, v)
    gr = torch.autograd.grad(loss, (q, k, v))
    ref = f(q, k, v)
    g_ref = torch.autograd.grad(ref, (q, k, v))
    assert torch.allclose(loss, ref, atol=1e-5)
    for a, b in zip(gr, g_ref):
        assert torch.allclose(a, b, atol=1e-5)


def test_plain_calls_run_the_unchanged_kernel(monkeypatch):
    # options at their defaults (or causal with right = 0) must not reach masked.py: the plain kernel's speed is kept
    from ioaware.kernels import _dispatch

    masked = _dispatch.load_kernel_module("ioaware.kernels.attention.flash.masked")

    def boom(*a, **k):
        raise AssertionError("the masked kernel ran for a plain call")

    monkeypatch.setattr(masked, "flash_attn_masked_fwd", boom)
    q, k, v = (torch.randn(1, 20, 2, 16) for _ in range(3))
    ioaware.flash_attn(q, k, v, causal=True, window_size=(-1, 0), softcap=0.0, dropout_p=0.0, deterministic=True)
    ioaware.flash_attn(q, k, v, window_size=(-1, -1), alibi_slopes=None)
    with pytest.raises(AssertionError, match="masked kernel ran"):
        ioaware.flash_attn(q, k, v, window_size=(4, -1))


def test_varlen_compiles_without_graph_break():
    g = torch.Generator().manual_seed(9)
    cu = torch.tensor([0, 7, 20], dtype=torch.int32)
    q, k, v = (torch.randn(20, 2, 16, generator=g).requires_grad_() for _ in range(3))

    def f(q, k, v):
        return ioaware.flash_attn_varlen(q, k, v, cu, cu, 13, 13, causal=True, softcap=4.0).sum()

    loss = torch.compile(f, backend="aot_eager", fullgraph=True)(q, k, v)
    gr = torch.autograd.grad(loss, (q, k, v))
    g_ref = torch.autograd.grad(f(q, k, v), (q, k, v))
    for a, b in zip(gr, g_ref):
        assert torch.allclose(a, b, atol=1e-5)
