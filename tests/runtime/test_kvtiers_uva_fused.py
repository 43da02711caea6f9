"""SparF on the DRAM tier, transport "uva" (the fused kernels of runtime/kvtiers/uva_sparf_kernel.py, under Triton's
interpreter here; on CPU the "pinned host pool" is the CPU tensor): the pages chosen are the SSD tier reference's
(`sparf_from_file`), the page masses the batched host arithmetic's, and the paged kernel's (out, lse) exact attention
over the chosen pages (fp32 to 1e-5, outputs poisoned), at small odd shapes (GQA, odd page counts and head dims,
B=2, several query tokens, wrapped rings); the model end to end; the iomodel's pricing; the bench's transports."""

from __future__ import annotations

import argparse
import math

import pytest
import torch

from ioaware.iomodel.kv_tiers import Line, TierRates, sparf_dram_parts, sparf_layer_seconds
from ioaware.kernels._dispatch import last_backend, load_kernel_module
from ioaware.runtime.kvtiers import KVTiers, KVTierSpec, SparFConfig
from ioaware.runtime.kvtiers import dram_sparf as ds
from ioaware.runtime.kvtiers.partial import partial_attention
from ioaware.runtime.kvtiers.sparf import PAGE

from .test_kvtiers_dram_sparf import CFGS, D, _reference, _tier


@pytest.fixture
def poison(monkeypatch):
    """The kernel module's outputs (torch.empty / empty_like inside it) NaN-filled: an unwritten element shows."""
    mod = load_kernel_module("ioaware.runtime.kvtiers.uva_sparf_kernel")
    real, real_like = torch.empty, torch.empty_like

    class _Torch:
        def __getattr__(self, name):
            return getattr(torch, name)

        @staticmethod
        def empty(*a, **k):
            return real(*a, **k).fill_(float("nan"))

        @staticmethod
        def empty_like(*a, **k):
            return real_like(*a, **k).fill_(float("nan"))

    monkeypatch.setattr(mod, "torch", _Torch())
    return mod


def _gathered(lk, pages):
    """The chosen pages' K/V, (B, n*16, Hkv, D), each head's own, oldest-first tier order -> ring slots (torch)."""
    t = lk.t
    B, Hkv, P = t.batch, t.Hkv, PAGE
    slots = (pages + lk.dram_head) % t.dram_pages
    bi, hi = torch.arange(B)[:, None, None], torch.arange(Hkv)[None, :, None]
    out = []
    for pool in (lk.dk, lk.dv):
        g = pool.view(B, t.dram_pages, P, Hkv, t.D)[bi, slots, :, hi, :]  # (B, Hkv, n, P, D)
        out.append(g.permute(0, 2, 3, 1, 4).reshape(B, -1, Hkv, t.D))
    return out


