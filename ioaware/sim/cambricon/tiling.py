"""Section V's closed forms: the hardware-aware tile, its traffic, request times and the NPU/flash split.

A read-compute request covers a tile of H output rows x W input columns. Channel c holds columns
[c W/ch, (c+1) W/ch) of all H rows; its `cores_per_channel` cores each hold one page of that H x W/ch block. The NPU
sends channel c its W/ch input bytes once (every core on the bus sees them: a broadcast) and gets H partial sums back,
so a tile moves W + ch*H bytes. With H*W fixed at page*ch*cpc, that is smallest at H = sqrt(cpc*page), W = ch*H.
(The paper's formulas count one byte per partial sum; so do we.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .configs import FlashConfig, optimal_tile


@dataclass(frozen=True)
class Tile:
    H: float  # output rows
    W: float  # input columns
    name: str = ""

    def per_channel_in(self, cfg: FlashConfig) -> float:
        return self.W / cfg.channels

    def check(self, cfg: FlashConfig) -> None:
        want = cfg.page_bytes * cfg.cores
        if not math.isclose(self.H * self.W, want, rel_tol=1e-9):
            raise ValueError(f"tile {self.H:g} x {self.W:g} holds {self.H * self.W:g} weights; a read-compute request "
                             f"on {cfg.name} covers page x cores = {want} (one page per core)")


def hardware_tile(cfg: FlashConfig) -> Tile:
    H, W = optimal_tile(cfg)
    return Tile(H, W, "hardware-aware")


def row_major_tile(cfg: FlashConfig) -> Tile:
    """The layout without hardware-aware tiling: a page holds `page` consecutive weights of one row, so a channel's
    cores hold cpc rows over the same page-long slice of the input (the ablation's baseline)."""
    return Tile(cfg.cores_per_channel, cfg.channels * cfg.page_bytes, "row-major pages")


def traffic(tile: Tile, cfg: FlashConfig) -> float:
    """Bytes a tile moves on the channels: inputs once (W), partial sums from every channel (ch x H)."""
    return tile.W + cfg.channels * tile.H


def t_input(tile: Tile, cfg: FlashConfig) -> float:
    return tile.per_channel_in(cfg) / cfg.channel_Bps


def t_output(tile: Tile, cfg: FlashConfig) -> float:
    return tile.H / cfg.channel_Bps


def t_rc(tile: Tile, cfg: FlashConfig) -> float:
    """Read-compute request time: t_rc = tR + W/(channels x bw) (the input reaches the dies, then the array read;
    the partial sums leave while the next request's page is read)."""
    return cfg.tR + t_input(tile, cfg)


def channel_util(tile: Tile, cfg: FlashConfig) -> float:
    """The paper's channel utilisation of read-compute: u = (H + W/channels) / (tR x bw)."""
    return (tile.H + tile.per_channel_in(cfg)) / (cfg.tR * cfg.channel_Bps)


def t_read_sliced(tile: Tile, cfg: FlashConfig) -> float:
    """A plain page read sliced into the bus time read-compute leaves: t_r = page / ((1 - u) x bw)."""
    return cfg.page_bytes / ((1.0 - channel_util(tile, cfg)) * cfg.channel_Bps)


def request_split(tile: Tile, cfg: FlashConfig) -> float:
    """Fraction of a channel's requests that are read-compute when both paths take equal time per request pair:
    alpha = t_r / (t_r + t_rc) (the 'about 0.355' of the reference; a read-compute request moves cpc pages, a plain
    read one)."""
    tr, trc = t_read_sliced(tile, cfg), t_rc(tile, cfg)
    return tr / (tr + trc)


def byte_split(tile: Tile, cfg: FlashConfig) -> float:
    """Fraction of the weight bytes the flash cores compute at that balance (the rest reach the NPU as plain reads)."""
    a = request_split(tile, cfg)
    rc = a * cfg.cores_per_channel
    return rc / (rc + (1.0 - a))


def retry_delay(cfg: FlashConfig, p: float) -> float:
    """Mean extra time of a tile request: it ends with its slowest die, and a die whose page fails ECC reads it again
    (one more tR). P(some die of the tile retries) = 1 - (1-p)^cores."""
    return cfg.tR * (1.0 - (1.0 - p) ** cfg.cores)


def peak_rates(tile: Tile, cfg: FlashConfig, p: float = 0.0) -> dict[str, float]:
    """Steady-state bytes/s of each path with the other running (closed form, no GeMV boundaries)."""
    period = t_rc(tile, cfg) + retry_delay(cfg, p)
    busy = (t_input(tile, cfg) + t_output(tile, cfg)) / period
    rc = cfg.tile_bytes / period
    plain = cfg.channels * cfg.channel_Bps * (1.0 - busy)
    return {"read_compute": rc, "plain": plain, "total": rc + plain}
