"""`ioaware bench nsa`: ioaware.nsa against dense FlashAttention-2, a PyTorch NSA built on FlexAttention, and fla's
parallel_nsa (when installed), same card, same run; and NSA's selected branch alone in both loop orders.

Setting (the issue's speed bars): bf16, D = 128, B = 1, 4 KV heads, GQA groups G = 1, 4, 16 (Hq = 4 G), compression
blocks of 64 every 16 tokens, 16 selected blocks of 64 (first 1 and local 2 always kept), window 512, causal,
T = 8k .. 64k.

Providers, whole NSA (case "nsa"):
  ioaware          ioaware.nsa, order="auto" (the dispatcher's choice)
  ioaware-fsa/-nsa ioaware.nsa with the selected branch forced to one loop order
  torch-flex       PyTorch NSA: mean-pool compression, FlexAttention (compiled) for the compressed branch (stepped
                   causal mask), the selected branch (a BlockMask made from the top-n indices in every call: each
                   128 x 128 tile holding a block some token of the 128 picked is loaded, the mask_mod keeps each
                   token's own blocks) and
                   the window; selection scores in PyTorch (chunked over T); gates in PyTorch
  flash-dense      ioaware.flash_attn, dense causal attention on the same q, k, v
  fla              fla.ops.nsa.parallel_nsa (flash-linear-attention) with its own mean-pool selection (block 64,
                   16 blocks, window 512); it needs G a multiple of 16, so other groups are reported as errors
Selected branch alone (case "selected", same top-n indices for all): ioaware-fsa, ioaware-nsa, ioaware (auto),
flex (BlockMask from the indices built once, outside the timed region: the attention kernel alone).

FLOPs (TFLOP/s column): 4 D per visible (query, key) pair forward, 2.5x backward (cost.nsa_flops / selected_flops);
dense flash: the causal FA count. Every shape first checks ioaware (forward and gradients, and the selected branch in
both orders) against an fp32 materialised reference at T = 2048 with the same G and indices: its relative error must
be at most 2x that of plain PyTorch in the same dtype + 1e-3; a speedup is never reported for a failing check.
"""

from __future__ import annotations

import math

ROUNDS = 2
NSA_ARGS = dict(block_size=64, stride=16, select_blocks=16, select_size=64, window=512)
CHECK_T = 2048


def shapes(seqlens=(8192, 16384, 32768, 65536), groups=(1, 4, 16), kv_heads=4, head_dim=128, batch=1):
    for G in groups:
        for T in seqlens:
            yield {"B": batch, "T": T, "G": G, "Hq": kv_heads * G, "Hkv": kv_heads, "D": head_dim}


def _inputs(s: dict, dtype, T: int | None = None, seed: int = 0):
    import torch

    T = T or s["T"]
    g = torch.Generator(device="cuda").manual_seed(seed)
    B, Hq, Hkv, D = s["B"], s["Hq"], s["Hkv"], s["D"]
    q = torch.randn(B, T, Hq, D, device="cuda", dtype=dtype, generator=g).requires_grad_()
    k = torch.randn(B, T, Hkv, D, device="cuda", dtype=dtype, generator=g).requires_grad_()
    v = torch.randn(B, T, Hkv, D, device="cuda", dtype=dtype, generator=g).requires_grad_()
    gates = [torch.sigmoid(torch.randn(B, T, Hq, device="cuda", generator=g)).to(dtype).requires_grad_()
             for _ in range(3)]
    do = torch.randn(B, T, Hq, D, device="cuda", dtype=dtype, generator=g)
    return q, k, v, gates, do


