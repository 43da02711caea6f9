"""Prefill + token-by-token decode with sampling, streaming and a summary of speed, memory and bandwidth."""

from __future__ import annotations

import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import torch

from .model import Block, Transformer
from .tokenizer import Tokenizer


@dataclass
class SamplingConfig:
    """How `generate` picks each token: greedy (temperature 0), or sampled at `temperature` from the smallest set
    of tokens whose probability reaches `top_p` (nucleus), seeded for reproducible runs.

    Examples:
        >>> SamplingConfig(temperature=0.7, top_p=0.9, seed=1).top_p
        0.9
        >>> SamplingConfig(top_p=0)
        Traceback (most recent call last):
        ...
        ValueError: --top-p must be in (0, 1], got 0
    """

    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"--temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"--top-p must be in (0, 1], got {self.top_p}")


class Sampler:
    """A `SamplingConfig` made callable: logits in, token id out (its own generator when sampling).

    Examples:
        >>> import torch
        >>> Sampler(SamplingConfig(), "cpu")(torch.tensor([0.1, 2.0, -1.0]))
        1
    """

    def __init__(self, cfg: SamplingConfig, device: torch.device | str):
        self.cfg = cfg
        self.gen: torch.Generator | None = None
        if cfg.temperature > 0:
            self.gen = torch.Generator(device=device)
            self.gen.manual_seed(cfg.seed if cfg.seed is not None else torch.seed())

    def __call__(self, logits: torch.Tensor) -> int:
        """logits: (vocab,) fp32 -> token id."""
        if self.cfg.temperature == 0:
            return int(logits.argmax())
        probs = torch.softmax(logits / self.cfg.temperature, dim=-1)
        if self.cfg.top_p < 1:
            p, idx = probs.sort(descending=True)
            keep = p.cumsum(-1) - p < self.cfg.top_p  # smallest prefix whose mass reaches top_p (>= 1 token)
            p = p * keep
            return int(idx[torch.multinomial(p / p.sum(), 1, generator=self.gen)])
        return int(torch.multinomial(probs, 1, generator=self.gen))


class TextStream:
    """Turns token ids into text pieces as they arrive; holds back an incomplete UTF-8 character, which
    byte-level BPE can split across tokens.

    Examples:
        >>> from ioaware.runtime import load_checkpoint
        >>> tok = load_checkpoint().tokenizer
        >>> pieces = []
        >>> stream = TextStream(tok, pieces.append)
        >>> for t in tok.encode("IO-aware"):
        ...     stream.put(t)
        >>> "".join(pieces)
        'IO-aware'
    """

    def __init__(self, tok: Tokenizer, emit: Callable[[str], None]):
        self.tok, self.emit, self.sent = tok, emit, 0
        self.ids: list[int] = []

    def put(self, token: int) -> None:
        """Add one token; emit the text it completes (nothing while a UTF-8 character is still split)."""
        self.ids.append(token)
        text = self.tok.decode(self.ids)
        if text.endswith("\ufffd"):
            return
        if len(text) > self.sent:
            self.emit(text[self.sent:])
            self.sent = len(text)


class CUDAGraphStep:
    """One decode step (`Transformer.decode_static`) captured in a CUDA graph: a replay launches the ~20 kernels
    of each of the model's layers at once instead of one by one from Python, which is what bounds a small model's
    decode speed on a GPU. Capture before prefill: the warm-up runs write cache slot 0, which prefill rewrites.
    CUDA only; `generate(..., cuda_graphs=True)` builds one.

    Examples:
        >>> import torch
        >>> from ioaware.runtime import load_checkpoint, build_model
        >>> if torch.cuda.is_available():             # doctest: +SKIP
        ...     model = build_model(load_checkpoint(), "cuda"); model.setup_cache(1, 64)
        ...     step = CUDAGraphStep(model)
        ...     logits = step(torch.tensor([[1]], device="cuda"), 0)   # (1, 1, vocab)
    """

    def __init__(self, model: Transformer, batch: int = 1, compile: bool = False):
        dev = model.output.weight.device
        # torch.compile fuses the step's elementwise work (RMSNorm, RoPE, SiLU, residuals) into a few kernels;
        # flash_decode stays one opaque op. Its own CUDA graphs are off: the whole step is captured below.
        step_fn = torch.compile(model.decode_static, dynamic=False) if compile else model.decode_static
        self.token = torch.zeros(batch, 1, dtype=torch.long, device=dev)
        self.pos = torch.zeros(1, dtype=torch.long, device=dev)
        s = torch.cuda.Stream(dev)
        s.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(s):
            for _ in range(2):
                step_fn(self.token, self.pos)
        torch.cuda.current_stream(dev).wait_stream(s)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = step_fn(self.token, self.pos)  # (B, 1, vocab), a static output buffer

    def __call__(self, token: torch.Tensor, pos: int) -> torch.Tensor:
        self.token.copy_(token)
        self.pos.fill_(pos)
        self.graph.replay()
        return self.logits


