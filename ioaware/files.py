"""File helpers every layer may use: atomic JSON writes and whether O_DIRECT works on a filesystem.

At the bottom of the layers (beside `env` and `errors`): it imports nothing from ioaware.
"""

from __future__ import annotations

import json
import mmap
import os
import tempfile
from pathlib import Path
from typing import Any

DIRECT_ALIGN = 4096  # O_DIRECT wants buffers, offsets and lengths aligned to the logical block; 4 KiB covers 512 B too


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    """Write JSON so that a crash never leaves a half-written file: temp file in the same folder, then rename.

    Objects JSON cannot hold are written as `str(obj)`; missing parent folders are made. Returns the path.

    Examples:
        >>> import json, tempfile, pathlib
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> p = write_json_atomic(folder / "run" / "result.json", {"tok_s": 92.2, "device": "cpu"})
        >>> json.loads(p.read_text())["tok_s"]
        92.2
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1, default=str)
            f.write("\n")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; the file should read like any other the user writes
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def direct_io_supported(path: str | Path) -> bool:
    """Whether O_DIRECT opens *and* reads on this file's filesystem: tmpfs refuses the open, some overlay and
    network filesystems accept it and fail the read with EINVAL.

    Examples:
        >>> import tempfile
        >>> with tempfile.NamedTemporaryFile() as f:
        ...     _ = f.write(bytes(8192)); f.flush()
        ...     isinstance(direct_io_supported(f.name), bool)
        True
    """
    if not hasattr(os, "O_DIRECT"):
        return False
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    except OSError:
        return False
    buf = mmap.mmap(-1, DIRECT_ALIGN)
    try:
        os.preadv(fd, [buf], 0)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
        buf.close()


def tmp_name(path: str | Path) -> Path:
    """`path`'s temporary sibling while it is being written: `<name>.tmp-<pid>`. The pid lets a later run tell an
    orphan (its writer was killed) from a file another live process is still writing (`remove_orphans`).

    Examples:
        >>> import os
        >>> tmp_name("store/ffn.bin").name == f"ffn.bin.tmp-{os.getpid()}"
        True
    """
    path = Path(path)
    return path.with_name(f"{path.name}.tmp-{os.getpid()}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_orphans(folder: str | Path, pattern: str = "*.tmp-*") -> list[Path]:
    """Delete temporaries in `folder` left by writers that no longer run (`kill -9` mid-write): names ending in
    `-<pid>` (`tmp_name`, the disk probe's file) whose pid is not alive. Returns what was removed.

    Examples:
        >>> import tempfile, pathlib
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (folder / "ffn.bin.tmp-999999999").write_bytes(b"half")   # no process has this pid
        >>> _ = tmp_name(folder / "live.bin").write_bytes(b"ours")          # this process: kept
        >>> print(*[p.name for p in remove_orphans(folder)])
        ffn.bin.tmp-999999999
    """
    folder = Path(folder)
    gone: list[Path] = []
    if not folder.is_dir():
        return gone
    for f in folder.glob(pattern):
        pid = f.name.rsplit("-", 1)[-1].split(".")[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            try:
                f.unlink()
                gone.append(f)
            except OSError:
                pass
    return gone
