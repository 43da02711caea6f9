"""The packed CPU path of a 4-bit GGUF: no dequantised weight held, the packed weights cached (memory-mapped) and the
cache's validity; the decode step against the module forward. Tiny Q4_1 models, written the way llama.cpp writes."""

from __future__ import annotations

import os

import pytest
import torch

from ioaware.runtime import build_model, load_checkpoint
from ioaware.runtime.llm import packed_cache as pc

from .helpers import byte_vocab, tiny_hf_model, write_gguf

VOCAB = len(byte_vocab()[0])


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("IOAWARE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("IOAWARE_INTERPRET", raising=False)  # attention through SDPA below; the kernels have theirs


def _gguf(tmp_path, seed=0, name="q4.gguf", **kw):
    return write_gguf(tmp_path / name, tiny_hf_model(VOCAB, seed=seed, **kw), qtype="Q4_1")


def _logits(model, ids):
    with torch.inference_mode():
        model.set_attention("sdpa")
        model.setup_cache(1, ids.shape[1] + 4)
        full = model(ids, 0)  # (1, T, V)
        step = model(ids[:, :1] * 0 + 5, ids.shape[1])  # one decode step after the prompt
    return full, step


def _ids(n=19, seed=0):
    return torch.randint(0, VOCAB, (1, n), generator=torch.Generator().manual_seed(seed))


def test_cached_path_equals_uncached_exactly(tmp_path):
    g = _gguf(tmp_path)
    ck = load_checkpoint(g)
    assert ck.packed is None  # first load: no cache yet
    built = build_model(ck, "cpu", weights="quantized")
    assert built.packed_cache["state"] == "written"
    assert not ck.state_dict.materialized  # the packed path never dequantised the file
    ck2 = load_checkpoint(g)
    assert ck2.packed_cache["state"] == "hit" and ck2.reader._r is None  # GGUF not parsed on a warm start
    cached = build_model(ck2, "cpu", weights="quantized")
    assert cached.packed_cache["state"] == "hit" and ck2.reader._r is None and not ck2.state_dict.materialized
    nocache = build_model(load_checkpoint(g, weight_cache=False), "cpu", weights="quantized", weight_cache=False)
    assert nocache.packed_cache["state"] == "off"
    ids = _ids()
    ref = _logits(nocache, ids)
    for m in (built, cached):
        got = _logits(m, ids)
        assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])
    # the cached tokenizer and hyper-parameters are the GGUF's
    text = "<|im_start|>user\nthe cat in the hat<|im_end|>\n"
    assert ck2.tokenizer.encode(text) == ck.tokenizer.encode(text)
    assert ck2.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}]) == \
        ck.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}])
    assert ck2.tokenizer.eos_ids == ck.tokenizer.eos_ids and ck2.args == ck.args
    assert ck2.tensor_types == ck.tensor_types


def test_no_dequantised_weight_held(tmp_path):
    """Every 2-D tensor the packed model holds is int4-packed or int8; fp32 only for 1-D norms. The tied head and
    the embedding share one int8 table."""
    m = build_model(load_checkpoint(_gguf(tmp_path)), "cpu", weights="quantized")
    for name, t in list(m.named_parameters()) + list(m.named_buffers()):
        if name in ("cos", "sin"):
            continue
        if t.dim() >= 2 and "scales_zeros" not in name:
            assert t.dtype in (torch.uint8, torch.int8), (name, t.dtype)
        elif t.dtype == torch.float32:
            assert t.dim() == 1 and "norm" in name, name
    assert m.output.q is m.tok_embeddings.q


def test_cache_rebuilt_when_gguf_changes(tmp_path):
    g = _gguf(tmp_path, seed=1)
    build_model(load_checkpoint(g), "cpu", weights="quantized")
    old = list((tmp_path / "cache" / "packed").glob("*.safetensors"))
    assert len(old) == 1
    _gguf(tmp_path, seed=2)  # same path, new weights (new size or mtime and content)
    ck = load_checkpoint(g)
    assert ck.packed is None  # the old cache is not used
    m = build_model(ck, "cpu", weights="quantized")
    assert m.packed_cache["state"] == "written"
    now = list((tmp_path / "cache" / "packed").glob("*.safetensors"))
    assert len(now) == 1 and now != old  # the stale file is gone
    ref = build_model(load_checkpoint(g, weight_cache=False), "cpu", weights="quantized", weight_cache=False)
    ids = _ids(seed=3)
    assert torch.equal(_logits(m, ids)[0], _logits(ref, ids)[0])
    ck2 = load_checkpoint(g)
    assert ck2.packed_cache["state"] == "hit"
    assert torch.equal(_logits(build_model(ck2, "cpu", weights="quantized"), ids)[0], _logits(ref, ids)[0])


