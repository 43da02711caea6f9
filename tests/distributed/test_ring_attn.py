"""ring_attn on 2 and 4 gloo processes: out, LSE, dq, dk, dv equal single-process attention on the whole sequence.

One spawn per world size runs every case (spawning costs seconds on 2 cores); the checks are per case. fp64 cases
are exact to rounding; fp32 cases follow the tolerance rule (error vs fp64 at most 2x plain PyTorch fp32's).
"""

from __future__ import annotations

import pytest
import torch

from ioaware.distributed.ring import block_calls, chunks_of, shard_sequence, unshard_sequence
from ioaware.errors import ShapeError, UnsupportedError
from ioaware.kernels import attention_ref

from .spawn import run_ranks

B, H, HKV, D, C = 2, 4, 2, 11, 3  # C: tokens per chunk (odd); zig-zag holds 2 chunks per rank
CASES = [(v, lay, causal) for v in ("ring", "allgather") for lay in ("zigzag", "contiguous")
         for causal in (True, False)]
CASE_IDS = [f"{v}-{lay}-{'causal' if c else 'full'}" for v, lay, c in CASES]


def _inputs(world: int, dtype, seed: int = 0):
    T = 2 * world * C
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, D, generator=g, dtype=torch.float64)
    k = torch.randn(B, T, HKV, D, generator=g, dtype=torch.float64)
    v = torch.randn(B, T, HKV, D, generator=g, dtype=torch.float64)
    do = torch.randn(B, T, H, D, generator=g, dtype=torch.float64)
    return [t.to(dtype) for t in (q, k, v, do)]


def _run_case(rank, world, q, k, v, do, variant, layout, causal, local):
    from ioaware.distributed import ring_attn

    ql, kl, vl = (shard_sequence(t, rank, world, layout).requires_grad_() for t in (q, k, v))
    o, lse = ring_attn(ql, kl, vl, causal=causal, return_lse=True, variant=variant, layout=layout, local=local)
    o.backward(shard_sequence(do, rank, world, layout))
    return o.detach(), lse, ql.grad, kl.grad, vl.grad


def _poison_fresh_allocations():
    """This rank's torch.empty / empty_like return NaN-filled tensors, so a buffer never written shows up."""
    real_empty, real_empty_like = torch.empty, torch.empty_like

    def fill(t):
        return t.fill_(float("nan")) if t.is_floating_point() else t

    torch.empty = lambda *a, **k: fill(real_empty(*a, **k))
    torch.empty_like = lambda *a, **k: fill(real_empty_like(*a, **k))


def _worker(rank, world, with_kernel):
    from ioaware.distributed import ring_attn

    _poison_fresh_allocations()  # a forked child: patched for its own lifetime only
    out = {}
    for dtype in (torch.float64, torch.float32):
        q, k, v, do = _inputs(world, dtype)
        for variant, layout, causal in CASES:
            out[(str(dtype), variant, layout, causal)] = _run_case(rank, world, q, k, v, do, variant, layout, causal,
                                                                   "reference")
    if with_kernel:  # ioaware.flash_attn's Triton kernels (interpreted on CPU) as the per-block kernel
        q, k, v, do = _inputs(world, torch.float32)
        for variant in ("ring", "allgather"):
            out[("kernel", variant)] = _run_case(rank, world, q, k, v, do, variant, "zigzag", True, "flash_attn")
    errors = {}
    x = torch.zeros(B, 2 * C + 1, H, D)
    for name, call in (("odd-length", lambda: ring_attn(x, x[:, :, :HKV], x[:, :, :HKV])),
                       ("bad-layout", lambda: ring_attn(x, x, x, layout="striped")),
                       ("gqa", lambda: ring_attn(x[:, :-1], x[:, :-1, :3], x[:, :-1, :3]))):
        try:
            call()
        except (ShapeError, ValueError) as e:
            errors[name] = f"{type(e).__name__}: {e}"
    out["errors"] = errors
    return out


def _reference(q, k, v, do, causal):
    q, k, v = (t.detach().double().clone().requires_grad_() for t in (q, k, v))
    o, lse = attention_ref(q, k, v, causal)
    o.backward(do.double())
    return o.detach(), lse, q.grad, k.grad, v.grad


