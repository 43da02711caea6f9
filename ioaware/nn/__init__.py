"""Neural-network layers built on ioaware's kernels."""

from .longconv import LongConv, LongConvKernel, smooth, squash
from .nsa import CompressionMLP, NSAttention

__all__ = ["CompressionMLP", "LongConv", "LongConvKernel", "NSAttention", "smooth", "squash"]