def weight_bytes_per_token(model: Transformer) -> int:
    """Bytes of weights one decode step reads: every parameter once (the tied embedding matrix is read whole
    by the output projection), less the embedding lookup's unread rows for an untied model.

    Examples:
        >>> from ioaware.runtime import ModelArgs, Transformer
        >>> model = Transformer(ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=128, vocab_size=100))
        >>> weight_bytes_per_token(model) == 4 * sum(p.numel() for p in model.parameters())   # fp32, tied embedding
        True
    """
    seen: set[int] = set()
    n = 0
    for name, p in model.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        if name == "tok_embeddings.weight" and model.output.weight is not p:
            n += p.shape[1] * p.element_size()  # one row
        else:
            n += p.numel() * p.element_size()
    for b in model.buffers():  # packed quantised weights live in buffers
        if getattr(b, "_ioaware_weight", False):
            n += b.numel() * b.element_size()
    return n


def peak_memory_bytes(device: torch.device) -> tuple[int, str]:
    """The process's peak memory so far on `device` and how it was measured (CUDA: allocator peak; CPU: peak RSS).

    Examples:
        >>> import torch
        >>> n, how = peak_memory_bytes(torch.device("cpu"))
        >>> n > 0, how
        (True, 'peak RSS of the process (ru_maxrss)')
    """
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "torch.cuda.max_memory_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "peak RSS of the process (ru_maxrss)"


@dataclass
class GenerationResult:
    """What `generate` returns: the new token ids (the stop token included, if one was produced), their text
    (without it), and the run's summary (prefill and decode speed, peak memory, bytes per token, achieved GB/s).

    Examples:
        >>> r = GenerationResult([42, 2], "Hi", {"decode_tok_s": 90.0})
        >>> r.text, r.summary["decode_tok_s"]
        ('Hi', 90.0)
    """

    tokens: list[int]
    text: str
    summary: dict[str, Any] = field(default_factory=dict)


