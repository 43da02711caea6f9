"""Is the block-sparse Hopper forward at 25% host-bound? (dev/attention/NOTES.md, "Hopper block-sparse", run S3.)

At the benchmark's setting (B2 T8192 H16 D128 bf16, its masks: 128 x 128 blocks, 25% / 50%, seeds 1 / 2) and the
dense forward, in one process, round-robin over 3 rounds, each case timed four ways:
  - bench: triton's do_bench (L2 flushed before each call, events around each call), as the benchmark times it;
  - b2b:   CUDA events around 3N back-to-back calls / 3N (no flush);
  - graph: N calls captured in one CUDA graph, replayed 3 times (no host work) / 3N;
  - host:  time.perf_counter around N calls without synchronising / N (the host's cost of one call).
Cases: dense flash_attn; block-sparse flash_attn with block_lists.py's block-list cache off / on; hopper.py's sparse
forward called directly with prebuilt lists (no list building, the launch only). Under graph capture the cache is
bypassed, so the public op's graph includes the list-building kernels.
`python3 dev/attention/sparse_host.py [--cpu]` writes $OUT/sparse_host.json (--cpu: the host cost of the list
building on CPU / meta tensors only)."""

import json
import os
import sys
import time

import torch

from ioaware.kernels.attention.flash import block_lists, masked

B, T, H, D, BS = 2, 8192, 16, 128, 128
N = 30


def _cpu():
    def us(f, n=500):
        for _ in range(20):
            f()
        t0 = time.perf_counter()
        for _ in range(n):
            f()
        return (time.perf_counter() - t0) / n * 1e6

    torch.set_num_threads(1)
    n = T // BS
    res = {}
    for dev in ("cpu", "meta"):
        bm = (torch.rand(B, H, n, n) < 0.25).to(dev)
        q = torch.empty(B, T, H, D, dtype=torch.bfloat16, device=dev)
        block_lists.sparse_cache(False)
        res[f"{dev} lists uncached us"] = us(lambda bm=bm, q=q: block_lists.sparse_args(bm, q))
        block_lists.sparse_cache(True)
        res[f"{dev} lists cached us"] = us(lambda bm=bm, q=q: block_lists.sparse_args(bm, q))
    print(json.dumps(res, indent=1))
    return res


def _capture(f):
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            f()
    torch.cuda.current_stream().wait_stream(s)
    gr = torch.cuda.CUDAGraph()
    with torch.cuda.graph(gr):
        for _ in range(N):
            f()
    return gr


def _gpu():
    import triton.testing

    from ioaware import flash_attn
    from ioaware.kernels.attention.flash import hopper

    dev = "cuda"
    q, k, v = (torch.randn(B, T, H, D, device=dev, dtype=torch.bfloat16) for _ in range(3))
    n = T // BS
    cases, flops = {"dense": lambda: flash_attn(q, k, v)}, {"dense": 4 * B * H * T * T * D}
    for i, density in enumerate((0.25, 0.5)):
        g = torch.Generator(device=dev).manual_seed(1 + i)
        bm = torch.rand(B, H, n, n, device=dev, generator=g) < density
        nnz = int(bm.sum())
        tag = f"{density:.0%}"

        def off(bm=bm):
            block_lists.sparse_cache(False)
            return flash_attn(q, k, v, block_mask=bm, block_size=(BS, BS))

        def on(bm=bm):
            block_lists.sparse_cache(True)
            return flash_attn(q, k, v, block_mask=bm, block_size=(BS, BS))

        lists = masked._hopper_sparse_lists(bm, q, (BS, BS))
        cases[f"sparse {tag} cache off"] = off
        cases[f"sparse {tag} cache on"] = on
        cases[f"sparse {tag} direct"] = lambda lists=lists: hopper.hopper_flash_attn_fwd(q, k, v, False, D ** -0.5,
                                                                                        sparse=lists)
        for c in ("cache off", "cache on", "direct"):
            flops[f"sparse {tag} {c}"] = 4 * D * nnz * BS * BS
    with torch.no_grad():
        same = torch.equal(on(), off()) and torch.equal(on(), cases["sparse 50% direct"]()[0])
        graphs = {}
        for name, f in cases.items():  # compile, warm up, capture N calls (cache mode set inside f)
            f()
            try:
                graphs[name] = _capture(f)
            except Exception as e:  # noqa: BLE001 - reported, the other modes still run
                print(f"{name}: capture failed: {type(e).__name__}: {str(e)[:200]}", flush=True)
                graphs[name] = None
        torch.cuda.synchronize()
        res = {name: {"bench": [], "b2b": [], "graph": [], "host_us": []} for name in cases}
        ev = lambda: torch.cuda.Event(enable_timing=True)
        for _ in range(3):
            for name, f in cases.items():
                r = res[name]
                r["bench"].append(float(triton.testing.do_bench(f, warmup=25, rep=100, return_mode="median")))
                f()
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                for _ in range(N):
                    f()
                r["host_us"].append((time.perf_counter() - t0) / N * 1e6)
                torch.cuda.synchronize()
                a, b = ev(), ev()
                a.record()
                for _ in range(N * 3):
                    f()
                b.record()
                torch.cuda.synchronize()
                r["b2b"].append(a.elapsed_time(b) / (N * 3))
                if graphs[name] is None:
                    r["graph"].append(float("nan"))
                    continue
                graphs[name].replay()
                a, b = ev(), ev()
                a.record()
                for _ in range(3):
                    graphs[name].replay()
                b.record()
                torch.cuda.synchronize()
                r["graph"].append(a.elapsed_time(b) / (N * 3))
    out = {"device": torch.cuda.get_device_name(), "setting": dict(B=B, T=T, H=H, D=D, block=BS, dtype="bf16"),
           "N": N, "cache_on_equals_off": same, "cases": {}}
    best = lambda xs: min((x for x in xs if x == x), default=float("nan"))
    dense = {m: best(res["dense"][m]) for m in ("bench", "b2b", "graph")}
    for name, r in res.items():
        row = {m: [round(x, 4) for x in r[m]] for m in r}
        for m in ("bench", "b2b", "graph"):
            row[f"{m}_TFLOPs"] = round(flops[name] / best(r[m]) / 1e9, 1)
            row[f"{m}_rate_vs_dense"] = round(flops[name] / best(r[m]) / (flops["dense"] / dense[m]), 3)
        out["cases"][name] = row
        ms = lambda m, r=r: " ".join(f"{x:.3f}" for x in r[m])
        print(f"{name:24s} bench {ms('bench')}  b2b {ms('b2b')}  graph {ms('graph')} ms  host "
              f"{' '.join(f'{x:.0f}' for x in r['host_us'])} us  rate bench/b2b/graph {row['bench_rate_vs_dense']}/"
              f"{row['b2b_rate_vs_dense']}/{row['graph_rate_vs_dense']}", flush=True)
    return out


if __name__ == "__main__":
    out = _cpu() if "--cpu" in sys.argv else _gpu()
    with open(os.path.join(os.environ.get("OUT", "."), "sparse_host.json"), "w") as f:
        json.dump(out, f, indent=1)
