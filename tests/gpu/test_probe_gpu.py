"""`ioaware probe gpu --quick` on the device: every section runs, its own correctness checks pass (the walks follow
their chains, the async copies sum the same data as plain loads, the wgmma descriptors compute A B^T), and the
numbers land inside physical bounds for a Hopper card. The bounds are wide on purpose (they catch a broken kernel,
not a slow card); the bars themselves are in the result and in benchmarks/results."""

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture(scope="module")
def result():
    from ioaware.hardware.probe_gpu import run

    return run(quick=True)


def _hopper():
    return torch.cuda.get_device_capability()[0] == 9


def test_every_section_ran(result):
    bad = {n: s.get("error") or s.get("reason") for n, s in result["sections"].items() if s["status"] != "ok"}
    if _hopper():
        assert not bad, bad
    else:  # elsewhere only the Hopper-only sections may be skipped, and nothing may fail
        assert all(result["sections"][n]["status"] == "skipped" for n in bad) and set(bad) <= {"wgmma", "dsm"}


def test_quick_probe_time_is_sane(result):
    assert result["seconds"] < 120  # the 60 s bar is reported in result["bars"]; this catches a runaway


@pytest.mark.parametrize("key,lo,hi", [("latency.smem", 15, 60), ("latency.l1", 20, 90), ("latency.l2", 150, 700),
                                       ("latency.hbm", 300, 1500), ("latency.hbm_random", 300, 2500)],
                         ids=lambda v: str(v))
def test_latency_in_bounds(result, key, lo, hi):
    m = result["measured"]
    assert lo <= m[key] <= hi, f"{key} = {m[key]} cycles"
    assert m["latency.smem"] < m["latency.l1"] < m["latency.l2"] < m["latency.hbm"]
    if "latency.l2_far" in m:  # reported only where the walk at 0.8 of the L2 splits in two
        assert 150 <= m["latency.l2_near"] < m["latency.l2_far"] < m["latency.hbm"]


def test_bandwidth_in_bounds(result):
    m = result["measured"]
    assert 64 <= m["bw.smem_Bpc"] <= 132 and 48 <= m["bw.l1_Bpc"] <= 132  # the SM's datapath is 128 B/clk
    assert m["bw.hbm_copy"] < m["bw.l2"] * 1e3, "L2 re-reads beat HBM"
    for k in ("bw.hbm_read", "bw.hbm_copy", "bw.torch_copy"):
        assert 1000 <= m[k] <= 6000, f"{k} = {m[k]} GB/s"


def test_tensor_cores_in_bounds(result):
    m = result["measured"]
    assert 200 <= m["tc.torch.bf16"] <= 1100
    assert 100 <= m["tc.mma.bf16.k16"] <= 1100
    if _hopper():
        assert 300 <= m["tc.wgmma.bf16.n256"] <= 1100
        assert m["tc.wgmma.bf16.n256"] > m["tc.mma.bf16.k16"], "wgmma is Hopper's fast path"
        assert result["sections"]["wgmma"]["detail"]["descriptor_check"]["ok"]


def test_latency_grows_past_the_l2(result):
    curve = result["sections"]["l2_latency"]["detail"]["curve"]
    assert curve[-1]["mib"] << 20 > result["device"]["l2_bytes"]
    assert curve[-1]["median"] > 1.5 * curve[0]["median"], "a walk past the L2 reaches HBM"


def test_clock_and_capacity(result):
    m = result["measured"]
    assert 500 <= m["clock.sm_mhz"] <= 2100
    assert 4 <= m["l2.capacity_mib"] <= 128
    assert result["device"]["sms"] == torch.cuda.get_device_properties(0).multi_processor_count


def test_hopper_features(result):
    if not _hopper():
        pytest.skip("DSM and the bulk copy engine need sm_90")
    m = result["measured"]
    assert 10 <= m["latency.dsm_local"] < m["latency.dsm_remote"] <= 600
    assert m["bw.dsm.cs2"] > 0.5
    assert m["async.bulk.t8192.hbm"] > 500 and m["async.cpasync.t8192.hbm"] > 500
