"""`ioaware plan PLANNER ...`: planners that optimise schedules and designs with real solvers."""

from __future__ import annotations

from ._programs import add_programs

PLANNERS = {
    "cosma": ("ioaware.plan.cosma.cli", "COSMA: optimal scratchpad scheduling, allocation and replacement (ILP)"),
    "nasaic": ("ioaware.plan.nasaic.cli", "NASAIC: network x accelerator co-exploration under specs"),
}


def add_parser(sp) -> None:
    add_programs(sp.add_subparsers(dest="planner", metavar="PLANNER", required=True), PLANNERS)
