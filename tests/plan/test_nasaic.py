"""NASAIC: the dataflow cost model against hand-derived counts and ZigZag, the joint space, the search mechanism."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ioaware.plan.nasaic import costmodel as cm
from ioaware.plan.nasaic import search
from ioaware.plan.nasaic.costmodel import Designs, Layers, evaluate
from ioaware.plan.nasaic.space import MAX_BW, MAX_PES, Specs, asic_costs, best_hardware, layers, within_budget

# one 3x3 convolution, K=4 output and C=2 input channels, 3x3 output, stride 1 (5x5 input): 648 MACs,
# 72 weight bytes, 50 input bytes, 36 output bytes
LAYER = Layers.of([(4, 2, 3, 3, 3, 3, 1)])


@pytest.mark.parametrize("template,pes,cycles,noc", [
    # dla: C=2 across, K=4 across (8 PEs): one tile, 9 outputs x 9 taps = 81 cycles; weights once, inputs once per
    # K tile (1), psums leave once per C tile: 72 + 50 + 36
    ("dla", 8, 81, 72 + 50 + 36),
    # dla with 4 PEs: C=2, K=2 -> two K tiles: 162 cycles; inputs enter twice
    ("dla", 4, 162, 72 + 2 * 50 + 36),
    # shi: 3x3 outputs across 9 PEs, one tile; K*C*R*S = 72 cycles; weights once per tile, the 5x5 halo per output
    # channel (4) and input channel (2): 72 + 200 + 36
    ("shi", 9, 72, 72 + 200 + 36),
    # rs: R=3 x Y'=3 rows per set, 9 PEs -> one set, K=4 passes: 4 * C(2) * X(3) * S(3) = 72 cycles;
    # filter rows once per Y' tile (1), input rows once per K pass (4): 72 + 200 + 36
    ("rs", 9, 72, 72 + 4 * 50 + 36),
], ids=["dla-8PE", "dla-4PE", "shi-9PE", "rs-9PE"])
def test_counts_by_hand(template, pes, cycles, noc):
    r = evaluate(LAYER, Designs.of([template], [pes], [8.0]))
    assert r["macs"][0, 0] == 648
    assert r["compute_cycles"][0, 0] == cycles
    assert r["noc_bytes"][0, 0] == noc
    assert r["dram_bytes"][0, 0] == 72 + 50 + 36  # fits the 128 KB L2: each operand once
    lat = max(cycles, noc / 8.0, 158 / cm.DRAM_BYTES_PER_CYCLE) / cm.CLOCK_HZ
    assert r["latency_s"][0, 0] == pytest.approx(lat)
    e = 648 * (cm.E_MAC + cm.L1_ACCESSES_PER_MAC * cm.E_L1) + noc * cm.E_NOC_L2 + 158 * cm.E_DRAM
    assert r["energy_j"][0, 0] == pytest.approx(e * 1e-12)
    area = pes * (cm.A_MAC + cm.L1_BYTES[template] * cm.A_SRAM) + cm.L2_BYTES * cm.A_SRAM + 8 * cm.A_NOC_PER_BYTE
    assert r["area_mm2"][0] == pytest.approx(area)


def test_l2_overflow_refetches_the_smallest_operand():
    big = Layers.of([(256, 256, 32, 32, 3, 3, 1)])  # 589824 weights, 295936 inputs, 262144 outputs
    r = evaluate(big, Designs.of(["dla"], [256], [16]))
    total = 589824 + 295936 + 262144
    blocks = np.ceil((total - 262144) / cm.L2_BYTES) - 1
    assert r["dram_bytes"][0, 0] == total + 262144 * blocks


def test_vectorised_equals_point_by_point():
    rng = np.random.default_rng(0)
    rows = [(int(rng.choice([8, 32, 64])), int(rng.choice([3, 16, 64])), int(rng.choice([4, 16])),
             int(rng.choice([4, 16])), k, k, int(rng.choice([1, 2]))) for k in (1, 3, 5, 3, 1)]
    L = Layers.of(rows)
    d = Designs.of(["dla", "shi", "rs", "rs"], [64, 256, 1024, 32], [4, 16, 64, 8])
    full = evaluate(L, d)
    for i, row in enumerate(rows):
        for j in range(4):
            one = evaluate(Layers.of([row]), Designs(d.template[j:j + 1], d.pes[j:j + 1], d.bw[j:j + 1]))
            for key in ("compute_cycles", "noc_bytes", "latency_s", "energy_j"):
                assert full[key][i, j] == pytest.approx(one[key][0, 0])


def test_cost_model_speed_bar():
    from ioaware.plan.nasaic.experiment import throughput

    tp = throughput(n_layers=100, n_designs=200, repeats=3)
    assert tp["points_per_s"] >= 1e4  # the bar; measured ~1e7 on the 2-core VM


ZIGZAG = Path(__file__).resolve().parents[2] / "ioaware" / "plan" / "nasaic" / "data" / "zigzag_resnet18_tpu_like.json"


@pytest.mark.skipif(not ZIGZAG.exists(), reason="ZigZag data not generated (ioaware/plan/nasaic/zigzag_check.py)")
def test_cross_check_with_zigzag_on_resnet18():
    """ZigZag's tpu_like is a 32x32 K x C array: our dla with the same shape must count the same ideal cycles
    (spatial under-use included) on every ResNet-18 layer, and MACs exactly."""
    from ioaware.plan.nasaic.zigzag import compare

    rows = compare(json.loads(ZIGZAG.read_text()))
    assert len(rows) >= 20
    for r in rows:
        assert r["macs"] == r["zigzag_macs"], r["name"]
        assert r["cycles"] == pytest.approx(r["zigzag_ideal_temporal_cycle"]), r["name"]


# --- the joint space and the search ------------------------------------------------------------------------------

def test_asic_latency_is_the_slower_network_energy_and_area_add():
    a, b = ((8, 3),) * 4, ((64, 5),) * 4
    hw = (("dla", 512, 16), ("rs", 1024, 32))
    lat, en, area = asic_costs((a, b), hw)
    ra = evaluate(layers(a, 10), Designs.of(["dla"], [512], [16]))
    rb = evaluate(layers(b, 4), Designs.of(["rs"], [1024], [32]))
    assert lat == pytest.approx(max(ra["latency_s"].sum(), rb["latency_s"].sum()))
    assert en == pytest.approx(ra["energy_j"].sum() + rb["energy_j"].sum())
    assert area == pytest.approx(ra["area_mm2"][0] + rb["area_mm2"][0])


def test_best_hardware_respects_the_budget_and_prefers_a_spec_meeting_design():
    nets = (((16, 3),) * 4, ((16, 3),) * 4)
    loose = Specs(1.0, 1.0, 100.0)
    hw, (lat, en, area) = best_hardware(nets, loose)
    assert within_budget(hw) and loose.met(lat, en, area)
    assert sum(p for _, p, _ in hw) <= MAX_PES and sum(b for _, _, b in hw) <= MAX_BW


def _fake_accuracy(monkeypatch):
    # the mechanism tests do not train: bigger networks score higher, smoothly, like the real proxy on digits
    def accs(nets):
        return tuple(float(1 - np.exp(-sum(f * k for f, k in n) / 120)) for n in nets)

    monkeypatch.setattr(search, "_accs", accs)


def test_co_exploration_returns_a_spec_meeting_design(monkeypatch):
    _fake_accuracy(monkeypatch)
    specs = Specs(20e-6, 40e-6, 10.0)
    best, trace = search.co_explore(specs, episodes=15, seed=1)
    assert best is not None and best["meets"]
    assert specs.met(best["latency_s"], best["energy_j"], best["area_mm2"])
    assert within_budget(best["hw"])
    pruned = [e for e in trace.episodes if not e["meets"]]
    assert all("acc" not in e for e in pruned)  # violating designs were never trained


def test_impossible_specs_give_no_design(monkeypatch):
    _fake_accuracy(monkeypatch)
    best, trace = search.co_explore(Specs(1e-9, 1e-12, 0.1), episodes=3, seed=0)
    assert best is None and trace.trainings == 0


def test_nas_then_asic_takes_the_most_accurate_networks(monkeypatch):
    _fake_accuracy(monkeypatch)
    best, trace = search.nas_then_asic(Specs(1e-6, 1e-6, 1.0), episodes=20, seed=0)
    top = max(trace.episodes, key=lambda e: e["reward"])
    assert best["nets"] == top["nets"] and not best["meets"]


def test_accuracy_proxy_separates_a_useless_network_from_a_useful_one():
    from ioaware.plan.nasaic.accuracy import accuracy

    weak = accuracy("digits", ((8, 1),) * 4, epochs=3)
    good = accuracy("digits", ((16, 3), (32, 3), (32, 3), (32, 3)), epochs=3)
    assert good > 0.8 and good > weak + 0.3
    assert accuracy("digits", ((16, 3), (32, 3), (32, 3), (32, 3)), epochs=3) == good  # seeded, cached


def test_cli_cost_and_bad_input(tmp_path):
    from ioaware.plan.nasaic.cli import main

    out = tmp_path / "c.json"
    assert main(["--cost", "rs", "1024", "16", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["large"]["energy_j"] > r["mid"]["energy_j"] > r["small"]["energy_j"]
    with pytest.raises(ValueError, match="template"):
        main(["--cost", "tpu", "1024", "16"])
    with pytest.raises(ValueError, match="episodes"):
        main(["--episodes", "0"])
