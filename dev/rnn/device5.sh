#!/usr/bin/env bash
# Final device call of issue #9 in session 4: the benchmark with the final default (forward: gates in one dot, K in
# 3 chunks; backward: batched per-gate exchange), flashrnn beside it, then the whole GPU RNN suite.
# Run: bash dev/rnn/device5.sh  (writes $OUT; flashrnn/einops/ninja wheels carried in .whl/rnn)
: "${OUT:?}"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/rnn/*.whl >/dev/null 2>&1
export PYTHONPATH=$PWD:/tmp/site PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $OUT/gpu.txt
timeout 110 python3 -m ioaware.cli.main bench rnn --cases 1x768 12x64 --flashrnn-backends triton_fused \
    --flashrnn-timeout 30 --out $OUT/rnn-h100-$(date +%F).json 2>&1 | grep -v Warn | tail -30
timeout 140 python3 -m pytest -v -m gpu tests/gpu/test_rnn_gpu.py -p no:cacheprovider 2>&1 | tee $OUT/gpu_tests.log \
    | grep -E "FAIL|ERROR|passed|failed" | tail -20
