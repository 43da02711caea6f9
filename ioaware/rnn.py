"""`ioaware.rnn`: fused recurrent LSTM / GRU / sLSTM (FlashRNN) and an `nn.LSTM`-compatible module.

    y, (h, c) = ioaware.rnn.lstm(x, R, b, num_heads=12)      # x = input projections (B, T, 4·H)
    model = ioaware.rnn.LSTM(input_size, hidden_size, batch_first=True)   # loads nn.LSTM's state_dict
"""

from __future__ import annotations

import torch
from torch import nn

from .errors import ShapeError, UnsupportedError
from .kernels.rnn import gru, gru_ref, lstm, lstm_ref, slstm, slstm_ref
from .kernels.rnn.tiles import RNNTiles, plan_rnn_tiles

__all__ = ["LSTM", "RNNTiles", "gru", "gru_ref", "lstm", "lstm_ref", "plan_rnn_tiles", "slstm", "slstm_ref"]


class LSTM(nn.Module):
    """Drop-in for `torch.nn.LSTM` (unidirectional, no projection): same parameters and names, same call.

    The input projection of every step runs first as one GEMM; the recurrence runs in the fused kernel.
    `num_heads` > 1 makes the recurrence block-diagonal (FlashRNN's heads): weight_hh_l{k} is then
    (4·hidden, hidden / num_heads), row g·H + n·D + j holding head n's weights into gate g, column j;
    with one head it is exactly nn.LSTM's (4·hidden, hidden).

    Examples:
        >>> import torch, ioaware
        >>> ref = torch.nn.LSTM(8, 16, num_layers=2, batch_first=True)
        >>> ours = ioaware.rnn.LSTM(8, 16, num_layers=2, batch_first=True)
        >>> _ = ours.load_state_dict(ref.state_dict())
        >>> x = torch.randn(3, 5, 8)
        >>> (y, (h, c)), (y_ref, _) = ours(x), ref(x)
        >>> torch.allclose(y, y_ref, atol=1e-5), h.shape
        (True, torch.Size([2, 3, 16]))
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, proj_size: int = 0,
                 num_heads: int = 1, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if bidirectional or proj_size:
            raise UnsupportedError("ioaware.rnn.LSTM: bidirectional and proj_size are not supported")
        if hidden_size % num_heads:
            raise ShapeError(f"ioaware.rnn.LSTM: hidden_size {hidden_size} is not a multiple of num_heads {num_heads}")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.dropout, self.num_heads = bias, batch_first, dropout, num_heads
        H, D = hidden_size, hidden_size // num_heads
        dev, dt = device, dtype
        for k in range(num_layers):
            I = input_size if k == 0 else H
            setattr(self, f"weight_ih_l{k}", nn.Parameter(torch.empty(4 * H, I, device=dev, dtype=dt)))
            setattr(self, f"weight_hh_l{k}", nn.Parameter(torch.empty(4 * H, D, device=dev, dtype=dt)))
            if bias:
                setattr(self, f"bias_ih_l{k}", nn.Parameter(torch.empty(4 * H, device=dev, dtype=dt)))
                setattr(self, f"bias_hh_l{k}", nn.Parameter(torch.empty(4 * H, device=dev, dtype=dt)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Every parameter uniform in ±1/sqrt(hidden_size), as nn.LSTM initialises."""
        s = self.hidden_size ** -0.5
        for p in self.parameters():
            nn.init.uniform_(p, -s, s)

    def _recurrent(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        H, NH = self.hidden_size, self.num_heads
        D = H // NH
        w = getattr(self, f"weight_hh_l{k}").view(4, NH, D, D)  # (g, n, j, k)
        R = w.transpose(-1, -2)  # (g, n, k, j): gate j of head n from state k
        b = getattr(self, f"bias_ih_l{k}") + getattr(self, f"bias_hh_l{k}") if self.bias else \
            torch.zeros(4 * H, device=w.device, dtype=w.dtype)
        return R, b.view(4, NH, D)

    def forward(self, input: torch.Tensor, hx: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """nn.LSTM's call: input (T, B, input_size), or (B, T, input_size) with batch_first; hx = (h0, c0), each
        (num_layers, B, hidden_size), zeros if None. Returns (output, (h_n, c_n)) as nn.LSTM does."""
        if input.dim() != 3:
            raise ShapeError(f"ioaware.rnn.LSTM: input must be 3-D (batched), got {tuple(input.shape)}")
        x = input if self.batch_first else input.transpose(0, 1)  # (B, T, I)
        B = x.shape[0]
        if hx is not None:
            h0, c0 = hx
            if h0.shape != (self.num_layers, B, self.hidden_size) or c0.shape != h0.shape:
                raise ShapeError(f"ioaware.rnn.LSTM: hx must be two ({self.num_layers}, {B}, {self.hidden_size}) "
                                 f"tensors, got {tuple(h0.shape)} and {tuple(c0.shape)}")
        hs, cs = [], []
        for k in range(self.num_layers):
            R, b = self._recurrent(k)
            gx = x @ getattr(self, f"weight_ih_l{k}").t()  # (B, T, 4H): every step's projection in one GEMM
            st = None if hx is None else (hx[0][k], hx[1][k])
            x, (h, c) = lstm(gx, R, b, st, num_heads=self.num_heads)
            hs.append(h)
            cs.append(c)
            if self.dropout and self.training and k < self.num_layers - 1:
                x = nn.functional.dropout(x, self.dropout)
        out = x if self.batch_first else x.transpose(0, 1)
        return out, (torch.stack(hs), torch.stack(cs))
