"""Cambricon-LLM (Yu et al., MICRO 2024): an NPU beside a NAND flash chiplet whose dies compute GeMVs.

`configs`: Table II's S / M / L chiplets, the NPU, Fig. 9, every constant with its kind; `models`: decoder shapes and
decode bytes; `tiling`: Section V's closed forms; `timing`: one token in closed form; `event`: the same token in SimPy;
`fig9`: the reproduction, the one fitted constant, the ablations. `ioaware sim cambricon` runs them.
"""

from .configs import CONSTANTS, FIG9, FLASH, NPU, FlashConfig, NpuConfig
from .event import ChannelSim, simulate_token
from .models import MODELS, DecoderShape, get_model
from .tiling import Tile, hardware_tile, row_major_tile
from .timing import Design, TokenTime, default_design, token_time

__all__ = ["CONSTANTS", "FIG9", "FLASH", "MODELS", "NPU", "ChannelSim", "DecoderShape", "Design", "FlashConfig",
           "NpuConfig", "Tile", "TokenTime", "default_design", "get_model", "hardware_tile", "row_major_tile",
           "simulate_token", "token_time"]
