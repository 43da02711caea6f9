"""FlashAttention forward for Hopper (sm_90) in Gluon, with FlashAttention-3's schedule stated explicitly.

Written against Triton 3.6's Gluon (gluon_gate.GLUON_TRITON_VERSIONS); importing it on another Triton raises
UnsupportedError before Gluon is touched. Never imported by `import ioaware`: kernel.py loads it only when
IOAWARE_GLUON=1 and `gluon_gate.gluon_refusal` has nothing against the inputs.

One program = one query tile of 64 x CONSUMERS rows of one (batch, head); its partitions (`gl.warp_specialize`):
- producer (1 warp, 24 registers): TMA-loads the Q tile once, then every K and V tile of the program's key range into
  a ring of STAGES shared-memory slots. Per slot: `k_ready` / `v_ready` (TMA byte counts; separate, so S = Q K^T can
  start before V lands) and `kv_empty` (one arrival per consumer warpgroup once its P V on that slot is done).
- CONSUMERS warpgroups of 64 query rows each (4 warps; wgmma's M is 64 per warpgroup). Per key tile: S = Q K^T
  (wgmma, Q and K from shared memory), online softmax in fp32 with exp2 and the scale folded in, O += P V (wgmma with
  P from registers, as FA3's "RS" GEMM: P never touches shared memory).

FA3's two overlaps, each a constexpr so a device run can switch them off one at a time:
- OVERLAP (intra-warpgroup): step j issues S_j = Q K_j^T and O += P_{j-1} V_{j-1} back to back, waits for S_j only,
  runs the softmax of S_j while the P V GEMM runs, then waits for it and rescales O.
- PINGPONG (inter-warpgroup, CONSUMERS == 2): the two warpgroups take turns issuing their GEMMs, ordered by two
  mbarriers (`turn`): warpgroup w waits for its turn, issues, and hands the turn over, so one's softmax runs under the
  other's GEMMs. FA3 orders them with named barriers (bar.sync id, 256); Triton 3.6's Gluon exposes no named-barrier
  op, and an mbarrier with one arrival gives the same order (the wait is on a phase parity, and strict alternation
  keeps the two warpgroups within one phase of each other).

Masks: key tiles in [0, n_full) run with no mask arithmetic; the rest - the causal diagonal tile(s), or the ragged
tail for T % BN != 0 - mask keys past the row (causal) and past T. Rows and keys past T are whatever TMA brings (the
next batch's rows in the (B*T, H*D) view, or zeros past the tensor's end); such keys are masked, such rows not stored.
"""

from __future__ import annotations

from ....errors import UnsupportedError
from .gluon_gate import triton_refusal

_reason = triton_refusal()
if _reason is not None:  # before touching Gluon: its API on other releases is not the one below
    raise UnsupportedError(_reason)

import torch  # noqa: E402
import triton  # noqa: E402
from triton.experimental import gluon  # noqa: E402
from triton.experimental.gluon import language as gl  # noqa: E402
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma, warpgroup_mma, warpgroup_mma_wait  # noqa: E402
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor  # noqa: E402

LOG2E = 1.4426950408889634
WG_ROWS = 64  # query rows per consumer warpgroup: wgmma's M with the warpgroup's 4 warps stacked along M
WG_M = gl.constexpr(WG_ROWS)  # the same, readable inside the kernels

# Variants, most ambitious first: a device run tries them in this order (dev/device_attention.sh, step `gluon`), so a
# compile failure or a wrong answer is bisected to one feature in one call.
# Names are distinct as substrings too, so `pytest -k NAME` selects exactly one.
VARIANTS = {
    "fa3_s2": dict(CONSUMERS=2, PINGPONG=True, OVERLAP=True, STAGES=2),  # FA3's schedule, 2-slot K/V ring
    "fa3_s3": dict(CONSUMERS=2, PINGPONG=True, OVERLAP=True, STAGES=3),  # the same, 3 slots (225 KB at D 128)
    "coop": dict(CONSUMERS=2, PINGPONG=False, OVERLAP=True, STAGES=2),  # two warpgroups, unordered
    "one_wg": dict(CONSUMERS=1, PINGPONG=False, OVERLAP=True, STAGES=2),  # one warpgroup, 64-row tiles
    "simple": dict(CONSUMERS=1, PINGPONG=False, OVERLAP=False, STAGES=2),  # no overlap at all
}
DEFAULT_VARIANT = "fa3_s3"  # at or above fa3_s2 at every point measured on the H200 (D 64 and 128)
BN = 128  # keys per tile (FA3's 128 x 128 tile at D = 128; at D = 64 the same, the ring is half the size)


