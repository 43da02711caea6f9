"""Byte sizes read from and written for people. At the bottom of the layers: imports nothing from ioaware."""

from __future__ import annotations


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


def parse_bytes(s: str) -> float:
    """'228KB', '80GB', '1.5MiB', '4096' -> bytes (KB/MB/GB binary, as SRAM sizes are quoted)."""
    t = s.strip().upper().replace("IB", "B")
    mult = {"KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4, "K": 1024, "M": 1024**2, "G": 1024**3, "B": 1}
    for suf in ("KB", "MB", "GB", "TB", "K", "M", "G", "B"):
        if t.endswith(suf):
            num = t[: -len(suf)]
            try:
                return float(num) * mult[suf]
            except ValueError:
                break
    try:
        return float(t)
    except ValueError:
        raise ValueError(f"cannot read a size from {s!r}; write e.g. 228KB, 50MB, 80GB or a number of bytes") from None