@torch.inference_mode()
def generate(model: Transformer, tok: Tokenizer, prompt_ids: list[int], max_new_tokens: int,
             sampling: SamplingConfig | None = None, on_text: Callable[[str], None] | None = None,
             cuda_graphs: bool = False, stop_at_eos: bool = True, compile: bool = False,
             decode_step: str = "auto") -> GenerationResult:
    """Greedy or sampled continuation of `prompt_ids`. Streams text through `on_text` as tokens arrive.
    decode_step: 'auto' (on CPU, the fused step of cpu_decode.py where the model allows it) or 'module'.

    Examples:
        >>> from ioaware.runtime import load_checkpoint, build_model
        >>> ck = load_checkpoint()                      # the embedded SmolLM2-135M-Instruct
        >>> model = build_model(ck, "cpu")
        >>> ids = ck.tokenizer.encode(ck.tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}]))
        >>> r = generate(model, ck.tokenizer, ids, max_new_tokens=4, stop_at_eos=False)
        >>> len(r.tokens), isinstance(r.text, str), r.summary["decode_tok_s"] > 0
        (4, True, True)
    """
    sampling = sampling or SamplingConfig()
    a = model.args
    if not prompt_ids:
        raise ValueError("the prompt is empty; give some text with --prompt")
    if len(prompt_ids) >= a.max_seq_len:
        raise ValueError(f"the prompt has {len(prompt_ids)} tokens but the model's context is {a.max_seq_len}; "
                         "shorten it")
    if max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
    asked = max_new_tokens
    max_new_tokens = min(max_new_tokens, a.max_seq_len - len(prompt_ids))
    device = model.norm.weight.device
    model.setup_cache(1, len(prompt_ids) + max_new_tokens)
    if compile and not cuda_graphs:
        raise ValueError("compile=True compiles the CUDA-graph decode step; it needs cuda_graphs=True")
    # a decode step: (token (1, 1), position) -> logits (1, 1, vocab); None runs the module itself
    step: Callable[[torch.Tensor, int], torch.Tensor] | None = CUDAGraphStep(model, compile=compile) if cuda_graphs \
        else None
    if decode_step not in ("auto", "module"):
        raise ValueError(f"decode_step {decode_step!r} is not one of auto, module")
    step_kind = "CUDA graph" if step else "module"
    if step is None and decode_step == "auto" and device.type == "cpu":
        from .cpu_decode import CPUDecodeStep, supports

        if supports(model) is None:
            step, step_kind = CPUDecodeStep(model), "cpu fused"
    sampler = Sampler(sampling, device)
    stream = TextStream(tok, on_text) if on_text else None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        torch.cuda.synchronize(device)

    t0 = time.perf_counter()
    x = torch.tensor([prompt_ids], device=device)  # (1, T)
    logits = model(x, 0, last_only=True)  # (1, 1, vocab)
    nxt = sampler(logits[0, -1])  # .item() inside syncs the device, so the time below is real
    t1 = time.perf_counter()
    out = [nxt]
    stops = set(tok.eos_ids) if stop_at_eos else set()
    pos = len(prompt_ids)
    cur = torch.empty(1, 1, dtype=torch.long, device=device)
    while nxt not in stops and len(out) < max_new_tokens:
        if stream:
            stream.put(nxt)
        cur.fill_(nxt)
        logits = step(cur, pos) if step else model(cur, pos)  # (1, 1, vocab)
        pos += 1
        nxt = sampler(logits[0, -1])
        out.append(nxt)
    if stream and nxt not in stops:
        stream.put(nxt)
    t2 = time.perf_counter()

    n_dec = len(out) - 1  # tokens produced by decode steps (the first comes from prefill)
    wbytes = weight_bytes_per_token(model)
    first = cast(Block, model.layers[0])  # nn.ModuleList's items are typed as plain modules
    assert first.attention.cache is not None  # setup_cache above made it
    k_buf = first.attention.cache.k  # a registered buffer, which nn.Module's stubs type as tensor-or-module
    assert isinstance(k_buf, torch.Tensor)
    kv_elem = k_buf.element_size()
    mean_ctx = len(prompt_ids) + n_dec / 2
    kv_bytes = 2 * a.n_layers * mean_ctx * a.n_kv_heads * a.head_dim * kv_elem  # K and V read per step, mean
    peak, peak_how = peak_memory_bytes(device)
    dec_s = t2 - t1
    tok_s = n_dec / dec_s if n_dec and dec_s > 0 else 0.0
    summary = {
        "prompt_tokens": len(prompt_ids), "generated_tokens": len(out),
        "prefill_s": t1 - t0, "prefill_tok_s": len(prompt_ids) / (t1 - t0),
        "decode_s": dec_s, "decode_tokens": n_dec, "decode_tok_s": tok_s,
        "stopped_at_eos": nxt in stops,
        "stopped_at_context_limit": max_new_tokens < asked and len(out) >= max_new_tokens and nxt not in stops,
        "peak_memory_bytes": peak, "peak_memory_kind": peak_how,
        "weight_bytes_per_token": wbytes, "kv_bytes_per_token_mean": kv_bytes,
        "achieved_weight_GBps": wbytes * tok_s / 1e9, "achieved_total_GBps": (wbytes + kv_bytes) * tok_s / 1e9,
        "device": str(device), "dtype": str(model.norm.weight.dtype).replace("torch.", ""),
        "cuda_graphs": bool(cuda_graphs), "compiled_step": compile, "decode_step": step_kind,
        "threads": torch.get_num_threads(),
        "attention": model.attn_impl + (" prefill, flash_decode steps" if cuda_graphs
                                        and model.attn_impl == "flash_attn" else ""),
        "linear": model.linear_impl,
    }
    text = tok.decode([t for t in out if t not in stops])
    return GenerationResult(out, text, summary)
