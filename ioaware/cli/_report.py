"""Shared output helpers: rich tables for people, JSON (written atomically) for programs."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def write_json_atomic(path: str | Path, obj) -> Path:
    """Write JSON so that a crash never leaves a half-written file: temp file in the same folder, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1, default=str)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def emit_json(obj, dest: str | None) -> None:
    """--json FILE writes the file; --json - prints to stdout."""
    if dest in (None, ""):
        return
    if dest == "-":
        print(json.dumps(obj, indent=1, default=str))
    else:
        write_json_atomic(dest, obj)


def print_table(title: str, columns: list[str], rows: list[list], console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    for c in columns:
        t.add_column(c, justify="left" if c in columns[:1] else "right")
    for r in rows:
        t.add_row(*[_fmt(x) for x in r])
    if console is None:
        import sys

        # piped output (CI logs, `| tee`) would otherwise be cut to 80 columns
        console = Console() if sys.stdout.isatty() else Console(width=200)
    console.print(t)


def _fmt(x) -> str:
    if isinstance(x, float):
        if x == 0:
            return "0"
        if abs(x) >= 1e4 or abs(x) < 1e-2:
            return f"{x:.3g}"
        return f"{x:.2f}"
    return str(x)


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
