"""transformers' continuous batching (`model.generate_batch`, its paged KV cache) with ioaware's attention.

`register_transformers()` also registers `PAGED_NAME` ("ioaware_flash_attention_2"), the form continuous batching
accepts. Two paths: the varlen step (the paged cache hands over each request's gathered keys, packed, with
cu_seq_lens_q/k -> flash_attn_varlen) and the decode fast path (block_table and the layer's pages -> flash_attn_with_
kvcache appending in place), which transformers turns on only on CUDA; on the CPU the tests keep it on by skipping
transformers' device check. The reference is transformers' own paged eager attention in float64 ('paged|eager'); the
baseline is its SDPA in float32 (varlen path: SDPA has no block-table path). Greedy tokens must equal the
reference's and the log-probabilities of the chosen tokens stay within 2x SDPA's error (the error rule). SmolLM2-135M
through continuous batching is in test_transformers_smollm2.py.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("transformers")

# ioaware first: under IOAWARE_INTERPRET it turns Triton's interpreter on, which must happen before transformers'
# modeling imports pull in triton
import ioaware.kernels.attention.compat.hf as hf  # noqa: E402, I001
from ioaware.errors import UnsupportedError  # noqa: E402
from ioaware.kernels import _dispatch, last_backend  # noqa: E402
from transformers import AttentionInterface, ContinuousBatchingConfig, GenerationConfig  # noqa: E402

from .helpers import tiny_hf_model  # noqa: E402

hf.register_transformers()
PAGED = hf.PAGED_NAME


def spy_paths(monkeypatch) -> list[str]:
    """Which of our paths each call took (layer 0 only); last_backend forgets earlier tests' kernels."""
    paths: list[str] = []
    for op in ("flash_attn", "flash_decode"):
        monkeypatch.delitem(_dispatch._LAST, op, raising=False)

    def spy(module, q, k, v, mask, **kw):
        if getattr(module, "layer_idx", 0) == 0:
            paths.append("paged" if kw.get("block_table") is not None else
                         "varlen" if kw.get("cu_seq_lens_q") is not None else "dense")
        return hf.attention_forward(module, q, k, v, mask, **kw)

    monkeypatch.setitem(AttentionInterface._global_mapping, PAGED, spy)
    return paths


@pytest.fixture
def seen(monkeypatch):
    return spy_paths(monkeypatch)


def _run(model, impl, dtype, prompts, new_tokens, **cb):
    m = copy.deepcopy(model).to(dtype)
    m.set_attn_implementation(impl)
    gc = GenerationConfig(max_new_tokens=new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0)
    cfg = ContinuousBatchingConfig(return_logprobs=True, num_blocks=64, page_size=16, max_batch_tokens=64,
                                   use_cuda_graph=False, **cb)
    out = m.generate_batch(prompts, generation_config=gc, continuous_batching_config=cfg, warmup=False)
    assert all(o.error is None for o in out.values()), [o.error for o in out.values()]
    rows = [out[k] for k in sorted(out, key=lambda r: int(r.rsplit("_", 1)[1]))]
    return [r.generated_tokens for r in rows], torch.tensor([r.logprobs for r in rows], dtype=torch.float64)


def _check_against_reference(model, prompts, new_tokens, ours_cb=None):
    ref_tok, ref_lp = _run(model, "paged|eager", torch.float64, prompts, new_tokens, max_blocks_per_request=0)
    pt_tok, pt_lp = _run(model, "sdpa", torch.float32, prompts, new_tokens, max_blocks_per_request=0)
    tok, lp = _run(model, PAGED, torch.float32, prompts, new_tokens, **(ours_cb or {}))
    assert tok == ref_tok == pt_tok
    assert len(tok[0]) == new_tokens
    err, pt_err = (lp - ref_lp).abs().max().item(), (pt_lp - ref_lp).abs().max().item()
    assert err <= 2 * pt_err + 1e-6, (err, pt_err)
    return tok


@pytest.fixture(scope="module")
def tiny():
    return tiny_hf_model(vocab_size=300, seed=3)


def _prompts(lengths, vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (n,), generator=g).tolist() for n in lengths]


def test_continuous_batching_varlen_path(tiny, seen):
    """Prefill of three prompts of different lengths in one packed step, then decode steps against the cache."""
    _check_against_reference(tiny, _prompts((7, 3, 12), 300), 4, dict(max_blocks_per_request=0))
    assert seen and set(seen) == {"varlen"}
    assert last_backend("flash_attn") == "interpret"


def test_continuous_batching_decode_fast_path(tiny, seen, monkeypatch):
    """The block-table decode step (transformers enables it on CUDA only; kept on here)."""
    import transformers.generation.continuous_batching.initialization as init

    monkeypatch.setattr(init, "ensure_decode_fast_path_is_available", lambda config, cb_config, user: None)
    _check_against_reference(tiny, _prompts((5, 9, 2), 300, seed=1), 4, dict(max_blocks_per_request=4))
    assert seen[0] == "varlen" and set(seen[1:]) == {"paged"}, seen
    assert last_backend("flash_decode") == "interpret"


