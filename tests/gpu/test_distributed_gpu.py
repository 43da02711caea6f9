"""ring_attn and tensor parallelism on CUDA (on the device machine: `pytest -m gpu tests/gpu/test_distributed_gpu.py`).

One GPU: the ring's blocks computed in one process (N virtual ranks) with ioaware.flash_attn's Triton kernels as the
per-block kernel, merged by LSE, the backward with the merged statistics: out and grads vs fp32 attention, within
2x the error of one flash_attn call on the whole sequence. Two or more GPUs: the real thing over NCCL.
"""

import pytest
import torch

from ioaware.distributed.launch import run_ranks
from ioaware.distributed.ring import _bwd_block, _fwd_block, block_calls, chunks_of, shard_sequence, unshard_sequence
from ioaware.kernels import attention_ref, flash_attn

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _inputs(B, T, H, Hkv, D, dtype, device="cuda"):
    g = torch.Generator(device="cpu").manual_seed(0)
    return [(torch.randn(B, T, h, D, generator=g)).to(device, dtype) for h in (H, Hkv, Hkv, H)]


def _ref32(q, k, v, do, causal):
    q, k, v = (t.detach().float().clone().requires_grad_() for t in (q, k, v))
    o, _ = attention_ref(q, k, v, causal)
    o.backward(do.float())
    return o.detach(), q.grad, k.grad, v.grad


def _flash(q, k, v, do, causal):
    q, k, v = (t.clone().requires_grad_() for t in (q, k, v))
    o = flash_attn(q, k, v, causal=causal)
    o.backward(do)
    return o.detach(), q.grad, k.grad, v.grad


def _virtual_ring(q, k, v, do, N, causal):
    """Every virtual rank's forward over all sources, then the backward, as the ring computes them."""
    scale = q.shape[-1] ** -0.5
    sh = lambda t: [shard_sequence(t, r, N) for r in range(N)]  # noqa: E731
    qs, ks, vs, dos = sh(q), sh(k), sh(v), sh(do)
    c = qs[0].shape[1] // 2
    outs, lses = [], []
    for r in range(N):
        out = torch.zeros(qs[r].shape, dtype=torch.float32, device=q.device)
        lse = torch.full((q.shape[0], q.shape[2], qs[r].shape[1]), float("-inf"), device=q.device)
        for s in range(N):
            _fwd_block(qs[r], torch.stack([ks[s], vs[s]]), block_calls(chunks_of(r, N, "zigzag"),
                       chunks_of(s, N, "zigzag"), causal), c, out, lse, scale, True)
        outs.append(out.to(q.dtype))
        lses.append(lse)
    dqs = [torch.zeros(t.shape, dtype=torch.float32, device=q.device) for t in qs]
    dkv = [torch.zeros((2, *t.shape), dtype=torch.float32, device=q.device) for t in ks]
    for r in range(N):
        for s in range(N):
            _bwd_block(dos[r], qs[r], torch.stack([ks[s], vs[s]]), outs[r], lses[r],
                       block_calls(chunks_of(r, N, "zigzag"), chunks_of(s, N, "zigzag"), causal), c, dqs[r], dkv[s],
                       scale, True)
    return (unshard_sequence(outs), unshard_sequence(dqs), unshard_sequence([d[0] for d in dkv]),
            unshard_sequence([d[1] for d in dkv]))


@pytest.mark.parametrize("N", [2, 4])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_ring_blocks_with_flash_attn_kernel(N, causal):
    q, k, v, do = _inputs(1, 4096, 8, 2, 128, torch.bfloat16)
    ref = _ref32(q, k, v, do, causal)
    one = _flash(q, k, v, do, causal)
    got = _virtual_ring(q, k, v, do, N, causal)
    for name, a, b, r in zip(("out", "dq", "dk", "dv"), got, one, ref, strict=True):
        e_ring = (a.float() - r).abs().max().item()
        e_one = (b.float() - r).abs().max().item()
        assert e_ring <= 2 * e_one + 1e-3, f"{name}: ring {e_ring:.3g} vs one flash_attn {e_one:.3g}"


def _nccl_ring(rank, world, variant):
    from ioaware.distributed import ring_attn

    torch.cuda.set_device(rank)
    q, k, v, do = _inputs(1, 16384, 8, 2, 128, torch.bfloat16, f"cuda:{rank}")
    ql, kl, vl = (shard_sequence(t, rank, world).requires_grad_() for t in (q, k, v))
    o = ring_attn(ql, kl, vl, causal=True, variant=variant)
    o.backward(shard_sequence(do, rank, world))
    ref = _ref32(q, k, v, do, True)
    one = _flash(q, k, v, do, True)
    errs = {}
    for name, a, b, r in zip(("out", "dq", "dk", "dv"), (o, ql.grad, kl.grad, vl.grad), one, ref, strict=True):
        r_l, b_l = shard_sequence(r, rank, world), shard_sequence(b, rank, world)
        errs[name] = ((a.float() - r_l).abs().max().item(), (b_l.float() - r_l).abs().max().item())
    return errs


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
@pytest.mark.parametrize("variant", ["ring", "allgather"])
def test_ring_attn_over_nccl(variant):
    world = 4 if torch.cuda.device_count() >= 4 else 2
    for errs in run_ranks(_nccl_ring, world, variant, backend="nccl"):
        for name, (e_ring, e_one) in errs.items():
            assert e_ring <= 2 * e_one + 1e-3, f"{name}: ring {e_ring:.3g} vs one flash_attn {e_one:.3g}"


def _nccl_tp(rank, world):
    from ioaware.distributed import shard_transformer
    from ioaware.runtime import ModelArgs, Transformer

    torch.cuda.set_device(rank)
    a = ModelArgs(dim=256, n_layers=2, n_heads=8, n_kv_heads=4, hidden_dim=512, vocab_size=1000, head_dim=32,
                  max_seq_len=256)
    torch.manual_seed(0)
    full = Transformer(a).cuda().float().eval().requires_grad_(False)
    m = Transformer(a).cuda().float().eval().requires_grad_(False)
    m.load_state_dict(full.state_dict())
    shard_transformer(m, tiles=4)
    toks = torch.arange(50, device="cuda")[None] * 7 % 1000
    out = []
    for model in (full, m):
        model.setup_cache(1, 64)
        out.append(model(toks, 0).cpu())
    return out


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_tensor_parallel_over_nccl():
    for full, tp in run_ranks(_nccl_tp, 2, backend="nccl"):
        torch.testing.assert_close(tp, full, rtol=1e-4, atol=1e-4)
