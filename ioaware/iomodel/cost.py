"""`Cost`: the FLOPs and the bytes read and written at each memory level by a piece of work."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

LEVELS = ("sram", "l2", "hbm", "dram", "flash")


@dataclass(frozen=True)
class Traffic:
    """Bytes read and written at one memory level. Traffic adds (+) and scales (* k).

    Examples:
        >>> (Traffic(100.0, 20.0) + Traffic(5.0, 5.0) * 2).total
        140.0
    """

    read: float = 0.0
    write: float = 0.0

    @property
    def total(self) -> float:
        """read + write."""
        return self.read + self.write

    def __add__(self, other: Traffic) -> Traffic:
        return Traffic(self.read + other.read, self.write + other.write)

    def __mul__(self, k: float) -> Traffic:
        return Traffic(self.read * k, self.write * k)

    __rmul__ = __mul__


@dataclass(frozen=True)
class Cost:
    """FLOPs plus bytes moved per memory level. Costs add (+) and scale (* k).

    Examples:
        >>> step = Cost.of(flops=2e9, hbm=(1e9, 1e6), label="matvec")
        >>> total = step * 32 + Cost.of(flops=1e6, dram=(4e6, 0))
        >>> total.bytes("hbm"), total.read("dram"), round(step.intensity(), 2)
        (32032000000.0, 4000000.0, 2.0)
    """

    flops: float = 0.0
    traffic: dict[str, Traffic] = field(default_factory=dict)
    label: str = ""

    @classmethod
    def of(cls, flops: float = 0.0, label: str = "", **levels: tuple[float, float] | Traffic) -> Cost:
        """`Cost.of(flops=..., hbm=(read_bytes, write_bytes))`; levels are those of `LEVELS`.

        Examples:
            >>> Cost.of(flops=1e6, sram=(4096, 0), hbm=Traffic(1024.0, 512.0)).traffic["hbm"].write
            512.0
        """
        t: dict[str, Traffic] = {}
        for name, v in levels.items():
            if name not in LEVELS:
                raise ValueError(f"unknown memory level {name!r}; use one of {LEVELS}")
            t[name] = v if isinstance(v, Traffic) else Traffic(float(v[0]), float(v[1]))
        return cls(float(flops), t, label)

    def bytes(self, level: str = "hbm") -> float:
        """Bytes read plus written at `level` (0 where the cost moves nothing there)."""
        return self.traffic.get(level, Traffic()).total

    def read(self, level: str = "hbm") -> float:
        """Bytes read at `level`."""
        return self.traffic.get(level, Traffic()).read

    def written(self, level: str = "hbm") -> float:
        """Bytes written at `level`."""
        return self.traffic.get(level, Traffic()).write

    def intensity(self, level: str = "hbm") -> float:
        """Arithmetic intensity: FLOPs per byte moved at `level` (inf where nothing moves).

        Examples:
            >>> Cost.of(flops=1e9, hbm=(1e6, 1e6)).intensity("hbm"), Cost.of(flops=1.0).intensity()
            (500.0, inf)
        """
        b = self.bytes(level)
        return self.flops / b if b else float("inf")

    def __add__(self, other: Cost) -> Cost:
        keys = set(self.traffic) | set(other.traffic)
        t = {k: self.traffic.get(k, Traffic()) + other.traffic.get(k, Traffic()) for k in keys}
        label = " + ".join(x for x in (self.label, other.label) if x)
        return Cost(self.flops + other.flops, t, label)

    def __mul__(self, k: float) -> Cost:
        return Cost(self.flops * k, {n: v * k for n, v in self.traffic.items()}, self.label)

    __rmul__ = __mul__

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: label, flops and per-level read/write bytes (what `--json` reports write)."""
        return {"label": self.label, "flops": self.flops,
                "bytes": {k: {"read": v.read, "write": v.write} for k, v in self.traffic.items()}}
