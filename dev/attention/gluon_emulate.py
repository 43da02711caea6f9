"""Check gluon_fwd.py's schedule on a CPU: its mbarrier protocol and its index math, each emulated in Python.

    .venv/bin/python dev/attention/gluon_emulate.py

1. Protocol: the producer, CONSUMERS consumer warpgroups and the `turn` barriers as threads over mbarriers with
   phase-parity waits (a fresh barrier counts its phase -1 as complete), random delays; checks no deadlock, no slot
   overwritten while a consumer still needs it, every K / V read from the slot that holds its block, and (PINGPONG)
   strict alternation of the GEMM issues: for n_blocks 1..8, every VARIANTS combination, several seeds.
2. Math: the consumer's loop bounds (n_full, n_blocks per tile, REV), masks, per-warpgroup rows and the OVERLAP order
   (S_j, then P_{j-1} V_{j-1}, rescale after) in PyTorch with P rounded to bf16 as the kernel does, against
   attention_ref: ragged T, causal, GQA; every output row written (NaN-filled otherwise).
Both transcribe the kernel by hand: change them with it. What they cannot check is the hardware (wgmma / TMA
semantics, registers, speed): that is tests/gpu/test_attention_gluon_gpu.py.
"""

import math
import random
import threading
import time

import torch

from ioaware.kernels.attention.flash.reference import attention_ref

BN, WG = 128, 64  # gluon_fwd.BN, gluon_fwd.WG_ROWS


class MBar:
    def __init__(self, count: int):
        self.count, self.pending, self.phase = count, count, 0
        self.cv = threading.Condition()

    def arrive(self):
        with self.cv:
            self.pending -= 1
            assert self.pending >= 0, "more arrivals than the count"
            if self.pending == 0:
                self.phase, self.pending = self.phase + 1, self.count
                self.cv.notify_all()

    def wait(self, parity: int, what: str):
        with self.cv:  # returns once the phase of this parity has completed (current phase parity differs)
            while (self.phase & 1) == parity:
                if not self.cv.wait(timeout=2.0):
                    raise RuntimeError(f"deadlock: waiting {what} parity {parity} at phase {self.phase}")


