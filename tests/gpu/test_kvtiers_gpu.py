"""KV tiers on a CUDA GPU (run on the device machine: `pytest -m gpu tests/gpu/test_kvtiers_gpu.py`): the device tier
through flash_decode's Triton kernel, DRAM pinned (near: CPU threads; move: pinned copy), the SSD worker; exact mode
equals the all-in-HBM model in fp32 (1e-5 relative) and within the 2x rule in bf16."""

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _model(dtype):
    from ioaware.bench.kv_tiers import _random_model

    shape = dict(dim=256, n_layers=3, n_heads=8, n_kv_heads=2, hidden_dim=512, vocab_size=1000, head_dim=64,
                 max_seq_len=4096)
    return _random_model(shape, "cuda", dtype)


def _run(m, ids, steps):
    with torch.inference_mode():
        m.setup_cache(1, ids.shape[1] + steps)
        out = [m(ids[:, :300], 0), m(ids[:, 300:], 300)]
        tok = out[-1][:, -1:].argmax(-1)
        for i in range(steps):
            out.append(m(tok, ids.shape[1] + i))
            tok = out[-1].argmax(-1)
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("modes", [{"dram": "near", "ssd": "near"}, {"dram": "move", "ssd": "move"}],
                         ids=["near", "move"])
def test_tiered_equals_all_in_hbm(tmp_path, dtype, modes):
    from ioaware.runtime.kvtiers import KVTierSpec, install_kv_tiers

    torch.manual_seed(0)
    m = _model(dtype)
    ids = torch.randint(0, 1000, (1, 700), device="cuda")
    ref = _run(m, ids, 6)
    a = m.args
    es = torch.empty(0, dtype=dtype).element_size()
    page = 2 * 16 * a.n_kv_heads * a.head_dim * es * a.n_layers
    tiers = install_kv_tiers(m, KVTierSpec(8 * page, 16 * page, str(tmp_path), seg_pages=4, modes=modes))
    try:
        got = _run(m, ids, 6)
        per = tiers.tokens_per_tier()
        assert per["ssd"] > 0 and per["dram"] > 0, per
    finally:
        tiers.close()
        m.kv_tiers = None
    if dtype == torch.float32:
        for r, g in zip(ref, got, strict=True):
            assert ((g - r).abs().max() / r.abs().max()).item() < 1e-5
    else:  # 2x rule: against an fp32 run of the same weights, no worse than twice the all-in-HBM bf16 run's error
        m32 = m.float()
        ref32 = _run(m32, ids, 0)
        for r, g, r32 in zip(ref[:2], got[:2], ref32, strict=True):
            assert (g - r32).abs().max() <= 2 * (r - r32).abs().max() + 1e-3


def test_bench_runs_on_cuda(tmp_path):
    """The benchmark's GPU path end to end at a small size (the bar run is the README's device command)."""
    from ioaware.bench.kv_tiers import main

    out = tmp_path / "kv.json"
    assert main(["--device", "cuda", "--model", "tiny", "--context", "2048", "--steps", "3", "--seg-pages", "4",
                 "--ssd", str(tmp_path), "--out", str(out), "--crossover", "64", "256"]) == 0
    import json

    res = json.loads(out.read_text())
    assert res["variants"]["tiered"]["tok_s"] > 0 and res["variants"]["move_all"]["tok_s"] > 0
