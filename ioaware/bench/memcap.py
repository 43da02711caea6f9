"""A real memory limit for one benchmark child process: cgroup v2 `memory.max`, cgroup v1 `memory.limit_in_bytes`, or a
systemd scope's `MemoryMax`, so the page cache a child faults in counts against its limit as on a small machine.

Flow (`ioaware bench offload --memory-cap`, issue #27 item 3):
  parent  cap, tried = open_cap("naive")        # a child cgroup with no limit yet, or None and why not
          cmd = cap.wrap(cmd); env.update(cap.child_env(budget))
          ... run the child, wait4() for its peak RSS ...; cap.peak(); cap.close()
  child   applied = apply_in_child()            # after its imports: limit = cgroup charge now + budget
The limit is set by the child once it has measured its own baseline (torch and the provider's library imported,
no model loaded), so "budget + the process's measured baseline" is measured, not guessed. The child joins the cgroup
before exec (a `sh -c 'echo $$ > cgroup.procs; exec ...'` wrapper), so everything it allocates or faults in after
that is charged to it. Page-cache pages that are already resident stay charged to whoever read them first: the
caller drops the model files from the page cache before each capped child.

Every path is a parameter (`root`, the mounts and /proc/self/cgroup texts), so the file writes are tested against a
fake cgroup folder. Nothing here needs root except the real thing.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

ENV = "IOAWARE_MEMCAP"
MECHANISMS = ("cgroup2", "cgroup1", "systemd-run")
# per mechanism: the limit file, the current charge, the peak charge, the OOM-kill counter (file, key)
FILES = {"cgroup2": ("memory.max", "memory.current", "memory.peak", ("memory.events", "oom_kill")),
         "cgroup1": ("memory.limit_in_bytes", "memory.usage_in_bytes", "memory.max_usage_in_bytes",
                     ("memory.oom_control", "oom_kill"))}
UNLIMITED = {"cgroup2": "max", "cgroup1": "-1"}


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def parse_mounts(text: str) -> list[tuple[str, str, set[str]]]:
    """/proc/self/mounts -> [(fstype, mount point, options)] of the cgroup file systems."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[2] in ("cgroup", "cgroup2"):
            out.append((parts[2], parts[1], set(parts[3].split(","))))
    return out


def own_cgroup(text: str, controller: str | None) -> str | None:
    """This process's cgroup path from /proc/self/cgroup: the v2 line ("0::/path") for controller None, else the v1
    line whose controller list holds `controller`."""
    for line in text.splitlines():
        hid, ctrls, path = (line.split(":", 2) + ["", ""])[:3]
        if controller is None and hid == "0" and ctrls == "":
            return path
        if controller is not None and controller in ctrls.split(","):
            return path
    return None


