"""FLOPs and HBM traffic of attention: standard (materialised S and P) and FlashAttention-2.

Conventions (stated once, used by every benchmark):
  forward FLOPs  = 4 * B * H * Tq * Tk * D   (two matmuls, 2 FLOPs per multiply-add), halved when causal;
  backward FLOPs = 2.5 * forward (five matmuls instead of two).
Traffic counts elements moved between HBM and on-chip memory, times the bytes per element; LSE and
the backward's row statistics are fp32. The FlashAttention count follows the kernel's schedule exactly
(which blocks each program loads); with block sizes derived from the on-chip memory M it reduces to the
paper's Theta(N^2 d^2 / M). L2 is not modelled: re-reads that hit L2 are still counted as HBM traffic.
"""

from __future__ import annotations

from dataclasses import dataclass

from .bounds import kv_rows_seen, q_rows_seen
from .cost import Cost

FP32 = 4


def attention_flops(B: int, H: int, Tq: int, Tk: int, D: int, causal: bool = False, backward: bool = False) -> float:
    """Matmul FLOPs of attention: 4 B H Tq Tk D forward (QK^T and PV), halved when causal, x2.5 for the backward.

    Examples:
        >>> attention_flops(1, 16, 4096, 4096, 128) / 1e9
        137.438953472
        >>> attention_flops(1, 16, 4096, 4096, 128, causal=True, backward=True) / 1e9
        171.79869184
    """
    f = 4.0 * B * H * Tq * Tk * D
    if causal:
        f /= 2
    return f * 2.5 if backward else f


def standard_attention_cost(B: int, H: int, Tq: int, Tk: int, D: int, elem_bytes: int = 2,
                            causal: bool = False, backward: bool = False) -> Cost:
    """Attention written as three kernels (S = QK^T, P = softmax(S), O = PV), S and P round-tripping HBM.

    Examples:
        >>> std = standard_attention_cost(1, 16, 4096, 4096, 128)
        >>> round(std.bytes("hbm") / 1e6)                    # MB of HBM traffic, dominated by S and P
        2215
    """
    n, m = Tq, Tk
    if not backward:
        read = n * D + m * D + n * m + n * m + m * D  # QK^T: Q, K | softmax: S | PV: P, V
        write = n * m + n * m + n * D  # S | P | O
    else:
        # dV = P^T dO | dP = dO V^T | dS = P * (dP - rowsum) | dQ = dS K | dK = dS^T Q
        read = (n * m + n * D) + (n * D + m * D) + (2 * n * m) + (n * m + m * D) + (n * m + n * D)
        write = m * D + n * m + n * m + n * D + m * D
    scale = B * H * elem_bytes
    flops = attention_flops(B, H, Tq, Tk, D, causal, backward)
    return Cost.of(flops, label="standard attention " + ("bwd" if backward else "fwd"),
                   hbm=(read * scale, write * scale))


@dataclass(frozen=True)
class Blocks:
    """Query and key/value tile rows (`blocks_for_sram`).

    Examples:
        >>> Blocks(q=128, k=64).k
        64
    """

    q: int
    k: int


