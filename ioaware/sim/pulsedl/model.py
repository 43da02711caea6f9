"""A small 1D CNN that reads a window of ADC samples and regresses the pulse's arrival time and amplitude.

Layers are the subset the integer engine supports (the paper restricts its quantisation scheme to "a selected
subset of layer types"): Conv1d with fused ReLU, MaxPool1d, Flatten, Linear with or without ReLU. No batch norm, so
there is nothing to fold before quantising. The same module trains in float and, with `qat=True`, with the integer
grid simulated (fake quantisation, straight-through gradients), which is how the 8-bit model is made.

Input: the ADC code minus the pedestal (doubled for small pulses: `pulses.front_end`), in full-scale units: exactly
S_in * x with S_in = the ADC's LSB, so the integer engine takes the front end's integers x themselves.

Output: [A * (t0 - t_mid), A], t_mid the middle of the arrival range in samples and A in full-scale units;
t0 = t_mid + out[0] / out[1]. Why the product: a ReLU network is nearly positively homogeneous in its input (scale
the pulse, the activations scale), so what it fits well grows with the amplitude; a time that must not move with
the amplitude is a division it would have to learn. With the product
and one division afterwards (a post-processing step, one per pulse: work for the SoC's RISC CPU), the same training
gave 52 ps instead of 72 ps at 47.4 dB (float, 4000 steps; README.md, 'How we got here').
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .pulses import PulseBatch, PulseConfig, crlb, front_end, simulate


@dataclass(frozen=True)
class NetConfig:
    channels: tuple[int, ...] = (8, 16, 16)
    kernels: tuple[int, ...] = (5, 5, 3)
    pools: tuple[int, ...] = (1, 2, 2)  # max-pool after each conv (1: none)
    hidden: int = 64
    range_switch: bool = True  # pulses.front_end's one-bit digital gain for small pulses

    def __post_init__(self):
        if not len(self.channels) == len(self.kernels) == len(self.pools) >= 1:
            raise ValueError("channels, kernels and pools need one entry per conv layer")
        if any(k % 2 == 0 for k in self.kernels):
            raise ValueError(f"kernels {self.kernels}: use odd sizes ('same' padding keeps the length)")

    def to_dict(self) -> dict:
        return asdict(self)


class PulseNet(nn.Module):
    def __init__(self, n_samples: int, net: NetConfig = NetConfig()):
        super().__init__()
        self.net = net
        self.n_samples = n_samples
        self.convs = nn.ModuleList()
        c_in, length = 1, n_samples
        for c, k, p in zip(net.channels, net.kernels, net.pools):
            self.convs.append(nn.Conv1d(c_in, c, k, padding=k // 2))
            c_in, length = c, length // p
        self.flat = c_in * length
        self.fc1 = nn.Linear(self.flat, net.hidden)
        self.fc2 = nn.Linear(net.hidden, 2)
        # quantisation state: off until `calibrate` sets the activation scales
        self.qat = False
        self.bits = 8
        self.input_scale = 1.0  # S_in: the ADC's LSB in full-scale units
        self.register_buffer("act_scale", torch.zeros(len(net.channels) + 1))

    # --- the integer grid, simulated in float (TFLite's scheme: see quant.py) ---
    def quantized_weight(self, w: torch.Tensor):
        qmax = 2 ** (self.bits - 1) - 1
        s = (w.detach().abs().max() / qmax).clamp_min(1e-12)
        return torch.fake_quantize_per_tensor_affine(w, float(s), 0, -qmax, qmax), float(s)

    def _bq(self, b: torch.Tensor, s_acc: float):
        # bias on the int32 accumulator's grid, rounding with a straight-through gradient
        return b + (torch.round(b / s_acc) * s_acc - b).detach()

    def _aq(self, h: torch.Tensor, i: int):
        lo = -(2 ** (self.bits - 1))
        return torch.fake_quantize_per_tensor_affine(h, float(self.act_scale[i]), lo, lo, 2 ** (self.bits - 1) - 1)

    def _layer(self, h, weight, bias, s_in, op):
        if not self.qat:
            return op(h, weight, bias)
        w, s_w = self.quantized_weight(weight)
        return op(h, w, self._bq(bias, s_in * s_w))

    def forward(self, x: torch.Tensor, record: list | None = None) -> torch.Tensor:
        """x: (B, W) volts above the pedestal. record, if given, collects each ReLU output (for calibration)."""
        h = x[:, None, :]
        s_in = self.input_scale
        for i, (conv, p) in enumerate(zip(self.convs, self.net.pools)):
            h = F.relu(self._layer(h, conv.weight, conv.bias, s_in,
                                   lambda a, w, b, pad=conv.padding[0]: F.conv1d(a, w, b, padding=pad)))
            if record is not None:
                record.append(h.detach())
            if self.qat:
                h, s_in = self._aq(h, i), float(self.act_scale[i])
            if p > 1:
                h = F.max_pool1d(h, p)
        h = h.flatten(1)
        h = F.relu(self._layer(h, self.fc1.weight, self.fc1.bias, s_in, F.linear))
        if record is not None:
            record.append(h.detach())
        if self.qat:
            h, s_in = self._aq(h, len(self.convs)), float(self.act_scale[len(self.convs)])
        # the last layer's int32 accumulator is the output: an 8-bit output would put a 0.39% step on the energy,
        # the size of the whole energy-resolution bar
        return self._layer(h, self.fc2.weight, self.fc2.bias, s_in, F.linear)

    @torch.no_grad()
    def calibrate(self, x: torch.Tensor, bits: int, input_scale: float) -> None:
        """Fix each activation's scale from its largest value on calibration pulses (min is 0 after ReLU), turn
        quantisation on. TFLite's post-ReLU tensors are the same: zero point at the bottom of the int8 range."""
        if not 2 <= bits <= 8:
            raise ValueError(f"bits={bits}: the int8 engine takes 2..8 bit weights and activations")
        self.qat, self.bits, self.input_scale = False, bits, input_scale
        rec: list[torch.Tensor] = []
        self(x, record=rec)
        qrange = 2**bits - 1
        self.act_scale.copy_(torch.tensor([float(r.max()) / qrange for r in rec]).clamp_min(1e-8))
        self.qat = True


