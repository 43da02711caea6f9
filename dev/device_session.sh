#!/usr/bin/env bash
# One device call per session (the device budget is ~30 min, each cold start costs ~3): the GPU suite first, then
# the measurements in priority order, each under its own timeout so one overrun cannot cost the rest. Results and
# logs land in $OUT. The GPU suite alone needs most of a call (its Triton compiles: ~30 tests in 135 s on the
# H200), so give `tests` a call of its own; keep $OUT to a handful of files (a call returns a limited count). Steps: any of tests probe kvtiers lowrank nsa-profile nsa-fla (default: all, in that order, then kvtiers-ssd); also
# kvtiers-gpu, kvtiers-sparf (on request only: bash dev/device_session.sh kvtiers-gpu kvtiers-sparf), kvtiers-sparf-uva
# (the zero-copy SparF transports alone: T_KVGPU=240 bash dev/device_session.sh kvtiers-gpu kvtiers-sparf-uva).
set -o pipefail
export PYTHONPATH=$PWD:/tmp/fla:${PYTHONPATH:-} PYTHONUNBUFFERED=1
D=$(date +%F)
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv | tee $OUT/gpu.txt
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a $OUT/gpu.txt
if ls wheels/fla_core-*.whl >/dev/null 2>&1; then
  pip install -q --no-deps --no-index --target /tmp/fla wheels/fla_core-*.whl wheels/einops-*.whl >/dev/null 2>&1
fi
# pytest-xdist (carried in wheels/): Triton's compiles are CPU-bound, so the suite runs on 8 workers sharing the GPU;
# the compile cache lives in the (git-ignored) build/ folder, which a warm machine keeps between calls
ls wheels/pytest_xdist-*.whl >/dev/null 2>&1 && \
  pip install -q --no-deps --no-index --target /tmp/fla wheels/pytest_xdist-*.whl wheels/execnet-*.whl >/dev/null 2>&1
export TRITON_CACHE_DIR=$PWD/build/triton-cache
XDIST=$(python3 -c "import xdist" 2>/dev/null && echo "-n ${NPROC_TESTS:-8}")
steps=${*:-tests probe kvtiers lowrank nsa-profile nsa-fla kvtiers-ssd}
for step in $steps; do
  echo "== $step $(date +%T)"
  case $step in
    tests)
      timeout ${T_TESTS:-540} python3 -m pytest -q -rfEs $XDIST -m gpu tests/gpu tests/kernels -p no:cacheprovider \
        --timeout 300 > $OUT/gpu-tests.txt 2>&1; echo "rc=$?"; tail -40 $OUT/gpu-tests.txt ;;
    probe)
      ( time timeout 90 python3 -m ioaware.cli.main probe gpu --quick --json $OUT/probe-gpu-h200-$D-quick.json ) \
        > $OUT/probe-quick.log 2>&1; tail -3 $OUT/probe-quick.log
      ( time timeout 150 python3 -m ioaware.cli.main probe gpu --json $OUT/probe-gpu-h200-$D.json \
        --plot $OUT/probe-gpu-h200-$D.png ) > $OUT/probe-full.log 2>&1; tail -3 $OUT/probe-full.log
      python3 -m ioaware.cli.main hardware --measured --from $OUT/probe-gpu-h200-$D.json \
        --json $OUT/hardware-measured-h200-$D.json > $OUT/measured.log 2>&1; tail -5 $OUT/measured.log ;;
    kvtiers)
      # the bar run: Llama-8B shape, random bf16 weights, KV 2x the device tier
      timeout 120 python3 -m ioaware.cli.main bench kv-tiers --device cuda --context 32768 --hbm 2GiB --dram 4GiB \
        --ssd none --steps 16 --json $OUT/kv_tiers-llama8b-h200-dram-$D.json > $OUT/kvtiers.log 2>&1
      echo "rc=$?"; tail -30 $OUT/kvtiers.log ;;
    kvtiers-gpu)
      # the KV-tier GPU tests alone (exact tiers, SparF on DRAM: both transports vs the CPU reference, streams)
      timeout ${T_KVGPU:-110} python3 -m pytest -q -rfEs -m gpu tests/gpu/test_kvtiers_gpu.py -p no:cacheprovider \
        > $OUT/kvtiers-gpu-tests.txt 2>&1; echo "rc=$?"; tail -25 $OUT/kvtiers-gpu-tests.txt ;;
    kvtiers-sparf)
      # one run: move-all, exact tiered, SparF on the DRAM tier at 1/8 of its bytes (transports copy and uva)
      timeout ${T_KVSPARF:-120} python3 -m ioaware.cli.main bench kv-tiers --device cuda --context 32768 --hbm 2GiB \
        --dram 4GiB --ssd none --steps 8 --sparf 0.125 --sparf-tier dram --crossover 16 \
        --out $OUT/kv_tiers-llama8b-h200-sparf-dram-$D.json > $OUT/kvtiers-sparf.log 2>&1
      echo "rc=$?"; tail -40 $OUT/kvtiers-sparf.log ;;
    kvtiers-sparf-uva)
      # SparF on DRAM over the zero-copy transports only: uva (the fused kernels) and uva-gather (the older path),
      # with move-all and the exact tiered run as the baselines of the same run
      timeout ${T_KVSPARF:-150} python3 -m ioaware.cli.main bench kv-tiers --device cuda --context 32768 --hbm 2GiB \
        --dram 4GiB --ssd none --steps 8 --sparf 0.125 --sparf-tier dram --sparf-transport uva --crossover 16 \
        --out $OUT/kv_tiers-llama8b-h200-sparf-uva-$D.json > $OUT/kvtiers-sparf-uva.log 2>&1
      echo "rc=$?"; tail -40 $OUT/kvtiers-sparf-uva.log ;;
    kvtiers-ssd)
      timeout 100 python3 -m ioaware.cli.main bench kv-tiers --device cuda --context 32768 --hbm 1GiB --dram 1GiB \
        --ssd /var/tmp/kvtiers --seg-pages 64 --sparf 0.125 --steps 8 \
        --json $OUT/kv_tiers-llama8b-h200-ssd-$D.json > $OUT/kvtiers-ssd.log 2>&1; echo "rc=$?"; tail -20 $OUT/kvtiers-ssd.log ;;
    lowrank)
      timeout 120 python3 -m ioaware.cli.main bench lowrank --out $OUT/lowrank-h200-$D.json > $OUT/lowrank.log 2>&1
      echo "rc=$?"; tail -30 $OUT/lowrank.log ;;
    nsa-profile)
      timeout 100 python3 dev/nsa/profile_stages.py --out $OUT/nsa-stages-h200-$D.json > $OUT/nsa-stages.log 2>&1
      echo "rc=$?"; tail -5 $OUT/nsa-stages.log ;;
    nsa-fla)
      timeout 90 python3 -c "
import argparse
from ioaware.cli.bench import _run
_run('nsa', argparse.Namespace(out='$OUT/nsa-fla-h200-$D.json', json=None),
     lambda m, p: m.run(progress=p, seqlens=(65536,), groups=(16,)))" > $OUT/nsa-fla.log 2>&1
      echo "rc=$?"; tail -20 $OUT/nsa-fla.log ;;
  esac
done
