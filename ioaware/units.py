"""Byte sizes read from and written for people. At the bottom of the layers: imports nothing from ioaware.

One convention everywhere: KiB/MiB/GiB/TiB are binary (2^10...), KB/MB/GB/TB decimal (10^3...), as the SI and IEC
prefixes say; both are accepted on input, and a message about a size the user wrote uses the user's unit.
"""

from __future__ import annotations

import math
import re

_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
_CANON = {u: u if "I" not in u else u[0] + "iB" for u in _UNITS}  # "MIB" -> "MiB"
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*$")


def human_bytes(n: float) -> str:
    """`n` bytes in the largest binary unit that keeps the number below 1024, one decimal.

    Examples:
        >>> human_bytes(228 * 1024)
        '228.0 KiB'
        >>> human_bytes(512)
        '512 B'
    """
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


def size_unit(s: str) -> str:
    """The unit a size was written in ('MB', 'MiB', 'B'), for messages that answer in the user's unit.

    Examples:
        >>> size_unit("80gb"), size_unit("1.5MiB"), size_unit("4096")
        ('GB', 'MiB', 'B')
    """
    m = _SIZE.match(str(s))
    u = (m.group(2).upper() or "B") if m else "B"
    return _CANON.get(u, "B")


def in_unit(n: float, unit: str) -> str:
    """n bytes written in `unit` ('MB', 'GiB', ...): '123.4 MB'.

    Examples:
        >>> in_unit(123_400_000, "MB"), in_unit(2**30, "GiB")
        ('123.4 MB', '1.0 GiB')
    """
    u = _CANON.get(unit.upper(), "B")
    return f"{int(n)} B" if u == "B" else f"{n / _UNITS[u.upper()]:.1f} {u}"


def parse_bytes(s: str) -> float:
    """'228KiB', '80GB', '1.5MiB', '4096' -> bytes. KB/MB/GB are decimal, KiB/MiB/GiB binary. Raises ValueError
    (one line, naming the text) for anything else, a negative, NaN or infinite size.

    Examples:
        >>> parse_bytes("228KiB"), parse_bytes("80GB"), parse_bytes("4096")
        (233472.0, 80000000000.0, 4096.0)
        >>> parse_bytes("lots")
        Traceback (most recent call last):
        ...
        ValueError: cannot read a size from 'lots'; write e.g. 228KiB, 50MB, 2GiB or a number of bytes
    """
    m = _SIZE.match(str(s))
    unit = m.group(2).upper() if m else ""
    if m is None or (unit and unit not in _UNITS):
        raise ValueError(f"cannot read a size from {s!r}; write e.g. 228KiB, 50MB, 2GiB or a number of bytes")
    v = float(m.group(1)) * _UNITS[unit or "B"]
    if not math.isfinite(v):
        raise ValueError(f"size {s!r} is not finite")
    return v
