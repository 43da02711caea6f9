"""CUDA C for what Triton cannot say: clock-timed pointer chases, the cache operator of a load, cp.async and bulk
(TMA) copies on an mbarrier, distributed shared memory across a cluster, and the tensor-core instruction family
(mma.sync vs wgmma). Each kernel is small and spelled out in PTX where the instruction matters; the sources are
compiled at run time by NVRTC (nvrtc.py) for sm_90a. Generators return source text only: nothing here touches a GPU.
"""

from __future__ import annotations

PRELUDE = r"""
typedef unsigned int u32;
typedef unsigned long long u64;
// %clock / %clock64 count this SM's cycles; %globaltimer counts nanoseconds. The "memory" clobber keeps the
// compiler from moving loads and stores across a timer read.
__device__ __forceinline__ u32 clk() {
    u32 t; asm volatile("mov.u32 %0, %%clock;" : "=r"(t) :: "memory"); return t; }
__device__ __forceinline__ u64 clk64() {
    u64 t; asm volatile("mov.u64 %0, %%clock64;" : "=l"(t) :: "memory"); return t; }
__device__ __forceinline__ u64 gtimer() {
    u64 t; asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t) :: "memory"); return t; }
__device__ __forceinline__ u32 smem_u32(const void* p) { return (u32)__cvta_generic_to_shared(p); }
// Loads in PTX, so the cache operator is the one we mean: .ca caches in L1 and L2, .cg in L2 only.
__device__ __forceinline__ u32 ld_ca(const u32* p) {
    u32 v; asm volatile("ld.global.ca.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory"); return v; }
__device__ __forceinline__ u32 ld_cg(const u32* p) {
    u32 v; asm volatile("ld.global.cg.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory"); return v; }
__device__ __forceinline__ u32 ld_sh(u32 a) {
    u32 v; asm volatile("ld.shared.u32 %0, [%1];" : "=r"(v) : "r"(a) : "memory"); return v; }
__device__ __forceinline__ float4 ld_sh4(u32 a) {
    float4 v; asm volatile("ld.shared.v4.f32 {%0,%1,%2,%3}, [%4];" : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w)
                           : "r"(a) : "memory"); return v; }
__device__ __forceinline__ float4 ld_ca4(const float4* p) {
    float4 v; asm volatile("ld.global.ca.v4.f32 {%0,%1,%2,%3}, [%4];" : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w)
                           : "l"(p) : "memory"); return v; }
__device__ __forceinline__ void add4(float4& a, const float4 b) { a.x += b.x; a.y += b.y; a.z += b.z; a.w += b.w; }
// Block 0's thread 0 writes its timing window: cycles over nanoseconds is the SM clock during the kernel.
__device__ __forceinline__ void window(u64* win, u64 c0, u64 g0) {
    if (blockIdx.x == 0 && threadIdx.x == 0) { win[0] = clk64() - c0; win[1] = gtimer() - g0; } }
"""

STEPS = 2048  # timed accesses a chase records (in shared memory, so the record costs no global traffic)
SNODES = 1024  # nodes of a shared-memory chain (4 KiB)


