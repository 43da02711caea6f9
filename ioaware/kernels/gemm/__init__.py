from .flat import flat_linear

__all__ = ["flat_linear"]
