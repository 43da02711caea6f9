"""KV cache beyond device memory: tiers (HBM, pinned DRAM, SSD) with attention next to the data, merged by LSE.

    from ioaware.runtime.kvtiers import install_kv_tiers, parse_kv_budget
    install_kv_tiers(model, parse_kv_budget("hbm=2GB,dram=8GB,ssd=/scratch"))
    generate(model, tok, ids, 64)          # model.setup_cache now sets the tiers up; decode uses them

See README.md in this folder.
"""

from __future__ import annotations

from .cache import KVTiers, KVTierSpec, LayerKV, parse_kv_budget
from .partial import lse_merge, partial_attention
from .sparf import SparFConfig
from .ssd import KVFile, KVFileError, open_kv_file

__all__ = ["KVFile", "KVFileError", "KVTierSpec", "KVTiers", "LayerKV", "SparFConfig", "install_kv_tiers",
           "lse_merge", "open_kv_file", "parse_kv_budget", "partial_attention"]


def install_kv_tiers(model, spec: KVTierSpec) -> KVTiers:
    """Give `model` (runtime.llm Transformer) a tiered KV cache; its next `setup_cache` builds the tiers. Returns
    the shared KVTiers (budgets, SSD file, worker, counters); call `.close()` when done (stops the worker and
    deletes the unsealed SSD file)."""
    a, p = model.args, model.norm.weight
    tiers = KVTiers(spec, a.n_layers, a.n_kv_heads, a.head_dim, p.dtype, p.device)
    tiers.q_per_kv = a.n_heads // a.n_kv_heads
    model.kv_tiers = tiers
    return tiers
