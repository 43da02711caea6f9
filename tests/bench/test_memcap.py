"""The memory-cap harness (ioaware/bench/memcap.py, offload_capped.py): mechanism choice and cgroup file writes
against a fake cgroup tree, the fallback with its reasons, real children (wait4 peak RSS, joining the cgroup)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from ioaware.bench import memcap
from ioaware.bench.offload_capped import choose_cap, compare

HYBRID_MOUNTS = """tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
"""
HYBRID_CGROUP = "4:memory:/session/abc\n1:cpu:/\n0::/\n"
V2_MOUNTS = "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime 0 0\n"
V2_CGROUP = "0::/user.slice/me\n"


def kernel_mkdir(mechanism):
    """What the kernel does on mkdir in a cgroup file system: the folder comes with its control files."""
    files = {"cgroup2": {"memory.max": "max\n", "memory.current": "1000\n", "memory.peak": "5000\n",
                         "memory.swap.max": "max\n", "memory.events": "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
                         "cgroup.procs": ""},
             "cgroup1": {"memory.limit_in_bytes": "9223372036854771712\n", "memory.usage_in_bytes": "2000\n",
                         "memory.max_usage_in_bytes": "7000\n", "memory.memsw.limit_in_bytes": "9223372036854771712\n",
                         "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n", "cgroup.procs": ""}}

    def make(d: Path):
        d.mkdir()
        for k, v in files[mechanism].items():
            (d / k).write_text(v)
    return make


def fake_v2(tmp_path, subtree="memory"):
    own = tmp_path / "sys/fs/cgroup/user.slice/me"
    own.mkdir(parents=True)
    (tmp_path / "sys/fs/cgroup/cgroup.controllers").write_text("cpu io memory pids\n")
    (own / "cgroup.subtree_control").write_text(subtree + "\n")
    return own


def test_parse_mounts_and_own_cgroup():
    m = memcap.parse_mounts(HYBRID_MOUNTS)
    assert [(t, p) for t, p, _ in m] == [("cgroup", "/sys/fs/cgroup/cpu"), ("cgroup", "/sys/fs/cgroup/memory"),
                                         ("cgroup2", "/sys/fs/cgroup/unified")]
    assert "memory" in m[1][2]
    assert memcap.own_cgroup(HYBRID_CGROUP, "memory") == "/session/abc"
    assert memcap.own_cgroup(HYBRID_CGROUP, None) == "/"
    assert memcap.own_cgroup(V2_CGROUP, "memory") is None


def test_cgroup2_cap_writes_limit_and_reads_counters(tmp_path):
    own = fake_v2(tmp_path)
    cap, tried = memcap.open_cap("t", root=tmp_path, mounts_text=V2_MOUNTS, cgroup_text=V2_CGROUP,
                                 make_dir=kernel_mkdir("cgroup2"))
    assert cap is not None and cap.mechanism == "cgroup2" and tried == []
    assert cap.path.parent == own and cap.path.name.startswith("ioaware-memcap-")
    assert (cap.path / "memory.max").read_text() == "max"  # the write test leaves it unlimited
    cap.set_limit(123_456_789)
    assert (cap.path / "memory.max").read_text() == "123456789"
    assert (cap.path / "memory.swap.max").read_text() == "0"
    assert (cap.usage(), cap.peak(), cap.oom_kills()) == (1000, 5000, 1)
    cap.close()
    assert not cap.path.exists()


def test_cgroup2_enables_memory_for_children_first(tmp_path):
    own = fake_v2(tmp_path, subtree="cpu")
    cap, _ = memcap.open_cap("t", ("cgroup2",), root=tmp_path, mounts_text=V2_MOUNTS, cgroup_text=V2_CGROUP,
                             make_dir=kernel_mkdir("cgroup2"))
    assert (own / "cgroup.subtree_control").read_text() == "+memory"
    assert cap is not None and cap.path.parent == own
    cap.close()


def test_hybrid_falls_to_cgroup1(tmp_path):
    (tmp_path / "sys/fs/cgroup/unified").mkdir(parents=True)
    (tmp_path / "sys/fs/cgroup/unified/cgroup.controllers").write_text("hugetlb\n")
    own = tmp_path / "sys/fs/cgroup/memory/session/abc"
    own.mkdir(parents=True)
    cap, tried = memcap.open_cap("llamacpp", root=tmp_path, mounts_text=HYBRID_MOUNTS, cgroup_text=HYBRID_CGROUP,
                                 make_dir=kernel_mkdir("cgroup1"))
    assert cap is not None and cap.mechanism == "cgroup1" and cap.path.parent == own
    assert len(tried) == 1 and tried[0].startswith("cgroup2: the memory controller is not available")
    cap.set_limit(5 << 20)
    assert (cap.path / "memory.limit_in_bytes").read_text() == str(5 << 20)
    assert (cap.path / "memory.memsw.limit_in_bytes").read_text() == str(5 << 20)
    assert (cap.usage(), cap.peak(), cap.oom_kills()) == (2000, 7000, 0)
    cap.close()
    assert not cap.path.exists()


def test_no_mechanism_says_why_and_runs_uncapped(tmp_path, monkeypatch):
    monkeypatch.setattr(memcap.shutil, "which", lambda name: "/usr/bin/" + name)  # installed, but systemd not init
    cap, tried, reason = choose_cap("auto", "x", root=tmp_path, mounts_text="", cgroup_text="")
    assert cap is None
    assert tried == ["cgroup2: no cgroup2 file system mounted", "cgroup1: no cgroup v1 memory controller mounted",
                     "systemd-run: systemd is not the init system here (no /run/systemd/system)"]
    assert "UNCAPPED" in reason and "cgroup1: no cgroup v1" in reason
    assert choose_cap("none", "x")[2] == "--cap-mechanism none: ran uncapped"


def test_unwritable_cgroup_is_reported(tmp_path):
    own = tmp_path / "sys/fs/cgroup/memory/session/abc"
    own.mkdir(parents=True)

    def refuse(d):
        raise PermissionError(13, "Permission denied")
    cap, tried = memcap.open_cap("t", ("cgroup1",), root=tmp_path, mounts_text=HYBRID_MOUNTS,
                                 cgroup_text=HYBRID_CGROUP, make_dir=refuse)
    assert cap is None and tried == [f"cgroup1: cannot create {own}/{memcap.os.path.basename(tried[0].split()[3])} "
                                     "(Permission denied)"]
    # a folder without the limit file (controller not enabled there) is removed again
    cap, tried = memcap.open_cap("t", ("cgroup1",), root=tmp_path, mounts_text=HYBRID_MOUNTS,
                                 cgroup_text=HYBRID_CGROUP)
    assert cap is None and "no memory.limit_in_bytes there" in tried[0]
    assert list(own.iterdir()) == []


def test_systemd_wrap_and_unknown_mechanism(tmp_path, monkeypatch):
    monkeypatch.setattr(memcap.shutil, "which", lambda name: "/usr/bin/" + name)
    (tmp_path / "run/systemd/system").mkdir(parents=True)
    cap, _ = memcap.open_cap("t", ("systemd-run",), root=tmp_path, mounts_text="", cgroup_text="")
    assert cap.mechanism == "systemd-run"
    assert cap.wrap(["python", "x"])[:3] == ["systemd-run", "--scope", "--quiet"]
    assert cap.wrap(["python", "x"])[-2:] == ["python", "x"]
    with pytest.raises(ValueError, match="unknown memory-cap mechanism"):
        memcap.open_cap("t", ("cgroup3",), root=tmp_path, mounts_text="", cgroup_text="")


CHILD = ("import json, os, sys; from ioaware.bench import memcap; a = memcap.apply_in_child(); "
         "x = bytearray(int(sys.argv[1])); x[::4096] = b'1' * len(x[::4096]); "
         "print(json.dumps({'pid': os.getpid(), 'applied': a}))")


def test_child_joins_the_fake_cgroup_and_sets_its_limit(tmp_path):
    """The real wrapper and child: the child's own pid lands in cgroup.procs, and it writes charge + budget."""
    fake_v2(tmp_path)
    cap, _ = memcap.open_cap("t", ("cgroup2",), root=tmp_path, mounts_text=V2_MOUNTS, cgroup_text=V2_CGROUP,
                             make_dir=kernel_mkdir("cgroup2"))
    r = memcap.run_child([sys.executable, "-c", CHILD, str(1 << 20)], cap, budget_bytes=64 << 20)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert (cap.path / "cgroup.procs").read_text().strip() == str(out["pid"])
    a = out["applied"]
    assert a["mechanism"] == "cgroup2" and a["baseline_bytes"] == 1000 and a["baseline_source"] == "cgroup charge"
    assert a["limit_bytes"] == 1000 + (64 << 20)
    assert (cap.path / "memory.max").read_text() == str(1000 + (64 << 20))
    assert (r.cap_peak_bytes, r.oom_kills, r.limit_bytes) == (5000, 1, 1000 + (64 << 20))
    cap.close()


