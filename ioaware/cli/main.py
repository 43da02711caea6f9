"""The `ioaware` command. Each verb lives in its own module with `add_parser(sub)` and `run(args)`."""

from __future__ import annotations

import argparse
import importlib
import sys

# verb -> module; a verb's module is imported only when it runs, so `ioaware --help` stays fast
VERBS = {
    "generate": ("ioaware.cli.generate", "generate text from a language model (GGUF or safetensors)"),
    "cost": ("ioaware.cli.cost", "print the FLOPs, HBM traffic and roofline time of an op"),
    "bench": ("ioaware.cli.bench", "benchmarks: kernels vs PyTorch on a GPU; the offload runtime on CPU"),
    "hardware": ("ioaware.cli.hardware", "show the spec table, or the device detected here"),
    "convert": ("ioaware.cli.convert", "write a model's flash store (row-column bundled FFN, for --memory-budget)"),
    "verify": ("ioaware.cli.verify", "check every checksum of an offload store (header, sections, each bundle)"),
    "probe": ("ioaware.cli.probe", "measure this machine: disk read throughput vs chunk size and threads"),
    "sim": ("ioaware.cli.sim", "simulate machines that are not here (Cambricon-LLM, InstInfer, PIM-GPT, SN40L)"),
    "plan": ("ioaware.cli.plan", "plan on-chip memory (COSMA) and co-explore network x accelerator (NASAIC)"),
    "compress": ("ioaware.cli.compress", "compress a model's weights (svd: truncated SVD factors, FlashSVD)"),
}
# verbs that are whole programs (cli/_programs.py): the module parses its own flags
PROGRAMS = {
    "prune": ("ioaware.runtime.prune.cli", "prune a model to unstructured sparsity (magnitude, Wanda) for Flash-LLM"),
    "relufy": ("ioaware.runtime.relufy.cli", "swap SwiGLU's SiLU for ReLU, distilled from the original (adapter)"),
    "pulsedl": ("ioaware.sim.pulsedl.cli", "PulseDL-II: detector pulse timing/energy with an integer CNN engine"),
}


class Parser(argparse.ArgumentParser):
    """One line for a bad command line (what is wrong, and where to look), not a usage dump; exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="ioaware", description="IO-aware deep learning: kernels, an out-of-core LLM "
                                "runtime and cost models of the memory hierarchy.")
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(dest="verb", metavar="VERB", parser_class=Parser)
    for verb, (mod, help_) in VERBS.items():
        sp = sub.add_parser(verb, help=help_, description=help_)
        try:
            module = importlib.import_module(mod)
        except ModuleNotFoundError as e:  # a verb whose optional parts are missing stays listed and says why
            if e.name != mod:
                raise
            sp.set_defaults(func=lambda _a, m=mod: print(f"{m} is not installed in this build") or 1)
            continue
        module.add_parser(sp)
    from ._programs import add_programs

    add_programs(sub, PROGRAMS)
    return p


def _version() -> str:
    from .. import __version__

    return __version__


def _json_on_stdout(argv: list[str]) -> bool:
    """`--json -` anywhere on the command line (program verbs parse their own flags, so look at the words)."""
    return any(a == "--json=-" or (a == "--json" and i + 1 < len(argv) and argv[i + 1] == "-")
               for i, a in enumerate(argv))


def _attach_negative_values(argv: list[str]) -> list[str]:
    """`--memory-budget -5%` -> `--memory-budget=-5%`, so the value reaches its type check (which names what is
    wrong) instead of argparse taking it for an option and saying only 'expected one argument'."""
    out: list[str] = []
    for a in argv:
        if out and out[-1].startswith("--") and "=" not in out[-1] and len(a) > 1 and a[0] == "-" and \
                (a[1].isdigit() or a[1] == "."):
            out[-1] = f"{out[-1]}={a}"
        else:
            out.append(a)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = _attach_negative_values(sys.argv[1:] if argv is None else list(argv))
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.verb:
        parser.print_help()
        return 0
    if _json_on_stdout(argv):  # stdout is for the JSON alone: whatever else the command prints goes to stderr
        import contextlib

        from ..report import set_json_stream

        set_json_stream(sys.stdout)
        try:
            with contextlib.redirect_stdout(sys.stderr):
                return _run(args)
        finally:
            set_json_stream(None)
    return _run(args)


def _run(args) -> int:
    from ..errors import IOAwareError

    try:
        return int(args.func(args) or 0)
    except (IOAwareError, FileNotFoundError, ValueError, KeyError) as e:  # bad input: one clear line, no traceback
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"ioaware {args.verb}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def entry() -> int:
    """The console script: main() with a closed pipe (`ioaware hardware --json - | head -3`) ending quietly, as
    a shell tool should, instead of a BrokenPipeError traceback."""
    import os

    try:
        rc = main()
        sys.stdout.flush()
        return rc
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's own recipe: no error at exit
        return 141  # 128 + SIGPIPE, what a shell reports for a tool killed by a closed pipe


if __name__ == "__main__":
    sys.exit(entry())
