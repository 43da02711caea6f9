"""The packed sparse weight: Flash-LLM's tiled format, re-shaped for a kernel that cannot scatter.

Flash-LLM (Tiled-CSL) stores, per 128x64 tile of the weight, a list of 32-bit words (fp16 value, int16 in-tile
position) and scatters them into a shared-memory tile. Triton exposes no scatter into on-chip memory, so our kernel
expands a tile the other way round: every dense element computes where its value lives (a *gather*). That needs, per
element, "is it non-zero" and "how many non-zeros precede it in its row", which a bitmap answers with one shift and
one popcount. So the in-tile positions are kept in one of two compact index types (`choose_index` says which):

- ``bitmap``: one 32-bit word per tile row (bit c set <=> column c of that row is non-zero): M*K/8 bytes in all,
  i.e. 1/(8*density) bytes per non-zero (0.625 at 80% sparsity, 1.0 at 87.5%);
- ``csl`` (compressed sparse list, Flash-LLM's idea): one uint8 column index per non-zero, the column within its
  256-column group (the row is implied by the row offsets): 1 byte per non-zero, smaller above 87.5% sparsity.

Layout (all tensors flat and contiguous, in the order the kernel streams them, so loads are coalesced):

- the weight is cut into row blocks of TILE_M = 64 rows (one wgmma M) and groups of GROUP_K = 256 columns
  (8 tiles of TILE_K = 32 columns: one mask word); shapes are zero-padded up to whole tiles, so any 2-D shape tiles;
- ``values``: the non-zeros in (row block, column group, row, column) order: a program that owns a row block and a
  range of column groups (split-K) reads one contiguous stretch;
- ``rowoff`` (int32): where each (row block, group, row) starts in ``values``, plus a final sentinel = nnz. The
  kernel keeps one running pointer per row, advanced by the popcount of each mask word, so no prefix sum crosses
  threads (4 bytes per 256 columns of a row: 1/64 byte per weight);
- ``masks`` (int32, bitmap only): (row block, 32-column tile, row) -> the row's word for that tile;
- ``cols`` (uint8, csl only): per value, its column within the 256-column group;
- ``header`` (int64): format version, shape, tile sizes, index type, nnz: a packed tensor from another format
  version is refused with a one-line error.

Bytes per non-zero (fp16 values): 2 + 1/(8 d) + 1/(64 d) (bitmap) or 3 + 1/(64 d) (csl), for density d. The bitmap
is the smaller below 87.5% sparsity, csl above; "auto" keeps the bitmap while it is <= 4 bytes per non-zero (~93%),
since csl's kernel is much slower (choose_index), so bytes per non-zero stay <= 4 for any density >= 1/64.
Flash-LLM's Tiled-CSL is 4 + padding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...errors import DTypeError, ShapeError

FORMAT_VERSION = 1
TILE_M = 64  # rows per tile: one wgmma instruction's M (a warpgroup's 64 rows)
TILE_K = 32  # columns per tile: one 32-bit mask word per tile row
GROUP_TILES = 8  # tiles per column group: 256 columns, so a csl column index fits in a uint8
GROUP_K = TILE_K * GROUP_TILES
INDEX_TYPES = ("bitmap", "csl")
VALUE_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_HEADER_LEN = 8


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def grid_of(M: int, K: int) -> tuple[int, int, int]:
    """(row blocks, 32-column tiles, 256-column groups) of an M x K weight.

    Examples:
        >>> grid_of(128, 512)
        (2, 16, 2)
    """
    Kt = _cdiv(K, TILE_K)
    return _cdiv(M, TILE_M), Kt, _cdiv(Kt, GROUP_TILES)


def packed_nbytes(M: int, K: int, nnz: int, elem_bytes: int = 2, index: str = "bitmap") -> int:
    """Bytes of a packed M x K weight with `nnz` non-zeros: values + index + row offsets + header.
    The iomodel's cost (cost.py) and `choose_index` use this; a test checks it against real packed tensors.

    Examples:
        >>> import torch
        >>> W = torch.randn(64, 256).half() * (torch.rand(64, 256) < 0.3)
        >>> packed_nbytes(64, 256, int((W != 0).sum())) == pack(W, index="bitmap").nbytes
        True
    """
    Mt, Kt, Kg = grid_of(M, K)
    idx = Mt * Kt * TILE_M * 4 if index == "bitmap" else nnz
    return nnz * elem_bytes + idx + (Mt * Kg * TILE_M + 1) * 4 + _HEADER_LEN * 8


def choose_index(M: int, K: int, nnz: int) -> str:
    """The index `pack(..., index="auto")` uses: bitmap while it costs at most 4 bytes per non-zero (up to ~93%
    sparsity), csl beyond. Not simply the smaller: csl's kernel rebuilds each mask word from a row's next column
    entries, and on the H200 at 90% sparsity it ran 23-50x slower than the bitmap kernel for 8% fewer bytes
    (benchmarks/results/spmm-h200-2026-12-03.json).

    Examples:
        >>> choose_index(4096, 4096, 4096 * 4096 // 10), choose_index(4096, 4096, 4096 * 4096 // 20)
        ('bitmap', 'csl')
    """
    return "bitmap" if packed_nbytes(M, K, nnz, 2, "bitmap") <= 4 * nnz else "csl"


@dataclass
class PackedWeight:
    """A sparse (M, K) weight (nn.Linear's (out_features, in_features)) in the tiled format above.

    Examples:
        >>> import torch, ioaware
        >>> W = torch.randn(64, 256).half() * (torch.rand(64, 256) < 0.2)
        >>> Wp = ioaware.spmm.pack(W)
        >>> Wp.shape, Wp.index, round(Wp.density, 1), Wp.nbytes < W.numel() * 2
        ((64, 256), 'bitmap', 0.2, True)
    """

    shape: tuple[int, int]
    index: str
    values: torch.Tensor  # (nnz,) float16 / bfloat16 / float32
    rowoff: torch.Tensor  # (Mt * Kg * TILE_M + 1,) int32
    masks: torch.Tensor | None = None  # (Mt, Kt, TILE_M) int32, bitmap only
    cols: torch.Tensor | None = None  # (nnz,) uint8, csl only
    version: int = FORMAT_VERSION

    @property
    def dtype(self) -> torch.dtype:
        """The packed values' dtype."""
        return self.values.dtype

    @property
    def device(self) -> torch.device:
        """Where the packed tensors are."""
        return self.values.device

    @property
    def nnz(self) -> int:
        """Stored non-zeros."""
        return self.values.numel()

    @property
    def density(self) -> float:
        """nnz / (M K)."""
        return self.nnz / (self.shape[0] * self.shape[1])

    @property
    def grid(self) -> tuple[int, int, int]:
        """`grid_of(M, K)`: (row blocks, 32-column tiles, 256-column groups)."""
        return grid_of(*self.shape)

    def _index_tensor(self) -> torch.Tensor:
        """`masks` (bitmap) or `cols` (csl), whichever this format has; `validate` checks it is there."""
        t = self.masks if self.index == "bitmap" else self.cols
        if t is None:
            raise ValueError(f"spmm: a {self.index!r} packed weight without its index tensor")
        return t

    @property
    def nbytes(self) -> int:
        """Bytes the kernel reads for the weight (values + index + row offsets + header)."""
        idx = self._index_tensor()
        return (self.values.numel() * self.values.element_size() + idx.numel() * idx.element_size()
                + self.rowoff.numel() * 4 + _HEADER_LEN * 8)

    @property
    def bytes_per_nnz(self) -> float:
        """`nbytes` per stored non-zero."""
        return self.nbytes / max(self.nnz, 1)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> PackedWeight:
        """A copy on `device`, with values cast to `dtype` (a cast rounds: fp16 -> bf16 loses mantissa bits)."""
        idx = {"masks": self.masks, "cols": self.cols}
        return PackedWeight(self.shape, self.index, self.values.to(device=device, dtype=dtype),
                            self.rowoff.to(device), **{k: (v.to(device) if v is not None else None)
                                                       for k, v in idx.items()}, version=self.version)

    def header(self) -> torch.Tensor:
        """The int64 header stored with the tensors: version, M, K, tiling, index type, nnz."""
        return torch.tensor([self.version, self.shape[0], self.shape[1], TILE_M, TILE_K, GROUP_TILES,
                             INDEX_TYPES.index(self.index), self.nnz], dtype=torch.int64)

    def tensors(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """The tensors to store (safetensors): `<prefix>header`, `values`, `rowoff`, `masks` or `cols`."""
        out = {f"{prefix}header": self.header(), f"{prefix}values": self.values, f"{prefix}rowoff": self.rowoff}
        out[f"{prefix}{'masks' if self.index == 'bitmap' else 'cols'}"] = self._index_tensor()
        return out

    @classmethod
    def from_tensors(cls, t: dict[str, torch.Tensor], prefix: str = "", check: bool = True) -> PackedWeight:
        """Rebuild from `tensors()`; refuses another format version or tiling, and (check=True) inconsistent data."""
        name = prefix.rstrip(".") or "packed weight"
        if f"{prefix}header" not in t:
            raise ValueError(f"{name}: no '{prefix}header' tensor; this is not an ioaware.spmm packed weight")
        h = [int(v) for v in t[f"{prefix}header"].tolist()]
        if len(h) != _HEADER_LEN or h[0] != FORMAT_VERSION:
            raise ValueError(f"{name}: packed with spmm format version {h[0] if h else '?'}, this ioaware reads "
                             f"version {FORMAT_VERSION}; re-pack the weight (ioaware prune ...)")
        if tuple(h[3:6]) != (TILE_M, TILE_K, GROUP_TILES):
            raise ValueError(f"{name}: tiles {tuple(h[3:6])} differ from this build's {(TILE_M, TILE_K, GROUP_TILES)}")
        if not 0 <= h[6] < len(INDEX_TYPES):
            raise ValueError(f"{name}: unknown index type code {h[6]}")
        index = INDEX_TYPES[h[6]]
        key = f"{prefix}masks" if index == "bitmap" else f"{prefix}cols"
        missing = [k for k in (f"{prefix}values", f"{prefix}rowoff", key) if k not in t]
        if missing:
            raise ValueError(f"{name}: missing tensors {missing}")
        p = cls((h[1], h[2]), index, t[f"{prefix}values"], t[f"{prefix}rowoff"],
                masks=t[key] if index == "bitmap" else None, cols=t[key] if index == "csl" else None)
        if p.nnz != h[7]:
            raise ValueError(f"{name}: header says {h[7]} non-zeros, values hold {p.nnz}")
        if check:
            validate(p)
        return p


def validate(p: PackedWeight) -> None:
    """Structural checks (shapes, dtypes, offsets monotone and matching the index): raises ValueError naming what
    is wrong. Run on tensors read from a file, before any kernel indexes memory with them."""
    M, K = p.shape
    if M <= 0 or K <= 0:
        raise ShapeError(f"packed weight: shape {p.shape} must be positive")
    Mt, Kt, Kg = grid_of(M, K)
    if p.values.dim() != 1 or p.values.dtype not in VALUE_DTYPES:
        raise DTypeError(f"packed weight: values must be 1-D float16/bfloat16/float32, got {p.values.dtype} "
                         f"{tuple(p.values.shape)}")
    if p.rowoff.dtype != torch.int32 or p.rowoff.shape != (Mt * Kg * TILE_M + 1,):
        raise ShapeError(f"packed weight: rowoff must be int32 ({Mt * Kg * TILE_M + 1},), got {p.rowoff.dtype} "
                         f"{tuple(p.rowoff.shape)}")
    counts = p.rowoff[1:].long() - p.rowoff[:-1].long()
    if int(p.rowoff[0]) != 0 or int(p.rowoff[-1]) != p.nnz or bool((counts < 0).any()):
        raise ValueError("packed weight: row offsets must rise from 0 to nnz")
    if p.index == "bitmap":
        if p.masks is None or p.masks.dtype != torch.int32 or p.masks.shape != (Mt, Kt, TILE_M):
            raise ShapeError(f"packed weight: masks must be int32 {(Mt, Kt, TILE_M)}")
        if not torch.equal(_mask_counts(p.masks, Kg), counts.view(Mt, Kg, TILE_M)):
            raise ValueError("packed weight: the masks' bit counts disagree with the row offsets")
    else:
        if p.cols is None or p.cols.dtype != torch.uint8 or p.cols.shape != (p.nnz,):
            raise ShapeError(f"packed weight: cols must be uint8 ({p.nnz},)")


def _mask_counts(masks: torch.Tensor, Kg: int) -> torch.Tensor:
    """(Mt, Kt, TILE_M) int32 words -> (Mt, Kg, TILE_M) set bits per row and column group."""
    Mt, Kt, _ = masks.shape
    bits = _bits(masks).sum(-1)  # (Mt, Kt, TILE_M)
    bits = torch.nn.functional.pad(bits, (0, 0, 0, Kg * GROUP_TILES - Kt))
    return bits.view(Mt, Kg, GROUP_TILES, TILE_M).sum(2)


def _bits(masks: torch.Tensor) -> torch.Tensor:
    """int32 words (...) -> bool (..., 32), bit c of each word."""
    sh = torch.arange(TILE_K, device=masks.device, dtype=torch.int64)
    return ((masks.long() & 0xFFFFFFFF)[..., None] >> sh) & 1 == 1


def _grouped(w: torch.Tensor, Mt: int, Kg: int) -> torch.Tensor:
    """(Mt*64, Kg*256) -> (Mt, Kg, 64, 256): the value order (row block, group, row, column)."""
    return w.view(Mt, TILE_M, Kg, GROUP_K).permute(0, 2, 1, 3)


def pack(W: torch.Tensor, index: str = "auto", dtype: torch.dtype | None = None) -> PackedWeight:
    """Pack a (out_features, in_features) weight whose zeros are the pruned entries. Exact: `unpack(pack(W))`
    equals W (values keep their bits when `dtype` is W's). index: 'bitmap', 'csl' or 'auto' (the smaller).

    Examples:
        >>> import torch, ioaware
        >>> W = torch.randn(64, 300) * (torch.rand(64, 300) < 0.4)
        >>> Wp = ioaware.spmm.pack(W, index="bitmap")
        >>> torch.equal(ioaware.spmm.unpack(Wp), W), Wp.nnz == int((W != 0).sum())
        (True, True)
    """
    if not isinstance(W, torch.Tensor) or W.dim() != 2:
        raise ShapeError(f"pack: W must be a 2-D (out_features, in_features) tensor, got "
                         f"{tuple(W.shape) if isinstance(W, torch.Tensor) else type(W).__name__}")
    M, K = W.shape
    if M == 0 or K == 0:
        raise ShapeError(f"pack: W has an empty dimension {tuple(W.shape)}; the format tiles non-empty weights")
    dtype = dtype or W.dtype
    if W.dtype not in VALUE_DTYPES or dtype not in VALUE_DTYPES:
        raise DTypeError(f"pack: W ({W.dtype}) and values ({dtype}) must be float16, bfloat16 or float32")
    if index not in ("auto", *INDEX_TYPES):
        raise ValueError(f"pack: index must be 'auto', 'bitmap' or 'csl', got {index!r}")
    Mt, Kt, Kg = grid_of(M, K)
    Wd = W.to(dtype)
    wp = torch.zeros(Mt * TILE_M, Kg * GROUP_K, dtype=dtype, device=W.device)
    wp[:M, :K] = Wd
    g = _grouped(wp, Mt, Kg)  # (Mt, Kg, 64, 256)
    nz = g != 0
    nnz = int(nz.sum())
    if nnz >= 2**31:
        raise ShapeError(f"pack: {nnz} non-zeros overflow the int32 row offsets; split the weight")
    if index == "auto":
        index = choose_index(M, K, nnz)
    values = g[nz]  # row block, group, row, column order
    counts = nz.sum(-1, dtype=torch.int64).flatten()  # (Mt*Kg*64,)
    rowoff = torch.zeros(counts.numel() + 1, dtype=torch.int64, device=W.device)
    rowoff[1:] = counts.cumsum(0)
    masks = cols = None
    if index == "bitmap":
        t = (wp[:, :Kt * TILE_K] != 0).view(Mt, TILE_M, Kt, TILE_K).permute(0, 2, 1, 3)  # (Mt, Kt, 64, 32)
        w = (t.long() << torch.arange(TILE_K, device=W.device)).sum(-1)  # (Mt, Kt, 64) in [0, 2^32)
        masks = torch.where(w >= 2**31, w - 2**32, w).to(torch.int32).contiguous()
    else:
        cols = torch.arange(GROUP_K, device=W.device, dtype=torch.int16).expand_as(g)[nz].to(torch.uint8)
    return PackedWeight((M, K), index, values.contiguous(), rowoff.to(torch.int32), masks=masks, cols=cols)


def nonzero_mask(p: PackedWeight) -> torch.Tensor:
    """(Mt, Kg, 64, 256) bool: where the packed weight has values, in value order."""
    Mt, Kt, Kg = p.grid
    if p.index == "bitmap":
        b = _bits(p._index_tensor())  # masks: (Mt, Kt, 64, 32)
        b = b.permute(0, 2, 1, 3).reshape(Mt, TILE_M, Kt * TILE_K)
        b = torch.nn.functional.pad(b, (0, Kg * GROUP_K - Kt * TILE_K))
        return _grouped(b, Mt, Kg)
    rows = torch.repeat_interleave(torch.arange(Mt * Kg * TILE_M, device=p.device),
                                   (p.rowoff[1:] - p.rowoff[:-1]).long())
    nz = torch.zeros(Mt * Kg * TILE_M * GROUP_K, dtype=torch.bool, device=p.device)
    nz[rows * GROUP_K + p._index_tensor().long()] = True  # cols
    return nz.view(Mt, Kg, TILE_M, GROUP_K)


def unpack(p: PackedWeight) -> torch.Tensor:
    """The dense (M, K) weight, in the values' dtype.

    Examples:
        >>> import torch, ioaware
        >>> W = torch.randn(70, 40).bfloat16() * (torch.rand(70, 40) < 0.5)
        >>> torch.equal(ioaware.spmm.unpack(ioaware.spmm.pack(W)), W)
        True
    """
    if not isinstance(p, PackedWeight):
        raise TypeError(f"unpack: expected a PackedWeight from ioaware.spmm.pack, got {type(p).__name__}")
    if p.version != FORMAT_VERSION:
        raise ValueError(f"unpack: packed with spmm format version {p.version}, this ioaware reads version "
                         f"{FORMAT_VERSION}; re-pack the weight")
    M, K = p.shape
    Mt, Kt, Kg = p.grid
    g = torch.zeros(Mt, Kg, TILE_M, GROUP_K, dtype=p.dtype, device=p.device)
    g[nonzero_mask(p)] = p.values
    return g.permute(0, 2, 1, 3).reshape(Mt * TILE_M, Kg * GROUP_K)[:M, :K].contiguous()
