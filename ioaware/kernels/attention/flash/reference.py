"""FlashAttention's definition in plain PyTorch: the readable reference every kernel is checked against.

q: (B, Tq, Hq, D); k, v: (B, Tk, Hkv, D) with Hq a multiple of Hkv (GQA/MQA).
Causal masks are aligned bottom-right (query row r sees keys c <= r + Tk - Tq), as flash-attn does, so a
query block appended to a KV cache attends to the whole cache. A row that sees no key outputs zeros
and has LSE = -inf.

HBM traffic if run as written, per (batch, head), elements (n = Tq, m = Tk, d = D):
    s = q @ k^T          # read nd + md, write nm
    s = masked_fill(s)   # read nm, write nm (causal only)
    p = softmax(s)       # read nm, write nm
    o = p @ v            # read nm + md, write nd
    total: 2nd + 2md + 4nm (6nm causal), the quadratic term is what FlashAttention removes.
"""

from __future__ import annotations

import math

import torch


def causal_mask(Tq: int, Tk: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(Tq, Tk) bool, True where query row r may see key c: c <= r + Tk - Tq.

    Examples:
        >>> causal_mask(2, 4).int()
        tensor([[1, 1, 1, 0],
                [1, 1, 1, 1]], dtype=torch.int32)
    """
    r = torch.arange(Tq, device=device)[:, None]
    c = torch.arange(Tk, device=device)[None, :]
    return c <= r + (Tk - Tq)


def attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                  softmax_scale: float | None = None, upcast: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (out (B, Tq, Hq, D) in q's dtype, lse (B, Hq, Tq) fp32).

    upcast=True computes in fp32 (fp64 stays fp64): the reference. upcast=False computes in the inputs'
    own precision: the "plain PyTorch" baseline whose error sets the tolerance rule.

    Examples:
        >>> import torch, ioaware
        >>> q = torch.randn(1, 6, 4, 8, dtype=torch.float64); k = v = torch.randn(1, 6, 2, 8, dtype=torch.float64)
        >>> o, lse = ioaware.attention_ref(q, k, v, causal=True)
        >>> o.shape, lse.shape
        (torch.Size([1, 6, 4, 8]), torch.Size([1, 4, 6]))
        >>> torch.allclose(o[:, 0], v[:, 0].repeat_interleave(2, dim=1))   # row 0 sees key 0 only
        True
    """
    B, Tq, Hq, D = q.shape
    Tk, Hkv = k.shape[1], k.shape[2]
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(D)
    dtype_out = q.dtype
    if upcast and q.dtype in (torch.float16, torch.bfloat16):
        q, k, v = q.float(), k.float(), v.float()
    if Hq != Hkv:  # every KV head serves Hq // Hkv query heads
        k = k.repeat_interleave(Hq // Hkv, dim=2)
        v = v.repeat_interleave(Hq // Hkv, dim=2)
    s = torch.einsum("bqhd,bkhd->bhqk", q, k) * scale  # (B, Hq, Tq, Tk)
    if causal:
        s = s.masked_fill(~causal_mask(Tq, Tk, q.device), float("-inf"))
    lse = torch.logsumexp(s.float(), dim=-1)  # (B, Hq, Tq); -inf on rows that see no key
    p = torch.softmax(s, dim=-1)
    p = torch.nan_to_num(p, nan=0.0)  # empty rows: softmax of all -inf is NaN; define it as 0
    o = torch.einsum("bhqk,bkhd->bqhd", p.to(v.dtype), v)  # (B, Tq, Hq, D)
    return o.to(dtype_out), lse


def visible_mask(Tq: int, Tk: int, causal: bool = False, window_size: tuple[int, int] = (-1, -1),
                 prefix_len: int | None = None, device: torch.device | str | None = None) -> torch.Tensor:
    """(Tq, Tk) bool, True where query row r sees key c (bottom-right aligned, off = Tk - Tq):
    c <= r + off + right (right = 0 when causal; none when -1), raised to c < prefix_len by a prefix-LM, and
    c >= r + off - left (none when left = -1)."""
    r = torch.arange(Tq, device=device)[:, None]
    c = torch.arange(Tk, device=device)[None, :]
    off = Tk - Tq
    left, right = window_size
    m = torch.ones(Tq, Tk, dtype=torch.bool, device=device)
    if causal or right >= 0:
        lim = r + off + (0 if causal else right)
        if prefix_len is not None:
            lim = lim.clamp_min(prefix_len - 1)
        m &= c <= lim
    if left >= 0:
        m &= c >= r + off - left
    return m


def attention_masked_ref(q, k, v, causal=False, softmax_scale=None, window_size=(-1, -1), alibi_slopes=None,
                         softcap=0.0, prefix_lens=None, block_mask=None, block_size=(128, 128), keep=None,
                         dropout_p=0.0, upcast=True):
    """flash_attn with every option, written out with an explicit (B, H, Tq, Tk) mask. keep: the dropout keep mask
    (B, H, Tq, Tk) bool (kept elements are scaled by 1 / (1 - dropout_p)). Returns (out, lse) as attention_ref."""
    B, Tq, Hq, D = q.shape
    Tk, Hkv = k.shape[1], k.shape[2]
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(D)
    dtype_out = q.dtype
    if upcast and q.dtype in (torch.float16, torch.bfloat16):
        q, k, v = q.float(), k.float(), v.float()
    if Hq != Hkv:
        k = k.repeat_interleave(Hq // Hkv, dim=2)
        v = v.repeat_interleave(Hq // Hkv, dim=2)
    s = torch.einsum("bqhd,bkhd->bhqk", q, k) * scale  # (B, Hq, Tq, Tk)
    if softcap > 0:
        s = softcap * torch.tanh(s / softcap)
    if alibi_slopes is not None:
        r = torch.arange(Tq, device=q.device)[:, None]
        c = torch.arange(Tk, device=q.device)[None, :]
        dist = (r + Tk - Tq - c).abs().to(s.dtype)
        s = s - alibi_slopes.to(s.dtype).reshape(-1, Hq, 1, 1) * dist
    masks = []
    for b in range(B):
        P = None if prefix_lens is None else int(prefix_lens[b])
        masks.append(visible_mask(Tq, Tk, causal, window_size, P, q.device))
    m = torch.stack(masks)[:, None]  # (B, 1, Tq, Tk)
    if block_mask is not None:
        bq, bk = block_size
        full = block_mask.bool().repeat_interleave(bq, -2).repeat_interleave(bk, -1)[..., :Tq, :Tk]
        m = m & full
    s = s.masked_fill(~m, float("-inf"))
    lse = torch.logsumexp(s.float(), dim=-1)
    p = torch.nan_to_num(torch.softmax(s, dim=-1), nan=0.0)
    if keep is not None:
        p = p * keep.to(p.dtype) / (1.0 - dropout_p)
    o = torch.einsum("bhqk,bkhd->bqhd", p.to(v.dtype), v)
    return o.to(dtype_out), lse


def attention_varlen_ref(q, k, v, cu_seqlens_q, cu_seqlens_k, keep=None, **kw):
    """attention_masked_ref on each packed sequence: q (total_q, Hq, D), k, v (total_k, Hkv, D); keep, if given,
    (Hq, total_q, max_seqlen_k) bool. Returns out (total_q, Hq, D) and lse (Hq, total_q)."""
    outs, lses = [], []
    prefix = kw.pop("prefix_lens", None)
    alibi = kw.pop("alibi_slopes", None)
    for b in range(len(cu_seqlens_q) - 1):
        q0, q1, k0, k1 = int(cu_seqlens_q[b]), int(cu_seqlens_q[b + 1]), int(cu_seqlens_k[b]), int(cu_seqlens_k[b + 1])
        kb = None if keep is None else keep[None, :, q0:q1, : k1 - k0]
        pb = None if prefix is None else prefix[b:b + 1]
        ab = None if alibi is None else (alibi[b] if alibi.dim() == 2 else alibi)
        o, lse = attention_masked_ref(q[None, q0:q1], k[None, k0:k1], v[None, k0:k1], keep=kb, prefix_lens=pb,
                                      alibi_slopes=ab, **kw)
        outs.append(o[0])
        lses.append(lse[0])
    return torch.cat(outs), torch.cat(lses, dim=-1)
