"""The flash store: one file laid out for large contiguous reads of FFN neurons (LLM in a flash's row-column
bundling), written atomically, checked on open.

File layout (every section starts on a 4096-byte boundary, so O_DIRECT reads of a layer need no shifting):

    [0, 4096)           preamble: magic, format version, header offset/length, blake2b of the header JSON.
                        Written last, after everything else is on disk: until then the page is zeros, so a file
                        cut short by a crash never opens as a store.
    resident section    every tensor that is not FFN (embeddings, norms, attention q/k/v/o), dense, fp16.
    layer l section     hidden_dim bundles: neuron i = [gate row i, up row i, down column i], so one neuron is
                        one contiguous read of 3 * dim values, at a stride of `bundle.stride` bytes (format 3): the
                        bundle's bytes, or padded with zeros so that no bundle straddles a page (`bundle_stride`).
    bundle checksums    (n_layers, hidden_dim) uint64, little-endian: xxh3-64 of every bundle's bytes. The reader
                        checks each bundle it streams against it, so a flipped byte is reported as corruption,
                        never turned into text. xxh3 rather than CRC32C: the check runs on every streamed byte,
                        and xxh3 hashes at memory speed in one call where CRC32C without hardware support does not.
    header JSON         format version, model fingerprint, ModelArgs, dtype, offsets, blake2b per section.

Tensors keep the Hugging Face names and layout of `Checkpoint.state_dict` (q/k already un-permuted).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import struct
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
import xxhash

from ...errors import IOAwareError
from ...files import remove_orphans, tmp_name
from ..llm.model import ModelArgs

FORMAT_VERSION = 3  # 2: per-bundle xxh3-64 checksums; 3: bundles at a stride, padded to a page divisor where it pays
MAGIC = b"IOAFLSH\x00"
ALIGN = 4096
_PREAMBLE = struct.Struct("<8sIQQ32s")  # magic, version, header offset, header length, blake2b-256 of header
_FFN = ("mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight")
_DTYPES = {"float16": (np.float16, torch.float16), "bfloat16": (None, torch.bfloat16), "float32": (np.float32,
                                                                                                       torch.float32)}


class StoreError(IOAwareError, ValueError):
    """A flash store that is missing, incomplete, corrupt, of another format version or of another model."""


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def _digest(data) -> str:
    return hashlib.blake2b(data, digest_size=32).hexdigest()


def model_fingerprint(path: str | Path) -> str:
    """sha256 of the model's bytes: the GGUF file, or a folder's config.json and *.safetensors files. A store made
    from other weights (even the same architecture) then refuses to open as this model's store."""
    path = Path(path)
    files = [path] if path.is_file() else sorted([*path.glob("config.json"), *path.glob("*.safetensors")])
    if not files:
        raise FileNotFoundError(f"no model files to fingerprint at {path}")
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0")
        with open(f, "rb") as fh:
            while block := fh.read(8 << 20):
                h.update(block)
    return h.hexdigest()


def bundle_checksums(buf, bundle_bytes: int) -> np.ndarray:
    """xxh3-64 of each `bundle_bytes`-long bundle in `buf` -> (n,) uint64."""
    if isinstance(buf, np.ndarray) and buf.ndim == 2 and buf.shape[1] == bundle_bytes and buf.dtype == np.uint8:
        # iterating rows of a 2-D array costs ~0.1 us a bundle against ~0.2 us for memoryview slices (44k bundles
        # per SmolLM2 token: 9.5 vs 13.9 ms, of which hashing the bytes is 5.3 ms); map(): no generator frame per row
        return np.fromiter(map(xxhash.xxh3_64_intdigest, buf), dtype=np.uint64, count=len(buf))
    mv = memoryview(buf).cast("B")
    n = len(mv) // bundle_bytes
    return np.fromiter((xxhash.xxh3_64_intdigest(mv[i * bundle_bytes:(i + 1) * bundle_bytes]) for i in range(n)),
                       dtype=np.uint64, count=n)


