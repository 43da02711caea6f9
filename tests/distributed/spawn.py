"""The tests' launcher: ioaware.distributed.launch.run_ranks with gloo and forked children (cheap on 2 cores)."""

from ioaware.distributed.launch import run_ranks

__all__ = ["run_ranks"]
