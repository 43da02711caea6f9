"""Measured values for the hardware tables: what `ioaware probe gpu` found on a card, each with its file and date.

Where the probe files are (all searched; for each quantity the newest file that measured it wins):

1. `<cache_dir>/probe/gpu/*.json`: `ioaware probe gpu` keeps a copy of every complete run there (cache_dir is
   IOAWARE_CACHE_DIR, default ~/.cache/ioaware); a result written elsewhere with `--json F` can be copied in.
2. `benchmarks/results/probe-gpu-*.json` of the source tree, when ioaware runs from a checkout: the committed device
   runs (found beside the package, not from the working directory, so the answer does not depend on where you are).

Explicit `files=` (`ioaware hardware --measured --from F`) replace the search. "Newest" is the file's `date`, then a
full run before a `--quick` one of the same day, then the file's modification time. Interrupted runs (`partial`)
and JSON files that are not probe results are skipped. Each quantity's value is the best of the probe keys that
measure it in that one file (a roof is the best rate a kernel sustained), and names the key that gave it.

What feeds `measured_spec` (and through it the iomodel's roofline with `measured=True`): the tensor-core peaks per
dtype and the HBM and L2 bandwidths. The L2 *size* stays the table's: the probe's apparent capacity is where
re-reads fall half-way from cache to HBM, a different quantity, shown beside it. A file belongs to a spec when its
device name is that part (`card_of`: an H800 or an H200 NVL is not the table's H100 or H200 SXM).
"""

from __future__ import annotations

import dataclasses
import datetime
import fnmatch
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..env import settings
from ..files import write_json_atomic
from .detect import spec_key_for
from .specs import SPECS, HardwareSpec, get_spec

PROBE_TOOL = "ioaware probe gpu"  # the `tool` field of a probe result
REPO_RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"  # exists in a source checkout only


@dataclass(frozen=True)
class Quantity:
    name: str
    what: str
    unit: str  # the unit shown; `scale` SI units make one
    scale: float
    keys: tuple[tuple[str, float], ...] = ()  # (fnmatch pattern of a probe key, SI units per unit of that key)
    device_field: str = ""  # or a field of the file's `device` (what the driver reports)
    spec_field: str = ""  # the HardwareSpec number it is compared with ("peak:<dtype>" for a peak)
    feeds: bool = False  # replaces the spec's number in measured_spec


def _tc(dts: tuple[str, ...]) -> tuple[tuple[str, float], ...]:
    return tuple((f"tc.{fam}.{dt}.*", 1e12) for dt in dts for fam in ("wgmma", "mma")) + \
        tuple((f"tc.torch.{dt}", 1e12) for dt in dts)


QUANTITIES: tuple[Quantity, ...] = (
    Quantity("peak.bfloat16", "bf16 tensor cores, best of wgmma / mma.sync / torch.matmul", "TFLOP/s", 1e12,
             _tc(("bf16",)), spec_field="peak:bfloat16", feeds=True),
    Quantity("peak.float16", "fp16 tensor cores, best of wgmma / mma.sync / torch.matmul", "TFLOP/s", 1e12,
             _tc(("fp16",)), spec_field="peak:float16", feeds=True),
    Quantity("peak.tfloat32", "tf32 tensor cores, best of wgmma / mma.sync / torch.matmul", "TFLOP/s", 1e12,
             _tc(("tf32",)), spec_field="peak:tfloat32", feeds=True),
    # mma.sync fp8 is emulated on sm_90 (probe_gpu/README.md): it never wins the max against wgmma
    Quantity("peak.float8", "fp8 (e4m3, e5m2) tensor cores, best of wgmma / torch._scaled_mm", "TFLOP/s", 1e12,
             _tc(("e4m3", "e5m2")), spec_field="peak:float8", feeds=True),
    Quantity("hbm_bandwidth", "HBM, best of the probe's read and copy kernels and PyTorch's copy", "GB/s", 1e9,
             (("bw.hbm_read", 1e9), ("bw.hbm_copy", 1e9), ("bw.hbm_copy_tma", 1e9), ("bw.torch_copy", 1e9),
              ("async.*.t*.hbm", 1e9)), spec_field="hbm_bandwidth_Bps", feeds=True),
    Quantity("l2_bandwidth", "L2 hits, whole chip, best of re-read and streams through shared memory", "GB/s", 1e9,
             (("bw.l2", 1e12), ("async.*.t*.l2", 1e9)), spec_field="l2_bandwidth_Bps", feeds=True),
    Quantity("l2_bytes", "L2 size as the driver reports it", "MiB", 2**20, device_field="l2_bytes",
             spec_field="l2_bytes"),
    Quantity("l2_capacity", "L2 apparent capacity (re-read bandwidth half-way down)", "MiB", 2**20,
             (("l2.capacity_mib", 2**20),), spec_field="l2_bytes"),
    Quantity("num_sms", "SMs", "", 1.0, device_field="sms", spec_field="num_sms"),
    Quantity("sm_clock", "SM clock during the run (in-kernel cycles / ns)", "MHz", 1e6, (("clock.sm_mhz", 1e6),)),
)
_BY_NAME = {q.name: q for q in QUANTITIES}


