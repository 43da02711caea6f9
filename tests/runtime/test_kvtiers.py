"""KV tiers (runtime/kvtiers): LSE merge, CPU partial attention, the SSD file (crash-safe header), the worker
process, SparF, the budget parser, the tiered cache inside a tiny Transformer, and the tier cost model."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from ioaware.iomodel.kv_tiers import Line, TierRates, choose_modes, crossover, layer_seconds, tier_seconds
from ioaware.runtime.kvtiers import (
    KVFile,
    KVFileError,
    KVTierSpec,
    SparFConfig,
    install_kv_tiers,
    lse_merge,
    open_kv_file,
    parse_kv_budget,
    partial_attention,
)
from ioaware.runtime.kvtiers.sparf import exact_from_file, sparf_from_file
from ioaware.runtime.kvtiers.worker import TierWorker


def _ref(q, k, v, causal=False):
    """fp64 attention with its lse: q (B, T, Hq, D), k/v (B, L, Hkv, D)."""
    B, T, Hq, D = q.shape
    g = Hq // k.shape[2]
    kk = k.double().repeat_interleave(g, 2).transpose(1, 2)
    vv = v.double().repeat_interleave(g, 2).transpose(1, 2)
    s = q.double().transpose(1, 2) @ kk.transpose(-1, -2) / math.sqrt(D)  # (B, Hq, T, L)
    if causal:
        L = k.shape[1]
        s = s.masked_fill(torch.arange(L)[None, :] > (L - T + torch.arange(T))[:, None], float("-inf"))
    lse = torch.logsumexp(s, -1)
    return (torch.softmax(s, -1) @ vv).transpose(1, 2), lse


@pytest.mark.parametrize("B,T,Hq,Hkv,D,L,causal", [
    pytest.param(1, 1, 4, 2, 16, 37, False, id="B1-T1-GQA2-L37"),
    pytest.param(2, 5, 6, 2, 24, 19, True, id="B2-T5-GQA3-L19-causal"),
    pytest.param(1, 3, 3, 3, 8, 1, False, id="B1-T3-MHA-L1"),
])
def test_partial_attention_matches_fp64(B, T, Hq, Hkv, D, L, causal):
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(B, n, h, D, generator=g) for n, h in ((T, Hq), (L + (T if causal else 0), Hkv),
                                                               (L + (T if causal else 0), Hkv)))
    o, lse = partial_attention(q, k, v, 1 / math.sqrt(D), causal=causal)
    ro, rlse = _ref(q, k, v, causal)
    torch_err = (torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.repeat_interleave(Hq // Hkv, 2).transpose(1, 2),
        v.repeat_interleave(Hq // Hkv, 2).transpose(1, 2)).transpose(1, 2).double() - _ref(q, k, v)[0]).abs().max()
    assert (o.double() - ro).abs().max() <= max(2 * torch_err.item(), 2e-6)
    assert torch.allclose(lse.double(), rlse, atol=1e-5)


def test_partial_attention_chunked_bf16_equals_whole():
    g = torch.Generator().manual_seed(6)
    q = torch.randn(1, 1, 4, 16, generator=g)
    k, v = (torch.randn(1, 301, 2, 16, generator=g).to(torch.bfloat16) for _ in range(2))
    o1, l1 = partial_attention(q, k, v, 0.25, chunk=64)  # 5 chunks, the last partial
    o2, l2 = partial_attention(q, k.float(), v.float(), 0.25)
    assert (o1 - o2).abs().max() < 1e-5 and (l1 - l2).abs().max() < 1e-5


def test_lse_merge_of_splits_is_exact_and_empty_parts_weigh_nothing():
    g = torch.Generator().manual_seed(2)
    q, k, v = torch.randn(2, 2, 4, 16, generator=g), torch.randn(2, 50, 2, 16, generator=g), torch.randn(
        2, 50, 2, 16, generator=g)
    parts = [partial_attention(q, k[:, a:b], v[:, a:b], 0.25) for a, b in ((0, 7), (7, 7), (7, 31), (31, 50))]
    o, lse = lse_merge(parts)
    ro, rlse = _ref(q * (0.25 * 4), k, v)  # scale 0.25 = 1/sqrt(16)
    assert (o.double() - ro).abs().max() < 1e-5
    assert (lse.double() - rlse).abs().max() < 1e-5
    with pytest.raises(ValueError):
        lse_merge([])


def _kvfile(tmp_path, B=1, Hkv=2, D=16, sizes=(32, 48), dtype=torch.float32, seed=3):
    g = torch.Generator().manual_seed(seed)
    f = KVFile(tmp_path / "kv.iokv", B, Hkv, D, dtype)
    ks, vs = [], []
    for n in sizes:
        k, v = torch.randn(B, n, Hkv, D, generator=g).to(dtype), torch.randn(B, n, Hkv, D, generator=g).to(dtype)
        f.append(0, k, v)
        ks.append(k)
        vs.append(v)
    return f, torch.cat(ks, 1), torch.cat(vs, 1)


def test_kv_file_untrusted_until_sealed_then_verified(tmp_path):
    f, k, v = _kvfile(tmp_path)
    assert f.path.name.startswith("kv.iokv.tmp-") and f.path.stat().st_size % 4096 == 0
    with pytest.raises(KVFileError, match="never sealed"):  # a run still writing (or killed) is not trusted
        open_kv_file(f.path)
    final = f.seal()
    meta = open_kv_file(final)
    assert [s["tokens"] for s in meta["segments"]] == [32, 48] and all(s["offset"] % 4096 == 0
                                                                      for s in meta["segments"])
    raw = bytearray(final.read_bytes())  # a flipped byte in a segment fails its checksum
    raw[meta["segments"][1]["offset"] + 5] ^= 0xFF
    final.write_bytes(raw)
    with pytest.raises(KVFileError, match="checksum"):
        open_kv_file(final)


def test_killed_writer_leaves_an_untrusted_file(tmp_path):
    """A writer killed mid-run (SIGKILL, as a crash; the header is written last, only by seal) leaves a file that
    open_kv_file refuses."""
    code = textwrap.dedent(f"""
        import os, time, torch
        from ioaware.runtime.kvtiers import KVFile
        f = KVFile({str(tmp_path / 'c.iokv')!r}, 1, 2, 16, torch.float32)
        f.append(0, torch.randn(1, 64, 2, 16), torch.randn(1, 64, 2, 16))
        print(f.path, flush=True)
        time.sleep(60)
    """)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    path = p.stdout.readline().strip()
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert os.path.getsize(path) > 4096
    with pytest.raises(KVFileError):
        open_kv_file(path)


def test_worker_process_computes_the_exact_partial(tmp_path):
    f, k, v = _kvfile(tmp_path, B=2, Hkv=2, D=16, sizes=(32, 16))
    q = torch.randn(2, 1, 4, 16)
    meta = {"batch": 2, "n_kv_heads": 2, "head_dim": 16, "dtype": torch.float32}
    w = TierWorker(f.path)
    try:
        w.submit(f.segments, meta, q, 0.25)
        o, lse, nbytes, secs = w.result()
    finally:
        w.close()
        f.close()
    ro, rlse = _ref(q, k, v)
    assert (o.double() - ro).abs().max() < 1e-5 and (lse.double() - rlse).abs().max() < 1e-5
    assert nbytes >= 2 * k.numel() * 4 and secs > 0
    assert not f.path.exists()  # an unsealed cache file is deleted on close


def test_sparf_reads_its_budget_and_approaches_exact(tmp_path):
    """Keys with a few dominant tokens (as trained attention has): SparF at 1/4 of the bytes is close to exact and
    reads no more than its budget; at the full budget with every page kept it is exact. The paper's algorithm: no
    sink or recent pages (these keys have neither; they would take 3 of the 6 pages the hot tokens need) and the
    mean-value correction (here, with V of mean 0 and the missed mass spread evenly, v̄ is the right stand-in)."""
    B, Hkv, D, L = 1, 2, 32, 512
    g = torch.Generator().manual_seed(4)
    f = KVFile(tmp_path / "s.iokv", B, Hkv, D, torch.float32)
    k, v = torch.randn(B, L, Hkv, D, generator=g) * 0.3, torch.randn(B, L, Hkv, D, generator=g)
    q = torch.randn(B, 1, 4, D, generator=g)
    hot = torch.randint(0, L, (6,), generator=g)
    k[:, hot] += 2.0 * q[:, :, ::2].mean(1, keepdim=True).sign()  # a few tokens most queries attend to
    for i in range(0, L, 128):
        f.append(0, k[:, i:i + 128], v[:, i:i + 128])
    meta = {"batch": B, "n_kv_heads": Hkv, "head_dim": D, "dtype": torch.float32}
    fd = os.open(f.path, os.O_RDONLY)
    try:
        ex, ex_lse, ex_bytes = exact_from_file(fd, f.segments, meta, q, D ** -0.5)
        cfg = SparFConfig(bytes_frac=0.25, r=4, sink_pages=0, recent_pages=0, correction="mean")
        sp, sp_lse, sp_bytes = sparf_from_file(fd, f.segments, meta, q, D ** -0.5, v.double().mean(1).float(), cfg)
        full, _, _ = sparf_from_file(fd, f.segments, meta, q, D ** -0.5, v.double().mean(1).float(),
                                     SparFConfig(bytes_frac=1.0 + 4 / (2 * D), r=4))
    finally:
        os.close(fd)
        f.close()
    ro, _ = _ref(q, k, v)
    assert (ex.double() - ro).abs().max() < 1e-5
    assert sp_bytes <= 0.25 * 2 * B * Hkv * L * D * 4
    cos = torch.nn.functional.cosine_similarity(sp.flatten(2).double(), ro.flatten(2), dim=-1)
    assert cos.min() > 0.9, cos
    assert (full.double() - ro).abs().max() < 1e-5  # every page kept, α = 1: SparF reduces to exact


@pytest.mark.parametrize("text,msg", [
    ("hbm=2GB", "give both"), ("hbm=2GB,dram=8GB,nvme=3GB", "unknown tier"), ("hbm=2GB,dram=lots", "cannot read"),
    ("hbm=0,dram=1GB", "positive"), ("hbm=1GB,hbm=2GB,dram=1GB", "twice"), ("hbm2GB,dram=1GB", "KEY=VALUE"),
])
def test_parse_kv_budget_errors(text, msg):
    with pytest.raises(ValueError, match=msg):
        parse_kv_budget(text)


def test_parse_kv_budget():
    s = parse_kv_budget("hbm=2GB, dram=8GiB,ssd=/tmp/x")
    assert (s.hbm_bytes, s.dram_bytes, s.ssd_path) == (2e9, 8 * 2**30, "/tmp/x")


def _tiny(seed=0):
    from ioaware.bench.kv_tiers import TINY, _random_model

    m = _random_model(dict(TINY, n_layers=2), "cpu", torch.float32)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return m


@pytest.mark.parametrize("modes", [{"dram": "near", "ssd": "near"}, {"dram": "move", "ssd": "move"}],
                         ids=["near", "move"])
def test_tiny_model_tiered_equals_in_memory(tmp_path, monkeypatch, modes):
    """Prefill in chunks and decode (through flash_decode's paged path) with budgets of 1 device page and 2 DRAM
    pages per layer: most tokens end in the SSD file; logits equal the all-in-memory model's."""
    monkeypatch.delenv("IOAWARE_INTERPRET", raising=False)  # flash_decode's reference; its kernel has own tests
    m = _tiny()
    ids = torch.randint(0, 300, (1, 70), generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        m.setup_cache(1, 80)
        ref = [m(ids[:, :40], 0), m(ids[:, 40:60], 40)] + [m(ids[:, i:i + 1], i) for i in range(60, 70)]
        page = 2 * 16 * 2 * 16 * 4 * 2  # K+V bytes of one 16-token page, all 2 layers
        tiers = install_kv_tiers(m, KVTierSpec(1 * page, 2 * page, str(tmp_path), seg_pages=1, modes=modes))
        try:
            m.setup_cache(1, 80)
            got = [m(ids[:, :40], 0), m(ids[:, 40:60], 40)] + [m(ids[:, i:i + 1], i) for i in range(60, 70)]
            per = tiers.tokens_per_tier()
            assert per["ssd"] >= 32 and per["dram"] == 32 and 1 <= per["hbm"] <= 16, per
            assert tiers.stats["ssd_bytes_written"] > 0 and tiers.stats["bytes"]["ssd"] > 0
        finally:
            tiers.close()
    for a, b in zip(ref, got, strict=True):
        assert ((a - b).abs().max() / a.abs().max()).item() < 1e-5


def test_budget_too_small_without_ssd_is_refused_before_work():
    m = _tiny()
    page = 2 * 16 * 2 * 16 * 4 * 2
    install_kv_tiers(m, KVTierSpec(1 * page, 1 * page))
    with pytest.raises(ValueError, match="add ssd=PATH"):
        m.setup_cache(1, 100)
    install_kv_tiers(m, KVTierSpec(page / 4, 10 * page))
    with pytest.raises(ValueError, match="under one"):
        m.setup_cache(1, 100)


def _rates(device="cuda", cpu=50e9, link=25e9):
    return TierRates(device, Line(1e-5, 3e12), Line(2e-5, cpu), Line(5e-5, cpu), Line(1e-4, 5e9), Line(1e-5, link),
                     Line(1e-5, 3e12))


def test_iomodel_chooses_near_or_move_by_rates():
    nb = {"hbm": 64e6, "dram": 64e6, "ssd": 64e6}
    fast_cpu = choose_modes(nb, _rates(cpu=80e9, link=20e9))
    slow_cpu = choose_modes(nb, _rates(cpu=5e9, link=50e9))
    assert fast_cpu["modes"]["dram"] == "near" and slow_cpu["modes"]["dram"] == "move"
    assert fast_cpu["modes"]["ssd"] == "near"  # the worker hides its read behind the rest; moving adds the link
    r = _rates()
    # the partial's fixed 1e-5 s (its launches) runs while the copy is in flight on CUDA (iomodel.kv_tiers.after)
    assert tier_seconds("dram", 64e6, "move", r) == pytest.approx(1e-5 + 64e6 / 25e9 + 64e6 / 3e12)
    assert tier_seconds("hbm", 0, "", r) == 0.0
    t = {"hbm": 1.0, "dram": 2.0, "ssd": 3.0}
    assert layer_seconds(t, {"dram": "near", "ssd": "near"}, "cuda") == 3.0
    assert layer_seconds(t, {"dram": "move", "ssd": "move"}, "cuda") == 6.0
    assert layer_seconds(t, {"dram": "near", "ssd": "move"}, "cpu") == 6.0
    assert Line.through(1e6, 2e-3, 3e6, 4e-3).call_s == pytest.approx(1e-3)
    assert crossover([(16, 2.0, 1.0), (64, 1.0, 2.0), (256, 1.0, 3.0)]) == 64
    assert crossover([(16, 2.0, 1.0)]) is None


@pytest.mark.slow  # end to end through the CLI
def test_generate_cli_kv_budget(tmp_path, capsys):
    """`ioaware generate --kv-budget`: the same greedy text as without it, pages in DRAM, the summary in --json;
    a bad spec is one line and exit code 2 at parse time."""
    import json

    from ioaware.cli.main import main

    from .helpers import byte_vocab, tiny_hf_model, write_gguf

    gguf = write_gguf(tmp_path / "t.gguf", tiny_hf_model(len(byte_vocab()[0]), seed=9), context=64)
    base = ["generate", "--model", str(gguf), "--prompt", "the cat sat on the mat and the", "--max-new-tokens", "10",
            "--quiet"]
    assert main([*base, "--json", str(tmp_path / "a.json")]) == 0
    assert main([*base, "--kv-budget", "hbm=8KiB,dram=1MB", "--json", str(tmp_path / "b.json")]) == 0
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in "ab")
    assert a["text"] == b["text"] and b["generated_tokens"] == a["generated_tokens"]
    kv = b["kv_tiers"]
    assert kv["tokens_per_tier_per_layer"]["dram"] > 0 and kv["tokens_per_tier_per_layer"]["hbm"] <= 16
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main([*base, "--kv-budget", "hbm=8KiB,dram=1XB"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "--kv-budget" in err[0]


def test_bench_variant_times_only_after_an_untimed_warmup(monkeypatch):
    """A variant's first decode step compiles its kernels; the bench must not average it into the timed steps."""
    from types import SimpleNamespace

    from ioaware.bench import kv_tiers as bench

    calls = []

    def fake_decode(model, tiers, start, steps, cold):
        calls.append((start, steps))
        return (100.0 if not calls[1:] else 0.25), None  # the first call (the compile) is slow

    monkeypatch.setattr(bench, "_decode", fake_decode)
    monkeypatch.setattr(bench, "_per_layer_bytes", lambda tiers: {"hbm": 1, "dram": 2, "ssd": 0})
    tiers = SimpleNamespace(spec=SimpleNamespace(modes={}, sparf_on=lambda tier: False), stats=None, timed=False,
                            n_layers=2)
    res, pos = bench._variant(None, tiers, 10, 4, {"dram": "move", "ssd": "move"}, False, timed_too=False)
    assert calls == [(10, bench.WARMUP_STEPS), (10 + bench.WARMUP_STEPS, 4)]
    assert res["step_s"] == 0.25 and pos == 10 + bench.WARMUP_STEPS + 4