def to_inputs(batch: PulseBatch, cfg: PulseConfig, switch: bool = True) -> tuple[torch.Tensor, np.ndarray]:
    """(network input in full-scale units, the front end's gain per pulse)."""
    x, gain = front_end(batch.codes, cfg, switch)
    return torch.from_numpy(x * cfg.lsb).float(), gain


def t_mid(cfg: PulseConfig) -> float:
    return cfg.t0_min + cfg.t0_span / 2


def targets(batch: PulseBatch, cfg: PulseConfig, gain: np.ndarray) -> torch.Tensor:
    """[t0 - t_mid, gain * A]: what the decoded output is compared with (the network sees the gained pulse)."""
    return torch.from_numpy(np.stack([batch.t0 - t_mid(cfg), batch.amp * gain], axis=1)).float()


AMP_FLOOR = 0.01  # the division's guard: a tenth of the smallest amplitude trained on (never reached in practice)


def _split(y):
    return y[:, 0] / y[:, 1].clamp_min(AMP_FLOOR), y[:, 1]


def decode(y: np.ndarray, cfg: PulseConfig, gain: np.ndarray):
    """Network output -> (t0 in samples, A); the front end's gain divides out of the amplitude, not the time."""
    y = np.asarray(y, dtype=np.float64)
    return y[:, 0] / np.maximum(y[:, 1], AMP_FLOOR) + t_mid(cfg), y[:, 1] / gain