@dataclass(frozen=True)
class Measurement:
    """One measured quantity (SI units) with the probe key, file and date it came from.

    Examples:
        >>> from ioaware.hardware import measured
        >>> from ioaware.hardware.probe_results import REPO_RESULTS
        >>> probe = REPO_RESULTS / "probe-gpu-h200-2026-12-03.json"        # a committed `ioaware probe gpu` run
        >>> m = measured("h200", files=[probe]).get("hbm_bandwidth")
        >>> m.quantity, m.file, m.date
        ('hbm_bandwidth', 'benchmarks/results/probe-gpu-h200-2026-12-03.json', '2026-12-03')
    """

    quantity: str
    value: float  # SI: FLOP/s, B/s, bytes, Hz
    key: str  # the probe key (or device.<field>) that gave it
    file: str
    date: str
    quick: bool


@dataclass(frozen=True)
class Measured:
    """The newest measurement of each quantity on one card, and the files they came from.

    Examples:
        >>> from ioaware.hardware import measured
        >>> from ioaware.hardware.probe_results import REPO_RESULTS
        >>> probe = REPO_RESULTS / "probe-gpu-h200-2026-12-03.json"        # a committed `ioaware probe gpu` run
        >>> m = measured("h200", files=[probe])
        >>> m.card, m.get("no-such-quantity"), m.source("hbm_bandwidth").startswith("measured: ")
        ('h200', None, True)
    """

    card: str  # the spec key ('h200'), or the device name where the table has no entry
    device: str  # the name CUDA reported
    values: dict[str, Measurement]
    files: tuple[str, ...]  # the probe files for this card, newest first
    skipped: tuple[str, ...] = ()  # searched files that were not usable probe results, with why

    def get(self, quantity: str) -> Measurement | None:
        """The measurement of `quantity` ('peak.bfloat16', 'hbm_bandwidth', ...), or None."""
        return self.values.get(quantity)

    def source(self, quantity: str) -> str:
        """Where `quantity` was measured: probe key, file and date (the spec's source once `measured_spec` ran)."""
        m = self.values[quantity]
        return f"measured: {m.key} in {m.file} ({m.date}{', --quick' if m.quick else ''})"


def search_dirs() -> list[Path]:
    """Where probe results are looked for, in the order documented above."""
    dirs = [settings().cache_dir / "probe" / "gpu"]
    if REPO_RESULTS.is_dir():
        dirs.append(REPO_RESULTS)
    return dirs


def _candidates(dirs: Iterable[str | Path]) -> list[Path]:
    out = []
    for d in dirs:
        d = Path(d)
        if d.is_file():
            out.append(d)
        elif d.is_dir():  # the results folder holds other benchmarks' files too
            out += sorted(d.glob("*.json" if d != REPO_RESULTS else "probe-gpu-*.json"))
    return out


