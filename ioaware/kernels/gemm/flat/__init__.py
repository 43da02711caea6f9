from .interface import choose, flat_linear
from .reference import linear_ref

__all__ = ["choose", "flat_linear", "linear_ref"]
