"""Starting under torchrun: detect its environment, join the process group, and the hooks `ioaware generate` calls.

    torchrun --nproc-per-node 3 -m ioaware generate --prompt "..."     # CPU: gloo; --device cuda: NCCL, GPU r
"""

from __future__ import annotations

import atexit
import os

import torch
import torch.distributed as dist

from ..errors import DeviceError, UnsupportedError


def torchrun_env() -> dict | None:
    """{'rank', 'world', 'local_rank'} when this process was started by torchrun with more than one process."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ["RANK"])
        local = int(os.environ.get("LOCAL_RANK", rank))
    except (KeyError, ValueError):
        return None
    if world <= 1 or "MASTER_ADDR" not in os.environ:
        return None
    return {"rank": rank, "world": world, "local_rank": local}


def init_from_env(device: str = "cpu") -> dict:
    """Join torchrun's process group (gloo for CPU tensors, NCCL for CUDA: GPU local_rank), once."""
    env = torchrun_env()
    if env is None:
        raise UnsupportedError("not started by torchrun with more than one process (WORLD_SIZE, RANK unset)")
    if device.startswith("cuda"):
        if not torch.cuda.is_available() or torch.cuda.device_count() <= env["local_rank"]:
            raise DeviceError(f"rank {env['rank']} needs GPU {env['local_rank']}, but "
                              f"{torch.cuda.device_count() if torch.cuda.is_available() else 0} are visible")
        torch.cuda.set_device(env["local_rank"])
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
        atexit.register(_leave)
    return env


def _leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def prepare_generate(args) -> dict | None:
    """`ioaware generate` under torchrun: join the group and adjust the run so every rank does the same steps:
    dense weights (packed 4-bit are not sharded), no CUDA graph (collectives are not captured), one sampling seed
    for all ranks, and only rank 0 prints and writes --json. None when not under torchrun."""
    if torchrun_env() is None:
        return None
    if getattr(args, "memory_budget", None):
        raise UnsupportedError("--memory-budget (weights streamed from flash) does not combine with torchrun's "
                               "tensor parallelism yet")
    if args.weights == "quantized":
        raise UnsupportedError("tensor parallelism needs dense weights: use --weights dense (or auto)")
    if args.cuda_graphs or args.compile:
        raise UnsupportedError("--cuda-graphs/--compile are off under tensor parallelism (the decode step's "
                               "collectives are not captured); drop the flag")
    env = init_from_env(args.device)
    args.weights, args.cuda_graphs = "dense", False
    if args.temperature > 0 and args.seed is None:
        seed = [int(torch.seed()) % 2**62]
        dist.broadcast_object_list(seed, src=0)
        args.seed = seed[0]
    if env["rank"] != 0:
        args.quiet, args.json = True, None
    return env


def shard_for_generate(model, env: dict | None):
    """The hook after the model is built: shard it for this rank (a no-op outside torchrun)."""
    if env is None:
        return model
    from .tp import shard_transformer

    return shard_transformer(model)


def _entry(rank: int, world: int, folder: str, backend: str, threads: int, fn, args) -> None:
    from pathlib import Path

    if threads:
        torch.set_num_threads(threads)
    if backend == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world)
    try:
        out = fn(rank, world, *args)
        torch.save(out, Path(folder) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_ranks(fn, world: int, *args, backend: str = "gloo", start_method: str | None = None, threads: int = 1):
    """fn(rank, world, *args) on `world` local processes joined in a `backend` group (a file rendezvous, no port);
    returns what each rank returned, in rank order. fn must be a module-level function and its result
    torch.save-able. start_method: 'fork' (default for gloo: the children inherit the imported modules, seconds
    saved per process) or 'spawn' (default for NCCL: CUDA does not survive a fork). threads: torch threads per
    process (1: N processes on N cores do not fight)."""
    import tempfile
    from pathlib import Path

    import torch.multiprocessing as mp

    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend must be gloo or nccl, got {backend!r}")
    if backend == "nccl" and (not torch.cuda.is_available() or torch.cuda.device_count() < world):
        raise DeviceError(f"{world} NCCL ranks need {world} GPUs; "
                          f"{torch.cuda.device_count() if torch.cuda.is_available() else 0} are visible")
    method = start_method or ("spawn" if backend == "nccl" else "fork")
    with tempfile.TemporaryDirectory() as folder:
        mp.start_processes(_entry, args=(world, folder, backend, threads, fn, args), nprocs=world, join=True,
                           start_method=method)
        return [torch.load(Path(folder) / f"rank{r}.pt", weights_only=False) for r in range(world)]
