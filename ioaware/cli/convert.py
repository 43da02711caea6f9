"""`ioaware convert MODEL OUT`: write the flash store that `ioaware generate --memory-budget` streams from."""

from __future__ import annotations


def add_parser(sp) -> None:
    sp.add_argument("model", help="a .gguf file or a Hugging Face folder (config.json + *.safetensors)")
    sp.add_argument("out", help="the store file to write (atomically: an interrupted convert leaves nothing)")
    sp.add_argument("--dtype", choices=["float16", "float32"], default="float16", help="stored weights (fp16)")
    sp.add_argument("--verify", action="store_true", help="re-read the store and check every checksum (as `ioaware "
                    "verify OUT`)")
    sp.add_argument("--no-progress", dest="progress", action="store_false")
    sp.add_argument("--json", default=None, metavar="FILE", help="write the summary as JSON ('-' for stdout)")
    sp.set_defaults(func=run)


def run(args) -> int:
    import time
    from pathlib import Path

    from ..report import emit_json, print_table
    from ..runtime.offload.store import convert, open_store
    from ..units import human_bytes

    if not Path(args.model).exists():
        raise FileNotFoundError(f"model not found: {args.model}")
    if Path(args.out).is_dir():
        raise ValueError(f"{args.out} is a folder; give the store's file name, e.g. {Path(args.out) / 'model.store'}")
    t0 = time.perf_counter()
    out = convert(args.model, args.out, args.dtype, progress=args.progress)
    st = open_store(out)
    if args.verify:
        st.verify(progress=args.progress)
    a = st.args
    s = {"store": str(out), "source": st.header["source"], "fingerprint": st.fingerprint, "dtype": st.dtype,
         "version": st.header["version"], "resident_bytes": st.resident_bytes, "ffn_bytes": st.ffn_bytes,
         "bundle_bytes": st.bundle_bytes, "n_layers": a.n_layers, "neurons_per_layer": a.hidden_dim,
         "file_bytes": out.stat().st_size, "seconds": time.perf_counter() - t0, "verified": bool(args.verify)}
    print_table("ioaware convert", ["", "value"], [
        ["store", s["store"]], ["fingerprint", s["fingerprint"][:16] + "…"], ["dtype", s["dtype"]],
        ["resident (embeddings, attention, norms)", human_bytes(s["resident_bytes"])],
        ["FFN bundles", f"{human_bytes(s['ffn_bytes'])} ({a.n_layers} layers × {a.hidden_dim} neurons × "
                        f"{s['bundle_bytes']} B)"],
        ["file", human_bytes(s["file_bytes"])], ["time", f"{s['seconds']:.1f} s"],
        ["checksums", "verified" if args.verify else "not re-read (--verify)"]])
    emit_json(s, args.json)
    return 0
