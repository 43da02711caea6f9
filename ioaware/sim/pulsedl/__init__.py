"""PulseDL-II in software (Ai et al., IEEE TNS 2023, arXiv 2209.00884): neural-network timing and energy extraction
from detector pulses, with integer-only inference and a model of the SoC's accelerator.

`pulses`: shaped pulses through an ADC, the SNR definition, the Cramer-Rao bound; `baselines`: constant-fraction
discrimination and a least-squares template fit; `model`: the 1D CNN and its training; `quant`: the TFLite integer
scheme and the quantised PyTorch model; `engine`: the same integer arithmetic in numpy; `accel`: cycles and traffic
of an AU -> PE -> NN accelerator; `experiment`: the reproduction; `cli`: `ioaware pulsedl train | eval | sweep`.
Importing this package imports numpy only; torch comes with `model`, `quant` and `experiment`.
"""

from .pulses import PulseConfig, crlb, resolution, simulate

__all__ = ["PulseConfig", "crlb", "resolution", "simulate"]
