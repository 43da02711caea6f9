"""Text for relufy: what the student is distilled on and what it is measured on. Nothing is downloaded.

Training: the teacher (the original SwiGLU model) writes its own text, sampled (temperature 0.9, top-p 0.95, fixed
seeds) from PROMPTS, many rows decoded as one batch; plus the shipped calibration text (the same model's
generations, ioaware/runtime/offload/data/). Each row is kept as the chat prompt's tokens followed by the answer up
to its end-of-turn token, so the student learns the chat distribution the runtime serves. PROMPTS share no prompt
with the held-out file's (dev/offload/make_calibration_text.py).

Held-out: `heldout.txt` (generated from other prompts) and the repo's own prose, README.md and docs/**/*.md with
fenced code, tables and doc directives stripped: real English text that is ours to carry.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import torch

from ..llm.model import Transformer
from ..llm.tokenizer import Tokenizer
from ..offload.activations import progress_bar, sdpa_attention
from ..offload.text import load_text

REPO = Path(__file__).resolve().parents[3]  # the source tree (absent when installed as a wheel)
TEMPERATURE, TOP_P = 0.9, 0.95
TEXT_FORMAT = "ioaware-relufy-text/1"

PROMPTS = [
    "Write a short story about a girl who builds a radio from spare parts.",
    "Explain how a rainbow forms.",
    "What is the difference between weather and climate?",
    "Write a Python function that checks whether a string is a palindrome, and explain it.",
    "Give me three tips for sleeping better.",
    "Describe the life cycle of a butterfly.",
    "What were the main achievements of the Roman Empire?",
    "How does a refrigerator keep food cold?",
    "Write a haiku about the sea, then explain its imagery.",
    "Explain what a black hole is to a curious teenager.",
    "How do I make a good cup of tea?",
    "What is machine learning, in simple terms?",
    "Write a friendly email inviting a neighbour to a garden party.",
    "Why do leaves change colour in autumn?",
    "Explain the rules of chess for a beginner.",
    "What causes earthquakes?",
    "Write a C function that reverses a linked list, with comments.",
    "Describe a walk through a forest after rain.",
    "How does the heart pump blood around the body?",
    "What are the pros and cons of working from home?",
    "Tell me about the invention of the printing press.",
    "Explain how interest on a savings account works.",
    "Write a dialogue between a detective and a suspect.",
    "How do airplanes stay in the air?",
    "What is the capital of Australia, and why was it chosen?",
    "Give a beginner's guide to growing tomatoes.",
    "Explain recursion with an example.",
    "What is a healthy breakfast, and why?",
    "Describe the planets of the solar system.",
    "Write a motivational speech for a school sports team.",
    "How do bees make honey?",
    "Explain the difference between a list and a tuple in Python.",
    "What happened during the first moon landing?",
    "How can I improve my public speaking?",
    "Write a short mystery set on a train.",
    "What is electricity and how does it reach our homes?",
    "Summarise the story of Romeo and Juliet.",
    "How do glaciers shape the landscape?",
    "Explain what DNA is and what it does.",
    "Write a shopping list for a week of simple dinners, with reasons.",
    "What is the greenhouse effect?",
    "Describe how a train station works on a busy morning.",
    "How should I prepare for a job interview?",
    "Explain binary numbers with examples.",
    "Write a bedtime story about a dragon who is afraid of the dark.",
    "Why do we have seasons?",
    "What are prime numbers, and why do they matter?",
    "Describe the taste and history of chocolate.",
]


def _sample(logits: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """(B, V) logits -> (B, 1) tokens: temperature TEMPERATURE, nucleus TOP_P (as make_calibration_text.py)."""
    probs = torch.softmax(logits.float() / TEMPERATURE, dim=-1)
    p, idx = probs.sort(dim=-1, descending=True)
    p = p * (p.cumsum(-1) - p < TOP_P)
    return idx.gather(1, torch.multinomial(p / p.sum(-1, keepdim=True), 1, generator=gen))


@torch.inference_mode()
def generate_tokens(model: Transformer, tok: Tokenizer, n_tokens: int, seed: int = 0, batch: int = 256,
                    gen_len: int = 448, prompts: list[str] | None = None, progress: bool = False) -> torch.Tensor:
    """At least `n_tokens` tokens (int32, 1-D, cut to n_tokens) of the model's own chat answers: rounds of `batch`
    rows decoded together, row j of round r answering prompt (r * batch + j) mod len(prompts), each round seeded
    with seed + r. Prompts are left-padded with newlines to one length (one start position per step); the padding
    is not kept. A row ends at its end-of-turn token or after gen_len tokens."""
    prompts = prompts or PROMPTS
    dev = model.norm.weight.device
    ids = [tok.encode(tok.apply_chat_template([{"role": "user", "content": p}])) for p in prompts]
    nl = tok.encode("\n")[-1]
    stops = torch.tensor(sorted(set(tok.eos_ids)) or [-1], device=dev)
    stream: list[int] = []
    prog, task = progress_bar(f"teacher writes its text ({batch} rows a round)", n_tokens, progress)
    r = 0
    with prog, sdpa_attention(model):
        while len(stream) < n_tokens:
            rows = [ids[(r * batch + j) % len(ids)] for j in range(batch)]
            T = max(len(x) for x in rows)
            x = torch.tensor([[nl] * (T - len(i)) + i for i in rows], device=dev)  # (B, T)
            model.setup_cache(batch, T + gen_len)
            gen = torch.Generator(dev).manual_seed(seed + r)
            out = torch.empty(batch, gen_len, dtype=torch.long, device=dev)
            done = torch.zeros(batch, dtype=torch.bool, device=dev)
            logits = model(x, 0, last_only=True)[:, -1]  # (B, V)
            n = 0
            for step in range(gen_len):
                nxt = _sample(logits, gen)  # (B, 1)
                out[:, step] = nxt[:, 0]
                done |= torch.isin(nxt[:, 0], stops)
                n = step + 1
                if step % 16 == 15 and bool(done.all()):  # a sync every 16 steps, not every step
                    break
                if step + 1 < gen_len:
                    logits = model(nxt, T + step)[:, -1]
            before = len(stream)
            for prompt, row in zip(rows, out[:, :n].tolist(), strict=True):
                cut = next((k + 1 for k, t in enumerate(row) if t in tok.eos_ids), len(row))  # keep the stop token
                stream += prompt + row[:cut]
            prog.update(task, advance=min(len(stream), n_tokens) - min(before, n_tokens),
                        info=f"round {r + 1}, {len(stream)} tokens")
            r += 1
    model.cache_len = 0
    return torch.tensor(stream[:n_tokens], dtype=torch.int32)


def text_key(model_sha256: str, n_tokens: int, seed: int, batch: int, gen_len: int) -> dict[str, str]:
    """What a cached text must match to be reused: the model file, the prompts and every sampling setting."""
    prompts = hashlib.sha256("\n".join(PROMPTS).encode()).hexdigest()
    return {"format": TEXT_FORMAT, "model_sha256": model_sha256, "tokens": str(n_tokens), "seed": str(seed),
            "batch": str(batch), "gen_len": str(gen_len), "prompts_sha256": prompts,
            "sampling": json.dumps({"temperature": TEMPERATURE, "top_p": TOP_P})}


def cached_tokens(path: str | Path | None, key: dict[str, str]) -> torch.Tensor | None:
    """The teacher's text stored at `path` if its settings equal `key`, else None (then it is generated again)."""
    if path is None or not Path(path).is_file():
        return None
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="pt") as f:
            if dict(f.metadata() or {}) != key:
                return None
            return f.get_tensor("tokens")
    except Exception:  # a torn or foreign file is regenerated, never trusted
        return None


