"""SparF on the DRAM tier: only the chosen pages cross PCIe (approximate; `spec.sparf_tier = "dram"`).

The exact DRAM tier must move all its bytes to the GPU each step (the host's CPU attends 5x slower than PCIe copies,
README § GPU), so exact tiering cannot beat moving everything. SparF (sparf.py; InstInfer's flash-aware SparQ) reads
the top-r channels of K for approximate scores, then whole 16-token pages: the tier's first `sink_pages`, its last
`recent_pages`, then those with the most approximate mass, within `bytes_frac` of the exact bytes. On this tier:

  - the tier keeps K channel-major too (`LayerKV.dkc`, (B, Hkv, D, ring tokens), pinned), so a channel row is
    contiguous, as in the SSD file;
  - transport "copy": q to the host (one sync), selection on the CPU's threads, the chosen pages gathered into a
    pinned staging buffer, one async copy per K/V on a copy stream, flash_decode over them on the device;
  - transport "uva": nothing on the host. Pinned memory is mapped into the GPU's address space, so Triton kernels
    (uva_sparf_kernel.py) read it straight from the host pool: one kernel reads the chosen channel rows and reduces
    the approximate scores to page masses on chip (channels and temperature computed in the kernel from q), a small
    one finishes the softmax and forces the sink/recent pages, torch.topk picks the pages, and a flash-decode style
    kernel attends each head's pages reading K and V from the pool, splits merged by a last small kernel: 5 launches,
    no sync, so the host runs ahead launching later layers; the work runs on a side stream beside the device
    tier's flash_decode. Query rows per KV head beyond FUSED_MAX_ROWS (a long prefill chunk) take "uva-gather".
  - transport "uva-gather" (the first zero-copy version, kept for comparison): a Triton gather (uva_kernel.py)
    reads the channel rows into a device buffer, torch ops select, the gather copies the chosen pages into a packed
    device cache, flash_decode attends (about 20 launches).

Both compute the same pages as `sparf_from_file` (the SSD tier's reference) on the same tokens: the tier's token j
(oldest first) is ring token (head * page + j) mod capacity. Supported options: r, sink/recent pages, bytes_frac;
r_share, top_k and the mean-value correction vary per head or need the tier's V mean, and are refused here.
"""

from __future__ import annotations

import math

import torch

from ...errors import UnsupportedError
from .partial import partial_attention
from .sparf import PAGE, SparFConfig

TRANSPORTS = ("copy", "uva", "uva-serial", "uva-gather")  # uva-serial: uva's kernels on the compute stream
FUSED_MAX_ROWS = 64  # query rows per KV head (group x new tokens) the fused kernels keep in registers


def check_config(cfg: SparFConfig, transport: str) -> None:
    """Refuse what the DRAM tier's SparF does not do, in one line, before any work."""
    if transport not in TRANSPORTS:
        raise UnsupportedError(f"SparF on DRAM: transport must be one of {', '.join(TRANSPORTS)}, not {transport!r}")
    if cfg.r_share or cfg.top_k or cfg.correction != "none":
        raise UnsupportedError("SparF on the DRAM tier supports r, sink/recent pages and bytes_frac only (not "
                               f"r_share, top_k or correction='mean'); got {cfg}")


def group(q: torch.Tensor, Hkv: int) -> torch.Tensor:
    """(B, Tq, Hq, D) -> (B, Hkv, g*Tq, D) fp32: the query rows sharing a KV head (as sparf._group)."""
    B, Tq, Hq, D = q.shape
    g = Hq // Hkv
    return q.float().view(B, Tq, Hkv, g, D).permute(0, 2, 3, 1, 4).reshape(B, Hkv, g * Tq, D)


def channels(cfg: SparFConfig, qg: torch.Tensor) -> torch.Tensor:
    """(B, Hkv, R, D) -> (B, Hkv, r) channel indices, ascending: the top-r of |q| summed over the group's rows
    (SparFConfig.head_channels, batched; a stable sort, so ties go to the lower channel in both)."""
    r = cfg.channels(qg.shape[-1])
    order = qg.abs().sum(2).argsort(dim=-1, descending=True, stable=True)
    return order[..., :r].sort(dim=-1).values


def forced_pages(cfg: SparFConfig, n_full: int, n: int) -> list[int]:
    """The pages read whatever the scores say (sparf._select_pages' order: sinks, then recent newest first)."""
    sinks = list(range(min(cfg.sink_pages, n_full)))
    return (sinks + list(range(n_full - 1, max(len(sinks), n_full - cfg.recent_pages) - 1, -1)))[:n]


