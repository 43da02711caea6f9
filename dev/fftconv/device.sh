#!/usr/bin/env bash
# One device call: GPU tests, plan sweep (fwd, plus fwd+bwd of the default plan), the synthetic task.
#   steps: tests | sweep | synth | bench      (results land in $OUT)
set -o pipefail
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
for step in "$@"; do
  case $step in
    tests)
      nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.limit --format=csv | tee $OUT/gpu.txt
      python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a $OUT/gpu.txt
      timeout 240 python3 -m pytest -q -s -m gpu tests/gpu/test_fftconv_gpu.py -p no:cacheprovider 2>&1 | tee $OUT/gpu-tests.txt | grep -E "err|grad|passed|failed|Error|assert" | tail -40 ;;
    sweep)
      timeout 300 python3 dev/fftconv/sweep.py ${SWEEP_ARGS:-} --out $OUT/sweep.json 2>&1 | tee $OUT/sweep.txt | grep -v "^{'L'" | tail -30 ;;
    synth)
      timeout 200 python3 dev/fftconv/synthetic_task.py --seconds ${SYN_SECONDS:-30} --eval-every 3 ${SYN_ARGS:-} --out $OUT/synthetic.json 2>&1 | tee $OUT/synth.txt | tail -8 ;;
    bench)
      timeout 400 python3 -m ioaware.cli.main bench fftconv ${BENCH_ARGS:-} --out $OUT/fftconv.json 2>&1 | tee $OUT/bench.txt | tail -40 ;;
  esac
done
# profile step: Nsight Compute on the L=4096 forward kernel (second launch), evidence for NOTES.md
if [[ " $* " == *" profile "* ]]; then
  timeout 150 ncu -k regex:_conv2t_pair_kernel -s 1 -c 1 --section SpeedOfLight --section Occupancy \
      --section WarpStateStats --section LaunchStats --section ComputeWorkloadAnalysis \
      python3 dev/fftconv/profile_one.py 4096 > $OUT/ncu-L4096.txt 2>&1
  grep -E "Duration|Throughput|Registers|Occupancy|Warp Cycles|Issued|Block Limit|Stall|Executed Ipc|Waves" $OUT/ncu-L4096.txt | head -40
fi
