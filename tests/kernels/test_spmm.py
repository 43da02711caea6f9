"""ioaware.spmm (Flash-LLM): the tiled sparse format (exact round trip, bytes per non-zero, refusal of bad input)
and the Triton SpMM, run in Triton's interpreter (CI sets IOAWARE_INTERPRET=1), against an fp64 reference."""

from __future__ import annotations

import pytest
import torch

from ioaware.errors import DTypeError, ShapeError
from ioaware.iomodel import REGISTRY
from ioaware.kernels import last_backend
from ioaware.kernels.spmm import PackedWeight, matmul, pack, spmm_ref, unpack
from ioaware.kernels.spmm.cost import spmm_cost
from ioaware.kernels.spmm.format import GROUP_K, TILE_M, choose_index, packed_nbytes, validate


def rel_rms(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt().clamp_min(1e-30)).item()


def sparse(M: int, K: int, s: float, dtype=torch.float16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(M, K, generator=g)
    w[torch.rand(M, K, generator=g) < s] = 0
    return w.to(dtype)


# ---------------------------------------------------------------- the format

@pytest.mark.parametrize("M,K", [(1, 1), (65, 33), (130, 600), (64, 256), (200, 700)],
                         ids=lambda v: str(v))
@pytest.mark.parametrize("s", [0.0, 0.5, 0.8, 0.95, 1.0], ids=lambda s: f"s{s}")
@pytest.mark.parametrize("index", ["bitmap", "csl"])
def test_round_trip_is_exact(M, K, s, index):
    w = sparse(M, K, s)
    p = pack(w, index)
    validate(p)
    assert p.nnz == int((w != 0).sum())
    assert torch.equal(unpack(p), w)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
def test_round_trip_keeps_the_bits_of_every_dtype(dtype):
    w = sparse(97, 300, 0.7, dtype)
    w[3, 5] = -0.0  # a negative zero is a zero: dropped, and read back as +0.0, which == -0.0
    out = unpack(pack(w))
    bits = torch.int32 if dtype == torch.float32 else torch.int16
    assert out.dtype == dtype and torch.equal(out, w)
    assert torch.equal(out.view(bits)[w != 0], w.view(bits)[w != 0])  # the non-zeros bit for bit


def test_tensors_round_trip_through_a_dict():
    w = sparse(130, 600, 0.9)
    for index in ("bitmap", "csl"):
        p = pack(w, index)
        q = PackedWeight.from_tensors({k: v.clone() for k, v in p.tensors("a.").items()}, "a.")
        assert q.index == index and torch.equal(unpack(q), w)


@pytest.mark.parametrize("s", [0.5, 0.6, 0.7, 0.8, 0.9, 0.95], ids=lambda s: f"s{s}")
def test_bytes_per_nonzero_at_most_4_for_fp16(s):
    # a projection-sized weight (whole tiles): values 2 B + index + row offsets, everything the kernel reads
    M, K = 4 * TILE_M, 8 * GROUP_K
    p = pack(sparse(M, K, s))
    assert p.bytes_per_nnz <= 4.0, (p.index, p.bytes_per_nnz)
    assert p.nbytes == packed_nbytes(M, K, p.nnz, 2, p.index)
    d = p.density  # the closed forms of format.py's docstring (header bytes aside)
    expect = 2 + 1 / (8 * d) + 1 / (64 * d) if p.index == "bitmap" else 3 + 1 / (64 * d)
    assert p.bytes_per_nnz == pytest.approx(expect + 68 / p.nnz)  # + the header (64 B) and the offsets sentinel


def test_index_choice_keeps_the_bitmap_up_to_4_bytes_per_nonzero():
    M, K = 1024, 4096
    assert choose_index(M, K, int(0.2 * M * K)) == "bitmap"
    assert choose_index(M, K, int(0.13 * M * K)) == "bitmap"
    assert choose_index(M, K, int(0.12 * M * K)) == "bitmap"  # csl is smaller but its kernel slower (choose_index)
    assert choose_index(M, K, int(0.08 * M * K)) == "bitmap"  # 3.76 bytes per non-zero
    assert choose_index(M, K, int(0.06 * M * K)) == "csl"  # the bitmap would cost 4.34


def test_bad_input_is_refused_in_one_line():
    with pytest.raises(ShapeError, match="2-D"):
        pack(torch.zeros(10))
    with pytest.raises(ShapeError, match="empty"):
        pack(torch.zeros(0, 4))
    with pytest.raises(DTypeError):
        pack(torch.zeros(4, 4, dtype=torch.int32))
    with pytest.raises(ValueError, match="index"):
        pack(torch.ones(4, 4), index="coo")
    p = pack(sparse(64, 64, 0.5))
    t = p.tensors()
    t["header"] = t["header"].clone()
    t["header"][0] = 2
    with pytest.raises(ValueError, match="format version 2"):
        PackedWeight.from_tensors(t)
    t = p.tensors()
    t["masks"] = t["masks"].clone()
    t["masks"][0, 0, 0] ^= 1
    with pytest.raises(ValueError, match="disagree"):
        PackedWeight.from_tensors(t)
    with pytest.raises(TypeError):
        unpack(torch.zeros(2, 2))


# ---------------------------------------------------------------- the kernel (interpreter) against fp64

CASES = [  # N, M, K, sparsity, dtype, index, split_k
    pytest.param(1, 70, 100, 0.7, torch.float16, "bitmap", None, id="N1-M70-K100-s0.7-fp16"),
    pytest.param(3, 130, 600, 0.5, torch.float16, "bitmap", 3, id="N3-M130-K600-s0.5-fp16-split3"),
    pytest.param(17, 65, 33, 0.8, torch.bfloat16, "bitmap", 1, id="N17-M65-K33-s0.8-bf16"),
    pytest.param(5, 130, 600, 0.95, torch.float16, "csl", 2, id="N5-M130-K600-s0.95-fp16-csl-split2"),
    pytest.param(64, 64, 300, 0.9, torch.bfloat16, "csl", None, id="N64-M64-K300-s0.9-bf16-csl"),
    pytest.param(2, 1, 513, 0.6, torch.float32, "bitmap", 2, id="N2-M1-K513-s0.6-fp32-split2"),
    pytest.param(65, 70, 64, 0.8, torch.float16, "bitmap", None, id="N65-two-row-blocks-of-x"),
]


@pytest.mark.parametrize("N,M,K,s,dtype,index,split_k", CASES)
def test_kernel_matches_fp64_reference(poison, N, M, K, s, dtype, index, split_k):
    w = sparse(M, K, s, dtype)
    x = torch.randn(N, K, generator=torch.Generator().manual_seed(1)).to(dtype)
    p = pack(w, index)
    assert p.index == index
    y = matmul(x, p, split_k=split_k)
    assert last_backend("spmm") == "interpret"
    ref = x.double() @ w.double().T
    base = rel_rms(x @ w.T, ref)  # PyTorch's own error in this dtype (the tolerance rule: at most 2x, + a floor)
    assert y.shape == (N, M) and y.dtype == dtype
    assert rel_rms(y, ref) <= 2 * base + 1e-5, (rel_rms(y, ref), base)


@pytest.mark.parametrize("gs,index,split", [(1, "bitmap", 3), (2, "csl", 1), (4, "bitmap", 3), (4, "csl", 3)],
                         ids=lambda v: str(v))
def test_split_k_and_step_width_give_the_same_product(gs, index, split):
    from ioaware.kernels.spmm.kernel import spmm_lscd

    w = sparse(64, 600, 0.85)  # 3 column groups, the last one short
    x = torch.randn(4, 600).half()
    ref = x.double() @ w.double().T
    assert rel_rms(spmm_lscd(x, pack(w, index), split_k=split, gs=gs), ref) < 1e-3


def test_leading_dims_and_reference_path(monkeypatch):
    w = sparse(70, 100, 0.8)
    x = torch.randn(2, 3, 100).half()
    y = matmul(x, pack(w))
    assert y.shape == (2, 3, 70)
    monkeypatch.setenv("IOAWARE_INTERPRET", "0")
    y_ref = matmul(x, pack(w))
    assert last_backend("spmm") == "reference"
    assert torch.equal(y_ref, spmm_ref(x.reshape(6, 100), pack(w)).view(2, 3, 70))


def test_matmul_refuses_bad_input():
    p = pack(sparse(64, 100, 0.5))
    with pytest.raises(ShapeError, match="K = 100"):
        matmul(torch.randn(2, 99).half(), p)
    with pytest.raises(DTypeError, match="float32"):
        matmul(torch.randn(2, 100), p)
    with pytest.raises(TypeError):
        matmul(torch.randn(2, 100).half(), unpack(p))
    with pytest.raises(ValueError, match="split_k"):
        matmul(torch.randn(2, 100).half(), p, split_k=0)
    old = PackedWeight(p.shape, p.index, p.values, p.rowoff, masks=p.masks, version=0)
    with pytest.raises(ValueError, match="version 0"):
        matmul(torch.randn(2, 100).half(), old)


# ---------------------------------------------------------------- the cost model

def test_cost_is_the_format_bytes_plus_activations():
    assert REGISTRY["spmm"] is spmm_cost
    M, K, N, s = 4 * TILE_M, 8 * GROUP_K, 16, 0.8
    w = sparse(M, K, s)
    p = pack(w)
    c = spmm_cost(N, M, K, sparsity=1 - p.density)
    assert c.read("hbm") == pytest.approx(p.nbytes + N * K * 2)
    assert c.written("hbm") == N * M * 2
    assert c.flops == pytest.approx(2 * N * p.nnz)
    dense = REGISTRY["dense_linear"](N, M, K)
    assert dense.read("hbm") / c.read("hbm") > 2.4  # 80% sparse: about 2.6x fewer bytes than fp16 dense
    with pytest.raises(ValueError, match="sparsity"):
        spmm_cost(N, M, K, sparsity=1.0)
