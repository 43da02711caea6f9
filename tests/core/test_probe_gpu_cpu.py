"""`ioaware probe gpu` on a CPU: the pointer-chain builder, the statistics (near/far split, the L2 knee, run-to-run
spread), the comparison rows and bars on fake measurements, the section runner's failure handling, the report and
plot, the generated CUDA sources, the Triton kernels under the interpreter, and the CLI's one-line error without
CUDA. The measurements themselves run on the device: tests/gpu/test_probe_gpu.py."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import torch

from ioaware.hardware.probe_gpu import cuda_src, probe, reference, stats
from ioaware.hardware.specs import SPECS


# ------------------------------------------------------------------------------------------------ the chain
@pytest.mark.parametrize("n,stride", [(1, 1), (2, 1), (97, 1), (1024, 1), (97, 32), (300, 8)],
                         ids=lambda v: str(v))
def test_chain_is_one_cycle_over_the_whole_buffer(n, stride):
    buf, start = stats.build_chain(np, n, stride, seed=7)
    assert buf.dtype == np.uint32 and buf.size == n * stride
    path = stats.walk(buf, start, n)
    assert path[-1] == start, "n steps come back to the start"
    assert sorted(path.tolist()) == [i * stride for i in range(n)], "every node visited exactly once"
    others = np.ones(buf.size, bool)
    others[::stride] = False
    assert not buf[others].any(), "only the node words hold pointers"


def test_chain_is_random_and_seeded():
    a, sa = stats.build_chain(np, 4096, 32, seed=1)
    b, sb = stats.build_chain(np, 4096, 32, seed=1)
    c, _ = stats.build_chain(np, 4096, 32, seed=2)
    assert np.array_equal(a, b) and sa == sb
    assert not np.array_equal(a, c)
    steps = np.diff(stats.walk(a, sa, 4096)) // 32
    assert (steps == 1).mean() < 0.01, "a random order, not a sequential stride a prefetcher could follow"


@pytest.mark.parametrize("n,stride", [(0, 1), (4, 0), (2**27, 64)], ids=["no-nodes", "no-stride", "past-32-bit"])
def test_chain_rejects_impossible_sizes(n, stride):
    with pytest.raises(ValueError):
        stats.build_chain(np, n, stride, seed=0)


# ------------------------------------------------------------------------------------------------ statistics
def test_otsu_splits_near_and_far_partitions():
    rng = np.random.default_rng(0)
    lat = np.concatenate([rng.normal(262, 4, 1400), rng.normal(430, 9, 648)]).round()
    s = stats.otsu_split(lat)
    assert abs(s["low"] - 262) < 3 and abs(s["high"] - 430) < 4
    assert abs(s["frac_low"] - 1400 / 2048) < 0.01
    assert s["eta"] > 0.95


def test_otsu_on_one_mode_is_not_called_bimodal():
    lat = np.random.default_rng(1).normal(270, 6, 2048).round()
    s = stats.otsu_split(lat)
    bimodal = s["eta"] >= 0.85 and s["high"] >= 1.2 * s["low"]  # memory.py's criterion
    assert not bimodal and s["eta"] < 0.75


def test_otsu_constant_samples():
    s = stats.otsu_split([29] * 100)
    assert s["low"] == s["high"] == 29 and s["eta"] == 0.0 and s["threshold"] is None


def test_capacity_knee_interpolates_half_way_in_log_footprint():
    f = [4, 8, 16, 24, 32, 40, 64, 128]
    b = [10000, 10000, 10000, 10000, 9000, 5000, 4000, 4000]
    k = stats.capacity_knee(f, b)
    assert k["plateau"] == 10000 and k["floor"] == 4000 and k["half"] == 7000
    t = (9000 - 7000) / (9000 - 5000)  # between 32 and 40 MiB
    assert k["capacity"] == pytest.approx(math.exp(math.log(32) + t * (math.log(40) - math.log(32))))


def test_capacity_knee_without_a_fall_says_none():
    assert stats.capacity_knee([4, 8, 16, 32], [5000, 5010, 4990, 5000])["capacity"] is None
    with pytest.raises(ValueError):
        stats.capacity_knee([8, 4, 16, 32], [1, 1, 1, 1])


def test_summary_and_spread():
    s = stats.summary([30, 29, 29, 31, 400])
    assert s["median"] == 30 and s["max"] == 400 and s["n"] == 5
    assert stats.rel_spread(100, 104) == pytest.approx(4 / 102)
    assert stats.rel_spread(None, 3) is None


# ------------------------------------------------------------------------------------------------ rows and bars
H200 = SPECS["h200"]


def test_rows_put_each_number_beside_paper_and_datasheet():
    measured = {"latency.smem": 31.9, "tc.wgmma.fp16.n256": 900.0, "tc.wgmma.int8.n256": 1800.0,
                "bw.hbm_copy": 4000.0, "latency.mma.bf16.k16": 33.0, "bw.smem_Bpc": 120.0}
    rows = {r["key"]: r for r in reference.rows(measured, H200, sms=132, clock_mhz=1900.0,
                                                clocks={"tc.wgmma.fp16.n256": 1800.0})}
    r = rows["latency.smem"]
    assert r["paper_h800"] == 29.0 and r["paper_ratio"] == pytest.approx(31.9 / 29.0)
    assert r["datasheet"] is None and r["paper_scaled"] is None  # cycles do not scale with SMs x clock
    r = rows["tc.wgmma.fp16.n256"]
    assert r["datasheet"] == pytest.approx(989.4) and r["datasheet_ratio"] == pytest.approx(900 / 989.4)
    assert r["paper_scaled"] == pytest.approx(728.5 * 132 * 1800 / (114 * 1755))  # the kernel's own clock
    assert r["clock_mhz"] == 1800.0
    assert rows["tc.wgmma.int8.n256"]["unit"] == "TOP/s" and rows["tc.wgmma.int8.n256"]["datasheet"] == 1978.9
    assert rows["bw.hbm_copy"]["datasheet"] == pytest.approx(4800.0)
    assert rows["latency.mma.bf16.k16"]["paper_h800"] is None and rows["latency.mma.bf16.k16"]["paper_ratio"] is None
    assert rows["bw.smem_Bpc"]["datasheet"] == 128.0 and rows["bw.smem_Bpc"]["paper_h800"] == 127.4
    assert all(r["paper_source"] for r in rows.values() if r["paper_h800"] is not None)


def test_per_clock_rates_against_the_clock_the_datasheet_implies():
    from ioaware.hardware.probe_gpu.compute import per_clock

    assert per_clock(864.3, 132, 1605.0) == pytest.approx(864.3e12 / (132 * 1605e6))
    assert per_clock(1.0, 132, None) is None
    ds, _ = reference.datasheet("tcclk.wgmma.bf16.n256", H200)
    assert ds == pytest.approx(4096, rel=1e-3)  # 989.4 TFLOP/s = 132 SMs x 4096 FLOP/clk x 1830 MHz
    assert reference.datasheet("tcclk.mma.int8.k32", H200)[0] == pytest.approx(8192, rel=1e-3)
    assert reference.ref_for("tcclk.wgmma.fp16.n256").paper == pytest.approx(728.5e12 / (114 * 1755e6))


def test_spec_for_picks_the_cards_datasheet():
    assert reference.spec_for("NVIDIA H200").key == "h200"
    assert reference.spec_for("NVIDIA H100 80GB HBM3").key == "h100"
    assert reference.spec_for("NVIDIA H800 PCIe").key == "h100"


class _FakeCtx:
    sms, clock_mhz = 132, 1980.0
    kernel_clocks = {"tc.wgmma.bf16.n256": 1755.0}

    def __init__(self):
        self.freed = 0

    def free(self):
        self.freed += 1


def _fake_out():
    rep = {"latency.l1": {"run1": 40.0, "run2": 40.5, "rel_diff": stats.rel_spread(40.0, 40.5)},
           "latency.hbm": {"run1": 500.0, "run2": 530.0, "rel_diff": stats.rel_spread(500.0, 530.0)}}
    return {"sections": {"latency": {"status": "ok", "seconds": 1.0, "clock": None,
                                     "detail": {"reproducibility": rep,
                                                "run1": {"l2_hist": [0] * 60, "l2_split": {"threshold": 300.0,
                                                                                           "eta": 0.9}}}},
                         "l2_capacity": {"status": "ok", "seconds": 1.0, "clock": None,
                                         "detail": {"footprint_mib": [4, 8, 16, 32, 64], "knee": {"capacity": 20.0},
                                                    "GBps": [9000, 9000, 8000, 5000, 4000],
                                                    "device_l2_bytes": 60 << 20}},
                         "l2_latency": {"status": "ok", "seconds": 1.0, "clock": None,
                                        "detail": {"curve": [{"mib": s, "median": v, "p10": v - 5, "p90": v + 9}
                                                             for s, v in ((4, 280), (48, 300), (96, 690))],
                                                   "split_at_mib": 48, "device_l2_bytes": 60 << 20}},
                         "dsm": {"status": "failed", "error": "RuntimeError: boom", "seconds": 0.1, "clock": None}},
            "measured": {"clock.sm_mhz": 1980.0, "latency.l1": 40.0, "latency.hbm": 500.0, "bw.hbm_copy": 4000.0,
                         "bw.torch_copy": 4200.0, "tc.wgmma.bf16.n256": 700.0, "tc.wgmma.bf16.n64": 650.0,
                         "tc.torch.bf16": 780.0, "tc.mma.bf16.k16": 500.0, "latency.l2_near": 270.0,
                         "latency.l2_far": 330.0, "tcclk.wgmma.bf16.n256": 4000.0}}


def _fake_result(quick=True, seconds=42.0):
    dev = {"name": "NVIDIA H200", "sms": 132, "compute_capability": "9.0", "l2_bytes": 60 << 20, "driver": "580"}
    ver = {"torch": "2.11", "triton": "3.6", "cuda_runtime": "13.0", "cupy": "14.2", "nvrtc": "13.0"}
    return probe.assemble(_fake_out(), dev, ver, _FakeCtx(), H200, seconds, quick)


def test_assemble_schema_is_json_and_complete():
    res = _fake_result()
    json.dumps(res)  # the file the CLI writes
    for k in ("tool", "version", "date", "quick", "seconds", "device", "versions", "paper_card", "datasheet_card",
              "sections", "measured", "rows", "bars", "kernel_clocks_mhz"):
        assert k in res, k
    assert {r["key"] for r in res["rows"]} == set(res["measured"])
    assert res["datasheet_card"] == H200.name


def test_bars_met_and_missed_with_their_numbers():
    b = {x["bar"]: x for x in _fake_result(quick=True, seconds=42.0)["bars"]}
    assert b["hbm_copy_vs_torch"]["ratio"] == pytest.approx(4000 / 4200) and b["hbm_copy_vs_torch"]["met"] is True
    bf = b["bf16_tensor_core_vs_torch_matmul"]
    assert bf["value"] == 700.0 and bf["ratio"] == pytest.approx(700 / 780) and bf["met"] is False
    r = b["latency_reproducible"]
    assert r["worst_key"] == "latency.hbm" and r["value"] == pytest.approx(30 / 515) and r["met"] is False
    assert b["time"]["met"] is True and b["time"]["baseline"] == 60.0
    full = {x["bar"]: x for x in _fake_result(quick=False, seconds=301.0)["bars"]}
    assert full["time"]["met"] is False and full["time"]["baseline"] == 300.0


def test_bars_without_the_measurement_are_not_claimed():
    b = {x["bar"]: x for x in probe.bars({}, None, 10.0, quick=True)}
    assert b["hbm_copy_vs_torch"]["met"] is None and b["bf16_tensor_core_vs_torch_matmul"]["met"] is None
    assert b["latency_reproducible"]["met"] is None


class _Sampler:
    def window(self, t0, t1):
        return None


def test_section_runner_records_skips_failures_and_a_lost_context():
    from ioaware.hardware.probe_gpu.context import SkipSection

    def ok(ctx):
        return {"measured": {"a": 1.0}, "detail": {"x": 1}}

    def skip(ctx):
        raise SkipSection("needs a Hopper GPU")

    def fail(ctx):
        raise RuntimeError("illegal address")

    funcs = {"ok": ok, "skip": skip, "fail": fail, "after": ok}
    seen = []
    ctx = _FakeCtx()
    out = probe.run_sections(list(funcs), ctx, _Sampler(), funcs, progress=lambda d, t, n: seen.append((d, n)),
                             on_section=lambda o, t: None, lost_check=lambda name: f"context lost after {name}")
    s = out["sections"]
    assert s["ok"]["status"] == "ok" and out["measured"] == {"a": 1.0}
    assert s["skip"] == {**s["skip"], "status": "skipped", "reason": "needs a Hopper GPU"}
    assert s["fail"]["status"] == "failed" and "illegal address" in s["fail"]["error"] and s["fail"]["traceback"]
    assert s["after"]["status"] == "skipped" and s["after"]["reason"] == "context lost after fail"
    assert seen[-1] == (4, "done") and ctx.freed == 3


def test_check_sections_names_the_unknown_one():
    assert probe.check_sections(None) == list(probe.SECTIONS)
    with pytest.raises(ValueError, match="unknown probe section.*cache"):
        probe.check_sections(["latency", "cache"])


def test_report_tables_and_plot(tmp_path):
    from rich.console import Console

    from ioaware.hardware.probe_gpu.report import plot, print_report

    res = _fake_result()
    buf = io.StringIO()
    print_report(res, console=Console(file=buf, width=220))
    text = buf.getvalue()
    assert "paper H800" in text and "MISSED" in text and "RuntimeError: boom" in text
    png = tmp_path / "p.png"
    plot(res, str(png))
    assert png.read_bytes()[:4] == b"\x89PNG"


# ------------------------------------------------------------------------------------------------ generated CUDA
@pytest.mark.parametrize("dtype,k,regs", [("fp16", 16, (4, 2)), ("fp16", 8, (2, 1)), ("bf16", 16, (4, 2)),
                                          ("tf32", 8, (4, 2)), ("tf32", 4, (2, 1)), ("int8", 32, (4, 2)),
                                          ("int8", 16, (2, 1)), ("e4m3", 32, (4, 2))], ids=lambda v: str(v))
def test_mma_fragment_registers_match_the_ptx_isa(dtype, k, regs):
    assert cuda_src.mma_regs(dtype, k) == regs
    src = cuda_src.mma_source([(dtype, k)])
    acc = "s32" if dtype == "int8" else "f32"
    assert f"mma.sync.aligned.m16n8k{k}.row.col.{acc}.{cuda_src.PTX_TYPE[dtype]}" in src
    assert f"mma_tp_{dtype}_k{k}" in src and f"mma_lat_{dtype}_k{k}" in src
    assert ("a[0][0] ^=" in src) == (dtype == "e4m3"), "only the emulated fp8 path perturbs its operands"


@pytest.mark.parametrize("dtype,n", [("bf16", 256), ("tf32", 64), ("int8", 128), ("e5m2", 64)], ids=str)
def test_wgmma_operands_are_numbered_right(dtype, n):
    src = cuda_src.wgmma_source([(dtype, n)], [], check=False)
    k = cuda_src.WGMMA_K[dtype]
    line = next(ln for ln in src.splitlines() if "wgmma.mma_async" in ln)
    assert f"m64n{n}k{k}" in line
    assert f"%{n // 2 - 1}}}, %{n // 2}, %{n // 2 + 1}," in line  # n/2 accumulators, then the two descriptors
    assert f"setp.ne.b32 p, %{n // 2 + 2}, 0" in src
    tail = line.split(f"%{n // 2 + 1},")[1]
    assert tail.strip().startswith({"bf16": "p, 1, 1, 0, 0", "tf32": "p, 1, 1;", "int8": "p;",
                                    "e5m2": "p, 1, 1;"}[dtype])
    assert cuda_src.wgmma_flops(dtype, n) == 2 * 64 * n * k


def test_async_and_dsm_sources_name_their_variants():
    s = cuda_src.async_source(4096)
    assert all(f"ac_{v}_4096" in s for v in ("plain", "cpasync", "bulk")) and "#define TILE 4096" in s
    d = cuda_src.dsm_source(4)
    assert "__cluster_dims__(CS, 1, 1) dsm_lat_4" in d and "dsm_bw_4" in d and "#define CS 4" in d


@pytest.mark.parametrize("dtype", ["fp16", "bf16", "tf32", "e4m3", "e5m2", "int8"])
def test_tensor_core_operands_are_real_values(dtype):
    from ioaware.hardware.probe_gpu.compute import operand_words

    w = operand_words(dtype, 512, seed=3)
    assert w.dtype == np.uint32 and w.size == 512
    t = torch.from_numpy(w.view(np.int32).copy())
    vals = (t.view(torch.int8).float() if dtype == "int8" else
            t.view({"fp16": torch.float16, "bf16": torch.bfloat16, "tf32": torch.float32,
                    "e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}[dtype]).float())
    assert torch.isfinite(vals).all() and (vals != 0).float().mean() > 0.9 and vals.std() > 0.5


# ------------------------------------------------------------------------------------------------ Triton kernels
def test_reread_kernel_sums_each_programs_blocks_every_pass():
    from ioaware.hardware.probe_gpu import triton_kernels

    x = torch.randn(1024 * 10, generator=torch.Generator().manual_seed(0))
    out = triton_kernels.reread(x, passes=3, programs=3, block=1024)
    assert out.shape == (3,)
    for p in range(3):
        b0, b1 = p * 10 // 3, (p + 1) * 10 // 3
        ref = 3 * x.view(10, 1024)[b0:b1].double().sum()
        torch.testing.assert_close(out[p].double(), ref, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("n,block", [(4096, 1024), (5000, 1024)], ids=["even", "ragged"])
def test_copy_kernel(n, block):
    from ioaware.hardware.probe_gpu import triton_kernels

    src = torch.randn(n)
    dst = torch.full_like(src, float("nan"))
    triton_kernels.copy(src, dst, block=block)
    assert torch.equal(src, dst)


def test_tma_copy_kernel():
    pytest.importorskip("triton.tools.tensor_descriptor")  # Triton >= 3.4 (the project's floor) has it
    from ioaware.hardware.probe_gpu import triton_kernels

    src = torch.randn(64 * 64 * 3)
    dst = torch.full_like(src, float("nan"))
    triton_kernels.copy_tma_prepare(src, dst, bm=64, bn=64)()
    assert torch.equal(src, dst)


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_without_cuda_says_one_line_and_exits_2(monkeypatch, capsys):
    from ioaware.cli.main import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["probe", "gpu", "--quick"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no CUDA GPU" in err[0]


def test_cli_bad_section_is_refused_before_any_work(capsys):
    from ioaware.cli.main import main

    assert main(["probe", "gpu", "--sections", "latency,tlb"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tlb" in err[0]
