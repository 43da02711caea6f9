"""KV tiers on a CUDA GPU (run on the device machine: `pytest -m gpu tests/gpu/test_kvtiers_gpu.py`): the device tier
through flash_decode's Triton kernel, DRAM pinned (near: CPU threads; move: pinned copy), the SSD worker; exact mode
equals the all-in-HBM model in fp32 (1e-5 relative) and within the 2x rule in bf16."""

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _model(dtype):
    from ioaware.bench.kv_tiers import _random_model

    shape = dict(dim=256, n_layers=3, n_heads=8, n_kv_heads=2, hidden_dim=512, vocab_size=1000, head_dim=64,
                 max_seq_len=4096)
    return _random_model(shape, "cuda", dtype)


def _run(m, ids, steps):
    with torch.inference_mode():
        m.setup_cache(1, ids.shape[1] + steps)
        out = [m(ids[:, :300], 0), m(ids[:, 300:], 300)]
        tok = out[-1][:, -1:].argmax(-1)
        for i in range(steps):
            out.append(m(tok, ids.shape[1] + i))
            tok = out[-1].argmax(-1)
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("modes", [{"dram": "near", "ssd": "near"}, {"dram": "move", "ssd": "move"}],
                         ids=["near", "move"])
def test_tiered_equals_all_in_hbm(tmp_path, dtype, modes):
    from ioaware.runtime.kvtiers import KVTierSpec, install_kv_tiers

    torch.manual_seed(0)
    m = _model(dtype)
    ids = torch.randint(0, 1000, (1, 700), device="cuda")
    ref = _run(m, ids, 6)
    a = m.args
    es = torch.empty(0, dtype=dtype).element_size()
    page = 2 * 16 * a.n_kv_heads * a.head_dim * es * a.n_layers
    tiers = install_kv_tiers(m, KVTierSpec(8 * page, 16 * page, str(tmp_path), seg_pages=4, modes=modes))
    try:
        got = _run(m, ids, 6)
        per = tiers.tokens_per_tier()
        assert per["ssd"] > 0 and per["dram"] > 0, per
    finally:
        tiers.close()
        m.kv_tiers = None
    if dtype == torch.float32:
        for r, g in zip(ref, got, strict=True):
            assert ((g - r).abs().max() / r.abs().max()).item() < 1e-5
    else:  # 2x rule: against an fp32 run of the same weights, no worse than twice the all-in-HBM bf16 run's error
        m32 = m.float()
        ref32 = _run(m32, ids, 0)
        for r, g, r32 in zip(ref[:2], got[:2], ref32, strict=True):
            assert (g - r32).abs().max() <= 2 * (r - r32).abs().max() + 1e-3


def test_bench_runs_on_cuda(tmp_path):
    """The benchmark's GPU path end to end at a small size (the bar run is the README's device command)."""
    from ioaware.bench.kv_tiers import main

    out = tmp_path / "kv.json"
    assert main(["--device", "cuda", "--model", "tiny", "--context", "2048", "--steps", "3", "--seg-pages", "4",
                 "--ssd", str(tmp_path), "--out", str(out), "--crossover", "64", "256"]) == 0
    import json

    res = json.loads(out.read_text())
    assert res["variants"]["tiered"]["tok_s"] > 0 and res["variants"]["move_all"]["tok_s"] > 0


