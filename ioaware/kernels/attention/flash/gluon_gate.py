"""Whether the Gluon forward (gluon_fwd.py) may run: a check that never imports it.

Gluon (`triton.experimental.gluon`) is experimental and its API changes between Triton releases (3.6's
`warp_specialize` takes a list of (function, args) pairs; later releases changed it). gluon_fwd.py was written against
the releases in GLUON_TRITON_VERSIONS; on any other Triton, on a GPU that is not sm_90, under the interpreter or for
inputs it was not written for, `gluon_refusal` says why in one line and the caller runs kernel.py / hopper.py instead.
"""

from __future__ import annotations

import functools

import torch

# Triton releases (major.minor) whose Gluon API gluon_fwd.py was written against (read from the 3.6.0 wheel)
GLUON_TRITON_VERSIONS = ("3.6",)
GLUON_HEAD_DIMS = (64, 128)
# where IOAWARE_GLUON=auto (the default) sends the forward to Gluon: the head dims at which fa3_s3 beat the Triton
# kernels at every measured point on the H200 (bf16, T 1k-32k, causal and not: 0.86-1.05x cuDNN against 0.67-0.93x,
# benchmarks/results/attention-gluon-fa3s3-h200-2026-12-03.json, attention-gluon-fa3s3-d128b-h200-2026-12-03.json);
# at D 64 the Triton kernels were as fast or faster (attention-gluon-d64-h200-2026-12-03.json)
GLUON_AUTO_HEAD_DIMS = (128,)


@functools.cache
def triton_release() -> str:
    """The installed Triton's major.minor ('3.6'), or '' when Triton is missing."""
    try:
        import triton
    except ImportError:
        return ""
    return ".".join(triton.__version__.split("+")[0].split(".")[:2])


def triton_refusal() -> str | None:
    """One line when this Triton's Gluon is not the one gluon_fwd.py was written for; None when it is."""
    rel = triton_release()
    if rel not in GLUON_TRITON_VERSIONS:
        return (f"gluon attention: written for triton {' / '.join(GLUON_TRITON_VERSIONS)} (Gluon's API changes between "
                f"releases), found {rel or 'no triton'}")
    return None


@functools.cache
def _sm_major(index: int) -> int:
    return torch.cuda.get_device_capability(index)[0]


def gluon_refusal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> str | None:
    """None when gluon_fwd.py can take (q, k, v) here; otherwise the one-line reason it cannot. Checks run cheapest
    first and never initialise CUDA for CPU tensors."""
    reason = triton_refusal()
    if reason is not None:
        return reason
    import os

    if os.environ.get("TRITON_INTERPRET", "") == "1":
        return "gluon attention: Triton's interpreter does not run Gluon kernels"
    if q.device.type != "cuda":
        return f"gluon attention: needs CUDA tensors, got {q.device.type}"
    major = _sm_major(q.device.index if q.device.index is not None else torch.cuda.current_device())
    if major != 9:
        return f"gluon attention: written for Hopper (sm_90: wgmma, TMA), this GPU is sm_{major}x"
    if not (q.dtype == k.dtype == v.dtype == torch.bfloat16):
        return f"gluon attention: bf16 only, got {q.dtype}"
    B, Tq, Hq, D = q.shape
    if D not in GLUON_HEAD_DIMS:
        return f"gluon attention: head_dim {D} is not one of {GLUON_HEAD_DIMS}"
    if k.shape[1] != Tq:
        return f"gluon attention: needs seqlen_q == seqlen_k, got {Tq} and {k.shape[1]}"
    if not all(t.is_contiguous() and t.data_ptr() % 16 == 0 for t in (q, k, v)):
        return "gluon attention: q, k, v must be contiguous and 16-byte aligned (TMA descriptors)"
    return None


__all__ = ["GLUON_AUTO_HEAD_DIMS", "GLUON_HEAD_DIMS", "GLUON_TRITON_VERSIONS", "gluon_refusal", "triton_refusal"]