def protocol(n_blocks, STAGES, CONSUMERS, PINGPONG, OVERLAP, seed) -> list[str]:
    rnd = random.Random(seed)
    holds, errors, order = [None] * STAGES, [], []
    lock = threading.Lock()
    k_ready, v_ready = [MBar(1) for _ in range(STAGES)], [MBar(1) for _ in range(STAGES)]
    kv_empty, turn = [MBar(CONSUMERS) for _ in range(STAGES)], [MBar(1), MBar(1)]

    def nap():
        time.sleep(rnd.random() * 5e-4)

    def producer():
        for j in range(n_blocks):
            s = j % STAGES
            kv_empty[s].wait(((j // STAGES) & 1) ^ 1, f"empty {s}")
            with lock:
                holds[s] = j
            nap()
            k_ready[s].arrive()
            nap()
            v_ready[s].arrive()

    def read(w, j, s, what):
        with lock:
            if holds[s] != j:
                errors.append(f"wg{w} reads {what} of block {j} from slot {s}, which holds block {holds[s]}")

    def consumer(w):
        def issue(j):
            if PINGPONG:
                turn[w].wait((j + 1 - w) & 1, f"turn {w}")
                with lock:
                    order.append((w, j))

        def hand_over():
            if PINGPONG:
                turn[1 - w].arrive()

        if OVERLAP:
            k_ready[0].wait(0, "k 0")
            issue(0)
            read(w, 0, 0, "K")
            hand_over()
            for j in range(1, n_blocks):
                s, sp = j % STAGES, (j - 1) % STAGES
                k_ready[s].wait((j // STAGES) & 1, f"k {s}")
                issue(j)
                read(w, j, s, "K")
                v_ready[sp].wait(((j - 1) // STAGES) & 1, f"v {sp}")
                hand_over()
                nap()
                read(w, j - 1, sp, "V")  # the P V GEMM still reads V_{j-1} until its wait
                kv_empty[sp].arrive()
            last = n_blocks - 1
            v_ready[last % STAGES].wait((last // STAGES) & 1, "v last")
            read(w, last, last % STAGES, "V")
            kv_empty[last % STAGES].arrive()
        else:
            for j in range(n_blocks):
                s, ph = j % STAGES, (j // STAGES) & 1
                k_ready[s].wait(ph, f"k {s}")
                issue(j)
                read(w, j, s, "K")
                hand_over()
                nap()
                v_ready[s].wait(ph, f"v {s}")
                read(w, j, s, "V")
                kv_empty[s].arrive()

    failures = []

    def guarded(fn):
        try:
            fn()
        except Exception as e:  # noqa: BLE001
            failures.append(str(e))

    threads = [threading.Thread(target=guarded, args=(producer,))]
    threads += [threading.Thread(target=guarded, args=(lambda w=w: consumer(w),)) for w in range(CONSUMERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if PINGPONG and not failures and order != [(w, j) for j in range(n_blocks) for w in range(2)]:
        errors.append(f"GEMM issues not alternating: {order[:8]}")
    return errors + failures


def _softmax_step(s, m, l, o_m, j, T, sc, causal, mask):
    if mask:
        o_k = j * BN + torch.arange(BN)
        keep = (o_k < T)[None, :]
        if causal:
            keep = keep & (o_k[None, :] <= o_m[:, None])
        s = torch.where(keep, s * sc, -math.inf)
        m_new = torch.maximum(m, s.max(1).values)
        s = s - m_new[:, None]
    else:
        m_new = torch.maximum(m, s.max(1).values * sc)
        s = s * sc - m_new[:, None]
    p = torch.exp2(s)
    alpha = torch.exp2(m - m_new)
    return p, m_new, alpha, l * alpha + p.sum(1)


def emulate(q, k, v, causal, scale, CONSUMERS, OVERLAP):
    """The kernel's arithmetic, one program at a time, on (B*T, H*D) views padded with zeros past the end (TMA)."""
    B, T, H, D = q.shape
    Hkv = k.shape[2]
    BM, sc = WG * CONSUMERS, scale * 1.4426950408889634
    pad = lambda t, h: torch.cat([t.reshape(B * T, h * D).float(), torch.zeros(BM + BN, h * D)])  # noqa: E731
    qf, kf, vf = pad(q, H), pad(k, Hkv), pad(v, Hkv)
    o, lse = torch.full((B * T, H * D), math.nan), torch.full((B, H, T), math.nan)
    n_prog = -(-T // BM)
    for pid in range(n_prog):
        i_m = n_prog - 1 - pid if causal else pid  # REV
        n_full = (i_m * BM) // BN if causal else T // BN
        n_blocks = -(-min(T, (i_m + 1) * BM) // BN) if causal else -(-T // BN)
        for b in range(B):
            row0 = b * T
            for h in range(H):
                ck = (h // (H // Hkv)) * D
                kt = lambda j, r=row0, c=ck: kf[r + j * BN:r + j * BN + BN, c:c + D]  # noqa: E731
                vt = lambda j, r=row0, c=ck: vf[r + j * BN:r + j * BN + BN, c:c + D]  # noqa: E731
                for W in range(CONSUMERS):
                    first = i_m * BM + W * WG
                    o_m = first + torch.arange(WG)
                    qq = qf[row0 + first:row0 + first + WG, h * D:h * D + D]
                    m, l, acc = torch.full((WG,), -math.inf), torch.zeros(WG), torch.zeros(WG, D)
                    if OVERLAP:
                        p, m, _, l = _softmax_step(qq @ kt(0).T, m, l, o_m, 0, T, sc, causal, True)
                        p = p.bfloat16().float()
                        for j in [*range(1, n_full), *range(max(n_full, 1), n_blocks)]:
                            s = qq @ kt(j).T
                            acc = acc + p @ vt(j - 1)
                            p, m, alpha, l = _softmax_step(s, m, l, o_m, j, T, sc, causal, j >= max(n_full, 1))
                            acc, p = acc * alpha[:, None], p.bfloat16().float()
                        acc = acc + p @ vt(n_blocks - 1)
                    else:
                        for j in range(n_blocks):
                            p, m, alpha, l = _softmax_step(qq @ kt(j).T, m, l, o_m, j, T, sc, causal, j >= n_full)
                            acc = acc * alpha[:, None] + p.bfloat16().float() @ vt(j)
                    ok = o_m < T
                    o[row0 + o_m[ok], h * D:h * D + D] = (acc / l[:, None])[ok]
                    lse[b, h, o_m[ok]] = ((m + torch.log2(l)) * math.log(2))[ok]
    return o.view(B, T, H, D), lse


def main():
    bad = 0
    combos = [(2, 2, True, True), (3, 2, True, True), (2, 2, False, True), (2, 1, False, True), (2, 1, False, False)]
    for stages, consumers, pingpong, overlap in combos:
        for n in (1, 2, 3, 5, 8):
            for seed in range(3):
                errs = protocol(n, stages, consumers, pingpong, overlap, seed)
                bad += bool(errs)
                if errs:
                    print(f"protocol STAGES={stages} CONSUMERS={consumers} PINGPONG={pingpong} OVERLAP={overlap} "
                          f"n_blocks={n} seed={seed}: {errs[:3]}")
    print(f"protocol: {len(combos) * 15 - bad} of {len(combos) * 15} runs clean")
    torch.manual_seed(0)
    for B, T, H, Hkv, D, causal in [(1, 128, 1, 1, 16, False), (3, 77, 2, 2, 16, True), (2, 1000, 2, 2, 16, False),
                                    (2, 1000, 2, 1, 16, True), (1, 300, 1, 1, 8, True), (1, 513, 1, 1, 8, False)]:
        q, k, v = (torch.randn(B, T, h, D).bfloat16() for h in (H, Hkv, Hkv))
        ref, lse_ref = attention_ref(q.double(), k.double(), v.double(), causal, 0.3)
        pt, _ = attention_ref(q, k, v, causal, 0.3, upcast=False)
        e_pt = (pt.double() - ref).abs().max().item()
        for consumers in (1, 2):
            for overlap in (False, True):
                o, lse = emulate(q, k, v, causal, 0.3, consumers, overlap)
                e, e_lse = (o.double() - ref).abs().max().item(), (lse.double() - lse_ref).abs().max().item()
                ok = not o.isnan().any() and e <= 2 * e_pt + 1e-2 and e_lse < 1e-3
                bad += not ok
                print(f"math B{B} T{T} H{H}/{Hkv} causal={int(causal)} consumers={consumers} overlap={int(overlap)}: "
                      f"max err {e:.3g} (PyTorch bf16 {e_pt:.3g}), lse {e_lse:.2g} {'ok' if ok else 'WRONG'}")
    raise SystemExit(1 if bad else 0)


if __name__ == "__main__":
    main()