@dataclass
class TrainConfig:
    steps: int = 8000
    qat_steps: int = 2000
    batch: int = 512
    lr: float = 3e-3
    qat_lr: float = 3e-4
    snr_db: float | tuple[float, float] = 47.4  # training SNR, or a (lo, hi) range drawn per pulse
    bits: int = 8
    seed: int = 0


def _loss(y: torch.Tensor, t: torch.Tensor, w_t: torch.Tensor, w_e: torch.Tensor) -> torch.Tensor:
    # each error in units of that pulse's Cramer-Rao bound, so every SNR in the mix weighs the same
    t_hat, a_hat = _split(y)
    dt = (t_hat - t[:, 0]) / w_t
    de = (a_hat / t[:, 1] - 1.0) / w_e
    return (dt * dt + de * de).mean()


def train(cfg: PulseConfig, tc: TrainConfig, net: NetConfig | None = None,
          progress: Callable[[int, int], None] | None = None, init: PulseNet | None = None
          ) -> tuple[PulseNet, PulseNet, dict]:
    """Float training on fresh pulses every step, then calibration and quantisation-aware fine-tuning.

    Returns (float model, quantisation-aware model, log); init: start from these float weights (modified in place).
    One intra-op thread: the layers are too small to split, and on a shared 2-core machine a second thread only
    waits (measured: 11 ms a step with one, 140 ms with two).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(cfg, tc, net or NetConfig(), progress, init)
    finally:
        torch.set_num_threads(threads)


def _train(cfg, tc, net, progress, init):
    torch.manual_seed(tc.seed)
    rng = np.random.default_rng(tc.seed)
    if init is None:
        model = PulseNet(cfg.n_samples, net)
        with torch.no_grad():
            # start the amplitude output at the mean amplitude: a random start near zero makes the time (a division
            # by it) explode, and its gradient swamps everything else for the first hundreds of steps
            model.fc2.weight.mul_(0.1)
            model.fc2.bias.copy_(torch.tensor([0.0, (cfg.amp_min + cfg.amp_max) / 2]))
    else:
        model = init
    model.train()
    ref = crlb(cfg, 0.0)  # the bound scales as 1/(A/sigma): at SNR s it is ref / 10^(s/20)
    ref_t = ref["time_ps"] / 1e3 / cfg.ts_ns
    ref_e = ref["energy_pct"] / 100
    total = tc.steps + tc.qat_steps
    log = {"loss": []}
    t_start = time.perf_counter()

    def run(steps, lr, offset):
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / max(steps, 1))))
        for s in range(steps):
            b = simulate(cfg, tc.batch, tc.snr_db, rng)
            k = torch.from_numpy(10.0 ** (-b.snr_db / 20)).float()
            x, gain = to_inputs(b, cfg, net.range_switch)
            loss = _loss(model(x), targets(b, cfg, gain), ref_t * k, ref_e * k)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            if s % 100 == 0:
                log["loss"].append([offset + s, float(loss.detach())])
            if progress:
                progress(offset + s + 1, total)

    run(tc.steps, tc.lr, 0)
    float_model = copy.deepcopy(model).eval()
    calib = simulate(cfg, 8192, tc.snr_db, rng)
    model.calibrate(to_inputs(calib, cfg, net.range_switch)[0], tc.bits, cfg.lsb)
    run(tc.qat_steps, tc.qat_lr, tc.steps)
    model.eval()
    log["seconds"] = time.perf_counter() - t_start
    return float_model, model, log


def predict(model: PulseNet, batch: PulseBatch, cfg: PulseConfig, qat: bool | None = None):
    """(t0, A) from the float model (qat=False) or its fake-quantised twin (qat=True)."""
    keep = model.qat
    if qat is not None:
        model.qat = qat
    with torch.no_grad():
        x, gain = to_inputs(batch, cfg, model.net.range_switch)
        y = model(x).double().numpy()
    model.qat = keep
    return decode(y, cfg, gain)
