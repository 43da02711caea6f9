from .interface import flash_decode
from .reference import decode_ref

__all__ = ["decode_ref", "flash_decode"]
