"""One benchmark registry, run by `ioaware bench OP`; results go to benchmarks/results/.

GPU benchmarks time a kernel beside PyTorch's on the card (`run(...)` + `TABLE_COLUMNS` / `table_rows`, driven by
cli/bench.py's shared runner). CPU benchmarks of the offload runtime are whole programs with their own flags
(`main(argv)`); the CLI hands them the rest of the command line. Benchmarks that need a peer the library must not
depend on (llama.cpp) stay as scripts in benchmarks/.
"""

GPU = {"attention": "flash_attn vs SDPA's flash, cuDNN and efficient backends",
       "attention-masks": "flash_attn's sliding window and block-sparse vs FlexAttention",
       "decode": "flash_decode vs SDPA's flash and cuDNN backends (KV read GB/s)",
       "gemm": "GEMV / flat GEMM / torch.matmul for decoding; calibrates the dataflow table",
       "rnn": "fused LSTM vs cuDNN nn.LSTM, the flashrnn package and a PyTorch loop",
       "fftconv": "fftconv vs torch.fft (rfft/irfft) with peak memory, gated causal, bf16",
       "nsa": "nsa (FSA and NSA loop orders) vs a FlexAttention NSA and dense flash_attn",
       "spmm": "Flash-LLM-style sparse matmul vs torch.matmul and torch CSR at 60 to 90 percent sparsity",
       "lowrank": "FlashSVD fused low-rank attention/FFN vs unfused factors and the dense layer (peak memory)"}

CPU = {"offload": ("ioaware.bench.offload", "weights streamed from disk under a memory budget: naive vs mmap vs "
                   "ioaware (CPU)"),
       "offload-replay": ("ioaware.bench.offload_replay", "I/O-only replay of a neuron trace on a random 1B model's "
                          "store (CPU)"),
       "sparsity": ("ioaware.bench.sparsity", "SwiGLU activation sparsity: thresholds, predictors, perplexity (CPU)"),
       "synthetic-trace": ("ioaware.bench.synthetic_trace", "write a SYNTHETIC OPT-like neuron trace for "
                           "offload-replay"),
       # multi-process programs: NCCL over the visible GPUs, or gloo on CPU; scaling against one process, one run
       "tp": ("ioaware.bench.tp", "tensor-parallel decode vs one process, and the tiling-AllReduce overlap (GPUs: "
              "NCCL; CPU: gloo)"),
       "ring-attn": ("ioaware.bench.ring_attn", "ring / all-gather context-parallel attention vs one process, fwd "
                     "and bwd (GPUs: NCCL; CPU: gloo)"),
       "kv-tiers": ("ioaware.bench.kv_tiers", "tiered KV cache (HBM/DRAM/SSD, attention next to the data) vs "
                    "move-everything and recompute; SparF quality (CPU; --device cuda on a GPU)")}
