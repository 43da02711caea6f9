"""Text for the compression tool beyond the shipped 6k-token calibration file: the dense model's own samples (as much
as asked for, drawn at run time on the chosen device) and the English prose this repository carries.

Self-generated text (SVD-LLM's update needs more text than the shipped file; the update measured on those 6k tokens
fits them, 1.29x dense there against 3.32x on held-out text, README): chat prompts built from topic x task
templates, sampled at temperature 0.8, top-p 0.95 with a fixed seed, as `dev/offload/make_calibration_text.py`
made the shipped files. Every sixth topic is held out: the `train` split (whitening and the update) and the
`heldout` split (evaluation) never share a topic. Tokens are kept as sampled (no decode and re-encode), cut at the
end-of-turn token, joined by a blank line, and cut into fixed-length chunks.

Repository prose: README.md, docs/*.md and docs/guide/*.md with fenced code blocks, indented code, tables, HTML
and markup removed (inline code kept as words): real English the model never produced, an out-of-distribution
check.
(ioaware/runtime/relufy/text.py, written in parallel for the relufy tool, did not exist when this was written.)
"""

from __future__ import annotations

import hashlib
import random
import re
from pathlib import Path

import torch

from ..offload.activations import progress_bar

TEMPERATURE = 0.8
TOP_P = 0.95
HELDOUT_EVERY = 6  # topic i is held out when i % HELDOUT_EVERY == HELDOUT_EVERY - 1
SPLITS = ("train", "heldout")

TOPICS = [
    "a lighthouse keeper", "photosynthesis", "sorting algorithms", "the French Revolution", "vegetable soup",
    "the water cycle", "autumn in the mountains", "computer memory", "a bank heist", "learning a language",
    "viruses and bacteria", "a sailor's life in 1850", "the area of a circle", "a coastal market at dawn",
    "debouncing in JavaScript", "inflation", "volcanoes", "the Roman Empire", "training for a marathon",
    "how bicycles work", "robots and gardeners", "the colour of the sky", "vaccines", "SQL databases",
    "black holes", "bread baking", "the printing press", "honeybees", "electric cars", "chess openings",
    "ocean tides", "the human heart", "jazz music", "saving money", "the Moon landing", "rainforests",
    "recursion in programming", "ancient Egypt", "climate change", "a haunted library", "origami",
    "the immune system", "trains and railways", "Shakespeare's plays", "coffee", "earthquakes", "prime numbers",
    "a dragon who cannot fly", "public speaking", "the internet", "glaciers", "the Silk Road", "gardening",
    "probability", "a detective in Paris", "solar panels", "friendship", "the periodic table", "deserts",
    "writing a resume", "octopuses", "linked lists", "the Renaissance", "sleep", "a space station",
    "renewable energy", "the violin", "a lost cat", "compound interest", "mountaineering", "the Vikings",
    "regular expressions", "tea ceremonies", "wind turbines", "the nervous system", "a village festival",
]
TEMPLATES = [
    "Tell me a short story about {t}.",
    "Explain {t} to a ten-year-old.",
    "Write a detailed explanation of {t}, step by step.",
    "What are the most important facts about {t}?",
    "Write a short poem about {t}.",
    "Give me practical tips related to {t}.",
    "Write a dialogue between two friends discussing {t}.",
    "What are common misconceptions about {t}?",
    "Describe the history of {t} in a few paragraphs.",
    "Write a blog post about {t}.",
]


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"text split must be one of {', '.join(SPLITS)}, got {split!r}")


def prompts(split: str, seed: int = 0) -> list[str]:
    """Every prompt of `split` (topic x template), in a seeded order."""
    check_split(split)
    held = split == "heldout"
    out = [tpl.format(t=t) for i, t in enumerate(TOPICS) if (i % HELDOUT_EVERY == HELDOUT_EVERY - 1) == held
           for tpl in TEMPLATES]
    random.Random(f"{split}:{seed}").shuffle(out)
    return out


@torch.inference_mode()
def sample(model, tok, texts: list[str], n_new: int, seed: int, progress=None, task=None) -> list[list[int]]:
    """Sampled continuations (token ids, cut at the first end-of-turn token) of the chat prompts `texts`, decoded
    together as one batch. Prompts are left-padded with newlines to one length (the model takes one start position
    per step; a few blank lines before the chat turn do no harm), as the shipped text was made."""
    dev = model.norm.weight.device
    ids = [tok.encode(tok.apply_chat_template([{"role": "user", "content": p}])) for p in texts]
    nl = tok.encode("\n")[-1]
    T = max(len(x) for x in ids)
    x = torch.tensor([[nl] * (T - len(i)) + i for i in ids], device=dev)  # (B, T)
    model.setup_cache(x.shape[0], T + n_new)
    gen = torch.Generator(device=dev).manual_seed(seed)
    rows = torch.empty(x.shape[0], n_new, dtype=torch.long, device=dev)
    logits = model(x, 0, last_only=True)[:, -1]  # (B, V)
    for step in range(n_new):
        p, idx = torch.softmax(logits.float() / TEMPERATURE, dim=-1).sort(dim=-1, descending=True)
        p = p * (p.cumsum(-1) - p < TOP_P)  # nucleus: the smallest prefix holding TOP_P of the mass
        nxt = idx.gather(1, torch.multinomial(p / p.sum(-1, keepdim=True), 1, generator=gen))  # (B, 1)
        rows[:, step] = nxt[:, 0]
        if step + 1 < n_new:
            logits = model(nxt, T + step)[:, -1]
        if progress is not None:
            progress.update(task, advance=1)
    stops = set(tok.eos_ids)
    out = []
    for row in rows.tolist():
        cut = next((k for k, t in enumerate(row) if t in stops), len(row))
        out.append(row[:cut])
    return out


