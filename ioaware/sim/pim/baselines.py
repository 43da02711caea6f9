"""The baselines PIM-GPT is compared with, and the paper's figures.

GPU (an NVIDIA T4, as the paper's baseline): our iomodel roofline of each CUDA kernel of one Hugging Face GPT-2 decode
step, floored by the host's per-kernel dispatch time, since at batch 1 an eager framework launches hundreds of kernels
that each move little:

    t_step = sum over kernels of max(h, roofline_T4(kernel))

The big kernels (the four weight products per layer, the KV-cache concatenations and the two attention products, the
LM head) get their bytes from the model's shapes; all other kernels (LayerNorm, GELU's eight element-wise ops, the
reshapes, softmax, residuals) are floored at h. The kernel count and h are measured, not fitted by hand: on the GPU
lease (measured_h200.json, made by measure.py) the same HF decode was timed and its kernels counted, and h is the
measured time per kernel of the smallest model (all of whose kernels are host-bound on an H200). The same formula with
the H200's spec then predicts the H200's own measured times for the other models: that error is printed as the
model's validation.

CPU: measured, not modelled: the same HF decode in fp32 on the lease's host CPU (its model name is in the JSON).

The T4 spec is kept in this package (the hardware table is not ours to edit), with its datasheet as the source.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ...hardware.specs import HardwareSpec, get_spec
from ...iomodel.cost import Cost
from ...iomodel.roofline import roofline
from .gpt import MODELS, GPTConfig

_T4_DS = "NVIDIA T4 Tensor Core GPU datasheet (2019)"
T4 = HardwareSpec(
    key="t4", name="NVIDIA Tesla T4 16GB",
    peak_flops={"float16": 65e12, "float32": 8.1e12},
    hbm_bytes=16e9, hbm_bandwidth_Bps=320e9, l2_bytes=4 * 1024**2, smem_per_sm_bytes=64 * 1024, num_sms=40,
    pcie_Bps=15.75e9,
    sources={"flops": _T4_DS + ": 65 TFLOPS mixed-precision FP16 (tensor cores), 8.1 TFLOPS FP32",
             "hbm": _T4_DS + ": 16 GB GDDR6, 320+ GB/s", "l2": "Turing TU104: 4 MB L2",
             "smem": "compute capability 7.5: 64 KB shared memory per SM", "sms": "T4: 40 SMs (TU104, 2560 cores)",
             "pcie": "PCIe Gen3 x16: 15.75 GB/s each way"},
)
T4_BOARD_W = 70.0  # datasheet max board power; ASSUMED as the draw while decoding (the paper's reading: not in
# any retrievable text)
T4_POWER_SOURCE = _T4_DS + ": 70 W max board power (ASSUMED as the decode draw)"

MEASURED = Path(__file__).with_name("measured_h200.json")

# PIM-GPT's published figures (arXiv 2310.09385 v2 = npj Unconventional Computing 1, 2024, abstract). The per-model
# figures (the paper's results section) could not be retrieved: see PAPER_FACTS / NOT_RETRIEVED and the README.
PAPER = {
    "speedup_gpu": (41.0, 137.0),
    "speedup_cpu": (631.0, 1074.0),
    "energy_gpu": (123.0, 383.0),
    "energy_cpu": (320.0, 602.0),
}
PAPER_V1_ENERGY = {"energy_gpu": (339.0, 1085.0), "energy_cpu": (890.0, 1632.0)}  # arXiv v1 abstract, superseded
PAPER_PER_MODEL: dict[str, dict[str, float | None]] = {name: dict.fromkeys(PAPER) for name in MODELS}
PAPER_SOURCE = ("PIM-GPT, arXiv 2310.09385 v2 / npj Unconv. Comput. 2024, abstract: ranges over the 8 models; the "
                "per-model figures are not in any text retrievable here (ioaware/sim/pim/README.md, 'Paper facts')")

_NPJ_INTRO = "https://admaplace.com/pim-gpt-a-hybrid-process-in-memory-accelerator-for-autoregressive-transformers"
_V2_ABS = ("https://www.emergentmind.com/articles/2310.09385 and https://www.sciencestack.ai/paper/2310.09385 "
           "(arXiv v2 abstract); https://discovery.researcher.life/article/pim-gpt-a-hybrid-process-in-memory-"
           "accelerator-for-autoregressive-transformers/b8b331ddd97d3444bf1b3a841a74eeb6 (npj abstract)")
_V1_ABS = "https://ar5iv.labs.arxiv.org/html/2310.09385 (arXiv v1 abstract)"

# What the paper's retrievable text states, each with where it was read (search corpus 'pages', 2026-12-03). Only the
# opening of each stored page comes back (the abstract and the first paragraphs of the introduction), so this is all.
PAPER_FACTS: list[dict] = [
    {"fact": "speed-up over the GPU / CPU baseline, over the 8 models", "value": "41-137x / 631-1074x",
     "source": _V2_ABS + ", Abstract"},
    {"fact": "energy efficiency over the GPU / CPU baseline (v2)", "value": "123-383x / 320-602x",
     "source": _V2_ABS + ", Abstract"},
    {"fact": "energy efficiency over the GPU / CPU baseline (v1, superseded)", "value": "339-1085x / 890-1632x",
     "source": _V1_ABS + ", Abstract"},
    {"fact": "workload", "value": "8 GPT models with up to 1.4 billion parameters", "source": _V2_ABS + ", Abstract"},
    {"fact": "GPT3-XL size and arithmetic intensity", "value": "1.15 billion parameters; 2.1 ops/parameter per "
     "generated token (ResNet-18: 48.4)", "source": _NPJ_INTRO + " (npj text), Introduction, Fig. 1"},
    {"fact": "machine", "value": "DRAM-based PIM chips do the MACs in the DRAM chips; an ASIC does the non-linear "
     "functions, issues the PIM instructions and moves the data", "source": _V2_ABS + ", Abstract; " + _V1_ABS},
    {"fact": "mapping", "value": "matrices concatenated and partitioned among DRAM channels and banks so that every "
     "in-bank MAC unit works at once and rows are read with high locality", "source": _V2_ABS + ", Abstract"},
    {"fact": "evaluation method", "value": "circuit synthesis of the ASIC and an event-driven clock-cycle accurate "
     "simulator", "source": _V2_ABS + ", Abstract"},
    {"fact": "target", "value": "GPUs are inefficient for sequential token generation, 'particularly on-device "
     "inference applications'", "source": _V1_ABS + ", Abstract"},
    {"fact": "GPU baseline card", "value": "NVIDIA T4 (secondary: a survey's comparison table, not the paper's text)",
     "source": "Memory Is All You Need, arXiv 2406.08413, Table III, as summarised in a public survey-notes "
     "repository (code corpus); ../shared/reference/offload.md 'T4, per a survey'"},
]
# What the brief asked for and no retrievable text gives (each stays an ASSUMED constant or an open comparison).
NOT_RETRIEVED = [
    "PIM channel count, banks per channel, MAC units and their rate, DRAM timing and data rate, clocks",
    "global/ASIC buffer sizes, ASIC datapath width, ASIC clock, area and power (synthesis results)",
    "GPU baseline setup: precision, batch, context/generated length, software stack, power reading",
    "CPU baseline: which CPU, threads, software, power",
    "per-model speed-up and energy figures (the results figures/tables) and hence the paper's model order",
    "the paper's energy model (pJ per ACT, column access, MAC, I/O)",
]


def load_measured(path: Path | str | None = None) -> dict | None:
    p = Path(path) if path else MEASURED
    if not p.exists():
        return None
    return json.loads(p.read_text())


@dataclass(frozen=True)
class Kernel:
    name: str
    cost: Cost


def big_kernels(m: GPTConfig, context: int, dtype_bytes: int) -> list[Kernel]:
    """The kernels of one HF GPT-2 eager decode step that move more than a vector: bytes and FLOPs per kernel.
    KV cache: HF's DynamicCache concatenates the new key/value onto the cache, copying it (read + write)."""
    d, b, L = m.d_model, dtype_bytes, context
    out: list[Kernel] = []

    def gemv(name, n, k):  # y = W x: read W (and x), write y
        out.append(Kernel(name, Cost.of(flops=2 * n * k, hbm=((n * k + k) * b, n * b), label=name)))

    for i in range(m.n_layers):
        gemv(f"L{i}.c_attn", 3 * d, d)
        for kv in ("k", "v"):
            nb = (L - 1) * d * b
            out.append(Kernel(f"L{i}.cat_{kv}", Cost.of(hbm=(nb + d * b, nb + d * b), label="cat")))
        out.append(Kernel(f"L{i}.qk", Cost.of(flops=2 * L * d, hbm=(L * d * b + d * b, L * m.n_heads * b))))
        out.append(Kernel(f"L{i}.pv", Cost.of(flops=2 * L * d, hbm=(L * d * b + L * m.n_heads * b, d * b))))
        gemv(f"L{i}.c_proj", d, d)
        gemv(f"L{i}.c_fc", 4 * d, d)
        gemv(f"L{i}.mlp_proj", d, 4 * d)
    gemv("lm_head", m.vocab, d)
    return out


