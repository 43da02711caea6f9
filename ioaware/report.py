"""Output for reports: rich tables for people, JSON (written atomically) for programs. At the bottom of the
layers, so benchmarks and commands alike use it."""

from __future__ import annotations

import json
import sys

from .files import write_json_atomic

# Where `--json -` writes. The CLI sends everything else a command prints (tables, progress, notes) to stderr while
# a command runs with `--json -`, and points this at the real stdout, so stdout holds the JSON alone.
_json_stream = None


def set_json_stream(stream) -> None:
    global _json_stream
    _json_stream = stream


def emit_json(obj, dest: str | None) -> None:
    """--json FILE writes the file; --json - prints to stdout (the real one, see set_json_stream)."""
    if dest in (None, ""):
        return
    if dest == "-":
        out = _json_stream or sys.stdout
        out.write(json.dumps(obj, indent=1, default=str) + "\n")
        out.flush()
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
