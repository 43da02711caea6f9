"""What machines are: spec tables with sources, and detection of the current device."""

from .detect import detect
from .specs import SPECS, HardwareSpec, MemoryLevel, get_spec

__all__ = ["SPECS", "HardwareSpec", "MemoryLevel", "detect", "get_spec"]
