"""Where a model's weights live when its FFN streams to a GPU (`ioaware generate --device cuda --memory-budget`).

Three tiers, decided before any weight is read:

    HBM     the resident weights (embedding, head, attention projections, norms), the predictors (sparse mode),
            the copy slots the streamed FFN layers land in (two: layer i+1 copies while layer i computes; one in
            sparse mode, whose gather waits for the layer's own prediction), and as many whole FFN layers as the
            rest of the budget holds (the first ones: their compute hides the copy of the first streamed layer).
    pinned  the other FFN layers, in page-locked host memory (full-rate DMA), up to `--host-budget`.
    disk    what the host budget does not hold, in a layer file read by threads into pinned staging (two slots).

The budget is a share of the model's weight bytes (what "50%" means); the KV cache and activations are outside
it (stated in the summary). A budget that cannot hold the resident weights, the predictors and the slots is
refused with the minimum, before anything is loaded.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from ...errors import UnsupportedError
from ..llm.model import ModelArgs
from .streamed_ffn import BudgetError

DENSE_SLOTS = 2  # double buffer: a copy into one slot while the other's layer computes
SPARSE_SLOTS = 1  # the gather needs the layer's own prediction, so it cannot run a layer ahead
DISK_STAGING = 2  # pinned staging slots for layers read from disk


def ffn_layer_bytes(a: ModelArgs, elem: int) -> int:
    """One layer's gate, up and down weights."""
    return 3 * a.dim * a.hidden_dim * elem


def resident_bytes(a: ModelArgs, elem: int) -> int:
    """Everything but the FFN: embedding (and untied head), attention, norms."""
    return (a.n_params - a.n_layers * 3 * a.dim * a.hidden_dim) * elem


@dataclass
class OffloadPlan:
    n_layers: int
    layer_bytes: int  # one FFN layer
    resident_bytes: int  # non-FFN weights, always in HBM
    predictor_bytes: int  # sparse mode's predictors, in HBM
    slots: int  # copy slots in HBM (0 when every FFN layer is resident)
    hbm_budget: int
    host_budget: int | None  # None: no cap on pinned host memory
    hbm_layers: tuple[int, ...]
    host_layers: tuple[int, ...]
    disk_layers: tuple[int, ...]
    sparse: bool = False

    @property
    def weight_bytes(self) -> int:
        return self.resident_bytes + self.n_layers * self.layer_bytes

    @property
    def streamed_layers(self) -> tuple[int, ...]:
        return tuple(sorted(self.host_layers + self.disk_layers))

    @property
    def slot_bytes(self) -> int:
        return self.slots * self.layer_bytes

    @property
    def hbm_bytes(self) -> int:
        """Weight bytes the plan puts in HBM (resident, predictors, whole FFN layers, copy slots)."""
        return self.resident_bytes + self.predictor_bytes + len(self.hbm_layers) * self.layer_bytes + self.slot_bytes

    @property
    def staging_bytes(self) -> int:
        return DISK_STAGING * self.layer_bytes if self.disk_layers else 0

    @property
    def host_bytes(self) -> int:
        """Pinned host bytes: the host tier's layers and the disk tier's staging slots."""
        return len(self.host_layers) * self.layer_bytes + self.staging_bytes

    def dense_bytes_per_token(self) -> dict[str, int]:
        """Bytes a dense decode step moves per tier: every streamed layer once, unless the slots hold all of them
        (then they stay put after the first token). {'h2d': host->device total, 'disk': of it, read from disk}."""
        n = len(self.streamed_layers)
        if n <= self.slots:
            return {"h2d": 0, "disk": 0}
        return {"h2d": n * self.layer_bytes, "disk": len(self.disk_layers) * self.layer_bytes}

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(weight_bytes=self.weight_bytes, hbm_bytes=self.hbm_bytes, host_bytes=self.host_bytes,
                 slot_bytes=self.slot_bytes, staging_bytes=self.staging_bytes,
                 dense_bytes_per_token=self.dense_bytes_per_token())
        for k in ("hbm_layers", "host_layers", "disk_layers"):
            d[k] = list(d[k])
        return d


def parse_share(text: str, total: int, flag: str) -> int:
    """'50%' (of `total`) or a size ('8GiB', '8GB', '123') -> bytes; a one-line error naming `flag` otherwise."""
    from ...units import parse_bytes

    t = str(text).strip()
    try:
        if t.endswith("%"):
            pct = float(t[:-1])
            if not 0 < pct <= 100:
                raise ValueError("a percentage must be in (0, 100]")
            return int(total * pct / 100)
        return int(parse_bytes(t))
    except ValueError as e:
        raise BudgetError(f"{flag} {text}: {e}") from None


