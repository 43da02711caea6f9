"""A model with half its weights in HBM, decoded at batch 1: ioaware's FFN streaming (runtime/offload/gpu_stream.py)
against transformers + accelerate's `device_map` CPU offload, on the same random Llama-8B-shaped bf16 weights, in
one run. Also the all-in-HBM model (the H200 holds it whole; the budget is the experiment's) as the reference the
streamed logits must equal.

Per provider: decode tokens/s (--tokens greedy steps after a prefill of --prompt-tokens and two untimed steps),
weight bytes moved host->device per token, and for ioaware the iomodel's roofline (those bytes at the pinned
host->device rate probed in the same run) with the measured fraction of it. JSON: card, driver, torch, triton,
transformers and accelerate versions, the plan, the accelerate device map's split.

    python benchmarks/bench_gpu_offload.py --device cuda     # -> benchmarks/results/gpu-offload-<card>-<date>.json
    python benchmarks/bench_gpu_offload.py --device cpu --shape tiny --memory-budget 80% --json -   # a smoke run

transformers / accelerate are peers here only (never imported by ioaware); without them the peer is skipped and
the JSON says so.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time

import torch

from ioaware.bench.common import RESULTS_DIR, machine_info
from ioaware.bench.kv_tiers import LLAMA8B, TINY
from ioaware.errors import IOAwareError
from ioaware.files import write_json_atomic
from ioaware.report import print_table
from ioaware.runtime.llm.model import ModelArgs, Transformer
from ioaware.runtime.offload.gpu_plan import ffn_layer_bytes, parse_share, plan_offload, resident_bytes, roofline
from ioaware.runtime.offload.gpu_stream import offload_model, probe_pinned_h2d


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def random_host_model(shape: dict, seed: int) -> Transformer:
    """bf16 random weights on the host (norms 1, the rest N(0, 0.02)): the one copy every provider is made from."""
    a = ModelArgs(**shape)
    g = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        m = Transformer(a)
    for name, p in list(m.named_parameters()):
        t = torch.ones(p.shape, dtype=torch.bfloat16) if "norm" in name else \
            torch.empty(p.shape, dtype=torch.bfloat16).normal_(0, 0.02, generator=g)
        owner, _, attr = name.rpartition(".")
        setattr(m.get_submodule(owner), attr, torch.nn.Parameter(t, requires_grad=False))
    for name, b in list(m.named_buffers()):  # the RoPE tables: empty until setup_cache
        owner, _, attr = name.rpartition(".")
        setattr(m.get_submodule(owner) if owner else m, attr, torch.empty(b.shape, dtype=b.dtype))
    return m.eval()


def decode(step, prompt: torch.Tensor, tokens: int, sync) -> tuple[float, torch.Tensor]:
    """Prefill, two untimed greedy steps, then `tokens` timed ones. step(ids, pos) -> (1, T, vocab) logits.
    Returns (decode tok/s, the last-position logits of every forward, on the host)."""
    out = [step(prompt, 0)[:, -1]]
    pos = prompt.shape[1]
    for _ in range(2):
        out.append(step(out[-1].argmax(-1, keepdim=True), pos)[:, -1])
        pos += 1
    sync()
    t0 = time.perf_counter()
    for _ in range(tokens):
        out.append(step(out[-1].argmax(-1, keepdim=True), pos)[:, -1])
        pos += 1
    sync()
    dt_ = time.perf_counter() - t0
    return tokens / dt_, torch.cat(out).float().cpu()


def run_reference(host: Transformer, prompt, tokens, device, sync) -> dict:
    with torch.device("meta"):
        ref = Transformer(host.args)
    ref.load_state_dict({k: v.to(device) for k, v in host.state_dict().items()}, assign=True)
    ref.eval().set_attention("sdpa")
    ref.setup_cache(1, prompt.shape[1] + tokens + 2)
    with torch.inference_mode():
        tok_s, logits = decode(lambda ids, pos: ref(ids, pos), prompt.to(device), tokens, sync)
    return {"tok_s": tok_s, "logits": logits}


def free(device) -> None:
    """A provider's device memory back before the next one is placed (its model went out of scope on return)."""
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def hf_state_dict(host: Transformer) -> dict:
    """The host model's tensors under Hugging Face Llama names (views: no copy)."""
    a = host.args
    H, Hkv, D = a.n_heads, a.n_kv_heads, a.head_dim
    sd = {"model.embed_tokens.weight": host.tok_embeddings.weight, "model.norm.weight": host.norm.weight,
          "lm_head.weight": host.output.weight}
    for i, layer in enumerate(host.layers):
        p = f"model.layers.{i}."
        q, k, v = layer.attention.wqkv.weight.split([H * D, Hkv * D, Hkv * D])
        gate, up = layer.feed_forward.w13.weight.split(a.hidden_dim)
        sd.update({p + "input_layernorm.weight": layer.attention_norm.weight,
                   p + "post_attention_layernorm.weight": layer.ffn_norm.weight,
                   p + "self_attn.q_proj.weight": q, p + "self_attn.k_proj.weight": k, p + "self_attn.v_proj.weight": v,
                   p + "self_attn.o_proj.weight": layer.attention.wo.weight, p + "mlp.gate_proj.weight": gate,
                   p + "mlp.up_proj.weight": up, p + "mlp.down_proj.weight": layer.feed_forward.w2.weight})
    return sd


