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


Q = t(2, 8, 4, 16, dtype=torch.float32)
KV = t(2, 8, 2, 16, dtype=torch.float32)


@pytest.mark.parametrize(
    "kw,exc,msg",
    [
        pytest.param(dict(window_size=(3,)), ValueError, "pair of ints", id="window-not-pair"),
        pytest.param(dict(window_size=(-2, 0)), ValueError, "-1 for unbounded", id="window-below-minus-1"),
        pytest.param(dict(causal=True, window_size=(4, 2)), ValueError, "right side to 0", id="causal-window-right"),
        pytest.param(dict(alibi_slopes=torch.ones(4, dtype=torch.float16)), ioaware.DTypeError, "float32",
                     id="alibi-dtype"),
        pytest.param(dict(alibi_slopes=torch.ones(3)), ioaware.ShapeError, r"\(4,\) or \(2, 4\)", id="alibi-shape"),
        pytest.param(dict(alibi_slopes=torch.ones(4, device="meta")), ioaware.DeviceError, "alibi_slopes is on",
                     id="alibi-device"),
        pytest.param(dict(softcap=-1.0), ValueError, "softcap", id="softcap-negative"),
        pytest.param(dict(dropout_p=1.0), ValueError, r"\[0, 1\)", id="dropout-1"),
        pytest.param(dict(deterministic=1), TypeError, "bool", id="deterministic-not-bool"),
        pytest.param(dict(prefix_lens=3), ioaware.UnsupportedError, "needs causal=True", id="prefix-without-causal"),
        pytest.param(dict(causal=True, prefix_lens=3, window_size=(2, -1)), ioaware.UnsupportedError, "left window",
                     id="prefix-with-left-window"),
        pytest.param(dict(causal=True, prefix_lens=torch.ones(3, dtype=torch.int32)), ioaware.ShapeError,
                     r"shape \(2,\)", id="prefix-shape"),
        pytest.param(dict(causal=True, prefix_lens=torch.ones(2)), ioaware.DTypeError, "int32", id="prefix-dtype"),
        pytest.param(dict(block_mask=torch.ones(2, 4, 1, 1, dtype=torch.bool), block_size=(24, 16)),
                     ioaware.UnsupportedError, "16, 32, 64 or 128", id="block-size"),
        pytest.param(dict(block_mask=torch.ones(2, 4, 1, 1), block_size=(16, 16)), ioaware.DTypeError, "bool",
                     id="block-mask-dtype"),
        pytest.param(dict(block_mask=torch.ones(2, 4, 2, 1, dtype=torch.bool), block_size=(16, 16)),
                     ioaware.ShapeError, r"\(2 or 1, 4 or 1, 1, 1\)", id="block-mask-shape"),
        pytest.param(dict(block_mask=torch.ones(3, 4, 1, 1, dtype=torch.bool), block_size=(16, 16)),
                     ioaware.ShapeError, "block_mask must have shape", id="block-mask-batch"),
    ],
)
def test_option_errors(kw, exc, msg):
    with pytest.raises(exc, match=msg):
        ioaware.flash_attn(Q, KV, KV, **kw)


CU = torch.tensor([0, 3, 8], dtype=torch.int32)
QV = t(8, 4, 16, dtype=torch.float32)
KVV = t(8, 2, 16, dtype=torch.float32)


@pytest.mark.parametrize(
    "args,kw,exc,msg",
    [
        pytest.param((Q, KV, KV, CU, CU, 5, 5), {}, ioaware.ShapeError, "3-D", id="4d-input"),
        pytest.param((QV, KVV, KVV, CU.long(), CU, 5, 5), {}, ioaware.ShapeError, "int32", id="cu-dtype"),
        pytest.param((QV, KVV, KVV, CU, CU[:2], 5, 5), {}, ioaware.ShapeError, "different batch", id="cu-lengths"),
        pytest.param((QV, KVV, KVV, torch.tensor([0, 3, 7], dtype=torch.int32), CU, 5, 5), {}, ioaware.ShapeError,
                     "rise from 0", id="cu-total"),
        pytest.param((QV, KVV, KVV, CU, CU, 4, 5), {}, ioaware.ShapeError, "max_seqlen_q", id="max-seqlen-small"),
        pytest.param((QV, KVV, KVV, CU, CU, 0, 5), {}, ValueError, ">= 1", id="max-seqlen-0"),
        pytest.param((QV, KVV, KVV, CU, CU, 5, 5), dict(block_mask=None), TypeError, "block_mask",
                     id="block-mask-on-varlen"),
        pytest.param((QV, KVV, KVV, CU, CU, 5, 5), dict(alibi_slopes=torch.ones(3, 4)), ioaware.ShapeError,
                     r"\(4,\) or \(2, 4\)", id="alibi-batch"),
    ],
)
def test_varlen_errors(args, kw, exc, msg):
    with pytest.raises(exc, match=msg):
        ioaware.flash_attn_varlen(*args, **kw)
