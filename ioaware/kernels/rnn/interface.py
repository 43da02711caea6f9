"""`ioaware.rnn.lstm / gru / slstm`: fused recurrent cells with the recurrent matrix on chip (FlashRNN).

The caller computes the input projections x = W·input for every step first (one big parallel GEMM); these
functions run only the sequential part, g_t = x_t + h_{t-1}·R + b followed by the cell, forward and backward.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ...errors import ShapeError, UnsupportedError
from .._dispatch import backend_for, interpreting, load_kernel_module, record
from .._validate import check_dtypes_and_device
from .reference import CELLS, rnn_ref, zero_state
from .tiles import Machine, RNNTiles, plan_rnn_tiles

_KERNEL = "ioaware.kernels.rnn.kernel"
_SMS: dict[int, int] = {}


def _check(cell: str, x: torch.Tensor, R: torch.Tensor, b: torch.Tensor, state0: Sequence[torch.Tensor] | None,
           num_heads: int) -> tuple[int, int, int, int]:
    op = f"rnn.{cell}"
    G, Gb, S = CELLS[cell]
    for name, t, dim in (("x", x, 3), ("R", R, 4), ("b", b, 3)):
        if not isinstance(t, torch.Tensor) or t.dim() != dim:
            raise ShapeError(f"{op}: {name} must be a {dim}-D tensor, got "
                             f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
    check_dtypes_and_device(op, {"x": x, "R": R, "b": b})
    if not isinstance(num_heads, int) or num_heads < 1:
        raise ShapeError(f"{op}: num_heads must be a positive int, got {num_heads!r}")
    NH = num_heads
    if R.shape[0] != G or R.shape[1] != NH or R.shape[2] != R.shape[3]:
        raise ShapeError(f"{op}: R must be (G={G}, num_heads={NH}, D, D), got {tuple(R.shape)}")
    D = R.shape[3]
    B, T, F = x.shape
    if F != G * NH * D:
        raise ShapeError(f"{op}: x's last dim must be G·num_heads·D = {G}·{NH}·{D} = {G * NH * D}, got {F}")
    if T < 1 or B < 1:
        raise ShapeError(f"{op}: x must have at least one batch row and one time step, got {tuple(x.shape)}")
    if tuple(b.shape) != (Gb, NH, D):
        raise ShapeError(f"{op}: b must be ({Gb}, num_heads={NH}, D={D}), got {tuple(b.shape)}")
    if state0 is not None:
        if not isinstance(state0, (tuple, list)) or len(state0) != S:
            raise ShapeError(f"{op}: state0 must be a tuple of {S} tensors of shape (B, num_heads·D), or None")
        for k, s in enumerate(state0):
            if not isinstance(s, torch.Tensor) or tuple(s.shape) != (B, NH * D):
                raise ShapeError(f"{op}: state0[{k}] must be ({B}, {NH * D}), got "
                                 f"{tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__}")
            check_dtypes_and_device(op, {"x": x, f"state0[{k}]": s})
    return B, T, NH, D


def _num_sms(device: torch.device) -> int:
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _SMS:
        _SMS[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return _SMS[idx]


def _tiles_for(cell: str, B: int, NH: int, D: int, x: torch.Tensor, backend: str) -> RNNTiles:
    machine = Machine(num_sms=_num_sms(x.device)) if backend == "triton" else Machine()
    try:
        return plan_rnn_tiles(cell, B, NH, D, x.element_size(), machine, sync=backend == "triton")
    except ValueError as e:
        raise UnsupportedError(f"rnn.{cell}: {e}") from None


def _flags(dtype):
    precision = "ieee" if dtype == torch.float32 else "tf32"
    return precision, interpreting() and dtype == torch.bfloat16


class FusedRecurrentRNNFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, cell, tiles, x, R, b, *state0):
        kern = load_kernel_module(_KERNEL)
        B, T, _ = x.shape
        G, NH, D, _ = R.shape
        S = CELLS[cell][2]
        x, R = x.contiguous(), R.contiguous()
        bias = b.float().contiguous()  # 4 slots: i, f, z, o (GRU: b_r, b_z, b_in, b_hn)
        h0 = state0[0].contiguous()
        cs0 = torch.stack([s.float() for s in state0[1:]]) if S > 1 else None
        precision, upcast = _flags(x.dtype)
        save = any(ctx.needs_input_grad)
        y, cs, gs = kern.fused_recurrent_rnn_fwd(cell, x, R, bias, h0, cs0, tiles, save, precision, upcast)
        ctx.cell, ctx.tiles = cell, tiles
        ctx.save_for_backward(R, gs, h0, y, cs)
        final = [y[:, -1].clone()] + [cs[k, :, -1].to(x.dtype) for k in range(S - 1)]
        return (y, *final)

    @staticmethod
    def backward(ctx, dy, *dfinal):
        kern = load_kernel_module(_KERNEL)
        R, gs, h0, y, cs = ctx.saved_tensors
        cell, tiles = ctx.cell, ctx.tiles
        B, T, HD = y.shape
        G, NH, D, _ = R.shape
        dy = torch.zeros_like(y) if dy is None else dy.contiguous()
        dst = torch.stack([torch.zeros(B, HD, device=y.device) if d is None else d.float() for d in dfinal])
        if cell == "slstm":
            dst[3] = 0  # m is a stabiliser: no gradient flows through it
        precision, upcast = _flags(y.dtype)
        dx, dq = kern.fused_recurrent_rnn_bwd(cell, R, gs, h0, y, cs, dy, dst, tiles, precision, upcast)
        # dR[g, n] = sum over (b, t) of h_{t-1}ᵀ · dG_t: one batched GEMM over all steps, off the critical path
        dg = dx.view(B, T, G, NH, D)
        if dq is not None:
            dg = torch.cat([dg[:, :, :2], dq.view(B, T, 1, NH, D)], 2)
        mm = (lambda a: a) if y.is_cuda else (lambda a: a.float())  # CPU half matmul is slow and inexact
        hp = y.view(B, T, NH, D)
        dR = torch.einsum("btnk,btgnj->gnkj", mm(hp[:, :-1]), mm(dg[:, 1:]))
        dR += torch.einsum("bnk,bgnj->gnkj", mm(h0.view(B, NH, D)), mm(dg[:, 0]))
        db = dx.view(B, T, G, NH, D).float().sum((0, 1))
        if cell == "gru":
            db = torch.cat([db, dq.view(B, T, 1, NH, D).float().sum((0, 1))], 0)
        dstate: list[torch.Tensor | None] = [dst[k].to(y.dtype) for k in range(CELLS[cell][2])]
        if cell == "slstm":
            dstate[3] = None
        return (None, None, dx, dR.to(R.dtype), db.to(R.dtype), *dstate)


def fused_recurrent_rnn(cell: str, x: torch.Tensor, R: torch.Tensor, b: torch.Tensor,
                        state0: Sequence[torch.Tensor] | None = None, num_heads: int = 1,
                        tiles: RNNTiles | None = None) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """`lstm`, `gru` or `slstm` by name (`cell`), with the same arguments; dispatches to the fused kernel or the
    reference (module docstring)."""
    B, T, NH, D = _check(cell, x, R, b, state0, num_heads)
    if state0 is None:
        state0 = zero_state(cell, B, NH * D, x.dtype, x.device)
    backend = backend_for(x.device.type)
    record(f"rnn.{cell}", backend)
    if backend == "reference":
        return rnn_ref(cell, x, R, b, tuple(state0), num_heads)
    tiles = tiles or _tiles_for(cell, B, NH, D, x, backend)
    out = FusedRecurrentRNNFunction.apply(cell, tiles, x, R, b, *state0)
    return out[0], tuple(out[1:])


def lstm(x: torch.Tensor, R: torch.Tensor, b: torch.Tensor, state0: Sequence[torch.Tensor] | None = None,
         num_heads: int = 1, *, tiles: RNNTiles | None = None) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Fused LSTM recurrence (gates i, f, z, o; nn.LSTM's order and cell).

    Args:
        x: (B, T, 4·NH·D) input projections W·input_t, gate-major: the last dim is (4, NH, D).
        R: (4, NH, D, D) recurrent weights, block-diagonal over heads: gate g of head n is h_n · R[g, n].
            For nn.LSTM (one head): R[g, 0] = weight_hh[g·H:(g+1)·H].T.
        b: (4, NH, D) bias (nn.LSTM: bias_ih + bias_hh).
        state0: (h0, c0), each (B, NH·D); zeros if None.
        num_heads: NH, independent recurrences of size D = hidden / NH.
        tiles: override the constraint solver's tile choice (ioaware.kernels.rnn.tiles.RNNTiles).

    Returns:
        y (B, T, NH·D) every step's h, and (h_T, c_T).

    Examples:
        >>> import torch, ioaware
        >>> x, R, b = torch.randn(2, 5, 4 * 32), torch.randn(4, 1, 32, 32) / 8, torch.zeros(4, 1, 32)
        >>> y, (h, c) = ioaware.rnn.lstm(x, R, b)
        >>> y.shape, h.shape
        (torch.Size([2, 5, 32]), torch.Size([2, 32]))
    """
    return fused_recurrent_rnn("lstm", x, R, b, state0, num_heads, tiles)


