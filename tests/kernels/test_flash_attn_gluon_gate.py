"""The Gluon forward (flash/gluon_fwd.py) is written for Triton 3.6 on sm_90: on a CPU machine, under the interpreter
or on another Triton, its gate refuses in one line, the module is never imported by the dispatch, and importing it
by hand fails with the same one-line reason instead of a Gluon API error."""

import sys

import pytest
import torch

from ioaware.errors import UnsupportedError
from ioaware.kernels._dispatch import load_kernel_module

GLUON_MOD = "ioaware.kernels.attention.flash.gluon_fwd"


def _qkv(dtype=torch.bfloat16, D=128, T=64):
    return [torch.randn(1, T, 2, D, dtype=dtype) for _ in range(3)]


def test_gate_refuses_on_cpu_in_one_line():
    from ioaware.kernels.attention.flash.gluon_gate import GLUON_TRITON_VERSIONS, gluon_refusal, triton_release

    reason = gluon_refusal(*_qkv())
    assert reason is not None and reason.startswith("gluon attention: ") and "\n" not in reason
    # the reason names what is missing: this Triton's release when it is not 3.6, else the interpreter or the device
    if triton_release() not in GLUON_TRITON_VERSIONS:
        assert reason.endswith(f"found {triton_release()}")
    else:
        assert "interpreter" in reason or "CUDA" in reason
    assert GLUON_MOD not in sys.modules
    assert not torch.cuda.is_initialized()


class _FakeCuda:
    """A CPU tensor posing as a CUDA one, to reach the gate's input rules without a GPU."""

    device = torch.device("cuda", 0)

    def __init__(self, t):
        self.t = t

    def __getattr__(self, name):
        return getattr(self.t, name)


def test_gate_rejects_what_the_kernel_was_not_written_for(monkeypatch):
    """Past the version and device checks (patched here), each input rule gives its own reason."""
    from ioaware.kernels.attention.flash import gluon_gate

    monkeypatch.setattr(gluon_gate, "triton_refusal", lambda: None)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    q, k, v = _qkv()
    assert "needs CUDA tensors" in gluon_gate.gluon_refusal(q, k, v)
    monkeypatch.setattr(gluon_gate, "_sm_major", lambda index: 9)

    def wrap(*ts):
        return [_FakeCuda(t) for t in ts]

    assert gluon_gate.gluon_refusal(*wrap(q, k, v)) is None
    assert "bf16 only" in gluon_gate.gluon_refusal(*wrap(*_qkv(torch.float16)))
    assert "head_dim 96" in gluon_gate.gluon_refusal(*wrap(*_qkv(D=96)))
    assert "seqlen_q == seqlen_k" in gluon_gate.gluon_refusal(*wrap(q, k[:, :32], v[:, :32]))
    qt = q.transpose(1, 2).contiguous().transpose(1, 2)  # (B, H, T, D) storage
    assert "contiguous" in gluon_gate.gluon_refusal(*wrap(qt, k, v))
    monkeypatch.setattr(gluon_gate, "_sm_major", lambda index: 8)
    assert "sm_8x" in gluon_gate.gluon_refusal(*wrap(q, k, v))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert "interpreter" in gluon_gate.gluon_refusal(*wrap(q, k, v))


def test_gate_refuses_other_triton_releases(monkeypatch):
    from ioaware.kernels.attention.flash import gluon_gate

    monkeypatch.setattr(gluon_gate, "triton_release", lambda: "3.9")
    reason = gluon_gate.triton_refusal()
    assert reason == "gluon attention: written for triton 3.6 (Gluon's API changes between releases), found 3.9"
    monkeypatch.setattr(gluon_gate, "triton_release", lambda: "3.6")
    assert gluon_gate.triton_refusal() is None


def test_importing_the_kernel_on_another_triton_fails_politely():
    from ioaware.kernels.attention.flash.gluon_gate import triton_refusal

    reason = triton_refusal()
    if reason is None:
        pytest.skip("this Triton is the one gluon_fwd.py was written for: importing it is legitimate here")
    sys.modules.pop(GLUON_MOD, None)
    with pytest.raises(UnsupportedError) as e:
        __import__(GLUON_MOD)
    assert str(e.value) == reason
    assert GLUON_MOD not in sys.modules


def test_opt_in_on_cpu_falls_back_with_a_warning(monkeypatch):
    """IOAWARE_GLUON=1 under the interpreter: the dispatch asks the gate, warns once with its reason, and runs
    kernel.py's forward (still matching the reference)."""
    from ioaware.kernels.attention.flash.reference import attention_ref

    kernel = load_kernel_module("ioaware.kernels.attention.flash.kernel")
    monkeypatch.setenv("IOAWARE_GLUON", "1")
    kernel._warn_once.cache_clear()
    q, k, v = (torch.randn(1, 37, 2, 16) for _ in range(3))
    with pytest.warns(UserWarning, match="gluon attention: .*; using the Triton kernels"):
        o, lse = kernel.flash_attn_fwd(q, k, v, True, 0.25)
    ref, lse_ref = attention_ref(q.double(), k.double(), v.double(), True, 0.25)
    assert (o.double() - ref).abs().max().item() < 1e-4
    assert (lse.double() - lse_ref).abs().max().item() < 1e-4
    assert GLUON_MOD not in sys.modules


def test_settings_reads_the_opt_in(monkeypatch):
    from ioaware.env import ENV_TABLE, settings

    monkeypatch.delenv("IOAWARE_GLUON", raising=False)
    assert settings().gluon == "0"
    for raw, mode in (("1", "1"), ("on", "1"), ("0", "0"), ("off", "0"), ("AUTO", "auto"), ("", "0")):
        monkeypatch.setenv("IOAWARE_GLUON", raw)
        assert settings().gluon == mode, raw
    monkeypatch.setenv("IOAWARE_GLUON", "sometimes")
    with pytest.raises(ValueError, match="IOAWARE_GLUON='sometimes': use 0"):
        settings()
    assert "IOAWARE_GLUON" in [row[0] for row in ENV_TABLE]


@pytest.mark.parametrize("mode,D,runs", [("auto", 128, True), ("auto", 64, False), ("1", 64, True),
                                         ("0", 128, False)])
def test_dispatch_follows_the_mode_and_the_measured_head_dims(monkeypatch, mode, D, runs):
    """Which inputs the forward sends to Gluon, with the gate made to accept (it never does on this machine):
    auto only at GLUON_AUTO_HEAD_DIMS (where the H200 measured it faster), 1 wherever the gate allows, 0 never;
    a refusal under auto is silent (the fallback is the plan), under 1 it is warned."""
    import warnings

    from ioaware.kernels.attention.flash import gluon_gate

    kernel = load_kernel_module("ioaware.kernels.attention.flash.kernel")
    monkeypatch.setenv("IOAWARE_GLUON", mode)
    monkeypatch.setattr(gluon_gate, "gluon_refusal", lambda q, k, v: None)
    assert kernel._gluon_takes(*_qkv(D=D)) is runs
    monkeypatch.setattr(gluon_gate, "gluon_refusal", lambda q, k, v: "gluon attention: refused for the test")
    kernel._warn_once.cache_clear()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert kernel._gluon_takes(*_qkv(D=D)) is False
    assert len(seen) == (1 if mode == "1" else 0)
    assert GLUON_MOD not in sys.modules
