"""Store format 3: bundles padded so none straddles a page (store.bundle_stride). The padded store holds the same
bundles, its reads land the same bytes (every reader mode, O_DIRECT or not), a scattered neuron costs one page, the
streamed model's outputs are bit-equal to the unpadded store's, an older store is refused with what to do, and the
runtime's merge gap comes from the curve it prices with."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ioaware.files import direct_io_supported
from ioaware.iomodel.io import choose_merge_gap
from ioaware.runtime import load_checkpoint
from ioaware.runtime.offload import store as fs
from ioaware.runtime.offload import streamed_ffn as ff
from ioaware.runtime.offload.reader import NeuronReader, probe_reads, with_reader_points

from .helpers import byte_vocab, tiny_hf_model, write_gguf

VOCAB = len(byte_vocab()[0])


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    d = tmp_path_factory.mktemp("pagebundles")
    g = write_gguf(d / "tiny.gguf", tiny_hf_model(VOCAB, seed=5, intermediate_size=97), context=48)
    ck = load_checkpoint(g)
    fp = fs.model_fingerprint(g)
    packed = fs.write_store(d / "packed.store", ck.args, ck.state_dict, fp, progress=False)  # auto: 384 B, unpadded
    padded = fs.write_store(d / "padded.store", ck.args, ck.state_dict, fp, progress=False, pad=True)
    return ck, fs.open_store(packed), fs.open_store(padded)


def test_stride_rule():
    assert fs.bundle_stride(3 * 576 * 2) == 4096  # SmolLM2 fp16: 1.81 pages a scattered neuron -> 1, +18.5% dense
    assert fs.bundle_stride(384) == 384 and fs.bundle_stride(384, pad=True) == 512  # 1.06 pages -> 1 for +33%
    assert fs.bundle_stride(4096) == 4096 and fs.bundle_stride(5000, pad=True) == 8192
    assert fs.bundle_stride(3 * 4096 * 2) == 24576  # page multiples are never padded
    for b in range(64, 3 * 4096, 64):  # padded strides divide a page or are whole pages
        s = fs.bundle_stride(b, pad=True)
        assert s >= b and (4096 % s == 0 if s <= 4096 else s % 4096 == 0)


def test_padded_store_layout_and_same_bundles(stores):
    ck, packed, padded = stores
    a = ck.args
    assert padded.header["version"] == fs.FORMAT_VERSION == 3
    assert packed.bundle_stride == packed.bundle_bytes == 384 and padded.bundle_stride == 512
    assert padded.ffn_bytes == packed.ffn_bytes == a.n_layers * a.hidden_dim * 384  # budgets: the weights' bytes
    assert padded.ffn_file_bytes == a.n_layers * a.hidden_dim * 512
    raw = padded.path.read_bytes()
    for i, sec in enumerate(padded.layers):
        assert sec["offset"] % 4096 == 0 and sec["nbytes"] == a.hidden_dim * 512
        assert torch.equal(padded.read_layer_bundles(i), packed.read_layer_bundles(i))
        for n in (0, 7, a.hidden_dim - 1):  # neuron n at n * stride, then zeros to the next one
            off = sec["offset"] + n * 512
            assert raw[off:off + 384] == packed.read_layer_bundles(i)[n].numpy().tobytes()
            assert raw[off + 384:off + 512] == bytes(128)
    padded.verify()
    assert np.array_equal(padded.checksums, packed.checksums)  # of the bundles' bytes, not the padding


@pytest.mark.parametrize("verify", ["threads", "fused", "after", "off"])
def test_padded_reads_are_bit_equal_and_a_page_each(stores, verify):
    ck, packed, padded = stores
    ids = np.array([0, 1, 2, 9, 17, 40, 41, 63, 64, 96])  # runs, singles, the last neuron
    modes = [False] + ([True] if direct_io_supported(padded.path) else [])
    for direct in modes:
        with NeuronReader(packed, threads=3, direct=direct, verify=verify) as r0, \
                NeuronReader(padded, threads=3, direct=direct, verify=verify) as r1:
            for layer in range(ck.args.n_layers):
                a, b = r0.read(layer, ids), r1.read(layer, ids)
                assert torch.equal(a.bundles, b.bundles) and b.stats.useful_bytes == len(ids) * 384
                if not direct:  # runs read from first bundle to last bundle's end, no trailing pad
                    assert b.stats.bytes == sum((n - 1) * 512 + 384 for _, n in r1.plan(layer, ids)[1])
            # scattered neurons (8 a page): padded, each lies in one page; O_DIRECT reads exactly those pages
            far = np.arange(3, ck.args.hidden_dim, 16)
            got = r1.read(0, far)
            assert torch.equal(got.bundles, r0.read(0, far).bundles)
            if direct:
                assert got.stats.bytes == len(far) * 4096 and set(got.stats.chunk_sizes) == {4096}


def test_corrupt_padded_bundle_is_named(stores, tmp_path):
    _, _, padded = stores
    raw = bytearray(padded.path.read_bytes())
    raw[padded.layers[1]["offset"] + 5 * 512 + 7] ^= 0x40
    bad = tmp_path / "bad.store"
    bad.write_bytes(bytes(raw))
    with NeuronReader(fs.open_store(bad), threads=2, direct=False) as r:
        r.read(1, [0, 4, 6])
        with pytest.raises(fs.StoreError, match="layer 1, neuron 5"):
            r.read(1, [2, 5, 9])


def test_older_store_is_refused_with_what_to_do(stores, tmp_path):
    _, packed, _ = stores
    raw = bytearray(packed.path.read_bytes())
    raw[8:12] = (2).to_bytes(4, "little")
    old = tmp_path / "old.store"
    old.write_bytes(bytes(raw))
    with pytest.raises(fs.StoreError, match="format version 2; this ioaware reads version 3; convert"):
        fs.open_store(old)


class PredictAFifth:
    def __init__(self, L, dim, H):
        self.A = [torch.zeros(1, dim)] * L
        self.H = H

    def predict(self, layer, x):  # a fifth of the neurons, which fifth following the input: every token reads
        return torch.arange(int(x.float().abs().sum() * 1000) % 5, self.H, 5)

    def to(self, device=None, dtype=None):
        return self

    def n_params(self):
        return 0


def _curve(lat, rate):
    pts = [{"chunk": c, "threads": t, "direct": True, "GBps": c * t / (lat + c / rate) / 1e9}
           for c in (4096, 65536, 1 << 20) for t in (1, 8)]
    return {"version": 1, "points": pts, "peak_GBps": 1.0}


def test_streamed_outputs_bit_equal_and_gap_from_the_pricing_curve(stores):
    ck, packed, padded = stores
    a = ck.args
    th = torch.zeros(a.n_layers)
    outs, runtimes = [], []
    for st in (packed, padded):
        budget = st.resident_bytes + (4 << 20)
        model, rt, _ = ff.build_streamed_model(st, PredictAFifth(a.n_layers, a.dim, a.hidden_dim), th, budget,
                                               window=2, threads=3, curve=_curve(300e-6, 50e6))
        model.setup_cache(1, 16)
        ids = torch.randint(0, VOCAB, (1, 10), generator=torch.Generator().manual_seed(2))
        with torch.inference_mode():
            o = [model(ids[:, :6], 0)] + [model(ids[:, t:t + 1], t) for t in range(6, 10)]
        outs.append(o)
        runtimes.append(rt)
    for x, y in zip(*outs, strict=True):
        assert torch.equal(x, y)
    rt = runtimes[1]
    assert rt.stats.bytes_read > 0 and rt.stats.predicted_io_s > 0
    c2 = _curve(900e-6, 50e6)
    rt.use_curve(c2)  # what generate does with the curve re-measured at start: the gap follows it
    assert rt.curve is c2 and rt.reader.max_gap == (choose_merge_gap(c2, 3, True) if rt.reader.direct else 0)
    pts = probe_reads(rt.reader, runs=(1, 4), seconds=0.0)
    sizes = [p["chunk"] for p in pts if p.get("source") == "reader"]  # one request a run, of the run's bytes
    if rt.reader.direct:  # one page, or two where a run of 4 (2 KiB) straddles a page boundary
        assert sizes[0] == 4096 and 4096 <= sizes[1] <= 8192
    else:
        assert sizes == [384, 3 * 512 + 384]
    assert all(p["GBps"] > 0 and p["threads"] == 3 for p in pts if p.get("source") == "reader")
    merged = with_reader_points(c2, pts)
    assert merged["reader_overhead"]["batch_s"] >= 0 and len(merged["points"]) <= len(c2["points"]) + 2
    assert rt.reader.max_gap == (choose_merge_gap(c2, 3, True) if rt.reader.direct else 0)  # restored
    for r in runtimes:
        r.close()