# ---------------------------------------------------------------- SparF on the DRAM tier (dram_sparf.py)
def _dram_tier(device, dtype, dram_pages=128, B=2, Hq=8, Hkv=2, D=64, seed=3):
    """One layer, a DRAM ring that has wrapped (SSD tier below), random K/V with a few hot pages; q."""
    import tempfile

    from ioaware.runtime.kvtiers import KVTiers, KVTierSpec

    g = torch.Generator().manual_seed(seed)
    es = torch.empty(0, dtype=dtype).element_size()
    page_b = 2 * B * 16 * Hkv * D * es
    spec = KVTierSpec(2 * page_b, dram_pages * page_b, tempfile.mkdtemp(), seg_pages=4, sparf_tier="dram")
    tiers = KVTiers(spec, 1, Hkv, D, dtype, device)
    tiers.q_per_kv = Hq // Hkv
    n = (dram_pages + 12) * 16 - 5
    lk = tiers.setup(B, n)[0]
    q = torch.randn(B, 1, Hq, D, generator=g)
    k, v = torch.randn(B, n, Hkv, D, generator=g) * 0.4, torch.randn(B, n, Hkv, D, generator=g)
    for p in (20, 31, 64, 97, 118):
        k[:, p * 16:(p + 1) * 16, :, : D // 2] += 0.5 * q[:, :, :: Hq // Hkv, : D // 2].sign()
    for s in range(0, n, 100):
        lk.push(k[:, s:s + 100].to(device, dtype), v[:, s:s + 100].to(device, dtype))
    return tiers, lk, q.to(device, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_uva_gather_reads_pinned_host_memory(dtype):
    """Triton reads torch's pinned host memory through UVA (the tensor or, if refused, its bare pointer)."""
    from ioaware.runtime.kvtiers import dram_sparf as ds

    src = torch.randn(40, 16, 3, 72).to(dtype).pin_memory()
    rows = torch.tensor([5, 0, 33, 17], device="cuda")
    off = (rows * 16 * 3 + 2) * 72  # page `row`, head 2: 16 rows of 72, stride 3*72
    dst = torch.full((4, 16, 72), float("nan"), dtype=dtype, device="cuda")
    ds._gather(src, dst, off, torch.arange(4, device="cuda") * 16 * 72, 16, 72, 3 * 72, 72)
    assert torch.equal(dst.cpu(), src[rows.cpu(), :, 2])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("transport", ["copy", "uva"])
def test_dram_sparf_on_cuda_matches_the_cpu_reference(dtype, transport):
    """The chosen pages equal the CPU reference's (or tie with them in p̂'s mass), the gathered K/V are the
    pool's own, and the output equals the CPU reference over the same pages (fp32: 1e-5; bf16: the 2x rule)."""
    from ioaware.runtime.kvtiers import SparFConfig
    from ioaware.runtime.kvtiers import dram_sparf as ds
    from ioaware.runtime.kvtiers.partial import partial_attention

    tiers, lk, q = _dram_tier("cuda", dtype)
    try:
        cfg = SparFConfig()
        scale = 64 ** -0.5
        kc, vc, pc, nbc = ds.host_select(cfg, lk, q.float().cpu(), scale)  # the CPU reference
        sel = ds.device_select if transport == "uva" else ds.host_select
        k, v, pages, nb = sel(cfg, lk, q if transport == "uva" else q.float().cpu(), scale)
        assert nb == nbc
        pages = pages.cpu()
        if not torch.equal(pages, pc):  # a near-tie decided differently: the masses must agree to fp32 rounding
            L = lk.dram_n * 16
            qg = ds.group(q.float().cpu(), 2)
            ch = ds.channels(cfg, qg)
            m = ds.page_mass(cfg, qg, ch, ds.host_channel_rows(lk, ch), scale, L // 16)
            assert (m.gather(-1, pages).sum(-1) - m.gather(-1, pc).sum(-1)).abs().max() < 1e-5
            return
        k, v = k.to("cuda"), v.to("cuda")
        assert torch.equal(k.cpu(), kc) and torch.equal(v.cpu(), vc)
        o, lse = ds.attend_selected(q, k, v, scale)
        ro, rlse = partial_attention(q.double().cpu(), kc.double(), vc.double(), scale)
        if dtype == torch.float32:
            assert (o.double().cpu() - ro).abs().max() < 1e-5 and (lse.double().cpu() - rlse).abs().max() < 1e-5
        else:  # 2x rule against plain PyTorch's bf16 attention (SDPA on the GPU) over the same pages
            kk, vv = (x.to("cuda").repeat_interleave(4, 2).transpose(1, 2) for x in (kc, vc))
            to = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), kk, vv, scale=scale)
            tol = 2 * (to.transpose(1, 2).double().cpu() - ro).abs().max().item()
            assert (o.double().cpu() - ro).abs().max() <= tol
    finally:
        tiers.close()


def test_uva_selection_never_syncs_the_host():
    """Transport uva's channel rows, selection and page gathers queue on the device with no host sync (torch's
    sync debug mode raises on any), so the host can run ahead to the next layers."""
    from ioaware.runtime.kvtiers import SparFConfig
    from ioaware.runtime.kvtiers import dram_sparf as ds

    tiers, lk, q = _dram_tier("cuda", torch.bfloat16)
    try:
        ds.device_select(SparFConfig(), lk, q, 0.125)  # compiles first
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            k, v, pages, _ = ds.device_select(SparFConfig(), lk, q, 0.125)
        finally:
            torch.cuda.set_sync_debug_mode(0)
        assert k.is_cuda and pages.is_cuda and torch.isfinite(k.float()).all()
    finally:
        tiers.close()


@pytest.mark.parametrize("transport", ["copy", "uva"])
@pytest.mark.parametrize("timed", [False, True], ids=["overlapped", "timed"])
def test_dram_sparf_full_budget_and_exact_equal_all_in_hbm(transport, timed):
    """fp32 model: with the channel-major copy kept, exact mode and SparF on DRAM with a budget that reads every
    page equal the all-in-HBM run to 1e-5, through the streams (overlapped) and tier by tier (timed)."""
    from ioaware.runtime.kvtiers import KVTierSpec, SparFConfig, install_kv_tiers

    torch.manual_seed(0)
    m = _model(torch.float32)
    ids = torch.randint(0, 1000, (1, 700), device="cuda")
    ref = _run(m, ids, 6)
    a = m.args
    page = 2 * 16 * a.n_kv_heads * a.head_dim * 4 * a.n_layers
    for sparf in (None, SparFConfig(bytes_frac=4.0)):
        tiers = install_kv_tiers(m, KVTierSpec(8 * page, 64 * page, None, modes={"dram": "move", "ssd": "move"},
                                               sparf=sparf, sparf_tier="dram", sparf_transport=transport))
        tiers.timed = timed
        try:
            got = _run(m, ids, 6)
            assert tiers.tokens_per_tier()["dram"] > 0
            assert (tiers.stats["bytes"]["dram_sparf"] > 0) == (sparf is not None)
        finally:
            tiers.close()
            m.kv_tiers = None
        for r, g in zip(ref, got, strict=True):
            assert ((g - r).abs().max() / r.abs().max()).item() < 1e-5


def test_bench_sparf_dram_runs_on_cuda(tmp_path):
    """The bench's SparF-on-DRAM variants (both transports), the probe and the per-part prediction, small."""
    import json

    from ioaware.bench.kv_tiers import main

    out = tmp_path / "kv.json"
    assert main(["--device", "cuda", "--model", "tiny", "--context", "4096", "--steps", "3", "--ssd", "none",
                 "--sparf", "0.125", "--sparf-tier", "dram", "--out", str(out), "--crossover", "64"]) == 0
    res = json.loads(out.read_text())
    for key in ("sparf_dram_copy", "sparf_dram_uva"):
        assert res["variants"][key]["tok_s"] > 0, res["variants"][key]
        assert set(res["sparf_dram"]["variants"][key]["measured_parts_s"]) == {"select", "copy", "dev"}


# ---------------------------------------------------------------- SparF on DRAM, transport uva: the fused kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_fused_uva_on_cuda_matches_the_cpu_reference(dtype):
    """uva_sparf_kernel.py on the GPU, reading the pinned pool through UVA: the pages equal the CPU reference's
    (host_select: sparf_from_file's arithmetic) or tie with them in p̂'s mass; (out, lse) equal fp64 attention over
    the chosen pages (fp32: 1e-5; bf16: the 2x rule against SDPA in bf16)."""
    from ioaware.kernels._dispatch import last_backend
    from ioaware.runtime.kvtiers import SparFConfig
    from ioaware.runtime.kvtiers import dram_sparf as ds
    from ioaware.runtime.kvtiers.partial import partial_attention

    tiers, lk, q = _dram_tier("cuda", dtype)
    try:
        assert lk.dk.is_pinned() and lk.dkc.is_pinned()
        cfg, scale = SparFConfig(), 64 ** -0.5
        kc, vc, pc, nbc = ds.host_select(cfg, lk, q.float().cpu(), scale)
        info = {}
        pages, nb = ds.fused_select(cfg, lk, q, scale, info)
        assert nb == nbc and pages.is_cuda and last_backend("uva_sparf_select") == "triton"
        got = info["pages"].cpu()
        if not torch.equal(got, pc):  # a near-tie decided differently: the masses must agree to fp32 rounding
            m = info["mass"].cpu().clamp_max(1e30)
            assert (m.gather(-1, got).sum(-1) - m.gather(-1, pc).sum(-1)).abs().max() < 1e-5
            B, t = q.shape[0], lk.t  # the GPU's own pages, gathered from the pool on the host
            slots = (got + lk.dram_head) % t.dram_pages
            bi, hi = torch.arange(B)[:, None, None], torch.arange(t.Hkv)[None, :, None]
            kc, vc = (x.view(B, t.dram_pages, 16, t.Hkv, t.D)[bi, slots, :, hi, :].permute(0, 2, 3, 1, 4)
                      .reshape(B, -1, t.Hkv, t.D) for x in (lk.dk, lk.dv))
        o, lse = ds.fused_attend(lk, q, pages, scale)
        assert last_backend("uva_paged_partial") == "triton"
        ro, rlse = partial_attention(q.double().cpu(), kc.double(), vc.double(), scale)
        if dtype == torch.float32:
            assert (o.double().cpu() - ro).abs().max() < 1e-5 and (lse.double().cpu() - rlse).abs().max() < 1e-5
        else:
            kk, vv = (x.to("cuda").repeat_interleave(4, 2).transpose(1, 2) for x in (kc, vc))
            to = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), kk, vv, scale=scale)
            assert (o.double().cpu() - ro).abs().max() <= 2 * (to.transpose(1, 2).double().cpu() - ro).abs().max()
    finally:
        tiers.close()


