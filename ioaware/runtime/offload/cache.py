"""The DRAM side of LLM in a flash (§3.3): a preallocated neuron cache per FFN layer, with windowing.

Each layer owns one buffer of `capacity` bundles (c, 3, hidden) allocated once; `slot_of` (ffn,) maps a neuron id
to its slot (-1: not resident) and `id_of` (c,) maps back. Slots [0, n) are used and packed:
- delete: the last used slot moves into the freed one (O(hidden) per deleted neuron, no reallocation);
- insert: new bundles go at the end.
Because the used slots are packed, `resident()` is a free view buf[:n] that `sparse_ffn` can consume as it is.

Windowing: a neuron used by one of the last k tokens stays; each token reads only the increment. If the window
wants more than `capacity`, the least recently used resident neurons go first (counted as forced evictions);
the current token's own neurons are never evicted to make room for each other.

Typical decode step for one layer:
    hit, miss = cache.lookup(ids)                 # ids: the predictor's neurons for this token
    cache.insert(miss, store.read(layer, miss))   # the increment, from flash
    y = sparse_ffn(x, cache.gather(ids), t)       # or sparse_ffn(x, cache.resident()[0], t): a view, no copy
    cache.step_window(ids); cache.evict_outside_window()
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import torch


@dataclass
class CacheStats:
    lookups: int = 0  # neuron ids asked for
    hits: int = 0
    inserted: int = 0
    evicted_window: int = 0  # left the window
    evicted_forced: int = 0  # evicted inside the window because capacity was short

    @property
    def hit_rate(self) -> float:
        return self.hits / self.lookups if self.lookups else 0.0

    def as_dict(self) -> dict:
        return {**vars(self), "hit_rate": self.hit_rate}


class LayerNeuronCache:
    def __init__(self, n_neurons: int, capacity: int, hidden: int, window: int = 5, dtype=torch.float32,
                 device="cpu"):
        if capacity < 1 or capacity > n_neurons:
            raise ValueError(f"capacity must be in 1..{n_neurons} neurons, got {capacity}")
        if window < 1:
            raise ValueError(f"window must be >= 1 token, got {window}")
        self.n_neurons, self.capacity, self.hidden, self.window = n_neurons, capacity, hidden, window
        self.buf = torch.zeros(capacity, 3, hidden, dtype=dtype, device=device)  # (c, 3, hidden), never reallocated
        self.slot_of = torch.full((n_neurons,), -1, dtype=torch.long)  # id -> slot, -1: not resident
        self.id_of = torch.full((capacity,), -1, dtype=torch.long)  # slot -> id
        self.last_use = torch.zeros(capacity, dtype=torch.long)  # step of last use, for LRU inside the window
        self.n = 0
        self.step = 1  # the current token; step_window advances it
        self.recent: deque[torch.Tensor] = deque(maxlen=window)  # used ids of the last k tokens
        self.stats = CacheStats()

    # -- queries ---------------------------------------------------------------------------------------------
    def _check_ids(self, ids: torch.Tensor) -> torch.Tensor:
        ids = torch.as_tensor(ids, dtype=torch.long).flatten().cpu()
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.n_neurons):
            raise ValueError(f"neuron ids must be in 0..{self.n_neurons - 1}")
        return ids

    def lookup(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (hit_ids, miss_ids). Hits are marked used by the current token, so `insert` never evicts them."""
        ids = self._check_ids(ids).unique()
        slots = self.slot_of[ids]
        hit = slots >= 0
        self.last_use[slots[hit]] = self.step
        self.stats.lookups += ids.numel()
        self.stats.hits += int(hit.sum())
        return ids[hit], ids[~hit]

    def slots(self, ids: torch.Tensor) -> torch.Tensor:
        ids = self._check_ids(ids)
        s = self.slot_of[ids]
        if (s < 0).any():
            raise KeyError(f"neurons {ids[s < 0][:8].tolist()} are not resident; insert them first")
        return s

    def gather(self, ids: torch.Tensor) -> torch.Tensor:
        """(n, 3, hidden) copy of the bundles of `ids` (all must be resident), in the order given."""
        return self.buf.index_select(0, self.slots(ids).to(self.buf.device))

    def resident(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(buf[:n] view (n, 3, hidden), ids (n,)): every resident neuron, without a copy."""
        return self.buf[:self.n], self.id_of[:self.n]

    @property
    def bytes_resident(self) -> int:
        return self.n * 3 * self.hidden * self.buf.element_size()

    @property
    def bytes_capacity(self) -> int:
        return self.buf.numel() * self.buf.element_size()

    # -- updates ---------------------------------------------------------------------------------------------
    def insert(self, ids: torch.Tensor, bundles: torch.Tensor) -> None:
        """Append bundles (m, 3, hidden) of non-resident `ids`. If the buffer is full, the least recently used
        neurons not used by the current token are evicted first (counted in stats.evicted_forced)."""
        ids = self._check_ids(ids)
        m = ids.numel()
        if m == 0:
            return
        if bundles.shape != (m, 3, self.hidden):
            raise ValueError(f"bundles must be ({m}, 3, {self.hidden}), got {tuple(bundles.shape)}")
        if (self.slot_of[ids] >= 0).any() or ids.unique().numel() != m:
            raise ValueError("insert takes distinct ids that are not resident (use lookup's miss_ids)")
        short = self.n + m - self.capacity
        if short > 0:
            used = self.last_use[:self.n]
            free = (used < self.step).nonzero().flatten()  # not needed by this token
            if free.numel() < short:
                raise ValueError(f"one token needs {self.n - free.numel() + m} neurons in this layer but the cache "
                                 f"holds {self.capacity}; raise the memory budget or lower the predicted set")
            victims = free[used[free].argsort(stable=True)[:short]]  # least recently used first
            self.stats.evicted_forced += short
            self._delete_slots(victims)
        lo, hi = self.n, self.n + m
        self.buf[lo:hi].copy_(bundles)
        self.id_of[lo:hi] = ids
        self.slot_of[ids] = torch.arange(lo, hi)
        self.last_use[lo:hi] = self.step
        self.n = hi
        self.stats.inserted += m

    def _delete_slots(self, slots: torch.Tensor) -> None:
        """Free `slots` (distinct, all < n) by moving the last used slots into the holes, as the paper does."""
        d = slots.numel()
        if d == 0:
            return
        keep_n = self.n - d
        gone = torch.zeros(self.n, dtype=torch.bool)
        gone[slots] = True
        holes = gone[:keep_n].nonzero().flatten()  # freed slots that must be refilled to stay packed
        movers = (~gone[keep_n:]).nonzero().flatten() + keep_n  # kept slots past the new end
        self.slot_of[self.id_of[slots]] = -1
        if holes.numel():
            dev = self.buf.device
            self.buf[holes.to(dev)] = self.buf[movers.to(dev)]
            self.id_of[holes] = self.id_of[movers]
            self.last_use[holes] = self.last_use[movers]
            self.slot_of[self.id_of[holes]] = holes
        self.id_of[keep_n:self.n] = -1
        self.n = keep_n

    def step_window(self, used_ids: torch.Tensor) -> None:
        """Record the neurons the current token used and move on to the next token."""
        used = self._check_ids(used_ids).unique()
        s = self.slot_of[used]
        self.last_use[s[s >= 0]] = self.step
        self.recent.append(used)
        self.step += 1

    def evict_outside_window(self) -> int:
        """Evict every resident neuron not used by the last `window` tokens; returns how many."""
        keep = torch.zeros(self.n_neurons, dtype=torch.bool)
        for r in self.recent:
            keep[r] = True
        ids = self.id_of[:self.n]
        victims = (~keep[ids]).nonzero().flatten()
        self._delete_slots(victims)
        self.stats.evicted_window += victims.numel()
        return victims.numel()

    def load(self, ids: torch.Tensor, read) -> torch.Tensor:
        """lookup + read(miss_ids) -> bundles + insert + gather: the bundles of `ids` (n, 3, hidden)."""
        _, miss = self.lookup(ids)
        if miss.numel():
            self.insert(miss, read(miss))
        return self.gather(ids)

    def check(self) -> None:
        """Assert the maps are consistent (tests)."""
        ids = self.id_of[:self.n]
        assert (ids >= 0).all() and ids.unique().numel() == self.n
        assert (self.slot_of[ids] == torch.arange(self.n)).all()
        assert int((self.slot_of >= 0).sum()) == self.n
        assert (self.id_of[self.n:] == -1).all()


class NeuronCache:
    """One `LayerNeuronCache` per layer (`cache[l]`), with totals. capacity: neurons per layer (int or list)."""

    def __init__(self, n_layers: int, n_neurons: int, capacity: int | list[int], hidden: int, window: int = 5,
                 dtype=torch.float32, device="cpu"):
        caps = [capacity] * n_layers if isinstance(capacity, int) else list(capacity)
        if len(caps) != n_layers:
            raise ValueError(f"{len(caps)} capacities for {n_layers} layers")
        self.layers = [LayerNeuronCache(n_neurons, c, hidden, window, dtype, device) for c in caps]

    def __getitem__(self, layer: int) -> LayerNeuronCache:
        return self.layers[layer]

    def __len__(self) -> int:
        return len(self.layers)

    @staticmethod
    def bytes_per_neuron(hidden: int, dtype=torch.float32) -> int:
        return 3 * hidden * torch.empty(0, dtype=dtype).element_size()

    def stats(self) -> dict:
        tot = CacheStats()
        for c in self.layers:
            for k, v in vars(c.stats).items():
                setattr(tot, k, getattr(tot, k) + v)
        return {**tot.as_dict(), "bytes_resident": sum(c.bytes_resident for c in self.layers),
                "bytes_capacity": sum(c.bytes_capacity for c in self.layers)}
