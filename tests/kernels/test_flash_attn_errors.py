"""Bad input raises a specific error before any kernel is launched."""

import pytest
import torch

import ioaware
from ioaware.kernels import _dispatch


@pytest.fixture(autouse=True)
def no_launch(monkeypatch):
    def boom(name):
        raise AssertionError("a kernel module was loaded although the input was invalid")

    monkeypatch.setattr(_dispatch, "load_kernel_module", boom)
    from ioaware.kernels.attention.flash import interface

    monkeypatch.setattr(interface, "load_kernel_module", boom)


def t(*shape, dtype=torch.float16, device="cpu"):
    return torch.randn(*shape, device=device).to(dtype)


@pytest.mark.parametrize(
    "q,k,v,exc,msg",
    [
        pytest.param(t(2, 8, 4), t(2, 8, 4), t(2, 8, 4), ioaware.ShapeError, "4-D", id="3d"),
        pytest.param(t(1, 8, 4, 64), t(1, 8, 3, 64), t(1, 8, 3, 64), ioaware.ShapeError, "multiple", id="gqa-ratio"),
        pytest.param(t(1, 8, 4, 64), t(1, 8, 2, 64), t(1, 9, 2, 64), ioaware.ShapeError, "same shape", id="kv-shape"),
        pytest.param(t(2, 8, 4, 64), t(1, 8, 4, 64), t(1, 8, 4, 64), ioaware.ShapeError, "batch", id="batch"),
        pytest.param(t(1, 8, 4, 64), t(1, 8, 4, 32), t(1, 8, 4, 32), ioaware.ShapeError, "head dims", id="head-dims"),
        pytest.param(t(1, 8, 4, 257), t(1, 8, 4, 257), t(1, 8, 4, 257), ioaware.UnsupportedError, "256",
                     id="head-dim-257"),
        pytest.param(t(1, 8, 4, 64, dtype=torch.float64), t(1, 8, 4, 64, dtype=torch.float64),
                     t(1, 8, 4, 64, dtype=torch.float64), ioaware.DTypeError, "float64", id="fp64"),
        pytest.param(t(1, 8, 4, 64), t(1, 8, 4, 64, dtype=torch.bfloat16), t(1, 8, 4, 64), ioaware.DTypeError,
                     "share a dtype", id="mixed-dtype"),
        pytest.param(t(1, 0, 4, 64), t(1, 8, 4, 64), t(1, 8, 4, 64), ioaware.ShapeError, "empty", id="empty"),
        pytest.param(t(1, 8, 4, 64), t(1, 8, 4, 64, device="meta"), t(1, 8, 4, 64), ioaware.DeviceError,
                     "one device", id="devices"),
        pytest.param(t(1, 8, 4, 64, device="meta"), t(1, 8, 4, 64, device="meta"), t(1, 8, 4, 64, device="meta"),
                     ioaware.DeviceError, "not supported", id="meta-device"),
    ],
)
def test_errors(q, k, v, exc, msg):
    with pytest.raises(exc, match=msg):
        ioaware.flash_attn(q, k, v)


def test_not_a_tensor():
    with pytest.raises(TypeError, match="torch.Tensor"):
        ioaware.flash_attn([1, 2], t(1, 8, 4, 64), t(1, 8, 4, 64))


def test_bad_scale():
    with pytest.raises(ValueError, match="finite"):
        ioaware.flash_attn(t(1, 8, 4, 64), t(1, 8, 4, 64), t(1, 8, 4, 64), softmax_scale=float("inf"))