def memory_source() -> str:
    """Latency (P-chase), the clock, and shared-memory / L1 bandwidth."""
    return PRELUDE + rf"""
#define STEPS {STEPS}
#define SNODES {SNODES}

// One thread walks j = A[j] and times each access: the fine-grained P-chase (Mei & Chu) that the paper uses. The
// loaded index is stored to shared memory before the second clock read, so that read waits for the load. `warm`
// accesses first walk the chain so the level under test holds it (0 for the cold HBM walks).
extern "C" __global__ void chase_global(const u32* __restrict__ A, u32 start, int warm, int cg,
                                        u32* __restrict__ lat, u32* __restrict__ idx, u64* __restrict__ win) {{
    __shared__ u32 s_lat[STEPS];
    __shared__ u32 s_idx[STEPS];
    u32 j = start;
    if (cg) {{ for (int i = 0; i < warm; ++i) j = ld_cg(A + j); }}
    else    {{ for (int i = 0; i < warm; ++i) j = ld_ca(A + j); }}
    u64 c0 = clk64(), g0 = gtimer();
    if (cg) {{
        #pragma unroll 1
        for (int i = 0; i < STEPS; ++i) {{ u32 t0 = clk(); j = ld_cg(A + j); s_idx[i] = j; s_lat[i] = clk() - t0; }}
    }} else {{
        #pragma unroll 1
        for (int i = 0; i < STEPS; ++i) {{ u32 t0 = clk(); j = ld_ca(A + j); s_idx[i] = j; s_lat[i] = clk() - t0; }}
    }}
    window(win, c0, g0);
    for (int i = 0; i < STEPS; ++i) {{ lat[i] = s_lat[i]; idx[i] = s_idx[i]; }}
}}

// The same walk over a chain held in shared memory (word indices into s_A).
extern "C" __global__ void chase_shared(const u32* __restrict__ A, u32* __restrict__ lat, u32* __restrict__ idx,
                                        u64* __restrict__ win) {{
    __shared__ u32 s_A[SNODES];
    __shared__ u32 s_lat[STEPS];
    __shared__ u32 s_idx[STEPS];
    for (int i = threadIdx.x; i < SNODES; i += blockDim.x) s_A[i] = A[i];
    __syncthreads();
    if (threadIdx.x != 0) return;
    u32 base = smem_u32(s_A), j = 0;
    for (int i = 0; i < SNODES; ++i) j = ld_sh(base + 4 * j);
    u64 c0 = clk64(), g0 = gtimer();
    #pragma unroll 1
    for (int i = 0; i < STEPS; ++i) {{ u32 t0 = clk(); j = ld_sh(base + 4 * j); s_idx[i] = j; s_lat[i] = clk() - t0; }}
    window(win, c0, g0);
    for (int i = 0; i < STEPS; ++i) {{ lat[i] = s_lat[i]; idx[i] = s_idx[i]; }}
}}

// The SM clock: spin for a number of cycles and read how many nanoseconds passed.
extern "C" __global__ void spin(u64 cycles, u64* __restrict__ win) {{
    u64 c0 = clk64(), g0 = gtimer();
    while (clk64() - c0 < cycles) {{ }}
    window(win, c0, g0);
}}

// Shared-memory bandwidth: each thread reads float4s, consecutive threads at consecutive 16 B, so a warp's 512 B
// are 4 conflict-free wavefronts of 128 B (the SM's 128 B/clk). 8 independent loads an iteration keep it busy. The
// addresses move with the iteration: with fixed ones ptxas hoists the loads out of the loop (seen on an H200,
// 2026-12-02: 475 "B/clk/SM"), since a PTX ld.shared is not volatile whatever the asm statement says.
#define BW_VEC 2048
extern "C" __global__ void bw_smem(int iters, float* __restrict__ out, u64* __restrict__ win) {{
    __shared__ __align__(16) float4 s[BW_VEC];
    for (int i = threadIdx.x; i < BW_VEC; i += blockDim.x) s[i] = make_float4(i, i + 1, i + 2, i + 3);
    __syncthreads();
    const u32 base = smem_u32(s);
    float4 acc = make_float4(0, 0, 0, 0);
    u64 c0 = clk64(), g0 = gtimer();
    for (int it = 0; it < iters; ++it) {{
        #pragma unroll
        for (int k = 0; k < 8; ++k)
            add4(acc, ld_sh4(base + 16 * ((threadIdx.x + k * blockDim.x + it * 32) & (BW_VEC - 1))));
    }}
    window(win, c0, g0);
    out[blockIdx.x * blockDim.x + threadIdx.x] = acc.x + acc.y + acc.z + acc.w;
}}

// L1 bandwidth: the same reads from a 16 KiB global region per block with ld.global.ca (the first sweep fills L1),
// addresses again moving with the iteration so the loads stay in the loop.
#define L1_VEC 1024
extern "C" __global__ void bw_l1(const float4* __restrict__ src, int iters, float* __restrict__ out,
                                 u64* __restrict__ win) {{
    const float4* p = src + (size_t)blockIdx.x * L1_VEC;
    float4 acc = make_float4(0, 0, 0, 0);
    u64 c0 = clk64(), g0 = gtimer();
    for (int it = 0; it < iters; ++it) {{
        #pragma unroll
        for (int k = 0; k < 8; ++k) add4(acc, ld_ca4(p + ((threadIdx.x + k * blockDim.x + it * 32) & (L1_VEC - 1))));
    }}
    window(win, c0, g0);
    out[blockIdx.x * blockDim.x + threadIdx.x] = acc.x + acc.y + acc.z + acc.w;
}}
"""