def page_mass(cfg: SparFConfig, qg: torch.Tensor, ch: torch.Tensor, kr: torch.Tensor, scale: float,
              n_full: int) -> torch.Tensor:
    """Approximate scores from the channel rows kr (B, Hkv, r, L) (fp32) -> p̂'s mass per full page (B, Hkv,
    n_full), the sink pages' 0. The same arithmetic as sparf_from_file, batched over heads (CPU or device)."""
    B, Hkv, R, _ = qg.shape
    qr = torch.gather(qg, 3, ch[:, :, None, :].expand(B, Hkv, R, ch.shape[-1]))  # (B, Hkv, R, r)
    share = qr.abs().sum(-1, keepdim=True) / qg.abs().sum(-1, keepdim=True).clamp_min(1e-30)
    s_hat = (qr @ kr) * (scale / share.clamp_min(1e-30).sqrt())  # (B, Hkv, R, L), SparQ's temperature
    ns = min(cfg.sink_pages, n_full) * PAGE
    p_rest = torch.softmax(s_hat[..., ns:], dim=-1)  # over the non-sink tokens (the sinks are read anyway)
    mass = torch.cat([p_rest.new_zeros(B, Hkv, ns), p_rest.sum(2)], -1)[..., : n_full * PAGE]
    return mass.view(B, Hkv, n_full, PAGE).sum(-1)


def select_pages(cfg: SparFConfig, qg: torch.Tensor, ch: torch.Tensor, kr: torch.Tensor, scale: float,
                 n_full: int, n: int) -> torch.Tensor:
    """-> the n pages read per head, (B, Hkv, n) ascending: the forced ones, then the most p̂ mass."""
    mass = page_mass(cfg, qg, ch, kr, scale, n_full)
    forced = forced_pages(cfg, n_full, n)
    if forced:  # always among the top n (at most n of them): the first s and the last n_forced - s pages. A mask
        # from arange, not an index list: a list would be copied from pageable host memory, which syncs the device
        s = sum(1 for p in forced if p < cfg.sink_pages)
        idx = torch.arange(n_full, device=mass.device)
        mass = mass.masked_fill((idx < s) | (idx >= n_full - (len(forced) - s)), float("inf"))
    return mass.topk(n, dim=-1).indices.sort(dim=-1).values


def plan(cfg: SparFConfig, L: int, D: int) -> tuple[int, int, int]:
    """(r, n_full, n): channels, full pages and pages read per head for a tier of L tokens (whole pages)."""
    r = cfg.channels(D)
    return r, L // PAGE, cfg.n_pages(L, D, r)


def read_bytes(cfg: SparFConfig, L: int, B: int, Hkv: int, D: int, esize: int) -> int:
    """Bytes SparF reads from the tier per layer: r channel rows of K, then n pages of K and V, per KV head."""
    r, _, n = plan(cfg, L, D)
    return B * Hkv * (r * L + 2 * n * PAGE * D) * esize


def _runs(head_tok: int, L: int, cap: int) -> list[tuple[int, int, int]]:
    """The tier's tokens as at most two runs of ring tokens: (tier start, ring start, length)."""
    first = min(L, cap - head_tok)
    return [(0, head_tok, first)] + ([(first, 0, L - first)] if first < L else [])


# ---------------------------------------------------------------- transport "copy": the host selects and gathers
def host_channel_rows(lk, ch: torch.Tensor) -> torch.Tensor:
    """The channel rows ch (B, Hkv, r) of the tier's K, oldest token first: (B, Hkv, r, L) fp32, read on the host."""
    t, P = lk.t, lk.t.spec.page
    B, Hkv = ch.shape[:2]
    bi, hi = torch.arange(B)[:, None, None], torch.arange(Hkv)[None, :, None]
    runs = _runs(lk.dram_head * P, lk.dram_n * P, t.dram_pages * P)
    return torch.cat([lk.dkc[bi, hi, ch, a:a + m] for _, a, m in runs], -1).float()


def host_select(cfg: SparFConfig, lk, q_cpu: torch.Tensor, scale: float, stats: dict | None = None):
    """The CPU side of transport "copy": channel rows, scores, pages, and the chosen K/V pages gathered into
    (pinned, on a CUDA run) staging buffers (B, n*P, Hkv, D), each head's pages in its own column. Returns
    (k_stage, v_stage, pages (B, Hkv, n), bytes read)."""
    t = lk.t
    B, Hkv, D, P = t.batch, t.Hkv, t.D, t.spec.page
    L = lk.dram_n * P
    r, n_full, n = plan(cfg, L, D)
    qg = group(q_cpu, Hkv)
    ch = channels(cfg, qg)
    kr = host_channel_rows(lk, ch)
    pages = select_pages(cfg, qg, ch, kr, scale, n_full, n)
    slots = (pages + lk.dram_head) % t.dram_pages  # (B, Hkv, n) ring pages
    bi, hi = torch.arange(B)[:, None, None], torch.arange(Hkv)[None, :, None]
    pin = t.device.type == "cuda"
    stages = []
    for pool in (lk.dk, lk.dv):
        g = pool.view(B, t.dram_pages, P, Hkv, D)[bi, slots, :, hi, :]  # (B, Hkv, n, P, D)
        st = torch.empty(B, n * P, Hkv, D, dtype=pool.dtype, pin_memory=pin)
        st.view(B, n, P, Hkv, D).copy_(g.permute(0, 2, 3, 1, 4))
        stages.append(st)
    if stats is not None:
        stats["pages"] = pages
    return stages[0], stages[1], pages, B * Hkv * (r * L + 2 * n * P * D) * t.esize


