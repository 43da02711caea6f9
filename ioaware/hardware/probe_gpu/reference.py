"""What each probed number is compared with: the paper's H800 value and the vendor's datasheet figure, each with
its source, and the ratios. Pure Python: `rows()` turns a flat {key: measured value} into the report's rows.

The paper's card is an H800 PCIe (114 SMs, 1755 MHz boost, HBM2e at 2039 GB/s, 350 W); ours is an SXM part (132
SMs, up to 1980 MHz, HBM3/HBM3e, 700 W). Cycle counts compare directly; rates that scale with SMs x clock (tensor
cores, shared-memory networks) are also shown against the paper's value scaled by (our SMs x our measured clock) /
(114 x 1755 MHz), which is how the SKU difference is explained rather than hidden.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from ..specs import SPECS, HardwareSpec

PAPER_SMS, PAPER_MHZ = 114, 1755.0  # H800 PCIe: the paper's Table of platforms (arXiv 2402.13499, 2501.12084)

# Sources, cited by short name in every row.
SRC = {
    "P1": "Luo et al., Benchmarking and Dissecting the Nvidia Hopper GPU Architecture (IPDPS'24, arXiv 2402.13499), "
          "H800 PCIe, as in ../shared/reference/hwmodel.md section 4",
    "P2": "the paper's code HPMLL/NVIDIA-Hopper-Benchmark, logs read for hwmodel.md section 4 (random_latency/"
          "h800_pcie.txt at 1755 MHz; DSM/Latency/OneToAll/log)",
    "P3": "arXiv 2501.12084 (the extended paper) Tables III-VII for the H800 PCIe, as transcribed by a third-party "
          "reproduction (Johnsonms/NVIDIA-Hopper-Benchmark, reproduction/H100-dapperdingo/summary.md): secondary",
    "ARCH": "CUDA C Programming Guide, compute capability 9.0: 32 shared-memory banks of 4 bytes serve 128 B per "
            "clock per SM (L1 and shared memory are one array)",
    "CLK": "the clock the datasheet's dense rates imply: 989.4 TFLOP/s / (132 SMs x 4096 bf16 FLOP/clk/SM) = 1830 "
           "MHz; nvidia-smi's maximum SM clock on H100/H200 SXM is 1980 MHz, so rates up to 1980/1830 = 1.08x the "
           "datasheet are possible",
    "INT8": "NVIDIA H100 Tensor Core GPU datasheet (SXM5): INT8 tensor core 3,958 TOPS with sparsity, 1,979 dense",
}


@dataclass(frozen=True)
class Ref:
    what: str
    unit: str
    paper: float | None = None
    paper_src: str = ""
    scales: bool = False  # the paper's value scales with SMs x clock (compute/SM-bound rates)
    note: str = ""


_DT = {"fp16": "float16", "bf16": "bfloat16", "tf32": "tfloat32", "e4m3": "float8", "e5m2": "float8", "int8": "int8"}

# key (fnmatch pattern) -> reference; the first pattern that matches wins, so exact keys come first
REFS: dict[str, Ref] = {
    "clock.sm_mhz": Ref("SM clock during the run (in-kernel cycles / globaltimer ns)", "MHz", PAPER_MHZ, "P1",
                        note="the H800's boost clock; the datasheet column is the clock its rates imply"),
    "latency.smem": Ref("shared memory, ld.shared", "cycles", 29.0, "P1"),
    "latency.l1": Ref("L1 hit, ld.global.ca", "cycles", 40.7, "P1",
                      note="the extended paper's random P-chase gives about 32 (P2)"),
    "latency.l2": Ref("L2 hit, every line of a 4 MiB walk, ld.global.cg", "cycles", 263.0, "P1"),
    "latency.l2_near": Ref("L2 hit, near partition (low class of the walk at 0.8 of the L2)", "cycles", 264.5, "P2"),
    "latency.l2_far": Ref("L2 hit, far partition (high class of the walk at 0.8 of the L2)", "cycles", 502.0, "P3",
                          note="upper end of the transcribed L2 range 264.5-502 (secondary)"),
    "latency.hbm": Ref("HBM, cold lines within one 2 MiB page (TLB warm)", "cycles", 478.8, "P1"),
    "latency.hbm_random": Ref("HBM, random lines over 1 GiB (TLB misses included)", "cycles", 628.0, "P2",
                              note="paper: 600-656 beyond L2; the ratio is to the midpoint"),
    "latency.dsm_local": Ref("own shared memory through ld.shared::cluster", "cycles", 33.0, "P2"),
    "latency.dsm_remote": Ref("another block's shared memory in the cluster (DSM)", "cycles", 180.0, "P1",
                              note="repo log: 181-207 cycles"),
    "latency.wgmma.*": Ref("wgmma m64n128, issue to wait_group 0", "cycles", 128.0, "P1",
                           note="paper: 128 cycles for every dtype at N=128 (dense)"),
    "latency.mma.*": Ref("mma.sync, dependent chain", "cycles"),
    "bw.smem_Bpc": Ref("shared memory, per SM", "B/clk/SM", 127.4, "P3"),
    "bw.l1_Bpc": Ref("L1 hit, per SM", "B/clk/SM", 125.8, "P3"),
    "bw.l2_Bpc": Ref("L2 hit, whole chip", "B/clk", 4472.3, "P3"),
    "bw.smem": Ref("shared memory, whole chip", "TB/s", scales=True),
    "bw.l2": Ref("L2 hit, whole chip (Triton re-read; footprint in the detail)", "TB/s"),
    "bw.hbm_read": Ref("HBM read (Triton, 1 GiB)", "GB/s"),
    "bw.hbm_copy": Ref("HBM copy, read + write (Triton, best config)", "GB/s"),
    "bw.hbm_copy_tma": Ref("HBM copy through TMA descriptors (Triton)", "GB/s"),
    "bw.torch_copy": Ref("HBM copy, best of PyTorch copy_ / mul(out=)", "GB/s"),
    "bw.hbm_copy_frac": Ref("HBM copy / datasheet bandwidth", "fraction", 0.91, "P1",
                            note="paper: global bandwidth 90-92% of theoretical; the ratio is to 91%"),
    "bw.dsm.cs2": Ref("DSM read, cluster of 2", "TB/s", 3.27, "P1", scales=True),
    "bw.dsm.cs4": Ref("DSM read, cluster of 4", "TB/s", 2.65, "P1", scales=True),
    "bw.dsm.*": Ref("DSM read", "TB/s", scales=True),
    "l2.capacity_mib": Ref("L2 apparent capacity (re-read bandwidth half-way down)", "MiB"),
    "tc.wgmma.fp16.n256": Ref("wgmma SS m64n256k16 fp16", "TFLOP/s", 728.5, "P3", scales=True),
    "tc.wgmma.tf32.n256": Ref("wgmma SS m64n256k8 tf32", "TFLOP/s", 373.0, "P3", scales=True),
    "tc.wgmma.e4m3.n256": Ref("wgmma SS m64n256k32 e4m3", "TFLOP/s", 1448.0, "P1", scales=True,
                              note="paper: FP8/INT8 1448 measured of 1513 peak"),
    "tc.wgmma.int8.n256": Ref("wgmma SS m64n256k32 int8", "TOP/s", 1448.0, "P1", scales=True),
    "tc.wgmma.*": Ref("wgmma SS", "TFLOP/s", scales=True),
    "tc.mma.*": Ref("mma.sync", "TFLOP/s", scales=True),
    "tc.mma_frac_mean": Ref("mma.sync best shape / datasheet peak, mean over dtypes", "fraction", 0.629, "P1",
                            note="paper: mma reaches 62.9% of peak on average"),
    "tc.torch.*": Ref("library GEMM 8192^3 (cuBLAS via torch)", "TFLOP/s"),
    # per SM per clock at the clock read inside the kernel; the paper's at its nominal 1755 MHz
    "tcclk.wgmma.fp16.n256": Ref("wgmma fp16 m64n256, per SM per clock", "FLOP/clk/SM",
                                 728.5e12 / (PAPER_SMS * PAPER_MHZ * 1e6), "P3"),
    "tcclk.wgmma.tf32.n256": Ref("wgmma tf32 m64n256, per SM per clock", "FLOP/clk/SM",
                                 373.0e12 / (PAPER_SMS * PAPER_MHZ * 1e6), "P3"),
    "tcclk.wgmma.e4m3.n256": Ref("wgmma e4m3 m64n256, per SM per clock", "FLOP/clk/SM",
                                 1448e12 / (PAPER_SMS * PAPER_MHZ * 1e6), "P1"),
    "tcclk.wgmma.int8.n256": Ref("wgmma int8 m64n256, per SM per clock", "FLOP/clk/SM",
                                 1448e12 / (PAPER_SMS * PAPER_MHZ * 1e6), "P1"),
    "tcclk.*": Ref("per SM per clock (the kernel's own clock)", "FLOP/clk/SM"),
    "async.cp_async_speedup.small": Ref("cp.async / plain, smallest tile", "x", 1.395, "P1",
                                        note="paper: AsyncPipe +39.5% at 8x8 blocks (a different kernel)"),
    "async.cp_async_speedup.large": Ref("cp.async / plain, largest tile", "x", 0.982, "P1",
                                        note="paper: AsyncPipe -1.8% at 32x32 blocks (a different kernel)"),
    "async.*speedup*": Ref("async / plain", "x"),
    "async.*": Ref("stream through shared memory", "GB/s"),
}


def ref_for(key: str) -> Ref:
    for pat, ref in REFS.items():
        if fnmatch.fnmatchcase(key, pat):
            return ref
    return Ref(key, "")


def datasheet(key: str, spec: HardwareSpec) -> tuple[float | None, str]:
    """The vendor's figure for a probed key on this card (None where the datasheet gives none)."""
    src = spec.sources.get("flops", "")
    if key.startswith("tcclk."):  # the datasheet's rate at the clock it implies (CLK), per SM
        dt = key.split(".")[2]
        peak = 1978.9e12 if dt == "int8" else spec.peak(_DT[dt])
        return peak / (spec.num_sms * 1830e6), SRC["CLK"]
    if key.startswith("tc.") and not key.endswith("_frac_mean"):
        dt = key.split(".")[2]
        if dt == "int8":
            return 1978.9, SRC["INT8"]
        return spec.peak(_DT[dt]) / 1e12, src
    if key in ("bw.hbm_read", "bw.hbm_copy", "bw.hbm_copy_tma", "bw.torch_copy") or (
            key.startswith("async.") and key.endswith(".hbm")):
        return spec.hbm_bandwidth_Bps / 1e9, spec.sources.get("hbm", "")
    if key in ("bw.smem_Bpc", "bw.l1_Bpc"):
        return 128.0, SRC["ARCH"]
    if key == "l2.capacity_mib":
        return spec.l2_bytes / 2**20, spec.sources.get("l2", "")
    if key == "clock.sm_mhz":
        return 1830.0, SRC["CLK"]
    return None, ""


