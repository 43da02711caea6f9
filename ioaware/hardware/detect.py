"""Which machine are we on? GPUs are matched by name; on CPU the host is described from /proc."""

from __future__ import annotations

import os
import platform

from .specs import GB, SPECS, HardwareSpec

_NAME_KEYS = [("h200", "h200"), ("h100", "h100"), ("h800", "h100"), ("a100", "a100"), ("v100", "v100")]


def spec_key_for(device_name: str) -> str | None:
    """The spec table's key for a device name as CUDA reports it ('NVIDIA H200' -> 'h200'); None if not listed."""
    low = device_name.lower()
    return next((key for needle, key in _NAME_KEYS if needle in low), None)


def _host_spec() -> HardwareSpec:
    mem = 0.0
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem = float(line.split()[1]) * 1024
    except OSError:
        pass
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    cores = os.cpu_count() or 1
    # A CPU's peak depends on its vector units and clocks, which /proc does not tell reliably; we use a
    # conservative 32 fp32 FLOP/cycle/core at 2.5 GHz (AVX2 FMA x2) and mark it as an estimate.
    peak = cores * 32 * 2.5e9
    return HardwareSpec(
        key="host", name=f"{cpu} ({cores} cores)", kind="cpu",
        peak_flops={"float32": peak, "bfloat16": peak, "float16": peak},
        hbm_bytes=mem, hbm_bandwidth_Bps=20 * GB, l2_bytes=32 * 1024**2, smem_per_sm_bytes=48 * 1024,
        num_sms=cores, pcie_Bps=0.0,
        sources={"flops": "estimate: cores x 32 FLOP/cycle x 2.5 GHz", "hbm": "MemTotal from /proc/meminfo; "
                 "bandwidth an estimate (20 GB/s) until `ioaware probe` measures it"},
    )


def detect(device: str | None = None) -> HardwareSpec:
    """The spec of the current device: the first CUDA GPU when one is present, otherwise the host.

    Looking at the GPU initialises CUDA, so this is only ever called on demand, never at import.

    Examples:
        >>> detect("cpu").kind                          # the host: its cores and memory, no GPU asked about
        'cpu'
    """
    if device in (None, "cuda") or (device or "").startswith("cuda"):
        try:
            import torch

            if torch.cuda.is_available():
                name = torch.cuda.get_device_name(0)
                key = spec_key_for(name)
                if key is not None:
                    return SPECS[key]
                props = torch.cuda.get_device_properties(0)
                return HardwareSpec(
                    key="cuda", name=name, peak_flops={}, hbm_bytes=float(props.total_memory),
                    hbm_bandwidth_Bps=0.0, l2_bytes=float(getattr(props, "L2_cache_size", 0)),
                    smem_per_sm_bytes=float(getattr(props, "shared_memory_per_multiprocessor", 0)),
                    num_sms=props.multi_processor_count, pcie_Bps=0.0,
                    sources={"all": "torch.cuda.get_device_properties (no datasheet entry for this card)"},
                )
        except Exception:  # noqa: BLE001 - no usable CUDA means: describe the host
            pass
    return _host_spec()