@pytest.mark.parametrize("cfg", list(CFGS.values()), ids=list(CFGS))
@pytest.mark.parametrize("ssd", [True, False], ids=["wrapped", "whole-context"])
def test_fused_uva_pages_and_output_equal_the_ssd_reference(tmp_path, poison, cfg, ssd):
    tiers, lk, q = _tier(tmp_path, ssd=ssd)  # B=2, 9 query heads on 3 KV heads, head_dim 64
    try:
        ro, rlse, rpages, _, _ = _reference(tmp_path, lk, q, cfg)
        info = {}
        pages, nb = ds.fused_select(cfg, lk, q, D ** -0.5, info)
        assert last_backend("uva_sparf_select") == "interpret"
        assert torch.equal(info["pages"], rpages) and torch.equal(pages.sort(-1).values, rpages)
        L = lk.dram_n * PAGE
        assert nb == ds.read_bytes(cfg, L, 2, 3, D, 4)
        n = ds.plan(cfg, L, D)[2]
        assert n - len(ds.forced_pages(cfg, L // PAGE, n)) >= 4  # pages chosen by the scores, not only forced ones
        o, lse = ds.fused_attend(lk, q, pages, D ** -0.5)  # pages in top-k order: the kernel takes any order
        assert last_backend("uva_paged_partial") == "interpret"
        k, v = _gathered(lk, rpages)
        eo, else_ = partial_attention(q.double(), k.double(), v.double(), D ** -0.5)  # exact, over the same pages
        assert o.dtype == torch.float32 and (o - eo).abs().max().item() < 1e-5
        assert (lse - else_).abs().max().item() < 1e-5
        assert (o - ro).abs().max().item() < 1e-5 and (lse - rlse).abs().max().item() < 1e-5  # the reference's
    finally:
        tiers.close()


def _odd_tier(B, Hq, Hkv, Dh, dram_pages, extra_pages, dtype=torch.float32, seed=0):
    """A DRAM ring of an odd page count; `extra_pages` more pages than it holds pushed through it, so the ring has
    wrapped (the overflow goes to an SSD file), random K/V with a few pages made hot along q's strong channels."""
    import tempfile

    g = torch.Generator().manual_seed(seed)
    es = torch.empty(0, dtype=dtype).element_size()
    page_b = 2 * B * PAGE * Hkv * Dh * es
    ssd = tempfile.mkdtemp() if extra_pages else None
    spec = KVTierSpec(2 * page_b, dram_pages * page_b, ssd, seg_pages=3, sparf_tier="dram")
    tiers = KVTiers(spec, 1, Hkv, Dh, dtype, "cpu")
    tiers.q_per_kv = Hq // Hkv
    n = (dram_pages + 2 + extra_pages) * PAGE - 3
    lk = tiers.setup(B, n)[0]
    k = torch.randn(B, n, Hkv, Dh, generator=g) * 0.5
    v = torch.randn(B, n, Hkv, Dh, generator=g)
    for p in range(5, n // PAGE, 7):
        k[:, p * PAGE:(p + 1) * PAGE, :, : Dh // 3] += 0.7
    for s in range(0, n, 29):
        lk.push(k[:, s:s + 29].to(dtype), v[:, s:s + 29].to(dtype))
    return tiers, lk, g


SHAPES = {"gqa3-d48-odd37-wrapped": (2, 6, 2, 48, 37, 7, 1, torch.float32),
          "mha-d40-odd21": (2, 3, 3, 40, 21, 0, 1, torch.float32),
          "gqa2-d32-tq3-wrapped": (1, 4, 2, 32, 23, 4, 3, torch.float32),
          "gqa3-d48-odd19-wrapped-bf16": (2, 6, 2, 48, 19, 5, 1, torch.bfloat16)}


@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
@pytest.mark.parametrize("cfg", [SparFConfig(), SparFConfig(bytes_frac=0.3, r=5, sink_pages=2, recent_pages=3)],
                         ids=["default", "r5-s2-rec3"])
def test_fused_mass_pages_and_attention_odd_shapes(poison, shape, cfg):
    """Page masses equal the batched host arithmetic (dram_sparf.page_mass) to fp32 rounding, forced pages +inf;
    the pages equal select_pages'; the paged kernel equals fp64 attention over them (q rows: g x Tq; a bf16 pool
    is widened to fp32 in both, so the same 1e-5 holds)."""
    B, Hq, Hkv, Dh, nd, extra, Tq, dtype = shape
    tiers, lk, g = _odd_tier(B, Hq, Hkv, Dh, nd, extra, dtype=dtype)
    try:
        assert (lk.dram_head > 0) == (extra > 0)
        q = torch.randn(B, Tq, Hq, Dh, generator=g)
        q[..., : Dh // 3] *= 2.5
        q = q.to(dtype)
        scale = Dh ** -0.5
        L = lk.dram_n * PAGE
        r, n_full, n = ds.plan(cfg, L, Dh)
        qg = ds.group(q, Hkv)
        ch = ds.channels(cfg, qg)
        want = ds.page_mass(cfg, qg, ch, ds.host_channel_rows(lk, ch), scale, n_full)
        info = {}
        pages, _ = ds.fused_select(cfg, lk, q, scale, info)
        forced = ds.forced_pages(cfg, n_full, n)
        mass = info["mass"]
        inf = torch.zeros(n_full, dtype=torch.bool)
        inf[forced] = True
        assert torch.isinf(mass[..., inf]).all() and torch.isfinite(mass[..., ~inf]).all()
        assert torch.allclose(mass[..., ~inf], want[..., ~inf], rtol=1e-5, atol=1e-7)
        assert torch.equal(info["pages"], ds.select_pages(cfg, qg, ch, ds.host_channel_rows(lk, ch), scale,
                                                          n_full, n))
        o, lse = ds.fused_attend(lk, q, pages, scale)
        k, v = _gathered(lk, info["pages"])
        eo, else_ = partial_attention(q.double(), k.double(), v.double(), scale)
        assert (o - eo).abs().max().item() < 1e-5 and (lse - else_).abs().max().item() < 1e-5
    finally:
        tiers.close()


@pytest.mark.parametrize("n,pb", [(7, 2), (5, 1), (1, 2)])
def test_paged_kernel_any_pages_any_order_bf16(poison, n, pb):
    """Random pages in any order (repeats are attended twice, as the kernel is told), split into programs of pb
    pages; bf16 pool: within 2x plain PyTorch's bf16 attention error against fp64."""
    tiers, lk, g = _odd_tier(2, 6, 2, 48, 13, 3, dtype=torch.bfloat16, seed=n)
    try:
        q = torch.randn(2, 1, 6, 48, generator=g).to(torch.bfloat16)
        pages = torch.randint(0, lk.dram_n, (2, 2, n), generator=g)
        o, lse = poison.uva_paged_partial_fwd(q, lk.dk, lk.dv, pages, 2, lk.dram_head, lk.t.dram_pages, 0.2, pb=pb)
        k, v = _gathered(lk, pages)
        eo, else_ = partial_attention(q.double(), k.double(), v.double(), 0.2)
        to = torch.nn.functional.scaled_dot_product_attention(  # plain PyTorch in bf16
            q.transpose(1, 2), k.repeat_interleave(3, 2).transpose(1, 2), v.repeat_interleave(3, 2).transpose(1, 2),
            scale=0.2).transpose(1, 2)
        tol = 2 * (to.double() - eo).abs().max().item()
        assert torch.isfinite(o).all() and (o - eo).abs().max().item() <= tol
        assert (lse - else_).abs().max().item() < 1e-4  # fp32 arithmetic over bf16 inputs
    finally:
        tiers.close()


def test_iomodel_prices_fused_uva():
    """Transport uva: select = the fused selection over the channel-row bytes; dev = the paged kernel over the
    pages' bytes, its launches (intercept) hidden behind the selection's work on CUDA."""
    inf = float("inf")
    lines = [Line(0, 1e11), Line(0, 7e9), Line(0, inf), Line(0, inf), Line(2e-5, 5e10), Line(1e-5, 1e11)]
    r = TierRates("cuda", *lines, uva_select=Line(4e-5, 3e10), uva_attend=Line(2e-5, 4e10))
    read, pages = 8e6, 6e6
    u = sparf_dram_parts(read, pages, "uva", r)
    assert u["copy"] == 0 and math.isclose(u["select"], 4e-5 + 2e6 / 3e10)
    assert math.isclose(u["dev"], pages / 4e10)  # the 2e-5 intercept is under the 1e-4 s selection
    assert sparf_layer_seconds(1e-3, u, "uva") == 1e-3 and sparf_layer_seconds(0, u, "uva") == u["select"] + u["dev"]
    # uva-serial: the same kernels on the compute stream, after the device tier's attention: the times add
    assert sparf_dram_parts(read, pages, "uva-serial", r) == u
    assert math.isclose(sparf_layer_seconds(1e-3, u, "uva-serial"), 1e-3 + u["select"] + u["dev"])
    rc = TierRates("cpu", *lines, uva_select=Line(4e-5, 3e10), uva_attend=Line(2e-5, 4e10))
    assert math.isclose(sparf_dram_parts(read, pages, "uva", rc)["dev"], 2e-5 + pages / 4e10)


def test_transports_and_config():
    from ioaware.bench.kv_tiers_sparf import transports

    def ns(device, t):
        return argparse.Namespace(sparf=0.125, sparf_tier="dram", sparf_transport=t, device=device)

    assert transports(ns("cuda", None)) == ["copy", "uva", "uva-gather"]
    assert transports(ns("cuda", "uva")) == ["uva", "uva-serial", "uva-gather"]
    assert transports(ns("cpu", "uva")) == ["uva"] and transports(ns("cpu", None)) == ["copy"]
    for tr in ds.TRANSPORTS:
        ds.check_config(SparFConfig(), tr)
    q = torch.zeros(1, 1, 32, 128)
    assert ds.fused_ok(q, 8) and not ds.fused_ok(torch.zeros(1, 17, 32, 128), 8)  # 68 rows per KV head: gathers


def test_bench_sparf_transport_uva_on_cpu(tmp_path, monkeypatch):
    """`ioaware bench kv-tiers --sparf 0.125 --sparf-tier dram --sparf-transport uva` end to end on the CPU, the
    fused kernels under the interpreter: the variant, its bytes, the fused path's probe lines and per-part price."""
    import json

    from ioaware.bench.kv_tiers import main
    from ioaware.kernels._dispatch import interpreting

    if not interpreting():
        pytest.skip("the fused kernels run on CPU only under the interpreter (IOAWARE_INTERPRET=1)")
    monkeypatch.delenv("IOAWARE_INTERPRET", raising=False)
    out = tmp_path / "kv.json"
    assert main(["--model", "tiny", "--context", "768", "--steps", "1", "--ssd", "none", "--threads", "1",
                 "--sparf", "0.125", "--sparf-tier", "dram", "--sparf-transport", "uva", "--out", str(out),
                 "--crossover", "16"]) == 0
    res = json.loads(out.read_text())
    v, exact = res["variants"]["sparf_dram_uva"], res["variants"]["move_all"]
    assert v["transport"] == "uva" and "sparf_dram_uva_gather" not in res["variants"]  # cpu: the fused one only
    assert v["tok_s"] > 0 and 0 < v["bytes_per_layer"]["dram"] <= 0.125 * exact["bytes_per_layer"]["dram"]
    sd = res["sparf_dram"]
    assert sd["probe"]["uva_select"]["rate_Bps"] > 0 and sd["probe"]["uva_attend"]["rate_Bps"] > 0
    meas, pred = sd["variants"]["sparf_dram_uva"]["measured_parts_s"], sd["variants"]["sparf_dram_uva"][
        "predicted_parts_s"]
    assert meas["select"] > 0 and meas["dev"] > 0 and meas["copy"] == 0
    assert pred["select"] > 0 and pred["dev"] > 0 and pred["copy"] == 0
    assert last_backend("uva_paged_partial") == "interpret"


def test_host_pointer_fallback_is_tried_once_then_remembered(monkeypatch):
    """A launcher that refuses a host tensor object gets its HostPointer (and every later call straight away); one
    that refuses both gets the one-line error naming transport 'copy'. CPU tensors stand in for pinned ones."""
    from ioaware.errors import UnsupportedError
    from ioaware.runtime.kvtiers.uva_kernel import HostPointer

    monkeypatch.setitem(ds._BARE, "needed", False)
    x, cuda = torch.zeros(4), torch.device("cuda")  # a device object only: nothing runs on it
    seen = []

    def picky(a):
        seen.append(type(a).__name__)
        if isinstance(a, torch.Tensor):
            raise ValueError("Pointer argument cannot be accessed from Triton (cpu tensor?)")
        return a

    assert isinstance(ds._host_call(picky, [x], cuda), HostPointer) and ds._BARE["needed"]
    assert isinstance(ds._host_call(picky, [x], cuda), HostPointer)
    assert seen == ["Tensor", "HostPointer", "HostPointer"]  # the refusal is paid once
    with pytest.raises(ValueError):  # a CPU-only run: the error is the launcher's own
        ds._host_call(picky, [x], torch.device("cpu"))
    monkeypatch.setitem(ds._BARE, "needed", False)

    def refuses(a):
        raise RuntimeError("no")

    with pytest.raises(UnsupportedError, match="use transport 'copy'"):
        ds._host_call(refuses, [x], cuda)
