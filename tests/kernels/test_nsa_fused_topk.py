"""nsa_topk (NSA's block scores with a running top-n, no score tensor) against today's selection path, exactly.

Today's path is compressed.nsa_select_scores (the (B, Hkv, T, Ns) scores) + reference.top_blocks (torch.topk). The
fused kernel computes the same scores with the same tiles and ops, so its indices must equal, bit for bit, the top
n of those scores under its documented tie rule (equal scores: lower block index first) - `top_blocks_stable`
below. torch.topk's own choice among equal scores is unspecified (on CPU it does not take the lower index), so
against `top_blocks` the test asks for identical indices in every row whose n-th and (n+1)-th best scores differ,
and for identical chosen scores in the rows where they tie. The tie cases use integer-valued q and compressed keys
(few distinct keys, exactly equal probabilities) and check that boundary ties really occurred. Runs under Triton's
interpreter on CPU; the gpu-marked test repeats the check compiled, at realistic shapes.
"""

import pytest
import torch

from ioaware.kernels._dispatch import load_kernel_module
from ioaware.kernels.attention.sparse.reference import cmp_visible, compress_kv, num_compressed, top_blocks

CMP = "ioaware.kernels.attention.sparse.compressed"
TOPK = "ioaware.kernels.attention.sparse.topk"


def top_blocks_stable(scores: torch.Tensor, n: int) -> torch.Tensor:
    """reference.top_blocks with a stable sort instead of torch.topk: among equal scores the lower index wins."""
    vals, idx = scores.sort(dim=-1, descending=True, stable=True)
    vals, idx = vals[..., :n], idx[..., :n]
    big = scores.shape[-1]
    idx = torch.where(vals == float("-inf"), big, idx).sort(-1).values
    return torch.where(idx == big, -1, idx).permute(0, 2, 1, 3).to(torch.int32).contiguous()


def boundary_ties(scores: torch.Tensor, n: int) -> torch.Tensor:
    """(B, T, Hkv) bool: rows whose n-th and (n+1)-th best scores are equal and finite (the choice is a tie)."""
    if scores.shape[-1] <= n:
        return torch.zeros(scores.shape[0], scores.shape[2], scores.shape[1], dtype=torch.bool)
    v = scores.sort(-1, descending=True).values
    tie = (v[..., n - 1] == v[..., n]) & (v[..., n] > float("-inf"))
    return tie.permute(0, 2, 1)


