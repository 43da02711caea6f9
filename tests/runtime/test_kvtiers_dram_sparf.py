"""SparF on the DRAM tier (runtime/kvtiers/dram_sparf.py): the same pages and output as the SSD tier's reference
(`sparf_from_file`) on SmolLM2-shaped synthetic data at 1/8 of the bytes, both transports (the zero-copy one runs
its Triton gather under the interpreter here), the gather kernel at odd shapes with poisoned outputs, exact mode
still exact with the channel-major copy kept, refusals, and the iomodel's pricing."""

from __future__ import annotations

import math
import os

import pytest
import torch

from ioaware.errors import UnsupportedError
from ioaware.iomodel.kv_tiers import Line, TierRates, sparf_dram_parts, sparf_layer_seconds
from ioaware.runtime.kvtiers import KVFile, KVTiers, KVTierSpec, SparFConfig, install_kv_tiers
from ioaware.runtime.kvtiers import dram_sparf as ds
from ioaware.runtime.kvtiers.sparf import PAGE, sparf_from_file

from .test_kvtiers import _tiny as tiny_tiers_model

B, HQ, HKV, D = 2, 9, 3, 64  # SmolLM2-135M's attention: 9 query heads, 3 KV heads, head_dim 64


def _tier(tmp_path, dram_pages=128, ssd=True, seed=3, dtype=torch.float32):
    """One layer whose DRAM ring has wrapped (its oldest pages went to an SSD file), holding SmolLM2-like keys: a
    sink page that takes much of the attention through channels q weighs little, and a few hot pages."""
    g = torch.Generator().manual_seed(seed)
    es = torch.empty(0, dtype=dtype).element_size()
    page_b = 2 * B * PAGE * HKV * D * es
    spec = KVTierSpec(2 * page_b, dram_pages * page_b, str(tmp_path) if ssd else None, seg_pages=4,
                      sparf_tier="dram")
    tiers = KVTiers(spec, 1, HKV, D, dtype, "cpu")
    tiers.q_per_kv = HQ // HKV
    n = (dram_pages + 2 + (10 if ssd else 0)) * PAGE - 5  # a partial device page; 3 segments in the file
    lk = tiers.setup(B, n)[0]
    q = torch.randn(B, 1, HQ, D, generator=g)
    q[..., : D // 2] *= 3.0
    k = torch.randn(B, n, HKV, D, generator=g) * 0.4
    v = torch.randn(B, n, HKV, D, generator=g)
    k[:, :PAGE, :, D // 2:] += 2.0 * q[:, :, ::HQ // HKV, D // 2:].sign()  # the context's sink
    for p in (20, 23, 31, 64, 97, 118, 130):  # hot pages, found through q's strong channels
        k[:, p * PAGE:(p + 1) * PAGE, :, : D // 2] += 0.5 * q[:, :, ::HQ // HKV, : D // 2].sign()
    for s in range(0, n, 37):
        lk.push(k[:, s:s + 37].to(dtype), v[:, s:s + 37].to(dtype))
    return tiers, lk, q


def _reference(tmp_path, lk, q, cfg):
    """The DRAM tier's tokens (oldest first) written as an SSD file, then the SSD tier's SparF over it."""
    kv = lk.dram_views()
    k = torch.cat([a for a, _ in kv], 1)
    v = torch.cat([b for _, b in kv], 1)
    f = KVFile(tmp_path / "ref.iokv", B, HKV, D, k.dtype)
    for s in range(0, k.shape[1], 5 * PAGE):
        f.append(0, k[:, s:s + 5 * PAGE].contiguous(), v[:, s:s + 5 * PAGE].contiguous())
    fd = os.open(f.path, os.O_RDONLY)
    stats = {}
    try:
        meta = {"batch": B, "n_kv_heads": HKV, "head_dim": D, "dtype": k.dtype}
        o, lse, nb = sparf_from_file(fd, f.segments, meta, q, D ** -0.5, v.double().mean(1).float(), cfg, stats)
    finally:
        os.close(fd)
        f.close()
    pages = torch.stack([torch.stack([stats["tokens"][b, h][::PAGE] // PAGE for h in range(HKV)]) for b in range(B)])
    return o, lse, pages, k, v


CFGS = {"default": SparFConfig(), "r8-s2-rec1": SparFConfig(r=8, sink_pages=2, recent_pages=1),
        "bare": SparFConfig(sink_pages=0, recent_pages=0)}


@pytest.mark.parametrize("transport,cfg", [("copy", c) for c in CFGS.values()] + [("uva", CFGS["default"])],
                         ids=[f"copy-{k}" for k in CFGS] + ["uva-default"])
@pytest.mark.parametrize("ssd", [True, False], ids=["wrapped", "whole-context"])
def test_dram_sparf_matches_the_ssd_reference(tmp_path, transport, cfg, ssd):
    tiers, lk, q = _tier(tmp_path, ssd=ssd)
    try:
        assert (lk.dram_head > 0 and lk.ssd_tokens > 0) == ssd  # wrapped: the tier's order is not its slots
        ro, rlse, rpages, k, v = _reference(tmp_path, lk, q, cfg)
        info = {}
        sel = ds.device_select if transport == "uva" else ds.host_select
        ks, vs, pages, nb = sel(cfg, lk, q if transport == "uva" else q.float(), D ** -0.5, info)
        assert torch.equal(pages, rpages) and torch.equal(info["pages"], pages)
        L = lk.dram_n * PAGE
        n = ds.plan(cfg, L, D)[2]
        assert n - len(ds.forced_pages(cfg, L // PAGE, n)) >= 4  # pages chosen by the scores, not only forced ones
        exact_b = 2 * B * HKV * L * D * 4
        assert nb == ds.read_bytes(cfg, L, B, HKV, D, 4) <= cfg.bytes_frac * exact_b * 1.0001
        # the staged pages are the tier's own, each head's in its column
        for b in range(B):
            for h in range(HKV):
                tok = (pages[b, h][:, None] * PAGE + torch.arange(PAGE)).reshape(-1)
                assert torch.equal(ks[b, :, h], k[b, tok, h]) and torch.equal(vs[b, :, h], v[b, tok, h])
        o, lse = ds.attend_selected(q, ks, vs, D ** -0.5)
        assert (o - ro).abs().max().item() < 2e-6 and (lse - rlse).abs().max().item() < 2e-6
    finally:
        tiers.close()


def test_channel_major_copy_follows_the_ring(tmp_path):
    tiers, lk, _ = _tier(tmp_path, dtype=torch.bfloat16)
    try:
        assert torch.equal(lk.dkc, lk.dk.permute(0, 2, 3, 1))
    finally:
        tiers.close()


@pytest.mark.parametrize("n_rows,row_len,nb", [(1, 37, 5), (16, 24, 7), (3, 130, 2)])
def test_uva_gather_kernel_odd_shapes_poisoned(n_rows, row_len, nb):
    """dst[dst_off[i] + r*drs + c] = src[src_off[i] + r*srs + c]; every other element of dst keeps its poison."""
    from ioaware.kernels._dispatch import load_kernel_module

    mod = load_kernel_module("ioaware.runtime.kvtiers.uva_kernel")
    g = torch.Generator().manual_seed(n_rows * 100 + row_len)
    srs, drs = row_len + 9, row_len + 3
    src = torch.randn(nb * 2 * n_rows * srs + 50, generator=g).to(torch.bfloat16)
    src_off = torch.randperm(nb * 2, generator=g)[:nb] * n_rows * srs + 7
    dst = torch.full((nb * n_rows * drs + 11,), float("nan"), dtype=torch.bfloat16)
    dst_off = torch.randperm(nb, generator=g) * n_rows * drs + 5
    mod.uva_gather_fwd(src, dst, src_off, dst_off, n_rows, row_len, srs, drs)
    want = torch.full_like(dst, float("nan"))
    for so, do in zip(src_off.tolist(), dst_off.tolist(), strict=True):
        for r in range(n_rows):
            want[do + r * drs: do + r * drs + row_len] = src[so + r * srs: so + r * srs + row_len]
    assert torch.equal(dst.isnan(), want.isnan()) and torch.equal(dst[~dst.isnan()], want[~want.isnan()])


def _tiny(seed=2):
    return tiny_tiers_model(seed)


@pytest.mark.parametrize("sparf,transport", [(None, "copy"), (SparFConfig(bytes_frac=4.0), "copy"),
                                             (SparFConfig(bytes_frac=4.0, recent_pages=0), "copy"),
                                             (SparFConfig(bytes_frac=4.0), "uva"),
                                             (SparFConfig(bytes_frac=4.0), "uva-gather")],
                         ids=["exact", "sparf-whole-budget-copy", "sparf-whole-budget-norecent", "sparf-whole-uva",
                              "sparf-whole-uva-gather"])
def test_tiny_model_exact_and_full_budget_sparf_equal_in_memory(tmp_path, monkeypatch, sparf, transport):
    """With the channel-major copy kept (sparf_tier='dram'), exact mode still equals the all-in-memory model to
    1e-5 (fp32); so does SparF on DRAM whose budget reads every page (the plumbing, not the approximation), over
    each transport (uva: the fused kernels, uva-gather: the gathers, under the interpreter)."""
    monkeypatch.delenv("IOAWARE_INTERPRET", raising=False)  # flash_decode's reference; its kernel has own tests
    m = _tiny()
    ids = torch.randint(0, 300, (1, 100), generator=torch.Generator().manual_seed(5))
    # 80 prompt tokens (five pages: four leave HBM at prefill), then 20 decode steps over the tiers, crossing a page
    # boundary at 96: every decode step reads the DRAM pages (the interpreted uva kernels cost ~0.4 s a step)
    with torch.inference_mode():
        m.setup_cache(1, 130)
        ref = [m(ids[:, :80], 0)] + [m(ids[:, i:i + 1], i) for i in range(80, 100)]
        page = 2 * 16 * 2 * 16 * 4 * 2
        tiers = install_kv_tiers(m, KVTierSpec(1 * page, 12 * page, None, modes={"dram": "move", "ssd": "move"},
                                               sparf=sparf, sparf_tier="dram", sparf_transport=transport))
        tiers.sparf_info = {}
        try:
            m.setup_cache(1, 130)
            got = [m(ids[:, :80], 0)] + [m(ids[:, i:i + 1], i) for i in range(80, 100)]
            assert tiers.tokens_per_tier()["dram"] >= 80
            assert (tiers.stats["bytes"]["dram_sparf"] > 0) == (sparf is not None)
            if transport.startswith("uva"):
                assert ("mass" in tiers.sparf_info) == (transport == "uva")  # the fused path ran the decode steps
        finally:
            tiers.close()
    for a, b in zip(ref, got, strict=True):
        assert ((a - b).abs().max() / a.abs().max()).item() < 1e-5


def test_eighth_budget_reads_an_eighth_and_stays_close(tmp_path, monkeypatch):
    """At 1/8 of the bytes the tiny model runs end to end; the DRAM tier's SparF reads what it counts."""
    monkeypatch.delenv("IOAWARE_INTERPRET", raising=False)
    m = _tiny()
    ids = torch.randint(0, 300, (1, 400), generator=torch.Generator().manual_seed(6))
    page = 2 * 16 * 2 * 16 * 4 * 2
    tiers = install_kv_tiers(m, KVTierSpec(2 * page, 30 * page, None, modes={"dram": "move", "ssd": "move"},
                                           sparf=SparFConfig(), sparf_tier="dram"))
    try:
        with torch.inference_mode():
            m.setup_cache(1, 410)
            m(ids[:, :392], 0)
            tiers.stats["bytes"]["dram_sparf"] = 0
            out = m(ids[:, 392:393], 392)
        L = tiers.tokens_per_tier()["dram"]
        assert torch.isfinite(out).all() and L >= 320
        want = 2 * ds.read_bytes(SparFConfig(), L, 1, 2, 16, 4)  # 2 layers
        assert tiers.stats["bytes"]["dram_sparf"] == want <= 0.125 * 2 * 2 * (2 * L * 2 * 16 * 4)
    finally:
        tiers.close()


@pytest.mark.parametrize("kw", [dict(r_share=0.5), dict(top_k=32), dict(correction="mean")])
def test_unsupported_options_refused(kw):
    with pytest.raises(UnsupportedError, match="DRAM tier supports"):
        ds.check_config(SparFConfig(**kw), "copy")
    with pytest.raises(UnsupportedError, match="transport"):
        ds.check_config(SparFConfig(), "dma")


def test_iomodel_prices_sparf_dram():
    inf = float("inf")
    r = TierRates("cuda", Line(0, 1e11), Line(0, 7e9), Line(0, inf), Line(0, inf), Line(2e-5, 5e10), Line(1e-5, 1e11),
                  host_select=Line(1e-4, 2e10), uva=Line(3e-5, 2e10), sync_s=5e-5)
    read, pages = 8e6, 6e6
    c = sparf_dram_parts(read, pages, "copy", r)
    assert math.isclose(c["select"], 5e-5 + 1e-4 + read / 2e10) and math.isclose(c["copy"], 2e-5 + pages / 5e10)
    u = sparf_dram_parts(read, pages, "uva-gather", r)  # the gather path (transport "uva" is the fused one)
    assert u["copy"] == 0 and math.isclose(u["select"], 3e-5 + read / 2e10)
    assert sparf_layer_seconds(1e-3, u, "uva-gather") == max(1e-3, u["select"] + u["dev"])
    assert sparf_layer_seconds(1e-5, c, "copy") == c["select"] + c["copy"] + c["dev"]
    assert sparf_dram_parts(0, 0, "uva", r) == {"select": 0.0, "copy": 0.0, "dev": 0.0}
    with pytest.raises(ValueError, match="transport"):
        sparf_dram_parts(1, 1, "dma", r)


def test_bench_sparf_dram_on_cpu(tmp_path, monkeypatch):
    """`ioaware bench kv-tiers --sparf 0.125 --sparf-tier dram` end to end on the CPU (transport copy): the variant,
    its bytes (1/8 of the exact tier's), the probe, per-part prediction vs measurement, the random-data cosine."""
    import json

    from ioaware.bench.kv_tiers import main

    monkeypatch.delenv("IOAWARE_INTERPRET", raising=False)
    out = tmp_path / "kv.json"
    assert main(["--model", "tiny", "--context", "768", "--steps", "1", "--ssd", "none", "--threads", "1",
                 "--sparf", "0.125", "--sparf-tier", "dram", "--out", str(out), "--crossover", "16"]) == 0
    res = json.loads(out.read_text())
    v, exact = res["variants"]["sparf_dram_copy"], res["variants"]["move_all"]
    assert v["tok_s"] > 0 and 0 < v["bytes_per_layer"]["dram"] <= 0.125 * exact["bytes_per_layer"]["dram"]
    sd = res["sparf_dram"]
    from ioaware.kernels._dispatch import interpreting

    assert sd["probe"]["host_select"]["rate_Bps"] > 0
    assert (sd["probe"]["uva"] is not None) == interpreting()  # the zero-copy gather: CUDA, or its interpreter
    assert set(sd["variants"]["sparf_dram_copy"]["measured_parts_s"]) == {"select", "copy", "dev"}
    assert sd["variants"]["sparf_dram_copy"]["measured_parts_s"]["select"] > 0
    assert -1 <= sd["quality_random_data"]["dram_partial"]["mean"] <= 1
    assert sd["quality_real_activations"].endswith("kvtiers-sparf-smollm2-cpu-2026-12-03b.json")


def test_iomodel_device_call_overlaps_the_copy_before_it():
    """On CUDA the partial's fixed cost (host launches) runs while the copy is in flight: counted once; on a
    CPU-only run one thread does both, so both count."""
    from ioaware.iomodel.kv_tiers import tier_seconds

    inf = float("inf")
    lines = [Line(0, 1e11), Line(0, 7e9), Line(0, inf), Line(0, inf), Line(1e-5, 5e10), Line(4e-4, 1e12)]
    B = 64e6
    cuda, cpu = TierRates("cuda", *lines), TierRates("cpu", *lines)
    link, kern = 1e-5 + B / 5e10, B / 1e12
    assert math.isclose(tier_seconds("dram", B, "move", cuda), max(link, 4e-4) + kern)
    assert math.isclose(tier_seconds("dram", B, "move", cpu), link + 4e-4 + kern)
    assert math.isclose(tier_seconds("dram", 1e5, "move", cuda), 4e-4 + 1e5 / 1e12)  # a short copy hides little