@gluon.jit
def _softmax_step(s, m_i, l_i, o_m, j, T, scale_log2, BN: gl.constexpr, IS_CAUSAL: gl.constexpr,
                  MASK: gl.constexpr, s_layout: gl.constexpr):
    """One online-softmax update on a (64, BN) fp32 score tile: returns P (unnormalised, fp32), the new row max, the
    factor alpha that rescales what was accumulated under the old max, and the new row sum."""
    if MASK:
        o_k = j * BN + gl.arange(0, BN, layout=gl.SliceLayout(0, s_layout))
        keep = gl.expand_dims(o_k < T, 0)
        if IS_CAUSAL:  # Tq == Tk: row r sees keys c <= r
            keep = keep & (gl.expand_dims(o_k, 0) <= gl.expand_dims(o_m, 1))
        s = gl.where(keep, s * scale_log2, float("-inf"))
        m_new = gl.maximum(m_i, gl.max(s, 1))
        s = s - gl.expand_dims(m_new, 1)
    else:
        # the scale folded into the max and the exponent's argument: one FMA an element
        m_new = gl.maximum(m_i, gl.max(s, 1) * scale_log2)
        s = s * scale_log2 - gl.expand_dims(m_new, 1)
    p = gl.exp2(s)
    alpha = gl.exp2(m_i - m_new)  # 0 on the first tile (m_i = -inf); every row sees a key there, so m_new is finite
    l_i = l_i * alpha + gl.sum(p, 1)
    return p, m_new, alpha, l_i


