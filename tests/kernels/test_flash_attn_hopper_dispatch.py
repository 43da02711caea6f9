"""The Hopper forward (hopper.py) is GPU-only: dispatch must never pick it on CPU tensors or under the interpreter."""

import pytest
import torch

from ioaware.kernels._dispatch import load_kernel_module


def test_flash_attn_hopper_not_dispatched_on_cpu():
    kernel = load_kernel_module("ioaware.kernels.attention.flash.kernel")
    q, k, v = (torch.randn(1, kernel.HOPPER_MIN_T[True], 1, 128, dtype=torch.bfloat16) for _ in range(3))
    assert not kernel._use_hopper(q, k, v, False)
    assert not kernel._use_hopper(q, k, v, True)
    assert not torch.cuda.is_initialized()


def test_flash_attn_hopper_supported_rules():
    from ioaware.kernels.attention.flash.hopper import hopper_supported

    q, k, v = (torch.randn(2, 64, 4, 128, dtype=torch.float16) for _ in range(3))
    assert hopper_supported(q, k, v)
    assert not hopper_supported(q.float(), k.float(), v.float())  # fp32
    assert not hopper_supported(q[..., :96], k[..., :96], v[..., :96])  # D = 96 (and not contiguous)
    assert not hopper_supported(q, k[:, :32], v[:, :32])  # Tq != Tk
    assert not hopper_supported(q.transpose(1, 2).contiguous().transpose(1, 2), k, v)  # (B, H, T, D) storage


def test_flash_attn_hopper_bwd_not_dispatched_on_cpu():
    kernel = load_kernel_module("ioaware.kernels.attention.flash.kernel")
    T = kernel.HOPPER_BWD_MIN_T
    q, k, v, do = (torch.randn(1, T, 1, 128, dtype=torch.bfloat16) for _ in range(4))
    assert not kernel._use_hopper_bwd(q, k, v, do, torch.zeros(1, 1, T))
    assert not torch.cuda.is_initialized()


# ------------------------------------------------------------------------------------ sliding window (forward)
def _window_ref_check(o, lse, q, k, v, wl):
    """fp64 reference (causal, window (wl, 0)) vs the kernel; plain PyTorch in q's dtype sets the tolerance."""
    from ioaware.kernels.attention.flash.reference import attention_masked_ref

    kw = dict(causal=True, window_size=(wl, 0))
    ref, lse_ref = attention_masked_ref(q.double(), k.double(), v.double(), **kw)
    pt, _ = attention_masked_ref(q, k, v, upcast=False, **kw)
    assert not o.isnan().any() and not lse.isnan().any()
    e, e_pt = (o.double() - ref).abs().max().item(), (pt.double() - ref).abs().max().item()
    r = ref.to(q.dtype)
    atol = 2 * (r + 0.3 - 0.3 - r).abs().max().item()
    assert e <= 2 * e_pt + atol, f"max error {e:.3g}, PyTorch {q.dtype} {e_pt:.3g}"
    assert (lse.double() - lse_ref).abs().max().item() < 1e-3


WINDOW_TILES = {  # small tiles for the interpreter: the three-loop band (BN < BM and BN = BM) and the one-loop form
    "bands_32x16": {"BM": 32, "BN": 16, "num_warps": 4, "STAGES": 2, "WS": False, "ONE_LOOP": False, "REV": False},
    "bands_32x32": {"BM": 32, "BN": 32, "num_warps": 4, "STAGES": 2, "WS": False, "ONE_LOOP": False, "REV": False},
    "one_loop_32x32": {"BM": 32, "BN": 32, "num_warps": 4, "STAGES": 2, "WS": False, "ONE_LOOP": True, "REV": False},
}


@pytest.mark.parametrize("tile", list(WINDOW_TILES))
@pytest.mark.parametrize("B,T,Hq,Hkv,D,wl,dtype", [
    (2, 77, 2, 1, 64, 5, torch.float16),  # window smaller than a tile: edge and diagonal blocks meet
    (1, 101, 2, 2, 128, 0, torch.float16),  # each row sees only itself
    (2, 130, 4, 2, 64, 40, torch.float16),  # GQA, ragged last block, edge block first in the band
    (1, 95, 1, 1, 128, 31, torch.float16),  # the window = one tile - 1
    (1, 64, 1, 1, 64, 200, torch.float16),  # window wider than T: plain causal
])
def test_hopper_window_fwd_interpreter(tile, B, T, Hq, Hkv, D, wl, dtype, poison):
    """hopper.py's windowed forward (TMA descriptors and all) under Triton's interpreter against fp64. fp16 only: the
    kernel has no bf16 upcast for the interpreter (numpy has no bf16 dot); bf16 is checked on the GPU."""
    from ioaware.kernels._dispatch import load_kernel_module

    hopper = load_kernel_module("ioaware.kernels.attention.flash.hopper")
    g = torch.Generator().manual_seed(T + wl)
    q, k, v = (torch.randn(B, T, h, D, generator=g).to(dtype) for h in (Hq, Hkv, Hkv))
    o, lse = hopper.hopper_flash_attn_fwd(q, k, v, True, D ** -0.5, config=WINDOW_TILES[tile], window_left=wl)
    _window_ref_check(o, lse, q, k, v, wl)


