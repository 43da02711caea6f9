"""Flash-LLM: unstructured-sparse weights on tensor cores ("load as sparse, compute as dense").

`pack(W)` -> PackedWeight (tiled bitmap or csl index, format.py), `unpack(Wp)` -> W exactly, `matmul(x, Wp)` ->
x W^T through the Triton SpMM (kernel.py) on CUDA.
"""

from . import cost  # noqa: F401  (registers the op's cost in the iomodel)
from .format import FORMAT_VERSION, PackedWeight, pack, unpack
from .interface import matmul
from .reference import spmm_ref

__all__ = ["FORMAT_VERSION", "PackedWeight", "matmul", "pack", "spmm_ref", "unpack"]