@dataclass
class Cap:
    """One child cgroup (or systemd scope) for one child process. `limit` is set later, by the child."""

    mechanism: str
    path: Path | None = None  # the cgroup folder (cgroup2 / cgroup1)
    unit: str | None = None  # the scope's name (systemd-run)
    tried: list[str] = field(default_factory=list)  # what failed before this mechanism was found

    def wrap(self, cmd: list[str]) -> list[str]:
        """The command, made to join this cgroup before it execs (so its pid, and every allocation after, is ours)."""
        if self.mechanism == "systemd-run":
            return ["systemd-run", "--scope", "--quiet", f"--unit={self.unit}", "-p", "MemoryAccounting=yes", *cmd]
        procs = str(self.path / "cgroup.procs")
        return ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', procs, *cmd]

    def child_env(self, budget_bytes: int) -> dict[str, str]:
        return {ENV: json.dumps({"mechanism": self.mechanism, "path": str(self.path) if self.path else None,
                                 "unit": self.unit, "budget": int(budget_bytes)})}

    def _file(self, i: int) -> Path:
        assert self.path is not None
        return self.path / FILES[self.mechanism][i]

    def usage(self) -> int | None:
        if self.mechanism == "systemd-run":
            return _systemd_prop(self.unit, "MemoryCurrent")
        v = _read(self._file(1))
        return int(v) if v and v.strip().isdigit() else None

    def peak(self) -> int | None:
        if self.mechanism == "systemd-run":
            return _systemd_prop(self.unit, "MemoryPeak")
        v = _read(self._file(2))
        return int(v) if v and v.strip().isdigit() else None

    def limit(self) -> int | None:
        """The limit in force (what the child wrote), or None while unlimited."""
        if self.mechanism == "systemd-run":
            return _systemd_prop(self.unit, "MemoryMax")
        v = (_read(self._file(0)) or "").strip()
        return int(v) if v.isdigit() and int(v) < (1 << 62) else None

    def oom_kills(self) -> int | None:
        if self.mechanism == "systemd-run":
            return None
        name, key = FILES[self.mechanism][3]
        for line in (_read(self.path / name) or "").splitlines():
            k, _, v = line.partition(" ")
            if k == key and v.strip().isdigit():
                return int(v)
        return None

    def set_limit(self, nbytes: int) -> None:
        """Write the limit (and keep swap out of it where the file exists: a cap that spills to swap is no cap)."""
        if self.mechanism == "systemd-run":
            subprocess.run(["systemctl", "set-property", "--runtime", f"{self.unit}.scope", f"MemoryMax={nbytes}",
                            "MemorySwapMax=0"], check=True, capture_output=True, timeout=30)
            return
        self._file(0).write_text(str(int(nbytes)))
        if self.mechanism == "cgroup2" and (self.path / "memory.swap.max").exists():
            (self.path / "memory.swap.max").write_text("0")
        if self.mechanism == "cgroup1" and (self.path / "memory.memsw.limit_in_bytes").exists():
            try:  # memsw >= limit: the same number means no swap on top
                (self.path / "memory.memsw.limit_in_bytes").write_text(str(int(nbytes)))
            except OSError:
                pass

    def close(self, attempts: int = 40) -> None:
        """Remove the cgroup once its processes are gone (the kernel may take a moment after the child's exit)."""
        if self.path is None:
            return
        for _ in range(attempts):
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError as e:
                if e.errno == errno.ENOTEMPTY:  # a plain folder (a test's fake cgroup): a real one rmdirs with files
                    shutil.rmtree(self.path, ignore_errors=True)
                    return
                time.sleep(0.05)  # EBUSY: its last process is still exiting


def _systemd_prop(unit: str | None, prop: str) -> int | None:
    try:
        v = subprocess.run(["systemctl", "show", f"{unit}.scope", "-p", prop, "--value"], capture_output=True,
                           text=True, timeout=10).stdout.strip()
        return int(v) if v.isdigit() else None
    except (OSError, subprocess.SubprocessError):
        return None


def _try_dir(mechanism: str, parent: Path, name: str, make_dir) -> tuple[Cap | None, str]:
    """mkdir parent/name and check that the limit can be written there (writing 'unlimited' as the test)."""
    d = parent / name
    try:
        make_dir(d)
    except OSError as e:
        return None, f"{mechanism}: cannot create {d} ({e.strerror or e})"
    limit = d / FILES[mechanism][0]
    try:
        if not limit.exists():
            raise FileNotFoundError(f"no {limit.name} there (the memory controller is not enabled for it)")
        limit.write_text(UNLIMITED[mechanism])
    except OSError as e:
        try:
            d.rmdir()
        except OSError:
            shutil.rmtree(d, ignore_errors=True)
        return None, f"{mechanism}: cannot write {limit} ({getattr(e, 'strerror', None) or e})"
    return Cap(mechanism, path=d), ""


