"""The worker process's main loop (see worker.py): `python -m ioaware.runtime.kvtiers.serve FD PATH THREADS`.
Kept out of the package's imports so that `-m` runs it fresh."""

from __future__ import annotations

import os
import sys
import time
from multiprocessing.connection import Connection

import torch


def _serve(conn, path: str, threads: int) -> None:
    from .sparf import SparFConfig, exact_from_file, sparf_from_file

    torch.set_num_threads(max(1, threads))
    fd = os.open(path, os.O_RDONLY)
    try:
        while True:
            req = conn.recv()
            if req is None:
                return
            t0 = time.perf_counter()
            try:
                q = torch.from_numpy(req["q"])
                if req.get("sparf"):
                    out, lse, nb = sparf_from_file(fd, req["segs"], req["meta"], q, req["scale"],
                                                   torch.from_numpy(req["v_mean"]), SparFConfig(**req["sparf"]))
                else:
                    out, lse, nb = exact_from_file(fd, req["segs"], req["meta"], q, req["scale"])
                conn.send({"out": out.numpy(), "lse": lse.numpy(), "bytes": nb, "s": time.perf_counter() - t0})
            except Exception as e:  # noqa: BLE001 - reported to the caller, which raises it
                conn.send({"error": f"{type(e).__name__}: {e}"})
    finally:
        os.close(fd)


if __name__ == "__main__":
    _serve(Connection(int(sys.argv[1])), sys.argv[2], int(sys.argv[3]))
