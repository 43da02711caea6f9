"""A separate process that reads the KV file and computes the SSD tier's partial attention next to the data: the
stand-in for InstInfer's computational storage drive. Only q goes in and (out, lse) come out per layer and step;
the KV bytes never cross to the main process.

The main process sends a request, computes the other tiers' partials meanwhile, then collects the reply
(`submit` / `result`). The worker is a fresh interpreter (`python -m ioaware.runtime.kvtiers.serve`) joined by a
socket pair: forking a process that holds torch's thread pools (and maybe CUDA) is not safe, and multiprocessing's
'spawn' would re-run the caller's main script.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from multiprocessing.connection import Connection

import torch

from ...errors import IOAwareError


class TierWorker:
    """The computational-storage stand-in: one process, one KV file, requests answered in order."""

    def __init__(self, path, threads: int = 1):
        a, b = socket.socketpair()
        self.proc = subprocess.Popen([sys.executable, "-m", "ioaware.runtime.kvtiers.serve", str(b.fileno()),
                                      str(path), str(threads)], pass_fds=(b.fileno(),))
        b.close()
        self.conn = Connection(a.detach())
        self.pending = 0

    def submit(self, segs, meta: dict, q: torch.Tensor, scale: float, sparf=None, v_mean=None) -> None:
        req = {"segs": segs, "meta": meta, "q": q.detach().float().cpu().numpy(), "scale": scale}
        if sparf is not None:
            req["sparf"] = sparf.__dict__
            req["v_mean"] = v_mean.float().cpu().numpy()
        self.conn.send(req)
        self.pending += 1

    def result(self) -> tuple[torch.Tensor, torch.Tensor, int, float]:
        """(out, lse, bytes read, seconds in the worker) of the oldest request."""
        if not self.pending:
            raise IOAwareError("TierWorker.result: no request is pending")
        try:
            if not self.conn.poll(600):
                raise IOAwareError("the SSD tier's worker process did not answer in 600 s")
            rep = self.conn.recv()
        except (EOFError, OSError) as e:
            raise IOAwareError(f"the SSD tier's worker process died (exit code {self.proc.poll()}): {e}") from None
        self.pending -= 1
        if "error" in rep:
            raise IOAwareError(f"the SSD tier's worker failed: {rep['error']}")
        return torch.from_numpy(rep["out"]), torch.from_numpy(rep["lse"]), rep["bytes"], rep["s"]

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.conn.send(None)
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()  # our own child, by its handle
                self.proc.wait(5)
        self.conn.close()

