"""A two-level memory: a fast memory of M words in front of an unbounded slow memory, counting words moved.

Explicit mode (the default) is the red-blue pebble game of the I/O-complexity papers made executable: a
schedule `load`s tiles of slow-memory arrays (counted), computes in `scratch` buffers, `store`s results
(counted) and `free`s what it no longer needs. Every resident word counts against M; going over raises
`FastMemoryFull`, so a schedule that claims to run in M words demonstrably does.

LRU mode manages the fast memory for the schedule: a `load` of a tile already resident is free, `free` only
unpins, a full memory evicts the least recently used unpinned tile (writing it back if dirty), `store` only
marks the tile dirty, and `flush` writes back what is left. It answers "what would a cache do with this
access order" (e.g. the H100's 50 MB L2 holding K and V across query blocks). Tiles are keyed by their exact
index, so a schedule must access each array with one tiling.

The arrays hold float64 and the schedules do the real arithmetic on the tiles, so the output of a schedule
checks that its data movement was sufficient to compute the answer.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass

import numpy as np

from ..iomodel.cost import Traffic


class FastMemoryFull(RuntimeError):
    """A schedule asked for more fast memory than the capacity M."""


@dataclass
class _Entry:
    array: np.ndarray
    name: str | None  # None: scratch
    dirty: bool = False
    pins: int = 0


def _key(name: str, idx) -> tuple:
    idx = idx if isinstance(idx, tuple) else (idx,)
    return (name,) + tuple((s.start, s.stop) if isinstance(s, slice) else s for s in idx)


class TwoLevelMemory:
    def __init__(self, capacity: int, *, lru: bool = False):
        if capacity <= 0:
            raise ValueError(f"capacity must be positive, got {capacity}")
        self.capacity, self.lru = int(capacity), lru
        self.slow: dict[str, np.ndarray] = {}
        self.itemsize: dict[str, int] = {}
        self.reads: Counter[str] = Counter()  # words, per array
        self.writes: Counter[str] = Counter()
        self.used = self.peak = 0
        self._fast: OrderedDict[object, _Entry] = OrderedDict()  # key -> entry, LRU order (oldest first)
        self._by_id: dict[int, object] = {}  # id(array) -> key, to free by array

    # -- slow memory (free: it is where inputs start and outputs end) --------------------------------------
    def put(self, name: str, array, itemsize: int = 2) -> None:
        self.slow[name] = np.array(array, dtype=np.float64)
        self.itemsize[name] = itemsize

    def empty(self, name: str, shape, itemsize: int = 2, fill: float = np.nan) -> None:
        """An output array; NaN-filled so that a part the schedule never writes fails the check."""
        self.put(name, np.full(shape, fill), itemsize)

    def get(self, name: str) -> np.ndarray:
        return self.slow[name]

    # -- traffic --------------------------------------------------------------------------------------------
    @property
    def words(self) -> Traffic:
        return Traffic(sum(self.reads.values()), sum(self.writes.values()))

    @property
    def bytes(self) -> Traffic:
        return Traffic(sum(n * self.itemsize[k] for k, n in self.reads.items()),
                       sum(n * self.itemsize[k] for k, n in self.writes.items()))

    # -- fast memory ----------------------------------------------------------------------------------------
    def _reserve(self, size: int) -> None:
        if self.lru:
            for key in [k for k, e in self._fast.items() if e.pins == 0]:
                if self.used + size <= self.capacity:
                    break
                self._evict(key)
        if self.used + size > self.capacity:
            raise FastMemoryFull(f"need {size} more words with {self.used} of {self.capacity} in use")
        self.used += size
        self.peak = max(self.peak, self.used)

    def _insert(self, key, entry: _Entry) -> np.ndarray:
        self._fast[key] = entry
        self._by_id[id(entry.array)] = key
        return entry.array

    def _evict(self, key) -> None:
        e = self._fast.pop(key)
        self._by_id.pop(id(e.array), None)
        if e.dirty:
            self._write_back(key, e)
        self.used -= e.array.size

    def _write_back(self, key, e: _Entry) -> None:
        idx = tuple(slice(*s) if isinstance(s, tuple) else s for s in key[1:])
        self.slow[e.name][idx] = e.array
        self.writes[e.name] += e.array.size
        e.dirty = False

    def load(self, name: str, idx) -> np.ndarray:
        """Bring a tile of slow array `name` into fast memory. A schedule that modifies it in place must store it
        back to the same tile (LRU mode returns the cached copy itself)."""
        key = _key(name, idx)
        if self.lru and key in self._fast:
            self._fast.move_to_end(key)
            self._fast[key].pins += 1
            return self._fast[key].array
        tile = self.slow[name][idx].copy()
        self._reserve(tile.size)
        if not self.lru:
            key = object()  # explicit mode: every load is its own resident copy
        self.reads[name] += tile.size
        return self._insert(key, _Entry(tile, name, pins=1))

    def scratch(self, shape, fill: float = 0.0) -> np.ndarray:
        """A fast-memory buffer (an accumulator, a score tile): no traffic, but it takes capacity."""
        a = np.full(shape, fill, dtype=np.float64)
        self._reserve(a.size)
        return self._insert(object(), _Entry(a, None, pins=1))

    def store(self, name: str, idx, value: np.ndarray) -> None:
        """Write `value` (resident in fast memory) to a tile of slow array `name`."""
        if id(value) not in self._by_id:
            raise ValueError("store a fast-memory array (from load or scratch), not a temporary")
        if not self.lru:
            self.slow[name][idx] = value
            self.writes[name] += value.size
            return
        key = _key(name, idx)
        if key in self._fast:
            e = self._fast[key]
            e.array[...] = value
        else:
            self._reserve(value.size)
            self._insert(key, _Entry(value.copy(), name))
            e = self._fast[key]
        e.dirty = True
        self._fast.move_to_end(key)

    def free(self, *arrays: np.ndarray) -> None:
        """Release fast-memory arrays (LRU mode keeps loaded tiles cached, unpinned, until evicted)."""
        for a in arrays:
            key = self._by_id.get(id(a))
            if key is None:
                raise ValueError("free: not a fast-memory array (freed twice?)")
            e = self._fast[key]
            if self.lru and e.name is not None:
                e.pins = max(e.pins - 1, 0)
                continue
            del self._fast[key]
            del self._by_id[id(a)]
            self.used -= a.size

    def flush(self) -> None:
        """LRU mode: write back every dirty tile (the end of the computation)."""
        for key, e in self._fast.items():
            if e.dirty:
                self._write_back(key, e)
