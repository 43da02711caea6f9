"""Probe results feed the hardware tables: which file wins, the units, the spec they make, the roofline that uses
them only when asked and only where a file exists, `ioaware hardware --measured`, and the H200's L2 size."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ioaware.cli.main import main
from ioaware.hardware import SPECS, get_spec, measured, measured_spec
from ioaware.hardware import probe_results as hm
from ioaware.iomodel import Cost, roofline

H200 = get_spec("h200")
BASE = {"clock.sm_mhz": 1900.0, "tc.wgmma.bf16.n64": 700.0, "tc.wgmma.bf16.n256": 801.5, "tc.torch.bf16": 760.0,
        "tc.mma.bf16.k16": 600.0, "tc.wgmma.fp16.n128": 811.0, "tc.torch.fp16": 700.0, "tc.wgmma.e5m2.n64": 1500.0,
        "tc.torch.e4m3": 1600.0, "bw.hbm_read": 3700.0, "bw.hbm_copy": 3800.0, "bw.torch_copy": 4100.0,
        "async.cpasync.t8192.hbm": 4400.0, "async.plain.t8192.hbm": 2000.0, "bw.l2": 7.0,
        "async.cpasync.t8192.l2": 6900.0, "l2.capacity_mib": 55.0, "bw.hbm_copy_frac": 0.79}


def write_probe(folder: Path, name: str, measured: dict | None = None, device: str = "NVIDIA H200",
                date: str = "2026-12-01", quick: bool = False, partial: bool = False, mtime: float | None = None):
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / name
    p.write_text(json.dumps({"tool": "ioaware probe gpu", "version": 1, "date": date, "quick": quick,
                             "partial": partial, "device": {"name": device, "sms": 132, "l2_bytes": 60 << 20},
                             "measured": BASE if measured is None else measured}))
    if mtime is not None:
        os.utime(p, (mtime, mtime))
    return p


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """An empty cache dir and no checkout results: only the files a test writes exist."""
    monkeypatch.setenv("IOAWARE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(hm, "REPO_RESULTS", tmp_path / "no-checkout" / "benchmarks" / "results")
    return tmp_path / "cache" / "probe" / "gpu"


def test_values_are_the_best_key_in_si_units(tmp_path):
    p = write_probe(tmp_path, "a.json")
    m = hm.measured("h200", files=[p])
    assert m.card == "h200" and m.device == "NVIDIA H200" and m.files == (str(p.resolve()),)
    assert m.get("peak.bfloat16").value == pytest.approx(801.5e12) and m.get("peak.bfloat16").key == \
        "tc.wgmma.bf16.n256"
    assert m.get("peak.float8").value == pytest.approx(1600e12) and m.get("peak.float8").key == "tc.torch.e4m3"
    assert m.get("hbm_bandwidth").value == pytest.approx(4400e9)
    assert m.get("l2_bandwidth").value == pytest.approx(7.0e12) and m.get("l2_bandwidth").key == "bw.l2"  # TB/s
    assert m.get("l2_capacity").value == pytest.approx(55 * 2**20)
    assert m.get("l2_bytes").value == 60 << 20 and m.get("num_sms").value == 132
    assert m.get("peak.tfloat32") is None  # not in this file: the table's value stays
    assert {m.get(q).date for q in m.values} == {"2026-12-01"}


def test_newest_file_per_quantity_full_before_quick_partial_and_others_skipped(isolated):
    write_probe(isolated, "old-full.json", date="2026-11-01")
    write_probe(isolated, "new-bw-only.json", {"bw.hbm_copy": 4300.0, "bw.torch_copy": 4000.0}, date="2026-12-02")
    write_probe(isolated, "same-day-quick.json", {"bw.hbm_copy": 9999.0}, date="2026-12-02", quick=True,
                mtime=2e9)  # later in the day, but a quick run: the full one of that day wins
    write_probe(isolated, "interrupted.json", {"tc.wgmma.bf16.n256": 5.0}, date="2026-12-03", partial=True)
    write_probe(isolated, "h100.json", {"tc.wgmma.bf16.n256": 1.0}, device="NVIDIA H100 80GB HBM3", date="2026-12-04")
    (isolated / "notes.json").write_text('{"something": "else"}')
    m = hm.measured("NVIDIA H200")
    assert m.get("hbm_bandwidth").value == pytest.approx(4300e9)
    assert Path(m.get("hbm_bandwidth").file).name == "new-bw-only.json" and m.get("hbm_bandwidth").date == "2026-12-02"
    assert Path(m.get("peak.bfloat16").file).name == "old-full.json" and m.get("peak.bfloat16").date == "2026-11-01"
    assert [Path(f).name for f in m.files] == ["new-bw-only.json", "same-day-quick.json", "old-full.json"]
    assert any("notes.json" in s for s in m.skipped)
    assert hm.measured("h100").get("peak.bfloat16").value == pytest.approx(1e12)
    assert hm.measured("a100") is None
    assert hm.cards_with_files() == ["h100", "h200"]
    for name in ("h200", "H200-SXM", "NVIDIA H200", "NVIDIA H200 SXM 141GB"):
        assert hm.measured(name).card == "h200"
    # another SKU of the same die is not the table's card: its measurements stay its own
    write_probe(isolated, "nvl.json", {"tc.torch.bf16": 2.0}, device="NVIDIA H200 NVL", date="2026-12-05")
    write_probe(isolated, "h800.json", {"tc.torch.bf16": 3.0}, device="NVIDIA H800 PCIe", date="2026-12-05")
    assert hm.measured("h200").get("peak.bfloat16").value == pytest.approx(801.5e12)
    assert hm.measured("NVIDIA H200 NVL").get("peak.bfloat16").value == pytest.approx(2e12)
    assert hm.measured("h100").get("peak.bfloat16").value == pytest.approx(1e12)
    assert hm.cards_with_files() == ["h100", "h200", "nvidia h200 nvl", "nvidia h800 pcie"]


def test_explicit_files_that_are_not_probes_fail_with_one_line(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text('{"tool": "something else", "measured": {}}')
    with pytest.raises(ValueError, match="not an `ioaware probe gpu` result"):
        hm.measured("h200", files=[bad])
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="cannot read a probe result"):
        hm.measured("h200", files=[bad])
    undated = write_probe(tmp_path, "u.json", date="yesterday")
    with pytest.raises(ValueError, match="without a date"):
        hm.measured("h200", files=[undated])


def test_measured_spec_replaces_only_what_was_measured(tmp_path):
    p = write_probe(tmp_path, "a.json")
    m = hm.measured("h200", files=[p])
    s = hm.measured_spec(H200, m)
    assert s.peak("bf16") == pytest.approx(801.5e12) and s.peak("fp16") == pytest.approx(811e12)
    assert s.peak("tf32") == H200.peak("tf32") and s.peak("float32") == H200.peak("float32")  # not probed
    assert s.hbm_bandwidth_Bps == pytest.approx(4400e9) and s.l2_bandwidth_Bps == pytest.approx(7e12)
    assert s.l2_bytes == H200.l2_bytes and s.hbm_bytes == H200.hbm_bytes  # sizes stay the table's
    assert "a.json" in s.peak_source("bfloat16") and "2026-12-01" in s.peak_source("bfloat16")
    assert s.peak_source("tfloat32") == H200.sources["flops"]
    assert "async.cpasync.t8192.hbm" in s.sources["hbm_bandwidth"] and s.sources["hbm"] == H200.sources["hbm"]
    assert hm.measured_spec(H200, None) is H200
    assert (measured, measured_spec) == (hm.measured, hm.measured_spec)  # ioaware.hardware.measured(card)
    assert H200.peak("bf16") == pytest.approx(989.4e12)  # the table itself is untouched


def test_roofline_uses_measured_peaks_only_when_asked_and_a_file_exists(isolated):
    compute = Cost.of(1e15, hbm=(1e9, 0))
    memory = Cost.of(1e9, hbm=(4e12, 0))
    sheet_c, sheet_m = roofline(compute, H200), roofline(memory, H200)
    assert sheet_c.source == sheet_m.source == "datasheet"
    # no probe file anywhere: measured=True is the datasheet's roofline
    assert roofline(compute, H200, measured=True) == sheet_c and roofline(memory, H200, measured=True) == sheet_m
    write_probe(isolated, "h200.json")
    # the default stays the datasheet even with a file present
    assert roofline(compute, H200) == sheet_c
    rc, rm = roofline(compute, H200, measured=True), roofline(memory, H200, measured=True)
    assert rc.time_s == pytest.approx(1e15 / 801.5e12) and rc.time_s != pytest.approx(sheet_c.time_s)
    assert rm.time_s == pytest.approx(4e12 / 4400e9) and rm.time_s != pytest.approx(sheet_m.time_s)
    assert rc.peak_flops == pytest.approx(801.5e12) and rc.ridge == pytest.approx(801.5e12 / 4400e9)
    assert "h200.json" in rc.source and "2026-12-01" in rc.source and "tc.wgmma.bf16.n256" in rc.source
    # a card with no file of its own is unchanged; fp32 (never probed) keeps the datasheet peak
    h100 = get_spec("h100")
    assert roofline(compute, h100, measured=True) == roofline(compute, h100)
    assert roofline(compute, H200, "float32", measured=True).time_s == pytest.approx(1e15 / H200.peak("float32"))
    # a Measured passed in is used as it is
    other = hm.measured("h200", files=[write_probe(isolated.parent, "x.json", {"tc.torch.bf16": 500.0})])
    assert roofline(compute, H200, measured=other).time_s == pytest.approx(1e15 / 500e12)


def test_roofline_at_l2_needs_a_measured_bandwidth(isolated):
    c = Cost.of(1e9, l2=(7e12, 0))
    with pytest.raises(ValueError, match="no bandwidth for level 'l2'"):
        roofline(c, H200, level="l2")
    assert roofline(c, H200, level="l2", bandwidth_Bps=1e12).time_s == pytest.approx(7.0)
    write_probe(isolated, "h200.json")
    r = roofline(c, H200, level="l2", measured=True)
    assert r.time_s == pytest.approx(1.0) and "bw.l2" in r.source


def test_save_probe_keeps_complete_runs_where_the_search_finds_them(isolated):
    result = json.loads(write_probe(isolated.parent / "elsewhere", "r.json").read_text())
    p = hm.save_probe(result)
    assert p.parent == isolated and p.name.startswith("nvidia-h200-2026-12-01-")
    assert hm.measured("h200").files == (str(p),)
    assert hm.save_probe(result | {"partial": True}) is None
    assert hm.save_probe(result | {"quick": True}).name.endswith("-quick.json")


def test_probe_gpu_cli_keeps_a_copy(isolated, monkeypatch, tmp_path):
    import ioaware.hardware.probe_gpu as pg
    from ioaware.hardware.probe_gpu import report

    fake = json.loads(write_probe(tmp_path / "src", "r.json").read_text())
    monkeypatch.setattr(pg, "require_cuda", lambda: None)
    monkeypatch.setattr(pg, "run", lambda **kw: dict(fake))
    monkeypatch.setattr(report, "print_report", lambda r: None)
    out = tmp_path / "out.json"
    assert main(["probe", "gpu", "--json", str(out)]) == 0
    kept = list(isolated.glob("*.json"))
    assert len(kept) == 1 and json.loads(kept[0].read_text())["measured"] == BASE
    assert json.loads(out.read_text())["measured"] == BASE


def test_hardware_measured_cli(isolated, tmp_path, capsys):
    write_probe(isolated, "h200.json")
    out = tmp_path / "m.json"
    assert main(["hardware", "--measured", "--json", str(out)]) == 0
    d = json.loads(out.read_text())
    rows = {r["quantity"]: r for r in d["measured"]}
    r = rows["peak.bfloat16"]
    assert r["card"] == "h200" and r["datasheet"] == pytest.approx(989.4) and r["measured"] == pytest.approx(801.5)
    assert r["ratio"] == pytest.approx(801.5 / 989.4) and r["date"] == "2026-12-01" and r["feeds_roofline"]
    assert Path(r["file"]).name == "h200.json" and r["datasheet_source"] == H200.sources["flops"]
    assert rows["hbm_bandwidth"]["datasheet"] == pytest.approx(4800) and rows["l2_bandwidth"]["datasheet"] is None
    assert rows["l2_bytes"]["ratio"] == pytest.approx(1.0)  # the table's L2 is what the driver reports
    assert d["missing"] == ["h100", "a100", "v100"] and {s["key"] for s in d["specs"]} == set(SPECS)
    text = capsys.readouterr().out
    assert "peak.bfloat16" in text and "no probe result for h100, a100, v100" in text
    # --json - : stdout is the JSON alone
    assert main(["hardware", "--measured", "--json", "-"]) == 0
    assert json.loads(capsys.readouterr().out)["measured"] == d["measured"]
    # --from reads the named file instead of searching
    other = write_probe(tmp_path / "x", "mine.json", {"tc.torch.bf16": 500.0}, date="2025-01-01")
    assert main(["hardware", "--measured", "--from", str(other), "--json", str(out)]) == 0
    d = json.loads(out.read_text())
    assert [(r["quantity"], r["date"]) for r in d["measured"]] == [("peak.bfloat16", "2025-01-01"),
                                                                    ("l2_bytes", "2025-01-01"),
                                                                    ("num_sms", "2025-01-01")]


def test_hardware_measured_cli_bad_input(isolated, tmp_path, capsys):
    assert main(["hardware", "--from", "x.json"]) == 2
    assert "add --measured" in capsys.readouterr().err
    assert main(["hardware", "--measured", "--from", str(tmp_path / "none.json")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["hardware", "--measured"]) == 0  # nothing measured: the table, and a line that says so
    assert "no probe result for h100, h200, a100, v100" in capsys.readouterr().out


COMMITTED = hm.REPO_RESULTS / "probe-gpu-h200-2026-12-02.json"


@pytest.mark.skipif(not COMMITTED.is_file(), reason="runs from a source checkout")
def test_committed_h200_probe_feeds_the_table():
    data = json.loads(COMMITTED.read_text())
    m = hm.measured("h200", files=[COMMITTED])
    hbm = [v for k, v in data["measured"].items() if k.startswith(("bw.hbm_", "bw.torch_copy"))
           and not k.endswith("_frac") or (k.startswith("async.") and k.endswith(".hbm"))]
    assert m.get("hbm_bandwidth").value == pytest.approx(max(hbm) * 1e9)
    bf16 = [v for k, v in data["measured"].items() if k.startswith(("tc.wgmma.bf16.", "tc.mma.bf16.", "tc.torch.bf16"))]
    assert m.get("peak.bfloat16").value == pytest.approx(max(bf16) * 1e12)
    assert m.get("peak.bfloat16").date == data["date"] == "2026-12-02"
    assert m.get("peak.bfloat16").file == "benchmarks/results/probe-gpu-h200-2026-12-02.json"
    assert m.get("l2_capacity").value == pytest.approx(data["measured"]["l2.capacity_mib"] * 2**20)


@pytest.mark.skipif(not COMMITTED.is_file(), reason="runs from a source checkout")
def test_h200_l2_is_what_the_driver_reports():
    data = json.loads(COMMITTED.read_text())
    assert SPECS["h200"].l2_bytes == data["device"]["l2_bytes"] == 60 * 2**20
    assert "62914560" in SPECS["h200"].sources["l2"]