ASYNC_STAGES = 4
ASYNC_THREADS = 128


def async_source(tile: int) -> str:
    """Streaming a buffer through shared memory, three ways, at `tile` bytes a stage: plain loads then st.shared;
    cp.async (16 B per thread, ASYNC_STAGES deep); and the bulk copy engine (cp.async.bulk, one thread issues a
    whole tile, completion counted in bytes on an mbarrier; the 1-D form of TMA, no tensor map). Every variant
    sums the tile from shared memory with a thread mapping unlike the copy's, so each needs its barrier."""
    return PRELUDE + rf"""
#define TILE {tile}
#define TV (TILE / 16)
#define STAGES {ASYNC_STAGES}

__device__ __forceinline__ void consume(u32 s, float4& acc) {{
    for (int v = threadIdx.x; v < TV; v += blockDim.x) add4(acc, ld_sh4(s + 16 * (TV - 1 - v)));
}}
__device__ __forceinline__ const float4* tile_ptr(const float4* src, long long tpb, long long i) {{
    return src + ((long long)blockIdx.x * tpb + (i % tpb)) * TV;
}}

extern "C" __global__ void ac_plain_{tile}(const float4* __restrict__ src, long long tpb, int passes,
                                           float* __restrict__ out) {{
    __shared__ __align__(128) float4 buf[TV];
    float4 acc = make_float4(0, 0, 0, 0);
    const long long n = tpb * passes;
    for (long long i = 0; i < n; ++i) {{
        const float4* g = tile_ptr(src, tpb, i);
        for (int v = threadIdx.x; v < TV; v += blockDim.x) buf[v] = g[v];
        __syncthreads();
        consume(smem_u32(buf), acc);
        __syncthreads();
    }}
    out[blockIdx.x * blockDim.x + threadIdx.x] = acc.x + acc.y + acc.z + acc.w;
}}

__device__ __forceinline__ void cp_async16(u32 dst, const void* src) {{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" :: "r"(dst), "l"(src) : "memory");
}}

extern "C" __global__ void ac_cpasync_{tile}(const float4* __restrict__ src, long long tpb, int passes,
                                             float* __restrict__ out) {{
    __shared__ __align__(128) float4 buf[STAGES][TV];
    float4 acc = make_float4(0, 0, 0, 0);
    const long long n = tpb * passes;
    auto issue = [&](long long i) {{
        const float4* g = tile_ptr(src, tpb, i);
        const u32 s = smem_u32(buf[i % STAGES]);
        for (int v = threadIdx.x; v < TV; v += blockDim.x) cp_async16(s + 16 * v, g + v);
    }};
    for (int s = 0; s < STAGES - 1; ++s) {{
        if (s < n) issue(s);
        asm volatile("cp.async.commit_group;" ::: "memory");
    }}
    for (long long i = 0; i < n; ++i) {{
        if (i + STAGES - 1 < n) issue(i + STAGES - 1);  // into the slot consumed last iteration
        asm volatile("cp.async.commit_group;" ::: "memory");  // (an empty group keeps the count uniform)
        asm volatile("cp.async.wait_group %0;" :: "n"(STAGES - 1) : "memory");  // this thread's part of tile i
        __syncthreads();  // everyone's part
        consume(smem_u32(buf[i % STAGES]), acc);
        __syncthreads();  // the slot is free again
    }}
    out[blockIdx.x * blockDim.x + threadIdx.x] = acc.x + acc.y + acc.z + acc.w;
}}

__device__ __forceinline__ void bar_init(u32 bar, u32 count) {{
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" :: "r"(bar), "r"(count) : "memory");
}}
__device__ __forceinline__ void bar_expect(u32 bar, u32 bytes) {{
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" :: "r"(bar), "r"(bytes) : "memory");
}}
__device__ __forceinline__ void bulk_copy(u32 dst, const void* src, u32 bytes, u32 bar) {{
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
                 :: "r"(dst), "l"(src), "r"(bytes), "r"(bar) : "memory");
}}
// Wait for a phase of an mbarrier, but never forever: a bounded spin returns false (the caller sets *err and
// leaves) instead of hanging the GPU if a copy never lands.
__device__ __forceinline__ bool bar_wait(u32 bar, u32 parity) {{
    for (u32 k = 0; k < (1u << 20); ++k) {{
        u32 done;
        asm volatile("{{ .reg .pred p; mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2; selp.u32 %0, 1, 0, p; }}"
                     : "=r"(done) : "r"(bar), "r"(parity) : "memory");
        if (done) return true;
    }}
    return false;
}}

extern "C" __global__ void ac_bulk_{tile}(const float4* __restrict__ src, long long tpb, int passes,
                                          float* __restrict__ out, u32* __restrict__ err) {{
    __shared__ __align__(128) float4 buf[STAGES][TV];
    __shared__ __align__(8) u64 bars[STAGES];
    float4 acc = make_float4(0, 0, 0, 0);
    const long long n = tpb * passes;
    const u32 bar0 = smem_u32(bars);
    if (threadIdx.x == 0) {{
        for (int s = 0; s < STAGES; ++s) bar_init(bar0 + 8 * s, 1);
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");  // the copy engine sees the barriers
        for (int s = 0; s < STAGES && s < n; ++s) {{
            bar_expect(bar0 + 8 * s, TILE);
            bulk_copy(smem_u32(buf[s]), tile_ptr(src, tpb, s), TILE, bar0 + 8 * s);
        }}
    }}
    __syncthreads();
    for (long long i = 0; i < n; ++i) {{
        const int slot = i % STAGES;
        if (!bar_wait(bar0 + 8 * slot, (u32)((i / STAGES) & 1))) {{ atomicOr(err, 1u); return; }}
        consume(smem_u32(buf[slot]), acc);
        __syncthreads();  // everyone has read the slot before it is refilled
        if (threadIdx.x == 0 && i + STAGES < n) {{
            bar_expect(bar0 + 8 * slot, TILE);
            bulk_copy(smem_u32(buf[slot]), tile_ptr(src, tpb, i + STAGES), TILE, bar0 + 8 * slot);
        }}
    }}
    out[blockIdx.x * blockDim.x + threadIdx.x] = acc.x + acc.y + acc.z + acc.w;
}}
"""


