"""`ioaware probe gpu`: Hopper microbenchmarks after Luo et al. (Benchmarking and Dissecting the Nvidia Hopper GPU
Architecture, IPDPS'24), from Python in minutes: latency per memory level by pointer chasing, bandwidth per level,
the L2's apparent capacity, tensor-core throughput per dtype and instruction family (mma.sync vs wgmma), async
copies (cp.async, the bulk copy engine, TMA descriptors) against plain loads, and distributed shared memory. Each
number is reported beside the paper's H800 value and the vendor's datasheet figure, with the ratios.

Triton kernels where Triton can say it (bandwidth, capacity, TMA copies); CUDA C compiled at run time by NVRTC
through CuPy where it cannot (clock-timed chases, cache operators, instruction families, clusters). Importing this
package touches no GPU; `run` does. See README.md beside this file.
"""

from .probe import SECTIONS, assemble, bars, check_sections, require_cuda, run

__all__ = ["SECTIONS", "assemble", "bars", "check_sections", "require_cuda", "run"]