def load_probe(path: str | Path) -> dict[str, Any]:
    """A probe result from disk; ValueError with one line where the file is not one."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read a probe result ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict) or data.get("tool") != PROBE_TOOL:
        raise ValueError(f"{path}: not an `ioaware probe gpu` result (no \"tool\": \"{PROBE_TOOL}\")")
    if not isinstance(data.get("measured"), dict) or not isinstance(data.get("device"), dict):
        raise ValueError(f"{path}: a probe result without its \"measured\" and \"device\" sections")
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", str(data.get("date", ""))):
        raise ValueError(f"{path}: a probe result without a date (YYYY-MM-DD)")
    return data


_OTHER_SKU = ("pcie", "nvl")  # the table's GPUs are SXM parts; a PCIe or NVL card (other clocks, power) is its own


def card_of(name: str) -> str:
    """The card a spec key, alias or CUDA device name denotes: the spec's key where the name is that part, else the
    lowercased name. Stricter than `detect`, which describes an H800 or a PCIe card by the nearest spec: a
    measurement belongs to the card that was measured."""
    try:
        return get_spec(name).key
    except KeyError:
        pass
    low = name.strip().lower()
    key = spec_key_for(low)
    return key if key and key in low and not any(s in low for s in _OTHER_SKU) else low


def _value(q: Quantity, data: dict) -> tuple[float, str] | None:
    if q.device_field:
        v = data["device"].get(q.device_field)
        return (float(v), f"device.{q.device_field}") if isinstance(v, (int, float)) else None
    best = None
    for key, v in data["measured"].items():
        if not isinstance(v, (int, float)) or v != v:  # skip NaN and non-numbers
            continue
        for pat, si in q.keys:
            if fnmatch.fnmatchcase(key, pat) and (best is None or v * si > best[0]):
                best = (float(v) * si, key)
    return best


def measured(device: str, files: Iterable[str | Path] | None = None,
             dirs: Iterable[str | Path] | None = None) -> Measured | None:
    """The newest probe measurements of `device` (spec key, alias or CUDA name), or None where no file has it.

    files: probe JSON files to use instead of searching; dirs: folders (or files) to search instead of
    search_dirs(). A file given in `files` that is not a probe result raises ValueError; in a search it is skipped.

    Examples:
        >>> from ioaware.hardware.probe_results import REPO_RESULTS
        >>> probe = REPO_RESULTS / "probe-gpu-h200-2026-12-03.json"        # a committed `ioaware probe gpu` run
        >>> measured("H200", files=[probe]).files
        ('benchmarks/results/probe-gpu-h200-2026-12-03.json',)
        >>> measured("v100", files=[probe]) is None                        # no probe of that card
        True
    """
    card = card_of(device)
    every, skipped = _load_all(files, dirs)
    found = [t for t in every if t[3] == card]
    if not found:
        return None
    values = {}
    for q in QUANTITIES:
        for _, p, data, _ in found:
            v = _value(q, data)
            if v is not None:
                values[q.name] = Measurement(q.name, v[0], v[1], _shown(p), data["date"], bool(data.get("quick")))
                break
    return Measured(card, str(found[0][2]["device"].get("name", "")), values, tuple(_shown(t[1]) for t in found),
                    tuple(skipped))


def _shown(p: Path) -> str:
    """A committed file by its path in the checkout (as docs cite it), any other by its absolute path."""
    p = p.resolve()
    root = REPO_RESULTS.parents[1]
    return str(p.relative_to(root)) if REPO_RESULTS.is_dir() and p.is_relative_to(root) else str(p)


def _load_all(files: Iterable[str | Path] | None = None,
              dirs: Iterable[str | Path] | None = None) -> tuple[list[tuple], list[str]]:
    """(sort key, path, data, card) of every complete probe result, newest first, and the skipped files' reasons."""
    paths = [Path(f) for f in files] if files is not None else _candidates(search_dirs() if dirs is None else dirs)
    found, skipped = [], []
    for p in paths:
        try:
            data = load_probe(p)
        except ValueError as e:
            if files is not None:
                raise
            skipped.append(str(e))
            continue
        if not data.get("partial"):
            card = card_of(str(data["device"].get("name", "")))
            found.append(((data["date"], not data.get("quick"), p.stat().st_mtime), p, data, card))
    found.sort(key=lambda t: t[0], reverse=True)
    return found, skipped


