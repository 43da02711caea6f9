"""Simulated machines: pure, deterministic Python (NumPy) that tests run in seconds.

`cache`: a two-level memory that counts the words a schedule moves; `attention`: attention schedules
(standard, FlashAttention-1/2, decoding) run through it; `attention_small_sram`: the M < d^2 algorithm.
"""

from .cache import FastMemoryFull, TwoLevelMemory

__all__ = ["FastMemoryFull", "TwoLevelMemory"]
