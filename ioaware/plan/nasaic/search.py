"""NASAIC's search: a REINFORCE controller that co-explores two networks and the heterogeneous ASIC under specs, and
the sequential baseline it is compared with (NAS for accuracy, then the best ASIC for the networks found).

Controller as in the group's rl_interface (FNAS, DAC'19): a recurrent cell of 35 hidden units, one softmax head per
decision, REINFORCE against an exponential-moving-average baseline, RMSProp. For every sampled pair of networks the
hardware is resampled up to HW_TRIES times; a design over the PE/bandwidth budget or violating a spec gets reward -1
and its networks are never trained (the paper's early pruning). A design that meets the specs is rewarded with the
mean proxy accuracy of its two networks plus W_HW times its mean slack to the specs.

One deviation: the paper's flat -1 for a spec violation gives REINFORCE no direction while nearly every sample
violates (0.2% of random samples meet this reproduction's specs), so a violation scores -clip(worst ratio - 1,
0.05, 1): closer to the specs is less bad, and every violating design still scores below every valid one (>= 0).
Over the PE or bandwidth budget stays a flat -1.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .accuracy import accuracy
from .costmodel import TEMPLATES
from .space import BWS, FILTERS, KERNELS, N_LAYERS, PES, Specs, asic_costs, best_hardware, within_budget

HIDDEN = 35  # rl_interface's controller width
HW_TRIES = 10  # rl_interface's num_hw_per_child
W_HW = 0.1  # weight of the mean spec slack in the reward: breaks ties between equally accurate designs toward the
# cheaper one without outweighing a point of accuracy (0.1 x slack <= 0.1)
EMA = 0.9  # reward baseline decay
LR = 0.01
TASKS = ("digits", "rotation")
NET_CHOICES = [len(FILTERS), len(KERNELS)] * N_LAYERS * 2
HW_CHOICES = [len(TEMPLATES), len(PES), len(BWS)] * 2


def decode_nets(idx) -> tuple:
    nets = []
    for n in range(2):
        base = n * 2 * N_LAYERS
        nets.append(tuple((FILTERS[idx[base + 2 * i]], KERNELS[idx[base + 2 * i + 1]]) for i in range(N_LAYERS)))
    return tuple(nets)


def decode_hw(idx) -> tuple:
    return tuple((TEMPLATES[idx[3 * j]], PES[idx[3 * j + 1]], BWS[idx[3 * j + 2]]) for j in range(2))


class Controller:
    def __init__(self, sizes: list[int], seed: int = 0):
        import torch
        import torch.nn as nn

        torch.manual_seed(seed)
        self.torch = torch
        self.sizes = sizes
        self.cell = nn.LSTMCell(HIDDEN, HIDDEN)
        self.embed = nn.ModuleList(nn.Embedding(n, HIDDEN) for n in sizes)
        self.heads = nn.ModuleList(nn.Linear(HIDDEN, n) for n in sizes)
        params = [*self.cell.parameters(), *self.embed.parameters(), *self.heads.parameters()]
        self.opt = torch.optim.RMSprop(params, lr=LR)
        self.gen = torch.Generator().manual_seed(seed)

    def sample(self, first: int, last: int, state=None, prev=None):
        """Sample decisions first..last-1 from `state`; returns (choices, sum log-prob, state after, last input)."""
        torch = self.torch
        h = state or (torch.zeros(1, HIDDEN), torch.zeros(1, HIDDEN))
        x = prev if prev is not None else torch.zeros(1, HIDDEN)
        out, logp = [], 0.0
        for d in range(first, last):
            h = self.cell(x, h)
            probs = torch.softmax(self.heads[d](h[0]), -1)
            c = int(torch.multinomial(probs[0], 1, generator=self.gen))
            logp = logp + torch.log(probs[0, c])
            out.append(c)
            x = self.embed[d](torch.tensor([c]))
        return out, logp, h, x

    def update(self, logps, rewards, baseline: float):
        loss = sum(-(r - baseline) * lp for lp, r in zip(logps, rewards))
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()


@dataclass
class Trace:
    episodes: list[dict] = field(default_factory=list)
    trainings: int = 0
    seconds: float = 0.0


def _accs(nets) -> tuple[float, float]:
    return accuracy(TASKS[0], nets[0]), accuracy(TASKS[1], nets[1])


def co_explore(specs: Specs, episodes: int = 200, seed: int = 0, progress=None) -> tuple[dict, Trace]:
    """NASAIC: networks and hardware sampled together; returns the best spec-meeting design and the trace."""
    t0 = time.perf_counter()
    ctl = Controller(NET_CHOICES + HW_CHOICES, seed)
    nn_ = len(NET_CHOICES)
    trace, baseline, best = Trace(), None, None
    seen = set()
    for ep in range(episodes):
        net_idx, net_lp, state, x = ctl.sample(0, nn_)
        nets = decode_nets(net_idx)
        logps, rewards = [], []
        for _ in range(HW_TRIES):
            hw_idx, hw_lp, _, _ = ctl.sample(nn_, nn_ + len(HW_CHOICES), state, x)
            hw = decode_hw(hw_idx)
            lat, en, area = asic_costs(nets, hw)
            ok = within_budget(hw) and specs.met(lat, en, area)
            rec = {"episode": ep, "nets": nets, "hw": hw, "latency_s": lat, "energy_j": en, "area_mm2": area,
                   "meets": ok}
            if not ok:
                logps.append(net_lp + hw_lp)
                worst = max(specs.ratios(lat, en, area))
                rewards.append(-1.0 if not within_budget(hw) else -float(np.clip(worst - 1, 0.05, 1.0)))
                trace.episodes.append(rec)
                continue
            if nets not in seen:
                seen.add(nets)
                trace.trainings += 2
            a = _accs(nets)
            slack = 1 - np.mean(specs.ratios(lat, en, area))
            r = float(np.mean(a)) + W_HW * float(slack)
            rec.update(acc=a, reward=r)
            trace.episodes.append(rec)
            logps.append(net_lp + hw_lp)
            rewards.append(r)
            if best is None or (np.mean(a), -sum(specs.ratios(lat, en, area))) > \
                    (np.mean(best["acc"]), -sum(specs.ratios(best["latency_s"], best["energy_j"], best["area_mm2"]))):
                best = rec
            break
        baseline = float(np.mean(rewards)) if baseline is None else EMA * baseline + (1 - EMA) * float(np.mean(rewards))
        ctl.update(logps, rewards, baseline)
        if progress:
            progress(ep + 1, episodes)
    trace.seconds = time.perf_counter() - t0
    return best, trace


def nas_then_asic(specs: Specs, episodes: int = 200, seed: int = 0, progress=None) -> tuple[dict, Trace]:
    """The sequential baseline: REINFORCE over the networks alone for accuracy, then the best hardware for the most
    accurate pair by exhaustive search (the design closest to the specs)."""
    t0 = time.perf_counter()
    ctl = Controller(NET_CHOICES, seed)
    trace, baseline, best = Trace(), None, None
    seen = set()
    for ep in range(episodes):
        idx, lp, _, _ = ctl.sample(0, len(NET_CHOICES))
        nets = decode_nets(idx)
        if nets not in seen:
            seen.add(nets)
            trace.trainings += 2
        a = _accs(nets)
        r = float(np.mean(a))
        trace.episodes.append({"episode": ep, "nets": nets, "acc": a, "reward": r})
        if best is None or r > np.mean(best["acc"]):
            best = {"nets": nets, "acc": a}
        baseline = r if baseline is None else EMA * baseline + (1 - EMA) * r
        ctl.update([lp], [r], baseline)
        if progress:
            progress(ep + 1, episodes)
    hw, (lat, en, area) = best_hardware(best["nets"], specs)
    best.update(hw=hw, latency_s=lat, energy_j=en, area_mm2=area,
                meets=within_budget(hw) and specs.met(lat, en, area))
    trace.seconds = time.perf_counter() - t0
    return best, trace
