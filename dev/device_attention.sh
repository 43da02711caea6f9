#!/usr/bin/env bash
# Device calls: `tests` runs the GPU suite; `bench` the attention benchmark; `generate MODEL` the generation
# benchmark vs transformers. Results land in $OUT.
set -o pipefail
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
for step in "$@"; do
  case $step in
    tests)
      nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw,power.limit --format=csv | tee $OUT/gpu.txt
      python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a $OUT/gpu.txt
      timeout 300 python3 -m pytest -q -m gpu tests/gpu -p no:cacheprovider 2>&1 | tail -40 | tee $OUT/gpu-tests.txt ;;
    bench)
      python3 -m ioaware.cli.main bench attention ${BENCH_ARGS:-} --out $OUT/attention.json 2>&1 | tee $OUT/bench.txt | tail -60 ;;
    generate)
      python3 benchmarks/bench_generate.py --device cuda --model "$GGUF" --out $OUT/generate-h100.json 2>&1 | tee $OUT/generate.txt | tail -40 ;;
  esac
done