def test_fused_uva_never_syncs_and_launches_few_kernels():
    """Transport uva's selection and attention queue on the device with no host sync (torch's sync debug mode
    raises on any), in about 5 kernels (the gather path: about 20)."""
    from torch.profiler import ProfilerActivity, profile

    from ioaware.runtime.kvtiers import SparFConfig
    from ioaware.runtime.kvtiers import dram_sparf as ds

    tiers, lk, q = _dram_tier("cuda", torch.bfloat16)
    try:
        def fused():
            pages, _ = ds.fused_select(SparFConfig(), lk, q, 0.125)
            return ds.fused_attend(lk, q, pages, 0.125)

        def gather():
            k, v, _, _ = ds.device_select(SparFConfig(), lk, q, 0.125)
            return ds.attend_selected(q, k, v, 0.125)

        fused(), gather()  # compiles first
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            o, lse = fused()
        finally:
            torch.cuda.set_sync_debug_mode(0)
        assert o.is_cuda and torch.isfinite(o).all() and torch.isfinite(lse).all()
        counts = {}
        for name, fn in (("fused", fused), ("gather", gather)):
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                fn()
                torch.cuda.synchronize()
            counts[name] = sum(e.count for e in prof.key_averages() if e.device_type.name == "CUDA"
                               and "memcpy" not in e.key.lower() and "memset" not in e.key.lower())
        assert 0 < counts["fused"] <= 6 and counts["gather"] >= 2 * counts["fused"], counts  # topk: 1 or 2
    finally:
        tiers.close()


