"""Plain PyTorch time loops of the three cells: the readable definition the Triton kernels are tested against.

Layout (FlashRNN's, flattened): x holds the input projections W·x_t, (B, T, G·NH·D) gate-major, i.e. the
last dim is (G, NH, D); R is (G, NH, D, D) with pre[g, head, j] = sum_k h[head, k] · R[g, head, k, j]
(block-diagonal over heads: no head sees another head's state); b is (Gb, NH, D). States are (B, NH·D).

Cells (all pointwise math in the input dtype here, which is what "plain PyTorch in low precision" means):
- lstm  G=4 (i, f, z, o), states (h, c):  c' = σ(f)c + σ(i)tanh(z),  h' = σ(o)tanh(c')            (= nn.LSTM)
- gru   G=3 (r, z, n), Gb=4 (b_r, b_z, b_in, b_hn), state (h):                                     (= nn.GRU)
        r = σ(x_r + hR_r + b_r), z = σ(...), q = hR_n + b_hn, n = tanh(x_n + b_in + r·q), h' = (1-z)n + z·h
- slstm G=4, states (h, c, n, m), exponential input gate stabilised by m (xLSTM / FlashRNN):
        m' = max(ĩ, logσ(f̃) + m), i = exp(ĩ - m'), f = exp(logσ(f̃) + m - m'), c' = f·c + i·tanh(z̃),
        n' = max(f·n + i, 1), h' = σ(õ)·c'/n'.  m is a stabiliser: no gradient flows through it (FlashRNN's
        kernels do the same), and the clamp passes the gradient where f·n + i >= 1.

HBM traffic of one time-loop step (B rows, NH·D = H): read x_t (B·G·H), R (G·NH·D²; from L2 after step 1),
read/write the states (2·S·B·H), write h_t (B·H): the loop re-reads R every step, which is the cost the
fused kernel removes by keeping R on chip for the whole sequence.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

CELLS = {"lstm": (4, 4, 2), "gru": (3, 4, 1), "slstm": (4, 4, 4)}  # cell: (G of x and R, G of b, states)


def zero_state(cell: str, B: int, H: int, dtype: torch.dtype,
               device: torch.device | str | None) -> tuple[torch.Tensor, ...]:
    S = CELLS[cell][2]
    st = [torch.zeros(B, H, dtype=dtype, device=device) for _ in range(S)]
    if cell == "slstm":
        st[3] = torch.full((B, H), float("-inf"), dtype=dtype, device=device)  # m: "no history yet"
    return tuple(st)


def _step(cell: str, pre_x: torch.Tensor, pre_h: torch.Tensor, b: torch.Tensor,
          state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """One step. pre_x (B, G, NH, D) the input projection, pre_h (B, G, NH, D) = h @ R per gate."""
    if cell == "lstm":
        h, c = state
        a = pre_x + pre_h + b
        i, f, z, o = torch.sigmoid(a[:, 0]), torch.sigmoid(a[:, 1]), torch.tanh(a[:, 2]), torch.sigmoid(a[:, 3])
        c = f * c + i * z
        return (o * torch.tanh(c), c)
    if cell == "gru":
        (h,) = state
        r = torch.sigmoid(pre_x[:, 0] + pre_h[:, 0] + b[0])
        z = torch.sigmoid(pre_x[:, 1] + pre_h[:, 1] + b[1])
        n = torch.tanh(pre_x[:, 2] + b[2] + r * (pre_h[:, 2] + b[3]))
        return ((1 - z) * n + z * h,)
    h, c, n, m = state
    a = pre_x + pre_h + b
    logf = torch.nn.functional.logsigmoid(a[:, 1])
    m_new = torch.maximum(a[:, 0], logf + m).detach()
    i = torch.exp(a[:, 0] - m_new)
    f = torch.exp(logf + m - m_new)
    c = f * c + i * torch.tanh(a[:, 2])
    s = f * n + i
    n = torch.where(s >= 1, s, torch.ones_like(s))
    return (torch.sigmoid(a[:, 3]) * c / n, c, n, m_new)


def rnn_ref(cell: str, x: torch.Tensor, R: torch.Tensor, b: torch.Tensor, state0: Sequence[torch.Tensor] | None = None,
            num_heads: int = 1) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """The time loop; autograd gives the reference backward. Returns (y (B, T, NH·D), final states tuple)."""
    G, _, _ = CELLS[cell]
    B, T, _ = x.shape
    NH = num_heads
    D = R.shape[-1]
    xs = x.view(B, T, G, NH, D)
    state = tuple(s.view(B, NH, D) for s in (state0 or zero_state(cell, B, NH * D, x.dtype, x.device)))
    ys = []
    for t in range(T):  # read x_t: B·G·H; read R: G·NH·D² (L2-resident after step 1)
        pre_h = torch.einsum("bnk,gnkj->bgnj", state[0], R)  # (B, G, NH, D)
        state = _step(cell, xs[:, t], pre_h, b, state)  # read+write states 2·S·B·H
        ys.append(state[0])  # write h_t B·H
    y = torch.stack(ys, 1).reshape(B, T, NH * D)  # (B, T, H)
    return y, tuple(s.reshape(B, NH * D) for s in state)


def lstm_ref(x: torch.Tensor, R: torch.Tensor, b: torch.Tensor, state0: Sequence[torch.Tensor] | None = None,
             num_heads: int = 1) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """`lstm`'s time loop in plain PyTorch (same arguments and results).

    Examples:
        >>> import torch, ioaware
        >>> x, R, b = torch.randn(1, 4, 4 * 8), torch.randn(4, 1, 8, 8) / 4, torch.zeros(4, 1, 8)
        >>> y, (h, c) = ioaware.rnn.lstm_ref(x, R, b)
        >>> torch.equal(y[:, -1], h)
        True
    """
    return rnn_ref("lstm", x, R, b, state0, num_heads)


def gru_ref(x: torch.Tensor, R: torch.Tensor, b: torch.Tensor, state0: Sequence[torch.Tensor] | None = None,
            num_heads: int = 1) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """`gru`'s time loop in plain PyTorch (same arguments and results).

    Examples:
        >>> import torch, ioaware
        >>> y, (h,) = ioaware.rnn.gru_ref(torch.randn(1, 4, 3 * 8), torch.randn(3, 1, 8, 8), torch.zeros(4, 1, 8))
        >>> y.shape
        torch.Size([1, 4, 8])
    """
    return rnn_ref("gru", x, R, b, state0, num_heads)


def slstm_ref(x: torch.Tensor, R: torch.Tensor, b: torch.Tensor, state0: Sequence[torch.Tensor] | None = None,
              num_heads: int = 1) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """`slstm`'s time loop in plain PyTorch (same arguments and results).

    Examples:
        >>> import torch, ioaware
        >>> y, st = ioaware.rnn.slstm_ref(torch.randn(1, 4, 4 * 8), torch.randn(4, 1, 8, 8), torch.zeros(4, 1, 8))
        >>> len(st)                                         # h, c, n, m
        4
    """
    return rnn_ref("slstm", x, R, b, state0, num_heads)
