"""FlashAttention-2 forward for Hopper (sm_90): K and V tiles arrive by TMA (the bulk tensor copy engine).

Same function as `_flash_attn_fwd_kernel` in kernel.py (online softmax, exp2 with the scale folded in, a
mask-free interior loop and a masked loop for the diagonal or the ragged tail), restricted to what the
copy engine can address: contiguous (B, T, H, D) fp16/bf16 tensors, D in {64, 128}, Tq == Tk.

The tensors are seen as 2-D (B*T, H*D) row-major matrices; one TMA box is (rows, D) at column head*D. A box
that runs past a batch's last row reads the next batch's first rows (or zeros past the tensor's end); those
keys are masked out of the scores. Q and O move once per program, by masked pointer loads and stores.

The loop is a `tl.range` whose `num_stages` sets how many K/V tiles are in flight (the pipeliner allocates
the shared-memory ring and the mbarriers); with WS the loop is warp-specialised (Triton's Hopper pass: a
producer warp group issues the TMA loads, consumer warp groups run the wgmma and the softmax).

With HAS_LEFT the forward is a causal sliding window (row r sees keys r - WL .. r): the key loop covers only the band
of key blocks, masked at its left edge and on the diagonal (dev/attention/NOTES.md, "Hopper windowed forward").

`_hopper_flash_attn_bwd_dkdv_kernel` is the same treatment for kernel.py's dK/dV kernel: Q and dO tiles by TMA in a
pipelined query loop past the program's K and V, LSE and delta by pointers (dev/attention/NOTES.md, "Hopper backward
(dK/dV)").
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634


@triton.jit
def _hopper_fwd_inner(b_acc, b_m, b_l, b_q, desc_k, desc_v, row0, col_kv, o_m, o_n, lo, hi, T, scale_log2, WL,
                      BN: tl.constexpr, IS_CAUSAL: tl.constexpr, MASK: tl.constexpr, STAGES: tl.constexpr,
                      WS: tl.constexpr, HAS_LEFT: tl.constexpr):
    for start_n in tl.range(lo, hi, BN, num_stages=STAGES, warp_specialize=WS):
        start_n = tl.multiple_of(start_n, BN)
        b_k = desc_k.load([row0 + start_n, col_kv])  # (BN, D) by TMA
        b_s = tl.dot(b_q, b_k.T)  # (BM, BN) fp32, unscaled
        if MASK:
            o_k = start_n + o_n
            m_s = o_k[None, :] < T
            if IS_CAUSAL:
                m_s = m_s & (o_k[None, :] <= o_m[:, None])
            if HAS_LEFT:  # sliding window: row r sees keys r - WL .. r
                m_s = m_s & (o_k[None, :] >= o_m[:, None] - WL)
            b_s = tl.where(m_s, b_s * scale_log2, float("-inf"))
            b_m_new = tl.maximum(b_m, tl.max(b_s, 1))
            if HAS_LEFT:
                # the window's left edge block comes first: a row may have seen no key yet (m = -inf)
                b_m_use = tl.where(b_m_new == float("-inf"), 0.0, b_m_new)
            else:
                b_m_use = b_m_new
            b_s = b_s - b_m_use[:, None]
        else:
            # scale folded into the max and the exponent's argument: one FMA per element
            b_m_new = tl.maximum(b_m, tl.max(b_s, 1) * scale_log2)
            b_m_use = b_m_new
            b_s = b_s * scale_log2 - b_m_new[:, None]
        b_p = tl.math.exp2(b_s)
        b_alpha = tl.math.exp2(b_m - b_m_use)
        b_l = b_l * b_alpha + tl.sum(b_p, 1)
        b_acc = b_acc * b_alpha[:, None]
        b_v = desc_v.load([row0 + start_n, col_kv])  # (BN, D) by TMA
        b_acc = tl.dot(b_p.to(b_v.dtype), b_v, b_acc)
        b_m = b_m_new
    return b_acc, b_m, b_l


@triton.jit
def _hopper_flash_attn_fwd_kernel(Q, desc_k, desc_v, O, LSE, T, NROWS, scale_log2, WL,
                                  HQ: tl.constexpr, GROUP: tl.constexpr, D: tl.constexpr,
                                  BM: tl.constexpr, BN: tl.constexpr, IS_CAUSAL: tl.constexpr,
                                  STAGES: tl.constexpr, WS: tl.constexpr, REV: tl.constexpr, EVEN_M: tl.constexpr,
                                  EVEN_N: tl.constexpr, ONE_LOOP: tl.constexpr, HAS_LEFT: tl.constexpr):
    # grid (query blocks, batch x heads) as in kernel.py: neighbouring programs share one head's K and V in L2
    i_m = tl.num_programs(0) - 1 - tl.program_id(0) if REV else tl.program_id(0)
    i_bh = tl.program_id(1)
    i_b = i_bh // HQ
    i_h = i_bh % HQ
    row0 = i_b * T  # first row of this batch in the (B*T, H*D) view
    col_q = i_h * D
    col_kv = (i_h // GROUP) * D
    o_m = i_m * BM + tl.arange(0, BM)
    o_n = tl.arange(0, BN)
    o_d = tl.arange(0, D)
    m_m = o_m < T
    # Q by a descriptor made in the kernel: Triton's Hopper warp specialisation splits the (BM, D) tile between two
    # consumer warp groups of BM/2 rows, and rewrites an in-kernel descriptor's box to match; a host descriptor keeps
    # its BM-row box, so each half-copy would move twice the bytes its barrier expects (seen in the TTGIR; a hang).
    # A pointer load of Q is no way out: the pass then fails (WSLowerToken assertion).
    desc_q = tl.make_tensor_descriptor(Q, shape=[NROWS, HQ * D], strides=[HQ * D, 1], block_shape=[BM, D])
    b_q = desc_q.load([row0 + i_m * BM, col_q])  # (BM, D)
    b_m = tl.full([BM], float("-inf"), tl.float32)
    b_l = tl.zeros([BM], tl.float32)
    b_acc = tl.zeros([BM, D], tl.float32)
    if IS_CAUSAL:
        # Tq == Tk: row r sees keys c <= r. Blocks left of the diagonal are seen in full by every row.
        lo_mask = i_m * BM
        hi = tl.minimum(T, (i_m + 1) * BM)
    else:
        lo_mask = T // BN * BN
        hi = T
    if HAS_LEFT:
        # sliding window (causal, Tq == Tk, masked.py's window_size=(WL, 0)): row r sees keys r - WL .. r. The band
        # of key blocks starts at the first row's left bound (rounded down to a block); blocks from the last row's
        # left bound (rounded up) to the diagonal are seen in full by every row; blocks left of the band are never
        # loaded. Only the left edge block(s) and the diagonal block(s) are masked.
        lo = tl.maximum(i_m * BM - WL, 0) // BN * BN
        lo_full = (tl.maximum(i_m * BM + BM - 1 - WL, 0) + BN - 1) // BN * BN
        lo_full = tl.minimum(tl.maximum(lo_full, lo), lo_mask)
    else:
        lo = 0
        lo_full = 0
    if ONE_LOOP:
        # one loop, masked throughout when a mask is needed at all: Triton 3.6's Hopper warp specialisation fails
        # to compile a function with two loops (an MLIR dominance assertion, seen 2026-11-26)
        b_acc, b_m, b_l = _hopper_fwd_inner(b_acc, b_m, b_l, b_q, desc_k, desc_v, row0, col_kv, o_m, o_n, lo, hi,
                                            T, scale_log2, WL, BN, IS_CAUSAL, IS_CAUSAL or not EVEN_N, STAGES, WS,
                                            HAS_LEFT)
    else:
        if HAS_LEFT:  # the window's left edge
            b_acc, b_m, b_l = _hopper_fwd_inner(b_acc, b_m, b_l, b_q, desc_k, desc_v, row0, col_kv, o_m, o_n, lo,
                                                lo_full, T, scale_log2, WL, BN, IS_CAUSAL, True, STAGES, WS, HAS_LEFT)
        b_acc, b_m, b_l = _hopper_fwd_inner(b_acc, b_m, b_l, b_q, desc_k, desc_v, row0, col_kv, o_m, o_n, lo_full,
                                            lo_mask, T, scale_log2, WL, BN, IS_CAUSAL, False, STAGES, WS, HAS_LEFT)
        if IS_CAUSAL or not EVEN_N:  # compile-time: with T % BN == 0 and no causal mask no block needs a mask
            b_acc, b_m, b_l = _hopper_fwd_inner(b_acc, b_m, b_l, b_q, desc_k, desc_v, row0, col_kv, o_m, o_n,
                                                lo_mask, hi, T, scale_log2, WL, BN, IS_CAUSAL, True, STAGES, WS,
                                                HAS_LEFT)
    # every stored row saw at least its own key (Tq == Tk; causal or window), so l > 0 and m is finite
    b_o = (b_acc / b_l[:, None]).to(O.dtype.element_ty)
    b_lse = (b_m + tl.math.log2(b_l)) * 0.6931471805599453
    tl.store(LSE + i_bh.to(tl.int64) * T + o_m, b_lse, mask=m_m)
    p_o = O + (row0 + o_m).to(tl.int64)[:, None] * (HQ * D) + col_q + o_d[None, :]
    if EVEN_M:
        tl.store(p_o, b_o)
    else:  # a ragged last block: its rows past T belong to the next batch
        tl.store(p_o, b_o, mask=m_m[:, None])


@triton.jit
def _hopper_bwd_dkdv_inner(b_dk, b_dv, b_k, b_v, desc_q, desc_do, LSE, DELTA, i_b, i_h0, row0, o_n, o_m0, lo, hi, T,
                           scale_log2, HQ: tl.constexpr, D: tl.constexpr, BM: tl.constexpr, NG: tl.constexpr,
                           IS_CAUSAL: tl.constexpr, MASK: tl.constexpr, STAGES: tl.constexpr, WS: tl.constexpr):
    # NG > 1 flattens the walk over the group's query heads into this one loop (WS compiles one loop only)
    nblk = (hi - lo + BM - 1) // BM
    for j in tl.range(0, nblk * NG, num_stages=STAGES, warp_specialize=WS):
        if NG == 1:  # compile-time
            i_h = i_h0
            start_m = lo + j * BM
        else:
            g = j // nblk
            i_h = i_h0 + g
            start_m = lo + (j - g * nblk) * BM
        o_m = start_m + o_m0
        b_q = desc_q.load([row0 + start_m, i_h * D])  # (BM, D) by TMA
        b_do = desc_do.load([row0 + start_m, i_h * D])  # (BM, D) by TMA
        off = (i_b * HQ + i_h).to(tl.int64) * T
        if MASK:
            m_m = o_m < T
            b_lse2 = tl.load(LSE + off + o_m, mask=m_m, other=0.0) * 1.4426950408889634
            b_delta = tl.load(DELTA + off + o_m, mask=m_m, other=0.0)
        else:
            b_lse2 = tl.load(LSE + off + o_m) * 1.4426950408889634
            b_delta = tl.load(DELTA + off + o_m)
        b_st = tl.dot(b_k, b_q.T) * scale_log2  # (BN, BM)
        b_pt = tl.math.exp2(b_st - b_lse2[None, :])
        if MASK:
            # rows past T belong to the next batch (or are TMA zeros): their P^T columns are zeroed, so is dS^T
            m_s = m_m[None, :]
            if IS_CAUSAL:  # Tq == Tk: key c is seen by rows r >= c
                m_s = m_s & (o_n[:, None] <= o_m[None, :])
            b_pt = tl.where(m_s, b_pt, 0.0)
        b_dv = tl.dot(b_pt.to(b_do.dtype), b_do, b_dv)
        b_dpt = tl.dot(b_v, b_do.T)  # (BN, BM)
        b_dst = b_pt * (b_dpt - b_delta[None, :])
        b_dk = tl.dot(b_dst.to(b_q.dtype), b_q, b_dk)
    return b_dk, b_dv


@triton.jit
def _hopper_flash_attn_bwd_dkdv_kernel(Q, K, V, DO, DK, DV, LSE, DELTA, T, NROWS, scale, scale_log2,
                                       HQ: tl.constexpr, HKV: tl.constexpr, GROUP: tl.constexpr, D: tl.constexpr,
                                       BM: tl.constexpr, BN: tl.constexpr, IS_CAUSAL: tl.constexpr,
                                       STAGES: tl.constexpr, WS: tl.constexpr, EVEN_M: tl.constexpr,
                                       ONE_LOOP: tl.constexpr):
    # grid (key blocks, batch x kv heads) as kernel.py's dK/dV kernel: K and V of the block stay on chip, Q and dO
    # of every query head of the group stream past them by TMA
    i_n = tl.program_id(0)
    i_bh = tl.program_id(1)
    i_b = i_bh // HKV
    i_hk = i_bh % HKV
    row0 = i_b * T
    o_n = i_n * BN + tl.arange(0, BN)
    o_m0 = tl.arange(0, BM)
    o_d = tl.arange(0, D)
    # every descriptor made in the kernel: WS partitions the BN key rows between its consumer groups and rewrites an
    # in-kernel descriptor's box to match (the forward's finding for Q); a key block past T reads the next batch's
    # rows (or zeros), which only reach dK/dV rows that are not stored
    desc_k = tl.make_tensor_descriptor(K, shape=[NROWS, HKV * D], strides=[HKV * D, 1], block_shape=[BN, D])
    desc_v = tl.make_tensor_descriptor(V, shape=[NROWS, HKV * D], strides=[HKV * D, 1], block_shape=[BN, D])
    desc_q = tl.make_tensor_descriptor(Q, shape=[NROWS, HQ * D], strides=[HQ * D, 1], block_shape=[BM, D])
    desc_do = tl.make_tensor_descriptor(DO, shape=[NROWS, HQ * D], strides=[HQ * D, 1], block_shape=[BM, D])
    b_k = desc_k.load([row0 + i_n * BN, i_hk * D])  # (BN, D)
    b_v = desc_v.load([row0 + i_n * BN, i_hk * D])  # (BN, D)
    b_dk = tl.zeros([BN, D], tl.float32)
    b_dv = tl.zeros([BN, D], tl.float32)
    i_h0 = i_hk * GROUP
    if IS_CAUSAL:
        # the first query block that sees this key block, and the first that sees all of its keys
        lo = (i_n * BN) // BM * BM
        lo_full = tl.minimum((i_n * BN + BN - 1 + BM - 1) // BM * BM, T // BM * BM)
        lo_full = tl.maximum(lo_full, lo)
    else:
        lo = 0
        lo_full = 0
    hi_full = T // BM * BM
    if ONE_LOOP:
        b_dk, b_dv = _hopper_bwd_dkdv_inner(b_dk, b_dv, b_k, b_v, desc_q, desc_do, LSE, DELTA, i_b, i_h0, row0, o_n,
                                            o_m0, lo, T, T, scale_log2, HQ, D, BM, GROUP, IS_CAUSAL,
                                            IS_CAUSAL or not EVEN_M, STAGES, WS)
    else:
        for g in range(GROUP):
            # the diagonal blocks (causal only), then the blocks every key sees in full, then the ragged tail
            if IS_CAUSAL:
                b_dk, b_dv = _hopper_bwd_dkdv_inner(b_dk, b_dv, b_k, b_v, desc_q, desc_do, LSE, DELTA, i_b, i_h0 + g,
                                                    row0, o_n, o_m0, lo, lo_full, T, scale_log2, HQ, D, BM, 1,
                                                    IS_CAUSAL, True, STAGES, WS)
            b_dk, b_dv = _hopper_bwd_dkdv_inner(b_dk, b_dv, b_k, b_v, desc_q, desc_do, LSE, DELTA, i_b, i_h0 + g,
                                                row0, o_n, o_m0, lo_full, hi_full, T, scale_log2, HQ, D, BM, 1,
                                                IS_CAUSAL, False, STAGES, WS)
            if not EVEN_M:
                b_dk, b_dv = _hopper_bwd_dkdv_inner(b_dk, b_dv, b_k, b_v, desc_q, desc_do, LSE, DELTA, i_b, i_h0 + g,
                                                    row0, o_n, o_m0, tl.maximum(hi_full, lo_full), T, T, scale_log2,
                                                    HQ, D, BM, 1, IS_CAUSAL, True, STAGES, WS)
    b_dk = b_dk * scale
    m_n = (o_n < T)[:, None]
    p_dk = DK + (row0 + o_n).to(tl.int64)[:, None] * (HKV * D) + i_hk * D + o_d[None, :]
    p_dv = DV + (row0 + o_n).to(tl.int64)[:, None] * (HKV * D) + i_hk * D + o_d[None, :]
    tl.store(p_dk, b_dk.to(DK.dtype.element_ty), mask=m_n)
    tl.store(p_dv, b_dv.to(DV.dtype.element_ty), mask=m_n)


# Tiles per (head dim, causal): (BM, BN, num_warps, loop stages, WS). Measured on an H100 SXM (dev/attention/NOTES.md,
# "Hopper forward (TMA/WS)", run H2): D128 non-causal is fastest warp-specialised (one TMA producer group and two
# consumer groups of 64 rows; WS needs num_warps=4 and launches 12), D128 causal without WS (the WS kernel must mask
# every block, its single loop cannot skip the mask). With WS, 3 loop stages gave NaN (Triton 3.6), so 2. kernel.py
# dispatches here only where these tiles beat its own (HOPPER_MIN_T there).
# D64 is not dispatched here (no tile beat kernel.py's by more than noise); its entries are the best new tiles.
def _hopper_table(D: int, T: int, causal: bool) -> dict:
    if D <= 64:
        t = (128, 64, 4, 3, False) if causal else (128, 128, 4, 2, True)
    else:
        t = (128, 128, 8, 3, False) if causal else (128, 128, 4, 2, True)
    return {"BM": t[0], "BN": t[1], "num_warps": t[2], "STAGES": t[3], "WS": t[4], "ONE_LOOP": t[4], "REV": causal}


# Sliding-window tiles (left window, causal). Measured on an H100 SXM at D128, window 1023, T = 2048 / 4096 / 16384
# (dev/attention/NOTES.md, "Hopper windowed forward", run W1): 64x64, 4 warps, 3 loop stages was fastest everywhere
# (113 KB of shared memory: two CTAs an SM, one's softmax and prologue overlap the other's wgmma); the 128-row tiles,
# WS included, were 5-15% slower than masked.py's portable kernel (short ~9-block loops); 4 stages (one CTA an SM) 1.5x
# slower.
def _hopper_window_table(D: int, T: int) -> dict:
    return {"BM": 64, "BN": 64, "num_warps": 4, "STAGES": 3, "WS": False, "ONE_LOOP": False, "REV": False}


def _scratch(size: int, alignment: int, stream):
    # global memory for the kernel's in-kernel TMA descriptor (128 bytes a program), from torch's caching allocator
    return torch.empty(size, dtype=torch.int8, device="cuda")


def _ensure_allocator() -> None:
    """tl.make_tensor_descriptor needs a Triton allocator; set ours only where the caller has set none."""
    from triton.runtime import _allocation

    if isinstance(_allocation._allocator.get(), _allocation.NullAllocator):
        triton.set_allocator(_scratch)


def _launch_config(q: torch.Tensor, config: dict | None, table: dict) -> tuple[int, int, int, dict]:
    """(BM, BN, num_warps, the kernel's other constexprs) from `config` (dev sweeps) or the launch table; sets up
    the allocator the in-kernel descriptors need."""
    cfg = dict(config) if config is not None else table
    if q.device.type == "cuda":
        _ensure_allocator()
    return cfg.pop("BM"), cfg.pop("BN"), cfg.pop("num_warps"), cfg


def hopper_supported(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether `hopper_flash_attn_fwd` can take these inputs (the caller checks the GPU and the interpreter)."""
    B, Tq, Hq, D = q.shape
    Tk = k.shape[1]
    return (q.dtype in (torch.float16, torch.bfloat16) and D in (64, 128) and Tq == Tk
            and all(t.is_contiguous() and t.data_ptr() % 16 == 0 for t in (q, k, v)))


def hopper_flash_attn_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, softmax_scale: float,
                          config: dict | None = None, window_left: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward on sm_90 by TMA. q: (B, T, Hq, D), k, v: (B, T, Hkv, D), contiguous. Returns o (B, T, Hq, D)
    and lse (B, Hq, T) fp32 (natural log). `config` overrides the tile table (for the dev sweeps).
    window_left >= 0 (with causal): a sliding window, row r sees keys r - window_left .. r (flash-attn's
    window_size=(window_left, 0)); only the band of key blocks is visited."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    B, T, Hq, D = q.shape
    Hkv = k.shape[2]
    window = window_left >= 0
    assert causal or not window, "a left window is supported with causal=True (right side 0) only"
    table = _hopper_window_table(D, T) if window else _hopper_table(D, T, causal)
    BM, BN, num_warps, cfg = _launch_config(q, config, table)
    # causal: the mask-free loop ends at the query block's first row, which must be a multiple of BN
    assert not causal or BM % BN == 0 or cfg["ONE_LOOP"], (BM, BN)
    o = torch.empty_like(q)
    lse = torch.empty((B, Hq, T), device=q.device, dtype=torch.float32)
    k2, v2 = k.view(B * T, Hkv * D), v.view(B * T, Hkv * D)
    desc_k = TensorDescriptor.from_tensor(k2, [BN, D])
    desc_v = TensorDescriptor.from_tensor(v2, [BN, D])
    grid = (triton.cdiv(T, BM), B * Hq)
    _hopper_flash_attn_fwd_kernel[grid](q, desc_k, desc_v, o, lse, T, B * T, softmax_scale * LOG2E,
                                        max(window_left, 0), HQ=Hq, GROUP=Hq // Hkv, D=D, BM=BM, BN=BN,
                                        IS_CAUSAL=causal, EVEN_M=T % BM == 0, EVEN_N=T % BN == 0, HAS_LEFT=window,
                                        num_warps=num_warps, **cfg)
    return o, lse


# dK/dV tiles (BM query rows a step, BN keys a program). Measured at D128 (dev/attention/NOTES.md, "Hopper backward
# (dK/dV)", runs B1-B2 on an H200): 64x128, 8 warps, no WS, 3 loop stages was best or within 1% (whole backward
# +7-13% over kernel.py's dK/dV at T = 2048-16384); 4 stages the same; WS (one loop, 12 warps) at 2 stages +6-11%,
# at 3 stages NaN (as in the forward). BM128 spills.
# D64 is not dispatched here and was not timed.
def _hopper_bwd_table(D: int, T: int, causal: bool) -> dict:
    return {"BM": 64, "BN": 128, "num_warps": 8, "STAGES": 3, "WS": False, "ONE_LOOP": False}


def hopper_flash_attn_bwd_dkdv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, do: torch.Tensor,
                               lse: torch.Tensor, delta: torch.Tensor, causal: bool, softmax_scale: float,
                               config: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """dK, dV on sm_90 by TMA. q, do: (B, T, Hq, D), k, v: (B, T, Hkv, D), contiguous; lse, delta (B, Hq, T) fp32.
    Returns dk, dv like k, v. `config` overrides the tile table (for the dev sweeps)."""
    B, T, Hq, D = q.shape
    Hkv = k.shape[2]
    BM, BN, num_warps, cfg = _launch_config(q, config, _hopper_bwd_table(D, T, causal))
    # causal: the diagonal's masked loop must start on a query block boundary that a key block's start lies in
    assert not causal or BN % BM == 0 or cfg["ONE_LOOP"], (BM, BN)
    dk = torch.empty_like(k)
    dv = torch.empty_like(v)
    grid = (triton.cdiv(T, BN), B * Hkv)
    _hopper_flash_attn_bwd_dkdv_kernel[grid](q, k, v, do, dk, dv, lse, delta, T, B * T, softmax_scale,
                                             softmax_scale * LOG2E, HQ=Hq, HKV=Hkv, GROUP=Hq // Hkv, D=D, BM=BM, BN=BN,
                                             IS_CAUSAL=causal, EVEN_M=T % BM == 0, num_warps=num_warps, **cfg)
    return dk, dv


__all__ = ["hopper_flash_attn_bwd_dkdv", "hopper_flash_attn_fwd", "hopper_supported"]
