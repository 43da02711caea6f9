"""The one benchmark registry: every GPU op and CPU program is reachable through `ioaware bench`."""

import numpy as np

from ioaware.bench import CPU, GPU
from ioaware.cli.main import build_parser, main


def test_every_registered_benchmark_is_a_verb():
    sub = next(a for a in build_parser()._subparsers._group_actions if a.dest == "verb").choices["bench"]
    ops = next(a for a in sub._subparsers._group_actions if a.dest == "op").choices
    assert set(ops) == set(GPU) | set(CPU)


def test_cpu_program_gets_its_own_flags(tmp_path):
    out = tmp_path / "trace.npz"
    argv = ["bench", "synthetic-trace", "--out", str(out), "--tokens", "3", "--layers", "4", "--hidden", "64"]
    assert main(argv) == 0
    z = np.load(out)
    assert bool(z["synthetic"]) and int(z["hidden"]) == 64 and len(z["layers"]) == 3 * 4