def open_cap(tag: str, mechanisms: tuple[str, ...] = MECHANISMS, root: Path = Path("/"),
             mounts_text: str | None = None, cgroup_text: str | None = None,
             make_dir=Path.mkdir) -> tuple[Cap | None, list[str]]:
    """A child cgroup for one capped child, by the first mechanism that works; (None, reasons) when none does.
    root: where /sys and /proc are (a fake tree in tests); the mounts' points are taken relative to it.
    make_dir: creates a cgroup folder (a test's stand-in adds the files the kernel would)."""
    if mounts_text is None:
        mounts_text = _read(root / "proc/self/mounts") or ""
    if cgroup_text is None:
        cgroup_text = _read(root / "proc/self/cgroup") or ""
    mounts = parse_mounts(mounts_text)
    name = f"ioaware-memcap-{os.getpid()}-{tag}".replace("/", "_")
    tried: list[str] = []
    for mech in mechanisms:
        if mech == "cgroup2":
            v2 = [m for m in mounts if m[0] == "cgroup2"]
            own = own_cgroup(cgroup_text, None)
            if not v2:
                tried.append("cgroup2: no cgroup2 file system mounted")
                continue
            if own is None:
                tried.append("cgroup2: this process has no cgroup v2 entry in /proc/self/cgroup")
                continue
            base = root / v2[0][1].lstrip("/")
            if "memory" not in (_read(base / "cgroup.controllers") or "").split():
                tried.append(f"cgroup2: the memory controller is not available at {v2[0][1]} (bound to cgroup v1?)")
                continue
            here = base / own.lstrip("/")
            # our own cgroup if it hands memory to its children (or can be made to: cgroup v2 refuses that while
            # it holds processes, unless it is the root); else a sibling, when the parent hands memory down
            if "memory" not in (_read(here / "cgroup.subtree_control") or "").split():
                try:
                    (here / "cgroup.subtree_control").write_text("+memory")
                except OSError as e:
                    tried.append(f"cgroup2: cannot enable memory for children of {here} ({e.strerror or e})")
            cap, why = _try_dir("cgroup2", here, name, make_dir)
            if cap is None and here != base:
                tried.append(why)
                cap, why = _try_dir("cgroup2", here.parent, name, make_dir)
            if cap is not None:
                cap.tried = tried
                return cap, tried
            tried.append(why)
        elif mech == "cgroup1":
            v1 = [m for m in mounts if m[0] == "cgroup" and "memory" in m[2]]
            own = own_cgroup(cgroup_text, "memory")
            if not v1:
                tried.append("cgroup1: no cgroup v1 memory controller mounted")
                continue
            here = root / v1[0][1].lstrip("/") / (own or "/").lstrip("/")
            cap, why = _try_dir("cgroup1", here, name, make_dir)
            if cap is not None:
                cap.tried = tried
                return cap, tried
            tried.append(why)
        elif mech == "systemd-run":
            if shutil.which("systemd-run") is None:
                tried.append("systemd-run: not installed")
            elif not (root / "run/systemd/system").is_dir():
                tried.append("systemd-run: systemd is not the init system here (no /run/systemd/system)")
            else:
                return Cap("systemd-run", unit=name, tried=tried), tried
        else:
            raise ValueError(f"unknown memory-cap mechanism {mech!r}; choose from {', '.join(MECHANISMS)}")
    return None, tried


def read_rss(pid: str = "self") -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, bytes."""
    out = {}
    for line in (_read(Path(f"/proc/{pid}/status")) or "").splitlines():
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM"):
            out[k] = int(v.split()[0]) * 1024
    return out


def read_io(pid: str = "self") -> dict[str, int]:
    """/proc/<pid>/io counters (read_bytes: what came from the block device, page-cache misses and O_DIRECT)."""
    out = {}
    for line in (_read(Path(f"/proc/{pid}/io")) or "").splitlines():
        k, _, v = line.partition(":")
        if v.strip().isdigit():
            out[k] = int(v)
    return out


def snapshot() -> dict[str, int | None]:
    """This process's device reads and major page faults so far (a capped run that thrashes shows both rising)."""
    import resource

    return {"read_bytes": read_io().get("read_bytes"), "majflt": resource.getrusage(resource.RUSAGE_SELF).ru_majflt}


