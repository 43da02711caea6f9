"""What machines are: spec tables with sources, detection of the current device, and what probes measured on it
(`measured(card)`: the newest `ioaware probe gpu` result of a card; `measured_spec` puts it into a spec)."""

from .detect import detect
from .probe_results import Measured, Measurement, measured, measured_spec
from .specs import SPECS, HardwareSpec, MemoryLevel, get_spec

__all__ = ["SPECS", "HardwareSpec", "Measured", "Measurement", "MemoryLevel", "detect", "get_spec", "measured",
           "measured_spec"]
