"""A gather of 2-D blocks from one tensor into another, in Triton: dst[dst_off[i] + r*dst_rs + c] =
src[src_off[i] + r*src_rs + c] for r < n_rows, c < row_len, every block i.

Its point is the source: on Linux, torch's pinned host memory is mapped into the GPU's address space (UVA), so a
kernel can read it directly ("zero-copy"). The DRAM tier's SparF reads only the chosen pages (and channel rows)
across PCIe this way, one program per block, with no host-side gather, no staging buffer and no host sync.
Imported through `ioaware.kernels._dispatch.load_kernel_module` (the interpreter switch); see dram_sparf.py.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _uva_gather_fwd_kernel(src, dst, src_off, dst_off, n_rows, row_len, src_rs, dst_rs,
                           BR: tl.constexpr, BC: tl.constexpr, ALIGN: tl.constexpr):
    i = tl.program_id(0)
    r = tl.program_id(1) * BR + tl.arange(0, BR)
    c = tl.program_id(2) * BC + tl.arange(0, BC)
    # int64 element offsets (a pool of GiBs overflows int32); ALIGN divides them all, so the loads are vectorised
    # (16-byte requests across PCIe rather than one per element)
    so = tl.multiple_of(tl.load(src_off + i), ALIGN)
    do = tl.multiple_of(tl.load(dst_off + i), ALIGN)
    m = (r[:, None] < n_rows) & (c[None, :] < row_len)
    r64 = r[:, None].to(tl.int64)
    x = tl.load(src + so + r64 * src_rs + c[None, :], mask=m)
    tl.store(dst + do + r64 * dst_rs + c[None, :], x, mask=m)


class HostPointer:
    """A pinned host tensor seen by Triton's launcher as a bare pointer (data_ptr + dtype), for launchers that
    refuse a CPU tensor object but accept its address (the CUDA driver maps pinned memory under UVA)."""

    def __init__(self, t: torch.Tensor):
        self.t, self.dtype = t, t.dtype

    def data_ptr(self) -> int:
        return self.t.data_ptr()


def uva_gather_fwd(src, dst: torch.Tensor, src_off: torch.Tensor, dst_off: torch.Tensor, n_rows: int, row_len: int,
                   src_rs: int, dst_rs: int, align: int = 1) -> None:
    """Launch the gather on dst's device (src may be pinned host memory). Offsets: int64 tensors on dst's device;
    `align` (elements) must divide every offset (the caller knows its layout: pages, ring runs)."""
    nb = src_off.numel()
    if nb == 0 or n_rows == 0 or row_len == 0:
        return
    BC = min(1024, max(16, triton.next_power_of_2(row_len)))
    BR = max(2, min(triton.next_power_of_2(n_rows), 4096 // BC))
    grid = (nb, triton.cdiv(n_rows, BR), triton.cdiv(row_len, BC))
    _uva_gather_fwd_kernel[grid](src, dst, src_off, dst_off, n_rows, row_len, src_rs, dst_rs, BR=BR, BC=BC,
                                 ALIGN=align, num_warps=4)