# ---------------------------------------------------------------- transport "uva-gather": gathers, then flash_decode
def _gather(src: torch.Tensor, dst: torch.Tensor, src_off, dst_off, n_rows, row_len, src_rs, dst_rs,
            align: int = 1) -> None:
    from ...kernels._dispatch import load_kernel_module, record

    mod = load_kernel_module("ioaware.runtime.kvtiers.uva_kernel")
    try:
        mod.uva_gather_fwd(src, dst, src_off, dst_off, n_rows, row_len, src_rs, dst_rs, align)
    except (ValueError, RuntimeError) as e:  # a launcher that refuses a host tensor: hand it the bare pointer
        if src.device.type != "cpu" or dst.device.type == "cpu":
            raise
        try:
            mod.uva_gather_fwd(mod.HostPointer(src), dst, src_off, dst_off, n_rows, row_len, src_rs, dst_rs, align)
        except (ValueError, RuntimeError, TypeError) as e2:
            raise UnsupportedError(f"SparF on DRAM, transport 'uva': Triton cannot read pinned host memory here "
                                   f"({e}; as a bare pointer: {e2}); use transport 'copy'") from e2
    record("uva_gather", "triton" if dst.is_cuda else "interpret")


def device_select(cfg: SparFConfig, lk, q: torch.Tensor, scale: float, stats: dict | None = None):
    """Transport "uva": channel rows and the chosen pages read from the pinned pool by the device (no host sync).
    Returns (k (B, n*P, Hkv, D), v, pages (B, Hkv, n), bytes read) on q's device."""
    t = lk.t
    B, Hkv, D, P = t.batch, t.Hkv, t.D, t.spec.page
    L, cap, nd = lk.dram_n * P, t.dram_pages * P, t.dram_pages
    r, n_full, n = plan(cfg, L, D)
    dev = q.device
    key = (str(dev), r, L, n)  # the offsets that do not depend on q: made once per tier size (fewer launches)
    consts = t.uva_consts.get(key)
    if consts is None:
        bh = torch.arange(B * Hkv, device=dev).view(B, Hkv, 1)
        b = torch.arange(B, device=dev).view(B, 1, 1)
        h = torch.arange(Hkv, device=dev).view(1, Hkv, 1)
        j = torch.arange(n, device=dev).view(1, 1, n)
        consts = (bh * D * cap,  # channel row 0 of head (b, h) in dkc
                  torch.arange(B * Hkv * r, device=dev) * L,  # row (b, h, i) of kr
                  (b * nd * P * Hkv + h) * D,  # page 0 of row b, head h, in the pool
                  (((b * n + j) * P * Hkv + h) * D).reshape(-1))  # page j of head (b, h) in the packed output
        t.uva_consts = {key: consts}  # one tier size at a time (it grows by a page every 16 steps)
    row0, dst_row, page0, dst_off = consts
    qg = group(q, Hkv)
    ch = channels(cfg, qg)  # (B, Hkv, r) on the device
    kr = torch.empty(B, Hkv, r, L, dtype=lk.dkc.dtype, device=dev)
    row = (row0 + ch * cap).reshape(-1)  # element offset of channel row (b, h, c) in dkc
    for tier0, ring0, m in _runs(lk.dram_head * P, L, cap):
        _gather(lk.dkc, kr, row + ring0, dst_row + tier0, 1, m, 0, 0, P)  # ring runs: whole pages
    pages = select_pages(cfg, qg, ch, kr.float(), scale, n_full, n)
    slots = (pages + lk.dram_head) % nd  # (B, Hkv, n)
    src_off = (page0 + slots * (P * Hkv * D)).reshape(-1)  # page (b, slot), head h: P rows, stride Hkv*D
    out = []
    for pool in (lk.dk, lk.dv):
        dst = torch.empty(B, n * P, Hkv, D, dtype=pool.dtype, device=dev)
        _gather(pool, dst, src_off, dst_off, P, D, Hkv * D, Hkv * D, math.gcd(D, 16))
        out.append(dst)
    if stats is not None:
        stats["pages"] = pages
    return out[0], out[1], pages, B * Hkv * (r * L + 2 * n * P * D) * t.esize