def test_hopper_window_not_dispatched_on_cpu_and_spec_rules():
    masked = load_kernel_module("ioaware.kernels.attention.flash.masked")
    T = masked.HOPPER_WINDOW_MIN_T
    q, k, v = (torch.randn(1, T, 1, 128, dtype=torch.bfloat16) for _ in range(3))
    spec = dict(wl=1023, wr=0, cu_q=None, block_mask=None, alibi=None, softcap=0.0, dropout_p=0.0, prefix=None)
    assert masked._hopper_window_spec(spec)
    assert not masked._use_hopper_window(q, k, v, spec)  # CPU / interpreter: never
    assert not torch.cuda.is_initialized()
    for change in (dict(wl=-1), dict(wr=-1), dict(wr=4), dict(cu_q=q), dict(block_mask=q), dict(alibi=q),
                   dict(softcap=30.0), dict(dropout_p=0.1), dict(prefix=q)):
        assert not masked._hopper_window_spec({**spec, **change}), change


@pytest.mark.parametrize("causal,window", [(True, (13, -1)), (False, (13, 0))], ids=["causal", "window-right0"])
def test_flash_attn_window_wiring_through_hopper(causal, window, monkeypatch):
    """With the dispatch forced on (as on sm_90), flash_attn's windowed forward runs hopper.py under the interpreter
    and masked.py's backward takes its LSE: output and gradients against fp64."""
    import ioaware

    masked = load_kernel_module("ioaware.kernels.attention.flash.masked")
    hopper = load_kernel_module("ioaware.kernels.attention.flash.hopper")
    calls = []
    real = hopper.hopper_flash_attn_fwd
    monkeypatch.setattr(masked, "_use_hopper_window", lambda q, k, v, spec: masked._hopper_window_spec(spec))
    monkeypatch.setattr(hopper, "hopper_flash_attn_fwd", lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    g = torch.Generator().manual_seed(3)
    B, T, Hq, Hkv, D = 1, 45, 4, 2, 64
    ins = [torch.randn(B, T, h, D, generator=g).half().requires_grad_() for h in (Hq, Hkv, Hkv)]
    do = torch.randn(B, T, Hq, D, generator=g).half()
    out = ioaware.flash_attn(*ins, causal=causal, window_size=window)
    assert calls == [{"window_left": 13}]
    _check_fwd_bwd(out, torch.autograd.grad(out, ins, do), ins, do, causal=True, window_size=(13, 0))


# ------------------------------------------------------------------------------------ block-sparse (fwd, dK/dV)
SPARSE_TILES = {  # small tiles for the interpreter: (tile config, block size); BM < SQ / BN < SK walk sub-tiles
    "32x32_blk32": ({"BM": 32, "BN": 32, "num_warps": 4, "STAGES": 2, "WS": False, "ONE_LOOP": False, "REV": False},
                    (32, 32)),
    "16x32_blk32x64": ({"BM": 16, "BN": 32, "num_warps": 4, "STAGES": 2, "WS": False, "ONE_LOOP": False,
                        "REV": False}, (32, 64)),
    "ws_32x16_blk64x32": ({"BM": 32, "BN": 16, "num_warps": 4, "STAGES": 2, "WS": True, "ONE_LOOP": True,
                           "REV": False}, (64, 32)),
}
SPARSE_CASES = [  # B, T, Hq, Hkv, D, mask batch/head broadcast, density
    (2, 128, 2, 2, 64, (2, 2), 0.4),  # T a multiple of every block: no mask arithmetic
    (1, 100, 4, 2, 128, (1, 4), 0.5),  # GQA, ragged T (the last key block and query block are partial)
    (2, 77, 2, 1, 64, (1, 1), 0.3),  # MQA, one mask broadcast over batch and heads, ragged T
    (1, 96, 2, 2, 64, (1, 2), 0.0),  # every block row empty: output 0, LSE -inf
]


def _block_mask(B, H, T, block, density, seed):
    g = torch.Generator().manual_seed(seed)
    nq, nk = -(-T // block[0]), -(-T // block[1])
    bm = torch.rand(B, H, nq, nk, generator=g) < density
    bm[..., 0, :] = False  # an empty block row
    if nq > 2:
        bm[..., 2, -1] = True  # a row whose only block may be the ragged last one
    return bm


def _sparse_lists(bm, q, block):
    masked = load_kernel_module("ioaware.kernels.attention.flash.masked")
    return masked._hopper_sparse_lists(bm, q, block), masked._hopper_sparse_lists(bm.transpose(-1, -2), q, block)


def _sparse_ref(q, k, v, bm, block):
    from ioaware.kernels.attention.flash.reference import attention_masked_ref

    kw = dict(block_mask=bm, block_size=block)
    return attention_masked_ref(q.double(), k.double(), v.double(), **kw), attention_masked_ref(q, k, v, upcast=False,
                                                                                               **kw)


def _check_fwd_bwd(out, grads, ins, do, **kw):
    """out and (dq, dk, dv) of an fp16 call against the fp64 reference, within 2x PyTorch's fp16 error."""
    from ioaware.kernels.attention.flash.reference import attention_masked_ref

    x64 = [t.detach().double().requires_grad_() for t in ins]
    ref, _ = attention_masked_ref(*x64, **kw)
    ref_grads = torch.autograd.grad(ref, x64, do.double())
    xp = [t.detach().clone().requires_grad_() for t in ins]
    pt, _ = attention_masked_ref(*xp, upcast=False, **kw)
    pt_grads = torch.autograd.grad(pt, xp, do)
    for name, x, xr, xq in zip(("out", "dq", "dk", "dv"), (out, *grads), (ref, *ref_grads), (pt, *pt_grads)):
        _close(name, x, xr, xq)


def _close(name, x, xr, xp):
    assert not x.isnan().any(), name
    e, e_pt = (x.double() - xr).abs().max().item(), (xp.double() - xr).abs().max().item()
    r = xr.half()
    atol = 2 * (r + 0.3 - 0.3 - r).abs().max().item()
    assert e <= 2 * e_pt + atol, f"{name}: max error {e:.3g}, PyTorch fp16 {e_pt:.3g}"


@pytest.mark.parametrize("tile", list(SPARSE_TILES))
@pytest.mark.parametrize("B,T,Hq,Hkv,D,mbh,density", SPARSE_CASES)
def test_hopper_sparse_fwd_interpreter(tile, B, T, Hq, Hkv, D, mbh, density, poison):
    """hopper.py's block-sparse forward under the interpreter (fp16) against fp64: empty rows give 0 and LSE -inf."""
    hopper = load_kernel_module("ioaware.kernels.attention.flash.hopper")
    cfg, block = SPARSE_TILES[tile]
    g = torch.Generator().manual_seed(T + Hq)
    q, k, v = (torch.randn(B, T, h, D, generator=g).half() for h in (Hq, Hkv, Hkv))
    bm = _block_mask(*mbh, T, block, density, T)
    fwd_lists, _ = _sparse_lists(bm, q, block)
    o, lse = hopper.hopper_flash_attn_fwd(q, k, v, False, D ** -0.5, config=cfg, sparse=fwd_lists)
    (ref, lse_ref), (pt, _) = _sparse_ref(q, k, v, bm, block)
    _close("out", o, ref, pt)
    empty = lse_ref == float("-inf")
    assert empty.any()  # the first block row is empty
    assert (lse[empty] == float("-inf")).all() and (o.transpose(1, 2)[empty] == 0).all()
    if (~empty).any():
        assert (lse[~empty].double() - lse_ref[~empty]).abs().max().item() < 1e-3


@pytest.mark.parametrize("tile", ["32x32_blk32", "16x32_blk32x64"])
@pytest.mark.parametrize("B,T,Hq,Hkv,D,mbh,density", SPARSE_CASES[:3])
def test_hopper_sparse_bwd_dkdv_interpreter(tile, B, T, Hq, Hkv, D, mbh, density, poison):
    """hopper.py's dK/dV kernel walking the transposed block lists, from masked.py's LSE (empty rows -inf)."""
    from ioaware.kernels.attention.flash.reference import attention_masked_ref

    hopper = load_kernel_module("ioaware.kernels.attention.flash.hopper")
    masked = load_kernel_module("ioaware.kernels.attention.flash.masked")
    cfg, block = SPARSE_TILES[tile]
    cfg = dict(cfg, BM=cfg["BM"] // 2 if cfg["BM"] > 16 else 16)  # query tiles (BM) over key programs (BN)
    cfg.pop("REV")
    g = torch.Generator().manual_seed(T + 7)
    q, k, v, = (torch.randn(B, T, h, D, generator=g).half() for h in (Hq, Hkv, Hkv))
    do = torch.randn(B, T, Hq, D, generator=g).half()
    bm = _block_mask(*mbh, T, block, density, T + 1)
    _, t_lists = _sparse_lists(bm, q, block)
    spec = dict(batch=B, scale=D ** -0.5, causal=False, wl=-1, wr=-1, alibi=None, softcap=0.0, dropout_p=0.0,
                seed=0, prefix=None, cu_q=None, cu_k=None, max_q=T, max_k=T, block_mask=bm, block_size=block)
    o, lse = masked.flash_attn_masked_fwd(q, k, v, spec)
    delta = (o.float() * do.float()).sum(-1).transpose(1, 2).contiguous()
    dk, dv = hopper.hopper_flash_attn_bwd_dkdv(q, k, v, do, lse, delta, False, D ** -0.5, config=cfg,
                                               sparse=t_lists)
    kw = dict(block_mask=bm, block_size=block)
    x64 = [t.double().requires_grad_() for t in (q, k, v)]
    ref, _ = attention_masked_ref(*x64, **kw)
    refs = torch.autograd.grad(ref, x64[1:], do.double())
    xp = [t.clone().requires_grad_() for t in (q, k, v)]
    pt, _ = attention_masked_ref(*xp, upcast=False, **kw)
    pts = torch.autograd.grad(pt, xp[1:], do)
    for name, x, xr, xq in zip(("dk", "dv"), (dk, dv), refs, pts):
        _close(name, x, xr, xq)


def test_hopper_sparse_not_dispatched_on_cpu_and_spec_rules():
    masked = load_kernel_module("ioaware.kernels.attention.flash.masked")
    T = masked.HOPPER_SPARSE_MIN_T
    q, k, v = (torch.randn(1, T, 1, 128, dtype=torch.bfloat16) for _ in range(3))
    bm = torch.ones(1, 1, T // 128, T // 128, dtype=torch.bool)
    spec = dict(wl=-1, wr=-1, cu_q=None, block_mask=bm, block_size=(128, 128), causal=False, alibi=None,
                softcap=0.0, dropout_p=0.0, prefix=None)
    assert masked._hopper_sparse_spec(spec)
    assert not masked._use_hopper_sparse(q, k, v, spec)  # CPU / interpreter: never
    assert not torch.cuda.is_initialized()
    for change in (dict(block_mask=None), dict(block_size=(64, 128)), dict(block_size=(128, 64)), dict(causal=True),
                   dict(wl=10), dict(wr=0), dict(cu_q=q), dict(alibi=q), dict(softcap=30.0), dict(dropout_p=0.1),
                   dict(prefix=q)):
        assert not masked._hopper_sparse_spec({**spec, **change}), change


def test_flash_attn_block_sparse_wiring_through_hopper(monkeypatch):
    """With the dispatch forced on (as on sm_90), flash_attn's block-sparse forward runs hopper.py's forward and the
    backward hopper.py's dK/dV over the transposed lists (masked.py's dQ): output and gradients against fp64."""
    import ioaware

    masked = load_kernel_module("ioaware.kernels.attention.flash.masked")
    hopper = load_kernel_module("ioaware.kernels.attention.flash.hopper")
    calls = []
    real_f, real_b = hopper.hopper_flash_attn_fwd, hopper.hopper_flash_attn_bwd_dkdv
    small_f = {"BM": 32, "BN": 32, "num_warps": 4, "STAGES": 2, "WS": False, "ONE_LOOP": False, "REV": False}
    small_b = {"BM": 16, "BN": 32, "num_warps": 4, "STAGES": 2, "WS": False, "ONE_LOOP": False}
    monkeypatch.setattr(masked, "HOPPER_SPARSE_BLOCK", (32, 32))
    monkeypatch.setattr(masked, "_use_hopper_sparse", lambda q, k, v, spec: masked._hopper_sparse_spec(spec))
    monkeypatch.setattr(hopper, "hopper_flash_attn_fwd",
                        lambda *a, **kw: calls.append("fwd") or real_f(*a, config=small_f, **kw))
    monkeypatch.setattr(hopper, "hopper_flash_attn_bwd_dkdv",
                        lambda *a, **kw: calls.append("dkdv") or real_b(*a, config=small_b, **kw))
    g = torch.Generator().manual_seed(5)
    B, T, Hq, Hkv, D = 1, 90, 4, 2, 64
    ins = [torch.randn(B, T, h, D, generator=g).half().requires_grad_() for h in (Hq, Hkv, Hkv)]
    do = torch.randn(B, T, Hq, D, generator=g).half()
    bm = _block_mask(1, Hq, T, (32, 32), 0.5, 11)
    out = ioaware.flash_attn(*ins, block_mask=bm, block_size=(32, 32))
    grads = torch.autograd.grad(out, ins, do)
    assert calls == ["fwd", "dkdv"]
    _check_fwd_bwd(out, grads, ins, do, block_mask=bm, block_size=(32, 32))