def datasheet_value(q: Quantity, spec: HardwareSpec) -> float | None:
    if q.spec_field.startswith("peak:"):
        return spec.peak_flops.get(q.spec_field.split(":", 1)[1])
    v = getattr(spec, q.spec_field, None) if q.spec_field else None
    return float(v) if v else None


def measured_spec(spec: HardwareSpec, m: Measured | None) -> HardwareSpec:
    """`spec` with its peaks and bandwidths replaced by the measured ones where `m` has them, each source naming
    the file and date; the spec itself where `m` is None.

    Examples:
        >>> from ioaware.hardware import get_spec, measured
        >>> from ioaware.hardware.probe_results import REPO_RESULTS
        >>> probe = REPO_RESULTS / "probe-gpu-h200-2026-12-03.json"        # a committed `ioaware probe gpu` run
        >>> spec = measured_spec(get_spec("h200"), measured("h200", files=[probe]))
        >>> spec.sources["hbm_bandwidth"]
        'measured: async.bulk.t8192.hbm in benchmarks/results/probe-gpu-h200-2026-12-03.json (2026-12-03)'
    """
    if m is None:
        return spec
    peaks, sources = dict(spec.peak_flops), dict(spec.sources)
    fields: dict[str, Any] = {}  # HardwareSpec fields the probe measured (bandwidths)
    for q in QUANTITIES:
        got = m.get(q.name)
        if not q.feeds or got is None:
            continue
        if q.spec_field.startswith("peak:"):
            dt = q.spec_field.split(":", 1)[1]
            peaks[dt] = got.value
            sources[f"flops.{dt}"] = m.source(q.name)
        else:
            fields[q.spec_field] = got.value
            sources[q.name] = m.source(q.name)  # the datasheet's "hbm"/"l2" entries stay: they also source sizes
    return dataclasses.replace(spec, peak_flops=peaks, sources=sources, **fields)


def compare(spec: HardwareSpec | None, m: Measured) -> list[dict]:
    """One row per quantity the probe measured: datasheet value, measured value, ratio, key, file, date."""
    rows = []
    for q in QUANTITIES:
        got = m.get(q.name)
        if got is None:
            continue
        ds = datasheet_value(q, spec) if spec is not None else None
        rows.append({"card": m.card, "quantity": q.name, "what": q.what, "unit": q.unit,
                     "datasheet": None if ds is None else ds / q.scale, "measured": got.value / q.scale,
                     "ratio": got.value / ds if ds else None, "feeds_roofline": q.feeds, "key": got.key,
                     "file": got.file, "date": got.date, "quick": got.quick,
                     "datasheet_source": _ds_source(q, spec)})
    return rows


def _ds_source(q: Quantity, spec: HardwareSpec | None) -> str:
    if spec is None or not q.spec_field:
        return ""
    field = {"hbm_bandwidth_Bps": "hbm", "l2_bytes": "l2", "num_sms": "sms"}.get(q.spec_field, "flops")
    return spec.sources.get(field, "")


def cache_folder() -> Path:
    return settings().cache_dir / "probe" / "gpu"


def save_probe(result: dict[str, Any], folder: str | Path | None = None) -> Path | None:
    """Keep a complete probe result in the cache (atomically), named by card, date and time; None for a partial
    one (an interrupted run is not a measurement to build on)."""
    if result.get("partial") or result.get("tool") != PROBE_TOOL:
        return None
    name = re.sub(r"[^a-z0-9]+", "-", str(result.get("device", {}).get("name", "gpu")).lower()).strip("-")
    stamp = datetime.datetime.now().strftime("%H%M%S")
    kind = "-quick" if result.get("quick") else ""
    return write_json_atomic(Path(folder or cache_folder()) / f"{name}-{result['date']}-{stamp}{kind}.json", result)


def cards_with_files(files: Iterable[str | Path] | None = None,
                     dirs: Iterable[str | Path] | None = None) -> list[str]:
    """The cards (spec keys first, in the table's order, then other device names) that have a complete probe
    result among `files`, or in `dirs` / the search path."""
    cards = {t[3] for t in _load_all(files, dirs)[0]}
    return [k for k in SPECS if k in cards] + sorted(cards - set(SPECS))