# ---------------------------------------------------------------- transport "uva": fused kernels over host memory
def fused_ok(q: torch.Tensor, Hkv: int) -> bool:
    """Whether the fused kernels take q (B, Tq, Hq, D): at most FUSED_MAX_ROWS query rows per KV head."""
    return q.shape[1] * (q.shape[2] // Hkv) <= FUSED_MAX_ROWS


def _kernels():
    """uva_sparf_kernel.py, imported once (load_kernel_module reads the environment: per-layer host time counts)."""
    global _MOD
    if _MOD is None:
        from ...kernels._dispatch import load_kernel_module

        _MOD = load_kernel_module("ioaware.runtime.kvtiers.uva_sparf_kernel")
    return _MOD


def _record(op: str, backend: str) -> None:
    """_dispatch.record when the backend changes: record reads the environment (tens of µs of host time per call,
    per layer and step on the decode path), and the same backend again changes nothing last_backend reports."""
    if _RECORDED.get(op) != backend:
        from ...kernels._dispatch import record

        record(op, backend)
        _RECORDED[op] = backend


_MOD = None
_RECORDED: dict = {}
_BARE = {"needed": False}  # set once a launcher refused a host tensor: later calls pass HostPointers directly


def _host_call(call, tensors: list, dev: torch.device):
    """call(*tensors); if a launcher refuses a host tensor on a CUDA run, again with HostPointers (their addresses,
    mapped under UVA; remembered, so the refusal is paid once), then a one-line error naming transport 'copy'."""
    def bare():
        from .uva_kernel import HostPointer  # triton is imported by now (_kernels)

        return [HostPointer(x) if x.device.type == "cpu" else x for x in tensors]

    if _BARE["needed"] and dev.type == "cuda":
        return call(*bare())
    try:
        return call(*tensors)
    except (ValueError, RuntimeError) as e:
        if dev.type != "cuda" or all(x.device.type != "cpu" for x in tensors):
            raise
        try:
            out = call(*bare())
        except (ValueError, RuntimeError, TypeError) as e2:
            raise UnsupportedError(f"SparF on DRAM, transport 'uva': Triton cannot read pinned host memory here "
                                   f"({e}; as a bare pointer: {e2}); use transport 'copy'") from e2
        _BARE["needed"] = True
        return out


def fused_select(cfg: SparFConfig, lk, q: torch.Tensor, scale: float, stats: dict | None = None):
    """Transport "uva": the pages (B, Hkv, n) (tier page indices, int64, in top-k order) chosen on q's device from
    the pinned channel-major K (two kernels and a top-k; no host sync), and the bytes SparF reads."""
    mod = _kernels()
    t = lk.t
    B, Hkv, D, P = t.batch, t.Hkv, t.D, t.spec.page
    L = lk.dram_n * P
    r, n_full, n = plan(cfg, L, D)
    forced = forced_pages(cfg, n_full, n)
    s = sum(1 for p in forced if p < cfg.sink_pages)
    ns = min(cfg.sink_pages, n_full) * P
    mass = _host_call(lambda kc: mod.sparf_page_mass_fwd(q, kc, Hkv, lk.dram_head * P, L, t.dram_pages * P, ns, r,
                                                          scale, s, len(forced) - s), [lk.dkc], q.device)
    pages = mass.topk(n, dim=-1, sorted=False).indices
    _record("uva_sparf_select", "triton" if q.is_cuda else "interpret")
    if stats is not None:
        stats["pages"], stats["mass"] = pages.sort(dim=-1).values, mass
    return pages, B * Hkv * (r * L + 2 * n * P * D) * t.esize


def fused_attend(lk, q: torch.Tensor, pages: torch.Tensor, scale: float):
    """Transport "uva": exact attention over each head's pages read from the pinned pool by a paged kernel.
    -> (out (B, Tq, Hq, D) fp32, lse (B, Hq, Tq) fp32), as partial.py."""
    mod = _kernels()
    t = lk.t
    o = _host_call(lambda k, v: mod.uva_paged_partial_fwd(q, k, v, pages, t.Hkv, lk.dram_head, t.dram_pages, scale),
                   [lk.dk, lk.dv], q.device)
    _record("uva_paged_partial", "triton" if q.is_cuda else "interpret")
    return o


def attend_selected(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float):
    """Exact attention over the gathered pages (each head's own): flash_decode on CUDA, torch elsewhere."""
    if q.is_cuda and q.shape[1] <= 16:
        from ...kernels import flash_decode

        lens = torch.full((q.shape[0],), k.shape[1], dtype=torch.int32, device=q.device)
        return flash_decode(q, k, v, lens, softmax_scale=scale, causal=False, return_lse=True)
    return partial_attention(q, k, v, scale)