PEAK = ("import json, sys; from ioaware.bench import memcap; x = bytearray(int(sys.argv[1])); "
        "x[::4096] = b'1' * len(x[::4096]); print(json.dumps({'hwm': memcap.read_rss()['VmHWM'], "
        "'applied': memcap.apply_in_child()}))")


def test_uncapped_child_and_its_own_peak_rss():
    """A child's own VmHWM is its peak alone (wait4's ru_maxrss starts from the parent's, an upper bound)."""
    big = memcap.run_child([sys.executable, "-c", PEAK, str(160 << 20)], None, 0)
    small = memcap.run_child([sys.executable, "-c", PEAK, str(8 << 20)], None, 0)
    assert big.returncode == small.returncode == 0
    b, s = (json.loads(r.stdout.strip().splitlines()[-1]) for r in (big, small))
    assert s["applied"] is None  # no cap: apply_in_child is a no-op
    assert b["hwm"] > (160 << 20) and s["hwm"] < b["hwm"] - (100 << 20)
    assert big.wait4_maxrss_bytes >= b["hwm"] and small.wait4_maxrss_bytes >= s["hwm"]


def test_timeout_kills_the_child():
    r = memcap.run_child([sys.executable, "-c", "import time; time.sleep(60)"], None, 0, timeout_s=0.5)
    assert r.returncode == -9 and r.wall_s < 30


