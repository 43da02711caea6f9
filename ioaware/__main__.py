"""`python -m ioaware ...` (what torchrun launches: `torchrun --nproc-per-node N -m ioaware generate ...`)."""

import sys

from .cli.main import entry

sys.exit(entry())
