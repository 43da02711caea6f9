"""What every benchmark shares: machine metadata, timing, the results file."""

from __future__ import annotations

import datetime as _dt
import platform
import subprocess
from pathlib import Path

# results files are written where the command runs, as the README's commands run from the repository root
RESULTS_DIR = Path("benchmarks") / "results"


def machine_info() -> dict:
    import torch

    info = {"date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"), "python": platform.python_version(),
            "torch": torch.__version__, "host": platform.node()}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(card=torch.cuda.get_device_name(0), sms=p.multi_processor_count,
                    memory_GiB=round(p.total_memory / 2**30, 1), cuda=torch.version.cuda)
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm,power.limit",
                                  "--format=csv,noheader"], capture_output=True, text=True, timeout=20).stdout
            drv, clk, pwr = [x.strip() for x in out.strip().splitlines()[0].split(",")]
            info.update(driver=drv, max_sm_clock=clk, power_limit=pwr)
        except Exception as e:  # noqa: BLE001
            info["driver"] = f"unknown ({e})"
    return info


def time_ms(fn, warmup_ms: int = 25, rep_ms: int = 100) -> float:
    """Median milliseconds of `fn` with CUDA events (triton.testing.do_bench)."""
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median"))


def ceilings() -> dict:
    """The two ceilings measured on this card now: device-to-device copy GB/s and bf16 GEMM TFLOP/s."""
    import torch

    src = torch.randint(0, 255, (1 << 30,), dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src))
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    gms = time_ms(lambda: a @ b)
    return {"copy_GBps": 2 * (1 << 30) / ms / 1e6, "gemm_bf16_TFLOPs": 2 * 8192**3 / gms / 1e9}


def graphed(fn):
    """`fn` captured in a CUDA graph (after a warm-up on a side stream); returns the replay."""
    import torch

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return g.replay


def graphed_ms(calls: list) -> float:
    """Milliseconds per call when `calls` run back to back inside one CUDA graph: the cost a small kernel has
    in a graphed decode step (no host launch cost). Give each call its own copy of the inputs, enough copies
    to overrun the L2 (50 MB on an H100), so each call reads HBM as in a real model."""
    import torch

    replay = graphed(lambda: [c() for c in calls])
    torch.cuda.synchronize()
    return time_ms(replay) / len(calls)
