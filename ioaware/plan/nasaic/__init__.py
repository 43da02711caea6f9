"""NASAIC (Yang et al., DAC'20): co-exploration of neural architectures and a heterogeneous ASIC of dataflow
sub-accelerators (NVDLA-, ShiDianNao-, Eyeriss-style) under latency / energy / area specs. README.md has the
numbers."""

from .costmodel import TEMPLATES, Designs, Layers, evaluate
from .space import Specs, asic_costs, best_hardware, layers

__all__ = ["TEMPLATES", "Designs", "Layers", "evaluate", "Specs", "asic_costs", "best_hardware", "layers"]