DSM_STEPS = 512


def dsm_source(cs: int) -> str:
    """Distributed shared memory in a cluster of `cs` blocks (compile-time cluster size, so a plain launch makes
    clusters): the P-chase through another block's shared memory (mapa + ld.shared::cluster), and a read
    bandwidth test in which every block streams its neighbour's shared memory."""
    return PRELUDE + rf"""
#define CS {cs}
#define SNODES {SNODES}
#define DSTEPS {DSM_STEPS}
__device__ __forceinline__ u32 cluster_rank() {{
    u32 r; asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r)); return r; }}
// arrive + wait on the cluster barrier (not .aligned: thread 0 may arrive from a divergent branch)
__device__ __forceinline__ void cluster_sync() {{
    asm volatile("barrier.cluster.arrive;\n\tbarrier.cluster.wait;" ::: "memory");
}}
__device__ __forceinline__ u32 mapa(u32 a, u32 rank) {{
    u32 r; asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(rank)); return r; }}
__device__ __forceinline__ u32 ld_dsm(u32 a) {{
    u32 v; asm volatile("ld.shared::cluster.u32 %0, [%1];" : "=r"(v) : "r"(a) : "memory"); return v; }}
__device__ __forceinline__ float4 ld_dsm4(u32 a) {{
    float4 v; asm volatile("ld.shared::cluster.v4.f32 {{%0,%1,%2,%3}}, [%4];"
                           : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w) : "r"(a) : "memory"); return v; }}

// Block 0 of the cluster walks the chain held in each block's shared memory in turn (its own first).
extern "C" __global__ void __cluster_dims__(CS, 1, 1) dsm_lat_{cs}(const u32* __restrict__ A, u32* __restrict__ lat,
                                                                u32* __restrict__ idx) {{
    __shared__ u32 s_A[SNODES];
    __shared__ u32 s_lat[DSTEPS];
    __shared__ u32 s_idx[DSTEPS];
    for (int i = threadIdx.x; i < SNODES; i += blockDim.x) s_A[i] = A[i];
    __syncthreads();
    cluster_sync();  // every block's chain is in place before anyone walks it
    if (cluster_rank() == 0 && threadIdx.x == 0) {{
        for (u32 r = 0; r < CS; ++r) {{
            const u32 base = mapa(smem_u32(s_A), r);
            u32 j = 0;
            for (int i = 0; i < SNODES; ++i) j = ld_dsm(base + 4 * j);
            #pragma unroll 1
            for (int i = 0; i < DSTEPS; ++i) {{
                u32 t0 = clk(); j = ld_dsm(base + 4 * j); s_idx[i] = j; s_lat[i] = clk() - t0; }}
            for (int i = 0; i < DSTEPS; ++i) {{ lat[r * DSTEPS + i] = s_lat[i]; idx[r * DSTEPS + i] = s_idx[i]; }}
        }}
    }}
    cluster_sync();  // no block exits (freeing its shared memory) while the walk may still read it
}}

#define DV 2048
extern "C" __global__ void __cluster_dims__(CS, 1, 1) dsm_bw_{cs}(int iters, float* __restrict__ out) {{
    __shared__ __align__(16) float4 s[DV];
    for (int i = threadIdx.x; i < DV; i += blockDim.x) s[i] = make_float4(i, i + 1, i + 2, i + 3);
    __syncthreads();
    cluster_sync();
    const u32 base = mapa(smem_u32(s), (cluster_rank() + 1) % CS);
    float4 acc = make_float4(0, 0, 0, 0);
    for (int it = 0; it < iters; ++it) {{
        #pragma unroll
        for (int k = 0; k < 8; ++k)  // addresses move with the iteration, so no load can leave the loop
            add4(acc, ld_dsm4(base + 16 * ((threadIdx.x + k * blockDim.x + it * 32) & (DV - 1))));
    }}
    cluster_sync();
    out[blockIdx.x * blockDim.x + threadIdx.x] = acc.x + acc.y + acc.z + acc.w;
}}
"""