def test_compare_greedy():
    assert compare([1, 2, 3], [1, 2, 3]) == {"identical": True, "first_difference": None, "agreement": 1.0}
    c = compare([1, 2, 4, 5], [1, 2, 3, 5])
    assert c["first_difference"] == 2 and c["agreement"] == 0.75 and not c["identical"]
    assert compare([1, 2], [1, 2, 3])["identical"] is False


def test_read_io_and_rss_of_this_process():
    io, rss = memcap.read_io(), memcap.read_rss()
    assert "read_bytes" in io and rss["VmHWM"] >= rss["VmRSS"] > 0
    assert memcap.read_io(str(os.getpid()))["read_bytes"] >= 0




def real_cap(tag):
    """A cap on this machine, or a skip that says which mechanisms failed and why."""
    cap, tried = memcap.open_cap(tag)
    if cap is None:
        pytest.skip("no writable memory cgroup here: " + "; ".join(tried))
    if cap.mechanism == "systemd-run":
        cap.close()
        pytest.skip("only systemd-run here: its scopes are not exercised by the unit tests")
    return cap


def test_real_cap_kills_a_child_that_allocates_past_it():
    cap = real_cap("oom")
    try:
        r = memcap.run_child([sys.executable, "-c", CHILD, str(96 << 20)], cap, budget_bytes=32 << 20, timeout_s=120)
    finally:
        cap.close()
    assert r.returncode == -9 and r.oom_kills and r.oom_kills >= 1, (r.returncode, r.stderr[-300:])
    assert r.limit_bytes is not None and r.cap_peak_bytes <= r.limit_bytes  # known although the child never said
    assert not cap.path.exists()


READ = ("import json, mmap, sys; from ioaware.bench import memcap; a = memcap.apply_in_child(); "
        "s0 = memcap.snapshot(); "
        "f = open(sys.argv[1], 'rb'); m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ); "
        "t = sum(m[i] for i in range(0, len(m), 4096)); s1 = memcap.snapshot(); "
        "print(json.dumps({'applied': a, 'read': s1['read_bytes'] - s0['read_bytes'], 'majflt': s1['majflt'] - "
        "s0['majflt']}))")


def test_real_cap_counts_page_cache_reads(tmp_path):
    """A 48 MiB file mapped and touched under a 16 MiB budget: the run completes (page cache is reclaimed, not
    fatal), every page comes from the device, and the cgroup's peak stays at or under the limit."""
    from ioaware.runtime.offload.reader import drop_page_cache

    f = tmp_path / "blob"
    f.write_bytes(os.urandom(48 << 20))
    os.sync()
    drop_page_cache(f)
    cap = real_cap("pagecache")
    try:
        r = memcap.run_child([sys.executable, "-c", READ, str(f)], cap, budget_bytes=16 << 20, timeout_s=120)
    finally:
        cap.close()
    assert r.returncode == 0, r.stderr[-400:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["read"] >= (46 << 20) and out["majflt"] > 0
    a = out["applied"]
    assert r.cap_peak_bytes <= a["limit_bytes"]  # never held the whole file ...
    assert r.cap_peak_bytes >= a["baseline_bytes"] + (8 << 20)  # ... but its pages were charged: the cap saw them