# --------------------------------------------------------------------------------------- PyTorch NSA (Flex)
class TorchNSA:
    """NSA in PyTorch on FlexAttention, for one sequence length (the static block masks are built once)."""

    def __init__(self, T: int, G: int, select_size: int = 64, block_size: int = 64, stride: int = 16,
                 select_blocks: int = 16, window: int = 512, init_blocks: int = 1, local_blocks: int = 2):
        import torch
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        from ..kernels.attention.sparse.reference import num_blocks, num_compressed, overlap_weights

        self.T, self.G, self.l, self.d, self.lp, self.n, self.w = T, G, block_size, stride, select_size, \
            select_blocks, window
        self.init, self.local = init_blocks, local_blocks
        self.nc, self.ns = num_compressed(T, block_size, stride), num_blocks(T, select_size)
        self.flex = torch.compile(flex_attention, dynamic=False)
        l, d = block_size, stride
        self.cmp_mask = create_block_mask(lambda b, h, qi, ki: ki * d + l - 1 <= qi, None, None, T, self.nc,
                                          device="cuda", BLOCK_SIZE=128)
        self.win_mask = create_block_mask(lambda b, h, qi, ki: (ki <= qi) & (qi - ki < window), None, None, T, T,
                                          device="cuda", BLOCK_SIZE=128)
        self.W = overlap_weights(self.nc, self.ns, l, d, select_size, device="cuda", dtype=torch.float32)

    def _attn(self, q, k, v, mask, lse: bool = False):
        qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
        if not lse:
            return self.flex(qt, kt, vt, block_mask=mask, enable_gqa=True).transpose(1, 2), None
        try:
            from torch.nn.attention.flex_attention import AuxRequest

            o, aux = self.flex(qt, kt, vt, block_mask=mask, enable_gqa=True, return_aux=AuxRequest(lse=True))
            return o.transpose(1, 2), aux.lse
        except ImportError:
            o, l_ = self.flex(qt, kt, vt, block_mask=mask, enable_gqa=True, return_lse=True)
            return o.transpose(1, 2), l_

    def select(self, q, k_cmp, lse, chunk: int = 1024):
        """Top-n block indices (B, T, Hkv, n) from the compressed probabilities, in PyTorch, chunk rows at a time."""
        import torch

        from ..kernels.attention.sparse.reference import top_blocks

        B, T, Hq, D = q.shape
        Hkv, G = k_cmp.shape[2], self.G
        scale = 1.0 / math.sqrt(D)
        kc = k_cmp.float()
        out = []
        c = torch.arange(self.nc, device=q.device)
        j = torch.arange(self.ns, device=q.device)
        for t0 in range(0, T, chunk):
            t = torch.arange(t0, min(T, t0 + chunk), device=q.device)
            qc = q[:, t0:t0 + chunk].float().reshape(B, -1, Hkv, G, D)
            s = torch.einsum("bthgd,bchd->bhgtc", qc, kc) * scale
            lc = lse[:, :, t0:t0 + chunk].float().reshape(B, Hkv, G, -1, 1)
            p = torch.exp(s - lc).masked_fill(~(c[None, :] * self.d + self.l - 1 <= t[:, None]), 0.0)
            imp = p.sum(2) @ self.W  # (B, Hkv, tc, Ns)
            cur = (t // self.lp)[:, None]
            valid = j[None, :] <= cur
            kept = valid & ((j[None, :] < self.init) | (j[None, :] > cur - self.local))
            sc = torch.where(valid & (imp > 0), imp, float("-inf"))
            out.append(torch.where(kept, float("inf"), sc))
        return top_blocks(torch.cat(out, 2), self.n)

    def selected_mask(self, idx):
        """A FlexAttention BlockMask from top-n indices: 128-query blocks load the union of their tokens' blocks."""
        import torch
        from torch.nn.attention.flex_attention import BlockMask

        B, T, Hkv, _ = idx.shape
        G, lp, ns = self.G, self.lp, self.ns
        full = torch.zeros(B, Hkv, T, ns + 1, dtype=torch.bool, device=idx.device)
        full.scatter_(-1, torch.where(idx >= 0, idx, ns).long().permute(0, 2, 1, 3), True)
        # one table and one mask_mod per instance, refilled in place: a new tensor or closure in every call would
        # make torch.compile recompile Flex's kernels each time
        if getattr(self, "_sel", None) is None or self._sel.shape != (B, Hkv, T, ns):
            self._sel = torch.empty(B, Hkv, T, ns, dtype=torch.bool, device=idx.device)
            table = self._sel
            self._mask_mod = lambda b, h, qi, ki: table[b, h // G, qi, ki // lp] & (ki <= qi)
        self._sel.copy_(full[..., :ns])
        sel = self._sel
        nq, nk, per = -(-T // 128), -(-T // 128), 128 // lp  # Flex's backward wants 128-wide KV blocks here
        qb = torch.zeros(B, Hkv, nq * 128, nk * per, dtype=torch.bool, device=idx.device)
        qb[:, :, :T, :ns] = sel
        qb = qb.view(B, Hkv, nq, 128, nk, per).any(5).any(3).repeat_interleave(G, 1)
        num = qb.sum(-1).to(torch.int32)
        ind = torch.argsort((~qb).to(torch.int8), dim=-1, stable=True).to(torch.int32)
        return BlockMask.from_kv_blocks(num, ind, BLOCK_SIZE=128, mask_mod=self._mask_mod, seq_lengths=(T, T))

    def __call__(self, q, k, v, gates, idx=None):
        import torch

        from ..kernels.attention.sparse.reference import compress_kv

        k_cmp, v_cmp = compress_kv(k, v, self.l, self.d)
        o_cmp, lse = self._attn(q, k_cmp.contiguous(), v_cmp.contiguous(), self.cmp_mask, lse=True)
        o_cmp = torch.nan_to_num(o_cmp)  # rows before the first compressed block ends see nothing
        if idx is None:
            with torch.no_grad():
                idx = self.select(q.detach(), k_cmp.detach(), lse.detach())
        o_slc, _ = self._attn(q, k, v, self.selected_mask(idx))
        o_swa, _ = self._attn(q, k, v, self.win_mask)
        g_cmp, g_slc, g_swa = (g.unsqueeze(-1) for g in gates)
        return g_cmp * o_cmp + g_slc * o_slc + g_swa * o_swa


# ----------------------------------------------------------------------------------------------- providers
def _fla():
    try:
        from fla.ops.nsa import parallel as fla_parallel
        from fla.ops.nsa import parallel_nsa
    except ImportError as e:
        raise RuntimeError(f"fla not installed ({e}); pip install flash-linear-attention") from None
    if fla_parallel.flash_attn_func is None:
        # fla computes its sliding-window branch with Dao's flash-attn package, which the device does not have; that
        # branch then runs on our flash_attn (same masks), so only fla's compression/top-k/selection kernels differ.
        from ..kernels.attention.flash import flash_attn

        def window_attn(q, k, v, causal=True, window_size=(-1, -1)):
            return flash_attn(q, k, v, causal=causal, window_size=window_size)

        fla_parallel.flash_attn_func = window_attn

    def run(q, k, v, gates):
        return parallel_nsa(q, k, v, g_cmp=gates[0], g_slc=gates[1], g_swa=gates[2], block_counts=16,
                            block_size=64, window_size=512)

    return run


def _nsa_providers(s: dict) -> dict:
    from ..kernels.attention.flash import flash_attn
    from ..kernels.attention.sparse import nsa

    torch_nsa = TorchNSA(s["T"], s["G"])
    return {
        "ioaware": lambda q, k, v, g: nsa(q, k, v, *g, order="auto", **NSA_ARGS),
        "ioaware-fsa": lambda q, k, v, g: nsa(q, k, v, *g, order="fsa", **NSA_ARGS),
        "ioaware-nsa": lambda q, k, v, g: nsa(q, k, v, *g, order="nsa", **NSA_ARGS),
        "torch-flex": lambda q, k, v, g: torch_nsa(q, k, v, g),
        "flash-dense": lambda q, k, v, g: flash_attn(q, k, v, causal=True),
        "fla": _lazy(_fla),
    }


def _slc_providers(idx, tn: TorchNSA, bm) -> dict:
    from ..kernels.attention.sparse import nsa_selected

    # the indices come from nsa_select, so their value checks (a device sync per call) are skipped
    kw = dict(select_size=64, check_indices=False)
    return {"ioaware": lambda q, k, v, g: nsa_selected(q, k, v, idx, order="auto", **kw),
            "ioaware-fsa": lambda q, k, v, g: nsa_selected(q, k, v, idx, order="fsa", **kw),
            "ioaware-nsa": lambda q, k, v, g: nsa_selected(q, k, v, idx, order="nsa", **kw),
            "flex": lambda q, k, v, g: tn._attn(q, k, v, bm)[0]}


def _lazy(make):
    cell = {}

    def run(*a):
        if "fn" not in cell:
            cell["fn"] = make()
        return cell["fn"](*a)

    return run


def _time(fn, q, k, v, gates, do, bwd: bool) -> float:
    import torch

    from .common import time_ms

    if bwd:
        o = fn(q, k, v, gates)
        ins = (q, k, v, *gates)
        return time_ms(lambda: torch.autograd.grad(o, ins, do, retain_graph=True, allow_unused=True))
    with torch.no_grad():
        return time_ms(lambda: fn(q, k, v, gates))


def _rel(a, b) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


def check(s: dict, dtype) -> dict:
    """ioaware.nsa (forward and dq, dk, dv) and the selected branch in both orders against fp32 materialised
    references at T = CHECK_T, beside plain PyTorch in the same dtype (reference.nsa_ref with upcast=False), all
    with the same top-n indices."""
    import torch

    from ..kernels.attention.sparse import nsa, nsa_ref, nsa_selected
    from ..kernels.attention.sparse.reference import masked_attention, selected_mask

    c = dict(s, T=CHECK_T)
    q, k, v, gates, do = _inputs(c, dtype, seed=1)
    o, idx = nsa(q, k, v, *gates, return_indices=True, **NSA_ARGS)
    grads = torch.autograd.grad(o, (q, k, v), do)
    qp, kp, vp = (t.detach().clone().requires_grad_() for t in (q, k, v))
    pt, _ = nsa_ref(qp, kp, vp, *(g.detach() for g in gates), block_indices=idx, upcast=False, **NSA_ARGS)
    pgrads = torch.autograd.grad(pt, (qp, kp, vp), do)
    qr, kr, vr = (t.detach().float().requires_grad_() for t in (q, k, v))
    ref, _ = nsa_ref(qr, kr, vr, *(g.detach().float() for g in gates), block_indices=idx, **NSA_ARGS)
    rgrads = torch.autograd.grad(ref, (qr, kr, vr), do.float())
    out = {"T": CHECK_T, "err_ioaware": _rel(o, ref), "err_pytorch": _rel(pt, ref)}
    ok = out["err_ioaware"] <= 2 * out["err_pytorch"] + 1e-3
    for name, g, p, r in zip(("dq", "dk", "dv"), grads, pgrads, rgrads, strict=True):
        out[f"{name}_err_ioaware"], out[f"{name}_err_pytorch"] = _rel(g, r), _rel(p, r)
        ok = ok and _rel(g, r) <= 2 * _rel(p, r) + 1e-3
    with torch.no_grad():
        m = selected_mask(idx, CHECK_T, 64, True)
        sref, _ = masked_attention(q.float(), k.float(), v.float(), m, 1.0 / math.sqrt(s["D"]))
        spt, _ = masked_attention(q.detach(), k.detach(), v.detach(), m, 1.0 / math.sqrt(s["D"]))
        out["slc_err_pytorch"] = _rel(spt, sref)
        for order in ("fsa", "nsa"):
            out[f"slc_err_{order}"] = _rel(nsa_selected(q, k, v, idx, select_size=64, order=order), sref)
            ok = ok and out[f"slc_err_{order}"] <= 2 * out["slc_err_pytorch"] + 1e-3
    out["ok"] = bool(ok)
    return out


def _round_robin(providers: dict, args, bwd: bool) -> dict:
    every = {p: [] for p in providers}
    errs: dict = {p: None for p in providers}
    for _ in range(ROUNDS):
        for p, fn in providers.items():
            if errs[p]:
                continue
            try:
                every[p].append(_time(fn, *args, bwd))
            except Exception as e:  # noqa: BLE001 - a provider that refuses a shape is reported, not fatal
                errs[p] = f"{type(e).__name__}: {str(e)[:160]}"
    return {p: (min(every[p]) if every[p] else math.nan, every[p], errs[p]) for p in providers}


def run(dtype_name: str = "bfloat16", seqlens=(8192, 16384, 32768, 65536), groups=(1, 4, 16), kv_heads: int = 4,
        head_dim: int = 128, progress=None) -> dict:
    import torch

    from ..iomodel import attention_flops
    from ..kernels.attention.sparse import nsa_select
    from ..kernels.attention.sparse.cost import nsa_flops, selected_flops
    from ..kernels.attention.sparse.kernel import choose_order
    from .common import ceilings, machine_info

    dtype = getattr(torch, dtype_name)
    rows, checks = [], {}
    all_shapes = list(shapes(seqlens, groups, kv_heads, head_dim))
    fkw = {k_: NSA_ARGS[k_] for k_ in ("block_size", "stride", "select_blocks", "select_size", "window")}
    for i, s in enumerate(all_shapes):
        key = (s["G"], s["Hkv"], s["D"])
        if key not in checks:
            checks[key] = check(s, dtype)
        chk = checks[key]
        torch.cuda.empty_cache()
        B, T, Hq, D = s["B"], s["T"], s["Hq"], s["D"]
        q, k, v, gates, do = _inputs(s, dtype)
        base = {**s, "dtype": dtype_name}
        for mode in ("fwd", "bwd"):
            bwd = mode == "bwd"
            res = _round_robin(_nsa_providers(s), (q, k, v, gates, do), bwd)
            for p, (ms, rounds, err) in res.items():
                fl = attention_flops(B, Hq, T, T, D, True, bwd) if p == "flash-dense" else \
                    nsa_flops(B, T, Hq, D, backward=bwd, causal=True, **fkw)
                rows.append({**base, "case": "nsa", "mode": mode, "provider": p, "ms": ms, "ms_rounds": rounds,
                             "tflops": fl / ms / 1e9 if ms == ms else math.nan, "error": err,
                             "check": chk if p.startswith("ioaware") else None})
        # the selected branch alone, on the indices ioaware's selection makes for these inputs
        with torch.no_grad():
            idx = nsa_select(q, k, v, **{k_: NSA_ARGS[k_] for k_ in ("block_size", "stride", "select_blocks",
                                                                       "select_size")})
        tn = TorchNSA(T, s["G"])
        bm = tn.selected_mask(idx)
        slc = _slc_providers(idx, tn, bm)
        for mode in ("fwd", "bwd"):
            bwd = mode == "bwd"
            fl = selected_flops(B, T, Hq, D, backward=bwd, causal=True, **fkw)
            for p, (ms, rounds, err) in _round_robin(slc, (q, k, v, gates, do), bwd).items():
                rows.append({**base, "case": "selected", "mode": mode, "provider": p, "ms": ms, "ms_rounds": rounds,
                             "tflops": fl / ms / 1e9 if ms == ms else math.nan, "error": err,
                             "order_auto": choose_order("auto", s["G"], T, backward=bwd),
                             "check": chk if p.startswith("ioaware") else None})
        del q, k, v, gates, do, idx, bm, tn
        torch.cuda.empty_cache()
        if progress:
            progress(i + 1, len(all_shapes))
    _speedups(rows)
    return {"machine": machine_info(), "ceilings": ceilings(), "setting": {**NSA_ARGS, "init_blocks": 1,
            "local_blocks": 2, "causal": True, "dtype": dtype_name, "kv_heads": kv_heads, "head_dim": head_dim},
            "timing": f"triton.testing.do_bench median; providers round-robin, best of {ROUNDS} rounds",
            "flops_convention": "4*D per visible (query, key) pair forward, 2.5x backward", "rows": rows}


def _speedups(rows: list[dict]) -> None:
    """whole NSA: ioaware over dense flash, torch-flex and fla; selected: FSA order over NSA order, and the
    dispatcher's pick over the best order (the issue's bar: >= 0.95)."""
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["case"], r["T"], r["G"], r["mode"]), {})[r["provider"]] = r
    for (case, *_), grp in groups.items():
        ours = grp["ioaware"]
        ok = ours["check"]["ok"] and ours["ms"] == ours["ms"]
        sp = {}
        for other in ("flash-dense", "torch-flex", "fla", "flex", "ioaware-nsa"):
            o = grp.get(other)
            if ok and o is not None and o["ms"] == o["ms"]:
                sp[other] = o["ms"] / ours["ms"]
        if case == "selected":
            f, n = grp["ioaware-fsa"]["ms"], grp["ioaware-nsa"]["ms"]
            if ok and f == f and n == n:
                sp["fsa_over_nsa_order"] = n / f
                sp["auto_over_best_order"] = min(f, n) / ours["ms"]
        ours["speedups"] = sp


def table_rows(result: dict) -> list[list]:
    out = []
    for r in result["rows"]:
        sp = r.get("speedups") or {}
        txt = ", ".join(f"{k}: {x:.2f}x" for k, x in sp.items())
        chk = r.get("check")
        out.append([r["case"], f"T{r['T']} G{r['G']} Hq{r['Hq']} D{r['D']}", r["mode"], r["provider"], r["ms"],
                    r["tflops"], txt, ("ok" if chk["ok"] else "FAIL") if chk else (r["error"] or "")[:40]])
    return out


TABLE_COLUMNS = ["case", "shape", "pass", "provider", "ms", "TFLOP/s", "ioaware speedup", "check"]
