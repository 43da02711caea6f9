"""NSA's FLOPs and HBM bytes, branch by branch, for the kernels' schedules; registered in the iomodel as "nsa".

FLOPs follow the FlashAttention convention (iomodel.attention): 4 D per visible (query, key) pair forward, 2.5x that
backward; the selection adds the QK^T of the compressed branch again (2 D per pair) and its block-mapping matmul.
Pair counts are exact for causal attention given how many blocks a query selects; the selected branch assumes every
query fills min(n, blocks up to its own) slots (true whenever the candidates have nonzero importance, which the
softmax guarantees in exact arithmetic) and, non-causal, n whole blocks.

Bytes count what each kernel loads from and stores to HBM (L2 is not modelled: re-reads that hit L2 count as HBM,
as iomodel.flash_attention_cost does). Two constants are assumptions, named here:
  SORT_BYTES_PER_PAIR = 64: the block-list sort (torch.sort, stable, of one int64 key and an int64 index per
      (token, slot) pair): a radix sort of 64-bit keys makes about 4 passes, each reading and writing key and
      index (4 x 16 B); not measured.
  EAGER_GATE_PASSES = 5: the gates run as PyTorch elementwise ops (3 multiplies, 2 adds), each reading two
      (B, T, Hq, D) tensors and writing one; a fused combine would need one pass.
"""

from __future__ import annotations

import numpy as np

from ....iomodel import Cost, register

FP32 = 4
SORT_BYTES_PER_PAIR = 64
EAGER_GATE_PASSES = 5
FSA_W = {"fwd": 256, "bwd": 512}  # tokens per work item (kernel.tile_table: BM x CH)
BM_FLASH, BN_FLASH = 128, 64  # the window branch's tiles (flash/kernel.py's table at D = 128)


def _n(T: int, block_size: int, stride: int) -> int:
    return 0 if T < block_size else (T - block_size) // stride + 1