@pytest.mark.parametrize("cut", [1, 4096, "header"])
def test_truncated_cache_is_rebuilt(tmp_path, cut):
    g = _gguf(tmp_path, seed=4)
    build_model(load_checkpoint(g), "cpu", weights="quantized")
    (f,) = (tmp_path / "cache" / "packed").glob("*.safetensors")
    size = f.stat().st_size
    os.truncate(f, 100 if cut == "header" else size - cut)
    assert pc.read_cache(f, f.stem.rsplit("-", 1)[1]) is None
    ck = load_checkpoint(g)
    assert ck.packed is None
    m = build_model(ck, "cpu", weights="quantized")
    assert m.packed_cache["state"] == "written" and f.stat().st_size == size
    assert load_checkpoint(g).packed_cache["state"] == "hit"


def test_foreign_key_is_refused(tmp_path):
    g = _gguf(tmp_path, seed=5)
    build_model(load_checkpoint(g), "cpu", weights="quantized")
    (f,) = (tmp_path / "cache" / "packed").glob("*.safetensors")
    assert pc.read_cache(f, "0" * 24) is None
    assert pc.read_cache(f, f.stem.rsplit("-", 1)[1]) is not None


def test_packed_close_to_dense_and_legacy(tmp_path):
    """Against the dequantised fp32 model: the packed path (int8 head) is as close as the earlier packed path
    (bf16 head, fp32 embedding) within a small margin; both differ from dense only by bf16/int8 rounding."""
    ck = load_checkpoint(_gguf(tmp_path, seed=6))
    dense = build_model(ck, "cpu", weights="dense")
    legacy = build_model(ck, "cpu", weights="quantized", legacy_quant=True)
    packed = build_model(ck, "cpu", weights="quantized")
    ids = _ids(21, seed=7)
    ref = _logits(dense, ids)[0]
    err = {k: ((_logits(m, ids)[0] - ref).norm() / ref.norm()).item() for k, m in
           (("legacy", legacy), ("packed", packed))}
    assert err["packed"] < 2e-2 and err["packed"] < 1.5 * err["legacy"] + 2e-3, err


def test_int8_rows_round_trip():
    torch.manual_seed(0)
    rows = torch.randn(37, 96) * torch.rand(37, 1) * 3
    q, s = pc.quantize_rows_int8(rows)
    back = q.float() * s.float()[:, None]
    step = s.float()[:, None]
    assert q.dtype == torch.int8 and s.dtype == torch.bfloat16
    assert ((back - rows).abs() <= 0.5 * step * (1 + 1e-6)).all()  # round to nearest against the stored scale
    m = pc.Int8Linear(q, s)
    x = torch.randn(3, 96)
    ref = x.bfloat16().double() @ back.double().t()
    err = (m(x).double() - ref).abs().max().item()
    base = (torch.nn.functional.linear(x.bfloat16(), back.bfloat16()).double() - ref).abs().max().item()
    assert err <= 2 * base + 1e-6, (err, base)  # no worse than bf16 matmul of the same values


# ---- the fused CPU decode step (cpu_decode.py) ----

def _decode_logits(model, prompt, toks, fused: bool, poison: bool = False):
    """Prefill `prompt` through the modules, then one step per token of `toks`: (len(toks), V) logits."""
    from ioaware.runtime.llm.cpu_decode import CPUDecodeStep

    with torch.inference_mode():
        model.set_attention("sdpa")
        model.setup_cache(1, prompt.shape[1] + len(toks))
        model(prompt, 0)
        if poison:  # positions not yet written: a step that reads past its own position turns NaN
            for b in model.layers:
                b.attention.cache.k[:, prompt.shape[1]:] = float("nan")
                b.attention.cache.v[:, prompt.shape[1]:] = float("nan")
        step = CPUDecodeStep(model) if fused else model
        out = [step(torch.tensor([[t]]), prompt.shape[1] + i).reshape(-1).clone() for i, t in enumerate(toks)]
    return torch.stack(out)


@pytest.mark.parametrize("seed", [0, 1])
def test_fused_step_matches_module_step(tmp_path, seed):
    """Against the dequantised fp32 model fed the same tokens, the fused step's error is within 2x the module
    path's (both round activations to bf16 for the int4 kernel); the cache past the position is never read."""
    ck = load_checkpoint(_gguf(tmp_path, seed=10 + seed))
    packed = build_model(ck, "cpu", weights="quantized")
    dense = build_model(ck, "cpu", weights="dense")
    prompt, toks = _ids(13, seed=seed), _ids(9, seed=100 + seed)[0].tolist()
    fused = _decode_logits(packed, prompt, toks, fused=True, poison=True)
    module = _decode_logits(packed, prompt, toks, fused=False)
    with torch.inference_mode():
        dense.set_attention("sdpa")
        dense.setup_cache(1, prompt.shape[1] + len(toks))
        ref = dense(torch.cat([prompt, torch.tensor([toks])], 1), 0)[0, prompt.shape[1]:]  # (n, V): after each tok
    assert torch.isfinite(fused).all()
    e_f, e_m = (fused - ref).abs().max().item(), (module - ref).abs().max().item()
    assert e_f <= 2 * e_m + 1e-5, (e_f, e_m)
    assert (fused - module).abs().max().item() <= 2 * e_m + 1e-5


