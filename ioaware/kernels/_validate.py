"""Input checks that every op's interface shares: dtypes and devices, raised before any launch."""

from __future__ import annotations

import torch

from ..errors import DeviceError, DTypeError

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def check_dtypes_and_device(op: str, tensors: dict[str, torch.Tensor], also_on_device: dict | None = None) -> None:
    """Every tensor of `tensors` has one supported float dtype; they and `also_on_device` share one CPU/CUDA device."""
    for name, t in tensors.items():
        if t.dtype not in FLOAT_DTYPES:
            raise DTypeError(f"{op}: {name} has dtype {t.dtype}; supported: float16, bfloat16, float32")
    dtypes = [t.dtype for t in tensors.values()]
    if len(set(dtypes)) != 1:
        raise DTypeError(f"{op}: {', '.join(tensors)} must share a dtype, got {', '.join(map(str, dtypes))}")
    every = {**tensors, **(also_on_device or {})}
    devices = [t.device for t in every.values()]
    if len(set(devices)) != 1:
        raise DeviceError(f"{op}: {', '.join(every)} must be on one device, got {', '.join(map(str, devices))}")
    if devices[0].type not in ("cuda", "cpu"):
        raise DeviceError(f"{op}: device {devices[0]} is not supported; use a CUDA GPU or the CPU")
