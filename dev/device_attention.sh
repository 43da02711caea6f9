#!/usr/bin/env bash
# One device call: GPU test suite, then the attention benchmark. Results land in $OUT.
set -o pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw,power.limit --format=csv | tee $OUT/gpu.txt
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a $OUT/gpu.txt
timeout 240 python3 -m pytest -q -m gpu tests/gpu -x -p no:cacheprovider 2>&1 | tail -30 | tee $OUT/gpu-tests.txt
python3 -m ioaware.cli.main bench attention ${BENCH_ARGS:-} --out $OUT/attention.json 2>&1 | tee $OUT/bench.txt
