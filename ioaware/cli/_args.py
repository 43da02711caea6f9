"""Argument types that reject bad values while the command line is parsed, before any work, in one line."""

from __future__ import annotations

import argparse
import math


def _number(text: str, kind, what: str):
    try:
        v = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if isinstance(v, float) and not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"{text!r} is not finite; give {what}")
    return v


def positive_int(text: str) -> int:
    v = _number(text, int, "a whole number")
    if v <= 0:
        raise argparse.ArgumentTypeError(f"{v} must be at least 1")
    return v


def nonneg_int(text: str) -> int:
    v = _number(text, int, "a whole number")
    if v < 0:
        raise argparse.ArgumentTypeError(f"{v} must be 0 or more")
    return v


def nonneg_float(text: str) -> float:
    v = _number(text, float, "a number")
    if v < 0:
        raise argparse.ArgumentTypeError(f"{v} must be 0 or more")
    return v


def positive_float(text: str) -> float:
    v = _number(text, float, "a number")
    if v <= 0:
        raise argparse.ArgumentTypeError(f"{v} must be more than 0")
    return v


def fraction(text: str) -> float:
    """A number in (0, 1]."""
    v = _number(text, float, "a number")
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"{v} must be in (0, 1]")
    return v


def unit_fraction(text: str) -> float:
    """A number in [0, 1)."""
    v = _number(text, float, "a number")
    if not 0 <= v < 1:
        raise argparse.ArgumentTypeError(f"{v} must be in [0, 1)")
    return v


def size(text: str) -> str:
    """A byte size ('512MiB', '2GB', '4096'), more than 0; kept as text so messages can answer in its unit."""
    from ..units import parse_bytes

    try:
        v = parse_bytes(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0 bytes")
    return text


def budget(text: str) -> str:
    """'40%' (of the weights) or a byte size; the percentage in (0, 100]."""
    t = text.strip()
    if t.endswith("%"):
        v = _number(t[:-1], float, "a percentage")
        if not 0 < v <= 100:
            raise argparse.ArgumentTypeError(f"{text} must be a percentage in (0, 100]")
        return t
    return size(t)


def int_list(text: str) -> tuple[int, ...]:
    """'1,4,8' -> (1, 4, 8), each at least 1."""
    return tuple(positive_int(p) for p in text.split(",") if p.strip())
