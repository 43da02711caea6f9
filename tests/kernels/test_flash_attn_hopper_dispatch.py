"""The Hopper forward (hopper.py) is GPU-only: dispatch must never pick it on CPU tensors or under the interpreter."""

import torch

from ioaware.kernels._dispatch import load_kernel_module


def test_flash_attn_hopper_not_dispatched_on_cpu():
    kernel = load_kernel_module("ioaware.kernels.attention.flash.kernel")
    q, k, v = (torch.randn(1, kernel.HOPPER_MIN_T[True], 1, 128, dtype=torch.bfloat16) for _ in range(3))
    assert not kernel._use_hopper(q, k, v, False)
    assert not kernel._use_hopper(q, k, v, True)
    assert not torch.cuda.is_initialized()


def test_flash_attn_hopper_supported_rules():
    from ioaware.kernels.attention.flash.hopper import hopper_supported

    q, k, v = (torch.randn(2, 64, 4, 128, dtype=torch.float16) for _ in range(3))
    assert hopper_supported(q, k, v)
    assert not hopper_supported(q.float(), k.float(), v.float())  # fp32
    assert not hopper_supported(q[..., :96], k[..., :96], v[..., :96])  # D = 96 (and not contiguous)
    assert not hopper_supported(q, k[:, :32], v[:, :32])  # Tq != Tk
    assert not hopper_supported(q.transpose(1, 2).contiguous().transpose(1, 2), k, v)  # (B, H, T, D) storage


def test_flash_attn_hopper_bwd_not_dispatched_on_cpu():
    kernel = load_kernel_module("ioaware.kernels.attention.flash.kernel")
    T = kernel.HOPPER_BWD_MIN_T
    q, k, v, do = (torch.randn(1, T, 1, 128, dtype=torch.bfloat16) for _ in range(4))
    assert not kernel._use_hopper_bwd(q, k, v, do, torch.zeros(1, 1, T))
    assert not torch.cuda.is_initialized()
