"""What every section of the probe shares: the device, CuPy and the NVRTC compiler (or why they are missing), event
timing, and a background sampler of the SM clock through NVML (nvidia-ml-py), so the JSON says what clock each
section ran at."""

from __future__ import annotations

import statistics
import subprocess
import threading
import time

from ..specs import HardwareSpec
from .nvrtc import Compiler, cupy_or_reason


class ClockSampler:
    """Reads SM clock, memory clock, power and temperature every `period` seconds on a thread while the probe runs.
    NVML reads do not touch the CUDA context, so they do not disturb the kernels being timed."""

    def __init__(self, period: float = 0.05):
        self.period = period
        self.samples: list[tuple[float, float, float, float, float]] = []  # (t, sm MHz, mem MHz, W, C)
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._nvml = self._handle = None
        try:
            import pynvml  # nvidia-ml-py; optional

            pynvml.nvmlInit()
            self._nvml, self._handle = pynvml, pynvml.nvmlDeviceGetHandleByIndex(0)
        except Exception as e:  # noqa: BLE001 - without NVML the clock comes from the kernels' own windows
            self.error = f"NVML unavailable ({type(e).__name__}: {e})"

    def info(self) -> dict:
        """Driver, the card's clock limits and power limit, as NVML or nvidia-smi report them."""
        if self._nvml is None:
            return _nvidia_smi_info() | {"nvml": self.error}
        n, h = self._nvml, self._handle
        out = {}
        for key, fn in (("driver", lambda: n.nvmlSystemGetDriverVersion()),
                        ("max_sm_mhz", lambda: n.nvmlDeviceGetMaxClockInfo(h, n.NVML_CLOCK_SM)),
                        ("max_mem_mhz", lambda: n.nvmlDeviceGetMaxClockInfo(h, n.NVML_CLOCK_MEM)),
                        ("power_limit_w", lambda: n.nvmlDeviceGetPowerManagementLimit(h) / 1000),
                        ("sm_mhz_idle", lambda: n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_SM))):
            try:
                v = fn()
                out[key] = v.decode() if isinstance(v, bytes) else v
            except Exception:  # noqa: BLE001 - a field the driver does not report stays out
                pass
        return out

    def start(self) -> None:
        if self._nvml is None:
            return
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)

    def _loop(self) -> None:
        n, h = self._nvml, self._handle
        while not self._stop.is_set():
            try:
                self.samples.append((time.perf_counter(), n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_SM),
                                     n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_MEM),
                                     n.nvmlDeviceGetPowerUsage(h) / 1000,
                                     n.nvmlDeviceGetTemperature(h, n.NVML_TEMPERATURE_GPU)))
            except Exception as e:  # noqa: BLE001
                self.error = f"NVML sampling stopped ({type(e).__name__}: {e})"
                return
            self._stop.wait(self.period)

    def window(self, t0: float, t1: float) -> dict | None:
        """SM clock (median, min, max), memory clock, peak power and temperature between two perf_counter times."""
        s = [x for x in self.samples if t0 <= x[0] <= t1]
        if not s:
            return None
        sm = [x[1] for x in s]
        return {"samples": len(s), "sm_mhz_median": statistics.median(sm), "sm_mhz_min": min(sm),
                "sm_mhz_max": max(sm), "mem_mhz_median": statistics.median(x[2] for x in s),
                "power_w_max": max(x[3] for x in s), "temp_c_max": max(x[4] for x in s)}


def _nvidia_smi_info() -> dict:
    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm,clocks.sm,power.limit",
                            "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=10)
        d, mx, sm, pl = [x.strip() for x in r.stdout.strip().splitlines()[0].split(",")]
        return {"driver": d, "max_sm_mhz": float(mx), "sm_mhz_idle": float(sm), "power_limit_w": float(pl),
                "source": "nvidia-smi"}
    except Exception as e:  # noqa: BLE001 - informational
        return {"driver": None, "nvidia_smi": f"{type(e).__name__}: {e}"}


class Ctx:
    """The probe's state: torch, the device's properties, CuPy and the compiler (None where unusable)."""

    def __init__(self, quick: bool, spec: HardwareSpec):
        import torch

        self.torch = torch
        self.quick = quick
        self.spec = spec
        p = torch.cuda.get_device_properties(0)
        self.name = p.name
        self.sms = p.multi_processor_count
        self.cc = (p.major, p.minor)
        self.l2_bytes = int(getattr(p, "L2_cache_size", 0))
        self.total_memory = int(p.total_memory)
        self.cp, self.cupy_reason = cupy_or_reason()
        self.cc_ok = self.cp is not None
        self.compiler = Compiler(self.cp, p.major, p.minor) if self.cp is not None else None
        self.clock_mhz: float | None = None  # the latest in-kernel clock estimate (cycles / ns)
        self.kernel_clocks: dict[str, float] = {}  # measured key -> clock (MHz) during its kernel

    def need_cuda_c(self, hopper: bool = False) -> None:
        """Raise (the section is then reported as skipped with the reason) when CUDA C cannot run here."""
        if self.compiler is None:
            raise SkipSection(self.cupy_reason)
        if hopper and not self.compiler.hopper:
            raise SkipSection(f"needs a Hopper GPU (sm_90a); this is sm_{self.cc[0]}{self.cc[1]}")

    def time_torch(self, fn, reps: int, warmup: int = 1) -> list[float]:
        """Milliseconds per call of fn, each timed with its own pair of CUDA events on the current stream."""
        torch = self.torch
        for _ in range(warmup):
            fn()
        out = []
        for _ in range(reps):
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            e0.record()
            fn()
            e1.record()
            e1.synchronize()
            out.append(e0.elapsed_time(e1))
        return out

    def free(self) -> None:
        self.torch.cuda.empty_cache()
        if self.cp is not None:
            self.cp.get_default_memory_pool().free_all_blocks()


class SkipSection(Exception):
    """A section that cannot run on this machine (reported with the reason, not as a failure)."""


def median(xs) -> float:
    return float(statistics.median(xs))


def window_mhz(win) -> float | None:
    """The SM clock during a kernel from its (cycles, ns) window."""
    c, ns = int(win[0]), int(win[1])
    return c / ns * 1e3 if ns > 0 else None
