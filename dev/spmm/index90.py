"""dev/spmm/NOTES.md entry 5: at 90% sparsity, the bitmap index against csl (what `pack`'s "auto" chose before
2026-12-03) and torch.matmul, on two projection shapes, N = 1 and 16, fp16, same run. Writes JSON to argv[1].

    PYTHONPATH=. python3 dev/spmm/index90.py $OUT/spmm-index90-h200-$(date +%F).json
"""

from __future__ import annotations

import json
import sys

import torch


def main() -> int:
    from ioaware.bench.common import machine_info, time_ms
    from ioaware.kernels.spmm import matmul
    from ioaware.kernels.spmm.format import choose_index, pack

    torch.manual_seed(0)
    rows = []
    for M, K in ((28672, 4096), (4096, 14336)):
        W = torch.randn(M, K, device="cuda", dtype=torch.float16)
        W[torch.rand(M, K, device="cuda") < 0.9] = 0
        nnz = int((W != 0).sum())
        packed = {ix: pack(W, index=ix) for ix in ("bitmap", "csl")}
        for N in (1, 16):
            x = torch.randn(N, K, device="cuda", dtype=torch.float16)
            ref = x @ W.T
            row = {"M": M, "K": K, "N": N, "sparsity": 0.9, "auto": choose_index(M, K, nnz),
                   "dense_ms": time_ms(lambda x=x, W=W: x @ W.T)}
            for ix, p in packed.items():
                y = matmul(x, p)
                row[f"{ix}_rel_err"] = ((y.float() - ref.float()).norm() / ref.float().norm()).item()
                row[f"{ix}_ms"] = time_ms(lambda x=x, p=p: matmul(x, p))
                row[f"{ix}_bytes_per_nnz"] = p.nbytes / nnz
            print(row, flush=True)
            rows.append(row)
    with open(sys.argv[1], "w") as f:
        json.dump({"machine": machine_info(), "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