def spec_for(device_name: str) -> HardwareSpec:
    """The datasheet to compare with: the card's own where we have it, else the H100 SXM (Hopper's reference)."""
    low = device_name.lower()
    return SPECS["h200"] if "h200" in low else SPECS["h100"]


def _ratio(a, b):
    return None if a is None or b in (None, 0) else a / b


def rows(measured: dict[str, float], spec: HardwareSpec, sms: int, clock_mhz: float | None,
         clocks: dict[str, float] | None = None) -> list[dict]:
    """One row per measured key: value, paper value (and scaled to this card where it scales), datasheet, ratios.
    The scaling uses the clock measured inside the key's own kernel where `clocks` has it, else `clock_mhz`."""
    out = []
    for key in sorted(measured):
        v = measured[key]
        r = ref_for(key)
        ds, ds_src = datasheet(key, spec)
        mhz = (clocks or {}).get(key) or clock_mhz
        scale = (sms * mhz) / (PAPER_SMS * PAPER_MHZ) if mhz else None
        scaled = r.paper * scale if (r.scales and r.paper is not None and scale) else None
        unit = r.unit.replace("FLOP", "OP") if ".int8" in key else r.unit
        out.append({
            "key": key, "group": key.split(".")[0], "what": r.what, "unit": unit, "value": v,
            "paper_h800": r.paper, "paper_ratio": _ratio(v, r.paper), "paper_source": SRC.get(r.paper_src, ""),
            "paper_scaled": scaled, "paper_scaled_ratio": _ratio(v, scaled), "clock_mhz": mhz if scaled else None,
            "datasheet": ds, "datasheet_ratio": _ratio(v, ds), "datasheet_card": spec.name if ds else None,
            "datasheet_source": ds_src, "note": r.note,
        })
    return out
