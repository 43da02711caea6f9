"""FlashSVD's ops in plain PyTorch: every product of the factors written out, full-size activations and all.

Factors. A linear layer y = x W^T (W: (out, in)) truncated to rank r is stored as U (in, r) and V (r, out), so
y = (x U) V and P = x U is the rank-r activation. Attention's projections are factored per head (FlashSVD's
choice): head h of W_q is U_q[:, h] (in, R) and V_q[h] (R, D), so P_q = x U_q is (B, T, H, R) and the head's
query is P_q[:, :, h] V_q[h]. The FFN (SwiGLU) factors gate, up and down as whole matrices:

    y = ((silu((x Ug) Vg) * ((x Uu) Vu)) U2) V2

HBM traffic of attention if run as written (elements; B = 1, n = Tq, m = Tk queries/keys, H query heads,
Hk KV heads, rank R per head, head dim D, causal or not):
    q = pq @ vq              # read nHR + HRD, write nHD        (k, v: read mHkR + HkRD, write mHkD each)
    q, k = rope(q), rope(k)  # read nHD + mHkD + tables, write nHD + mHkD (at least; PyTorch writes temporaries)
    o = attention(q, k, v)   # read nHD + 2 mHkD (+ the score matrix unless flash), write nHD
    total beyond the fused kernel's: the full-size q, k, v written and read back (3 x (n or m) x H x D, twice).
The fused kernel (kernel.py) reads pq, pk, pv (rank R instead of D per head) and writes only o.

HBM traffic of the SwiGLU FFN as written (M tokens, F = ffn width, ranks Rg, Ru, R2, d = model width):
    g = (x @ ug) @ vg        # read Md + M Rg + factors, write M Rg + MF
    u = (x @ uu) @ vu        # the same with Ru
    h = silu(g) * u          # read 2 MF (+ MF for silu's temporary), write MF (+ MF)
    s = h @ u2               # read MF + F R2, write M R2
    y = s @ v2               # read M R2 + R2 d, write Md
    total beyond the fused kernel's: g, u and h, each M x F, written and read (at least 6 MF elements).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..attention.flash.reference import attention_ref


def lowrank_linear_ref(x: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """y = (x U) V for x (..., in), U (in, r), V (r, out); fp32 math, result in x's dtype."""
    return ((x.float() @ u.float()) @ v.float()).to(x.dtype)


def expand_heads(p: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """p (B, T, H, R), v (H, R, D) -> (B, T, H, D): each head's rank-R activation expanded by its factor."""
    return torch.einsum("bthr,hrd->bthd", p, v)


def apply_rope_half(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE (Hugging Face layout: pairs (i, i + D/2)). x (B, T, H, D) at `positions` (T,) or (B, T);
    cos, sin (S, D/2): one angle per frequency, the table every position indexes."""
    c = cos[positions].float()  # (T, D/2) or (B, T, D/2)
    s = sin[positions].float()
    if c.dim() == 2:
        c, s = c[None], s[None]
    c, s = c[:, :, None, :], s[:, :, None, :]  # (B|1, T, 1, D/2)
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1).to(x.dtype)


def lowrank_attn_ref(pq, vq, pk, vk, pv, vv, causal: bool = True, softmax_scale: float | None = None,
                     rope: tuple[torch.Tensor, torch.Tensor] | None = None, cache_seqlens: torch.Tensor | None = None,
                     upcast: bool = True) -> torch.Tensor:
    """Attention over Q, K, V rebuilt from per-head factors (materialised here, as an unfused run would).

    pq (B, Tq, Hq, Rq), vq (Hq, Rq, D); pk (B, Tk, Hkv, Rk), vk (Hkv, Rk, D); pv (B, Tk, Hkv, Rv), vv (Hkv, Rv, D).
    rope = (cos, sin), each (S >= Tk, D/2): keys sit at positions 0..L-1 and the queries at L-Tq..L-1 (bottom-right,
    as the causal mask), where L = Tk, or cache_seqlens[b] (B,) when given (keys past it are ignored).
    upcast=True computes in fp32 (the reference); False rounds each materialised tensor to the inputs' dtype, as
    the unfused path does on the GPU (the baseline whose error sets the kernel's tolerance).
    Returns o (B, Tq, Hq, D) in pq's dtype."""
    dt = pq.dtype
    cdt = torch.float32 if upcast and dt in (torch.float16, torch.bfloat16) else dt
    pq, vq, pk, vk, pv, vv = (t.to(cdt) for t in (pq, vq, pk, vk, pv, vv))
    q, k, v = expand_heads(pq, vq), expand_heads(pk, vk), expand_heads(pv, vv)  # (B, T, H, D), full size
    B, Tq = q.shape[:2]
    Tk = k.shape[1]
    outs = []
    for b in range(B):
        L = Tk if cache_seqlens is None else int(cache_seqlens[b])
        qb, kb, vb = q[b:b + 1], k[b:b + 1, :L], v[b:b + 1, :L]
        if rope is not None:
            cos, sin = rope
            qb = apply_rope_half(qb, cos, sin, torch.arange(L - Tq, L, device=q.device))
            kb = apply_rope_half(kb, cos, sin, torch.arange(L, device=q.device))
        outs.append(attention_ref(qb, kb, vb, causal, softmax_scale, upcast=upcast)[0])
    return torch.cat(outs).to(dt)


def swiglu_hidden_ref(pg, pu, vg, vu, upcast: bool = True) -> torch.Tensor:
    """h = silu(pg vg) * (pu vu): (M, F), the intermediate FlashSVD never writes."""
    dt = pg.dtype
    if upcast:
        pg, pu, vg, vu = pg.float(), pu.float(), vg.float(), vu.float()
    return (F.silu(pg @ vg) * (pu @ vu)).to(dt)


def lowrank_swiglu_ref(pg, pu, vg, vu, u2, upcast: bool = True) -> torch.Tensor:
    """s = (silu(pg vg) * (pu vu)) u2: the FFN's rank-R2 output, (M, R2). pg (M, Rg), vg (Rg, F), pu (M, Ru),
    vu (Ru, F), u2 (F, R2). upcast as in lowrank_attn_ref."""
    dt = pg.dtype
    h = swiglu_hidden_ref(pg, pu, vg, vu, upcast)
    return (h.float() @ u2.float()).to(dt) if upcast else h @ u2


def lowrank_ffn_ref(x, ug, vg, uu, vu, u2, v2, upcast: bool = True) -> torch.Tensor:
    """The whole low-rank SwiGLU FFN, y = ((silu((x Ug) Vg) * ((x Uu) Vu)) U2) V2, for x (..., d)."""
    dt = x.dtype
    xf = x.reshape(-1, x.shape[-1])
    if upcast:
        xf, ug, vg, uu, vu, u2, v2 = (t.float() for t in (xf, ug, vg, uu, vu, u2, v2))
    s = lowrank_swiglu_ref(xf @ ug, xf @ uu, vg, vu, u2, upcast=False)
    return (s @ v2).to(dt).reshape(*x.shape[:-1], v2.shape[1])