def plan_offload(a: ModelArgs, elem: int, hbm_budget: int, host_budget: int | None = None,
                 predictor_bytes: int = 0, sparse: bool = False) -> OffloadPlan:
    """Place every FFN layer in HBM, pinned host memory or on disk under the two budgets (bytes). Raises
    BudgetError naming the minimum when the HBM budget cannot hold the resident weights, the predictors and the
    copy slots, or the host budget cannot hold the disk tier's staging; UnsupportedError for sparse streaming with
    a disk tier (the gather reads pinned memory)."""
    from ...units import human_bytes

    L, lb = a.n_layers, ffn_layer_bytes(a, elem)
    res = resident_bytes(a, elem)
    total = res + L * lb
    if hbm_budget <= 0:
        raise BudgetError(f"--memory-budget must be positive, got {hbm_budget} B")
    if host_budget is not None and host_budget < 0:
        raise BudgetError(f"--host-budget must not be negative, got {host_budget} B")
    if res + predictor_bytes + L * lb <= hbm_budget:  # it all fits: nothing streams
        return OffloadPlan(L, lb, res, predictor_bytes, 0, hbm_budget, host_budget, tuple(range(L)), (), (), sparse)
    slots = SPARSE_SLOTS if sparse else DENSE_SLOTS
    minimum = res + predictor_bytes + slots * lb
    if hbm_budget < minimum:
        raise BudgetError(
            f"--memory-budget of {human_bytes(hbm_budget)} is below the minimum of {human_bytes(minimum)} "
            f"({minimum / total:.0%} of the {human_bytes(total)} of weights): attention, embeddings and norms "
            f"{human_bytes(res)}" + (f" + predictors {human_bytes(predictor_bytes)}" if predictor_bytes else "")
            + f" + {slots} FFN copy slot{'s' if slots > 1 else ''} of {human_bytes(lb)}")
    k = min(L, (hbm_budget - minimum) // lb)
    hbm = tuple(range(k))
    streamed = list(range(k, L))
    if host_budget is None or host_budget >= len(streamed) * lb:
        return OffloadPlan(L, lb, res, predictor_bytes, slots, hbm_budget, host_budget, hbm, tuple(streamed), (),
                           sparse)
    if sparse:
        raise UnsupportedError("sparse GPU streaming gathers neurons from pinned host memory; a --host-budget that "
                               "sends FFN layers to disk runs dense only (--gpu-ffn dense), or raise --host-budget to "
                               f"{human_bytes(len(streamed) * lb)}")
    staging = DISK_STAGING * lb
    if host_budget < staging:
        raise BudgetError(f"--host-budget of {human_bytes(host_budget)} is below the {human_bytes(staging)} of pinned "
                          f"staging the disk tier needs ({DISK_STAGING} slots of one FFN layer)")
    n_host = min(len(streamed), (host_budget - staging) // lb)
    return OffloadPlan(L, lb, res, predictor_bytes, slots, hbm_budget, host_budget, hbm,
                       tuple(streamed[:n_host]), tuple(streamed[n_host:]), sparse)


def roofline(bytes_per_token: dict[str, int], h2d_GBps: float, disk_GBps: float | None = None) -> dict:
    """The iomodel's floor for a streamed decode step: its host->device bytes at the probed pinned rate, and
    (when disk_GBps is known) the disk tier's bytes at the disk's rate, serial with nothing else hidden. The
    step cannot be faster than this; compute and attention are assumed hidden under the copies (at 8B they are
    ~1 ms of a ~170 ms step)."""
    h2d_s = bytes_per_token["h2d"] / (h2d_GBps * 1e9) if h2d_GBps > 0 else math.inf
    disk_s = 0.0
    if bytes_per_token.get("disk") and disk_GBps:
        disk_s = bytes_per_token["disk"] / (disk_GBps * 1e9)
    s = max(h2d_s, disk_s)  # the reads and the copies pipeline: the slower stream sets the pace
    return {"h2d_GBps": h2d_GBps, "disk_GBps": disk_GBps, "h2d_s_per_token": h2d_s, "disk_s_per_token": disk_s,
            "s_per_token": s, "tok_s": 1 / s if s > 0 else math.inf}
