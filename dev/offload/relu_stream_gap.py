"""Bytes against time on the relufied SmolLM2 at --memory-budget 50%: the same streamed run (gate-copy predictor,
5-token window) with the reader's merge gap as the iomodel sets it (read through gaps cheaper than one more request:
fewer, larger reads) and with no merge gap (only the predicted neurons' pages: fewest bytes, more requests). Each
case in a fresh runtime, the same prompt and token count, I/O priced on a curve re-measured on the store just before.

    .venv/bin/python dev/offload/relu_stream_gap.py [tokens]
    -> benchmarks/results/flash-relufied-gap-smollm2-cpu-2026-12-03.json
"""

import os
import sys
import time

import torch

from ioaware.cli.generate import _recheck_disk
from ioaware.files import write_json_atomic
from ioaware.runtime import generate
from ioaware.runtime.offload.session import open_streamed
from ioaware.runtime.offload.streamed_ffn import stream_summary
from ioaware.runtime.relufy.apply import resolve_adapter

OUT = "benchmarks/results/flash-relufied-gap-smollm2-cpu-2026-12-03.json"
PROMPT = "Explain in three sentences why reading memory, not arithmetic, limits how fast a language model writes text."


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 32
    torch.set_num_threads(2)
    cases, load = {}, [os.getloadavg()]
    for name in ("iomodel_gap", "no_gap"):
        model, rt, acct, tok, store = open_streamed(None, "50%", relufy=resolve_adapter(), max_new_tokens=n,
                                                    progress=False, count_prompt=lambda t: 64)
        if name == "no_gap":
            rt.reader.max_gap = 0
        rt.curve = _recheck_disk(store.path, rt.reader.chunk, rt.reader.threads)
        ids = tok.encode(tok.apply_chat_template([{"role": "user", "content": PROMPT}]))
        model.set_attention("sdpa")
        res = generate(model, tok, ids, n, stop_at_eos=False)
        s = stream_summary(rt, acct, res.summary["decode_s"])
        rt.close()
        s.pop("memory")
        cases[name] = {**s, "decode_tok_s": res.summary["decode_tok_s"], "tokens": res.tokens,
                       "disk_best_GBps": rt.curve["peak_GBps"], "load_average": os.getloadavg()}
        load.append(os.getloadavg())
        print(name, {k: cases[name][k] for k in ("flash_bytes_read_per_token", "flash_useful_bytes_per_token",
                                                  "bytes_vs_naive", "flash_io_s_per_token",
                                                  "flash_predicted_io_s_per_token", "read_merge_gap")}, flush=True)
        del model, rt
    write_json_atomic(OUT, {"what": __doc__.strip().splitlines()[0], "prompt": PROMPT, "new_tokens": n,
                            "budget": "50%", "relufy": str(resolve_adapter()), "cases": cases,
                            "same_tokens": cases["iomodel_gap"]["tokens"] == cases["no_gap"]["tokens"],
                            "machine": "2-core VM (CPU only), shared with other sessions", "load_average": load,
                            "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M:%S")})


if __name__ == "__main__":
    main()
