"""Distil the relufied student from the SwiGLU teacher: only the LoRA pairs train.

Loss per step: KL(teacher || student) of the next-token distributions (temperature 1, mean over positions, as
compress/update.py's `distill_loss`) + coef * L1, where L1 is the mean of act(gate) over layers, tokens and
neurons (ProSparse's activation penalty; act >= 0, so it is the mean itself). The coefficient either warms up
linearly from 0 to --l1 over the first L1_WARMUP of the run (ProSparse's progressive penalty), or, with a target
sparsity, is steered: multiplied each step by exp(GAIN * (target_t - sparsity of the batch)), where target_t
rises linearly from the step-0 sparsity to the target over the same warm-up, so the penalty is as strong as the
target needs and no stronger (the quality cost of sparsity is paid only up to the target).

The swap itself is gradual: over the first BLEND of the run the student's activation is blend * act(gate) +
(1 - blend) * silu(gate), blend rising linearly from 0 (the teacher exactly) to 1. An abrupt swap multiplies
SmolLM2's held-out perplexity by 272x (shifted ReLU 0.25) to 7.5e5x (ReLU^2) before any training
(dev/relufy/zero-shot-cpu-2026-12-03.json), a start
the LoRA pairs would have to climb back from; faded, the pairs track the change as it happens.
Sparsity and the L1 term always measure act(gate), the activation the model ends with.

AdamW (weight decay 0) on the LoRA parameters in fp32, linear warm-up then cosine to a tenth (compress/update.py's
`lr_at`), gradients clipped to norm 1; on CUDA the frozen base runs in bf16 and the step under bf16 autocast. The
teacher's logits are computed each step (no_grad), not stored: at 16 x 512 tokens they are 1.6 GB in fp32.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from ..compress.update import CLIP, FLOOR, WARMUP, lr_at
from ..llm.model import Transformer
from ..offload.activations import progress_bar, run_tokens, sdpa_attention
from .student import ffns

BLEND = 0.3  # default fraction of the run over which the student's activation fades from SiLU to act(gate)
L1_WARMUP = 0.5  # fraction of the run over which the L1 coefficient (or the sparsity target) ramps up
GAIN = 2.0  # target mode: log-coefficient change per unit of sparsity error per step
COEF_RANGE = (1e-6, 1e3)


@dataclass
class TrainConfig:
    steps: int = 1000
    batch: int = 16
    lr: float = 1e-3
    l1: float = 0.0
    target_sparsity: float | None = None
    seed: int = 0
    blend: float = BLEND  # fraction of the run over which SiLU is faded out (0: the swap is abrupt at step 0)
    budget_s: float | None = None  # cap on training seconds: fewer steps when the measured step time needs it


def check_config(cfg: TrainConfig) -> None:
    """One-line errors for the training settings, before any work."""
    if not isinstance(cfg.steps, int) or cfg.steps < 1:
        raise ValueError(f"--steps must be a positive integer, got {cfg.steps!r}")
    if not isinstance(cfg.batch, int) or cfg.batch < 1:
        raise ValueError(f"--batch must be a positive integer, got {cfg.batch!r}")
    if not math.isfinite(cfg.lr) or cfg.lr <= 0:
        raise ValueError(f"--lr must be a positive learning rate, got {cfg.lr}")
    if not math.isfinite(cfg.l1) or cfg.l1 < 0:
        raise ValueError(f"--l1 must be >= 0, got {cfg.l1}")
    if cfg.target_sparsity is not None:
        if not 0 < cfg.target_sparsity < 1:
            raise ValueError(f"--target-sparsity must be in (0, 1), got {cfg.target_sparsity}")
        if cfg.l1 <= 0:
            raise ValueError("--target-sparsity steers the L1 coefficient from --l1; give --l1 > 0 as its start")
    if not 0 <= cfg.blend < 1:
        raise ValueError(f"--blend must be a fraction of the run in [0, 1), got {cfg.blend}")
    if cfg.budget_s is not None and not cfg.budget_s > 0:
        raise ValueError(f"--budget-s must be > 0 seconds, got {cfg.budget_s}")


def autocast(device: torch.device):
    return torch.autocast("cuda", torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


def student_logits(student: Transformer, tokens: torch.Tensor) -> torch.Tensor:
    """(B, T) -> (B, T, V) fp32 with autograd: a fresh KV cache each call, so no step's graph reaches the next
    through the cache buffers (compress/update.py's `_forward`)."""
    student.setup_cache(tokens.shape[0], tokens.shape[1])
    return student(tokens, 0)


def kl(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean over positions of KL(teacher || student), both (B, T, V) logits."""
    logp = F.log_softmax(student.float().flatten(0, 1), dim=-1)
    logq = F.log_softmax(teacher.float().flatten(0, 1), dim=-1)
    return F.kl_div(logp, logq, log_target=True, reduction="batchmean")


@torch.no_grad()
def mean_kl(teacher: Transformer, student: Transformer, rows: torch.Tensor, batch: int = 8) -> float:
    """KL(teacher || student) averaged over every row of `rows` (N, T), the training measure without training."""
    dev = student.norm.weight.device
    total, n = 0.0, 0
    with sdpa_attention(teacher), sdpa_attention(student), autocast(dev):
        for i in range(0, rows.shape[0], batch):
            x = rows[i:i + batch].to(dev)
            total += float(kl(student_logits(student, x), run_tokens(teacher, x))) * x.shape[0]
            n += x.shape[0]
    student.cache_len = 0
    return total / n


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def train(teacher: Transformer, student: Transformer, rows: torch.Tensor, cfg: TrainConfig,
          progress: bool = False) -> dict:
    """Train the student's LoRA pairs in place on `rows` ((N, T) long tokens, CPU) for cfg.steps steps of
    cfg.batch rows each (a fresh seeded permutation per pass). Returns the settings and the loss curve; the
    student ends in eval mode with nothing requiring grad."""
    check_config(cfg)
    dev = student.norm.weight.device
    layers = ffns(student)
    params = [p for f in layers for p in f.lora.values()]
    if not params:
        raise ValueError("the student has no LoRA parameters to train (make_student with rank > 0)")
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(cfg.seed)
    order: list[int] = []

    def next_rows() -> torch.Tensor:
        nonlocal order
        take = []
        while len(take) < cfg.batch:
            if not order:
                order = torch.randperm(rows.shape[0], generator=gen).tolist()
            take.append(order.pop())
        return rows[take].to(dev)

    use_l1 = cfg.l1 > 0
    for f in layers:
        f.keep_act = use_l1

    def step_loss(x: torch.Tensor, coef: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            target = run_tokens(teacher, x)
        logits = student_logits(student, x)
        d = kl(logits, target)
        acts = [f.last_act for f in layers] if use_l1 else []
        l1 = torch.stack([a.float().mean() for a in acts]).mean() if acts else d.new_zeros(())
        del target, logits
        return d + coef * l1, d.detach(), l1.detach()

    requested = cfg.steps
    steps = cfg.steps
    with sdpa_attention(teacher), sdpa_attention(student):
        if cfg.budget_s is not None:  # time 3 forward+backward passes (the first warms up), no optimizer step
            student.train()
            for f in layers:
                f.blend = 0.5 if cfg.blend > 0 else 1.0  # the SiLU branch costs time too
            times = []
            for _ in range(3):
                _sync(dev)
                t = time.perf_counter()
                with autocast(dev):
                    loss, _, _ = step_loss(next_rows(), cfg.l1)
                loss.backward()
                _sync(dev)
                times.append(time.perf_counter() - t)
            for p in params:
                p.grad = None
            per_step = 1.08 * min(times[1:])  # + the optimizer step and bookkeeping
            steps = max(10, min(cfg.steps, int(cfg.budget_s / per_step)))
            order = []
            gen.manual_seed(cfg.seed)  # the run itself starts from the same permutation as without a budget
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
        coef = cfg.l1 if cfg.target_sparsity is not None else 0.0
        warm = max(1, int(L1_WARMUP * steps))
        s0 = None
        curve: list[tuple[float, float, float, float]] = []  # (kl, l1, sparsity of the batch, coef)
        prog, task = progress_bar(f"distilling (rank {layers[0].rank}, lr {cfg.lr:g})", steps, progress)
        t1 = time.perf_counter()
        try:
            student.train()
            with prog:
                for step in range(steps):
                    if cfg.target_sparsity is None:
                        coef = cfg.l1 * min(1.0, step / warm)
                    fade = min(1.0, step / (cfg.blend * steps)) if cfg.blend > 0 else 1.0
                    for f in layers:
                        f.blend = fade
                    for g in opt.param_groups:
                        g["lr"] = lr_at(step, steps, cfg.lr)
                    for f in layers:
                        f.stats = [torch.zeros((), device=dev, dtype=torch.long) for _ in range(2)]
                    with autocast(dev):
                        loss, d, l1 = step_loss(next_rows(), coef)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(params, CLIP)
                    opt.step()
                    sp = float(sum(f.stats[0] for f in layers) / sum(f.stats[1] for f in layers))
                    curve.append((float(d), float(l1), sp, coef))
                    if cfg.target_sparsity is not None:
                        s0 = sp if s0 is None else s0
                        goal = s0 + (cfg.target_sparsity - s0) * min(1.0, (step + 1) / warm)
                        coef = min(max(coef * math.exp(GAIN * (goal - sp)), COEF_RANGE[0]), COEF_RANGE[1])
                    k = curve[-20:]
                    prog.update(task, advance=1, info=f"KL {sum(c[0] for c in k) / len(k):.4f} "
                                f"sparsity {sp:.3f} L1 coef {coef:.3g} lr {opt.param_groups[0]['lr']:.2g}")
        finally:
            student.eval()
            for f in layers:
                f.keep_act, f.last_act, f.stats, f.blend = False, None, None, 1.0
            for p in params:
                p.requires_grad_(False)
                p.grad = None
            student.cache_len = teacher.cache_len = 0
    train_s = time.perf_counter() - t1
    every = max(1, steps // 50)

    def window(j: int) -> list[float]:
        return [sum(c[j] for c in curve[i:i + every]) / len(curve[i:i + every]) for i in range(0, steps, every)]

    return {**asdict(cfg), "steps": steps, "steps_requested": requested, "seq_len": rows.shape[1],
            "rows": rows.shape[0], "tokens_seen": steps * cfg.batch * rows.shape[1],
            "optimizer": "AdamW (weight decay 0), LoRA parameters in fp32",
            "schedule": f"linear warm-up {WARMUP:.0%}, cosine to {FLOOR}x", "grad_clip": CLIP,
            "l1_schedule": (f"target sparsity ramped over {L1_WARMUP:.0%}, coefficient steered (gain {GAIN})"
                            if cfg.target_sparsity is not None else f"linear warm-up over {L1_WARMUP:.0%}"),
            "autocast": "bf16" if dev.type == "cuda" else "none (fp32)",
            "params_trained": sum(p.numel() for p in params),
            "kl_first": curve[0][0], "kl_last20": sum(c[0] for c in curve[-20:]) / len(curve[-20:]),
            "sparsity_first": curve[0][2], "sparsity_last": curve[-1][2], "l1_coef_last": curve[-1][3],
            "curve_every": every, "kl_curve": window(0), "sparsity_curve": window(2), "l1_coef_curve": window(3),
            "seconds_per_step": train_s / steps, "train_s": train_s, "seconds": time.perf_counter() - t0}
