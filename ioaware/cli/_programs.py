"""Verbs that are whole programs: `ioaware sim cambricon ...`, `ioaware bench offload ...`.

Each program is a module with `main(argv) -> int` that parses its own flags (its parser's prog names the full
command). The CLI imports it only when it runs, so `ioaware --help` never pays for numpy, torch or a solver.
"""

from __future__ import annotations

import argparse
import importlib


def add_programs(sub, programs: dict[str, tuple[str, str]]) -> None:
    """programs: name -> (module, one-line help). Everything after the name goes to the module's main()."""
    for name, (mod, help_) in programs.items():
        p = sub.add_parser(name, help=help_, description=help_, add_help=False, prefix_chars="\0")
        p.add_argument("argv", nargs=argparse.REMAINDER)
        p.set_defaults(func=lambda a, m=mod: run_program(m, a.argv))


def run_program(mod: str, argv: list[str]) -> int:
    try:
        module = importlib.import_module(mod)
    except ModuleNotFoundError as e:
        if e.name and mod.startswith(e.name):  # the program itself is missing, not one of its imports
            from ..errors import UnsupportedError

            raise UnsupportedError(f"{mod} is not built yet (docs/ARCHITECTURE.md, 'Paper -> home')") from None
        raise
    return int(module.main(argv) or 0)
