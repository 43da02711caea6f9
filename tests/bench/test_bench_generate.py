"""benchmarks/bench_generate.py's CPU harness (#30 item 4): the interleaved order, the summary, the prompts, and
real provider children on a tiny GGUF (ioaware, transformers; llama.cpp when llama-cpp-python is installed)."""

from __future__ import annotations

import importlib.util
import statistics
from pathlib import Path

import pytest

from tests.runtime.helpers import byte_vocab, tiny_hf_model, write_gguf

ROOT = Path(__file__).resolve().parents[2]
VOCAB = len(byte_vocab()[0])
HAVE_LLAMA = importlib.util.find_spec("llama_cpp") is not None


def _load():
    spec = importlib.util.spec_from_file_location("bench_generate", ROOT / "benchmarks" / "bench_generate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


bg = _load()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("bg")
    return write_gguf(d / "tiny.gguf", tiny_hf_model(VOCAB, seed=3), context=128)


def test_interleaved_order_rotates_and_runs_each_once_per_round():
    order = bg.interleaved_order(["A", "B", "C"], 5)
    assert order == [["A", "B", "C"], ["B", "C", "A"], ["C", "A", "B"], ["A", "B", "C"], ["B", "C", "A"]]
    assert all(sorted(r) == ["A", "B", "C"] for r in order)


def test_summarize_medians_ranges_and_same_round_ratios():
    def run(dec, pre, ttft, rss):
        return {"decode_tok_s": dec, "prefill_tok_s": pre, "time_to_first_token_s": ttft, "peak_rss_bytes": rss,
                "load_s": 0.1}
    runs = {"p": {"ours": [run(10, 100, 1.0, 300), run(30, 200, 2.0, 100), run(20, 300, 3.0, 200)],
                  "llama.cpp": [run(20, 50, 0.5, 50), run(20, 100, 0.5, 50), run(40, 100, 0.5, 50)]}}
    s = bg.summarize(runs, "llama.cpp")["p"]
    assert s["ours"]["decode_tok_s"] == {"median": 20, "min": 10, "max": 30, "n": 3}
    assert s["ours"]["peak_rss_bytes"]["median"] == 200
    ratios = [10 / 20, 30 / 20, 20 / 40]  # paired by round, not medians divided
    assert s["ours"]["decode_tok_s_vs_llama.cpp_same_round"]["median"] == statistics.median(ratios)
    assert s["ours"]["prefill_tok_s_vs_llama.cpp_same_round"]["max"] == 3.0  # 300 / 100 in round 3
    assert "decode_tok_s_vs_llama.cpp_same_round" not in s["llama.cpp"]
    assert bg.summarize(runs, None)["p"]["ours"].keys() >= {"decode_tok_s", "runs"}


def test_cpu_flags_and_name():
    every, some = bg.cpu_flags(every=True), bg.cpu_flags()
    assert set(some) <= set(every) and set(some) <= set(bg.CPU_FLAGS)
    if Path("/proc/cpuinfo").exists():
        assert every and bg.cpu_name()


def test_prompts_short_and_long(tiny):
    from ioaware.runtime import load_checkpoint

    tok = load_checkpoint(tiny).tokenizer
    ps = bg.prompts_for(tok, 40)
    (short, s), (long_, lg) = ps.items()
    assert short.startswith(f"{len(s['ids'])}-token chat") and tok.encode(s["text"]) == s["ids"]
    assert len(lg["ids"]) >= 40 and tok.encode(lg["text"], add_bos=False) == lg["ids"]
    assert lg["text"].endswith(bg.LONG_TEXT)  # whole sentences: a peer's tokenizer sees the same text


@pytest.fixture(scope="module")
def children(tiny):
    """Each provider once, in its own process, on the tiny GGUF (one run each serves every test below)."""
    from ioaware.runtime import load_checkpoint

    p = next(iter(bg.prompts_for(load_checkpoint(tiny).tokenizer, 30).values()))
    names = ["ioaware", "transformers"] + (["llama.cpp"] if HAVE_LLAMA else [])
    return p, {k: bg.run_provider_child(k, str(tiny), p, 6, 1, timeout=300) for k in names}


@pytest.mark.slow  # a child process per provider (the `children` fixture)
@pytest.mark.parametrize("provider", ["ioaware", "transformers", pytest.param("llama.cpp", marks=pytest.mark.skipif(
    not HAVE_LLAMA, reason="llama-cpp-python is not installed (make peers)"))])
def test_provider_child_runs_in_its_own_process(children, provider):
    p, runs = children
    r = runs[provider]
    assert r["provider"] == provider and len(r["tokens"]) == 6 and r["prompt_tokens"] == len(p["ids"])
    assert r["decode_tok_s"] > 0 and r["prefill_tok_s"] > 0 and r["time_to_first_token_s"] >= r["load_s"] > 0
    assert 0 < r["peak_rss_bytes"] <= r["wait4_maxrss_bytes"]
    if provider != "transformers":
        assert r["tokenized_ids_match"] is True  # its own tokenizer gives the ids every provider was fed


@pytest.mark.slow
def test_provider_children_agree_greedily(children):
    """ioaware's and transformers' greedy tokens on the same fp32 weights: the harness compares like with like."""
    _, runs = children
    assert bg.compare(runs["ioaware"]["tokens"], runs["transformers"]["tokens"])["identical"], runs


def test_failed_child_says_which(tmp_path):
    with pytest.raises(RuntimeError, match="provider child ioaware failed"):
        bg.run_provider_child("ioaware", str(tmp_path / "missing.gguf"), {"text": "x", "ids": [1, 2]}, 3, 1)