def store_tokens(path: str | Path, tokens: torch.Tensor, key: dict[str, str]) -> None:
    from safetensors.torch import save_file
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_file({"tokens": tokens.to(torch.int32).contiguous()}, str(tmp), metadata=key)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def chunks(stream: torch.Tensor | list[int], seq_len: int) -> torch.Tensor:
    """A 1-D token stream cut into (N, seq_len) rows; the short tail is dropped."""
    t = torch.as_tensor(stream, dtype=torch.long)
    n = t.numel() // seq_len
    return t[:n * seq_len].view(n, seq_len)


_FENCE = re.compile(r"^\s*(```|~~~)")


def strip_markdown(text: str) -> str:
    """Markdown prose without fenced code, tables, HTML comments, doc directives (`::: x`) or link targets."""
    out, fenced = [], False
    text = re.sub(r"<!--.*?-->", "", text, flags=re.S)
    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            continue
        s = line.strip()
        if fenced or s.startswith("|") or s.startswith(":::"):
            continue
        line = re.sub(r"\]\([^)]*\)", "]", line)  # [text](target) -> [text]
        out.append(line)
    return re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip() + "\n"


def repo_prose(root: str | Path | None = None) -> tuple[str, list[str]]:
    """README.md and docs/**/*.md of the source tree, stripped (strip_markdown), and the files read. ('', []) when
    the tree is not there (an installed wheel)."""
    root = Path(root) if root is not None else REPO
    files = [root / "README.md"] if (root / "README.md").is_file() else []
    files += sorted((root / "docs").rglob("*.md")) if (root / "docs").is_dir() else []
    parts = [strip_markdown(f.read_text(encoding="utf-8")) for f in files]
    return "\n".join(p for p in parts if p.strip()), [str(f.relative_to(root)) for f in files]


def heldout_texts(tok: Tokenizer, seq_len: int, max_tokens: int = 16384) -> dict[str, dict]:
    """The two held-out texts as (1, seq_len) chunks (the shorter tail kept when >= 16 tokens), with what they
    are: {"generated": ..., "repo_prose": ...} (the latter absent outside the source tree)."""
    out = {}
    prose, files = repo_prose()
    for name, text, source in (("generated", load_text("heldout"), ["ioaware/runtime/offload/data/heldout.txt"]),
                               ("repo_prose", prose, files)):
        if not text.strip():
            continue
        ids = tok.encode(text)[:max_tokens]
        batches = [torch.tensor([ids[i:i + seq_len]]) for i in range(0, len(ids), seq_len)]
        out[name] = {"batches": [b for b in batches if b.shape[1] >= 16], "sources": source,
                     "sha256": hashlib.sha256(text.encode()).hexdigest()}
    return out