@pytest.mark.parametrize("timed", [False, True], ids=["overlapped", "timed"])
def test_dram_sparf_uva_gather_full_budget_equals_all_in_hbm(timed):
    """The older zero-copy path, kept as transport 'uva-gather' (transport 'uva' is the fused one above)."""
    test_dram_sparf_full_budget_and_exact_equal_all_in_hbm("uva-gather", timed)


def test_bench_sparf_dram_uva_runs_both_zero_copy_variants(tmp_path):
    """`--sparf-transport uva` times the fused path and, for comparison, the gather path; both probed and priced."""
    import json

    from ioaware.bench.kv_tiers import main

    out = tmp_path / "kv.json"
    assert main(["--device", "cuda", "--model", "tiny", "--context", "4096", "--steps", "3", "--ssd", "none",
                 "--sparf", "0.125", "--sparf-tier", "dram", "--sparf-transport", "uva", "--out", str(out),
                 "--crossover", "64"]) == 0
    res = json.loads(out.read_text())
    for key in ("sparf_dram_uva", "sparf_dram_uva_gather"):
        assert res["variants"][key]["tok_s"] > 0, res["variants"][key]
        assert res["sparf_dram"]["variants"][key]["measured_parts_s"]["dev"] > 0
    assert res["sparf_dram"]["probe"]["uva_select"] and res["sparf_dram"]["probe"]["uva_attend"]
