# last device call: GPU tests (log to $OUT as they run) and the bench with the tuned planner and barrier
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/rnn/*.whl >/dev/null 2>&1
export PYTHONPATH=$PWD:/tmp/site PYTHONUNBUFFERED=1
timeout 150 python3 -m pytest -v -m gpu tests/gpu/test_rnn_gpu.py -p no:cacheprovider 2>&1 | tee $OUT/gpu_tests.log | grep -E "PASS|FAIL|ERROR|passed|failed" | tail -40
timeout 110 python3 -m ioaware.cli.main bench rnn --cases ${CASES:-12x64} --flashrnn-backends triton_fused --flashrnn-timeout 60 --out $OUT/rnn-h100-tuned-$(date +%F).json 2>&1 | grep -v Warning | tail -32