# ---------------------------------------------------------------------------------------------------------------
# Tensor cores. Operand bytes: fp16/bf16 2, tf32 4, fp8 and int8 1. The PTX type names per dtype:
PTX_TYPE = {"fp16": "f16", "bf16": "bf16", "tf32": "tf32", "e4m3": "e4m3", "e5m2": "e5m2", "int8": "s8"}
ELEM_BYTES = {"fp16": 2, "bf16": 2, "tf32": 4, "e4m3": 1, "e5m2": 1, "int8": 1}
# mma.sync shapes m16n8kK that exist for each dtype on sm_90 (PTX ISA, "Matrix shape")
MMA_KS = {"fp16": (8, 16), "bf16": (8, 16), "tf32": (4, 8), "e4m3": (32,), "e5m2": (32,), "int8": (16, 32)}
# wgmma m64nNkK: K is 32 bytes of each operand row for every dtype
WGMMA_K = {d: 32 // b for d, b in ELEM_BYTES.items()}
MMA_ACC = 4  # independent accumulators a warp cycles through in the throughput kernel (hides the mma latency)
WG_UNROLL = 8  # wgmmas a warpgroup issues per commit group


def mma_regs(dtype: str, k: int) -> tuple[int, int]:
    """32-bit registers per thread holding A (16 x k) and B (k x 8) of an m16n8k mma.sync."""
    b = ELEM_BYTES[dtype]
    return 16 * k * b // 128, 8 * k * b // 128


def mma_flops(k: int) -> int:
    return 2 * 16 * 8 * k


def wgmma_flops(dtype: str, n: int) -> int:
    return 2 * 64 * n * WGMMA_K[dtype]


def _mma_op(dtype: str, k: int) -> str:
    """A device function issuing one mma.sync m16n8k{k} on registers (D += A B)."""
    ar, br = mma_regs(dtype, k)
    t = PTX_TYPE[dtype]
    acc_t, acc_c = ("s32", "r") if dtype == "int8" else ("f32", "f")
    ins = f"mma.sync.aligned.m16n8k{k}.row.col.{acc_t}.{t}.{t}.{acc_t}"
    a = ",".join(f"%{4 + i}" for i in range(ar))
    b = ",".join(f"%{4 + ar + i}" for i in range(br))
    outs = ", ".join(f'"+{acc_c}"(d[{i}])' for i in range(4))
    ins_ops = ", ".join([f'"r"(a[{i}])' for i in range(ar)] + [f'"r"(b[{i}])' for i in range(br)])
    ctype = "int" if dtype == "int8" else "float"
    return (f"__device__ __forceinline__ void op_{dtype}_k{k}({ctype} (&d)[4], const u32 (&a)[{ar}], "
            f"const u32 (&b)[{br}]) {{\n"
            f'    asm volatile("{ins} {{%0,%1,%2,%3}}, {{{a}}}, {{{b}}}, {{%0,%1,%2,%3}};"\n'
            f"                 : {outs} : {ins_ops});\n}}\n")


def mma_source(shapes: list[tuple[str, int]]) -> str:
    """For each (dtype, k): mma_tp_* (every warp cycles MMA_ACC independent accumulators, each with its own A, as
    the M tiles of a GEMM: throughput) and mma_lat_* (one accumulator, one warp: the dependent-chain latency).
    Operands are random values of the dtype loaded from `src` (never zeros, which run faster than real data)."""
    parts = [PRELUDE]
    for dtype, k in shapes:
        ar, br = mma_regs(dtype, k)
        ctype = "int" if dtype == "int8" else "float"
        parts.append(_mma_op(dtype, k))
        for kind, acc in (("tp", MMA_ACC), ("lat", 1)):
            perturb = ""
            if dtype in ("e4m3", "e5m2"):
                # sm_90 has no native fp8 mma.sync: ptxas converts the operands to f16 (F2FP) and issues two
                # HMMA.16816 with a zero accumulator plus FADDs, and with loop-invariant operands it hoists the
                # conversions and products out of the loop (seen in the SASS). Flipping a bit of every operand
                # register each iteration makes each mma pay its conversion, as in a GEMM whose operands change
                # every k-step.
                perturb = "".join(f"\n        a[{x}][{r}] ^= (u32)it & 0x01010101u;"
                                  for x in range(acc) for r in range(ar))
                perturb += "".join(f"\n        b[{r}] ^= (u32)it & 0x01010101u;" for r in range(br))
            parts.append(rf"""
extern "C" __global__ void mma_{kind}_{dtype}_k{k}(const u32* __restrict__ src, int iters, float* __restrict__ out,
                                                  u64* __restrict__ win) {{
    const int lane = threadIdx.x & 31;
    u32 a[{acc}][{ar}], b[{br}];
    #pragma unroll
    for (int x = 0; x < {acc}; ++x)
        #pragma unroll
        for (int r = 0; r < {ar}; ++r) a[x][r] = src[(lane * 8 + x * 31 + r) & 255];
    #pragma unroll
    for (int r = 0; r < {br}; ++r) b[r] = src[256 + ((lane * 8 + r) & 255)];
    {ctype} d[{acc}][4];
    #pragma unroll
    for (int x = 0; x < {acc}; ++x) {{ d[x][0] = 0; d[x][1] = 0; d[x][2] = 0; d[x][3] = 0; }}
    u64 c0 = clk64(), g0 = gtimer();
    for (int it = 0; it < iters; ++it) {{{perturb}
        #pragma unroll
        for (int x = 0; x < {acc}; ++x) op_{dtype}_k{k}(d[x], a[x], b);
    }}
    window(win, c0, g0);
    float s = 0;
    #pragma unroll
    for (int x = 0; x < {acc}; ++x) s += (float)d[x][0] + (float)d[x][1] + (float)d[x][2] + (float)d[x][3];
    out[blockIdx.x * blockDim.x + threadIdx.x] = s;
}}
""")
    return "\n".join(parts)


def _wgmma_op(dtype: str, n: int) -> str:
    """A device function issuing one wgmma.mma_async m64n{n}k{K} with A and B from shared memory (descriptors)."""
    t = PTX_TYPE[dtype]
    k = WGMMA_K[dtype]
    nacc = n // 2
    if dtype == "int8":
        ins, tail, acc_c, ctype = f"wgmma.mma_async.sync.aligned.m64n{n}k{k}.s32.s8.s8", "p", "r", "int"
    elif dtype in ("fp16", "bf16"):  # scale-d, scale-a, scale-b, transpose-a, transpose-b (0: both K-major)
        ins, tail, acc_c, ctype = f"wgmma.mma_async.sync.aligned.m64n{n}k{k}.f32.{t}.{t}", "p, 1, 1, 0, 0", "f", "float"
    else:  # tf32 and fp8 take no transpose flags (K-major only)
        ins, tail, acc_c, ctype = f"wgmma.mma_async.sync.aligned.m64n{n}k{k}.f32.{t}.{t}", "p, 1, 1", "f", "float"
    dlist = ",".join(f"%{i}" for i in range(nacc))
    outs = ", ".join(f'"+{acc_c}"(d[{i}])' for i in range(nacc))
    return (f"__device__ __forceinline__ void wg_{dtype}_n{n}({ctype} (&d)[{nacc}], u64 da, u64 db, u32 scale_d) {{\n"
            f'    asm volatile("{{\\n .reg .pred p;\\n setp.ne.b32 p, %{nacc + 2}, 0;\\n"\n'
            f'                 " {ins} {{{dlist}}}, %{nacc}, %{nacc + 1}, {tail};\\n}}\\n"\n'
            f'                 : {outs} : "l"(da), "l"(db), "r"(scale_d) : "memory");\n}}\n')


WG_PRELUDE = r"""
// A shared-memory matrix descriptor (PTX ISA, "Matrix Descriptor Format"): start address, leading- and
// stride-dimension byte offsets, all >> 4; base offset 0 and swizzle mode 0 (no swizzle: 8-row x 16-byte core
// matrices). A is 64 rows and B is N rows of 32 bytes, K-major, core matrices stored [row group][k half][8][16 B].
__device__ __forceinline__ u64 wg_desc(u32 addr, u32 lbo, u32 sbo) {
    return (u64)((addr & 0x3FFFF) >> 4) | ((u64)((lbo & 0x3FFFF) >> 4) << 16) | ((u64)((sbo & 0x3FFFF) >> 4) << 32);
}
__device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }
template <int N> __device__ __forceinline__ void wg_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;" :: "n"(N) : "memory"); }
// Fill A and B from src (random values of the dtype) and make the stores visible to the tensor cores' proxy.
__device__ __forceinline__ void wg_fill(u32* s, int words, const u32* __restrict__ src) {
    for (int i = threadIdx.x; i < words; i += blockDim.x) s[i] = src[i & 4095];
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
    __syncthreads();
}
"""


def wgmma_source(configs: list[tuple[str, int]], latency: list[str], check: bool) -> str:
    """wg_tp_{dtype}_n{N}: two warpgroups a block, one block an SM, each issuing WG_UNROLL wgmmas per commit group
    with one group left in flight (the GEMM main loop's pattern, with no loads). wg_lat_{dtype}: one warpgroup,
    one m64n128 wgmma, commit, wait 0, repeated: the latency. wg_check: one fp16 m64n64k16 product written out
    in the accumulator layout, so the host can check the descriptors compute A B^T."""
    parts = [PRELUDE, WG_PRELUDE]
    ops = set(configs) | {(d, 128) for d in latency} | ({("fp16", 64)} if check else set())
    for dtype, n in sorted(ops):
        parts.append(_wgmma_op(dtype, n))
    for dtype, n in configs:
        ctype = "int" if dtype == "int8" else "float"
        parts.append(rf"""
extern "C" __global__ void __launch_bounds__(256, 1) wg_tp_{dtype}_n{n}(const u32* __restrict__ src, int iters,
        u32 lbo, u32 sbo, float* __restrict__ out, u64* __restrict__ win) {{
    __shared__ __align__(128) u32 s_ab[(64 + {n}) * 8];
    wg_fill(s_ab, (64 + {n}) * 8, src);
    const u32 a = smem_u32(s_ab);
    const u64 da = wg_desc(a, lbo, sbo), db = wg_desc(a + 64 * 32, lbo, sbo);
    {ctype} d[{n // 2}];
    #pragma unroll
    for (int i = 0; i < {n // 2}; ++i) d[i] = 0;
    u64 c0 = clk64(), g0 = gtimer();
    wg_fence();
    for (int it = 0; it < iters; ++it) {{
        #pragma unroll
        for (int u = 0; u < {WG_UNROLL}; ++u) wg_{dtype}_n{n}(d, da, db, 1);
        wg_commit();
        wg_wait<1>();
    }}
    wg_wait<0>();
    window(win, c0, g0);
    float s = 0;
    #pragma unroll
    for (int i = 0; i < {n // 2}; ++i) s += (float)d[i];
    out[blockIdx.x * blockDim.x + threadIdx.x] = s;
}}
""")
    for dtype in latency:
        ctype = "int" if dtype == "int8" else "float"
        parts.append(rf"""
extern "C" __global__ void __launch_bounds__(128, 1) wg_lat_{dtype}(const u32* __restrict__ src, int iters,
        u32 lbo, u32 sbo, float* __restrict__ out, u64* __restrict__ win) {{
    __shared__ __align__(128) u32 s_ab[(64 + 128) * 8];
    wg_fill(s_ab, (64 + 128) * 8, src);
    const u32 a = smem_u32(s_ab);
    const u64 da = wg_desc(a, lbo, sbo), db = wg_desc(a + 64 * 32, lbo, sbo);
    {ctype} d[64];
    #pragma unroll
    for (int i = 0; i < 64; ++i) d[i] = 0;
    u64 c0 = clk64(), g0 = gtimer();
    for (int it = 0; it < iters; ++it) {{
        wg_fence();
        wg_{dtype}_n128(d, da, db, 1);
        wg_commit();
        wg_wait<0>();
    }}
    window(win, c0, g0);
    float s = 0;
    #pragma unroll
    for (int i = 0; i < 64; ++i) s += (float)d[i];
    out[blockIdx.x * blockDim.x + threadIdx.x] = s;
}}
""")
    if check:
        parts.append(r"""
// One m64n64k16 fp16 product D = A B^T from A (64 x 16) and B (64 x 16), both row-major in global memory, placed
// in shared memory as no-swizzle K-major core matrices (byte offset of (r, k): (r/8)*256 + (k/8)*128 + (r%8)*16
// + (k%8)*2), then read back from the accumulators: register i of lane l in warp w holds row 16w + l/4 + 8((i%4)/2)
// and column 8(i/4) + 2(l%4) + i%2.
extern "C" __global__ void __launch_bounds__(128, 1) wg_check(const unsigned short* __restrict__ A,
        const unsigned short* __restrict__ B, u32 lbo, u32 sbo, float* __restrict__ D) {
    __shared__ __align__(128) unsigned short s_ab[(64 + 64) * 16];
    for (int e = threadIdx.x; e < 128 * 16; e += blockDim.x) {
        const int r = e / 16, k = e % 16, rr = r % 64;
        const unsigned short v = r < 64 ? A[rr * 16 + k] : B[rr * 16 + k];
        s_ab[(r < 64 ? 0 : 64 * 16) + ((rr / 8) * 256 + (k / 8) * 128 + (rr % 8) * 16 + (k % 8) * 2) / 2] = v;
    }
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
    __syncthreads();
    const u32 a = smem_u32(s_ab);
    float d[32];
    #pragma unroll
    for (int i = 0; i < 32; ++i) d[i] = 0.f;
    wg_fence();
    wg_fp16_n64(d, wg_desc(a, lbo, sbo), wg_desc(a + 64 * 32, lbo, sbo), 0);
    wg_commit();
    wg_wait<0>();
    const int w = threadIdx.x / 32, l = threadIdx.x % 32;
    #pragma unroll
    for (int i = 0; i < 32; ++i) {
        const int row = 16 * w + l / 4 + 8 * ((i % 4) / 2), col = 8 * (i / 4) + 2 * (l % 4) + (i % 2);
        D[row * 64 + col] = d[i];
    }
}
""")
    return "\n".join(parts)