def run_accelerate(host: Transformer, prompt, tokens, device, budget: int, sync) -> dict:
    """transformers' Llama on the same tensors, placed by accelerate's `infer_auto_device_map` under
    max_memory={0: budget, 'cpu': ...} and dispatched with CPU offload (`offload_buffers=True`): each offloaded
    decoder layer's weights are copied to the GPU in its forward hook."""
    import accelerate
    import transformers
    from accelerate import dispatch_model, infer_auto_device_map, init_empty_weights
    from transformers import LlamaConfig, LlamaForCausalLM

    a = host.args
    cfg = LlamaConfig(vocab_size=a.vocab_size, hidden_size=a.dim, intermediate_size=a.hidden_dim,
                      num_hidden_layers=a.n_layers, num_attention_heads=a.n_heads, num_key_value_heads=a.n_kv_heads,
                      head_dim=a.head_dim, max_position_embeddings=a.max_seq_len, rms_norm_eps=a.norm_eps,
                      rope_theta=a.rope_base, tie_word_embeddings=a.tie_embeddings, dtype=torch.bfloat16,
                      attn_implementation="sdpa")
    with init_empty_weights():  # parameters on meta, the rotary buffer real
        hf = LlamaForCausalLM(cfg)
    hf.load_state_dict(hf_state_dict(host), assign=True, strict=True)
    hf.eval()
    info = {"transformers": transformers.__version__, "accelerate": accelerate.__version__}
    if device.type == "cuda":
        dmap = infer_auto_device_map(hf, max_memory={0: budget, "cpu": 2 ** 40},
                                     no_split_module_classes=["LlamaDecoderLayer"], dtype=torch.bfloat16)
        hf = dispatch_model(hf, device_map=dmap, offload_buffers=True)
        sizes = {n: p.numel() * p.element_size() for n, p in hf_state_dict(host).items()}
        on_cpu = sum(b for n, b in sizes.items() if _placed(dmap, n) == "cpu")
        info.update(device_map_cpu_modules=sorted({k for k, v in dmap.items() if v == "cpu"}),
                    weight_bytes_on_gpu=sum(sizes.values()) - on_cpu, h2d_bytes_per_token=on_cpu)
    with torch.inference_mode():
        def step(ids, pos):
            nonlocal past
            o = hf(input_ids=ids, past_key_values=past, use_cache=True)
            past = o.past_key_values
            return o.logits

        past = None
        tok_s, logits = decode(step, prompt.to(device), tokens, sync)
    return {"tok_s": tok_s, "logits": logits, **info}