def _paged_call(lens, page=4, n_pages=10, trash=1, Hq=4, Hk=2, D=8, seed=0):
    """A synthetic decode step shaped as transformers passes it: one token per request, the pages, a block table
    whose padded rows are -1, cu_seq_lens_k counting the new token (0 for padded rows)."""
    g = torch.Generator().manual_seed(seed)
    n = len(lens)
    k_cache, v_cache = (torch.randn(n_pages, page, Hk, D, generator=g) for _ in range(2))
    bt = torch.full((n, 3), -1, dtype=torch.int32)
    free = iter(p for p in range(n_pages) if p != trash)
    for b, L in enumerate(lens):
        for j in range(-(-(L + 1) // page) if L >= 0 else 0):
            bt[b, j] = next(free)
    cu_k = torch.tensor([0] + [max(L + 1, 0) for L in lens], dtype=torch.int32).cumsum(0).to(torch.int32)
    q, k, v = (torch.randn(1, h, n, D, generator=g) for h in (Hq, Hk, Hk))
    cache = SimpleNamespace(layer_to_allocator={0: SimpleNamespace(write_trash_index=trash * page,
                                                                   tokens_per_page=page)})
    kw = dict(block_table=bt, k_cache=k_cache, v_cache=v_cache, cu_seq_lens_k=cu_k, cu_seq_lens_q=torch.arange(
        n + 1, dtype=torch.int32), max_length_q=1, max_length_k=1, cache=cache, is_causal=True)
    return SimpleNamespace(layer_idx=0), q, k, v, kw


def test_paged_call_with_padded_rows_writes_only_live_and_trash_pages():
    """CUDA-graph padding gives rows of length 0 and block-table rows of -1: they must write to the trash page only
    (never page -1), and the live rows must equal attention over their gathered keys (fp64)."""
    lens = [5, 0, -1, 3]  # tokens in the cache before this step; -1: a padded row
    module, q, k, v, kw = _paged_call(lens)
    before = kw["k_cache"].clone(), kw["v_cache"].clone()
    out, _ = hf.attention_forward(module, q, k, v, None, scaling=0.3, **kw)
    assert out.shape == (1, len(lens), 4, 8)
    page, bt = kw["k_cache"].shape[1], kw["block_table"]
    for b, L in enumerate(lens):
        if L < 0:
            continue
        pages = bt[b, : -(-(L + 1) // page)].long()
        kk = kw["k_cache"][pages].reshape(-1, 2, 8)[: L + 1].double()
        vv = kw["v_cache"][pages].reshape(-1, 2, 8)[: L + 1].double()
        assert torch.equal(kk[L], k[0, :, b]) and torch.equal(vv[L], v[0, :, b])  # appended in place
        s = torch.einsum("hd,thd->ht", q[0, :, b].double(), kk.repeat_interleave(2, 1)) * 0.3
        ref = torch.einsum("ht,thd->hd", s.softmax(-1), vv.repeat_interleave(2, 1))
        assert (out[0, b].double() - ref).abs().max().item() < 1e-5
    # what changed: the appended slots of live rows and the trash page's first slot, nothing else
    changed = (kw["k_cache"] != before[0]).any(-1).any(-1)
    expect = torch.zeros_like(changed)
    for b, L in enumerate(lens):
        if L >= 0:
            expect[bt[b, L // page], L % page] = True
    expect[1, 0] = True  # the trash page (page 1) takes the padded row's token
    assert torch.equal(changed, expect)


def test_unsupported_inputs_raise_one_line_errors():
    module, q, k, v, kw = _paged_call([2, 1])
    with pytest.raises(UnsupportedError, match="mask"):
        hf.attention_forward(module, q, k, v, torch.ones(1, 3, dtype=torch.bool), **kw)
    with pytest.raises(UnsupportedError, match="dropout"):
        hf.attention_forward(module, q, k, v, None, dropout=0.1, **kw)
    packed = {n: kw[n] for n in ("cu_seq_lens_q", "max_length_q", "max_length_k")}
    with pytest.raises(UnsupportedError, match="cu_seq_lens_k must be one tensor"):
        hf.attention_forward(module, q, k, v, None, cu_seq_lens_k={"full_attention": kw["cu_seq_lens_k"]}, **packed)
    with pytest.raises(ValueError, match="flash"):
        hf.register_transformers(paged_name="ioaware_paged")


def test_packed_sequences_equal_each_sequence_alone():
    """Padding-free packing (cu_seq_lens_q/k, causal) is block-diagonal: each sequence as if run alone."""
    g = torch.Generator().manual_seed(2)
    lens = [3, 6, 1]
    q, k, v = (torch.randn(1, h, sum(lens), 8, generator=g) for h in (4, 2, 2))
    cu = torch.tensor([0, 3, 9, 10], dtype=torch.int32)
    module = torch.nn.Module()
    out, _ = hf.attention_forward(module, q, k, v, None, cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=6,
                                  max_length_k=6)
    for b in range(3):
        s = slice(int(cu[b]), int(cu[b + 1]))
        alone, _ = hf.attention_forward(module, q[:, :, s], k[:, :, s], v[:, :, s], None)
        assert (out[:, s] - alone).abs().max().item() < 1e-5