def chosen_scores(scores: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """The scores of the chosen blocks, sorted, per (B, T, Hkv) row (-inf for unused slots)."""
    s = scores.permute(0, 2, 1, 3)
    g = s.gather(-1, idx.long().clamp_min(0))
    return torch.where(idx >= 0, g, float("-inf")).sort(-1).values


def _inputs(B, T, Hq, Hkv, D, nc, dtype, ties, seed):
    g = torch.Generator().manual_seed(seed)
    if ties:  # integer-valued, keys from {0, 1}^D: few distinct keys, so many exactly equal block scores
        q = torch.randint(-1, 2, (B, T, Hq, D), generator=g).float()
        q[:, ::3] = 0  # every third query: uniform probabilities, all full blocks tie
        kc = torch.randint(0, 2, (B, nc, Hkv, D), generator=g).float()
    else:
        q = torch.randn(B, T, Hq, D, generator=g)
        kc = torch.randn(B, nc, Hkv, D, generator=g)
    return q.to(dtype), kc.to(dtype)


def _lse(q, kc, block_size, stride, causal, scale):
    """The compressed branch's LSE (B, Hq, T) fp32: any LSE serves, both paths read the same one."""
    T, nc, G = q.shape[1], kc.shape[1], q.shape[2] // kc.shape[2]
    s = torch.einsum("bqhd,bkhd->bhqk", q.float(), kc.float().repeat_interleave(G, dim=2)) * scale
    s = s.masked_fill(~cmp_visible(T, nc, block_size, stride, causal), float("-inf"))
    return torch.logsumexp(s, dim=-1).contiguous()


@pytest.fixture
def poison_int(monkeypatch):
    """torch.empty hands back int tensors full of -7 (no index is below -1), so an unwritten slot fails."""
    real_empty = torch.empty

    def _empty(*a, **k):
        t = real_empty(*a, **k)
        return t.fill_(-7) if not t.is_floating_point() else t.fill_(float("nan"))

    monkeypatch.setattr(torch, "empty", _empty)
    yield


def _check(q, kc, lse, *, n, ties, network="bitonic", **kw):
    cmp, tk = load_kernel_module(CMP), load_kernel_module(TOPK)
    scores = cmp.nsa_select_scores(q, kc, lse, **kw)
    got = tk.nsa_topk(q, kc, lse, select_blocks=n, network=network, **kw)
    assert got.dtype == torch.int32 and got.shape == (q.shape[0], q.shape[1], kc.shape[2], n)
    assert torch.equal(got, top_blocks_stable(scores, n)), "not the top n of today's scores (lower index on ties)"
    old = top_blocks(scores, n)
    tie = boundary_ties(scores, n)
    assert torch.equal(got[~tie], old[~tie]), "differs from torch.topk's selection in a row without a tie"
    assert torch.equal(chosen_scores(scores, got)[tie], chosen_scores(scores, old)[tie])
    if ties:
        assert tie.any(), "the tie case produced no tie at the n-th block: the case tests nothing about ties"
    return got, tie


# B, T, Hq, Hkv, D, n, causal, sizes (block_size, stride, select_size), init/local, dtype, ties
SIZES16 = dict(block_size=16, stride=8, select_size=16)
CASES = [
    pytest.param(1, 97, 1, 1, 16, 4, True, SIZES16, (1, 2), torch.float32, False, id="T97-G1-n4-causal"),
    pytest.param(2, 97, 4, 2, 8, 5, False, SIZES16, (1, 2), torch.float32, True, id="B2-T97-G2-n5-noncausal-ties"),
    pytest.param(1, 97, 2, 1, 8, 4, True, dict(block_size=128, stride=16, select_size=16), (1, 2), torch.float32,
                 False, id="T97-G2-n4-no-compressed-key"),
    pytest.param(1, 257, 4, 1, 16, 6, True, dict(block_size=32, stride=16, select_size=32), (2, 3), torch.float32,
                 True, id="T257-G4-n6-l32-sel32-init2-local3-causal-ties"),
    pytest.param(1, 257, 16, 1, 8, 16, True, SIZES16, (1, 2), torch.float32, False, id="T257-G16-n16-causal"),
    pytest.param(1, 257, 4, 2, 16, 7, True, dict(block_size=16, stride=8, select_size=32), (1, 2), torch.bfloat16,
                 False, id="T257-G2-n7-sel32-causal-bf16"),
    pytest.param(1, 257, 16, 1, 8, 12, False, SIZES16, (0, 1), torch.float32, True,
                 id="T257-G16-n12-init0-local1-noncausal-ties"),
    pytest.param(1, 1031, 2, 2, 8, 16, True, dict(block_size=64, stride=16, select_size=64), (1, 2), torch.float32,
                 True, id="T1031-G1-n16-l64-d16-sel64-causal-ties"),
    pytest.param(1, 1031, 2, 1, 16, 12, False, dict(block_size=32, stride=32, select_size=64), (0, 1), torch.float32,
                 False, id="T1031-G2-n12-l32-d32-sel64-noncausal"),
    pytest.param(1, 1031, 4, 1, 8, 16, True, SIZES16, (1, 2), torch.float32, True, id="T1031-G4-n16-causal-ties"),
    pytest.param(1, 1031, 1, 1, 8, 20, True, SIZES16, (1, 2), torch.float32, True, id="T1031-G1-n20-widened-ties"),
    pytest.param(1, 1031, 1, 1, 8, 40, True, SIZES16, (1, 2), torch.float32, False, id="T1031-G1-n40-widened-twice"),
]


def _run_case(B, T, Hq, Hkv, D, n, causal, sizes, keep, dtype, ties, network="bitonic"):
    nc = num_compressed(T, sizes["block_size"], sizes["stride"])
    q, kc = _inputs(B, T, Hq, Hkv, D, nc, dtype, ties, seed=T * 7 + n)
    scale = 0.5 if ties else D ** -0.5  # a power of two keeps the integer-valued scores exact
    lse = _lse(q, kc, sizes["block_size"], sizes["stride"], causal, scale)
    _check(q, kc, lse, n=n, ties=ties, network=network, init_blocks=keep[0], local_blocks=keep[1], causal=causal,
           scale=scale, **sizes)


@pytest.mark.parametrize("B,T,Hq,Hkv,D,n,causal,sizes,keep,dtype,ties", CASES)
def test_fused_topk_equals_todays_selection(B, T, Hq, Hkv, D, n, causal, sizes, keep, dtype, ties, poison_int):
    _run_case(B, T, Hq, Hkv, D, n, causal, sizes, keep, dtype, ties)


def test_fused_topk_tl_sort_network(poison_int):
    """The device comparison's other network (Triton's tl.sort, full sorts): the same indices, ties included."""
    _run_case(1, 97, 2, 1, 8, 5, True, SIZES16, (1, 2), torch.float32, True, network="tl.sort")


def test_fused_topk_in_the_pipeline_equals_nsa_select():
    """k_cmp from compress_kv and the LSE from the compressed forward kernel, as nsa() makes them: the fused indices
    equal what ioaware's public nsa_select returns today (random fp32 inputs: no ties, checked)."""
    from ioaware.kernels.attention.sparse import nsa_select

    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 131, h, 16, generator=g) for h in (4, 2, 2))
    kw = dict(block_size=16, stride=8, select_size=16)
    kc = compress_kv(k, v, kw["block_size"], kw["stride"])[0].contiguous()
    _, lse = load_kernel_module(CMP).nsa_cmp_fwd(q, kc, kc, kw["block_size"], kw["stride"], True, 0.25)
    got, tie = _check(q, kc, lse, n=5, ties=False, init_blocks=1, local_blocks=2, causal=True, scale=0.25, **kw)
    assert not tie.any()
    assert torch.equal(got, nsa_select(q, k, v, select_blocks=5, softmax_scale=0.25, **kw))


