"""v1: NSA's block selection with the top-n fused into the scores kernel (FSA's way), timed against today's path.

Idea (dev/nsa/NOTES.md, entries 1 and 2): today `nsa_select_scores` writes the block scores (B, Hkv, T, Ns) fp32 -
1 GiB at T = 64k, Hkv = 4 - and `top_blocks` (torch.topk + sort + where + permute) reads them back: 7.8 ms at every
group size on the H200, the largest stage at G <= 4. `nsa_topk` (ioaware/kernels/attention/sparse/topk.py) computes
the same scores tile by tile and keeps each row's top n in registers (int64 keys, one bitonic merge per tile),
writing only the (B, T, Hkv, n) int32 indices. Prediction: the selection costs about the scores kernel alone
(its 1 GiB fill and write gone) plus the merges (~14 compare-and-swap steps on a 64 x 16 int64 tile per 15 blocks:
~1-2 ms at 64k), so 9.0 -> ~2-3 ms at G = 1, 10.4 -> ~3-4 at G = 4, 21.3 -> ~14-15 at G = 16 (the scores' group
loop dominates there); whole NSA forward at 64k loses ~6-7 ms at every G (14.8 -> ~8 ms at G = 1).

Measured: not yet (run on the device; results go in NOTES.md entry 2).

Per (T, G): old = nsa_select_scores + top_blocks, new = nsa_topk, each timed alone (triton.testing.do_bench,
median), their peak extra memory, and the exactness check on the device: the new indices against the top n of the
old scores with the documented tie rule (lower index first), and against torch.topk's indices on the rows without a
tie at the n-th block. Also whole nsa() forward and dense flash_attn forward in the same run, so the estimate
"whole - old + new" can be set against the issue's 6x bar. --sweep times the new kernel's tiles (BM, warps, stages).

    python dev/nsa/v1_fused_topk.py --out nsa-topk-h200-DATE.json [--seqlens 65536] [--groups 1 4 16] [--sweep]
"""

from __future__ import annotations

import argparse

import torch

from ioaware.bench.common import machine_info, time_ms
from ioaware.files import write_json_atomic
from ioaware.kernels.attention.flash import flash_attn
from ioaware.kernels.attention.sparse import compressed as cmp
from ioaware.kernels.attention.sparse import nsa
from ioaware.kernels.attention.sparse.reference import compress_kv, top_blocks
from ioaware.kernels.attention.sparse.topk import nsa_topk

NSA = dict(block_size=64, stride=16, select_size=64)  # the settings; 16 blocks, window 512
SWEEP = [dict(BM=bm, num_warps=w, num_stages=s) for bm, w, s in
         ((32, 4, 2), (64, 4, 2), (64, 8, 2), (64, 4, 3), (128, 8, 2), (128, 4, 2))]


def top_blocks_stable(scores: torch.Tensor, n: int) -> torch.Tensor:
    """top_blocks with the fused kernel's tie rule (stable sort: the lower index first)."""
    vals, idx = scores.sort(dim=-1, descending=True, stable=True)
    vals, idx = vals[..., :n], idx[..., :n]
    big = scores.shape[-1]
    idx = torch.where(vals == float("-inf"), big, idx).sort(-1).values
    return torch.where(idx == big, -1, idx).permute(0, 2, 1, 3).to(torch.int32).contiguous()


def peak_extra_mib(fn) -> float:
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = fn()
    torch.cuda.synchronize()
    del out
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def time_topk(s: torch.Tensor, n: int) -> float:
    return time_ms(lambda: top_blocks(s, n))


