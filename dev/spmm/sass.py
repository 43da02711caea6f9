"""Compile a dev kernel for sm_90 on a machine without a GPU and count SASS instructions (dev/spmm/NOTES.md).

usage: python dev/spmm/sass.py MODULE KERNEL 'signature-json' 'constexprs-json' [num_warps]
prints registers, spills, shared memory and an opcode histogram of the whole kernel.
"""

from __future__ import annotations

import collections
import importlib.util
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource


def main() -> None:
    path, name, sig, consts = sys.argv[1:5]
    nw = int(sys.argv[5]) if len(sys.argv) > 5 else 4
    if path.endswith(".py"):
        spec = importlib.util.spec_from_file_location("m", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    else:  # a dotted module path (a package module with relative imports)
        mod = importlib.import_module(path)
    fn = getattr(mod, name)
    src = ASTSource(fn, json.loads(sig), json.loads(consts))
    k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": nw, "num_stages": 2})
    print("regs", k.n_regs if hasattr(k, "n_regs") else "?", "spills", getattr(k, "n_spills", "?"),
          "shared", k.metadata.shared)
    cubin = k.asm["cubin"]
    bindir = Path(triton.__file__).parent / "backends/nvidia/bin"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        sass = subprocess.run([str(bindir / "cuobjdump"), "-sass", f.name], capture_output=True, text=True).stdout
    ops = collections.Counter()
    for line in sass.splitlines():
        m = re.match(r"\s*/\*[0-9a-f]+\*/\s+(@!?U?P\w+\s+)?([A-Z0-9_.]+)", line)
        if m:
            ops[m.group(2).split(".")[0]] += 1
    print(sum(ops.values()), "instructions;", ", ".join(f"{o}:{c}" for o, c in ops.most_common(30)))
    Path("/tmp/last.sass").write_text(sass)
    Path("/tmp/last.ttgir").write_text(k.asm["ttgir"])


if __name__ == "__main__":
    main()
