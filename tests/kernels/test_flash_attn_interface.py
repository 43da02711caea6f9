"""ioaware.flash_attn_interface against flash-attn 2's documented semantics, through Triton's interpreter.

The reference below is written from flash-attn's docstrings (bottom-right causal, window [i + Tk - Tq - left,
i + Tk - Tq + right], ALiBi -slope * |i + Tk - Tq - j|, softcap on the scaled scores, rows without keys give 0),
in float64, one sequence at a time; caches, appends and rotary embedding are rebuilt with loops and complex numbers.
Tolerance: the error against fp64 must be within 2x plain PyTorch's error in the same dtype, plus the dtype's
rounding at the output's magnitude (the rule of test_flash_attn_masked.py).
"""

from __future__ import annotations

import pytest
import torch

import ioaware
from ioaware.errors import ShapeError, UnsupportedError
from ioaware.flash_attn_interface import (
    flash_attn_func,
    flash_attn_kvpacked_func,
    flash_attn_qkvpacked_func,
    flash_attn_varlen_func,
    flash_attn_varlen_kvpacked_func,
    flash_attn_varlen_qkvpacked_func,
    flash_attn_with_kvcache,
)
from ioaware.kernels.attention.compat import kvcache as kvc


def ref_seq(q, k, v, causal=False, window=(-1, -1), alibi=None, softcap=0.0, scale=None):
    """One sequence: q (Tq, Hq, D), k and v (Tk, Hkv, D); alibi (Hq,). Computes in q's dtype."""
    Tq, Hq, D = q.shape
    Tk, Hkv = k.shape[:2]
    scale = D ** -0.5 if scale is None else scale
    kk, vv = (t.repeat_interleave(Hq // Hkv, 1) for t in (k, v))
    s = torch.einsum("qhd,khd->hqk", q, kk) * scale
    if softcap:
        s = softcap * torch.tanh(s / softcap)
    r = torch.arange(Tq)[:, None] + Tk - Tq
    c = torch.arange(Tk)[None, :]
    if alibi is not None:
        s = s - alibi.to(s.dtype)[:, None, None] * (r - c).abs()
    wl, wr = window
    wr = 0 if causal else wr
    ok = torch.ones(Tq, Tk, dtype=torch.bool)
    if wl >= 0:
        ok &= c >= r - wl
    if wr >= 0:
        ok &= c <= r + wr
    s = s.masked_fill(~ok, float("-inf"))
    lse = torch.logsumexp(s.float() if s.dtype != torch.float64 else s, -1)  # (Hq, Tq)
    p = torch.softmax(s, -1).nan_to_num(0.0)
    return torch.einsum("hqk,khd->qhd", p, vv), lse


def ref_batch(q, k, v, **kw):
    outs, lses = zip(*(ref_seq(q[b], k[b], v[b], **kw) for b in range(q.shape[0])), strict=True)
    return torch.stack(outs), torch.stack(lses)


def _atol(ref64: torch.Tensor, dtype) -> float:
    """The dtype's rounding error at the reference's magnitude (as test_flash_attn_masked.py allows)."""
    if dtype == torch.float32:
        return 1e-6
    r = ref64.detach().to(dtype)
    return 2 * (r + 0.3 - 0.3 - r).abs().max().item()


def assert_2x(out, ref64, pt, what="out"):
    assert not out.isnan().any(), f"{what} has NaN (an unwritten element)"
    err = (out.double() - ref64).abs().max().item()
    base = (pt.double() - ref64).abs().max().item()
    assert err <= 2 * base + _atol(ref64, out.dtype), f"{what}: max error {err:.3g} > 2 x PyTorch's {base:.3g}"


def _rand(g, *shape, dtype=torch.float16):
    return torch.randn(*shape, generator=g).to(dtype)


FUNC_CASES = [
    # B, Tq, Tk, Hq, Hkv, D, causal, window, softcap, alibi, dtype
    pytest.param(2, 9, 13, 4, 2, 24, True, (-1, -1), 0.0, False, torch.float16, id="B2-Tq9-Tk13-GQA-D24-causal"),
    pytest.param(1, 17, 17, 3, 3, 40, False, (4, 2), 0.0, False, torch.float16, id="T17-D40-window4,2"),
    # flash-attn ignores the window's right side when causal
    pytest.param(2, 11, 7, 2, 1, 16, True, (3, 5), 0.0, False, torch.bfloat16, id="Tq11-Tk7-MQA-causal-window3,5"),
    pytest.param(1, 10, 15, 4, 2, 32, True, (-1, -1), 20.0, True, torch.float16, id="causal-softcap20-alibi"),
    pytest.param(2, 7, 7, 2, 2, 8, False, (-1, -1), 0.0, False, torch.float32, id="T7-D8-fp32"),
]


@pytest.mark.parametrize("B,Tq,Tk,Hq,Hkv,D,causal,window,softcap,alibi,dtype", FUNC_CASES)
def test_flash_attn_func_fwd_bwd(B, Tq, Tk, Hq, Hkv, D, causal, window, softcap, alibi, dtype, poison):
    g = torch.Generator().manual_seed(Tq * 31 + D)
    q, k, v = (_rand(g, B, T, H, D, dtype=dtype).requires_grad_() for T, H in ((Tq, Hq), (Tk, Hkv), (Tk, Hkv)))
    slopes = torch.rand(Hq, generator=g) if alibi else None
    do = _rand(g, B, Tq, Hq, D, dtype=dtype)
    # positional, exactly as flash-attn code calls it
    out, lse, s_dmask = flash_attn_func(q, k, v, 0.0, None, causal, window, softcap, slopes, False, True)
    assert s_dmask.numel() == 0  # flash-attn returns an empty S_dmask when dropout is off
    grads = torch.autograd.grad(out, (q, k, v), do)
    kw = dict(causal=causal, window=window, alibi=slopes, softcap=softcap)
    x64 = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref, lse_ref = ref_batch(*x64, **kw)
    g64 = torch.autograd.grad(ref, x64, do.double())
    xpt = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    pt, _ = ref_batch(*xpt, **kw)
    gpt = torch.autograd.grad(pt, xpt, do)
    assert_2x(out, ref, pt)
    for name, a, b, c in zip("dq dk dv".split(), grads, g64, gpt, strict=True):
        assert_2x(a, b, c, name)
    fin = lse_ref.isfinite()
    assert torch.equal(lse.isfinite(), fin)
    assert (lse[fin].double() - lse_ref[fin]).abs().max().item() < 2e-3


def test_packed_variants_match_unpacked():
    g = torch.Generator().manual_seed(5)
    B, T, H, D = 2, 11, 2, 16
    qkv = _rand(g, B, T, 3, H, D).requires_grad_()
    do = _rand(g, B, T, H, D)
    out = flash_attn_qkvpacked_func(qkv, causal=True)
    (dqkv,) = torch.autograd.grad(out, qkv, do)
    x64 = qkv.detach().double().requires_grad_()
    ref, _ = ref_batch(*x64.unbind(2), causal=True)
    (d64,) = torch.autograd.grad(ref, x64, do.double())
    xpt = qkv.detach().clone().requires_grad_()
    pt, _ = ref_batch(*xpt.unbind(2), causal=True)
    (dpt,) = torch.autograd.grad(pt, xpt, do)
    assert_2x(out, ref, pt)
    assert_2x(dqkv, d64, dpt, "dqkv")
    q = _rand(g, B, 5, 4, D)
    kv = _rand(g, B, T, 2, H, D)
    o1, lse1, _ = flash_attn_kvpacked_func(q, kv, 0.0, 0.3, False, (2, 1), return_attn_probs=True)
    o2, lse2, _ = flash_attn_func(q, kv[:, :, 0], kv[:, :, 1], 0.0, 0.3, False, (2, 1), return_attn_probs=True)
    assert torch.equal(o1, o2) and torch.equal(lse1, lse2)


def _varlen_ref(q, k, v, cu_q, cu_k, **kw):
    outs, lses = [], []
    for b in range(len(cu_q) - 1):
        o, lse = ref_seq(q[cu_q[b]:cu_q[b + 1]], k[cu_k[b]:cu_k[b + 1]], v[cu_k[b]:cu_k[b + 1]], **kw)
        outs.append(o)
        lses.append(lse)
    return torch.cat(outs), torch.cat(lses, dim=1)


@pytest.mark.parametrize("paged", [False, True], ids=["packed", "paged-block_table"])
def test_varlen_func(paged, poison):
    g = torch.Generator().manual_seed(7)
    Hq, Hkv, D, page = 4, 2, 24, 4
    lq, lk = [3, 1, 6], [5, 9, 6]
    cu_q = torch.tensor([0, 3, 4, 10], dtype=torch.int32)
    cu_k = torch.tensor([0, 5, 14, 20], dtype=torch.int32)
    q = _rand(g, sum(lq), Hq, D)
    k, v = _rand(g, sum(lk), Hkv, D), _rand(g, sum(lk), Hkv, D)
    kw = dict(causal=True, window=(4, -1))
    ref, lse_ref = _varlen_ref(q.double(), k.double(), v.double(), cu_q, cu_k, **kw)
    pt, _ = _varlen_ref(q, k, v, cu_q, cu_k, **kw)
    if paged:  # scatter each sequence into randomly chosen pages of a pool, then attend through block_table
        n_pages, per_row = 13, 3
        pool_k, pool_v = _rand(g, n_pages, page, Hkv, D), _rand(g, n_pages, page, Hkv, D)
        bt = torch.randperm(n_pages, generator=g)[: 3 * per_row].view(3, per_row).to(torch.int32)
        for b in range(3):
            for t in range(lk[b]):
                pool_k[bt[b, t // page], t % page] = k[cu_k[b] + t]
                pool_v[bt[b, t // page], t % page] = v[cu_k[b] + t]
        out, lse, _ = flash_attn_varlen_func(q, pool_k, pool_v, cu_q, cu_k, 6, 9, 0.0, None, True, (4, -1),
                                             return_attn_probs=True, block_table=bt)
    else:
        out, lse, _ = flash_attn_varlen_func(q, k, v, cu_q, cu_k, 6, 9, 0.0, None, True, (4, -1),
                                             return_attn_probs=True)
    assert_2x(out, ref, pt)
    assert lse.shape == (Hq, sum(lq))
    assert (lse.double() - lse_ref).abs().max().item() < 2e-3


def test_varlen_packed_variants():
    g = torch.Generator().manual_seed(9)
    cu = torch.tensor([0, 4, 11], dtype=torch.int32)
    qkv = _rand(g, 11, 3, 2, 16)
    out = flash_attn_varlen_qkvpacked_func(qkv, cu, 7, causal=True)
    ref, _ = _varlen_ref(*(t.double() for t in qkv.unbind(1)), cu, cu, causal=True)
    pt, _ = _varlen_ref(*qkv.unbind(1), cu, cu, causal=True)
    assert_2x(out, ref, pt)
    q, kv = _rand(g, 11, 4, 16), _rand(g, 11, 2, 2, 16)
    o1 = flash_attn_varlen_kvpacked_func(q, kv, cu, cu, 7, 7, 0.0, None, False, (2, 2))
    o2 = flash_attn_varlen_func(q, kv[:, 0], kv[:, 1], cu, cu, 7, 7, 0.0, None, False, (2, 2))
    assert torch.equal(o1, o2)


def test_positional_port_of_our_flash_attn_fails_loudly():
    q = torch.randn(1, 4, 2, 8)
    with pytest.raises(TypeError, match="positional"):
        ioaware.flash_attn(q, q, q, 0.1)  # flash-attn's dropout_p would land on our causal
    with pytest.raises(TypeError, match="positional"):
        ioaware.flash_attn_varlen(q[0], q[0], q[0], torch.tensor([0, 4], dtype=torch.int32),
                                  torch.tensor([0, 4], dtype=torch.int32), 4, 4, True)


def _dropout_ref(q, k, v, s_dmask, p, **kw):
    """fp64 output of one sequence with the keep mask read off S_dmask (negative = dropped), and the probabilities."""
    _, lse = ref_seq(q, k, v, **kw)
    Hq, Hkv = q.shape[1], k.shape[1]
    scores = torch.einsum("qhd,khd->hqk", q, k.repeat_interleave(Hq // Hkv, 1)) * q.shape[-1] ** -0.5
    if kw.get("alibi") is not None:
        r = torch.arange(q.shape[0])[:, None] + k.shape[0] - q.shape[0]
        scores = scores - kw["alibi"].double()[:, None, None] * (r - torch.arange(k.shape[0])).abs()
    probs = torch.exp(scores - lse[..., None])
    Tq, Tk = q.shape[0], k.shape[0]
    vis = torch.arange(Tk)[None, :] <= torch.arange(Tq)[:, None] + Tk - Tq if kw.get("causal") else \
        torch.ones(Tq, Tk, dtype=torch.bool)
    probs = probs * vis
    keep = s_dmask >= 0
    out = torch.einsum("hqk,khd->qhd", probs * keep / (1 - p), v.repeat_interleave(Hq // Hkv, 1))
    return out, probs, keep, vis


def test_dropout_attn_probs_mark_the_dropped_entries(poison):
    g = torch.Generator().manual_seed(13)
    B, Tq, Tk, Hq, Hkv, D, p = 2, 9, 14, 4, 2, 16, 0.3
    q, k, v = (_rand(g, B, T, H, D, dtype=torch.float32).requires_grad_() for T, H in ((Tq, Hq), (Tk, Hkv), (Tk, Hkv)))
    slopes = torch.rand(Hq, generator=g)
    out, lse, s_dmask = flash_attn_func(q, k, v, p, None, True, alibi_slopes=slopes, return_attn_probs=True)
    assert s_dmask.shape == (B, Hq, Tq, Tk)
    do = torch.randn(B, Tq, Hq, D, generator=g)
    grads = torch.autograd.grad(out, (q, k, v), do)
    dropped = []
    for b in range(B):
        x64 = [t[b].detach().double().requires_grad_() for t in (q, k, v)]
        ref, probs, keep, vis = _dropout_ref(*x64, s_dmask[b].double(), p, causal=True, alibi=slopes)
        # |S_dmask| is the softmax, so the kernel's output equals the one rebuilt from S_dmask's keep mask
        assert (s_dmask[b].abs().double() - probs).abs().max().item() < 1e-5
        assert (out[b].double() - ref).abs().max().item() < 1e-5
        for a, r in zip(grads, torch.autograd.grad(ref, x64, do[b].double()), strict=True):
            assert (a[b].double() - r).abs().max().item() < 1e-5  # the backward regenerated the same mask
        dropped.append((~keep & vis[None]).sum() / (vis.sum() * Hq))
    assert abs(sum(dropped).item() / B - p) < 0.1


def test_varlen_dropout_attn_probs():
    g = torch.Generator().manual_seed(17)
    cu = torch.tensor([0, 5, 12], dtype=torch.int32)
    q, k, v = (_rand(g, 12, H, 8, dtype=torch.float32) for H in (2, 2, 2))
    out, lse, s_dmask = flash_attn_varlen_func(q, k, v, cu, cu, 7, 7, 0.25, None, False, return_attn_probs=True)
    assert s_dmask.shape == (2, 2, 7, 7)
    for b, (a, e) in enumerate(((0, 5), (5, 12))):
        ref, _, _, _ = _dropout_ref(q[a:e].double(), k[a:e].double(), v[a:e].double(),
                                    s_dmask[b, :, : e - a, : e - a].double(), 0.25)
        assert (out[a:e].double() - ref).abs().max().item() < 1e-5
    assert torch.equal(s_dmask[0, :, 5:], torch.zeros_like(s_dmask[0, :, 5:]))  # padding around sequence 0


# ----------------------------------------------------------------------------------------------- kv cache

def _rotate_ref(x, cos, sin, pos, interleaved):
    """x (T, H, D) float64 rotated at positions pos (T,), as complex multiplication."""
    rd = 2 * cos.shape[1]
    ang = torch.complex(cos[pos].double(), sin[pos].double())[:, None, :]  # (T, 1, rd/2)
    xr = x[..., :rd]
    if interleaved:
        z = torch.view_as_complex(xr.reshape(*xr.shape[:-1], rd // 2, 2).contiguous()) * ang
        rot = torch.view_as_real(z).flatten(-2)
    else:
        z = torch.complex(xr[..., : rd // 2], xr[..., rd // 2:]) * ang
        rot = torch.cat((z.real, z.imag), -1)
    return torch.cat((rot, x[..., rd:]), -1)


KV_CASES = [
    # name, dict of the case (defaults in _kv_case); path = which kernel must run
    pytest.param(dict(), "decode", id="contig-Tq1-append-causal"),
    pytest.param(dict(Tq=3, page=4, splits=3), "decode", id="paged4-Tq3-append-split3"),
    pytest.param(dict(batch_idx=True, causal=False, dtype=torch.float32), "decode",
                 id="cache_batch_idx-noncausal-fp32"),
    pytest.param(dict(rotary=(8, True)), "decode", id="rotary-interleaved-rd8-causal"),
    pytest.param(dict(rotary=(16, False), causal=False, Tq=2), "decode", id="rotary-neox-D-noncausal-Tq2"),
    pytest.param(dict(leftpad=True, rotary=(8, False)), "gather", id="leftpad-rotary"),
    pytest.param(dict(leftpad=True, page=4, Tq=2), "gather", id="leftpad-paged4-Tq2"),
    pytest.param(dict(alibi=True, window=(5, -1), page=8), "gather", id="paged8-alibi-window5"),
    pytest.param(dict(Tq=19, Tnew=19, page=4, dtype=torch.bfloat16), "gather", id="paged4-Tq19-chunked-prefill-bf16"),
    pytest.param(dict(softcap=10.0, batch_idx=True, Tq=2), "gather", id="softcap-cache_batch_idx"),
    pytest.param(dict(Tnew=0, window=(-1, 2), causal=False), "gather", id="no-append-window-right2"),
]


def _kv_case(seed, B=3, Tq=1, Tnew=None, Hq=4, Hkv=2, D=16, S=24, page=0, causal=True, window=(-1, -1),
             alibi=False, softcap=0.0, rotary=None, leftpad=False, batch_idx=False, splits=0, dtype=torch.float16):
    g = torch.Generator().manual_seed(seed)
    Tnew = Tq if Tnew is None else Tnew
    lens = torch.randint(0, S - Tnew - 1, (B,), generator=g).to(torch.int32)
    lens[0] = 0  # an empty cache row
    c = dict(q=_rand(g, B, Tq, Hq, D, dtype=dtype), lens=lens, causal=causal, window=window, softcap=softcap,
             splits=splits, interleaved=True, page=page)
    c["k"] = _rand(g, B, Tnew, Hkv, D, dtype=dtype) if Tnew else None
    c["v"] = _rand(g, B, Tnew, Hkv, D, dtype=dtype) if Tnew else None
    rows = B + 2 if batch_idx else B
    c["batch_idx"] = torch.randperm(rows, generator=g)[:B].to(torch.int32) if batch_idx else None
    if page:
        per_row = -(-S // page)
        n_pages = B * per_row + 2
        c["kc"], c["vc"] = _rand(g, n_pages, page, Hkv, D, dtype=dtype), _rand(g, n_pages, page, Hkv, D, dtype=dtype)
        c["bt"] = torch.randperm(n_pages, generator=g)[: B * per_row].view(B, per_row).to(torch.int32)
    else:
        c["kc"], c["vc"] = _rand(g, rows, S, Hkv, D, dtype=dtype), _rand(g, rows, S, Hkv, D, dtype=dtype)
        c["bt"] = None
    c["alibi"] = torch.rand(Hq, generator=g) if alibi else None
    c["leftpad"] = (torch.rand(B, generator=g) * lens).to(torch.int32) if leftpad else None
    c["cos"] = c["sin"] = None
    if rotary:
        rd, c["interleaved"] = rotary
        ang = torch.rand(S + 2, rd // 2, generator=g) * 6.3
        c["cos"], c["sin"] = ang.cos().to(dtype), ang.sin().to(dtype)
    return c


def _slot(c, b, t):
    """(tensor index) of token t of row b in the cache."""
    if c["bt"] is not None:
        return int(c["bt"][b, t // c["page"]]), t % c["page"]
    return (int(c["batch_idx"][b]) if c["batch_idx"] is not None else b), t


def _kv_reference(c, dtype):
    """(expected k_cache, v_cache after the append, out in `dtype` arithmetic, lse)."""
    kc, vc = c["kc"].clone(), c["vc"].clone()
    B, Tq = c["q"].shape[:2]
    Tnew = 0 if c["k"] is None else c["k"].shape[1]
    q, kn = c["q"].to(dtype), None if c["k"] is None else c["k"].to(dtype)
    outs, lses = [], []
    for b in range(B):
        L = int(c["lens"][b])
        qb = q[b]
        if Tnew:
            knb = kn[b]
            if c["cos"] is not None:
                local = c["causal"] or c["window"] != (-1, -1)
                qpos = L + torch.arange(Tq) if local else torch.full((Tq,), L)
                knb = _rotate_ref(knb.double(), c["cos"], c["sin"], L + torch.arange(Tnew), c["interleaved"])
                qb = _rotate_ref(qb.double(), c["cos"], c["sin"], qpos, c["interleaved"]).to(dtype)
            for t in range(Tnew):
                kc[_slot(c, b, L + t)] = knb[t].to(kc.dtype)
                vc[_slot(c, b, L + t)] = c["v"][b, t]
        start = 0 if c["leftpad"] is None else int(c["leftpad"][b])
        keys = [_slot(c, b, t) for t in range(start, L + Tnew)]
        kb = torch.stack([kc[s] for s in keys]).to(dtype) if keys else kc.new_zeros(0, *kc.shape[2:]).to(dtype)
        vb = torch.stack([vc[s] for s in keys]).to(dtype) if keys else kb
        o, lse = ref_seq(qb, kb, vb, causal=c["causal"], window=c["window"], alibi=c["alibi"], softcap=c["softcap"])
        outs.append(o)
        lses.append(lse)
    return kc, vc, torch.stack(outs), torch.stack(lses)


def _spy(monkeypatch):
    calls = []
    for name in ("flash_decode", "flash_attn_varlen"):
        real = getattr(kvc, name)
        monkeypatch.setattr(kvc, name, lambda *a, _n=name, _r=real, **kw: calls.append(_n) or _r(*a, **kw))
    return calls


@pytest.mark.parametrize("spec,path", KV_CASES)
def test_flash_attn_with_kvcache(spec, path, monkeypatch, poison):
    c = _kv_case(seed=len(str(spec)), **spec)
    kc2, vc2, ref, lse_ref = _kv_reference(c, torch.float64)
    _, _, pt, _ = _kv_reference(c, c["q"].dtype)
    calls = _spy(monkeypatch)
    out, lse = flash_attn_with_kvcache(c["q"], c["kc"], c["vc"], c["k"], c["v"], c["cos"], c["sin"], c["lens"],
                                       c["batch_idx"], c["leftpad"], c["bt"], None, c["causal"], c["window"],
                                       c["softcap"], c["interleaved"], c["alibi"], c["splits"], True)
    assert calls == [{"decode": "flash_decode", "gather": "flash_attn_varlen"}[path]]
    if c["cos"] is None:
        assert torch.equal(c["kc"], kc2) and torch.equal(c["vc"], vc2), "k/v not appended where flash-attn puts them"
    else:  # rotated keys: one rounding of the rotation may differ
        rtol = 1e-6 if c["q"].dtype == torch.float32 else 2e-3  # at most one ulp apart
        torch.testing.assert_close(c["kc"], kc2, rtol=rtol, atol=1e-6)
        assert torch.equal(c["vc"], vc2)
    assert_2x(out, ref, pt)
    fin = lse_ref.isfinite()
    assert torch.equal(lse.isfinite(), fin)
    assert (lse[fin].double() - lse_ref[fin]).abs().max().item() < 2e-3


def test_kvcache_int_and_none_seqlens():
    c = _kv_case(seed=3, Tnew=0, causal=False)
    full = flash_attn_with_kvcache(c["q"], c["kc"], c["vc"])  # None: the whole cache is live
    ref, _ = ref_batch(c["q"].double(), c["kc"].double(), c["vc"].double())
    pt, _ = ref_batch(c["q"], c["kc"], c["vc"])
    assert_2x(full, ref, pt)
    part = flash_attn_with_kvcache(c["q"], c["kc"], c["vc"], cache_seqlens=7)
    ref, _ = ref_batch(c["q"].double(), c["kc"][:, :7].double(), c["vc"][:, :7].double())
    pt, _ = ref_batch(c["q"], c["kc"][:, :7], c["vc"][:, :7])
    assert_2x(part, ref, pt)


BAD = [
    pytest.param(dict(lens=[24, 3, 0]), "beyond the cache's capacity 24", id="seqlens-beyond-contiguous"),
    pytest.param(dict(page=4, lens=[24, 3, 0]), "beyond the cache's capacity 24", id="seqlens-beyond-block_table"),
    pytest.param(dict(page=4, bad_page=99), "names a page outside", id="page-index-out-of-range"),
    pytest.param(dict(page=4, bad_page=-1), "names a page outside", id="page-index-negative"),
    pytest.param(dict(batch_idx=[0, 7, 1]), "cache_batch_idx outside", id="batch-idx-out-of-range"),
    pytest.param(dict(leftpad=[0, 30, 0]), "cache_leftpad outside", id="leftpad-beyond-seqlens"),
    pytest.param(dict(lens=[-1, 0, 0]), "negative", id="negative-seqlens"),
]


@pytest.mark.parametrize("bad,msg", BAD)
def test_kvcache_bad_indices_raise_before_launch(bad, msg, monkeypatch):
    c = _kv_case(seed=1, page=bad.get("page", 0), batch_idx="batch_idx" in bad)
    if "lens" in bad:
        c["lens"] = torch.tensor(bad["lens"], dtype=torch.int32)
    if "bad_page" in bad:
        c["bt"][1, int(c["lens"][1]) // 4] = bad["bad_page"]  # the page the append writes to
    if "batch_idx" in bad:
        c["batch_idx"] = torch.tensor(bad["batch_idx"], dtype=torch.int32)
    leftpad = torch.tensor(bad["leftpad"], dtype=torch.int32) if "leftpad" in bad else None
    before = c["kc"].clone()
    calls = _spy(monkeypatch)
    with pytest.raises(ShapeError, match=msg):
        flash_attn_with_kvcache(c["q"], c["kc"], c["vc"], c["k"], c["v"], cache_seqlens=c["lens"],
                                cache_batch_idx=c["batch_idx"], cache_leftpad=leftpad, block_table=c["bt"],
                                causal=True)
    assert calls == [] and torch.equal(c["kc"], before), "the cache was touched before the error"


def test_kvcache_unsupported_and_misuse():
    c = _kv_case(seed=2, page=4)
    with pytest.raises(UnsupportedError, match="cache_batch_idx"):
        flash_attn_with_kvcache(c["q"], c["kc"], c["vc"], c["k"], c["v"], cache_seqlens=c["lens"],
                                cache_batch_idx=torch.arange(3, dtype=torch.int32), block_table=c["bt"])
    cos = torch.ones(30, 4, dtype=torch.float16)
    with pytest.raises(ValueError, match="rotary_cos/rotary_sin need k and v"):
        flash_attn_with_kvcache(c["q"], c["kc"], c["vc"], rotary_cos=cos, rotary_sin=cos, cache_seqlens=c["lens"],
                                block_table=c["bt"])
    with pytest.raises(ShapeError, match="rotary_cos/rotary_sin have 5 rows"):
        flash_attn_with_kvcache(c["q"], c["kc"], c["vc"], c["k"], c["v"], cos[:5], cos[:5],
                                cache_seqlens=torch.tensor([6, 2, 0], dtype=torch.int32), block_table=c["bt"])
    with pytest.raises(ValueError, match="both k and v"):
        flash_attn_with_kvcache(c["q"], c["kc"], c["vc"], c["k"], None, cache_seqlens=c["lens"], block_table=c["bt"])


def test_decode_path_device_check_is_one_assertion():
    # the GPU decode path queues the checks as torch._assert_async (no sync); on the CPU the same call raises at once
    bad = kvc._problems(torch.tensor([30, 2], dtype=torch.int32), 1, 1, 24, None, None, 2, None, 0, 24, None, 1)
    with pytest.raises(RuntimeError, match="bad cache indices"):
        kvc._raise_or_assert(bad, on_host=False)
    ok = kvc._problems(torch.tensor([3, 2], dtype=torch.int32), 1, 1, 24, None, None, 2, None, 0, 24, None, 1)
    kvc._raise_or_assert(ok, on_host=False)