def pair_counts(T: int, *, block_size: int = 64, stride: int = 16, select_blocks: int = 16, select_size: int = 64,
                window: int = 512, causal: bool = True) -> dict:
    """Visible (query, key) pairs per query head for each branch, and the selected (token, block) pairs."""
    t = np.arange(T, dtype=np.int64)
    nc = _n(T, block_size, stride)
    ns = -(-T // select_size)
    if causal:
        cmp = np.clip((t - block_size + 1) // stride + 1, 0, nc)
        m = np.minimum(select_blocks, t // select_size + 1)
        slc = (m - 1) * select_size + t % select_size + 1
        swa = np.minimum(t + 1, window)
    else:
        cmp = np.full(T, nc)
        m = np.full(T, select_blocks)
        slc = np.full(T, min(select_blocks * select_size, T))
        swa = np.minimum(T, t + window) - np.maximum(0, t - window + 1)
    return {"cmp": int(cmp.sum()), "slc": int(slc.sum()), "swa": int(swa.sum()), "sel_pairs": int(m.sum()),
            "nc": nc, "ns": ns, "cmp_rows": cmp}


def _kv_rows_by_block(rows: np.ndarray, bm: int, bn: int) -> int:
    """Key rows a query-block program loads: the most any of its rows sees, rounded up to the key tile."""
    T = rows.shape[0]
    tot = 0
    for s in range(0, T, bm):
        seen = int(rows[s:s + bm].max()) if s < T else 0
        tot += -(-seen // bn) * bn
    return tot


def nsa_branch_costs(B: int, T: int, Hq: int, D: int, Hkv: int | None = None, *, block_size: int = 64,
                     stride: int = 16, select_blocks: int = 16, select_size: int = 64, window: int = 512,
                     causal: bool = True, elem_bytes: int = 2, backward: bool = False, order: str = "fsa",
                     select: bool = True) -> dict[str, Cost]:
    """One Cost per part of NSA: compress, cmp, select, slc (in `order`), swa, gates."""
    Hkv = Hkv or Hq
    G, e, n, lp = Hq // Hkv, elem_bytes, select_blocks, select_size
    pc = pair_counts(T, block_size=block_size, stride=stride, select_blocks=n, select_size=lp, window=window,
                     causal=causal)
    nc, ns, sp = pc["nc"], pc["ns"], pc["sel_pairs"]
    f = 2.5 if backward else 1.0
    qd = T * D * e  # one head's Q (or O, dO) in bytes
    out: dict[str, Cost] = {}
    # compression (mean-pool): forward reads K, V and writes the compressed pair; backward the reverse
    r, w = 2 * Hkv * T * D * e, 2 * Hkv * nc * D * e
    out["compress"] = Cost.of(0, label="mean-pool compression", hbm=((w, r) if backward else (r, w)))
    # compressed attention (FlashAttention-2 schedule over Nc keys, 64 x 64 tiles)
    kv_cmp = _kv_rows_by_block(pc["cmp_rows"], 64, 64)
    if not backward:
        rd, wr = Hq * (qd + 2 * D * e * kv_cmp), Hq * (qd + T * FP32)
    else:
        rd = Hq * (2 * qd) + Hkv * 2 * nc * D * e + Hq * T * (2 * D * e + 2 * FP32)  # delta; dK/dV program
        rd += Hq * (2 * qd + 2 * T * FP32 + 2 * D * e * kv_cmp)  # dQ program
        wr = Hq * T * FP32 + Hkv * 2 * nc * D * e + Hq * qd
    out["cmp"] = Cost.of(4 * D * Hq * pc["cmp"] * f, label="compressed attention", hbm=(rd, wr))
    # selection: QK^T of every head again, the block-mapping matmul, scores written, top-n
    if select and not backward:
        bc = max(64, 1 << (lp // stride + block_size // stride - 2).bit_length())
        nj = max(1, (bc - block_size // stride + 1) // (lp // stride))
        tiles = sum(-(-min(ns, (s + 63) // lp + 1) // nj) if causal else -(-ns // nj) for s in range(0, T, 64))
        flops = 2 * D * Hq * pc["cmp"] + 2 * Hkv * 64 * tiles * bc * max(16, nj)
        rd = Hkv * tiles * bc * D * e + Hq * tiles * 64 * (D * e + FP32) + Hkv * T * ns * FP32  # + top-k reads scores
        wr = 2 * Hkv * T * ns * FP32 + Hkv * T * n * 12  # scores filled, then written; top-k values and indices
        out["select"] = Cost.of(flops, label="block scores + top-n", hbm=(rd, wr))
    # selected branch
    kv_block = 2 * lp * D * e
    items = {m: -(-Hkv * T * n // FSA_W[m]) + Hkv * ns for m in FSA_W}
    sort = Hkv * T * n * SORT_BYTES_PER_PAIR
    if not backward:
        if order == "fsa":
            rd = sort + items["fwd"] * kv_block + Hq * sp * D * e + Hkv * sp * 4  # K, V per item; Q per pair; tokens
            rd += Hq * sp * (D * e + FP32) + Hkv * T * n * 8  # combine: partials, indices, positions
            wr = Hq * sp * (D * e + FP32) + Hq * (qd + T * FP32)
        else:
            rd = Hkv * T * (G * D * e + n * 4) + Hkv * sp * kv_block
            wr = Hq * (qd + T * FP32)
    else:
        rd = Hq * 2 * qd  # delta
        rd += items["bwd"] * kv_block + Hq * sp * (2 * D * e + 2 * FP32) + Hkv * sp * 4
        wr = Hq * T * FP32 + items["bwd"] * 2 * lp * D * FP32
        rd += items["bwd"] * 2 * lp * D * FP32  # dK/dV partials summed per block
        wr += Hkv * 2 * T * D * e
        if order == "fsa":
            wr += Hq * sp * D * FP32 + Hq * qd  # dQ partial per pair, then dQ
            rd += Hq * sp * D * FP32 + Hkv * T * n * 8
        else:
            rd += Hkv * T * (2 * G * D * e + 2 * G * FP32 + n * 4) + Hkv * sp * kv_block
            wr += Hq * qd
    out["slc"] = Cost.of(4 * D * Hq * pc["slc"] * f, label=f"selected attention ({order} order)", hbm=(rd, wr))
    # sliding window (flash_attn's windowed kernel: a query block loads only the band of keys it sees)
    t = np.arange(T)
    left = np.maximum(0, t - window + 1)
    right = t + 1 if causal else np.minimum(T, t + window)
    kv_w = sum(-(-(int(right[s:s + BM_FLASH].max()) - int(left[s]) // BN_FLASH * BN_FLASH) // BN_FLASH) * BN_FLASH
               for s in range(0, T, BM_FLASH))
    if not backward:
        rd, wr = Hq * (qd + 2 * D * e * kv_w), Hq * (qd + T * FP32)
    else:
        rd = Hq * 2 * qd + Hkv * 2 * T * D * e + 2 * Hq * kv_w * (2 * D * e + 2 * FP32)  # delta; dK/dV
        rd += Hq * (2 * qd + 2 * T * FP32 + 2 * D * e * kv_w)  # dQ
        wr = Hq * T * FP32 + Hkv * 2 * T * D * e + Hq * qd
    out["swa"] = Cost.of(4 * D * Hq * pc["swa"] * f, label="sliding window", hbm=(rd, wr))
    # gates: PyTorch elementwise passes (forward), their gradients (backward: dO times gate, and gate gradients)
    passes = EAGER_GATE_PASSES if not backward else 2 * EAGER_GATE_PASSES
    out["gates"] = Cost.of(0, label="gates (eager PyTorch)", hbm=(passes * 2 * Hq * qd, passes * Hq * qd))
    return {k: c * B for k, c in out.items()}


@register("nsa")
def nsa_cost(B: int, T: int, Hq: int, D: int, Hkv: int | None = None, *, block_size: int = 64, stride: int = 16,
             select_blocks: int = 16, select_size: int = 64, window: int = 512, causal: bool = True,
             elem_bytes: int = 2, backward: bool = False, order: str = "fsa") -> Cost:
    """NSA's whole cost (the sum of nsa_branch_costs), forward or backward."""
    parts = nsa_branch_costs(B, T, Hq, D, Hkv, block_size=block_size, stride=stride, select_blocks=select_blocks,
                             select_size=select_size, window=window, causal=causal, elem_bytes=elem_bytes,
                             backward=backward, order=order)
    total = Cost()
    for c in parts.values():
        total = total + c
    return Cost(total.flops, total.traffic, f"nsa {'bwd' if backward else 'fwd'} ({order} order)")


def nsa_flops(B: int, T: int, Hq: int, D: int, *, backward: bool = False, **kw) -> float:
    """The attention FLOPs of NSA's three branches (FA convention), what the benchmark's TFLOP/s counts."""
    pc = pair_counts(T, **kw)
    return 4.0 * D * B * Hq * (pc["cmp"] + pc["slc"] + pc["swa"]) * (2.5 if backward else 1.0)


def selected_flops(B: int, T: int, Hq: int, D: int, *, backward: bool = False, **kw) -> float:
    pc = pair_counts(T, **kw)
    return 4.0 * D * B * Hq * pc["slc"] * (2.5 if backward else 1.0)
