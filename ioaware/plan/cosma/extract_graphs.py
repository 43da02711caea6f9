"""Extract the operator graphs COSMA plans over from torchvision / timm architectures (no weights), as JSON data.

Run it in a venv that has torchvision and timm; the library and its tests only read the JSON it writes and never
import either. On this project's 2-core CPU VM (see /work/.library/env/machines/python.md):

    python3 -m venv /tmp/tvenv && /tmp/tvenv/bin/pip install torch==2.14.1 torchvision==0.29.1 timm
    /tmp/tvenv/bin/python ioaware/plan/cosma/extract_graphs.py            # all networks
    /tmp/tvenv/bin/python ioaware/plan/cosma/extract_graphs.py resnet50   # one

How a PyTorch graph becomes a COSMA graph (the paper plans TFLite-style int8 graphs, one byte per element):
- `torch.export` gives an aten graph with shapes; every tensor's size is its element count (int8).
- Real operators (conv, linear, pooling, attention, concat, a sum or product of two activations, ...) create a new
  tensor. Elementwise transforms of a single activation (batch norm, ReLU, hardswish, dropout in eval, adding a
  parameter, padding) create none: they fold into the producer or are applied as the consumer loads, as an int8
  deployment does, so their output is the same buffer as their input. Views (reshape, permute, select, split,
  ...) alias their base, which must be resident whenever a view of it is read.
- Parameters are not activations; each operator records the int8 bytes of the parameters it reads (batch-norm
  statistics fold into the convolution and count nothing).
- The network input enters through a pseudo-operator `input` (its load from DRAM is compulsory), and the graph's
  outputs are written to DRAM once created (compulsory too). The node order of the export is the default schedule.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

OUT_DIR = Path(__file__).resolve().parent / "graphs"

# aten op names (the part after "aten.") that only reinterpret their input's memory
ALIAS = {"view", "reshape", "_unsafe_view", "flatten", "permute", "transpose", "t", "unsqueeze", "squeeze",
         "expand", "contiguous", "clone", "detach", "alias", "slice", "select", "split", "split_with_sizes",
         "chunk", "unbind", "unflatten", "dropout", "dropout_", "feature_dropout", "lift_fresh_copy", "getitem"}
# elementwise transforms of one activation: fused into the producer or applied on load (no new buffer)
UNARY = {"batch_norm", "_native_batch_norm_legit_no_training", "relu", "relu_", "relu6", "hardtanh", "hardtanh_",
         "hardswish", "hardswish_", "hardsigmoid", "hardsigmoid_", "silu", "silu_", "gelu", "sigmoid", "sigmoid_",
         "tanh", "tanh_", "pad", "constant_pad_nd"}
# binary elementwise ops: a real op when both operands are activations, else a unary transform
BINARY = {"add", "add_", "mul", "mul_", "sub", "sub_", "div", "div_"}


def _short(target) -> str:
    s = getattr(target, "__name__", str(target))
    if s == "getitem":
        return "getitem"
    return str(target).split(".")[1] if str(target).startswith("aten.") else s.split(".")[0]


def graph_from_export(ep, name: str, source: str, input_shapes: list) -> dict:
    import torch

    g = ep.graph
    sig = ep.graph_signature
    user_inputs = [s.arg.name for s in sig.input_specs if s.kind.name == "USER_INPUT"]
    consts = {n.name for n in g.nodes if n.op == "placeholder" and n.name not in user_inputs}
    const_bytes = {}  # constant node -> int8 bytes it holds (parameters, buffers, things derived from them)
    bn_consts = set()
    for n in g.nodes:
        if n.op == "call_function" and _short(n.target) in ("batch_norm", "_native_batch_norm_legit_no_training"):
            bn_consts.update(a.name for a in n.args[1:] if isinstance(a, torch.fx.Node))
    tensors, ops = [], []
    buf = {}  # fx node name -> tensor index of the buffer it lives in (aliases share)

    def new_tensor(nm, numel, kind="activation"):
        tensors.append({"name": nm, "bytes": int(numel), "kind": kind})
        return len(tensors) - 1

    for inp in user_inputs:
        node = next(n for n in g.nodes if n.name == inp)
        t = new_tensor(inp, node.meta["val"].numel(), "input")
        buf[inp] = t
        ops.append({"name": f"load_{inp}", "type": "input", "inputs": [], "outputs": [t], "param_bytes": 0})

    def tensor_args(n):
        return _flatten((n.args, n.kwargs))

    def _flatten(a):
        if isinstance(a, torch.fx.Node):
            return [a]
        if isinstance(a, (list, tuple)):
            return [y for x in a for y in _flatten(x)]
        if isinstance(a, dict):
            return [y for x in a.values() for y in _flatten(x)]
        return []

    for n in g.nodes:
        if n.op != "call_function":
            continue
        kind = _short(n.target)
        args = tensor_args(n)
        acts = [a.name for a in args if a.name in buf]
        cargs = [a.name for a in args if a.name in consts or a.name in const_bytes]
        pbytes = sum(const_bytes.get(c, 0) if c in const_bytes else _numel(c, g) for c in cargs if c not in bn_consts)
        if not acts:  # computed from parameters only (class token expand, ...): a constant
            const_bytes[n.name] = pbytes
            continue
        uniq = list(dict.fromkeys(buf[a] for a in acts))
        if kind in ALIAS or kind in UNARY or (kind in BINARY and len(uniq) == 1):
            # no new buffer: the result lives where its (single) activation operand lives
            buf[n.name] = uniq[0]
            if pbytes:  # a parameter added or multiplied in on the fly (ViT's position embedding): its producer's
                ops[_producer(ops, uniq[0])]["param_bytes"] += pbytes
            continue
        val = n.meta.get("val")
        vals = list(val) if isinstance(val, (list, tuple)) else [val]
        outs = []
        for i, v in enumerate(vals):
            if v is None or not hasattr(v, "numel"):
                continue
            outs.append(new_tensor(f"{n.name}" + (f".{i}" if len(vals) > 1 else ""), v.numel()))
        if not outs:
            continue
        buf[n.name] = outs[0]  # multi-output real ops are rare here; getitem of one aliases its first output
        ops.append({"name": n.name, "type": kind, "inputs": uniq, "outputs": outs, "param_bytes": int(pbytes)})

    out_node = next(n for n in g.nodes if n.op == "output")
    for a in _flatten(out_node.args):
        if a.name in buf:
            tensors[buf[a.name]]["kind"] = "output"
    _prune_dead(tensors, ops)
    return {"name": name, "source": source, "input_shapes": input_shapes, "dtype": "int8",
            "torch": torch.__version__, "command": " ".join(["python", *sys.argv]),
            "tensors": tensors, "ops": ops}


def _numel(name, g) -> int:
    for n in g.nodes:
        if n.name == name:
            v = n.meta.get("val")
            return int(v.numel()) if hasattr(v, "numel") else 0
    return 0


def _producer(ops, t):
    return next(i for i, o in enumerate(ops) if t in o["outputs"])


def _prune_dead(tensors, ops):
    """Drop ops whose outputs nobody reads and that make no graph output (shape plumbing, unused aux heads)."""
    while True:
        used = {t for o in ops for t in o["inputs"]} | {i for i, t in enumerate(tensors) if t["kind"] == "output"}
        dead = [i for i, o in enumerate(ops) if not set(o["outputs"]) & used]
        if not dead:
            break
        for i in reversed(dead):
            ops.pop(i)
    # renumber tensors that survive
    live = sorted({t for o in ops for t in o["outputs"]})
    remap = {old: new for new, old in enumerate(live)}
    tensors[:] = [tensors[i] for i in live]
    for o in ops:
        o["inputs"] = [remap[t] for t in o["inputs"]]
        o["outputs"] = [remap[t] for t in o["outputs"]]


def _networks():
    import timm
    import torch
    import torchvision

    tv = torchvision.models
    img = (1, 3, 224, 224)
    nets = {
        "resnet50": (lambda: tv.resnet50(), [img]),
        "densenet121": (lambda: tv.densenet121(), [img]),
        "resnext50": (lambda: tv.resnext50_32x4d(), [img]),
        "r2plus1d": (lambda: tv.video.r2plus1d_18(), [(1, 3, 16, 112, 112)]),
        "s3d": (lambda: tv.video.s3d(), [(1, 3, 16, 224, 224)]),
        "fcn": (lambda: tv.segmentation.fcn_resnet50(weights=None, weights_backbone=None), [img]),
        "lraspp": (lambda: tv.segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None), [img]),
        "deeplabv3": (lambda: tv.segmentation.deeplabv3_resnet50(weights=None, weights_backbone=None), [img]),
        # the original base Transformer (d_model 512, 8 heads, 6+6 layers), source and target of 128 tokens
        "transformer": (lambda: torch.nn.Transformer(), [(128, 1, 512), (128, 1, 512)]),
        "vit_b_16": (lambda: tv.vit_b_16(), [img]),
        "nasnet_a": (lambda: timm.create_model("nasnetalarge"), [(1, 3, 331, 331)]),
        "pnasnet5": (lambda: timm.create_model("pnasnet5large"), [(1, 3, 331, 331)]),
    }
    srcs = {k: f"torchvision {torchvision.__version__}" for k in nets}
    srcs.update(transformer=f"torch.nn.Transformer() (torch {torch.__version__})",
                nasnet_a=f"timm {timm.__version__} nasnetalarge", pnasnet5=f"timm {timm.__version__} pnasnet5large")
    return nets, srcs


def main(argv: list[str] | None = None) -> int:
    import torch

    torch.manual_seed(0)
    names = argv if argv is not None else sys.argv[1:]
    nets, srcs = _networks()
    OUT_DIR.mkdir(exist_ok=True)
    for name in names or list(nets):
        build, shapes = nets[name]
        model = build().eval()
        ep = torch.export.export(model, tuple(torch.randn(*s) for s in shapes))
        g = graph_from_export(ep, name, srcs[name], [list(s) for s in shapes])
        path = OUT_DIR / f"{name}.json"
        path.write_text(json.dumps(g, separators=(",", ":")) + "\n")
        print(f"{name}: {len(g['ops'])} ops, {len(g['tensors'])} tensors, "
              f"{sum(t['bytes'] for t in g['tensors']) / 1e6:.1f} MB of activations -> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
