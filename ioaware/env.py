"""Every IOAWARE_* environment variable, read in this one place (listed in the README's table)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

_TRUE = {"1", "true", "yes", "on"}


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


def _gluon_mode(raw: str | None) -> str:
    v = (raw or "0").strip().lower()
    if v in _TRUE:
        return "1"
    if v in ("0", "false", "no", "off", ""):
        return "0"
    if v == "auto":
        return "auto"
    raise ValueError(f"IOAWARE_GLUON={raw!r}: use 0 (the default: never), auto (where measured faster) or 1 "
                     "(wherever the Gluon kernel's gate allows)")


@dataclass(frozen=True)
class Settings:
    """The IOAWARE_* settings as read by `settings()` at one moment (frozen).

    Examples:
        >>> s = Settings(interpret=False, debug=False, cache_dir=Path("/tmp/ioaware"), model=None, autotune=False,
        ...              sparse_cache=True)
        >>> s.cache_dir.name
        'ioaware'
    """

    interpret: bool  # IOAWARE_INTERPRET: run Triton kernels on CPU tensors through Triton's interpreter
    debug: bool  # IOAWARE_DEBUG: log which implementation each op dispatched to
    cache_dir: Path  # IOAWARE_CACHE_DIR: probe results, converted stores
    model: str | None  # IOAWARE_MODEL: default model path for `ioaware generate`
    autotune: bool  # IOAWARE_AUTOTUNE: autotune kernel tiles on the GPU instead of using the measured table
    sparse_cache: bool  # IOAWARE_SPARSE_CACHE: reuse block-sparse attention's block lists while a mask is unchanged
    # IOAWARE_GLUON: where the plain/causal attention forward runs the Gluon kernel (sm_90, Triton 3.6): "0" (never;
    # the default until the GPU suite has run with auto), "auto" (where measured faster than the Triton kernels:
    # gluon_gate.GLUON_AUTO_HEAD_DIMS), "1" (wherever its gate allows)
    gluon: str = "0"


_KEYS = ("IOAWARE_INTERPRET", "IOAWARE_DEBUG", "IOAWARE_CACHE_DIR", "IOAWARE_MODEL", "IOAWARE_AUTOTUNE",
         "IOAWARE_SPARSE_CACHE", "HOME", "IOAWARE_GLUON")
_last: tuple[tuple, Settings] | None = None


def settings() -> Settings:
    """Read the environment now (not at import), so tests can change it with monkeypatch. The kernels' dispatch
    calls this on every op (per layer and token on a decode path), so the Settings built from the same raw values
    is reused: a call costs the eight lookups (~3 µs), not the construction (~20-60 µs).

    Examples:
        >>> import os
        >>> os.environ["IOAWARE_CACHE_DIR"] = "/tmp/ioaware-cache"
        >>> settings().cache_dir
        PosixPath('/tmp/ioaware-cache')
        >>> del os.environ["IOAWARE_CACHE_DIR"]
    """
    global _last
    env = os.environ
    key = tuple(env.get(k) for k in _KEYS)
    if _last is not None and _last[0] == key:
        return _last[1]
    cache = env.get("IOAWARE_CACHE_DIR") or str(Path.home() / ".cache" / "ioaware")
    s = Settings(
        interpret=_flag("IOAWARE_INTERPRET"),
        debug=_flag("IOAWARE_DEBUG"),
        cache_dir=Path(cache),
        model=os.environ.get("IOAWARE_MODEL") or None,
        autotune=_flag("IOAWARE_AUTOTUNE"),
        sparse_cache=env.get("IOAWARE_SPARSE_CACHE", "1").strip() != "0",
        gluon=_gluon_mode(env.get("IOAWARE_GLUON")),
    )
    _last = (key, s)
    return s


ENV_TABLE = [
    ("IOAWARE_INTERPRET", "0", "1: CPU tensors run Triton kernels in Triton's interpreter (how CI tests them)"),
    ("IOAWARE_DEBUG", "0", "1: log which implementation every op dispatched to"),
    ("IOAWARE_CACHE_DIR", "~/.cache/ioaware", "where probe results and converted stores are kept"),
    ("IOAWARE_AUTOTUNE", "0", "1: autotune Triton tiles per shape on the GPU (slow first call) instead of the table"),
    ("IOAWARE_MODEL", "(embedded SmolLM2-135M)", "default model file or folder for `ioaware generate`"),
    ("IOAWARE_SPARSE_CACHE", "1", "0: rebuild block-sparse attention's block lists on every call instead of reusing "
     "them while the mask is unchanged"),
    ("IOAWARE_GLUON", "0", "the attention forward (plain or causal) runs the Gluon FA3-schedule kernel: auto = at "
     "D 128, where the H200 measured it faster than the Triton kernels (sm_90, Triton 3.6, bf16, Tq == Tk); 1 = "
     "wherever its gate allows (D 64 too); 0 = never"),
]
