"""SparF, InstInfer's flash-aware sparse attention, in NumPy: what it computes and which bytes it reads from flash.

One query head against s cached tokens (head_dim d, FP16 KV in 4 KiB token pages of 16 tokens x 128 channels, and a
second, channel-major copy of K):

1. the r channels of q largest in magnitude; read those r channels of K for all s tokens (channel-major copy:
   r x s elements) and score every token approximately, with SparQ's temperature sqrt(d |q_r|_1 / |q|_1);
2. page step: a page's score is its best token's; keep the ceil(k / 16) best pages and read them whole, K and V;
3. token step: the k best tokens inside the kept pages are attended exactly; the mass of the tokens left out is
   given to the running mean of V: out = alpha softmax(q K_j^T / sqrt d) V_j + (1 - alpha) v_mean, alpha the
   approximate softmax mass of the kept tokens.

With r = d and k = s every token is kept and alpha = 1: the output is exact attention (a test checks it).
`sparf_bytes` is the closed form of what step 1 and 2 read; the NumPy version counts the same bytes.
"""

from __future__ import annotations

import math

import numpy as np

from .configs import SPARF, SparF


def _rk(s: int, d: int, sp: SparF) -> tuple[int, int]:
    return max(1, min(d, round(d * sp.r_frac))), max(1, min(s, math.ceil(s * sp.k_frac)))


def sparf_bytes(s: int, d: int, sp: SparF = SPARF, r: int | None = None, k: int | None = None) -> dict[str, int]:
    """Bytes SparF reads for one query head over s tokens, against dense attention's 2 s d elements."""
    r0, k0 = _rk(s, d, sp)
    r, k = r or r0, k or k0
    n_pages = math.ceil(s / sp.page_tokens)
    kept = min(n_pages, math.ceil(k / sp.page_tokens))
    page = sp.page_tokens * d * sp.elem
    step1 = r * s * sp.elem
    step2 = 2 * kept * page  # K and V pages
    return {"step1_channels": step1, "step2_pages": step2, "total": step1 + step2, "dense": 2 * s * d * sp.elem,
            "pages_kept": kept, "pages": n_pages}


def read_fraction(s: int, d: int, sp: SparF = SPARF) -> float:
    b = sparf_bytes(s, d, sp)
    return b["total"] / b["dense"]


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def sparf_attention(q: np.ndarray, K: np.ndarray, V: np.ndarray, v_mean: np.ndarray | None = None,
                    sp: SparF = SPARF, r: int | None = None, k: int | None = None) -> tuple[np.ndarray, dict]:
    """q: (d,), K, V: (s, d). Returns (output (d,), stats with the bytes read and the kept pages/tokens)."""
    s, d = K.shape
    if q.shape != (d,) or V.shape != (s, d):
        raise ValueError(f"q must be ({d},) and V ({s}, {d}); got q {q.shape}, V {V.shape}")
    r0, k0 = _rk(s, d, sp)
    r, k = r or r0, k or k0
    if not (1 <= r <= d and 1 <= k <= s):
        raise ValueError(f"need 1 <= r <= {d} and 1 <= k <= {s}; got r={r}, k={k}")
    v_mean = V.mean(axis=0) if v_mean is None else v_mean
    qa = np.abs(q)
    ch = np.argsort(-qa, kind="stable")[:r]  # step 1: the r largest channels of q
    temp = math.sqrt(d * qa[ch].sum() / qa.sum())
    s_hat = K[:, ch] @ q[ch] / temp  # (s,) approximate scores from r x s elements of K
    p_hat = _softmax(s_hat)
    P = sp.page_tokens
    n_pages = math.ceil(s / P)
    page_best = np.full(n_pages * P, -np.inf)
    page_best[:s] = s_hat
    page_best = page_best.reshape(n_pages, P).max(axis=1)
    n_keep = min(n_pages, math.ceil(k / P))
    pages = np.sort(np.argsort(-page_best, kind="stable")[:n_keep])  # step 2: whole pages, K and V
    cand = np.concatenate([np.arange(p * P, min((p + 1) * P, s)) for p in pages])
    j = np.sort(cand[np.argsort(-s_hat[cand], kind="stable")[:min(k, len(cand))]])  # step 3: tokens in them
    alpha = p_hat[j].sum()
    w = _softmax(K[j] @ q / math.sqrt(d))
    out = alpha * (w @ V[j]) + (1.0 - alpha) * v_mean
    stats = {"step1_channels": r * s * sp.elem, "step2_pages": 2 * len(pages) * P * d * sp.elem,
             "pages_kept": len(pages), "tokens_kept": len(j), "alpha": float(alpha)}
    stats["total"] = stats["step1_channels"] + stats["step2_pages"]
    return out, stats


def attention_reference(q: np.ndarray, K: np.ndarray, V: np.ndarray) -> np.ndarray:
    return _softmax(K @ q / math.sqrt(q.shape[0])) @ V
