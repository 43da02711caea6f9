"""`ioaware verify STORE`: read a whole offload store and check every checksum (header, sections, bundles)."""

from __future__ import annotations


def add_parser(sp) -> None:
    sp.add_argument("store", help="the store file (from `ioaware convert` or the cache dir's stores/)")
    sp.add_argument("--no-progress", dest="progress", action="store_false")
    sp.add_argument("--json", default=None, metavar="FILE", help="write the result as JSON ('-' for stdout)")
    sp.set_defaults(func=run)


def run(args) -> int:
    import time
    from pathlib import Path

    from ..report import emit_json
    from ..runtime.offload.store import StoreError, open_store

    t0 = time.perf_counter()
    path = Path(args.store)
    try:
        st = open_store(path)
        checked = st.verify(progress=args.progress)
    except StoreError as e:
        emit_json({"store": str(path), "ok": False, "error": str(e)}, args.json)
        raise
    s = {"store": str(path), "ok": True, "bytes": path.stat().st_size, "seconds": time.perf_counter() - t0,
         **checked}
    print(f"{path}: ok ({checked['sections']} sections, {checked['bundles']} bundles checked, "
          f"{s['bytes'] / s['seconds'] / 1e6:.0f} MB/s)")
    emit_json(s, args.json)
    return 0
