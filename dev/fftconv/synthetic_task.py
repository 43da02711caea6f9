"""A synthetic long-range task for long convolutions, generated in code: delayed copy through noise at L = 4096.

(`--lags D1 D2`: the harder variant, the target is the sum mod V of the tokens at two lags.)

Every position holds a random token from a vocabulary of V = 16. The model must output, at each of the last
`span` positions t, the token at t − D, with D = L − span (3840 at L = 4096, span = 256): the answer lies 3840
tokens back, and every position in between is a distractor from the same vocabulary. Chance is 1/V. A model that
solves it needs a kernel with weight at lag D and nothing the noise can leak through elsewhere; squash
(soft-thresholding, Fu et al. 2023) is the regulariser that asks for exactly that sparsity.

Model: token embedding → 2 gated long-conv blocks (H3/Hyena style: y = q ∘ (k_long ⊛ (k ∘ v)), the long kernel a
`LongConvKernel` per channel, computed by ioaware.fftconv with both gates fused) with an MLP each → linear head.
Two runs differ only in the squash threshold λ (smoothing on in both): `squash` (λ = 0.003) and `no-squash`
(λ = 0). Each trains for a fixed wall-clock budget; the log holds (step, seconds, loss, accuracy on a fixed
held-out batch).

    python dev/fftconv/synthetic_task.py --seconds 40 --out dev/fftconv/synthetic-h100.json   # on a GPU
    python dev/fftconv/synthetic_task.py --plot dev/fftconv/synthetic-h100.json                 # the figure
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
from torch import nn

sys.path.insert(0, os.getcwd())
import ioaware  # noqa: E402
from ioaware.nn import LongConvKernel  # noqa: E402


def make_batch(B: int, L: int, V: int, span: int, g: torch.Generator, device, lags=None):
    """Tokens (B, L) uniform over V; targets (B, span) for the last span positions t: (Σ_D x[t - D]) mod V over
    the lags (default one lag, L - span: the answer at position L - span + i is x[i])."""
    x = torch.randint(0, V, (B, L), generator=g)
    t = torch.arange(L - span, L)
    y = sum(x[:, t - D] for D in (lags or [L - span])) % V
    return x.to(device), y.to(device)


class GatedLongConvBlock(nn.Module):
    def __init__(self, d: int, L: int, lam: float, init_scale: float):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.proj = nn.Linear(d, 3 * d)
        self.kernel = LongConvKernel(d, L, lam=lam)
        with torch.no_grad():
            self.kernel.weight.normal_(0, init_scale)
        self.out = nn.Linear(d, d)
        self.norm2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x):  # x (B, L, d)
        q, k, v = self.proj(self.norm(x)).transpose(1, 2).chunk(3, dim=1)  # (B, d, L) each
        y = ioaware.fftconv(v.contiguous(), self.kernel(), True, pre_gate=k.contiguous(), post_gate=q.contiguous())
        x = x + self.out(y.transpose(1, 2))
        return x + self.mlp(self.norm2(x))


class Model(nn.Module):
    def __init__(self, V: int, d: int, L: int, layers: int, lam: float, init_scale: float):
        super().__init__()
        self.emb = nn.Embedding(V, d)
        self.blocks = nn.ModuleList(GatedLongConvBlock(d, L, lam, init_scale) for _ in range(layers))
        self.head = nn.Linear(d, V)

    def forward(self, x):
        h = self.emb(x)
        for b in self.blocks:
            h = b(h)
        return self.head(h)


def train(name: str, lam: float, a, device) -> dict:
    torch.manual_seed(a.seed)
    g = torch.Generator().manual_seed(a.seed)
    model = Model(a.vocab, a.d, a.L, a.layers, lam, a.init_scale).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.0)
    geval = torch.Generator().manual_seed(12345)
    xe, ye = make_batch(256, a.L, a.vocab, a.span, geval, device, a.lags)
    cuda = device.type == "cuda"
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)
    log = []

    def evaluate(step, t):
        model.eval()
        with torch.no_grad(), amp:
            logits = model(xe)[:, -a.span:].float()
        loss = nn.functional.cross_entropy(logits.reshape(-1, a.vocab), ye.reshape(-1)).item()
        acc = (logits.argmax(-1) == ye).float().mean().item()
        nz = [float((b.kernel().abs() > 0).float().mean()) for b in model.blocks]
        log.append({"step": step, "seconds": round(t, 2), "loss": loss, "acc": acc, "kernel_nonzero": nz})
        model.train()
        print(f"{name:10s} step {step:6d} t {t:6.1f}s loss {loss:.4f} acc {acc:.3f} nonzero {nz}", flush=True)

    t0 = time.time()
    step = 0
    evaluate(0, 0.0)
    next_eval = a.eval_every
    while True:
        t = time.time() - t0
        if t >= a.seconds or (a.steps and step >= a.steps):
            break
        x, y = make_batch(a.batch, a.L, a.vocab, a.span, g, device, a.lags)
        with amp:
            logits = model(x)[:, -a.span:].float()
        loss = nn.functional.cross_entropy(logits.reshape(-1, a.vocab), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if time.time() - t0 >= next_eval:
            if device.type == "cuda":
                torch.cuda.synchronize()
            evaluate(step, time.time() - t0)
            next_eval += a.eval_every
    if device.type == "cuda":
        torch.cuda.synchronize()
    evaluate(step, time.time() - t0)
    return {"name": name, "lam": lam, "log": log, "steps": step}


def plot(path: str, out: str | None = None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = json.load(open(path))
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.8))
    for run in res["runs"]:  # x: optimiser steps (the first run's first step also pays the kernels' compilation)
        s = [r["step"] for r in run["log"]]
        sec = run["log"][-1]["seconds"]
        ax[0].plot(s, [r["loss"] for r in run["log"]], ".-", label=f"{run['name']} (λ={run['lam']}), {sec:.0f} s")
        ax[1].plot(s, [r["acc"] for r in run["log"]], ".-", label=run["name"])
    a = res["args"]
    lags = a.get("lags") or [a["L"] - a["span"]]
    ax[0].set(xlabel="optimiser steps (batch 32)", ylabel="held-out loss", xscale="symlog",
              title=f"delayed copy through noise, L={a['L']}")
    ax[1].set(xlabel="optimiser steps (batch 32)", ylabel="held-out accuracy", ylim=(0, 1.02), xscale="symlog",
              title=f"Σ x[t-lag] mod {a['vocab']}, lags {lags}, chance {1 / a['vocab']:.3f}")
    ax[1].axhline(1 / a["vocab"], color="gray", ls=":", lw=1)
    for x in ax:
        x.set_xlim(left=0)
    ax[0].legend()
    fig.suptitle(f"2-layer gated long conv (d={a['d']}), ioaware.fftconv, {res.get('device', '')}", fontsize=9)
    fig.tight_layout()
    out = out or path.replace(".json", ".png")
    fig.savefig(out, dpi=110)
    print("plot written to", out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--L", type=int, default=4096)
    ap.add_argument("--span", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=16)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--lam", type=float, default=0.003)
    ap.add_argument("--init-scale", type=float, default=0.02)
    ap.add_argument("--seconds", type=float, default=40)
    ap.add_argument("--steps", type=int, default=0)
    ap.add_argument("--eval-every", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lags", type=int, nargs="*", default=None,
                    help="target = sum of the tokens at these lags mod V (default: one lag, L - span)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--plot", default=None, help="only draw the figure of a results file")
    a = ap.parse_args()
    if a.plot:
        plot(a.plot)
        return
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    runs = [train("squash", a.lam, a, device), train("no-squash", 0.0, a, device)]
    res = {"args": vars(a), "runs": runs,
           "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"}
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)
        print("results written to", a.out)


if __name__ == "__main__":
    main()
