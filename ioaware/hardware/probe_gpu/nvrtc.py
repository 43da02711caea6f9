"""Compile CUDA C at run time with NVRTC (through CuPy, imported only here and only when a GPU probe runs) and
launch it. No build step: the sources are strings (cuda_src.py), the cubins live in a temporary folder."""

from __future__ import annotations

import os
import tempfile
import time


def cupy_or_reason():
    """(cupy module, None) or (None, why it cannot be used): the CUDA C sections need it, the rest do not."""
    try:
        import cupy  # noqa: F401 - imported lazily: only a GPU probe needs it

        cupy.cuda.runtime.getDeviceCount()
        return cupy, None
    except Exception as e:  # noqa: BLE001 - any failure means: skip the CUDA C sections, say why
        return None, (f"CuPy is not usable ({type(e).__name__}: {e}); install the wheel matching the driver's "
                      "CUDA (pip install cupy-cuda12x or cupy-cuda13x) for the CUDA C sections")


class Compiler:
    """Compiles each source once for this GPU (sm_XY, sm_90a on Hopper so wgmma assembles) and caches the module."""

    def __init__(self, cupy, major: int, minor: int):
        self.cp = cupy
        self.arch = f"sm_{major}{minor}" + ("a" if major == 9 else "")
        self.hopper = major == 9
        self._dir = tempfile.mkdtemp(prefix="ioaware-probe-gpu-")
        self._mods: dict[str, object] = {}
        self.seconds = 0.0  # total compile time, reported in the JSON

    def module(self, name: str, source: str):
        if name in self._mods:
            return self._mods[name]
        from cupy.cuda import nvrtc

        t0 = time.perf_counter()
        prog = nvrtc.createProgram(source, f"{name}.cu", [], [])
        try:
            try:
                nvrtc.compileProgram(prog, [f"-arch={self.arch}", "-std=c++17"])
            except nvrtc.NVRTCError as e:
                log = nvrtc.getProgramLog(prog)
                raise RuntimeError(f"NVRTC could not compile {name} for {self.arch}: {e}\n{log[-4000:]}") from None
            cubin = nvrtc.getCUBIN(prog)
        finally:
            nvrtc.destroyProgram(prog)
        path = os.path.join(self._dir, f"{name}.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        mod = self.cp.RawModule(path=path)
        self._mods[name] = mod
        self.seconds += time.perf_counter() - t0
        return mod

    def kernel(self, module: str, source: str, name: str):
        return self.module(module, source).get_function(name)


def nvrtc_version(cupy) -> str | None:
    try:
        from cupy.cuda import nvrtc

        return ".".join(map(str, nvrtc.getVersion()))
    except Exception:  # noqa: BLE001 - a version string is informational
        return None


def launch_timed(cupy, kernel, grid, block, args, reps: int = 1, warmup: int = 0) -> list[float]:
    """Launch a kernel and time each launch with CUDA events on CuPy's current stream; milliseconds per launch."""
    for _ in range(warmup):
        kernel(grid, block, args)
    out = []
    for _ in range(reps):
        e0, e1 = cupy.cuda.Event(), cupy.cuda.Event()
        e0.record()
        kernel(grid, block, args)
        e1.record()
        e1.synchronize()
        out.append(cupy.cuda.get_elapsed_time(e0, e1))
    return out
