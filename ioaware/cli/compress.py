"""`ioaware compress METHOD ...`: write a compressed checkpoint of a model."""

from __future__ import annotations

from ._programs import add_programs

METHODS = {
    "svd": ("ioaware.runtime.compress.cli", "truncated SVD of every linear layer (optionally whitened), as factors"),
}


def add_parser(sp) -> None:
    add_programs(sp.add_subparsers(dest="method", metavar="METHOD", required=True), METHODS)
