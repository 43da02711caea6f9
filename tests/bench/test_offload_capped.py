"""offload_capped.py's pieces that run in seconds: the F16 GGUF for llama.cpp (same values as the store's fp16
dequantisation), the decode-step I/O snapshot, the argument checks."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from ioaware.bench import offload_capped as oc
from tests.runtime.helpers import byte_vocab, tiny_hf_model, write_gguf

VOCAB = len(byte_vocab()[0])
HAVE_LLAMA = importlib.util.find_spec("llama_cpp") is not None


@pytest.fixture(scope="module")
def q8(tmp_path_factory):
    d = tmp_path_factory.mktemp("f16")
    return write_gguf(d / "tiny-q8.gguf", tiny_hf_model(VOCAB, seed=2), qtype="Q8_0", context=128)


def test_f16_gguf_same_values_and_metadata(q8, tmp_path):
    import gguf
    from gguf.quants import dequantize

    dst = oc.write_f16_gguf(q8, tmp_path / "tiny.f16.gguf")
    src, out = gguf.GGUFReader(q8), gguf.GGUFReader(dst)
    quantised = [t for t in src.tensors if t.tensor_type == gguf.GGMLQuantizationType.Q8_0]
    assert quantised, "the fixture must hold quantised tensors"
    by_name = {t.name: t for t in out.tensors}
    assert by_name.keys() == {t.name for t in src.tensors}
    for t in src.tensors:
        o = by_name[t.name]
        assert list(o.shape) == list(t.shape)
        if t.tensor_type == gguf.GGMLQuantizationType.Q8_0:
            assert o.tensor_type == gguf.GGMLQuantizationType.F16
            ref = dequantize(t.data, t.tensor_type)
            np.testing.assert_array_equal(np.asarray(o.data), ref.astype(np.float16))  # one rounding, to fp16
        else:
            assert o.tensor_type == t.tensor_type
            np.testing.assert_array_equal(np.asarray(o.data), np.asarray(t.data))
    skip = {"general.file_type"}
    for k, f in src.fields.items():
        if not k.startswith("GGUF.") and k not in skip:
            assert out.fields[k].contents() == f.contents(), k
    assert out.fields["general.file_type"].contents() == 1  # MOSTLY_F16
    assert oc.write_f16_gguf(q8, dst) == dst  # written once


def test_f16_gguf_loads_in_ioaware_with_the_same_weights(q8, tmp_path):
    from ioaware.runtime import load_checkpoint

    dst = oc.write_f16_gguf(q8, tmp_path / "tiny.f16.gguf")
    a, b = load_checkpoint(q8, weight_cache=False), load_checkpoint(dst, weight_cache=False)
    assert a.tokenizer.encode("the cat") == b.tokenizer.encode("the cat")
    rounded = 0
    for k, v in a.state_dict.items():
        w = b.state_dict[k].float()
        if not torch.equal(w, v.float()):  # F32 tensors are copied, quantised ones rounded once to fp16
            torch.testing.assert_close(w, v.float().half().float(), rtol=0, atol=0, msg=k)
            rounded += 1
    assert rounded > 0


@pytest.mark.skipif(not HAVE_LLAMA, reason="llama-cpp-python is not installed (make peers)")
def test_f16_gguf_loads_in_llama_cpp(q8, tmp_path):
    import llama_cpp

    dst = oc.write_f16_gguf(q8, tmp_path / "tiny.f16.gguf")
    llm = llama_cpp.Llama(model_path=str(dst), n_ctx=64, n_threads=1, verbose=False, use_mmap=True)
    ids = llm.tokenize(b"the cat", add_bos=False)
    llm.eval(ids)
    assert 0 <= int(llm.sample(temp=0.0)) < VOCAB


def test_decode_io_snapshots_at_the_second_forward():
    lin = torch.nn.Linear(4, 4)
    io = oc.DecodeIO()
    lin.register_forward_pre_hook(io.hook)
    lin(torch.ones(1, 4))
    assert io.at_decode is None  # the prefill
    lin(torch.ones(1, 4))
    start = io.at_decode
    assert start is not None and start["read_bytes"] is not None and start["majflt"] >= 0
    end = {"read_bytes": start["read_bytes"] + 4096 * 3, "majflt": start["majflt"] + 6}
    assert io.per_token(end, 3) == {"read_bytes_per_token": 4096.0, "majflt_per_token": 2.0}
    assert oc.DecodeIO().per_token(end, 3) == {"read_bytes_per_token": None, "majflt_per_token": None}


def test_bad_arguments_fail_before_work():
    with pytest.raises(SystemExit):
        oc.parse_args(["--tokens", "1"])
    with pytest.raises(SystemExit):
        oc.parse_args(["--providers", "vllm"])
    a = oc.parse_args([])
    assert a.providers == list(oc.PROVIDERS) and a.cap_mechanism == "auto" and a.llama_gguf == "f16"
