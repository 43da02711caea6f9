"""`ioaware bench kv-tiers`: decoding with a KV cache larger than the device tier, three ways in one run.

  tiered      each tier's partial where the iomodel says (probed lines; near the data or moved), merged by LSE
  move-all    FlexGen-style: every offloaded page moved to the compute device each step (DRAM by a pinned copy,
              SSD read by this process), then attended there
  recompute   the offloaded prefix's KV recomputed (a prefill over it) instead of kept: per step, the device tier's
              attention plus that prefill

Then the crossover: for prefixes of n tokens, reloading their KV from the lowest tier (cold file reads, or the
pinned copy) vs recomputing it; the smallest n from which reloading stays faster.

    ioaware bench kv-tiers                                  # CPU: real SmolLM2-135M, 1024-token context
    ioaware bench kv-tiers --device cuda --json F           # Llama-8B shape, random bf16 weights, 32k context
    ioaware bench kv-tiers --sparf-quality                  # SparF vs exact on SmolLM2's real activations
    ioaware bench kv-tiers --device cuda --ssd none --sparf 0.125 --sparf-tier dram   # + SparF on DRAM, both
                                                            # transports (copy, zero-copy uva), approximate
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from ..files import write_json_atomic
from ..iomodel.kv_tiers import after, choose_modes, crossover, sparf_dram_parts, tier_seconds
from ..report import emit_json, print_table
from ..units import human_bytes, parse_bytes
from .common import RESULTS_DIR, machine_info
from .kv_tiers_sparf import print_parts, sparf_summary
from .kv_tiers_sparf import random_quality as _random_quality
from .kv_tiers_sparf import transports as _transports

LLAMA8B = dict(dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, hidden_dim=14336, vocab_size=128256,
               rope_base=500000.0, max_seq_len=131072, tie_embeddings=False)
TINY = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=96, vocab_size=300, head_dim=16,
            max_seq_len=4096)


def _random_model(shape: dict, device, dtype):
    from ..runtime.llm.model import ModelArgs, Transformer

    args = ModelArgs(**shape)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            m = Transformer(args)
    finally:
        torch.set_default_dtype(prev)
    with torch.no_grad():
        for n, p in m.named_parameters():
            p.fill_(1.0) if "norm" in n else p.normal_(0, 0.02)
    return m.eval()


def _build(name: str, device: str, dtype):
    if name == "smollm2":
        from ..runtime import build_model, load_checkpoint

        ck = load_checkpoint()
        return build_model(ck, device, dtype, weights="dense"), ck.tokenizer, "SmolLM2-135M-Instruct (real weights)"
    shape = LLAMA8B if name == "llama8b" else TINY
    return _random_model(shape, device, dtype), None, f"{name}-shaped, random weights"


def _prompt_ids(tok, n: int, vocab: int) -> torch.Tensor:
    if tok is None:
        return torch.randint(0, vocab, (1, n), generator=torch.Generator().manual_seed(0))
    from ..runtime.offload.text import load_text

    ids = tok.encode(load_text("heldout"))
    while len(ids) < n:
        ids = ids + ids
    return torch.tensor([ids[:n]])


def _cpu_name() -> str:
    """This host's CPU model and core count (for the results file: the host side runs half of the work)."""
    import os

    try:
        with open("/proc/cpuinfo") as f:
            name = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "unknown")
    except OSError:
        name = "unknown"
    return f"{name} ({os.cpu_count()} logical CPUs)"


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def _fill(model, ids, fill: str, chunk: int):
    """Bring the tiers to the context: a real prefill (in chunks) or random K/V pushed straight into the pages."""
    n = ids.shape[1]
    dev = model.norm.weight.device
    if fill == "prefill":
        for s in range(0, n, chunk):
            model(ids[:, s:s + chunk].to(dev), s, last_only=True)
        return
    a = model.args
    g = torch.Generator(device=dev).manual_seed(0)
    for layer in model.layers:
        lk = layer.attention.tiered
        for s in range(0, n, chunk):
            t = min(chunk, n - s)
            k = torch.randn(1, t, a.n_kv_heads, a.head_dim, device=dev, generator=g).to(model.norm.weight.dtype)
            lk.push(k, torch.randn_like(k))


