#!/usr/bin/env bash
# Two device calls for the runtime's CUDA decode path (#6 item 4). The 98 MB GGUF does not fit one call's
# carry, so it travels in two halves (.carry/part_aa, .carry2/part_ab) kept in /tmp/m while the machine is warm.
#   call A: bash dev/device_runtime.sh a   (GPU tests, gemm bench -> new dataflow table, first half)
#   call B: bash dev/device_runtime.sh b   (second half, generate before/after with the new table)
set -o pipefail
export PYTHONPATH=$PWD:/tmp/pylib:${PYTHONPATH:-} PYTHONUNBUFFERED=1
mkdir -p /tmp/m
case $1 in
  a)
    cp .carry/part_aa /tmp/m/ && cp .carry/gguf-*.whl /tmp/m/
    nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv | tee $OUT/gpu.txt
    timeout 200 python3 -m pytest -q -m gpu tests/gpu/test_runtime_gpu.py tests/gpu/test_flash_decode_gpu.py \
      -p no:cacheprovider 2>&1 | tail -30 | tee $OUT/gpu-tests.txt
    timeout 120 python3 -m ioaware.cli.main bench decode --out $OUT/decode.json 2>&1 | tail -30 > $OUT/decode.txt
    timeout 330 python3 -m ioaware.cli.main bench gemm --out $OUT/gemm.json 2>&1 | tail -75 > $OUT/gemm.txt
    cp ioaware/kernels/gemm/flat/dataflow_h100.json $OUT/ && cp ioaware/kernels/gemm/flat/dataflow_h100.json /tmp/m/ ;;
  b)
    [ -f /tmp/m/dataflow_h100.json ] && cp /tmp/m/dataflow_h100.json ioaware/kernels/gemm/flat/
    cat /tmp/m/part_aa .carry2/part_ab > /tmp/m/model.gguf && ls -la /tmp/m
    pip install -q --no-deps --target /tmp/pylib /tmp/m/gguf-*.whl 2>&1 | tail -2
    timeout 500 python3 benchmarks/bench_generate.py --device cuda --model /tmp/m/model.gguf --reps 5 --new-tokens 128 \
      --out $OUT/generate-h100.json 2>&1 | tail -60 | tee $OUT/generate.txt
    [ -n "$SWEEP" ] && timeout 300 python3 dev/decode/sweep.py 2>&1 | tail -30 | tee $OUT/sweep.txt ;;
esac
