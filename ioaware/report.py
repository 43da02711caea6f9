"""Output for reports: rich tables for people, JSON (written atomically) for programs. At the bottom of the
layers, so benchmarks and commands alike use it."""

from __future__ import annotations

import json
import sys
from typing import IO, TYPE_CHECKING, Any

from .files import write_json_atomic

if TYPE_CHECKING:
    from rich.console import Console

# Where `--json -` writes. The CLI sends everything else a command prints (tables, progress, notes) to stderr while
# a command runs with `--json -`, and points this at the real stdout, so stdout holds the JSON alone.
_json_stream: IO[str] | None = None


def set_json_stream(stream: IO[str] | None) -> None:
    """Send `emit_json(obj, "-")` to `stream` (None: back to `sys.stdout`); the CLI points it at the real stdout.

    Examples:
        >>> import io, json
        >>> buf = io.StringIO()
        >>> set_json_stream(buf); emit_json({"ok": True}, "-"); set_json_stream(None)
        >>> json.loads(buf.getvalue())
        {'ok': True}
    """
    global _json_stream
    _json_stream = stream


def emit_json(obj: Any, dest: str | None) -> None:
    """--json FILE writes the file (atomically); --json - prints to stdout (the real one, see set_json_stream);
    None or "" does nothing.

    Examples:
        >>> emit_json({"card": "cpu", "tok_s": 92.2}, "-")
        {
         "card": "cpu",
         "tok_s": 92.2
        }
    """
    if dest in (None, ""):
        return
    if dest == "-":
        out = _json_stream or sys.stdout
        out.write(json.dumps(obj, indent=1, default=str) + "\n")
        out.flush()
    else:
        write_json_atomic(dest, obj)


def print_table(title: str, columns: list[str], rows: list[list[Any]], console: Console | None = None) -> None:
    """Print a rich table: the first column left-aligned, the rest right-aligned, floats shortened (3 significant
    digits outside [0.01, 1e4)). Without a console, piped output is 200 columns wide rather than cut at 80.

    Examples:
        >>> from rich.console import Console
        >>> print_table("decode", ["provider", "tok/s"], [["ioaware", 92.2], ["llama.cpp", 136.7]],
        ...             console=Console(width=40, color_system=None))
        decode
        ┏━━━━━━━━━━━┳━━━━━━━━┓
        ┃ provider  ┃  tok/s ┃
        ┡━━━━━━━━━━━╇━━━━━━━━┩
        │ ioaware   │  92.20 │
        │ llama.cpp │ 136.70 │
        └───────────┴────────┘
    """
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    for c in columns:
        t.add_column(c, justify="left" if c in columns[:1] else "right")
    for r in rows:
        t.add_row(*[_fmt(x) for x in r])
    if console is None:
        # piped output (CI logs, `| tee`) would otherwise be cut to 80 columns
        console = Console() if sys.stdout.isatty() else Console(width=200)
    console.print(t)


def _fmt(x: object) -> str:
    if isinstance(x, float):
        if x == 0:
            return "0"
        if abs(x) >= 1e4 or abs(x) < 1e-2:
            return f"{x:.3g}"
        return f"{x:.2f}"
    return str(x)
