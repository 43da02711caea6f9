"""The SSD tier: one KV file, written in large aligned segments, trusted only once sealed.

File layout (every offset a multiple of 4 KiB):

    [0, 4096)        header: magic, version, index offset/length, crc32 of the index, crc32 of the header.
                     Zeros until `seal()`, which writes it LAST (after the data and the index are on disk).
    segments ...     one per eviction from DRAM: `tokens` tokens of one layer, three regions, each 4 KiB-padded:
                       K token-major   (B, Hkv, S, D)   a head's 16-token page is 16*D contiguous elements
                       V token-major   (B, Hkv, S, D)
                       K channel-major (B, Hkv, D, S)   SparF reads channel i of a head as S contiguous elements
    index            JSON: shapes, dtype, and per segment (layer, offset, tokens, crc32 of its bytes)

While a run writes, the file carries a temporary name (`files.tmp_name`: `<name>.tmp-<pid>`) and a zero header, so
a crash, `kill -9` or Ctrl-C leaves a file that `open_kv_file` refuses and `files.remove_orphans` deletes. `seal()`
fsyncs the data, writes the index, fsyncs, writes the header, fsyncs, and renames to the final name.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ...errors import IOAwareError
from ...files import tmp_name

ALIGN = 4096
MAGIC = b"IOAKVT01"
_HDR = struct.Struct("<8sIQQII")  # magic, version, index offset, index length, index crc32, header crc32


class KVFileError(IOAwareError, ValueError):
    pass


def _pad(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


@dataclass
class Segment:
    layer: int
    offset: int
    tokens: int
    crc: int

    def regions(self, B: int, Hkv: int, D: int, esize: int) -> tuple[int, int, int]:
        """Byte offsets of the K token-major, V token-major and K channel-major regions."""
        r = _pad(B * Hkv * self.tokens * D * esize)
        return self.offset, self.offset + r, self.offset + 2 * r

    def nbytes(self, B: int, Hkv: int, D: int, esize: int) -> int:
        return 3 * _pad(B * Hkv * self.tokens * D * esize)


def _raw(t: torch.Tensor) -> np.ndarray:
    return t.contiguous().view(torch.uint8).numpy().reshape(-1)


class KVFile:
    """Append-only writer of the SSD tier (one per model; segments of every layer interleave)."""

    def __init__(self, path: str | Path, batch: int, n_kv_heads: int, head_dim: int, dtype: torch.dtype):
        self.final = Path(path)
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.path = tmp_name(self.final)
        self.B, self.Hkv, self.D, self.dtype = batch, n_kv_heads, head_dim, dtype
        self.esize = torch.empty(0, dtype=dtype).element_size()
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        os.pwrite(self.fd, bytes(ALIGN), 0)  # the header stays zeros: untrusted until sealed
        self.end = ALIGN
        self.segments: list[Segment] = []
        self.bytes_written = 0
        self.sealed = False

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> Segment:
        """k, v: (B, S, Hkv, D) on the CPU, in the file's dtype. One aligned pwrite of the whole segment."""
        B, S, Hkv, D = k.shape
        kt = k.transpose(1, 2)  # (B, Hkv, S, D)
        seg = Segment(layer, self.end, S, 0)
        r = _pad(B * Hkv * S * D * self.esize)
        buf = np.zeros(3 * r, dtype=np.uint8)
        buf[: r][: kt.numel() * self.esize] = _raw(kt)
        buf[r: 2 * r][: kt.numel() * self.esize] = _raw(v.transpose(1, 2))
        buf[2 * r:][: kt.numel() * self.esize] = _raw(kt.transpose(2, 3))  # (B, Hkv, D, S)
        seg.crc = zlib.crc32(buf)
        n = os.pwrite(self.fd, memoryview(buf), seg.offset)
        if n != buf.nbytes:
            raise OSError(f"short write to {self.path}: {n} of {buf.nbytes} bytes")
        self.end += buf.nbytes
        self.bytes_written += buf.nbytes
        self.segments.append(seg)
        return seg

    def meta(self) -> dict:
        return {"batch": self.B, "n_kv_heads": self.Hkv, "head_dim": self.D, "dtype": str(self.dtype)}

    def seal(self) -> Path:
        """Make the file trustworthy: data and index durable first, the header last, then the final name."""
        os.fsync(self.fd)
        index = json.dumps({**self.meta(), "segments": [s.__dict__ for s in self.segments]}).encode()
        off = self.end
        os.pwrite(self.fd, index, off)
        os.fsync(self.fd)
        head = _HDR.pack(MAGIC, 1, off, len(index), zlib.crc32(index), 0)
        head = head[:-4] + struct.pack("<I", zlib.crc32(head[:-4]))
        os.pwrite(self.fd, head, 0)
        os.fsync(self.fd)
        os.close(self.fd)
        os.replace(self.path, self.final)
        self.path, self.sealed = self.final, True
        return self.final

    def close(self, keep: bool = False) -> None:
        """Close; an unsealed file is deleted unless keep (a cache of one run is worth nothing to the next)."""
        if not self.sealed:
            try:
                os.close(self.fd)
            except OSError:
                pass
            if not keep and self.path.exists():
                self.path.unlink()
        self.sealed = True  # closed either way