def bundle_stride(bundle: int, align: int = ALIGN, pad: bool | None = None) -> int:
    """Bytes from one bundle's start to the next's. Padded: the next power of two (a divisor of the page) for a bundle
    smaller than a page, else whole pages, so a bundle never straddles a page and one neuron read alone costs
    ceil(bundle / page) pages. Unpadded, a bundle at a random index touches one more page with probability
    (bundle - gcd(bundle, page)) / page. pad=None decides by bytes: pad iff what an isolated neuron read saves
    (pages touched, unpadded over padded) outweighs what padding adds to a dense read (stride / bundle).
    SmolLM2 fp16 (3456 B bundles): 1.81 pages -> 1, +18.5% dense: padded to 4096. A 64-wide test model (384 B):
    1.06 pages -> 1, +33% dense: not padded.

    Examples:
        >>> bundle_stride(3456), bundle_stride(384), bundle_stride(384, pad=True), bundle_stride(24576)
        (4096, 384, 512, 24576)
    """
    import math

    padded = 1 << (bundle - 1).bit_length() if bundle <= align else (bundle + align - 1) // align * align
    if pad is None:
        pages_unpadded = (bundle - math.gcd(bundle, align)) / align + 1
        pages_padded = -(-padded // align) if padded >= align else 1
        pad = pages_unpadded / pages_padded > padded / bundle
    return padded if pad else bundle


def is_ffn(name: str) -> bool:
    return name.endswith(_FFN)


def bundle_layer(gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """gate, up: (hidden, dim); down: (dim, hidden) -> (hidden, 3, dim) bundles, neuron i = [gate[i], up[i],
    down[:, i]]."""
    return torch.stack([gate, up, down.t()], dim=1)


def write_store(out: str | Path, args: ModelArgs, state_dict: Mapping[str, torch.Tensor], fingerprint: str,
                dtype: str = "float16", source: str = "", progress: bool = True, pad: bool | None = None) -> Path:
    """Write a store atomically: everything goes to `OUT.tmp-<pid>`, is fsynced, then renamed onto OUT. An
    exception (or a kill) at any point leaves no file that opens as a store. `state_dict` may be a lazy mapping
    (a random model too big to hold): each tensor is asked for once, in file order. pad: the bundles' padding
    (`bundle_stride`; None: where it saves bytes)."""
    if dtype not in _DTYPES or dtype == "bfloat16":
        raise StoreError(f"store dtype {dtype!r} is not supported (supported: float16, float32)")
    np_dtype, t_dtype = _DTYPES[dtype]
    elem = np.dtype(np_dtype).itemsize
    out = Path(out)
    if out.is_dir():
        raise StoreError(f"{out} is a folder; give the store's file name, e.g. {out / 'model.store'}")
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_orphans(out.parent, f"{out.name}.tmp-*")  # left by a convert that was killed
    tmp = tmp_name(out)
    L, d, h = args.n_layers, args.dim, args.hidden_dim
    resident_names = [n for n in state_dict.keys() if not is_ffn(n)]
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    bar = _Progress(progress, f"convert → {out.name}", len(resident_names) + L)
    try:
        os.pwrite(fd, b"\0" * ALIGN, 0)  # the preamble stays zero until the very end
        pos = ALIGN
        tensors, h_res = {}, hashlib.blake2b(digest_size=32)
        for name in resident_names:
            arr = _as_numpy(state_dict[name], t_dtype)
            buf = arr.tobytes()
            tensors[name] = {"offset": pos - ALIGN, "shape": list(arr.shape), "nbytes": len(buf)}
            os.pwrite(fd, buf, pos)
            h_res.update(buf)
            pos += len(buf)
            bar.advance()
        resident = {"offset": ALIGN, "nbytes": pos - ALIGN, "blake2b": h_res.hexdigest(), "tensors": tensors}
        pos = _align(pos)
        layers, sums = [], []
        bundle_bytes = 3 * d * elem
        stride = bundle_stride(bundle_bytes, ALIGN, pad)
        for i in range(L):
            p = f"model.layers.{i}."
            g, u, dn = (state_dict[p + n] for n in _FFN)
            if tuple(g.shape) != (h, d) or tuple(u.shape) != (h, d) or tuple(dn.shape) != (d, h):
                raise StoreError(f"layer {i} FFN shapes {tuple(g.shape)}, {tuple(u.shape)}, {tuple(dn.shape)} do "
                                 f"not match ModelArgs (hidden {h}, dim {d})")
            rows = _as_numpy(bundle_layer(g, u, dn), t_dtype).reshape(h, -1).view(np.uint8)  # (h, bundle bytes)
            sums.append(bundle_checksums(rows, bundle_bytes))  # of the bundle's bytes: the padding is never read
            if stride != bundle_bytes:
                rows = np.pad(rows, ((0, 0), (0, stride - bundle_bytes)))
            buf = rows.tobytes()
            os.pwrite(fd, buf, pos)
            layers.append({"offset": pos, "nbytes": len(buf), "blake2b": _digest(buf)})
            pos = _align(pos + len(buf))  # the next section starts on a page: O_DIRECT reads stay aligned
            bar.advance()
        cbuf = np.stack(sums).astype("<u8").tobytes()  # (L, h)
        os.pwrite(fd, cbuf, pos)
        checks = {"offset": pos, "nbytes": len(cbuf), "algorithm": "xxh3_64", "blake2b": _digest(cbuf)}
        pos = _align(pos + len(cbuf))
        header = {
            "format": "ioaware-flash-store", "version": FORMAT_VERSION, "fingerprint": fingerprint, "source": source,
            "args": dataclasses.asdict(args), "dtype": dtype, "alignment": ALIGN,
            "bundle": {"parts": ["gate_row", "up_row", "down_col"], "n_neurons": h, "dim": d,
                       "bytes": bundle_bytes, "stride": stride},
            "resident": resident, "layers": layers, "bundle_checksums": checks,
        }
        hbytes = json.dumps(header, sort_keys=True).encode()
        os.pwrite(fd, hbytes, pos)
        os.ftruncate(fd, _align(pos + len(hbytes)))
        os.fsync(fd)  # data and header durable before the preamble says "complete"
        os.pwrite(fd, _PREAMBLE.pack(MAGIC, FORMAT_VERSION, pos, len(hbytes), hashlib.blake2b(
            hbytes, digest_size=32).digest()), 0)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, out)
        dfd = os.open(out.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)  # the rename itself is durable
        finally:
            os.close(dfd)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    finally:
        bar.close()
    return out


def _as_numpy(t, t_dtype) -> np.ndarray:
    return np.ascontiguousarray(torch.as_tensor(t).detach().to(t_dtype).cpu().numpy())


class _Progress:
    """A rich progress bar (or nothing): conversion of a big model takes minutes."""

    def __init__(self, on: bool, desc: str, total: int):
        self.p = None
        if on:
            from rich.progress import BarColumn, Progress, TaskProgressColumn, TimeRemainingColumn

            self.p = Progress("[progress.description]{task.description}", BarColumn(), TaskProgressColumn(),
                              TimeRemainingColumn(), transient=False)
            self.p.start()
            self.task = self.p.add_task(desc, total=total)

    def advance(self):
        if self.p:
            self.p.advance(self.task)

    def close(self):
        if self.p:
            self.p.stop()
            self.p = None


def convert(model: str | Path, out: str | Path, dtype: str = "float16", progress: bool = True,
            relufy: str | Path | None = None) -> Path:
    """`ioaware convert`: a GGUF file or HF folder -> flash store at `out`. relufy: a relufy adapter merged into the
    FFN weights before they are bundled (its hash checked first); the store's fingerprint then includes it."""
    from ..llm.checkpoint import load_checkpoint

    if relufy is not None:
        from ..relufy.apply import load_relufied, relufied_fingerprint

        ckpt = load_relufied(model, relufy)
        fp = relufied_fingerprint(model_fingerprint(ckpt.path), relufy)
    else:
        ckpt = load_checkpoint(model)
        fp = model_fingerprint(ckpt.path)
    return write_store(out, ckpt.args, ckpt.state_dict, fp, dtype, source=str(ckpt.path), progress=progress)


class WeightStore:
    """An open store: the header, and dense reads of the resident tensors and of whole layers (the naive path).
    Sparse neuron reads go through `flash_io.NeuronReader`."""

    def __init__(self, path: str | Path, expect_fingerprint: str | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise StoreError(f"no flash store at {self.path}; make one with `ioaware convert MODEL {self.path}`")
        with open(self.path, "rb") as f:
            pre = f.read(_PREAMBLE.size)
            if len(pre) < _PREAMBLE.size:
                raise StoreError(f"{self.path} is not an ioaware flash store (too short)")
            magic, version, hoff, hlen, hdig = _PREAMBLE.unpack(pre)
            if magic != MAGIC:
                raise StoreError(f"{self.path} is not a complete ioaware flash store (no completion marker: an "
                                 "interrupted convert, or another kind of file); run `ioaware convert` again")
            if version != FORMAT_VERSION:
                raise StoreError(f"{self.path} is flash store format version {version}; this ioaware reads version "
                                 f"{FORMAT_VERSION}; convert the model again")
            f.seek(hoff)
            hbytes = f.read(hlen)
        if len(hbytes) != hlen or hashlib.blake2b(hbytes, digest_size=32).digest() != hdig:
            raise StoreError(f"{self.path}: the header checksum does not match (corrupt or truncated file)")
        self.header = json.loads(hbytes)
        if self.header.get("version") != FORMAT_VERSION:
            raise StoreError(f"{self.path}: header says format version {self.header.get('version')}, expected "
                             f"{FORMAT_VERSION}")
        self.fingerprint = self.header["fingerprint"]
        if expect_fingerprint is not None and expect_fingerprint != self.fingerprint:
            raise StoreError(f"{self.path} was made from another model (fingerprint {self.fingerprint[:12]}…, "
                             f"expected {expect_fingerprint[:12]}…); convert this model into a new store")
        self.args = ModelArgs(**self.header["args"])
        self.dtype = self.header["dtype"]
        self.np_dtype, self.torch_dtype = _DTYPES[self.dtype]
        self.bundle_bytes = self.header["bundle"]["bytes"]
        self.bundle_stride = self.header["bundle"]["stride"]  # >= bundle_bytes: the padding is zeros
        self.layers = self.header["layers"]
        self.resident_bytes = self.header["resident"]["nbytes"]
        # the FFN's weight bytes, without the bundles' padding: what a dense FFN holds, what a budget in % is a share
        # of and what naive whole-FFN reads are priced at; the file's layer sections may be larger (ffn_file_bytes)
        self.ffn_bytes = self.args.n_layers * self.args.hidden_dim * self.bundle_bytes
        self.ffn_file_bytes = sum(s["nbytes"] for s in self.layers)
        c = self.header["bundle_checksums"]
        cbuf = self._read(c["offset"], c["nbytes"])
        self._check("bundle checksums", cbuf, c["blake2b"])
        # (L, hidden): what every streamed bundle must hash to
        self.checksums = np.frombuffer(cbuf, dtype="<u8").reshape(self.args.n_layers, self.args.hidden_dim)

    @property
    def weight_bytes(self) -> int:
        return self.resident_bytes + self.ffn_bytes

    def _read(self, off: int, n: int) -> bytearray:
        buf = bytearray(n)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            got = 0
            while got < n:
                k = os.preadv(fd, [memoryview(buf)[got:]], off + got)
                if k == 0:
                    raise StoreError(f"{self.path} is truncated at byte {off + got}")
                got += k
        finally:
            os.close(fd)
        return buf

    def _check(self, what: str, buf, want: str) -> None:
        if _digest(buf) != want:
            raise StoreError(f"{self.path}: checksum mismatch in section {what} (the file is corrupt); convert again")

    def resident_tensors(self, verify: bool = True) -> Mapping[str, torch.Tensor]:
        """The resident tensors as a mapping that reads each one from disk when asked, so loading them into a model
        never holds the whole section twice. With `verify`, the section's blake2b is checked first by streaming it
        through the hash in 8 MiB pieces."""
        r = self.header["resident"]
        if verify:
            h = hashlib.blake2b(digest_size=32)
            for off in range(0, r["nbytes"], 8 << 20):
                h.update(self._read(r["offset"] + off, min(8 << 20, r["nbytes"] - off)))
            if h.hexdigest() != r["blake2b"]:
                raise StoreError(f"{self.path}: checksum mismatch in section resident (the file is corrupt); "
                                 "convert again")
        return _LazyTensors(self, r)

    def read_resident(self, verify: bool = True) -> dict[str, torch.Tensor]:
        """Every non-FFN tensor, HF names, in the store's dtype."""
        r = self.header["resident"]
        buf = self._read(r["offset"], r["nbytes"])
        if verify:
            self._check("resident", buf, r["blake2b"])
        out = {}
        for name, t in r["tensors"].items():
            arr = np.frombuffer(buf, dtype=self.np_dtype, count=t["nbytes"] // np.dtype(self.np_dtype).itemsize,
                                offset=t["offset"])
            out[name] = torch.from_numpy(arr.reshape(t["shape"]))
        return out

    def read_layer_bundles(self, layer: int, verify: bool = True) -> torch.Tensor:
        """(hidden, 3, dim): layer `layer`'s whole FFN as bundles."""
        s = self.layers[layer]
        buf = self._read(s["offset"], s["nbytes"])
        if verify:
            self._check(f"layer {layer}", buf, s["blake2b"])
        a = self.args
        rows = np.frombuffer(buf, dtype=np.uint8).reshape(a.hidden_dim, self.bundle_stride)
        if self.bundle_stride != self.bundle_bytes:
            rows = np.ascontiguousarray(rows[:, :self.bundle_bytes])
        return torch.from_numpy(rows.view(self.np_dtype).reshape(a.hidden_dim, 3, a.dim))

    def read_layer_dense(self, layer: int, verify: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """gate (hidden, dim), up (hidden, dim), down (dim, hidden): the naive path reads these whole."""
        b = self.read_layer_bundles(layer, verify)
        return b[:, 0], b[:, 1], b[:, 2].t()

    def check_bundles(self, layer: int, ids: np.ndarray, rows) -> None:
        """rows: (n, bundle_bytes) bytes of neurons `ids` of `layer` as read. Raises StoreError naming the first
        bundle whose xxh3-64 differs from the store's (a flipped byte on disk, a torn read)."""
        self.compare_checksums(layer, ids, bundle_checksums(rows, self.bundle_bytes))

    def compare_checksums(self, layer: int, ids: np.ndarray, got: np.ndarray) -> None:
        """got: (n,) xxh3-64 of neurons `ids` of `layer` as read, hashed by the caller. Raises as check_bundles."""
        bad = np.flatnonzero(got != self.checksums[layer, ids])
        if len(bad):
            i = int(ids[bad[0]])
            raise StoreError(f"{self.path}: corrupt data in layer {layer}, neuron {i} ({len(bad)} of {len(ids)} "
                             f"bundles read fail their checksum); run `ioaware verify {self.path}`, then convert "
                             "the model again")

    def verify(self, progress: bool = False) -> dict:
        """Check every section's blake2b and every bundle's xxh3 (reads the whole file). Raises StoreError at the
        first mismatch; returns what was checked."""
        bar = _Progress(progress, f"verify {self.path.name}", len(self.layers) + 1)
        try:
            self.read_resident(verify=True)
            bar.advance()
            for i in range(len(self.layers)):
                b = self.read_layer_bundles(i, verify=True)
                self.check_bundles(i, np.arange(self.args.hidden_dim), b.numpy().reshape(self.args.hidden_dim, -1))
                bar.advance()
        finally:
            bar.close()
        return {"sections": len(self.layers) + 2, "bundles": len(self.layers) * self.args.hidden_dim}


class _LazyTensors(Mapping):
    def __init__(self, store: WeightStore, section: dict):
        self.store, self.section = store, section

    def __getitem__(self, name: str) -> torch.Tensor:
        t = self.section["tensors"][name]
        buf = self.store._read(self.section["offset"] + t["offset"], t["nbytes"])
        return torch.from_numpy(np.frombuffer(buf, dtype=self.store.np_dtype).reshape(t["shape"]))

    def __iter__(self):
        return iter(self.section["tensors"])

    def __len__(self) -> int:
        return len(self.section["tensors"])


def open_store(path: str | Path, expect_fingerprint: str | None = None) -> WeightStore:
    return WeightStore(path, expect_fingerprint)
