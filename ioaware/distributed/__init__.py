"""Beyond one GPU, on torch.distributed (NCCL on GPUs, gloo on CPU), launched by torchrun or torch.multiprocessing.

- `ring_attn`: context-parallel exact attention (ring or all-gather of K/V, LSE merge, zig-zag causal balance),
  forward and backward, with ioaware.flash_attn as the per-block kernel on CUDA.
- `shard_transformer`: tensor parallelism for the runtime's Llama (`ioaware.runtime.Transformer`), sharded in place
  after it is built: column/row-parallel projections, KV heads split across ranks, vocab-parallel embedding and
  head, and FastAttention's tiling-AllReduce of the row-parallel outputs.

Names are imported on first use, so `import ioaware.distributed` stays cheap. README.md has the commands.
"""

_NAMES = {
    "ring_attn": ".ring", "RingAttnFunction": ".ring", "shard_sequence": ".ring",
    "unshard_sequence": ".ring", "chunks_of": ".ring",
    "shard_transformer": ".tp", "tiled_all_reduce": ".tp", "RowParallelLinear": ".tp",
    "VocabParallelEmbedding": ".tp", "VocabParallelHead": ".tp", "split_sizes": ".tp",
    "torchrun_env": ".launch", "init_from_env": ".launch", "run_ranks": ".launch",
}
__all__ = sorted(_NAMES)


def __getattr__(name: str):
    import importlib

    if name in _NAMES:
        return getattr(importlib.import_module(_NAMES[name], __name__), name)
    raise AttributeError(f"module 'ioaware.distributed' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
