"""`ioaware generate --device cuda --memory-budget PCT|SIZE`: the GPU path of LLM in a flash.

Attention, embeddings and norms in HBM; FFN layers in pinned host memory (and on disk past --host-budget),
streamed a layer ahead on a copy stream (runtime/offload/gpu_stream.py); with a relufied model, only the
predicted neurons. Prints the bytes moved per token, the iomodel's roofline (those bytes at the probed pinned
host-to-device rate) and the measured tokens/s as a fraction of it.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path


def run_gpu_streamed(args, sampling, device: str = "cuda") -> int:
    """device: 'cuda' from the command line; 'cpu' runs the same schedule synchronously (tests, no probe)."""
    import torch

    from ..env import settings
    from ..errors import DeviceError, UnsupportedError
    from ..report import emit_json, print_table
    from ..runtime import build_model, generate, load_checkpoint
    from ..runtime.offload.gpu_plan import ffn_layer_bytes, parse_share, plan_offload, resident_bytes, roofline
    from ..runtime.offload.gpu_predict import gpu_gate_bytes_estimate
    from ..runtime.offload.gpu_stream import offload_model, probe_pinned_h2d
    from ..runtime.offload.sparse_ffn import is_relu_family
    from ..units import human_bytes

    extra = [f for f, on in (("--store", args.store), ("--convert", args.convert), ("--prefetch", args.prefetch))
             if on]
    if extra:
        raise UnsupportedError(f"{', '.join(extra)} belong to the CPU stream (a flash store of neuron bundles); the "
                               "GPU path streams from pinned host memory: drop them")
    if args.cuda_graphs or args.compile:
        raise DeviceError("--memory-budget on CUDA decodes without CUDA graphs (the copy schedule is issued each "
                          "step); drop --cuda-graphs / --compile")
    if device == "cuda" and not torch.cuda.is_available():
        raise DeviceError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    dtype = torch.float32 if args.dtype == "float32" else torch.bfloat16
    elem = torch.empty(0, dtype=dtype).element_size()
    t0 = time.perf_counter()
    if args.relufy is not None:
        from ..runtime.relufy.apply import load_relufied

        ckpt = load_relufied(args.model, args.relufy)
    else:
        ckpt = load_checkpoint(args.model)
    a = ckpt.args
    relu = is_relu_family(a.ffn_act)
    sparse = args.gpu_ffn == "sparse" or (args.gpu_ffn == "auto" and relu)
    if sparse and not relu:
        raise UnsupportedError("--gpu-ffn sparse needs a relufied model (exact zeros to skip); this one's FFN is "
                               f"{a.ffn_act}: add --relufy ADAPTER or use --gpu-ffn dense")
    total = resident_bytes(a, elem) + a.n_layers * ffn_layer_bytes(a, elem)
    hbm = parse_share(args.memory_budget, total, "--memory-budget")
    host = parse_share(args.host_budget, total, "--host-budget") if args.host_budget else None
    pred_est = gpu_gate_bytes_estimate(a, elem) if sparse else 0
    plan = plan_offload(a, elem, hbm, host, pred_est, sparse)  # refused here, before any weight is built
    tok = ckpt.tokenizer
    text = tok.apply_chat_template([{"role": "user", "content": args.prompt}]) if args.chat else args.prompt
    ids = tok.encode(text)
    if len(ids) >= a.max_seq_len:
        raise ValueError(f"the prompt has {len(ids)} tokens but the model's context is {a.max_seq_len}; shorten it")
    predictors = None
    if sparse:
        from ..runtime.offload.gpu_predict import load_or_train

        predictors = load_or_train(ckpt.path, args.relufy, args.ffn_sparsity, device, dtype, not args.quiet,
                                   say=lambda m: print(m, file=sys.stderr))
        plan = plan_offload(a, elem, hbm, host, predictors.nbytes(), sparse)  # the exact bytes, not the estimate
    model = build_model(ckpt, "cpu", dtype, weights="dense")
    disk = settings().cache_dir / "gpu-offload" / f"{Path(str(ckpt.path)).stem}.ffn" if plan.disk_layers else None
    model, rt = offload_model(model, plan, device, predictors=predictors, disk_path=disk,
                              read_threads=args.read_threads)
    model.set_attention(("flash_attn" if device == "cuda" else "sdpa") if args.attention == "auto" else args.attention)
    # the HBM-resident projections (the streamed FFN runs F.linear on its slots)
    model.set_linear(("flat" if device == "cuda" else "torch") if args.linear == "auto" else args.linear)
    nan = float("nan")
    probe = probe_pinned_h2d(device) if device == "cuda" else {"pinned_GBps": nan, "pageable_GBps": nan}
    load_s = time.perf_counter() - t0

    def emit(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    try:
        res = generate(model, tok, ids, args.max_new_tokens, sampling, on_text=None if args.quiet else emit,
                       cuda_graphs=False)
    finally:
        rt.close()
    if not args.quiet:
        sys.stdout.write("\n\n")
    s = res.summary
    bpt = rt.bytes_per_token()
    disk_rate = rt.stats.disk_bytes / rt.stats.disk_s / 1e9 if rt.stats.disk_s > 0 else None
    roof = roofline(bpt, probe["pinned_GBps"], disk_rate)
    frac = s["decode_tok_s"] / roof["tok_s"] if 0 < roof["tok_s"] < float("inf") else None
    st = rt.stats
    s.update(model=str(ckpt.path), weights=model.weight_format, load_s=load_s, text=res.text,
             memory_budget=args.memory_budget, host_budget=args.host_budget, gpu_ffn="sparse" if sparse else "dense",
             plan=plan.as_dict(), h2d_bytes_per_token=bpt["h2d"], disk_bytes_per_token=bpt["disk"],
             dense_bytes_per_token=plan.dense_bytes_per_token()["h2d"], h2d_probe=probe, roofline=roof,
             roofline_fraction=frac, disk_GBps_measured=disk_rate, host_pinned_bytes=rt.pinned.nbytes,
             host_pinned_fallbacks=rt.pinned.fallbacks,
             ffn_frac_loaded_per_token=(st.neurons_loaded / st.neuron_slots) if st.neuron_slots else None,
             relufy=str(args.relufy) if args.relufy else None,
             budget_note="the budget covers weights (resident, predictors, FFN layers, copy slots); the KV cache "
                         "and activations are outside it")
    rows = [
        ["model", f"{Path(str(ckpt.path)).name} ({model.weight_format})"
         + (f", relufied: {Path(args.relufy).name}" if args.relufy else "")],
        ["decode", f"{s['decode_tok_s']:.2f} tok/s ({s['decode_tokens']} tokens, no CUDA graph)"],
        ["HBM: resident + predictors + FFN layers + copy slots", f"{human_bytes(plan.resident_bytes)} + "
         f"{human_bytes(plan.predictor_bytes)} + {len(plan.hbm_layers)} x {human_bytes(plan.layer_bytes)} + "
         f"{plan.slots} slots = {human_bytes(plan.hbm_bytes)} of {human_bytes(hbm)} "
         f"({hbm / plan.weight_bytes:.0%} of {human_bytes(plan.weight_bytes)})"],
        ["FFN layers in HBM / pinned host / disk", f"{len(plan.hbm_layers)} / {len(plan.host_layers)} / "
         f"{len(plan.disk_layers)}"],
        ["streamed host->device / token", human_bytes(bpt["h2d"]) + (f" ({s['ffn_frac_loaded_per_token']:.1%} of "
                                                                     "streamed neurons)" if sparse else "")
         + (f", of it from disk {human_bytes(bpt['disk'])}" if plan.disk_layers else "")],
        ["pinned host->device (probed)", f"{probe['pinned_GBps']:.1f} GB/s (pageable {probe['pageable_GBps']:.1f})"],
        ["roofline (iomodel: bytes / probed rate)", f"{roof['s_per_token'] * 1e3:.1f} ms/token = "
         f"{roof['tok_s']:.2f} tok/s"],
        ["measured / roofline", f"{frac:.0%}" if frac is not None else "n/a (nothing streamed)"],
        ["load time", f"{load_s:.1f} s"],
    ]
    if not args.quiet:
        print_table("ioaware generate --device cuda --memory-budget", ["", "value"], rows)
    emit_json(s, args.json)
    return 0