def _plain_fp32_error(q, k, v, do, causal, ref):
    """Plain PyTorch fp32 (no upcast, autograd) against the fp64 reference: the error budget's baseline."""
    qf, kf, vf = (t.detach().float().clone().requires_grad_() for t in (q, k, v))
    o, _ = attention_ref(qf, kf, vf, causal, upcast=False)
    o.backward(do.float())
    return [(a.double() - b).abs().max().item() for a, b in zip((o, qf.grad, kf.grad, vf.grad),
                                                                 (ref[0], ref[2], ref[3], ref[4]), strict=True)]


@pytest.fixture(scope="module", params=[2, 4], ids=["N2", "N4"])
def ranks(request):
    world = request.param
    return world, run_ranks(_worker, world, world == 2)


def _gathered(results, key, layout):
    return [unshard_sequence([r[key][i] for r in results], layout, dim=2 if i == 1 else 1) for i in range(5)]


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_fp64_equals_single_process(ranks, case):
    world, results = ranks
    variant, layout, causal = case
    q, k, v, do = _inputs(world, torch.float64)
    ref = _reference(q, k, v, do, causal)
    got = _gathered(results, (str(torch.float64), variant, layout, causal), layout)
    for name, a, b in zip(("out", "lse", "dq", "dk", "dv"), got, ref, strict=True):
        assert not torch.isnan(a).any(), name
        torch.testing.assert_close(a.double(), b.double(), rtol=1e-10, atol=1e-10 if name != "lse" else 1e-6,
                                   msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_fp32_within_twice_plain_pytorch(ranks, case):
    world, results = ranks
    variant, layout, causal = case
    q, k, v, do = _inputs(world, torch.float32)
    ref = _reference(q, k, v, do, causal)
    base = _plain_fp32_error(q, k, v, do, causal, ref)
    got = _gathered(results, (str(torch.float32), variant, layout, causal), layout)
    for name, a, b, e0 in zip(("out", "dq", "dk", "dv"), (got[0], *got[2:]), (ref[0], *ref[2:]), base, strict=True):
        err = (a.double() - b).abs().max().item()
        assert err <= 2 * e0 + 1e-7, f"{name}: max error {err:.3g} vs plain fp32 PyTorch {e0:.3g}"


@pytest.mark.parametrize("variant", ["ring", "allgather"])
def test_flash_attn_as_local_kernel(ranks, variant):
    world, results = ranks
    if ("kernel", variant) not in results[0]:
        pytest.skip("the interpreted-kernel case runs at N = 2 only (time)")
    q, k, v, do = _inputs(world, torch.float32)
    ref = _reference(q, k, v, do, True)
    base = _plain_fp32_error(q, k, v, do, True, ref)
    got = _gathered(results, ("kernel", variant), "zigzag")
    for name, a, b, e0 in zip(("out", "dq", "dk", "dv"), (got[0], *got[2:]), (ref[0], *ref[2:]), base, strict=True):
        err = (a.double() - b).abs().max().item()
        assert err <= 2 * e0 + 1e-6, f"{name}: max error {err:.3g} vs plain fp32 PyTorch {e0:.3g}"


def test_bad_input_is_one_clear_error(ranks):
    _, results = ranks
    errs = results[0]["errors"]
    assert "multiple of 2" in errs["odd-length"]
    assert "layout must be one of" in errs["bad-layout"]
    assert "multiple of key/value heads" in errs["gqa"]


def test_uninitialised_group_says_so():
    from ioaware.distributed import ring_attn

    x = torch.zeros(1, 4, 2, 8)
    with pytest.raises(UnsupportedError, match="not initialised"):
        ring_attn(x, x, x)


@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("layout", ["zigzag", "contiguous"])
def test_shard_unshard_round_trip(world, layout):
    x = torch.randn(2, 2 * world * 5, 3)
    shards = [shard_sequence(x, r, world, layout) for r in range(world)]
    assert sum(s.shape[1] for s in shards) == x.shape[1]
    assert torch.equal(unshard_sequence(shards, layout), x)


@pytest.mark.parametrize("world", [2, 3, 4, 8])
def test_zigzag_steps_cost_half_a_block(world):
    """Causal zig-zag: the own block is one causal call over 2 chunks, every other step one call of 2 x 1 chunks
    (both query chunks vs the source's first chunk, or the second query chunk vs the source's two): equal work."""
    for r in range(world):
        mine = chunks_of(r, world, "zigzag")
        for step in range(1, world):
            src = (r - step) % world
            calls = block_calls(mine, chunks_of(src, world, "zigzag"), True)
            assert len(calls) == 1 and not calls[0][2]
            assert len(calls[0][0]) * len(calls[0][1]) == 2
        assert block_calls(mine, mine, True) == [([0, 1], [0, 1], True)]