@pytest.mark.parametrize("change,err,match", [
    pytest.param({"select_blocks": 8}, ValueError, "7 blocks", id="more-blocks-than-exist"),
    pytest.param({"select_blocks": 2}, ValueError, "init_blocks", id="fewer-than-kept"),
    pytest.param({"lse_cmp": torch.zeros(1, 2, 97, dtype=torch.float64)}, ValueError, "float32", id="lse-dtype"),
    pytest.param({"lse_cmp": torch.zeros(1, 2, 96)}, ValueError, r"\(1, 2, 97\)", id="lse-shape"),
    pytest.param({"k_cmp": torch.zeros(1, 10, 3, 8)}, ValueError, "does not fit", id="k-heads-not-dividing"),
    pytest.param({"k_cmp": torch.zeros(1, 10, 1, 8, dtype=torch.float64)}, TypeError, "float64", id="k-dtype"),
    pytest.param({"network": "radix"}, ValueError, "network", id="unknown-network"),
])
def test_fused_topk_bad_input(change, err, match):
    tk = load_kernel_module(TOPK)
    args = dict(q=torch.zeros(1, 97, 2, 8), k_cmp=torch.zeros(1, 10, 1, 8), lse_cmp=torch.zeros(1, 2, 97),
                block_size=16, stride=8, select_size=16, select_blocks=4, init_blocks=1, local_blocks=2,
                causal=True, scale=1.0)
    args.update(change)
    with pytest.raises(err, match=match):
        tk.nsa_topk(**args)


GPU_CASES = [  # the settings: block 64, stride 16, 16 blocks of 64; bf16, D 128
    pytest.param(8193, 4, 4, True, id="T8193-G1-causal"),
    pytest.param(8193, 16, 4, True, id="T8193-G4-causal"),
    pytest.param(4099, 32, 2, True, id="T4099-G16-causal"),
    pytest.param(4099, 8, 4, False, id="T4099-G2-noncausal"),
]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("T,Hq,Hkv,causal", GPU_CASES)
def test_fused_topk_equals_todays_selection_gpu(T, Hq, Hkv, causal):
    cmp = load_kernel_module(CMP)
    g = torch.Generator(device="cuda").manual_seed(T + Hq)
    q = torch.randn(1, T, Hq, 128, device="cuda", dtype=torch.bfloat16, generator=g)
    k = torch.randn(1, T, Hkv, 128, device="cuda", dtype=torch.bfloat16, generator=g)
    kw = dict(block_size=64, stride=16, select_size=64)
    kc = compress_kv(k, k, kw["block_size"], kw["stride"])[0].contiguous()
    _, lse = cmp.nsa_cmp_fwd(q, kc, kc, kw["block_size"], kw["stride"], causal, 128 ** -0.5)
    _check(q, kc, lse, n=16, ties=False, init_blocks=1, local_blocks=2, causal=causal, scale=128 ** -0.5, **kw)
