"""ioaware.spmm on a CUDA GPU at projection sizes (run on the device machine: `pytest -m gpu tests/gpu`)."""

import pytest
import torch

from ioaware.kernels import last_backend
from ioaware.kernels.spmm import matmul, pack, unpack

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def rel_rms(a, b) -> float:
    a, b = a.double(), b.double()
    return ((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt()).item()


@pytest.mark.parametrize("N,M,K,s,dtype,index", [
    pytest.param(1, 4096, 4096, 0.8, torch.float16, "bitmap", id="N1-4096x4096-s0.8-fp16"),
    pytest.param(16, 6144, 4096, 0.6, torch.bfloat16, "bitmap", id="N16-6144x4096-s0.6-bf16"),
    pytest.param(32, 4096, 14336, 0.7, torch.float16, "bitmap", id="N32-4096x14336-s0.7-fp16"),
    pytest.param(64, 7168, 7168, 0.9, torch.float16, "csl", id="N64-7168x7168-s0.9-fp16-csl"),
    pytest.param(7, 1000, 2000, 0.95, torch.bfloat16, "csl", id="N7-1000x2000-s0.95-bf16-csl"),
    pytest.param(100, 3000, 577, 0.5, torch.float16, "bitmap", id="N100-3000x577-s0.5-two-x-blocks"),
])
def test_spmm_gpu_matches_fp64(N, M, K, s, dtype, index):
    g = torch.Generator(device="cuda").manual_seed(0)
    w = torch.randn(M, K, device="cuda", generator=g)
    w = (w * (torch.rand(M, K, device="cuda", generator=g) >= s)).to(dtype)
    x = torch.randn(N, K, device="cuda", generator=g).to(dtype)
    p = pack(w, index)
    assert p.index == index and torch.equal(unpack(p), w)
    ref = x.double() @ w.double().T
    base = rel_rms(x @ w.T, ref)  # cuBLAS's own error in this dtype: the tolerance rule allows 2x of it
    for split in (None, 1, 3):
        y = matmul(x, p, split_k=split)
        assert last_backend("spmm") == "triton"
        assert rel_rms(y, ref) <= 2 * base + 1e-5, (split, rel_rms(y, ref), base)


def test_spmm_gpu_in_a_cuda_graph_reuses_its_counters():
    w = torch.randn(4096, 4096, device="cuda", dtype=torch.float16)
    w = w * (torch.rand_like(w, dtype=torch.float32) >= 0.8)
    p = pack(w)
    x = torch.randn(8, 4096, device="cuda", dtype=torch.float16)
    ref = matmul(x, p, split_k=4)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        matmul(x, p, split_k=4)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        y = matmul(x, p, split_k=4)
    for _ in range(3):  # the split-K arrival counters must be back at zero after every replay
        g.replay()
        torch.cuda.synchronize()
        assert torch.equal(y, ref)
