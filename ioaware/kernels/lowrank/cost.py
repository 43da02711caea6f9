"""FLOPs and HBM bytes of FlashSVD's kernels and of the same factors run unfused, built on the iomodel's pieces.

Counts follow each kernel's schedule (which tiles each program loads), as `iomodel.flash_attention_cost` does;
L2 is not modelled, so re-reads that hit L2 count as HBM traffic. Unfused ops count their compulsory traffic (each
operand read once, each result written once), which understates PyTorch's temporaries: a lower bound for the
unfused path. Attention FLOPs use the iomodel's convention (4 B H Tq Tk D, halved when causal); the rebuild
products add 2 x rows x R x D each (twice for a rotated Q or K: P V and P rot(V)).
"""

from __future__ import annotations

from ...iomodel import Cost, flash_attention_cost, register
from ...iomodel.attention import attention_flops
from ...iomodel.bounds import kv_rows_seen


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


@register("lowrank_attn")
def lowrank_attn_cost(B: int, Tq: int, Tk: int, Hq: int, D: int, Rq: int, Rk: int, Rv: int, Hkv: int | None = None,
                      causal: bool = True, rope: bool = True, elem_bytes: int = 2, table_bytes: int | None = None,
                      block_q: int = 128, block_k: int = 64) -> Cost:
    """The fused kernel: per (query block, head) program, P_q rows once, P_k and P_v rows of every key block it
    sees, the head's factors, the RoPE rows (one angle per frequency, cos and sin: fp16 for 16-bit inputs, as
    the interface passes them); O written once."""
    Hkv = Hkv or Hq
    table_bytes = table_bytes or (2 if elem_bytes == 2 else 4)
    e, rot = elem_bytes, 2 if rope else 1
    bq, bk = min(block_q, max(Tq, 1)), min(block_k, max(Tk, 1))
    kv = sum(kv_rows_seen(Tq, Tk, bq, bk, causal))  # key rows one head's programs rebuild, summed over blocks
    n_prog = B * Hq * _cdiv(Tq, bq)
    read = B * Hq * (Tq * Rq + kv * (Rk + Rv)) * e  # rank activations
    read += n_prog * (rot * Rq + rot * Rk + Rv) * D * e  # each program loads its heads' factors once
    if rope:
        read += B * Hq * (Tq + kv) * (D // 2) * 2 * table_bytes
    write = B * Tq * Hq * D * e
    flops = attention_flops(B, Hq, Tq, Tk, D, causal) + 2 * B * Hq * D * (Tq * Rq * rot + kv * (Rk * rot + Rv))
    return Cost.of(flops, label=f"lowrank attention fwd, fused (Bq={bq}, Bk={bk})", hbm=(read, write))


@register("lowrank_attn_slab")
def lowrank_attn_slab_cost(B: int, Tq: int, Tk: int, Hq: int, D: int, Rq: int, Rk: int, Rv: int,
                           Hkv: int | None = None, causal: bool = True, rope: bool = True, elem_bytes: int = 2,
                           table_bytes: int | None = None, block_q: int = 128, block_k: int = 64) -> Cost:
    """The slab schedule: one Triton pass per slab writes its Q, K, V expanded and rotated (each key rebuilt
    once), FlashAttention-2 reads them back, and the slab's output is copied into place (read and write O).
    Over all slabs the traffic is the unfused path's less its separate RoPE pass, plus the copy; what differs is
    the peak: only one slab of Q, K, V exists at a time."""
    Hkv = Hkv or Hq
    table_bytes = table_bytes or (2 if elem_bytes == 2 else 4)
    e, rot = elem_bytes, 2 if rope else 1
    q, k = B * Tq * Hq * D * e, B * Tk * Hkv * D * e
    read = B * (Tq * Hq * Rq + Tk * Hkv * (Rk + Rv)) * e + (Hq * Rq * rot + Hkv * (Rk * rot + Rv)) * D * e
    if rope:
        read += B * (Tq * Hq + Tk * Hkv) * (D // 2) * 2 * table_bytes
    flops = 2 * B * D * (Tq * Hq * Rq * rot + Tk * Hkv * (Rk * rot + Rv))
    expand = Cost.of(flops, label="expand Q, K, V per slab (+ RoPE)", hbm=(read, q + 2 * k))
    copy = Cost.of(0, label="copy each slab's O into place", hbm=(q, q))
    return expand + flash_attention_cost(B, Hq, Tq, Tk, D, Hkv=Hkv, block_q=block_q, block_k=block_k,
                                         elem_bytes=e, causal=causal) + copy


def lowrank_attn_unfused_cost(B: int, Tq: int, Tk: int, Hq: int, D: int, Rq: int, Rk: int, Rv: int,
                              Hkv: int | None = None, causal: bool = True, rope: bool = True, elem_bytes: int = 2,
                              table_bytes: int | None = None, block_q: int = 128, block_k: int = 64) -> Cost:
    """The same factors unfused: three batched GEMMs write full-size Q, K, V; one (ideal, single-pass) RoPE
    rewrites Q and K; FlashAttention-2 reads them back."""
    Hkv = Hkv or Hq
    table_bytes = table_bytes or 4
    e = elem_bytes
    q, k = B * Tq * Hq * D * e, B * Tk * Hkv * D * e
    read = B * (Tq * Hq * Rq + Tk * Hkv * (Rk + Rv)) * e + (Hq * Rq + Hkv * (Rk + Rv)) * D * e
    write = q + 2 * k
    if rope:
        read += q + k + (Tq + Tk) * D * table_bytes
        write += q + k
    flops = 2 * B * D * (Tq * Hq * Rq + Tk * Hkv * (Rk + Rv))
    gemms = Cost.of(flops, label="rebuild Q, K, V (+ RoPE)", hbm=(read, write))
    return gemms + flash_attention_cost(B, Hq, Tq, Tk, D, Hkv=Hkv, block_q=block_q, block_k=block_k, elem_bytes=e,
                                        causal=causal)


@register("lowrank_swiglu")
def lowrank_swiglu_cost(M: int, F: int, Rg: int, Ru: int, R2: int, schedule: str = "fused", elem_bytes: int = 2,
                        block_m: int = 64, block_f: int = 64, block_r2: int = 128, slab_rows: int = 4096) -> Cost:
    """s = (silu(P_g V_g) * (P_u V_u)) U_2 for M rows, FFN width F.

    fused: (M/BM) x (R2/BR2) programs; each walks F, loading its rows of P_g, P_u per F chunk, all of V_g, V_u
        and its columns of U_2; the gate/up rebuild is repeated per R2 tile. Writes s only.
    slab: the h kernel's (M/BM) x (F/BF) programs load P rows and V columns per tile and write h (M x F); the
        h U_2 GEMM is counted as compulsory per slab (h once, U_2 once per slab, s once): cuBLAS's own tiling
        is not modelled.
    unfused: gate and up GEMMs write M x F each; silu and the product read and write them; h U_2 reads h."""
    e = elem_bytes
    rmax = max(Rg, Ru)
    if schedule == "fused":
        n_m, n_r, n_f = _cdiv(M, block_m), _cdiv(R2, block_r2), _cdiv(F, block_f)
        read = n_m * n_r * (n_f * block_m * 2 * rmax + 2 * rmax * F + F * block_r2) * e
        write = M * R2 * e
        flops = M * (4 * rmax * F * n_r + 2 * F * R2)
        label = f"lowrank SwiGLU, fused (BM={block_m}, BF={block_f}, BR2={block_r2}: gate/up rebuilt {n_r}x)"
    elif schedule == "slab":
        n_m, n_f, n_s = _cdiv(M, block_m), _cdiv(F, block_f), _cdiv(M, slab_rows)
        read = n_m * n_f * (block_m + block_f) * 2 * rmax * e + (M * F + n_s * F * R2) * e
        write = (M * F + M * R2) * e
        flops = M * (4 * rmax * F + 2 * F * R2)
        label = f"lowrank SwiGLU, slab of {slab_rows} rows (h written and read once)"
    elif schedule == "unfused":
        read = (M * (Rg + Ru) + (Rg + Ru) * F + M * F + 2 * M * F + M * F + F * R2) * e
        write = (2 * M * F + M * F + M * F + M * R2) * e
        flops = M * (2 * (Rg + Ru) * F + 2 * F * R2)
        label = "lowrank SwiGLU, unfused (gate, up, silu(gate), h in HBM)"
    else:
        raise ValueError(f"schedule must be 'fused', 'slab' or 'unfused', got {schedule!r}")
    return Cost.of(flops, label=label, hbm=(read, write))