def run_one(T: int, G: int, n: int, sweep: bool, Hkv: int = 4, D: int = 128) -> dict:
    torch.manual_seed(0)
    Hq, dt, scale = Hkv * G, torch.bfloat16, D ** -0.5
    q = torch.randn(1, T, Hq, D, device="cuda", dtype=dt)
    k = torch.randn(1, T, Hkv, D, device="cuda", dtype=dt)
    v = torch.randn(1, T, Hkv, D, device="cuda", dtype=dt)
    kc, _ = compress_kv(k, v, NSA["block_size"], NSA["stride"])
    kc = kc.to(dt).contiguous()
    _, lse = cmp.nsa_cmp_fwd(q, kc, kc, NSA["block_size"], NSA["stride"], True, scale)
    kw = dict(init_blocks=1, local_blocks=2, causal=True, scale=scale, **NSA)

    def scores():
        return cmp.nsa_select_scores(q, kc, lse, **kw)

    def old():
        return top_blocks(scores(), n)

    def new(tiles=None, network="bitonic"):
        return nsa_topk(q, kc, lse, select_blocks=n, tiles=tiles, network=network, **kw)

    r = {"T": T, "G": G, "Hq": Hq, "Hkv": Hkv, "D": D, "n": n, "dtype": "bf16", **NSA}
    # exactness first: no speedup is reported for indices that differ
    s = scores()
    got, want, old_idx = new(), top_blocks_stable(s, n), top_blocks(s, n)
    v_sorted = s.sort(-1, descending=True).values
    tie = ((v_sorted[..., n - 1] == v_sorted[..., n]) & (v_sorted[..., n] > float("-inf"))).permute(0, 2, 1)
    r["rows"] = int(tie.numel())
    r["rows_differing_from_stable_topn"] = int((got != want).any(-1).sum())
    r["rows_with_tie_at_nth"] = int(tie.sum())
    r["untied_rows_differing_from_torch_topk"] = int(((got != old_idx).any(-1) & ~tie).sum())
    r["exact"] = r["rows_differing_from_stable_topn"] == 0 and r["untied_rows_differing_from_torch_topk"] == 0
    del s, got, want, old_idx, v_sorted, tie
    torch.cuda.empty_cache()
    r["old_scores_ms"] = time_ms(scores)
    r["old_topk_ms"] = time_topk(scores(), n)
    r["old_ms"] = time_ms(old)
    r["new_ms"] = time_ms(new)
    # a speedup only for exact indices (the times stay, to see what an inexact kernel would cost)
    r["speedup"] = r["old_ms"] / r["new_ms"] if r["exact"] else None
    r["old_peak_extra_MiB"] = peak_extra_mib(old)
    r["new_peak_extra_MiB"] = peak_extra_mib(new)
    if sweep:
        r["sweep"] = []
        for cfg, net in [(c, "bitonic") for c in SWEEP] + [(None, "tl.sort")]:
            try:
                ok = torch.equal(new(cfg, net), new())
                ms = time_ms(lambda c=cfg, w=net: new(c, w))
                r["sweep"].append({**(cfg or {}), "network": net, "ms": ms, "same_indices": ok})
            except Exception as e:  # noqa: BLE001  (a config that does not fit: recorded, the run goes on)
                r["sweep"].append({**(cfg or {}), "network": net, "error": f"{type(e).__name__}: {str(e)[:200]}"})
    gates = [torch.rand(1, T, Hq, device="cuda", dtype=dt) for _ in range(3)]
    r["whole_fwd_ms"] = time_ms(lambda: nsa(q, k, v, *gates))
    r["dense_fwd_ms"] = time_ms(lambda: flash_attn(q, k, v, causal=True))
    r["whole_fwd_estimate_with_fused_ms"] = r["whole_fwd_ms"] - r["old_ms"] + r["new_ms"]
    r["dense_over_whole_estimate"] = r["dense_fwd_ms"] / r["whole_fwd_estimate_with_fused_ms"]
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="JSON results file")
    ap.add_argument("--seqlens", type=int, nargs="+", default=[65536])
    ap.add_argument("--groups", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--select-blocks", type=int, default=16)
    ap.add_argument("--sweep", action="store_true", help="also time the new kernel's tile configurations")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("v1_fused_topk: needs a CUDA GPU (run on the device machine)")
    rows = []
    from rich.progress import Progress

    with Progress() as bar:
        task = bar.add_task("nsa top-n", total=len(a.seqlens) * len(a.groups))
        for T in a.seqlens:
            for G in a.groups:
                r = run_one(T, G, a.select_blocks, a.sweep)
                rows.append(r)
                bar.console.print({k: (round(x, 3) if isinstance(x, float) else x) for k, x in r.items()
                                   if k != "sweep"})
                # written after every row, so a timeout keeps what was measured
                write_json_atomic(a.out, {"machine": machine_info(), "unit": "ms, median (triton.testing.do_bench)",
                                          "baseline": "nsa_select_scores + top_blocks (torch.topk), same run",
                                          "rows": rows})
                torch.cuda.empty_cache()
                bar.advance(task)


if __name__ == "__main__":
    main()
