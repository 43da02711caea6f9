"""The probe's Triton kernels: what Triton can say directly. Re-reading a buffer (L2 and HBM bandwidth, and the L2's
apparent capacity as the footprint grows), copying one (HBM copy against PyTorch's), and copying it through TMA
tensor descriptors (against plain loads). They run on CPU tensors under Triton's interpreter, which is how the
tests check them."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _reread_kernel(x_ptr, out_ptr, n_blocks, passes, BLOCK: tl.constexpr, CG: tl.constexpr):
    # Program p owns blocks [p n / P, (p + 1) n / P) and reads them `passes` times, keeping a running sum so the
    # loads are live; it writes one float (so a one-block-a-program grid moves no extra bytes). Every pass touches
    # the whole footprint once, so a line comes back after the full footprint has streamed by: it hits only if the
    # cache holds the footprint. CG: ld.global.cg (L2, not L1).
    i_p = tl.program_id(0)
    n_p = tl.num_programs(0)
    b0 = (i_p * n_blocks) // n_p
    b1 = ((i_p + 1) * n_blocks) // n_p
    o_x = tl.arange(0, BLOCK)
    b_acc = tl.zeros([BLOCK], dtype=tl.float32)
    for _ in range(passes):
        for b in range(b0, b1):
            p_x = x_ptr + b * BLOCK + o_x  # int32 offsets: the host keeps numel < 2^31
            if CG:
                b_acc += tl.load(p_x, cache_modifier=".cg")
            else:
                b_acc += tl.load(p_x)
    tl.store(out_ptr + i_p, tl.sum(b_acc, axis=0))


@triton.jit
def _copy_kernel(src_ptr, dst_ptr, n, BLOCK: tl.constexpr, EVEN: tl.constexpr, STREAM: tl.constexpr):
    # read n, write n. STREAM (whole blocks only): loads bypass L1 and are evicted first, stores are streaming
    # (.cs), so the copy does not keep what it will never read again in the caches
    i_p = tl.program_id(0)
    o_x = i_p.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    if EVEN:
        if STREAM:
            b_x = tl.load(src_ptr + o_x, cache_modifier=".cg", eviction_policy="evict_first")
            tl.store(dst_ptr + o_x, b_x, cache_modifier=".cs")
        else:
            tl.store(dst_ptr + o_x, tl.load(src_ptr + o_x))
    else:
        m_x = o_x < n
        tl.store(dst_ptr + o_x, tl.load(src_ptr + o_x, mask=m_x), mask=m_x)


@triton.jit
def _copy_persistent_kernel(src_ptr, dst_ptr, n_tiles, BLOCK: tl.constexpr, UNROLL: tl.constexpr):
    # A grid of a few programs per SM, each copying UNROLL tiles of BLOCK per step (all UNROLL loads issued before
    # the first store), tiles p, p + P, ... in steps of P UNROLL; n_tiles a multiple of UNROLL (the host checks)
    i_p = tl.program_id(0)
    n_p = tl.num_programs(0)
    o_t = tl.arange(0, UNROLL)
    o_x = tl.arange(0, BLOCK)
    for t in range(i_p * UNROLL, n_tiles, n_p * UNROLL):
        p_off = (t + o_t)[:, None] * BLOCK + o_x[None, :]  # (UNROLL, BLOCK); int32: numel < 2^31
        tl.store(dst_ptr + p_off, tl.load(src_ptr + p_off))


@triton.jit
def _copy_tma_kernel(src_desc, dst_desc, BM: tl.constexpr, BN: tl.constexpr):
    # one (BM, BN) tile in through the tensor memory accelerator and out again: read BM BN, write BM BN
    i_p = tl.program_id(0)
    b_x = src_desc.load([i_p * BM, 0])
    dst_desc.store([i_p * BM, 0], b_x)


def reread(x, passes: int, programs: int, block: int = 4096, cg: bool = True, num_warps: int = 8):
    """Launch the re-read over the flat float32 tensor x (numel a multiple of block); returns each program's sum."""
    import torch

    assert x.dtype == torch.float32 and x.numel() % block == 0 and x.numel() < 2**31, (x.dtype, x.numel(), block)
    n_blocks = x.numel() // block
    out = torch.empty(programs, device=x.device, dtype=torch.float32)
    _reread_kernel[(programs,)](x, out, n_blocks, passes, BLOCK=block, CG=cg, num_warps=num_warps)
    return out


def copy(src, dst, block: int = 8192, num_warps: int = 8, stream: bool = False) -> None:
    n = src.numel()
    _copy_kernel[(triton.cdiv(n, block),)](src, dst, n, BLOCK=block, EVEN=n % block == 0, STREAM=stream,
                                           num_warps=num_warps)


def copy_persistent(src, dst, programs: int, block: int = 2048, unroll: int = 4, num_warps: int = 8) -> None:
    n = src.numel()
    assert n % (block * unroll) == 0 and n < 2**31, (n, block, unroll)
    _copy_persistent_kernel[(programs,)](src, dst, n // block, BLOCK=block, UNROLL=unroll, num_warps=num_warps)


def copy_tma_prepare(src, dst, bm: int = 128, bn: int = 64):
    """Tensor descriptors over (rows, bn) views of two flat tensors; returns a closure that copies src into dst."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    assert src.numel() % (bm * bn) == 0, (src.numel(), bm, bn)
    rows = src.numel() // bn
    d_src = TensorDescriptor.from_tensor(src.view(rows, bn), [bm, bn])
    d_dst = TensorDescriptor.from_tensor(dst.view(rows, bn), [bm, bn])
    grid = (rows // bm,)

    def run():
        _copy_tma_kernel[grid](d_src, d_dst, BM=bm, BN=bn, num_warps=4)

    return run