@torch.inference_mode()
def _decode(model, tiers, start: int, steps: int, cold_ssd: bool) -> tuple[float, torch.Tensor]:
    """Greedy decode `steps` tokens from position `start`; seconds per step (the page cache dropped before each
    step when cold_ssd, outside the timing) and the last logits."""
    from ..runtime.offload.reader import drop_page_cache

    dev = model.norm.weight.device
    tok = torch.zeros(1, 1, dtype=torch.long, device=dev)
    total = 0.0
    logits = None
    for i in range(steps):
        if cold_ssd and tiers.file is not None:
            drop_page_cache(tiers.file.path)
        _sync(dev)
        t0 = time.perf_counter()
        logits = model(tok, start + i)
        tok = logits[:, -1:].argmax(-1)
        _sync(dev)
        total += time.perf_counter() - t0
    return total / steps, logits


def _per_layer_bytes(tiers) -> dict:
    t = tiers.tokens_per_tier()
    per_tok = 2 * tiers.batch * tiers.Hkv * tiers.D * tiers.esize
    out = {k: v * per_tok for k, v in t.items()}
    if tiers.spec.sparf_on("dram") and t["dram"]:
        from ..runtime.kvtiers.dram_sparf import read_bytes

        out["dram"] = read_bytes(tiers.spec.sparf, t["dram"], tiers.batch, tiers.Hkv, tiers.D, tiers.esize)
    if tiers.spec.sparf_on("ssd") and t["ssd"]:
        from ..runtime.kvtiers.sparf import PAGE

        cfg, D = tiers.spec.sparf, tiers.D
        r, npg = cfg.channels(D), cfg.n_pages(t["ssd"], D)
        out["ssd"] = tiers.batch * tiers.Hkv * (r * t["ssd"] + 2 * npg * PAGE * D) * tiers.esize
    return out


def _sparf_page_bytes(tiers) -> int:
    """Bytes of the pages SparF on DRAM moves per layer (K and V of the chosen pages, every KV head)."""
    from ..runtime.kvtiers.dram_sparf import plan

    _, _, npg = plan(tiers.spec.sparf, tiers.tokens_per_tier()["dram"], tiers.D)
    return 2 * tiers.batch * tiers.Hkv * npg * 16 * tiers.D * tiers.esize


# untimed decode steps before each variant's timed ones: a variant's first step compiles its Triton kernels
# (seconds on a GPU). Without it the H200 run of 2026-12-03 read 172 ms a step for SparF `uva` whose timed parts
# summed to ~48 ms: the compiles of its new kernels, averaged over 8 steps.
WARMUP_STEPS = 1


def _variant(model, tiers, start, steps, modes, cold, timed_too=True) -> dict:
    """Run `steps` decode steps with the tier modes (after WARMUP_STEPS untimed ones); again synchronised per
    tier for per-tier times."""
    tiers.spec.modes = dict(modes)
    nbytes = _per_layer_bytes(tiers)
    _decode(model, tiers, start, WARMUP_STEPS, cold)
    start += WARMUP_STEPS
    tiers.stats = _fresh(tiers)
    step_s, _ = _decode(model, tiers, start, steps, cold)
    res = {"modes": dict(modes), "step_s": step_s, "tok_s": 1.0 / step_s, "bytes_per_layer": nbytes,
           "dram_page_bytes": _sparf_page_bytes(tiers) if tiers.spec.sparf_on("dram") else nbytes["dram"],
           "ssd_bytes_read_per_step": tiers.stats["bytes"]["ssd"] / steps}
    pos = start + steps
    if timed_too:
        tiers.timed = True
        tiers.stats = _fresh(tiers)
        _decode(model, tiers, pos, steps, cold)
        tiers.timed = False
        pos += steps
        calls = steps * tiers.n_layers
        s = tiers.stats["s"]
        res["measured_layer_s"] = {"hbm": s["hbm"] / calls, "dram": s["dram"] / calls,
                                   "ssd": (tiers.stats["worker_s"] if modes["ssd"] == "near" else s["ssd"]) / calls}
        # the DRAM tier's parts, each ended by a device sync: selection (SparF), copy, the device's partial
        res["measured_dram_parts_s"] = {k: s[f"dram_{k}"] / calls for k in ("select", "copy", "dev")}
    return res, pos


def _fresh(tiers):
    from ..runtime.kvtiers.cache import zero_stats

    return zero_stats()  # per variant