def test_fused_step_legacy_model_and_cache_written(tmp_path):
    """The earlier packed model (fp32 embedding, bf16 head) runs through the fused step too, and the K/V the
    step appends equal the module path's within the same rounding."""
    ck = load_checkpoint(_gguf(tmp_path, seed=12))
    m = build_model(ck, "cpu", weights="quantized", legacy_quant=True)
    prompt, toks = _ids(7, seed=3), _ids(5, seed=4)[0].tolist()
    fused = _decode_logits(m, prompt, toks, fused=True)
    k_fused = m.layers[1].attention.cache.k.clone()
    module = _decode_logits(m, prompt, toks, fused=False)
    k_mod = m.layers[1].attention.cache.k
    assert (fused - module).abs().max() <= 0.05 * module.abs().max()
    assert (k_fused - k_mod).abs().max() <= 0.02 * k_mod.abs().max()


def test_generate_picks_the_step(tmp_path):
    from ioaware.runtime import generate
    from ioaware.runtime.llm.cpu_decode import CPUDecodeStep, supports

    ck = load_checkpoint(_gguf(tmp_path, seed=13))
    packed, dense = build_model(ck, "cpu", weights="quantized"), build_model(ck, "cpu", weights="dense")
    for m in (packed, dense):
        m.set_attention("sdpa")
    ids = ck.tokenizer.encode("the cat")
    assert generate(packed, ck.tokenizer, ids, 6, stop_at_eos=False).summary["decode_step"] == "cpu fused"
    r = generate(packed, ck.tokenizer, ids, 6, stop_at_eos=False, decode_step="module")
    assert r.summary["decode_step"] == "module" and len(r.tokens) == 6
    assert "dense" in supports(dense)
    assert generate(dense, ck.tokenizer, ids, 4, stop_at_eos=False).summary["decode_step"] == "module"
    with pytest.raises(ValueError, match="does not run this model"):
        CPUDecodeStep(dense)
    with pytest.raises(ValueError, match="decode_step"):
        generate(packed, ck.tokenizer, ids, 4, decode_step="fast")


def test_cli_reports_cache_step_and_first_token(tmp_path, capsys):
    import json

    from ioaware.cli.main import main

    g = _gguf(tmp_path, seed=14)
    states = []
    for extra in ([], [], ["--decode-step", "module", "--no-weight-cache"]):
        js = tmp_path / "s.json"
        rc = main(["generate", "--model", str(g), "--prompt", "the cat", "--max-new-tokens", "5", "--quiet",
                   "--attention", "sdpa", "--json", str(js), *extra])
        capsys.readouterr()
        assert rc == 0
        s = json.loads(js.read_text())
        assert s["time_to_first_token_s"] >= s["load_s"] > 0 and s["peak_memory_bytes"] > 0
        states.append((s["weight_cache"], s["decode_step"]))
    assert states == [("written", "cpu fused"), ("hit", "cpu fused"), ("off", "module")]


def test_cache_tensors_are_aligned_and_exact(tmp_path):
    """ATen's int8 matmul faults on weights that are only 8-byte aligned: every mapped tensor starts at a multiple of
    64, odd sizes and dtypes round-trip exactly, and a file with a misaligned tensor is refused (rebuilt)."""
    g = torch.Generator().manual_seed(3)
    ts = {"a.q": torch.randint(-127, 127, (7, 13), generator=g).to(torch.int8),
          "b.scale": torch.randn(5, generator=g).to(torch.bfloat16),
          "c": torch.randn(3, 3, generator=g), "d.i": torch.arange(11, dtype=torch.int32)}
    meta = {"format": pc.FORMAT, "key": "k"}
    path = pc.write_cache(tmp_path / "x-k.safetensors", ts, meta)
    got, m = pc.read_cache(path, "k")
    assert m["key"] == "k" and set(got) == set(ts)
    for name, t in ts.items():
        assert got[name].data_ptr() % pc.ALIGN == 0, name
        assert torch.equal(got[name], t), name
    from safetensors.torch import save_file  # safetensors' own writer aligns to 8 bytes only

    unaligned = tmp_path / "y-k.safetensors"
    save_file({"a": torch.zeros(3, dtype=torch.int8), "b": torch.zeros(64, dtype=torch.int8)}, str(unaligned),
              metadata=meta)
    assert pc.read_cache(unaligned, "k") is None
