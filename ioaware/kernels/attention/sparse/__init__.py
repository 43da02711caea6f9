from . import cost  # noqa: F401  (registers the op's cost in the iomodel)
from .interface import nsa, nsa_select, nsa_selected
from .reference import nsa_ref

__all__ = ["nsa", "nsa_ref", "nsa_select", "nsa_selected"]