@gluon.jit
def _consumer(q_smem, k_smem, v_smem, q_bar, k_ready, v_ready, kv_empty, turn, O, LSE, T, scale_log2, i_m, i_bh,
              row0, col_q, n_full, n_blocks, HQ: gl.constexpr, D: gl.constexpr, BN: gl.constexpr,
              IS_CAUSAL: gl.constexpr, CONSUMERS: gl.constexpr, PINGPONG: gl.constexpr, OVERLAP: gl.constexpr,
              STAGES: gl.constexpr, W: gl.constexpr):
    # wgmma accumulator layouts (4 warps stacked along M, instruction N = the tile's width) and P as the register A
    # operand of the P V GEMM (k_width 2: two 16-bit values a 32-bit register)
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, BN, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, D, 16])
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    row_s: gl.constexpr = gl.SliceLayout(1, s_layout)
    row_o: gl.constexpr = gl.SliceLayout(1, o_layout)
    dtype: gl.constexpr = q_smem.dtype

    first = i_m * (WG_M * CONSUMERS) + W * WG_M  # this warpgroup's first query row
    o_m = first + gl.arange(0, WG_M, layout=row_s)
    q = q_smem.index(W)
    m_i = gl.full([WG_M], float("-inf"), gl.float32, layout=row_s)
    l_i = gl.zeros([WG_M], gl.float32, layout=row_s)
    acc = gl.zeros([WG_M, D], gl.float32, layout=o_layout)
    mbarrier.wait(q_bar.index(0), 0)

    if OVERLAP:
        # prologue: S_0 and its softmax (masked: block 0 is the diagonal or the tail when it is the only one; when
        # it is a full block the mask keeps every key)
        mbarrier.wait(k_ready.index(0), 0)
        if PINGPONG:
            mbarrier.wait(turn.index(W), (1 - W) & 1)
        s_tok = warpgroup_mma(q, k_smem.index(0).permute((1, 0)), gl.zeros([WG_M, BN], gl.float32, layout=s_layout),
                              use_acc=False, is_async=True)
        if PINGPONG:
            mbarrier.arrive(turn.index(1 - W), count=1)
        s = warpgroup_mma_wait(0, deps=[s_tok])
        p, m_i, alpha, l_i = _softmax_step(s, m_i, l_i, o_m, 0, T, scale_log2, BN, IS_CAUSAL, True, s_layout)
        p_op = gl.convert_layout(p.to(dtype), p_layout)
        # steps 1 .. n-1: the unmasked run, then the masked tail/diagonal; each issues S_j and P_{j-1} V_{j-1}
        for j in range(1, n_full):
            acc, p_op, m_i, l_i = _overlap_step(q, k_smem, v_smem, k_ready, v_ready, kv_empty, turn, acc, p_op, m_i,
                                                l_i, o_m, j, T, scale_log2, BN, IS_CAUSAL, False, PINGPONG,
                                                STAGES, W, s_layout, row_o, p_layout)
        for j in range(gl.maximum(n_full, 1), n_blocks):
            acc, p_op, m_i, l_i = _overlap_step(q, k_smem, v_smem, k_ready, v_ready, kv_empty, turn, acc, p_op, m_i,
                                                l_i, o_m, j, T, scale_log2, BN, IS_CAUSAL, True, PINGPONG,
                                                STAGES, W, s_layout, row_o, p_layout)
        # epilogue: the last P V
        last = n_blocks - 1
        mbarrier.wait(v_ready.index(last % STAGES), (last // STAGES) & 1)
        acc = warpgroup_mma(p_op, v_smem.index(last % STAGES), acc, is_async=True)
        acc, p_op = warpgroup_mma_wait(0, deps=[acc, p_op])
        mbarrier.arrive(kv_empty.index(last % STAGES), count=1)
    else:
        for j in range(0, n_full):
            acc, m_i, l_i = _plain_step(q, k_smem, v_smem, k_ready, v_ready, kv_empty, turn, acc, m_i, l_i, o_m, j,
                                        T, scale_log2, BN, IS_CAUSAL, False, PINGPONG, STAGES, W, s_layout,
                                        row_o, p_layout)
        for j in range(n_full, n_blocks):
            acc, m_i, l_i = _plain_step(q, k_smem, v_smem, k_ready, v_ready, kv_empty, turn, acc, m_i, l_i, o_m, j,
                                        T, scale_log2, BN, IS_CAUSAL, True, PINGPONG, STAGES, W, s_layout,
                                        row_o, p_layout)

    # every stored row saw at least one key (its own, or key 0), so l > 0 and m is finite
    o = acc / gl.expand_dims(gl.convert_layout(l_i, row_o), 1)
    rows = first + gl.arange(0, WG_M, layout=row_o)
    cols = gl.arange(0, D, layout=gl.SliceLayout(0, o_layout))
    p_o = O + gl.expand_dims((row0 + rows).to(gl.int64) * (HQ * D), 1) + col_q + gl.expand_dims(cols, 0)
    gl.store(p_o, o.to(dtype), mask=gl.expand_dims(rows < T, 1))  # rows past T belong to the next batch
    lse = (m_i + gl.log2(l_i)) * 0.6931471805599453
    gl.store(LSE + i_bh.to(gl.int64) * T + o_m, lse, mask=o_m < T)


@gluon.jit
def _overlap_step(q, k_smem, v_smem, k_ready, v_ready, kv_empty, turn, acc, p_op, m_i, l_i, o_m, j, T,
                  scale_log2, BN: gl.constexpr, IS_CAUSAL: gl.constexpr, MASK: gl.constexpr, PINGPONG: gl.constexpr,
                  STAGES: gl.constexpr, W: gl.constexpr, s_layout: gl.constexpr, row_o: gl.constexpr,
                  p_layout: gl.constexpr):
    slot = j % STAGES
    prev = (j - 1) % STAGES
    mbarrier.wait(k_ready.index(slot), (j // STAGES) & 1)
    if PINGPONG:  # our turn to issue (parity alternates with the S GEMM count j)
        mbarrier.wait(turn.index(W), (j + 1 - W) & 1)
    s_zero = gl.zeros([WG_M, BN], gl.float32, layout=s_layout)  # ignored (use_acc=False)
    s_tok = warpgroup_mma(q, k_smem.index(slot).permute((1, 0)), s_zero, use_acc=False, is_async=True)
    mbarrier.wait(v_ready.index(prev), ((j - 1) // STAGES) & 1)
    acc_tok = warpgroup_mma(p_op, v_smem.index(prev), acc, is_async=True)
    if PINGPONG:  # both GEMMs issued: the other warpgroup may issue while we run the softmax
        mbarrier.arrive(turn.index(1 - W), count=1)
    s = warpgroup_mma_wait(1, deps=[s_tok])  # groups retire in order: S_j is done, P V may still run
    p, m_i, alpha, l_i = _softmax_step(s, m_i, l_i, o_m, j, T, scale_log2, BN, IS_CAUSAL, MASK, s_layout)
    acc, p_op = warpgroup_mma_wait(0, deps=[acc_tok, p_op])
    mbarrier.arrive(kv_empty.index(prev), count=1)  # K_{j-1} and V_{j-1} are no longer read
    acc = acc * gl.expand_dims(gl.convert_layout(alpha, row_o), 1)
    p_op = gl.convert_layout(p.to(q.dtype), p_layout)
    return acc, p_op, m_i, l_i


@gluon.jit
def _plain_step(q, k_smem, v_smem, k_ready, v_ready, kv_empty, turn, acc, m_i, l_i, o_m, j, T, scale_log2,
                BN: gl.constexpr, IS_CAUSAL: gl.constexpr, MASK: gl.constexpr, PINGPONG: gl.constexpr,
                STAGES: gl.constexpr, W: gl.constexpr, s_layout: gl.constexpr, row_o: gl.constexpr,
                p_layout: gl.constexpr):
    # no overlap inside the warpgroup: S, softmax, P V in sequence (the bisection's fallback)
    slot = j % STAGES
    phase = (j // STAGES) & 1
    mbarrier.wait(k_ready.index(slot), phase)
    if PINGPONG:
        mbarrier.wait(turn.index(W), (j + 1 - W) & 1)
    s_zero = gl.zeros([WG_M, BN], gl.float32, layout=s_layout)  # ignored (use_acc=False)
    s_tok = warpgroup_mma(q, k_smem.index(slot).permute((1, 0)), s_zero, use_acc=False, is_async=True)
    if PINGPONG:
        mbarrier.arrive(turn.index(1 - W), count=1)
    s = warpgroup_mma_wait(0, deps=[s_tok])
    p, m_i, alpha, l_i = _softmax_step(s, m_i, l_i, o_m, j, T, scale_log2, BN, IS_CAUSAL, MASK, s_layout)
    acc = acc * gl.expand_dims(gl.convert_layout(alpha, row_o), 1)
    p_op = gl.convert_layout(p.to(q.dtype), p_layout)
    mbarrier.wait(v_ready.index(slot), phase)
    acc_tok = warpgroup_mma(p_op, v_smem.index(slot), acc, is_async=True)
    acc, p_op = warpgroup_mma_wait(0, deps=[acc_tok, p_op])
    mbarrier.arrive(kv_empty.index(slot), count=1)
    return acc, m_i, l_i


@gluon.jit
def _producer(desc_q, desc_k, desc_v, q_smem, k_smem, v_smem, q_bar, k_ready, v_ready, kv_empty, row0, q_row,
              col_q, col_kv, n_blocks, BN: gl.constexpr, CONSUMERS: gl.constexpr, STAGES: gl.constexpr):
    mbarrier.expect(q_bar.index(0), CONSUMERS * desc_q.block_type.nbytes)
    for w in gl.static_range(CONSUMERS):
        tma.async_copy_global_to_shared(desc_q, [q_row + w * WG_M, col_q], q_bar.index(0), q_smem.index(w))
    for j in range(n_blocks):
        slot = j % STAGES
        # a fresh mbarrier counts as having completed the phase before phase 0, so the first lap does not wait
        mbarrier.wait(kv_empty.index(slot), ((j // STAGES) & 1) ^ 1)
        mbarrier.expect(k_ready.index(slot), desc_k.block_type.nbytes)
        tma.async_copy_global_to_shared(desc_k, [row0 + j * BN, col_kv], k_ready.index(slot), k_smem.index(slot))
        mbarrier.expect(v_ready.index(slot), desc_v.block_type.nbytes)
        tma.async_copy_global_to_shared(desc_v, [row0 + j * BN, col_kv], v_ready.index(slot), v_smem.index(slot))


@gluon.jit
def _gluon_flash_attn_fwd_kernel(desc_q, desc_k, desc_v, O, LSE, T, scale_log2, HQ: gl.constexpr,
                                 GROUP: gl.constexpr, D: gl.constexpr, BN: gl.constexpr, IS_CAUSAL: gl.constexpr,
                                 CONSUMERS: gl.constexpr, PINGPONG: gl.constexpr, OVERLAP: gl.constexpr,
                                 STAGES: gl.constexpr, REV: gl.constexpr):
    gl.static_assert(CONSUMERS == 2 or not PINGPONG, "ping-pong needs two consumer warpgroups")
    BM: gl.constexpr = WG_M * CONSUMERS
    # grid (query tiles, batch x heads): neighbouring programs share one head's K and V in L2; causal runs the
    # longest tiles first (REV) so the short ones fill the tail of the wave
    if REV:
        i_m = gl.num_programs(0) - 1 - gl.program_id(0)
    else:
        i_m = gl.program_id(0)
    i_bh = gl.program_id(1)
    i_b = i_bh // HQ
    i_h = i_bh % HQ
    row0 = i_b * T  # the batch's first row in the (B*T, H*D) views
    if IS_CAUSAL:
        # key tiles left of the tile's first row are seen in full by every row; the rest up to its last row masked
        n_full = (i_m * BM) // BN
        n_blocks = gl.cdiv(gl.minimum(T, (i_m + 1) * BM), BN)
    else:
        n_full = T // BN
        n_blocks = gl.cdiv(T, BN)

    q_smem = gl.allocate_shared_memory(desc_q.dtype, [CONSUMERS, WG_M, D], desc_q.layout)
    k_smem = gl.allocate_shared_memory(desc_k.dtype, [STAGES, BN, D], desc_k.layout)
    v_smem = gl.allocate_shared_memory(desc_v.dtype, [STAGES, BN, D], desc_v.layout)
    q_bar = gl.allocate_shared_memory(gl.int64, [1, 1], mbarrier.MBarrierLayout())
    k_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    kv_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    turn = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    mbarrier.init(q_bar.index(0), count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(k_ready.index(i), count=1)
        mbarrier.init(v_ready.index(i), count=1)
        mbarrier.init(kv_empty.index(i), count=CONSUMERS)
    for i in gl.static_range(2):
        mbarrier.init(turn.index(i), count=1)

    # the default partition (the kernel's 4 warps) is consumer 0; workers: consumer 1 (4 warps), the producer (1 warp,
    # 24 registers: it holds only scalars). Registers are assigned per warpgroup with setmaxnreg. (Arguments are
    # written out per partition: a tuple built in the kernel and passed whole loses its constexprs.)
    col_q = i_h * D
    q_row = row0 + i_m * BM
    col_kv = (i_h // GROUP) * D
    if CONSUMERS == 2:
        gl.warp_specialize([
            (_consumer, (q_smem, k_smem, v_smem, q_bar, k_ready, v_ready, kv_empty, turn, O, LSE, T, scale_log2, i_m,
                         i_bh, row0, col_q, n_full, n_blocks, HQ, D, BN, IS_CAUSAL, CONSUMERS, PINGPONG, OVERLAP,
                         STAGES, 0)),
            (_consumer, (q_smem, k_smem, v_smem, q_bar, k_ready, v_ready, kv_empty, turn, O, LSE, T, scale_log2, i_m,
                         i_bh, row0, col_q, n_full, n_blocks, HQ, D, BN, IS_CAUSAL, CONSUMERS, PINGPONG, OVERLAP,
                         STAGES, 1)),
            (_producer, (desc_q, desc_k, desc_v, q_smem, k_smem, v_smem, q_bar, k_ready, v_ready, kv_empty, row0,
                         q_row, col_q, col_kv, n_blocks, BN, CONSUMERS, STAGES)),
        ], [4, 1], [240, 24])
    else:
        gl.warp_specialize([
            (_consumer, (q_smem, k_smem, v_smem, q_bar, k_ready, v_ready, kv_empty, turn, O, LSE, T, scale_log2, i_m,
                         i_bh, row0, col_q, n_full, n_blocks, HQ, D, BN, IS_CAUSAL, CONSUMERS, PINGPONG, OVERLAP,
                         STAGES, 0)),
            (_producer, (desc_q, desc_k, desc_v, q_smem, k_smem, v_smem, q_bar, k_ready, v_ready, kv_empty, row0,
                         q_row, col_q, col_kv, n_blocks, BN, CONSUMERS, STAGES)),
        ], [1], [24])


def _launch_options(cfg: dict) -> dict:
    # two consumers: 12 warps (4 + 4 + 1, the producer's warpgroup padded) must fit 64K registers at launch, 168
    # each; setmaxnreg then moves them from the producer's warpgroup to the consumers' (the offline compile shows
    # 240 / 240 / 24). One consumer: 8 warps, Triton's default (256 each) already fits.
    return {"num_warps": 4, "maxnreg": 168} if cfg["CONSUMERS"] == 2 else {"num_warps": 4}


def gluon_flash_attn_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, softmax_scale: float,
                         variant: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward on sm_90. q: (B, T, Hq, D), k, v: (B, T, Hkv, D), bf16, contiguous, D in (64, 128) (the caller has
    checked `gluon_gate.gluon_refusal`). Returns o like q and lse (B, Hq, T) fp32, natural log. `variant` picks the
    schedule (VARIANTS); None: DEFAULT_VARIANT, read at call time."""
    variant = DEFAULT_VARIANT if variant is None else variant
    if variant not in VARIANTS:
        raise ValueError(f"gluon attention: variant must be one of {sorted(VARIANTS)}, got {variant!r}")
    cfg = VARIANTS[variant]
    B, T, Hq, D = q.shape
    Hkv = k.shape[2]
    BM = WG_ROWS * cfg["CONSUMERS"]
    o = torch.empty_like(q)
    lse = torch.empty((B, Hq, T), device=q.device, dtype=torch.float32)
    q_layout = gl.NVMMASharedLayout.get_default_for([WG_ROWS, D], gl.bfloat16)
    kv_layout = gl.NVMMASharedLayout.get_default_for([BN, D], gl.bfloat16)
    desc_q = TensorDescriptor.from_tensor(q.view(B * T, Hq * D), [WG_ROWS, D], q_layout)
    desc_k = TensorDescriptor.from_tensor(k.view(B * T, Hkv * D), [BN, D], kv_layout)
    desc_v = TensorDescriptor.from_tensor(v.view(B * T, Hkv * D), [BN, D], kv_layout)
    grid = (triton.cdiv(T, BM), B * Hq)
    _gluon_flash_attn_fwd_kernel[grid](desc_q, desc_k, desc_v, o, lse, T, softmax_scale * LOG2E, HQ=Hq,
                                       GROUP=Hq // Hkv, D=D, BN=BN, IS_CAUSAL=causal, REV=causal, **cfg,
                                       **_launch_options(cfg))
    return o, lse


__all__ = ["DEFAULT_VARIANT", "VARIANTS", "gluon_flash_attn_fwd"]