def estimated_kernels(m: GPTConfig) -> int:
    """Kernels per step when no measured count exists: about 26 per HF GPT-2 eager layer (LayerNorm 2, addmm 4,
    cache cat 2, attention 6, GELU 8, residual 2, reshapes 2) plus embedding, final LayerNorm and LM head."""
    return 26 * m.n_layers + 6


def gpu_step_s(m: GPTConfig, context: int, spec: HardwareSpec, host_s: float, n_kernels: int,
               dtype: str = "float32") -> float:
    b = 2 if dtype in ("float16", "bfloat16") else 4
    big = big_kernels(m, context, b)
    n_small = max(0, n_kernels - len(big))
    return n_small * host_s + sum(max(host_s, roofline(k.cost, spec, dtype).time_s) for k in big)


@dataclass
class Baselines:
    """Per-model baseline seconds per token (and where each came from)."""

    gpu_s: dict[str, float]
    cpu_s: dict[str, float | None]
    cpu_w: float | None
    host_s_per_kernel: float | None
    validation: dict[str, dict]  # model -> measured vs predicted on the lease's GPU
    info: dict


def baselines(context: int, dtype: str = "float32", measured: dict | None = None) -> Baselines:
    """T4 seconds per token from the kernel model, CPU seconds from the measurement (None without one)."""
    meas = measured if measured is not None else load_measured()
    gd = (meas or {}).get("gpu_decode", {})
    cal = gd.get("gpt2-small", {}).get(dtype, {})
    host = cal["s_per_token"] / cal["kernels_per_step"] if cal.get("kernels_per_step") else None
    if host is None:
        raise ValueError("no measured GPU decode for gpt2-small in measured_h200.json: run `python3 measure.py` on a "
                         "GPU machine (see ioaware/sim/pim/README.md)")
    lease_spec = _lease_spec(meas.get("gpu") or "")
    gpu, val = {}, {}
    for name, m in MODELS.items():
        rec = gd.get(name, {}).get(dtype, {})
        nk = rec.get("kernels_per_step") or estimated_kernels(m)
        gpu[name] = gpu_step_s(m, context, T4, host, nk, dtype)
        if rec.get("s_per_token") and lease_spec is not None:
            pred = gpu_step_s(m, meas["context"], lease_spec, host, nk, dtype)
            val[name] = {"measured_s": rec["s_per_token"], "predicted_s": pred,
                         "error": pred / rec["s_per_token"] - 1, "kernels": nk}
    cd = (meas or {}).get("cpu_decode", {})
    cpu = {name: cd.get(name, {}).get("s_per_token") for name in MODELS}
    watts = [r.get("rapl_package_w") for r in cd.values() if r.get("rapl_package_w")]
    info = {"gpu": meas.get("gpu"), "cpu": meas.get("cpu"), "cpu_threads": meas.get("cpu_threads"),
            "torch": meas.get("torch"), "transformers": meas.get("transformers"), "measured_context": meas["context"],
            "date": meas.get("date"), "dtype": dtype, "t4_sources": T4.sources, "t4_power": T4_POWER_SOURCE}
    return Baselines(gpu, cpu, sum(watts) / len(watts) if watts else None, host, val, info)


def _lease_spec(gpu_name: str) -> HardwareSpec | None:
    n = gpu_name.lower()
    for key in ("h200", "h100", "a100", "v100"):
        if key in n:
            return get_spec(key)
    return None
