"""`ioaware sim MACHINE ...`: simulators of hardware that is not here, each checked against its paper's numbers."""

from __future__ import annotations

from ._programs import add_programs

SIMS = {
    "cambricon": ("ioaware.sim.cambricon.cli", "Cambricon-LLM: an NPU beside a flash chiplet with in-die compute"),
    "csd": ("ioaware.sim.csd.cli", "InstInfer: attention on a computational storage drive vs FlexGen offload"),
    "pim": ("ioaware.sim.pim.cli", "PIM-GPT: GPT decoding in GDDR6 processing-in-memory"),
    "rdu": ("ioaware.sim.rdu.cli", "SambaNova SN40L: three memory tiers, fused dataflow, composition of experts"),
}


def add_parser(sp) -> None:
    add_programs(sp.add_subparsers(dest="machine", metavar="MACHINE", required=True), SIMS)
