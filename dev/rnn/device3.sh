#!/usr/bin/env bash
# Device call 1 of issue #9's 1x768 work: cuDNN + barrier floors, then the kernel variants in two more processes
# (a hung barrier loses only its own group). Rows: $OUT/sweep3.jsonl.  Run: PYTHONPATH=$PWD bash dev/rnn/device3.sh
: "${OUT:?}"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader
BUDGET_S=50 timeout 70 python3 dev/rnn/sweep3.py cudnn floor 2>&1 | grep -v Warn | tail -14
CUDNN=$(python3 -c "import json;r=[json.loads(l) for l in open('$OUT/sweep3.jsonl')];c=[x for x in r if 'cudnn' in x.get('provider','')];print(json.dumps([c[0]['fwd_ms'],c[0]['fwdbwd_ms']]) if c else '[2.07, 6.80]')")
CUDNN_MS=$CUDNN BUDGET_S=95 timeout 110 python3 dev/rnn/sweep3.py A E G C 2>&1 | grep -v Warn | tail -6
CUDNN_MS=$CUDNN BUDGET_S=65 timeout 80 python3 dev/rnn/sweep3.py D B F H I 12x64 2>&1 | grep -v Warn | tail -7