def generate_tokens(model, tok, n_tokens: int, split: str = "train", seed: int = 0, batch: int = 8,
                    tokens_per_prompt: int = 512, progress: bool = False) -> tuple[list[int], dict]:
    """At least `n_tokens` token ids of the model's own samples from `split`'s prompts (rounds of `batch` prompts,
    round r seeded seed * 1000 + r; the prompt list is reused, with fresh samples, if it runs out), and a record of
    how they were made."""
    if not isinstance(n_tokens, int) or n_tokens < 1:
        raise ValueError(f"the generated text needs >= 1 token, got {n_tokens}")
    ps = prompts(split, seed)
    sep = tok.encode("\n\n")
    ids: list[int] = []
    rounds = used = 0
    prog, task = progress_bar(f"sampling {split} text from the dense model", n_tokens, progress)
    old = getattr(model, "attn_impl", None)
    model.set_attention("sdpa")  # decode steps with a cache: SDPA is the runtime's path on both devices
    try:
        with prog:
            while len(ids) < n_tokens:
                texts = [ps[(used + k) % len(ps)] for k in range(batch)]
                used += batch
                before = len(ids)
                for row in sample(model, tok, texts, tokens_per_prompt, seed * 1000 + rounds):
                    if row:
                        ids.extend(row + sep)
                rounds += 1
                if len(ids) == before:
                    raise RuntimeError(f"sampling round {rounds} produced no tokens (every sample ended at once)")
                prog.update(task, completed=min(len(ids), n_tokens), info=f"round {rounds}: {len(ids)} tokens")
    finally:
        if old is not None:
            model.set_attention(old)
        model.cache_len = 0  # the sampling cache is sized for this batch; the next user sets up its own
    info = {"source": "dense model's own samples", "split": split, "seed": seed, "temperature": TEMPERATURE,
            "top_p": TOP_P, "prompts": min(used, len(ps)), "prompt_pool": len(ps), "rounds": rounds,
            "tokens_per_prompt": tokens_per_prompt, "tokens": len(ids[:n_tokens]),
            "sha256": hashlib.sha256(str(ids[:n_tokens]).encode()).hexdigest()[:16],
            "sample": tok.decode(ids[:64])}
    return ids[:n_tokens], info


def chunk_ids(ids: list[int], seq_len: int) -> list[torch.Tensor]:
    """(1, seq_len) chunks of `ids`; the tail shorter than seq_len is dropped (every chunk the same length, so
    they batch)."""
    return [torch.tensor([ids[i:i + seq_len]]) for i in range(0, len(ids) - seq_len + 1, seq_len)]


def batch_chunks(chunks: list[torch.Tensor], batch: int) -> list[torch.Tensor]:
    """Consecutive chunks of the same length stacked into (<= batch, T) tensors (a length change starts a new one)."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    out: list[list[torch.Tensor]] = []
    for c in chunks:
        if out and len(out[-1]) < batch and out[-1][0].shape[1] == c.shape[1]:
            out[-1].append(c)
        else:
            out.append([c])
    return [torch.cat(g) for g in out]


# -------------------------------------------------------------------------------------------- repository prose
_FENCE = re.compile(r"^\s*(```|~~~)")
_HTML = re.compile(r"<[^>]+>")
_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")  # [text](target) -> text


def prose(markdown: str) -> str:
    """The English of a markdown text: fenced and indented code, tables, HTML and link targets removed, headings,
    list markers and emphasis stripped, inline code kept as words (it is part of the sentences), paragraphs kept."""
    out, fenced = [], False
    for line in markdown.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if fenced or line.startswith(("    ", "\t")) or line.lstrip().startswith(("|", "<!--", ":::")):
            continue
        line = _LINK.sub(r"\1", _HTML.sub("", line)).replace("`", "")
        line = re.sub(r"^\s*(#+|[-*+]|\d+\.)\s+", "", line).replace("**", "").strip()
        out.append(line)
    text = "\n".join(out)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def repo_root() -> Path:
    return Path(__file__).resolve().parents[3]


def repo_prose_files(root: Path | None = None) -> list[Path]:
    root = root or repo_root()
    files = [root / "README.md", *sorted((root / "docs").glob("*.md")), *sorted((root / "docs" / "guide").glob("*.md"))]
    return [f for f in files if f.is_file()]


def repo_prose(root: Path | None = None) -> tuple[str, dict]:
    """The repository's prose (README.md, docs/*.md, docs/guide/*.md) and a record of it (files, SHA-256: the docs
    change over time, so a result names the exact text)."""
    files = repo_prose_files(root)
    if not files:
        raise FileNotFoundError(f"no README.md or docs/*.md under {root or repo_root()} (the repository's prose is "
                                "read from a source checkout)")
    text = "\n\n".join(prose(f.read_text(encoding="utf-8")) for f in files)
    base = root or repo_root()
    return text, {"source": "repository prose (code, tables and markup stripped)",
                  "files": [str(f.relative_to(base)) for f in files],
                  "sha256": hashlib.sha256(text.encode()).hexdigest()[:16], "chars": len(text)}