STAT_KEYS = ("anon", "file", "rss", "cache", "mapped_file", "pgmajfault", "workingset_refault_file",
             "workingset_refault")


def cgroup_stat(applied: dict | None) -> dict[str, int] | None:
    """What the capped child's charge is made of (memory.stat: anon vs page cache, refaults), from apply_in_child's
    answer; None uncapped."""
    if not applied or not applied.get("path"):
        return None
    out = {}
    for line in (_read(Path(applied["path"]) / "memory.stat") or "").splitlines():
        k, _, v = line.partition(" ")
        if k in STAT_KEYS and v.strip().isdigit():
            out[k] = int(v)
    return out


def apply_in_child(environ: dict | None = None) -> dict | None:
    """In the capped child, after its imports: limit = the cgroup's charge now (this process's baseline) + budget.
    Returns what was set (baseline, limit, mechanism), or None when the child runs uncapped."""
    spec = (environ if environ is not None else os.environ).get(ENV)
    if not spec:
        return None
    s = json.loads(spec)
    cap = Cap(s["mechanism"], path=Path(s["path"]) if s["path"] else None, unit=s["unit"])
    rss = read_rss()
    charged = cap.usage()
    baseline = charged if charged is not None else rss.get("VmRSS", 0)
    limit = baseline + int(s["budget"])
    cap.set_limit(limit)
    return {"mechanism": cap.mechanism, "path": s["path"], "unit": s["unit"], "baseline_bytes": baseline,
            "baseline_source": "cgroup charge" if charged is not None else "VmRSS", "baseline_rss_bytes":
            rss.get("VmRSS"), "budget_bytes": int(s["budget"]), "limit_bytes": limit}


@dataclass
class ChildResult:
    returncode: int
    stdout: str
    stderr: str
    # wait4's ru_maxrss: known even when the child was killed, but on Linux it starts from the PARENT's peak RSS (the
    # forked copy's high-water mark survives exec), so it is an upper bound; the child's own VmHWM is its peak
    wait4_maxrss_bytes: int
    wall_s: float
    cap_peak_bytes: int | None = None
    oom_kills: int | None = None
    limit_bytes: int | None = None  # read back from the cgroup: known also for a child that died


def run_child(cmd: list[str], cap: Cap | None, budget_bytes: int, timeout_s: float = 1800,
              env: dict | None = None) -> ChildResult:
    """Run one child (in `cap` when given), reaped with wait4 (see ChildResult). JSON results, and the child's own
    peak RSS (read_rss()["VmHWM"] before it exits), are the child's business: its last stdout line."""
    import tempfile

    full_env = {**os.environ, **(env or {})}
    full_env.pop(ENV, None)
    if cap is not None:
        cmd = cap.wrap(cmd)
        full_env.update(cap.child_env(budget_bytes))
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as fo, tempfile.TemporaryFile("w+") as fe:
        p = subprocess.Popen(cmd, stdout=fo, stderr=fe, text=True, env=full_env)
        while True:
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() - t0 > timeout_s:
                p.kill()
                pid, status, ru = os.wait4(p.pid, 0)
                break
            time.sleep(0.05)
        p.returncode = os.waitstatus_to_exitcode(status)  # reaped here: tell Popen, so it never waits again
        fo.seek(0)
        fe.seek(0)
        res = ChildResult(p.returncode, fo.read(), fe.read(), ru.ru_maxrss * 1024, time.perf_counter() - t0)
    if cap is not None:
        res.cap_peak_bytes, res.oom_kills, res.limit_bytes = cap.peak(), cap.oom_kills(), cap.limit()
    return res
