"""How many tiles FastAttention's tiling-AllReduce should cut a row-parallel projection into.

A row-parallel projection y = x W^T (W: out x in/N on each of N ranks) ends in an all-reduce of y. Cut the output
features into n tiles: tile i's all-reduce runs while tile i+1 computes, a two-stage pipeline whose time is

    T(n) = c + (n - 1) * max(c, m) + m,   c = C / n + k,   m = allreduce(bytes / n)

with C the untiled compute time, k a fixed cost per tile (a kernel launch and a collective's issue) and the ring
all-reduce of b bytes over N ranks on an alpha-beta link taking 2 (N-1) alpha + 2 (N-1) / N * b / beta.
n = 1 is the untiled sum C + allreduce(bytes); more tiles hide communication until the per-tile costs (k, alpha)
eat the gain. `choose_tiles` takes the n that minimises T(n).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..hardware.specs import HardwareSpec


@dataclass(frozen=True)
class Link:
    """The alpha-beta model of a collective's link: alpha seconds per message step, beta bytes/s per direction."""

    name: str
    alpha_s: float
    beta_Bps: float
    tile_overhead_s: float  # what one more tile costs besides its share of work: a launch, a collective's issue
    source: str


LINKS = {
    # beta: the H100/H200 SXM datasheets' 900 GB/s of NVLink 4 per GPU, 450 GB/s each way. alpha and the per-tile
    # cost are assumptions of the order of NCCL's small-message latency and a kernel launch; `ioaware bench tp`
    # measures both on the machine it runs on and reports the tile count they give.
    "nvlink4": Link("nvlink4", 8e-6, 450e9, 5e-6, "beta: H100/H200 SXM datasheet (NVLink 4, 900 GB/s per GPU "
                    "both ways); alpha and tile cost: assumed, calibrated by `ioaware bench tp`"),
    # gloo between processes of one host: assumed orders of magnitude (tens of microseconds a step, a few GB/s).
    # The fit in benchmarks/results/tp-cpu-2026-12-03.json ("link_fit") is noise-dominated (a loaded 2-core VM);
    # on CPU the choice is 1 tile for anything but large prefills either way.
    "gloo-cpu": Link("gloo-cpu", 100e-6, 2e9, 50e-6, "assumed (gloo on one host); see tiling.py"),
}


def allreduce_s(nbytes: float, world: int, link: Link) -> float:
    """Ring all-reduce time of `nbytes` over `world` ranks."""
    if world <= 1:
        return 0.0
    return 2 * (world - 1) * link.alpha_s + 2 * (world - 1) / world * nbytes / link.beta_Bps


def tiled_s(n: int, compute_s: float, nbytes: float, world: int, link: Link) -> float:
    """Pipelined time of n tiles (n = 1: compute, then the whole all-reduce)."""
    if n < 1:
        raise ValueError(f"tiles must be >= 1, got {n}")
    c = compute_s / n + (link.tile_overhead_s if n > 1 else 0.0)
    m = allreduce_s(nbytes / n, world, link)
    return c + (n - 1) * max(c, m) + m


def choose_tiles(compute_s: float, nbytes: float, world: int, link: Link, max_tiles: int = 16) -> int:
    """The tile count in 1..max_tiles with the least modelled time (ties: fewer tiles)."""
    best = min(range(1, max(1, max_tiles) + 1), key=lambda n: (tiled_s(n, compute_s, nbytes, world, link), n))
    return best


def projection_compute_s(rows: int, in_features: int, out_features: int, elem_bytes: int,
                         spec: HardwareSpec, dtype: str = "bfloat16") -> float:
    """Roofline time of y (rows x out) = x (rows x in) W^T: max(FLOPs / peak, bytes / bandwidth)."""
    flops = 2.0 * rows * in_features * out_features
    nbytes = elem_bytes * (in_features * out_features + rows * (in_features + out_features))
    bw = spec.hbm_bandwidth_Bps or 1e11
    return max(flops / spec.peak(dtype), nbytes / bw)


def link_for(device_type: str) -> Link:
    return LINKS["nvlink4"] if device_type == "cuda" else LINKS["gloo-cpu"]


def fit_link(name: str, small: tuple[float, float], large: tuple[float, float], world: int,
             tile_overhead_s: float, source: str) -> Link:
    """alpha and beta from two measured all-reduces (bytes, seconds) of different sizes."""
    (b0, t0), (b1, t1) = small, large
    k = 2 * (world - 1) / world
    inv_beta = max((t1 - t0) / (k * (b1 - b0)), 1e-15)
    alpha = max((t0 - k * b0 * inv_beta) / (2 * (world - 1)), 0.0)
    return Link(name, alpha, 1.0 / inv_beta, tile_overhead_s, source)