def _placed(dmap: dict, name: str):
    parts = name.split(".")
    for i in range(len(parts), -1, -1):
        key = ".".join(parts[:i])
        if key in dmap:
            return dmap[key]
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--shape", choices=["llama8b", "tiny"], default=None, help="default: llama8b on cuda, tiny on cpu")
    ap.add_argument("--memory-budget", default="50%", help="share of the weight bytes in HBM (or a size)")
    ap.add_argument("--host-budget", default=None, help="pinned host bytes for FFN layers (default: no cap)")
    ap.add_argument("--tokens", type=int, default=16, help="timed decode steps per provider")
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--no-peer", action="store_true", help="skip transformers + accelerate")
    ap.add_argument("--no-reference", action="store_true", help="skip the all-in-HBM run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="results file (- for stdout); default benchmarks/results/"
                    "gpu-offload-<card>-<date>.json on cuda")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_gpu_offload: --device cuda but no CUDA GPU is visible; use --device cpu --shape tiny",
              file=sys.stderr)
        return 2
    # tiny: kv_tiers' shape with 6 layers (its 2 would all fit in the two copy slots: nothing would stream)
    shape = dict(LLAMA8B) if (args.shape or ("llama8b" if device.type == "cuda" else "tiny")) == "llama8b" else \
        dict(TINY, n_layers=6, tie_embeddings=False)
    shape["max_seq_len"] = args.prompt_tokens + args.tokens + 8  # RoPE tables and KV caches for this run only
    a = ModelArgs(**shape)
    elem = 2
    total = resident_bytes(a, elem) + a.n_layers * ffn_layer_bytes(a, elem)
    hbm = parse_share(args.memory_budget, total, "--memory-budget")
    host_b = parse_share(args.host_budget, total, "--host-budget") if args.host_budget else None
    try:  # a budget that cannot work is refused in one line, before the model is made
        plan = plan_offload(a, elem, hbm, host_b)
    except IOAwareError as e:
        print(f"bench_gpu_offload: {e}", file=sys.stderr)
        return 2

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    info = machine_info()
    res = {"machine": info, "shape": shape, "dtype": "bfloat16", "memory_budget": args.memory_budget,
           "host_budget": args.host_budget, "budget_bytes": hbm, "weight_bytes": total, "tokens": args.tokens,
           "prompt_tokens": args.prompt_tokens, "plan": plan.as_dict(), "providers": {}}
    if device.type == "cuda":
        say("probing pinned host->device copies")
        res["h2d_probe"] = probe_pinned_h2d(device)
    say(f"building the random {shape['dim']}x{shape['n_layers']} model on the host ({total / 1e9:.2f} GB bf16)")
    host = random_host_model(shape, args.seed)
    prompt = torch.randint(0, a.vocab_size, (1, args.prompt_tokens), generator=torch.Generator().manual_seed(1))
    ref = None
    if not args.no_reference:
        say("all-in-HBM reference")
        ref = run_reference(host, prompt, args.tokens, device, sync)
        free(device)
        res["providers"]["all-in-HBM"] = {"tok_s": ref["tok_s"], "h2d_bytes_per_token": 0}
    if not args.no_peer:
        try:
            say("transformers + accelerate (device_map CPU offload)")
            peer = run_accelerate(host, prompt, args.tokens, device, hbm, sync)
            free(device)
            ent = {k: v for k, v in peer.items() if k != "logits"}
            if ref is not None:
                ent["prefill_logits_max_abs_diff_vs_reference"] = (peer["logits"][0] - ref["logits"][0]).abs().max(
                ).item()
            res["providers"]["accelerate"] = ent
        except ImportError as e:
            res["providers"]["accelerate"] = {"skipped": f"not installed: {e}"}
    say("ioaware: FFN streamed from pinned host memory")
    model, rt = offload_model(host, plan, device, disk_path=RESULTS_DIR.parent / ".gpu-offload-ffn.bin"
                              if plan.disk_layers else None)
    del host
    model.set_attention("sdpa")
    model.setup_cache(1, args.prompt_tokens + args.tokens + 2)
    try:
        with torch.inference_mode():
            tok_s, logits = decode(lambda ids, pos: model(ids, pos), prompt.to(device), args.tokens, sync)
        bpt = rt.bytes_per_token()
    finally:
        rt.close()
    ent = {"tok_s": tok_s, "h2d_bytes_per_token": bpt["h2d"], "disk_bytes_per_token": bpt["disk"],
           "host_pinned_bytes": rt.pinned.nbytes, "host_pinned_fallbacks": rt.pinned.fallbacks}
    if "h2d_probe" in res:
        roof = roofline(bpt, res["h2d_probe"]["pinned_GBps"])
        ent.update(roofline=roof, roofline_fraction=tok_s / roof["tok_s"] if bpt["h2d"] else None)
    if ref is not None:
        ent.update(logits_bit_equal_to_reference=bool(torch.equal(logits, ref["logits"])),
                   logits_max_abs_diff_vs_reference=(logits - ref["logits"]).abs().max().item())
    res["providers"]["ioaware"] = ent
    peer = res["providers"].get("accelerate", {})
    if peer.get("tok_s"):
        ent["speedup_vs_accelerate"] = tok_s / peer["tok_s"]
    rows = []
    for name, p in res["providers"].items():
        if "tok_s" not in p:
            rows.append([name, p.get("skipped", ""), "", "", ""])
            continue
        rf = p.get("roofline_fraction")
        rows.append([name, f"{p['tok_s']:.2f}", f"{p.get('h2d_bytes_per_token', 0) / 1e9:.2f}",
                     f"{rf:.0%}" if rf is not None else "",
                     f"{p['speedup_vs_accelerate']:.2f}x" if "speedup_vs_accelerate" in p else ""])
    if args.json != "-":  # stdout holds only the JSON then
        print_table(f"decode at {args.memory_budget} of {total / 1e9:.1f} GB of weights in HBM "
                    f"({info.get('card', 'cpu')})", ["provider", "tok/s", "GB host->device / token", "of roofline",
                                                     "vs accelerate"], rows)
    out = args.json
    if out is None and device.type == "cuda":
        card = info.get("card", "gpu").split()[-1].lower()
        out = str(RESULTS_DIR / f"gpu-offload-{card}-{dt.date.today().isoformat()}.json")
    if out == "-":
        print(json.dumps(res, indent=1))
    elif out:
        write_json_atomic(out, res)
        say(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
