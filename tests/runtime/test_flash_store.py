"""The flash store: exact round trip, bundle layout, alignment, checksums, atomic writes, fingerprints; the
neuron reader with and without O_DIRECT; the disk probe's curve and the iomodel's read-time prediction."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from ioaware.errors import IOAwareError
from ioaware.files import direct_io_supported
from ioaware.runtime import load_checkpoint
from ioaware.runtime.offload import store as fs
from ioaware.runtime.offload.reader import NeuronReader, coalesce

from .helpers import byte_vocab, tiny_hf_model, write_gguf

VOCAB = len(byte_vocab()[0])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("flash")
    g = write_gguf(d / "tiny.gguf", tiny_hf_model(VOCAB, seed=5, intermediate_size=97))  # 97: odd neuron count
    out = fs.convert(g, d / "tiny.store", progress=False)
    return g, out, load_checkpoint(g)


def test_round_trip_every_tensor_exactly(tiny):
    g, out, ck = tiny
    st = fs.open_store(out, fs.model_fingerprint(g))
    res = st.read_resident()
    resident = {n for n in ck.state_dict if not fs.is_ffn(n)}
    assert set(res) == resident
    for n in resident:
        assert res[n].dtype == torch.float16 and torch.equal(res[n], ck.state_dict[n].half()), n
    for i in range(ck.args.n_layers):
        gate, up, down = st.read_layer_dense(i)
        p = f"model.layers.{i}.mlp."
        assert torch.equal(gate, ck.state_dict[p + "gate_proj.weight"].half())
        assert torch.equal(up, ck.state_dict[p + "up_proj.weight"].half())
        assert torch.equal(down, ck.state_dict[p + "down_proj.weight"].half())
    assert st.args == ck.args
    st.verify()


def test_bundle_layout_and_alignment(tiny):
    g, out, ck = tiny
    st = fs.open_store(out)
    raw = out.read_bytes()
    d, B = ck.args.dim, st.bundle_bytes
    assert B == 3 * d * 2
    for i, sec in enumerate(st.layers):
        assert sec["offset"] % 4096 == 0
        p = f"model.layers.{i}.mlp."
        for n in (0, 1, 50, ck.args.hidden_dim - 1):  # neuron n is one contiguous run of 3*dim fp16 values
            b = np.frombuffer(raw[sec["offset"] + n * B: sec["offset"] + (n + 1) * B], dtype=np.float16)
            want = torch.cat([ck.state_dict[p + "gate_proj.weight"][n], ck.state_dict[p + "up_proj.weight"][n],
                              ck.state_dict[p + "down_proj.weight"][:, n]]).half().numpy()
            assert np.array_equal(b, want)
    assert st.header["resident"]["offset"] % 4096 == 0 and len(raw) % 4096 == 0


def test_checksum_corruption_detected(tiny, tmp_path):
    _, out, _ = tiny
    bad = tmp_path / "bad.store"
    raw = bytearray(out.read_bytes())
    st = fs.open_store(out)
    raw[st.layers[1]["offset"] + 77] ^= 0xFF
    bad.write_bytes(bytes(raw))
    st2 = fs.open_store(bad)  # the header is intact: opening is cheap and succeeds
    st2.read_layer_dense(0)
    with pytest.raises(fs.StoreError, match="checksum mismatch in section layer 1"):
        st2.read_layer_dense(1)
    with pytest.raises(fs.StoreError, match="checksum"):
        st2.verify()
    raw = bytearray(out.read_bytes())
    hoff = int.from_bytes(out.read_bytes()[12:20], "little")  # header offset, from the preamble
    raw[hoff + 5] ^= 0x01
    bad.write_bytes(bytes(raw))
    with pytest.raises(fs.StoreError, match="header checksum"):
        fs.open_store(bad)


def test_interrupted_convert_leaves_no_valid_store(tiny, tmp_path, monkeypatch):
    g, _, ck = tiny
    out = tmp_path / "cut.store"
    real = fs.bundle_layer
    calls = {"n": 0}

    def boom(*a):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # a kill mid-write
        return real(*a)

    monkeypatch.setattr(fs, "bundle_layer", boom)
    with pytest.raises(KeyboardInterrupt):
        fs.write_store(out, ck.args, ck.state_dict, "x", progress=False)
    assert not out.exists() and not list(tmp_path.glob("cut.store.tmp-*"))
    # a file cut short before the preamble was written (a power loss after the rename is impossible: rename is last)
    monkeypatch.setattr(fs, "bundle_layer", real)
    full = fs.write_store(tmp_path / "ok.store", ck.args, ck.state_dict, "x", progress=False).read_bytes()
    (tmp_path / "half.store").write_bytes(b"\0" * 4096 + full[4096: len(full) // 2])
    with pytest.raises(fs.StoreError, match="not a complete"):
        fs.open_store(tmp_path / "half.store")


def test_wrong_model_or_version_fails_clearly(tiny, tmp_path):
    g, out, _ = tiny
    other = write_gguf(tmp_path / "other.gguf", tiny_hf_model(VOCAB, seed=6))
    with pytest.raises(fs.StoreError, match="made from another model"):
        fs.open_store(out, fs.model_fingerprint(other))
    raw = bytearray(out.read_bytes())
    raw[8:12] = (fs.FORMAT_VERSION + 1).to_bytes(4, "little")
    (tmp_path / "v.store").write_bytes(bytes(raw))
    with pytest.raises(IOAwareError, match=f"format version {fs.FORMAT_VERSION + 1}"):
        fs.open_store(tmp_path / "v.store")
    with pytest.raises(IOAwareError, match="ioaware convert"):
        fs.open_store(tmp_path / "missing.store")


def test_coalesce():
    assert coalesce(np.array([1, 2, 3, 7, 9, 10])) == [(1, 3), (7, 1), (9, 2)]
    assert coalesce(np.array([], dtype=np.int64)) == []


@pytest.mark.parametrize("direct", [False, True], ids=["buffered", "O_DIRECT"])
@pytest.mark.parametrize("chunk", [4096, 1 << 20], ids=["chunk4K", "chunk1M"])
def test_neuron_reader_returns_exact_rows(tiny, direct, chunk):
    g, out, ck = tiny
    if direct and not direct_io_supported(out):
        pytest.skip("O_DIRECT not supported on this filesystem")
    st = fs.open_store(out)
    h = ck.args.hidden_dim
    rng = np.random.default_rng(0)
    with NeuronReader(st, threads=4, chunk=chunk, direct=direct) as r:
        assert r.direct is direct
        for layer, ids in [(0, [5, 3, 4, 96, 0, 4]), (1, rng.choice(h, 40, replace=False)), (1, np.arange(h)),
                           (0, [])]:
            fut = r.prefetch(layer, ids)
            res = fut.result()
            want_ids = np.unique(np.asarray(ids, dtype=np.int64))
            assert np.array_equal(res.ids, want_ids)
            ii = torch.from_numpy(want_ids)
            p = f"model.layers.{layer}.mlp."
            assert torch.equal(res.bundles[:, 0], ck.state_dict[p + "gate_proj.weight"][ii].half())
            assert torch.equal(res.bundles[:, 1], ck.state_dict[p + "up_proj.weight"][ii].half())
            assert torch.equal(res.bundles[:, 2], ck.state_dict[p + "down_proj.weight"][:, ii].t().half())
            assert res.stats.useful_bytes == len(want_ids) * st.bundle_bytes
            assert res.stats.bytes >= res.stats.useful_bytes and all(c <= max(chunk, 4096)
                                                                      for c in res.stats.chunk_sizes)
            if direct:
                assert all(c % 4096 == 0 for c in res.stats.chunk_sizes)
        with pytest.raises(IndexError):
            r.read(0, [h])


def test_probe_curve_format_and_iomodel(tmp_path, monkeypatch):
    from ioaware.cli.main import main
    from ioaware.hardware.probe_disk import best_chunk, load_curve, throughput_at
    from ioaware.iomodel import predict_read_seconds

    monkeypatch.setenv("IOAWARE_CACHE_DIR", str(tmp_path / "cache"))
    js = tmp_path / "curve.json"
    assert main(["probe", "disk", "--path", str(tmp_path), "--size", "1MiB", "--seconds", "0.01", "--threads", "1,2",
                 "--json", str(js)]) == 0
    c = json.loads(js.read_text())
    assert c == load_curve(tmp_path)  # the cached copy
    assert c["version"] == 1 and not list(tmp_path.glob(".ioaware-probe-*"))
    modes = {p["direct"] for p in c["points"]}
    assert modes == ({False, True} if c["direct_supported"] else {False})
    assert {p["chunk"] for p in c["points"]} == {4096, 16384, 65536, 262144, 1 << 20}
    assert all(p["GBps"] > 0 and p["threads"] in (1, 2) for p in c["points"])
    assert best_chunk(c) in {p["chunk"] for p in c["points"]}
    # throughput_at hits measured points exactly and interpolates between them
    p0 = c["points"][0]
    assert throughput_at(c, p0["chunk"], p0["threads"], p0["direct"]) == pytest.approx(p0["GBps"] * 1e9)
    synth = {"version": 1, "points": [{"chunk": 4096, "threads": 8, "direct": True, "GBps": 0.2},
                                      {"chunk": 16384, "threads": 8, "direct": True, "GBps": 0.6}]}
    assert throughput_at(synth, 8192, 8, True) == pytest.approx(0.4e9)
    # 10 chunks dealt round-robin to 8 threads: two rounds, each chunk at 1/8 of the 8-thread throughput
    assert predict_read_seconds([4096] * 10, synth, threads=8) == pytest.approx(2 * 4096 * 8 / 0.2e9)
    assert predict_read_seconds([4096] * 16, synth, threads=8) == pytest.approx(16 * 4096 / 0.2e9)
    assert predict_read_seconds([], synth) == 0.0
    assert os.path.exists(tmp_path / "cache" / "probe")
    # --cached reports the same curve without probing again, and plots it
    pytest.importorskip("matplotlib")
    js2, png = tmp_path / "again.json", tmp_path / "curve.png"
    assert main(["probe", "disk", "--path", str(tmp_path), "--cached", "--json", str(js2), "--plot", str(png)]) == 0
    assert json.loads(js2.read_text()) == c and png.stat().st_size > 10_000
    monkeypatch.setenv("IOAWARE_CACHE_DIR", str(tmp_path / "other-cache"))  # a cache that never probed
    assert main(["probe", "disk", "--path", str(tmp_path), "--cached"]) == 2


def test_convert_cli(tiny, tmp_path, capsys):
    from ioaware.cli.main import main

    g, _, ck = tiny
    js = tmp_path / "c.json"
    assert main(["convert", str(g), str(tmp_path / "c.store"), "--verify", "--no-progress", "--json", str(js)]) == 0
    s = json.loads(js.read_text())
    assert s["verified"] and s["fingerprint"] == fs.model_fingerprint(g) and s["neurons_per_layer"] == 97
    assert s["ffn_bytes"] == ck.args.n_layers * 97 * 3 * ck.args.dim * 2
    assert main(["convert", str(tmp_path / "nope.gguf"), str(tmp_path / "x.store")]) == 2
    assert "not found" in capsys.readouterr().err


def test_gap_merging_reads_fewer_chunks_same_rows(tiny):
    from ioaware.iomodel.io import merge_gap_bytes

    g, out, ck = tiny
    if not direct_io_supported(out):
        pytest.skip("O_DIRECT not supported on this filesystem")
    st = fs.open_store(out)
    ids = np.arange(0, ck.args.hidden_dim, 4)  # every 4th neuron: gaps of 3 bundles (384 B each here)
    with NeuronReader(st, threads=2, chunk=4096, direct=True) as r0, \
            NeuronReader(st, threads=2, chunk=1 << 20, direct=True, max_gap=8192) as r1:
        a, b = r0.read(1, ids), r1.read(1, ids)
        assert torch.equal(a.bundles, b.bundles) and b.stats.chunks < a.stats.chunks
    curve = {"version": 1, "points": [{"chunk": 4096, "threads": 8, "direct": True, "GBps": 0.25},
                                      {"chunk": 262144, "threads": 8, "direct": True, "GBps": 1.5}]}
    assert merge_gap_bytes(curve, 8) == 24576  # 1.5/0.25 pages


def test_flipped_byte_in_a_streamed_bundle_is_corruption_not_text(tiny, tmp_path):
    """Every bundle the reader streams is checked against the store's xxh3-64: one flipped byte in a neuron that
    a read asks for raises StoreError naming the layer and neuron; neurons not read are not touched."""
    _, out, _ = tiny
    st = fs.open_store(out)
    bad = tmp_path / "bad.store"
    raw = bytearray(out.read_bytes())
    layer, neuron = 1, 5
    raw[st.layers[layer]["offset"] + neuron * st.bundle_bytes + 7] ^= 0x40
    bad.write_bytes(bytes(raw))
    sb = fs.open_store(bad)
    for direct in (False, None):
        with NeuronReader(sb, threads=2, direct=direct) as r:
            r.read(layer, [0, 1, 2, 3])  # the corrupt neuron is not asked for: fine
            with pytest.raises(fs.StoreError, match=f"layer {layer}, neuron {neuron}"):
                r.read(layer, [2, neuron, 9])
    with pytest.raises(fs.StoreError, match="checksum mismatch|corrupt"):
        sb.verify()
    assert st.verify()["bundles"] == st.args.n_layers * st.args.hidden_dim


def test_bundle_checksums_rows_and_bytes_agree():
    """The fast path (rows of a 2-D uint8 array) and the generic one (any buffer) hash the same bundles."""
    rng = np.random.default_rng(7)
    rows = rng.integers(0, 256, size=(13, 96), dtype=np.uint8)
    fast = fs.bundle_checksums(rows, 96)
    generic = fs.bundle_checksums(rows.tobytes(), 96)
    assert fast.dtype == np.uint64 and len(fast) == 13
    np.testing.assert_array_equal(fast, generic)
    rows[5, 17] ^= 1
    changed = fs.bundle_checksums(rows, 96) != fast
    assert changed.tolist() == [i == 5 for i in range(13)]


def test_probe_file_measures_an_existing_file_without_writing(tmp_path):
    """The bench's same-run curve: read-only random reads of the file itself, both modes where O_DIRECT works, and
    a curve the iomodel can price with."""
    from ioaware.hardware.probe_disk import probe_file, throughput_at
    from ioaware.iomodel import predict_read_seconds

    f = tmp_path / "data.bin"
    f.write_bytes(os.urandom(1 << 20))
    before = f.stat().st_mtime_ns, sorted(p.name for p in tmp_path.iterdir())
    c = probe_file(f, chunks=(4096, 65536), threads=(1, 2), seconds_per_case=0.01, buffered_chunks=(65536,))
    assert (f.stat().st_mtime_ns, sorted(p.name for p in tmp_path.iterdir())) == before  # nothing written
    modes = {(p["direct"], p["threads"], p["chunk"]) for p in c["points"]}
    assert (False, 1, 65536) in modes
    assert ({(True, t, k) for t in (1, 2) for k in (4096, 65536)} <= modes) == c["direct_supported"]
    assert all(p["GBps"] > 0 for p in c["points"]) and c["of_file"]
    assert predict_read_seconds([65536] * 3, c, threads=2) > 0 < throughput_at(c, 65536, 1, False)




def _poison(r: NeuronReader) -> None:
    for s in r.slots:  # 0xFFFF is a NaN in fp16: a row the read forgot to fill cannot pass as weights
        s.out[:] = b"\xff" * len(s.out)


@pytest.mark.parametrize("direct", [False, None])
def test_verify_modes_return_the_same_bundles(tiny, direct):
    """Every verify mode hands back the very rows the store holds: "fused" gathers and hashes piece by piece,
    "threads" gathers and hashes each chunk's bundles in the thread that read it and the straddling ones after.
    Small chunks (4096 B, bundles of 384 B) make many bundles straddle chunks; the merge gap adds strided gathers."""
    _, out, ck = tiny
    st = fs.open_store(out)
    H = ck.args.hidden_dim
    rng = np.random.default_rng(3)
    sets = [np.arange(H), np.arange(0, H, 4), np.sort(rng.choice(H, 41, replace=False)), np.arange(5, 60),
            np.array([H - 1]), np.array([], dtype=np.int64)]
    for chunk, gap in ((4096, 0), (4096, 8192), (1 << 20, 0)):
        for layer in range(ck.args.n_layers):
            want = st.read_layer_bundles(layer)
            for ids in sets:
                for mode in ("after", "fused", "threads", "off"):
                    with NeuronReader(st, threads=3, chunk=chunk, direct=direct, max_gap=gap, verify=mode) as r:
                        _poison(r)
                        res = r.read(layer, ids)
                        assert torch.equal(res.bundles, want[ids]), (mode, chunk, gap, layer, ids)
                        assert res.stats.verify_thread_s == 0.0 or mode == "threads"


def test_where_each_mode_hashes(tiny, monkeypatch):
    """True means "threads": most bundles are hashed in the pool's threads, the straddling ones by the caller;
    "fused": by the caller, in pieces of at most _HASH_PIECE bytes. Either way each bundle asked for exactly once."""
    import threading

    from ioaware.runtime.offload import reader as rd

    _, out, ck = tiny
    st = fs.open_store(out)
    H, B = ck.args.hidden_dim, st.bundle_bytes
    calls: list[tuple[str, int]] = []
    real = rd.bundle_checksums

    def spy(rows, bundle_bytes):
        calls.append((threading.current_thread().name, len(rows)))
        return real(rows, bundle_bytes)

    monkeypatch.setattr(rd, "bundle_checksums", spy)
    monkeypatch.setattr(rd, "_HASH_PIECE", 8 * B)  # 8 bundles a piece: 97 bundles make 13 pieces
    for direct in (False, None):
        with NeuronReader(st, threads=3, chunk=4096, direct=direct) as r:
            assert r.verify == "threads"
            r.verify = "fused"
            calls.clear()
            r.read(0, np.arange(H))
            assert sum(k for _, k in calls) == H and all(not n.startswith("ioaware-read") for n, _ in calls)
            if r.direct:
                assert max(k for _, k in calls) <= 8 and len(calls) >= 13
            r.verify = "threads"
            calls.clear()
            res = r.read(0, np.arange(H))
            in_pool = sum(k for n, k in calls if n.startswith("ioaware-read"))
            assert sum(k for _, k in calls) == H and 0.6 * H <= in_pool < H  # straddlers are hashed after
            assert res.stats.verify_thread_s > 0 and res.stats.chunks > 3


@pytest.mark.parametrize("direct", [False, None])
@pytest.mark.parametrize("mode", ["fused", "threads"])
def test_flip_in_any_bundle_is_caught_in_every_mode(tiny, tmp_path, direct, mode):
    """One flipped byte in each neuron in turn (at a different byte each time), read among all the layer's neurons
    in 4096-byte chunks, so some bundles lie inside a chunk and some straddle two (hashed in a pool thread or by the
    caller with "threads"): the read raises naming that neuron every time. Read without that neuron, the same flip
    is no error (its bytes may be read through as a gap, never used); verify "off" does not look."""
    _, out, _ = tiny
    bad = tmp_path / "flip.store"
    bad.write_bytes(out.read_bytes())
    st = fs.open_store(bad)
    H, B, layer = st.args.hidden_dim, st.bundle_bytes, 1
    straddle = [(i * B) // 4096 != (i * B + B - 1) // 4096 for i in range(H)]
    assert any(straddle) and not all(straddle)  # both paths of "threads" are exercised
    want = st.read_layer_bundles(layer).clone()
    fd = os.open(bad, os.O_RDWR)
    try:
        with NeuronReader(st, threads=3, chunk=4096, direct=direct, verify=mode) as r, \
                NeuronReader(st, threads=3, chunk=4096, direct=direct, verify="off") as r_off:
            for i in range(H):
                pos = st.layers[layer]["offset"] + i * B + (i * 37) % B
                byte = os.pread(fd, 1, pos)
                os.pwrite(fd, bytes([byte[0] ^ 0x10]), pos)
                with pytest.raises(fs.StoreError, match=f"layer {layer}, neuron {i} "):
                    r.read(layer, np.arange(H))
                others = np.setdiff1d(np.arange(H), [i])
                assert torch.equal(r.read(layer, others).bundles, want[others])
                r_off.read(layer, np.arange(H))
                os.pwrite(fd, byte, pos)
            r.read(layer, np.arange(H))  # all restored
    finally:
        os.close(fd)


def test_bad_verify_mode_is_refused(tiny):
    _, out, _ = tiny
    with pytest.raises(ValueError, match="verify must be"):
        NeuronReader(fs.open_store(out), verify="sometimes")


def test_probe_point_reads_at_least_once_per_thread(tmp_path):
    """A thread that starts after the probe's deadline (a loaded machine) still reads one chunk: a 0-byte point
    (it failed test_probe_curve_format_and_iomodel under load) would price that chunk size as never finishing."""
    from ioaware.hardware.probe_disk import measure

    f = tmp_path / "x.bin"
    f.write_bytes(os.urandom(1 << 18))
    p = measure(f, 1 << 18, 4096, 3, False, -1.0)  # the deadline has passed before any thread starts
    assert p["bytes"] >= 3 * 4096 and p["GBps"] > 0