def gru(x: torch.Tensor, R: torch.Tensor, b: torch.Tensor, state0: Sequence[torch.Tensor] | None = None,
        num_heads: int = 1, *, tiles: RNNTiles | None = None) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Fused GRU recurrence (nn.GRU's cell): x (B, T, 3·NH·D) gates (r, z, n); R (3, NH, D, D);
    b (4, NH, D) = (b_ir + b_hr, b_iz + b_hz, b_in, b_hn); state0 (h0,). Returns y and (h_T,).

    Examples:
        >>> import torch, ioaware
        >>> x, R, b = torch.randn(2, 5, 3 * 2 * 16), torch.randn(3, 2, 16, 16) / 4, torch.zeros(4, 2, 16)
        >>> y, (h,) = ioaware.rnn.gru(x, R, b, num_heads=2)
        >>> torch.allclose(y, ioaware.rnn.gru_ref(x, R, b, num_heads=2)[0], atol=1e-5), h.shape
        (True, torch.Size([2, 32]))
    """
    return fused_recurrent_rnn("gru", x, R, b, state0, num_heads, tiles)


def slstm(x: torch.Tensor, R: torch.Tensor, b: torch.Tensor, state0: Sequence[torch.Tensor] | None = None,
          num_heads: int = 1, *, tiles: RNNTiles | None = None) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Fused sLSTM recurrence (xLSTM; exponential input gate stabilised by m): x (B, T, 4·NH·D) gates
    (i, f, z, o); R (4, NH, D, D); b (4, NH, D); state0 (h0, c0, n0, m0), default m0 = -inf.
    Returns y and (h_T, c_T, n_T, m_T).

    Examples:
        >>> import torch, ioaware
        >>> x, R, b = torch.randn(1, 6, 4 * 16), torch.randn(4, 1, 16, 16) / 4, torch.zeros(4, 1, 16)
        >>> y, (h, c, n, m) = ioaware.rnn.slstm(x, R, b)
        >>> y.shape, bool((n >= 1).all())                  # the normaliser is clamped at 1
        (torch.Size([1, 6, 16]), True)
    """
    return fused_recurrent_rnn("slstm", x, R, b, state0, num_heads, tiles)
