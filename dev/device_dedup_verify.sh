#!/usr/bin/env bash
# One device call after the dedup of the masked-attention prologue (_q_program) and the fftconv epilogue
# (_store_gated): re-runs every GPU test that launches those kernels. Output: $OUT/dedup_verify.txt.
# Budget: 110 s + 110 s of test time (a fresh machine compiles every kernel), under 4 minutes in all.
set -o pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
LOG=${OUT:?OUT must name the output folder}/dedup_verify.txt
: > "$LOG"
{
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
  git log -1 --oneline
} 2>&1 | tee -a "$LOG"
rc=0
# masked attention: forward + dQ (the refactored kernels) and dK/dV, options, varlen, determinism
echo "== tests/gpu/test_flash_attn_masked_gpu.py" | tee -a "$LOG"
timeout 110 python3 -m pytest -m gpu -q tests/gpu/test_flash_attn_masked_gpu.py -p no:cacheprovider --durations=5 \
  2>&1 | tee -a "$LOG" || rc=1
# fftconv: order-2 rows / transposed and order-3 pair kernels (forward, backward, gated, sparse, LongConv layer)
echo "== tests/gpu/test_fftconv_gpu.py" | tee -a "$LOG"
timeout 110 python3 -m pytest -m gpu -q tests/gpu/test_fftconv_gpu.py -p no:cacheprovider --durations=5 \
  2>&1 | tee -a "$LOG" || rc=1
echo "dedup_verify rc=$rc" | tee -a "$LOG"
exit $rc