@torch.inference_mode()
def _recompute_s(model, ids, n: int, chunk: int) -> float:
    """Seconds of a plain (untiered) prefill of the first n tokens: what recomputing their KV costs."""
    dev = model.norm.weight.device
    saved = model.kv_tiers
    model.kv_tiers = None
    try:
        model.setup_cache(1, n)
        best = float("inf")
        for _ in range(2):
            _sync(dev)
            t0 = time.perf_counter()
            for s in range(0, n, chunk):
                model(ids[:, s:min(s + chunk, n)].to(dev), s, last_only=True)
            _sync(dev)
            best = min(best, time.perf_counter() - t0)
        return best
    finally:
        model.kv_tiers = saved
        for layer, lk in zip(model.layers, saved.layers, strict=True):
            layer.attention.cache, layer.attention.tiered = None, lk


def _reload_s(tiers, n: int, device) -> float:
    """Seconds to bring n tokens' KV of every layer to the compute device from the lowest tier holding them:
    the SSD file read cold (then copied), or DRAM by the copy."""
    import os

    from ..runtime.kvtiers.cache import to_device
    from ..runtime.kvtiers.ssd import read_segment
    from ..runtime.offload.reader import drop_page_cache

    t0 = None
    if tiers.file is not None and tiers.layers[0].ssd_tokens >= n:
        drop_page_cache(tiers.file.path)
        fd = os.open(tiers.file.path, os.O_RDONLY)
        try:
            t0 = time.perf_counter()
            for lk in tiers.layers:
                got = 0
                for s in lk.segs:
                    if got >= n:
                        break
                    k, v = read_segment(fd, s, tiers.batch, tiers.Hkv, tiers.D, tiers.dtype)
                    to_device(k, device), to_device(v, device)
                    got += s.tokens
            _sync(device)
        finally:
            os.close(fd)
    else:
        t0 = time.perf_counter()
        for lk in tiers.layers:
            for k, v in lk.dram_views():
                to_device(k[:, :n], device), to_device(v[:, :n], device)
        _sync(device)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="ioaware bench kv-tiers", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--model", choices=["smollm2", "llama8b", "tiny"], default=None,
                    help="default: smollm2 on cpu, llama8b (random bf16 weights) on cuda")
    ap.add_argument("--context", type=int, default=None, help="tokens in the cache (default 1024 cpu, 32768 cuda)")
    ap.add_argument("--hbm", default=None, help="device-tier budget (default: a quarter of the context's KV)")
    ap.add_argument("--dram", default=None, help="DRAM budget (default: a quarter of the context's KV)")
    ap.add_argument("--ssd", default=None, help="folder for the SSD tier (default: a temporary folder); 'none': "
                    "no SSD tier, DRAM holds the rest")
    ap.add_argument("--seg-pages", type=int, default=16, help="pages per SSD segment (one aligned write)")
    ap.add_argument("--steps", type=int, default=8, help="decode steps per variant")
    ap.add_argument("--sparf", type=float, default=0.0, help="also run SparF on the SSD tier at this fraction of "
                    "its bytes (e.g. 0.125)")
    ap.add_argument("--sparf-r", type=int, default=None, help="SparF: channels read per KV head (the most, with "
                    "--sparf-r-share; default head_dim // 16)")
    ap.add_argument("--sparf-r-share", type=float, default=None, help="SparF: per KV head, the fewest channels "
                    "holding this share of |q|'s L1 norm (SparQ's rule; default 0: a fixed r)")
    ap.add_argument("--sparf-sinks", type=int, default=None, help="SparF: first pages of the tier always read "
                    "(attention sinks; default 1)")
    ap.add_argument("--sparf-recent-pages", type=int, default=None, help="SparF: last pages of the tier always read "
                    "(default 0)")
    ap.add_argument("--sparf-top-k", type=int, default=None, help="SparF: tokens kept of the read pages per KV head "
                    "(default: all)")
    ap.add_argument("--sparf-correction", choices=("none", "mean"), default=None, help="SparF: 'mean' adds the "
                    "paper's mean-value correction; 'none' (default) renormalises over the tokens read")
    ap.add_argument("--warm-ssd", action="store_true", help="leave the KV file in the page cache between steps "
                    "(default: dropped before every step, so the SSD tier reads the disk)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's choice)")
    ap.add_argument("--worker-threads", type=int, default=1)
    ap.add_argument("--crossover", type=int, nargs="*", default=None, help="prefix sizes (tokens) for reload vs "
                    "recompute (default: powers of 4 up to the offloaded prefix)")
    ap.add_argument("--out", default=None, help="results file (default benchmarks/results/kv_tiers-<machine>-<date>"
                    ".json)")
    ap.add_argument("--json", default=None, metavar="FILE", help="also write the results to FILE ('-' for stdout)")
    ap.add_argument("--sparf-tier", choices=("ssd", "dram"), default="ssd", help="the tier --sparf reads "
                    "(dram: the DRAM tier keeps K channel-major too; only the chosen pages cross PCIe)")
    ap.add_argument("--sparf-transport", choices=("copy", "uva", "uva-serial", "uva-gather", "both"), default=None,
                    help="SparF on DRAM: copy (host selects, pinned copy), uva (zero-copy: fused kernels read pinned "
                    "memory on a side stream; on cuda uva-serial, the same kernels on the compute stream, and "
                    "uva-gather run too, for comparison), uva-serial, uva-gather (the gather-then-attend "
                    "zero-copy path) or both (copy, uva, uva-gather: default on cuda; copy on cpu)")
    ap.add_argument("--sparf-quality", action="store_true", help="instead: SparF's attention-output cosine "
                    "similarity to exact and bytes read, every layer of SmolLM2 at one decode step after --context "
                    "tokens of real text (default 2048), whole context and with the newest tokens exact")
    a = ap.parse_args(argv)
    a.argv_rest = [x for x in (sys.argv[1:] if argv is None else argv) if x != "--sparf-quality"]
    if a.sparf_quality:
        return _sparf_quality(a)

    from ..errors import DeviceError
    from ..runtime.kvtiers import KVTierSpec, SparFConfig, install_kv_tiers
    from ..runtime.kvtiers.probe import probe_rates

    if a.device == "cuda" and not torch.cuda.is_available():
        raise DeviceError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    name = a.model or ("llama8b" if a.device == "cuda" else "smollm2")
    ctx = a.context or (32768 if a.device == "cuda" else 1024)
    dtype = torch.bfloat16 if a.device == "cuda" else torch.float32
    model, tok, desc = _build(name, a.device, dtype)
    if a.device == "cpu":
        model.set_attention("sdpa")
    ma = model.args
    esize = torch.empty(0, dtype=dtype).element_size()
    kv_total = 2 * ma.n_layers * ctx * ma.n_kv_heads * ma.head_dim * esize
    hbm = parse_bytes(a.hbm) if a.hbm else kv_total / 4
    dram = parse_bytes(a.dram) if a.dram else kv_total / 4
    tmp = None
    ssd = None if (a.ssd or "").lower() == "none" else a.ssd
    if a.ssd is None:
        tmp = tempfile.mkdtemp(prefix="kvtiers-", dir="/var/tmp" if Path("/var/tmp").is_dir() else None)
        ssd = tmp
    if ssd is None and hbm + dram < kv_total * 1.01:
        dram = kv_total * 1.01 - hbm + 2 * ma.n_layers * 16 * (a.steps * 2 + 64) * ma.n_kv_heads * ma.head_dim * esize
    spec = KVTierSpec(hbm, dram, ssd, seg_pages=a.seg_pages, worker_threads=a.worker_threads,
                      sparf_tier=a.sparf_tier if a.sparf else "ssd")
    transports = _transports(a)
    if a.sparf and a.sparf_tier == "dram":
        from ..runtime.kvtiers.dram_sparf import check_config

        for tr in transports:  # refused before any work
            check_config(SparFConfig(bytes_frac=a.sparf, **_sparf_knobs(a)), tr)
    tiers = install_kv_tiers(model, spec)
    ids = _prompt_ids(tok, ctx, ma.vocab_size)
    n_variants = 2 + (1 + len(transports) if a.sparf else 0)  # tiered, move-all; SparF: its variants (and SSD)
    total_steps = n_variants * (2 * a.steps + WARMUP_STEPS) + 2
    try:
        t0 = time.perf_counter()
        model.setup_cache(1, ctx + total_steps)
        _fill(model, ids, "random" if name == "llama8b" else "prefill", 512 if a.device == "cuda" else 256)
        fill_s = time.perf_counter() - t0
        per_tier = tiers.tokens_per_tier()
        nb = _per_layer_bytes(tiers)
        seg = 16 * a.seg_pages
        toks = [v for v in per_tier.values() if v]
        hi = max(2 * seg, -(-max(toks) // seg) * seg)
        lo = max(seg, min(toks) // seg * seg)
        sizes = (lo if lo < hi else max(seg, hi // 4 // seg * seg), hi)  # two sizes: a line, not a point
        pos = ctx
        _decode(model, tiers, pos, 2, False)  # warm-up (the worker's first request pays its imports; clocks)
        pos += 2
        views = tiers.layers[0].dram_views()
        rates = probe_rates(ma.n_heads, ma.n_kv_heads, ma.head_dim, dtype, device, sizes=sizes, ssd_dir=ssd,
                            worker_threads=a.worker_threads, seg_tokens=seg, host_kv=views[0] if views else None)
        choice = choose_modes(nb, rates)
        print(f"iomodel per tier (per layer): {choice['why']}; chose {choice['modes']}")
        cold = not a.warm_ssd and tiers.file is not None
        res = {}
        res["tiered"], pos = _variant(model, tiers, pos, a.steps, choice["modes"], cold)
        res["move_all"], pos = _variant(model, tiers, pos, a.steps, {"dram": "move", "ssd": "move"}, cold)
        sparf_probe, quality = None, None
        if a.sparf and a.sparf_tier == "dram":
            from ..runtime.kvtiers.probe import probe_sparf_dram

            cfg = SparFConfig(bytes_frac=a.sparf, **_sparf_knobs(a))
            big = max(16 * (cfg.n_pages(per_tier["dram"], ma.head_dim) + 4), per_tier["dram"] // 16 * 16)
            sparf_probe = probe_sparf_dram(ma.n_heads, ma.n_kv_heads, ma.head_dim, dtype, device, cfg,
                                           (max(256, big // 4 // 16 * 16), big))
            rates.host_select, rates.sync_s = sparf_probe["host_select"], sparf_probe["sync_s"]
            rates.uva = sparf_probe["uva"] or rates.uva
            rates.uva_select = sparf_probe["uva_select"] or rates.uva_select
            rates.uva_attend = sparf_probe["uva_attend"] or rates.uva_attend
            tiers.spec.sparf = cfg
            for tr in transports:
                key = "sparf_dram_" + tr.replace("-", "_")
                if tr.startswith("uva") and sparf_probe["uva_error"]:
                    res[key] = {"error": sparf_probe["uva_error"]}
                    continue
                tiers.spec.sparf_transport = tr
                res[key], pos = _variant(model, tiers, pos, a.steps, choice["modes"], cold)
                res[key]["transport"] = tr
            quality = _random_quality(tiers, ma, device, dtype)
            tiers.spec.sparf = None
        elif a.sparf:
            tiers.spec.sparf = SparFConfig(bytes_frac=a.sparf, **_sparf_knobs(a))
            nb_s = _per_layer_bytes(tiers)
            ch = choose_modes(nb_s, rates)
            res["tiered_sparf"], pos = _variant(model, tiers, pos, a.steps, ch["modes"], cold)
            tiers.spec.sparf = None
        for r in res.values():
            if "error" in r:
                continue
            pred = {k: tier_seconds(k, r["bytes_per_layer"][k], r["modes"].get(k, ""), rates) for k in
                    ("hbm", "dram", "ssd")}
            if "transport" in r:  # SparF on DRAM: the chosen pages and channel rows, priced by part
                parts = sparf_dram_parts(r["bytes_per_layer"]["dram"], r["dram_page_bytes"], r["transport"], rates)
                pred["dram"] = sum(parts.values())
                r["predicted_dram_parts_s"] = parts
            elif r["bytes_per_layer"]["dram"] and r["modes"].get("dram") == "move":
                B_ = r["bytes_per_layer"]["dram"]
                r["predicted_dram_parts_s"] = {"select": 0.0, "copy": rates.link(B_),
                                               "dev": after(rates.dev, B_, rates.link(B_), rates)}
            r["predicted_layer_s"] = pred
            r["prediction_error"] = {k: (pred[k] / m - 1 if m > 0 else None) for k, m in
                                     r.get("measured_layer_s", {}).items() if r["bytes_per_layer"][k]}
        offloaded = per_tier["dram"] + per_tier["ssd"]
        ns = a.crossover if a.crossover is not None else [n for n in (16, 64, 256, 1024, 4096, 16384) if n <= offloaded]
        points = []
        for n in ns:
            points.append((n, _reload_s(tiers, n, device), _recompute_s(model, ids, n, 512)))
        rec_off = _recompute_s(model, ids, offloaded, 512) if offloaded else 0.0
        hbm_only = res["tiered"]["step_s"] - ma.n_layers * sum(res["tiered"]["measured_layer_s"][k]
                                                                for k in ("dram", "ssd"))
        res["recompute"] = {"step_s": max(hbm_only, 0.0) + rec_off, "recompute_prefix_s": rec_off,
                            "prefix_tokens": offloaded}
        res["recompute"]["tok_s"] = 1.0 / res["recompute"]["step_s"]
        xo = crossover(points)
    finally:
        tiers.close()
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)

    out = {"machine": {**machine_info(), "cpu": _cpu_name()}, "device": a.device, "model": desc,
           "dtype": str(dtype), "context": ctx,
           "kv_bytes_total": kv_total, "budgets": {"hbm": hbm, "dram": dram, "ssd": ssd},
           "tokens_per_tier_per_layer": per_tier, "fill_s": fill_s, "cold_ssd": cold, "steps": a.steps,
           "threads": torch.get_num_threads(), "rates": {k: getattr(rates, k).__dict__ for k in
                                                         ("hbm", "cpu", "worker", "disk", "link", "dev")},
           "probe_points": rates.source, "iomodel_choice": choice, "variants": res,
           "speedup_tiered_vs_move_all": res["tiered"]["tok_s"] / res["move_all"]["tok_s"],
           "speedup_tiered_vs_recompute": res["tiered"]["tok_s"] / res["recompute"]["tok_s"],
           "crossover_points": [{"tokens": n, "reload_s": r, "recompute_s": c} for n, r, c in points],
           "crossover_tokens": xo}
    if sparf_probe is not None:
        out["sparf_dram"] = sparf_summary(sparf_probe, quality, res)
    rows = []
    for key, r in res.items():
        if "error" in r:
            rows.append([key, "-", "-", "-", r["error"]])
            continue
        errs = r.get("prediction_error", {})
        rows.append([key, r.get("transport") or str(r.get("modes", "-")), f"{r['tok_s']:.2f}",
                     f"{r['tok_s'] / res['move_all']['tok_s']:.2f}x",
                     ", ".join(f"{k} {e:+.0%}" for k, e in errs.items() if e is not None) or "-"])
    print_table(f"kv-tiers: {desc}, {a.device}, context {ctx} ({human_bytes(kv_total)} KV; per layer "
                f"hbm/dram/ssd {per_tier['hbm']}/{per_tier['dram']}/{per_tier['ssd']} tokens)",
                ["variant", "modes", "tok/s", "vs move-all", "iomodel vs measured per tier"], rows)
    if "sparf_dram" in out:
        print_parts(out["sparf_dram"])
    print_table("reload vs recompute the offloaded prefix", ["tokens", "reload ms", "recompute ms"],
                [[n, f"{r * 1e3:.2f}", f"{c * 1e3:.2f}"] for n, r, c in points])
    print(f"crossover: reloading beats recomputing from {xo} tokens on" if xo else
          "crossover: reloading never beat recomputing at the measured sizes")
    card = "cpu" if a.device == "cpu" else (out["machine"].get("card", "gpu").split() + ["gpu"])[1].lower()
    dest = Path(a.out) if a.out else RESULTS_DIR / f"kv_tiers-{name}-{card}-{dt.date.today().isoformat()}.json"
    write_json_atomic(dest, out)
    print(f"results written to {dest}")
    emit_json(out, a.json)
    return 0


def _sparf_knobs(a) -> dict:
    """The SparF options given on the command line (the rest keep SparFConfig's defaults)."""
    given = {"r": a.sparf_r, "r_share": a.sparf_r_share, "sink_pages": a.sparf_sinks,
             "recent_pages": a.sparf_recent_pages, "top_k": a.sparf_top_k, "correction": a.sparf_correction}
    return {k: v for k, v in given.items() if v is not None}


def _sparf_variants(D: int, knobs: dict) -> list[tuple[str, dict]]:
    """The variants measured: the paper's correction and attention sinks, the split of the budget between channel
    rows and pages (fixed r, SparQ's |q|-share rule), always-read recent pages; the old and new defaults; the
    command line's own options last. Each is labelled by its whole configuration."""
    from ..runtime.kvtiers import SparFConfig

    r0, r8 = max(1, D // 16), max(1, D // 8)
    kws = [dict(r=r0, correction=c, sink_pages=n, recent_pages=0) for c in ("mean", "none") for n in (0, 1, 2)]
    kws += [dict(r=r8, correction="mean", sink_pages=0, recent_pages=0)]  # the old default (the paper's r = D/8)
    kws += [dict(r=r, correction="none", sink_pages=1, recent_pages=0) for r in sorted({max(1, D // 32), r8})]
    kws += [dict(r=r8, r_share=x, correction="none", sink_pages=1, recent_pages=0) for x in (0.3, 0.4)]
    kws += [dict(r=r0, correction="none", sink_pages=1, recent_pages=n) for n in (1, 2, 4)]
    kws += [dict(r=r0, correction="mean", sink_pages=1, recent_pages=2), {}]  # {}: SparFConfig's defaults
    if knobs:
        kws.append(knobs)
    out = []
    for kw in kws:
        c = SparFConfig(**kw)
        label = (f"r={c.channels(D)}{f' r_share={c.r_share:g}' if c.r_share else ''} sinks={c.sink_pages} "
                 f"recent={c.recent_pages} corr={c.correction}{f' top_k={c.top_k}' if c.top_k else ''}")
        out.append((label + (" (old default)" if kw.get("r") == r8 and kw.get("sink_pages") == 0 else "")
                    + (" (default)" if not kw else "") + (" (command line)" if knobs and kw is knobs else ""), kw))
    return out


def _sparf_quality(a) -> int:
    from ..runtime import build_model, load_checkpoint
    from ..runtime.kvtiers import SparFConfig
    from ..runtime.kvtiers.quality import capture, oracle_quality, sparf_quality

    if a.threads:
        torch.set_num_threads(a.threads)
    ctx = a.context or 2048
    frac = a.sparf or 0.125
    ck = load_checkpoint()
    model = build_model(ck, "cpu", torch.float32, weights="dense")
    acts = capture(model, _prompt_ids(ck.tokenizer, ctx + 1, 0))
    rows, cases = [], []
    D = model.args.head_dim
    for recent in (0, ctx // 8, ctx // 4):
        for name, kw in _sparf_variants(D, _sparf_knobs(a)):
            q = sparf_quality(acts, SparFConfig(frac, **kw), exact_recent=recent)
            cases.append({"variant": name, **q})
            rows.append([recent, name, f"{q['bytes_frac']:.3f}", f"{q['cos_mean']:.4f}", f"{q['cos_p05']:.4f}",
                         f"{q['cos_min']:.4f}", f"{q['alpha_hat_mean']:.2f} / {q['alpha_true_mean']:.2f}"])
        for kw in ({}, {"correction": "mean"}, {"sink_pages": 0, "recent_pages": 0},
                   {"sink_pages": 0, "recent_pages": 0, "correction": "mean"}):  # the ceiling of the page choice
            c = SparFConfig(frac, **kw)
            q = oracle_quality(acts, c, exact_recent=recent)
            name = (f"oracle pages: r={c.channels(D)} sinks={c.sink_pages} recent={c.recent_pages} "
                    f"corr={c.correction}{' (exact α)' if c.correction == 'mean' else ''}")
            cases.append({"variant": name, **q})
            rows.append([recent, name, "", f"{q['cos_mean']:.4f}", f"{q['cos_p05']:.4f}", f"{q['cos_min']:.4f}", ""])
    print_table(f"SparF on SmolLM2-135M activations, context {ctx}, budget {frac:g} of the SSD tier's bytes "
                "(cosine similarity of each layer's and head's attention output to exact)",
                ["exact newest tokens", "variant", "bytes read / exact", "cos mean", "cos p05", "cos min",
                 "α̂ / true α"], rows)
    out = {"machine": {**machine_info(), "cpu": _cpu_name()}, "model": "SmolLM2-135M-Instruct (real weights, fp32)",
           "command": "ioaware bench kv-tiers --sparf-quality " + " ".join(a.argv_rest), "context": ctx,
           "defaults": SparFConfig(frac).__dict__,
           "text": "ioaware/runtime/data/heldout.txt", "bytes_frac_budget": frac, "page_tokens": 16,
           "bar": "cos >= 0.99 at 1/8 of the KV bytes", "cases": cases}
    dest = Path(a.out) if a.out else RESULTS_DIR / f"kvtiers-sparf-smollm2-cpu-{dt.date.today().isoformat()}.json"
    write_json_atomic(dest, out)
    print(f"results written to {dest}")
    emit_json(out, a.json)
    return 0
