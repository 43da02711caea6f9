"""Hardware specs carry sources; `import ioaware` stays off CUDA; every CLI verb answers --help."""

import json
import subprocess
import sys

import pytest

from ioaware.cli.main import VERBS, main
from ioaware.hardware import SPECS, detect, get_spec


def test_every_spec_number_has_a_source():
    for s in SPECS.values():
        for field in ("flops", "hbm", "l2", "smem", "sms", "pcie"):
            assert s.sources.get(field), f"{s.key}: no source for {field}"
        assert s.peak("float16") > 0 and s.hbm_bandwidth_Bps > 0 and s.num_sms > 0


def test_known_numbers():
    h100 = get_spec("H100")
    assert h100.num_sms == 132 and h100.hbm_bandwidth_Bps == pytest.approx(3.35e12)
    assert get_spec("a100").peak("bf16") == pytest.approx(312e12)
    with pytest.raises(ValueError, match="no peak"):
        get_spec("v100").peak("bfloat16")
    with pytest.raises(KeyError, match="unknown hardware"):
        get_spec("tpu")


def test_detect_on_cpu_describes_the_host():
    s = detect("cpu")
    assert s.kind == "cpu" and s.hbm_bytes > 0


def test_import_does_not_initialise_cuda():
    code = "import ioaware, torch; assert not torch.cuda.is_initialized(); print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


@pytest.mark.parametrize("verb", list(VERBS))
def test_help_for_each_verb(verb, capsys):
    with pytest.raises(SystemExit) as e:
        main([verb, "--help"])
    assert e.value.code == 0
    assert "usage" in capsys.readouterr().out


def test_cost_attention_json(tmp_path, capsys):
    out = tmp_path / "cost.json"
    assert main(["cost", "attention", "--n", "4096", "--d", "128", "--sram", "228KiB", "--causal", "--json",
                 str(out)]) == 0
    d = json.loads(out.read_text())
    algos = {(r["algorithm"], r["pass"]) for r in d["rows"]}
    assert ("flash-attention-2", "bwd") in algos and ("standard", "fwd") in algos
    flash = next(r for r in d["rows"] if r["algorithm"] == "flash-attention-2" and r["pass"] == "fwd")
    std = next(r for r in d["rows"] if r["algorithm"] == "standard" and r["pass"] == "fwd")
    assert flash["hbm_bytes"] < std["hbm_bytes"] and flash["flops"] == std["flops"]
    assert "flash-attention-2" in capsys.readouterr().out


def test_cost_attention_dram(tmp_path):
    out = tmp_path / "cost.json"
    assert main(["cost", "attention", "--n", "2048", "--d", "64", "--heads", "4", "--dram", "--json", str(out)]) == 0
    rows = {(r["algorithm"], r["pass"]): r for r in json.loads(out.read_text())["rows"]}
    # after L2, DRAM sees at least every input once and at most what the programs request
    for p, floor in (("fwd", 4 * 2048 * 64 * 2 * 3), ("bwd", 4 * 2048 * 64 * 2 * 5)):
        dram, req = rows[("ioaware kernels, DRAM", p)]["hbm_bytes"], rows[("flash-attention-2", p)]["hbm_bytes"]
        assert floor <= dram < req


def test_cost_bad_input_is_one_line(capsys):
    assert main(["cost", "attention", "--sram", "lots"]) == 2
    err = capsys.readouterr().err
    assert "cannot read a size" in err and "Traceback" not in err
    assert main(["cost", "attention", "--hardware", "tpu"]) == 2
    assert main(["cost", "attention", "--hardware", "a100", "--dram"]) == 2
    assert "measured on the H100 only" in capsys.readouterr().err


def test_cost_nsa_parts_sum_and_dense_beside(tmp_path, capsys):
    """`ioaware cost nsa`: the parts add up to the total, the selected branch's NSA order reads more than the FSA
    order at a small group (FSA's point), and dense attention at the same shape costs more FLOPs."""
    out = tmp_path / "nsa.json"
    assert main(["cost", "nsa", "--t", "8192", "--heads", "8", "--kv-heads", "4", "--json", str(out)]) == 0
    fsa = {(r["part"], r["pass"]): r for r in json.loads(out.read_text())["rows"]}
    for p in ("fwd", "bwd"):
        parts = [r for (n, q), r in fsa.items() if q == p and n not in ("nsa total", "dense flash-attention-2")]
        total = fsa[("nsa total", p)]
        assert sum(r["flops"] for r in parts) == pytest.approx(total["flops"])
        assert sum(r["hbm_bytes"] for r in parts) == pytest.approx(total["hbm_bytes"])
        assert fsa[("dense flash-attention-2", p)]["flops"] > total["flops"]
        assert total["dense_over_nsa"] > 0
    assert main(["cost", "nsa", "--t", "8192", "--heads", "8", "--kv-heads", "4", "--order", "nsa", "--json",
                 str(out)]) == 0
    nsa = {(r["part"], r["pass"]): r for r in json.loads(out.read_text())["rows"]}
    assert nsa[("slc", "fwd")]["hbm_bytes"] > fsa[("slc", "fwd")]["hbm_bytes"]
    assert "nsa total" in capsys.readouterr().out
    assert main(["cost", "nsa", "--heads", "6", "--kv-heads", "4"]) == 2
    assert "not a multiple" in capsys.readouterr().err
    assert main(["cost", "nsa", "--stride", "24"]) == 2


def test_bench_without_gpu_says_so(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert main(["bench", "attention"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


def test_hardware_verb_json(tmp_path):
    out = tmp_path / "hw.json"
    assert main(["hardware", "--json", str(out)]) == 0
    assert {d["key"] for d in json.loads(out.read_text())} == set(SPECS)


def test_hardware_verb_measured_json_keeps_the_spec_table(tmp_path):
    # --measured adds the probe comparison beside the same spec table (details: test_hardware_measured.py)
    out = tmp_path / "hw.json"
    assert main(["hardware", "--measured", "--json", str(out)]) == 0
    d = json.loads(out.read_text())
    assert {s["key"] for s in d["specs"]} == set(SPECS) and {"measured", "cards", "missing", "searched"} <= set(d)
    for r in d["measured"]:
        assert r["file"] and r["date"] and r["measured"] > 0
        assert r["ratio"] is None or r["ratio"] == pytest.approx(r["measured"] / r["datasheet"])


def test_readme_lists_every_environment_variable():
    from pathlib import Path

    from ioaware.env import ENV_TABLE

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    for name, _default, _ in ENV_TABLE:
        assert f"| `{name}` |" in readme, f"{name} missing from the README's table"


def test_bench_runner_writes_results(tmp_path, monkeypatch):
    # the GPU-only part is replaced: this checks the shared runner (table, atomic results file, --json)
    import torch

    from ioaware.bench import decode

    fake = {"machine": {"card": "NVIDIA H100 80GB HBM3", "driver": "x", "torch": "t", "triton": "y"},
            "ceilings": {"copy_GBps": 3000.0, "gemm_bf16_TFLOPs": 700.0},
            "rows": [{"B": 8, "L": 4096, "provider": "ioaware", "ms": 0.1, "kv_GBps": 2000.0, "rel_err": 1e-3,
                      "ok": True, "error": None, "speedup_vs_best_sdpa": 1.02}]}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(decode, "run", lambda progress=None: fake)
    out, js = tmp_path / "decode.json", tmp_path / "copy.json"
    assert main(["bench", "decode", "--out", str(out), "--json", str(js)]) == 0
    assert json.loads(out.read_text()) == fake == json.loads(js.read_text())
