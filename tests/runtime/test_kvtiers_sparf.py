"""SparF's options (runtime/kvtiers/sparf.py): attention-sink and recent pages always read, the byte budget kept
for every split of it (fixed r, SparQ's |q|-share rule), exact when the budget covers the tier, the mean-value
correction against an fp64 re-derivation, the worker process, and one-line refusals of bad options."""

from __future__ import annotations

import math
import os

import pytest
import torch

from ioaware.errors import ShapeError, UnsupportedError
from ioaware.runtime.kvtiers import KVFile, SparFConfig
from ioaware.runtime.kvtiers.sparf import PAGE, sparf_from_file
from ioaware.runtime.kvtiers.worker import TierWorker

B, HKV, G, D = 2, 2, 3, 32
SIZES = (48, 208, 256)  # segments of 3, 13 and 16 pages
L = sum(SIZES)
META = {"batch": B, "n_kv_heads": HKV, "head_dim": D, "dtype": torch.float32}


@pytest.fixture
def tier(tmp_path):
    """A KV file whose sink page (tier tokens 0-15) takes most queries' attention through channels the queries
    weigh little (so the approximate scores miss it), plus a q."""
    g = torch.Generator().manual_seed(11)
    k, v = torch.randn(B, L, HKV, D, generator=g) * 0.3, torch.randn(B, L, HKV, D, generator=g)
    q = torch.randn(B, 1, HKV * G, D, generator=g)
    q[..., : D // 2] *= 4.0  # |q| is large on the first half of the channels: SparF picks channels from it
    k[:, :PAGE, :, D // 2:] += 3.0 * q[:, :, ::G, D // 2:].sign()  # the sink's score lives in the other half
    f = KVFile(tmp_path / "s.iokv", B, HKV, D, torch.float32)
    pos = 0
    for n in SIZES:
        f.append(0, k[:, pos:pos + n].contiguous(), v[:, pos:pos + n].contiguous())
        pos += n
    fd = os.open(f.path, os.O_RDONLY)
    yield fd, f, q, k, v
    os.close(fd)
    f.close()


def _run(tier, cfg, stats=None):
    fd, f, q, k, v = tier
    return sparf_from_file(fd, f.segments, META, q, D ** -0.5, v.double().mean(1).float(), cfg, stats=stats)


def _ref(q, k, v):
    """fp64 attention with its lse: q (B, 1, Hq, D), k/v (B, L, Hkv, D) -> out (B, 1, Hq, D), lse (B, Hq, 1)."""
    kk = k.double().repeat_interleave(G, 2).transpose(1, 2)
    vv = v.double().repeat_interleave(G, 2).transpose(1, 2)
    s = q.double().transpose(1, 2) @ kk.transpose(-1, -2) / math.sqrt(D)
    return (torch.softmax(s, -1) @ vv).transpose(1, 2), torch.logsumexp(s, -1)


@pytest.mark.parametrize("sinks,recent,top_k", [(1, 0, 0), (2, 1, 0), (1, 2, 60), (2, 1, 20), (0, 0, 0)])
def test_sink_and_recent_pages_always_read(tier, sinks, recent, top_k):
    st = {}
    _run(tier, SparFConfig(bytes_frac=0.25, r=4, sink_pages=sinks, recent_pages=recent, top_k=top_k), stats=st)
    n_pages = SparFConfig(bytes_frac=0.25, r=4).n_pages(L, D)
    assert sinks + recent < n_pages < L // PAGE  # the budget holds them and leaves a choice
    forced = set(range(sinks * PAGE)) | set(range(L - recent * PAGE, L))
    for tok in st["tokens"].values():
        kept = set(tok.tolist())
        if top_k and top_k < len(forced):  # top_k cannot keep them all: the sinks' tokens come first
            assert kept <= set(range(sinks * PAGE))
        else:
            assert forced <= kept
        assert len(kept) == (top_k or n_pages * PAGE)
    if not sinks:  # the planted sink is one the approximate scores miss: without sink pages it is not read
        assert any(0 not in set(t.tolist()) for t in st["tokens"].values())


def test_young_tier_reads_the_sinks_first(tier):
    """A budget of 2 pages with 1 sink and 3 recent pages asked: the sink page and the newest page, not a refusal."""
    st = {}
    frac = (4 * L + 2 * PAGE * D * 2.5) / (2 * L * D)  # r = 4 rows and 2.5 pages: 2 pages
    _run(tier, SparFConfig(bytes_frac=frac, r=4, sink_pages=1, recent_pages=3), stats=st)
    want = list(range(PAGE)) + list(range(L - PAGE, L))
    assert all(t.tolist() == want for t in st["tokens"].values())


@pytest.mark.parametrize("cfg", [
    SparFConfig(bytes_frac=0.125, r=2), SparFConfig(bytes_frac=0.25, r=8, correction="mean", sink_pages=2),
    SparFConfig(bytes_frac=0.25, r=16, r_share=0.3), SparFConfig(bytes_frac=0.2, r=1, recent_pages=3, top_k=7),
], ids=["r2", "r8-mean-sinks2", "share0.3", "r1-recent3-topk"])
def test_bytes_within_budget_and_as_counted(tier, cfg):
    fd, f, q, k, v = tier
    out, lse, nbytes = _run(tier, cfg)
    qa = q.float().view(B, HKV, G, D).abs().sum(2)
    want = 0
    for b in range(B):
        for h in range(HKV):
            r = len(cfg.head_channels(qa[b, h]))
            want += (r * L + 2 * PAGE * D * cfg.n_pages(L, D, r)) * 4
    assert nbytes == want  # what was read: channel rows of every token, then whole pages
    assert nbytes <= cfg.bytes_frac * 2 * B * HKV * L * D * 4
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()


def test_r_share_picks_the_fewest_channels_holding_the_share():
    g = torch.Generator().manual_seed(5)
    for _ in range(20):
        qa = torch.rand(D, generator=g) ** 4
        share = float(torch.rand(1, generator=g)) * 0.9 + 0.05
        ch = SparFConfig(r=D, r_share=share).head_channels(qa)
        vals = sorted(qa.tolist(), reverse=True)
        n = next(i + 1 for i in range(D) if sum(vals[: i + 1]) >= share * sum(vals))  # brute force
        assert len(ch) == n and ch == sorted(ch)
        assert sorted(qa[ch].tolist(), reverse=True) == vals[:n]
        assert len(SparFConfig(r=3, r_share=share).head_channels(qa)) == min(3, n)


@pytest.mark.parametrize("correction", ["none", "mean"])
def test_exact_when_the_budget_covers_everything(tier, correction):
    fd, f, q, k, v = tier
    cfg = SparFConfig(bytes_frac=1.0 + 4 / (2 * D), r=4, sink_pages=1, recent_pages=2, correction=correction)
    assert cfg.n_pages(L, D) == L // PAGE
    out, lse, _ = _run(tier, cfg)
    ro, rlse = _ref(q, k, v)
    assert (out.double() - ro).abs().max() < 1e-5 and (lse.double() - rlse).abs().max() < 1e-5


def test_mean_correction_with_sinks_matches_fp64(tier):
    """correction="mean": the sink pages exact, the rest α̂·out + (1 - α̂)·v̄(non-sink), merged by LSE."""
    fd, f, q, k, v = tier
    st = {}
    out, lse, _ = _run(tier, SparFConfig(bytes_frac=0.25, r=4, sink_pages=1, correction="mean"), stats=st)
    qg = q.double().view(B, HKV, G, D)
    for (b, h), tok in st["tokens"].items():
        s = qg[b, h] @ k[b, tok, h].double().T / math.sqrt(D)
        sink = tok < PAGE
        l1, l2 = torch.logsumexp(s[:, sink], -1), torch.logsumexp(s[:, ~sink], -1)
        a = st["alpha_hat"][b, h].double()
        assert ((a > 0) & (a < 1)).all()
        vbar = v[b, PAGE:, h].double().mean(0)
        o2 = a[:, None] * (torch.softmax(s[:, ~sink], -1) @ v[b, tok[~sink], h].double()) + (1 - a[:, None]) * vbar
        o1 = torch.softmax(s[:, sink], -1) @ v[b, tok[sink], h].double()
        l2 = l2 - a.log()
        lt = torch.logaddexp(l1, l2)
        ref = torch.exp(l1 - lt)[:, None] * o1 + torch.exp(l2 - lt)[:, None] * o2
        assert (out[b, 0, h * G:(h + 1) * G].double() - ref).abs().max() < 1e-5
        assert (lse[b, h * G:(h + 1) * G, 0].double() - lt).abs().max() < 1e-5


def test_worker_process_runs_sparf_with_the_options(tier):
    fd, f, q, k, v = tier
    cfg = SparFConfig(bytes_frac=0.25, r=8, r_share=0.4, sink_pages=2, recent_pages=1, correction="mean")
    here = _run(tier, cfg)
    w = TierWorker(f.path)
    try:
        w.submit(f.segments, META, q, D ** -0.5, cfg, v.double().mean(1).float())
        out, lse, nbytes, _ = w.result()
    finally:
        w.close()
    assert torch.equal(out, here[0]) and torch.equal(lse, here[1]) and nbytes == here[2]


@pytest.mark.parametrize("kw,err,msg", [
    (dict(correction="median"), UnsupportedError, "correction must be one of"),
    (dict(sink_pages=-1), ShapeError, "sink_pages"), (dict(r_share=1.5), ShapeError, "r_share"),
    (dict(bytes_frac=0.0), ShapeError, "bytes_frac"),
])
def test_bad_options_are_refused(kw, err, msg):
    with pytest.raises(err, match=msg):
        SparFConfig(**kw)


def test_budget_below_one_page_is_refused_before_reading(tier):
    with pytest.raises(UnsupportedError, match="cannot hold r=4 channel rows and one page"):
        _run(tier, SparFConfig(bytes_frac=0.05, r=4))
