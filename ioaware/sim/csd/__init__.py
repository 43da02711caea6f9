"""InstInfer (Pan et al., HPCA 2025): decode attention and the KV cache inside computational storage drives, beside a
FlexGen-style offload of the KV cache to an SSD.

`configs`: the A6000 host, the SSD, the CSD, SparF's parameters, every constant with its kind; `sparf`: SparF in
NumPy and the bytes it reads; `model`: FlexGen's and InstInfer's decode step (closed form and SimPy) and a whole
generation. `ioaware sim csd` runs them.
"""

from .configs import CONSTANTS, CSD, HOST, SPARF, SSD, Csd, GpuHost, SparF, Ssd
from .model import InstInferSim, Setup, flexgen_step, generation, instinfer_step
from .sparf import attention_reference, sparf_attention, sparf_bytes

__all__ = ["CONSTANTS", "CSD", "HOST", "SPARF", "SSD", "Csd", "GpuHost", "InstInferSim", "Setup", "SparF", "Ssd",
           "attention_reference", "flexgen_step", "generation", "instinfer_step", "sparf_attention", "sparf_bytes"]
