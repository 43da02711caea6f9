#!/usr/bin/env bash
# Device calls: `tests` runs the GPU suite; `bench` the attention benchmark; `generate MODEL` the generation
# benchmark vs transformers; `gluon` the Gluon forward's variants (checks, tests, then timing); `gluon-auto` the attention
# GPU suites under IOAWARE_GLUON=auto; `fp8` the FP8 forward's GPU tests and timing. Results land in $OUT.
set -o pipefail
export PYTHONPATH=$PWD:/tmp/xdist:${PYTHONPATH:-} PYTHONUNBUFFERED=1
# pytest-xdist (carried in wheels/): Triton's compiles are CPU-bound, so GPU suites run on 8 workers sharing the GPU
ls wheels/pytest_xdist-*.whl >/dev/null 2>&1 && \
  pip install -q --no-deps --no-index --target /tmp/xdist wheels/pytest_xdist-*.whl wheels/execnet-*.whl >/dev/null 2>&1
XDIST=$(python3 -c "import xdist" 2>/dev/null && echo "-n ${NPROC_TESTS:-8}")
export TRITON_CACHE_DIR=$PWD/build/triton-cache
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
    gluon)
      # issue 28, the Gluon forward: per variant in order (GLUON_VARIANTS overrides), the smoke ladder (smallest config
      # first, full compiler error) then its GPU tests, until one passes; a hang is killed by the timeout. Then the
      # timing of the passing variant against ours-triton and SDPA cuDNN / flash. Every variant's log lands in $OUT.
      nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $OUT/gluon-gpu.txt
      python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a $OUT/gluon-gpu.txt
      GLUON_OK=""
      for v in ${GLUON_VARIANTS:-fa3_s2 coop one_wg simple}; do  # each drops one feature (gluon_fwd.VARIANTS)
        timeout -s KILL ${GLUON_SMOKE_S:-150} python3 dev/attention/gluon_bench.py --smoke --variant $v > $OUT/gluon-smoke-$v.txt 2>&1
        rc=$?
        if [ $rc -eq 0 ]; then
          timeout -s KILL ${GLUON_TEST_S:-240} python3 -m pytest -q -m gpu tests/gpu/test_attention_gluon_gpu.py -k "$v or gate" \
            -p no:cacheprovider > $OUT/gluon-tests-$v.txt 2>&1
          rc=$?
          tail -15 $OUT/gluon-tests-$v.txt
        else
          tail -80 $OUT/gluon-smoke-$v.txt
        fi
        case $rc in 0) st=passed ;; 3) st="hung (smoke watchdog)" ;; 137) st="killed at the timeout (a hang?)" ;; *) st=failed ;; esac
        echo "gluon variant $v: $st (rc $rc)" | tee -a $OUT/gluon-steps.txt
        if [ $rc -eq 0 ]; then GLUON_OK=$v; break; fi
      done
      if [ -n "$GLUON_OK" ]; then
        timeout -s KILL ${GLUON_BENCH_S:-240} python3 dev/attention/gluon_bench.py --variant $GLUON_OK ${GLUON_BENCH_ARGS:-} \
          --json $OUT/attention-gluon-h200.json 2>&1 | tee $OUT/gluon-bench.txt | tail -40
        if [ "$GLUON_OK" = fa3_s2 ]; then  # the 3-slot ring: checked by the smoke ladder, then timed on its own
          timeout -s KILL 120 python3 dev/attention/gluon_bench.py --smoke --variant fa3_s3 > $OUT/gluon-smoke-fa3_s3.txt 2>&1 \
            && timeout -s KILL 180 python3 dev/attention/gluon_bench.py --variant fa3_s3 ${GLUON_BENCH_ARGS:-} \
              --json $OUT/attention-gluon-s3-h200.json 2>&1 | tee $OUT/gluon-bench-s3.txt | tail -20
          tail -3 $OUT/gluon-smoke-fa3_s3.txt
        fi
      else
        echo "gluon: no variant passed; see $OUT/gluon-smoke-*.txt and gluon-tests-*.txt" | tee -a $OUT/gluon-steps.txt
      fi ;;
    gluon-auto)
      # IOAWARE_GLUON=auto over every attention GPU suite (#28: auto becomes the default once these pass under it)
      IOAWARE_GLUON=auto timeout ${T_AUTO:-420} python3 -m pytest -q -rfEs $XDIST -m gpu tests/gpu/test_attention_gluon_gpu.py \
        tests/gpu/test_flash_attn_gpu.py tests/gpu/test_flash_attn_hopper_gpu.py tests/gpu/test_flash_attn_interface_gpu.py \
        tests/gpu/test_flash_attn_masked_gpu.py -p no:cacheprovider --timeout 300 > $OUT/gluon-auto-tests.txt 2>&1
      echo "rc=$?"; tail -25 $OUT/gluon-auto-tests.txt ;;
    fp8)
      # the FP8 forward (flash/fp8.py): its GPU tests, then the tile sweep and the timing against our bf16 and cuDNN
      nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader | tee $OUT/fp8-gpu.txt
      timeout ${T_FP8TEST:-150} python3 -m pytest -q -rfEs $XDIST -m gpu tests/gpu/test_flash_attn_fp8_gpu.py \
        -p no:cacheprovider --timeout 120 > $OUT/fp8-tests.txt 2>&1; echo "rc=$?"; tail -15 $OUT/fp8-tests.txt
      timeout ${T_FP8BENCH:-330} python3 dev/attention/fp8_bench.py --tiles ${FP8_ARGS:-} \
        --json $OUT/attention-fp8-h200.json 2>&1 | tee $OUT/fp8-bench.txt | tail -45 ;;
  esac
done