def open_kv_file(path: str | Path, verify_data: bool = True) -> dict:
    """Read a sealed KV file's index, checking the header, the index and (verify_data) every segment's crc32.
    Raises KVFileError (one line) for a file a crashed or interrupted run left behind, or a corrupted one."""
    path = Path(path)
    if not path.is_file():
        raise KVFileError(f"KV file {path} does not exist")
    with open(path, "rb") as f:
        head = f.read(_HDR.size)
        if len(head) < _HDR.size or head[:8] != MAGIC:
            raise KVFileError(f"KV file {path} has no valid header (never sealed: a crashed or interrupted run "
                              "wrote it); delete it")
        magic, ver, off, n, icrc, hcrc = _HDR.unpack(head)
        if zlib.crc32(head[:-4]) != hcrc:
            raise KVFileError(f"KV file {path}: header checksum mismatch; delete it")
        f.seek(off)
        index = f.read(n)
        if len(index) != n or zlib.crc32(index) != icrc:
            raise KVFileError(f"KV file {path}: index checksum mismatch (truncated or corrupted); delete it")
        meta = json.loads(index)
        if verify_data:
            esize = torch.empty(0, dtype=getattr(torch, meta["dtype"].replace("torch.", ""))).element_size()
            for s in meta["segments"]:
                seg = Segment(**s)
                f.seek(seg.offset)
                nb = seg.nbytes(meta["batch"], meta["n_kv_heads"], meta["head_dim"], esize)
                if zlib.crc32(f.read(nb)) != seg.crc:
                    raise KVFileError(f"KV file {path}: segment at byte {seg.offset} fails its checksum; delete it")
    return meta


def read_segment(fd: int, seg: Segment, B: int, Hkv: int, D: int, dtype: torch.dtype,
                 with_channels: bool = False) -> tuple[torch.Tensor, ...]:
    """K and V token-major (B, Hkv, S, D) of one segment in one read (K_ch too if asked)."""
    esize = torch.empty(0, dtype=dtype).element_size()
    r = _pad(B * Hkv * seg.tokens * D * esize)
    n = (3 if with_channels else 2) * r
    buf = bytearray(n)
    got = os.preadv(fd, [buf], seg.offset)
    if got != n:
        raise KVFileError(f"short read of a KV segment at byte {seg.offset}: {got} of {n}")
    m = B * Hkv * seg.tokens * D
    out = [torch.frombuffer(buf, dtype=dtype, count=m, offset=i * r) for i in range(n // r)]
    k, v = out[0].view(B, Hkv, seg.tokens, D), out[1].view(B, Hkv, seg.tokens, D)
    return (k, v, out[2].view(B, Hkv, D, seg.tokens)) if with_channels else (k, v)


def read_ranges(fd: int, ranges: list[tuple[int, int]]) -> tuple[bytearray, list[int], int]:
    """Read (offset, length) ranges, coalescing touching ones into single reads. Returns the bytes back to back in
    the given order, each range's start in that buffer, and the bytes read from the file."""
    order = sorted(range(len(ranges)), key=lambda i: ranges[i][0])
    starts = [0] * len(ranges)
    total = sum(n for _, n in ranges)
    out = bytearray(total)
    pos = 0
    for i in range(len(ranges)):
        starts[i] = pos
        pos += ranges[i][1]
    mv = memoryview(out)
    j = 0
    while j < len(order):  # a run of ranges that touch in the file: one pread into a scratch, then scattered
        a = j
        end = ranges[order[j]][0] + ranges[order[j]][1]
        while j + 1 < len(order) and ranges[order[j + 1]][0] == end:
            j += 1
            end += ranges[order[j]][1]
        off0 = ranges[order[a]][0]
        chunk = os.pread(fd, end - off0, off0)
        if len(chunk) != end - off0:
            raise KVFileError(f"short read at byte {off0}: {len(chunk)} of {end - off0}")
        for i in order[a: j + 1]:
            o, n = ranges[i]
            mv[starts[i]: starts[i] + n] = chunk[o - off0: o - off0 + n]
        j += 1
    return out, starts, total
