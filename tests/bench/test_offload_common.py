"""The offload bench's baselines (naive whole-FFN reads, mmap) compute the FFN of the store they read: SwiGLU for a
plain store, the shifted ReLU for a ReLU-fied one (`ioaware relufy`)."""

from types import SimpleNamespace

import torch
import torch.nn.functional as F

from ioaware.bench.offload_common import dense_ffn, ffn_act


def test_baseline_ffn_uses_the_stores_activation():
    g = torch.Generator().manual_seed(0)
    x, gate, up, down = (torch.randn(*s, generator=g, dtype=torch.float64) for s in [(3, 8), (16, 8), (16, 8), (8, 16)])
    relu = ffn_act(SimpleNamespace(ffn_act="shifted_relu", ffn_act_shift=0.25))
    want = (torch.relu(x @ gate.T - 0.25) * (x @ up.T)) @ down.T
    torch.testing.assert_close(dense_ffn(x, gate, up, down, relu), want)
    silu = ffn_act(SimpleNamespace())  # args from before relufy have no ffn_act: SwiGLU
    torch.testing.assert_close(dense_ffn(x, gate, up, down, silu), (F.silu(x @ gate.T) * (x @ up.T)) @ down.T)
    assert not torch.allclose(dense_ffn(x, gate, up, down, relu), dense_ffn(x, gate, up, down, silu))
