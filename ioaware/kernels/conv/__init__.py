from .interface import KernelSpectrum, fftconv, prepare_kernel
from .reference import fftconv_ref, fftconv_torch

__all__ = ["KernelSpectrum", "fftconv", "fftconv_ref", "fftconv_torch", "prepare_kernel"]
