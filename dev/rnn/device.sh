# one device call: GPU tests (full log to $OUT), tile sweep, flashrnn probe
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/rnn/*.whl >/dev/null 2>&1
export PYTHONPATH=$PWD:/tmp/site PYTHONUNBUFFERED=1
which nvcc; nvcc --version | tail -1
timeout ${SWEEP_S:-100} python3 dev/rnn/sweep.py ${SWEEP:-12x64 1x768} 2>&1 | grep -v Warning | tail -30
timeout ${TEST_S:-150} python3 -m pytest -q -m gpu tests/gpu/test_rnn_gpu.py -p no:cacheprovider > $OUT/gpu_tests.log 2>&1
grep -E "passed|failed|FAILED|Error" $OUT/gpu_tests.log | head -30
if [ -n "$BENCH" ]; then
  timeout ${BENCH_S:-280} python3 -m ioaware.cli.main bench rnn --flashrnn-timeout ${FRNN_TIMEOUT:-100} --out $OUT/rnn-h100-$(date +%F).json 2>&1 | grep -v Warning | tail -40
fi
