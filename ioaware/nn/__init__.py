"""Neural-network layers built on ioaware's kernels."""

from .longconv import LongConv, LongConvKernel, smooth, squash

__all__ = ["LongConv", "LongConvKernel", "smooth", "squash"]
