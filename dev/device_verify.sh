#!/usr/bin/env bash
# One device call that re-runs the GPU tests a session could not finish: fftconv (all), the masked attention's
# block-sparse cases, and the failing sLSTM bf16 split-head case with its traceback.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
timeout 100 python3 -m pytest -q -m gpu tests/gpu/test_rnn_gpu.py -k "split7 and slstm" -p no:cacheprovider 2>&1 | tail -40 > $OUT/rnn-slstm.txt
timeout 60 python3 -m pytest -q -m gpu tests/gpu/test_flash_attn_masked_gpu.py -k blocksparse -p no:cacheprovider 2>&1 | tail -15 > $OUT/masked-blocksparse.txt
timeout 120 python3 -m pytest -q -m gpu tests/gpu/test_fftconv_gpu.py -p no:cacheprovider 2>&1 | tail -15 > $OUT/fftconv.txt
tail -3 $OUT/*.txt