def blocks_for_sram(sram_bytes: float, D: int, elem_bytes: int = 2) -> Blocks:
    """FlashAttention's choice: Q, O, K and V tiles of B rows each must fit in M, so B = M / (4 D).

    Examples:
        >>> blocks_for_sram(228 * 1024, 128)                  # an H100 SM's 228 KiB, bf16, head_dim 128
        Blocks(q=228, k=228)
    """
    m_elems = sram_bytes / elem_bytes
    b = max(1, int(m_elems // (4 * D)))
    return Blocks(b, b)


def flash_attention_cost(B: int, Hq: int, Tq: int, Tk: int, D: int, *, Hkv: int | None = None,
                         sram_bytes: float | None = None, block_q: int | None = None, block_k: int | None = None,
                         elem_bytes: int = 2, causal: bool = False, backward: bool = False) -> Cost:
    """HBM traffic of ioaware's FlashAttention-2 kernels, forward or backward, for the given tiles.

    Give either the tile sizes (`block_q`, `block_k`) or the on-chip memory `sram_bytes` (tiles from M / 4D).

    Examples:
        >>> fa = flash_attention_cost(1, 16, 4096, 4096, 128, sram_bytes=228 * 1024)
        >>> std = standard_attention_cost(1, 16, 4096, 4096, 128)
        >>> fa.label, round(std.bytes() / fa.bytes(), 2)     # 3.5x less HBM traffic than three kernels
        ('flash attention fwd (Bq=228, Bk=228)', 3.47)
    """
    Hkv = Hkv or Hq
    if block_q is None or block_k is None:
        if sram_bytes is None:
            raise ValueError("give block_q and block_k, or sram_bytes to derive them")
        b = blocks_for_sram(sram_bytes, D, elem_bytes)
        block_q, block_k = block_q or b.q, block_k or b.k
    bq, bk = min(block_q, max(Tq, 1)), min(block_k, max(Tk, 1))
    e = elem_bytes
    kv_rows = kv_rows_seen(Tq, Tk, bq, bk, causal)
    if not backward:
        read = Hq * (Tq * D * e + 2 * D * e * sum(kv_rows))  # Q once; K and V per query block
        write = Hq * (Tq * D * e + Tq * FP32)  # O and LSE
    else:
        q_rows = q_rows_seen(Tq, Tk, bq, bk, causal)
        pre_r, pre_w = Hq * 2 * Tq * D * e, Hq * Tq * FP32  # delta = rowsum(dO * O)
        # dK/dV: one program per key block and KV head; it walks the query blocks of every head of its group
        dkdv_r = Hkv * 2 * Tk * D * e + Hq * sum(q_rows) * (2 * D * e + 2 * FP32)
        dkdv_w = Hkv * 2 * Tk * D * e
        # dQ: one program per query block and query head; it walks the key blocks it sees
        dq_r = Hq * (Tq * (2 * D * e + 2 * FP32) + 2 * D * e * sum(kv_rows))
        dq_w = Hq * Tq * D * e
        read, write = pre_r + dkdv_r + dq_r, pre_w + dkdv_w + dq_w
    flops = attention_flops(B, Hq, Tq, Tk, D, causal, backward)
    label = f"flash attention {'bwd' if backward else 'fwd'} (Bq={bq}, Bk={bk})"
    return Cost.of(flops, label=label, hbm=(B * read, B * write))


def attention_min_cost(B: int, Hq: int, Tq: int, Tk: int, D: int, *, Hkv: int | None = None, elem_bytes: int = 2,
                       causal: bool = False, backward: bool = False) -> Cost:
    """The compulsory traffic: every input read once, every output written once (the roofline's byte term).

    Examples:
        >>> round(attention_min_cost(1, 16, 4096, 4096, 128).bytes() / 1e6, 1)   # q, k, v read; o, lse written
        67.4
    """
    Hkv = Hkv or Hq
    e = elem_bytes
    q, kv = Hq * Tq * D * e, Hkv * Tk * D * e
    if not backward:
        read, write = q + 2 * kv, q + Hq * Tq * FP32  # q, k, v | o, lse
    else:
        read, write = 3 * q + 2 * kv + Hq * Tq * FP32, q + 2 * kv  # q, o, do, k, v, lse | dq, dk, dv
    flops = attention_flops(B, Hq, Tq, Tk, D, causal, backward)
    return Cost.of(flops, label="attention, compulsory traffic", hbm=(B * read, B * write))


def flash_attention_theta(N: int, D: int, sram_elems: float) -> float:
    """The FlashAttention paper's forward count, 2Nd + 8 N^2 d^2 / M elements (Theorem 2, constants ours).

    Examples:
        >>> round(flash_attention_theta(4096, 128, 100_000) / 1e6, 2)     # million elements
        23.04
    """
    return 2 * N * D + 8 * N * N * D * D / sram_elems
