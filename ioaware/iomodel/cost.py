"""`Cost`: the FLOPs and the bytes read and written at each memory level by a piece of work."""

from __future__ import annotations

from dataclasses import dataclass, field

LEVELS = ("sram", "l2", "hbm", "dram", "flash")


@dataclass(frozen=True)
class Traffic:
    read: float = 0.0
    write: float = 0.0

    @property
    def total(self) -> float:
        return self.read + self.write

    def __add__(self, other: Traffic) -> Traffic:
        return Traffic(self.read + other.read, self.write + other.write)

    def __mul__(self, k: float) -> Traffic:
        return Traffic(self.read * k, self.write * k)

    __rmul__ = __mul__


@dataclass(frozen=True)
class Cost:
    """FLOPs plus bytes moved per memory level. Costs add (+) and scale (* k)."""

    flops: float = 0.0
    traffic: dict[str, Traffic] = field(default_factory=dict)
    label: str = ""

    @classmethod
    def of(cls, flops: float = 0.0, label: str = "", **levels: tuple[float, float] | Traffic) -> Cost:
        """`Cost.of(flops=..., hbm=(read_bytes, write_bytes))`."""
        t = {}
        for name, v in levels.items():
            if name not in LEVELS:
                raise ValueError(f"unknown memory level {name!r}; use one of {LEVELS}")
            t[name] = v if isinstance(v, Traffic) else Traffic(float(v[0]), float(v[1]))
        return cls(float(flops), t, label)

    def bytes(self, level: str = "hbm") -> float:
        return self.traffic.get(level, Traffic()).total

    def read(self, level: str = "hbm") -> float:
        return self.traffic.get(level, Traffic()).read

    def written(self, level: str = "hbm") -> float:
        return self.traffic.get(level, Traffic()).write

    def intensity(self, level: str = "hbm") -> float:
        """Arithmetic intensity: FLOPs per byte moved at `level`."""
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

    def as_dict(self) -> dict:
        return {"label": self.label, "flops": self.flops,
                "bytes": {k: {"read": v.read, "write": v.write} for k, v in self.traffic.items()}}
