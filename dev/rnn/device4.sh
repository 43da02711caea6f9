#!/usr/bin/env bash
# Device call 2 (last) of issue #9's 1x768 work. 1. the new variants vs cuDNN (same process) and the 12x64 default;
# 2. SPLIT_BARRIER := 3 (LL exchange) if it is correct and >= 3% faster forward than barrier 1 (the same edit is then
# committed); 3. the benchmark with the planner's default; 4. the GPU tests, split-head ones first.
# Run: PYTHONPATH=$PWD bash dev/rnn/device4.sh   (writes $OUT)
# (as run: SPLIT_BARRIER and kb-for-both-directions were removed after this call, see NOTES entry 10)
: "${OUT:?}"
export PYTHONUNBUFFERED=1
T0=$(date +%s)
nvidia-smi --query-gpu=name --format=csv,noheader
BUDGET_S=70 timeout 85 python3 dev/rnn/sweep3.py cudnn P J L 12x64 2>&1 | grep -v Warn | tail -8
python3 - <<'PY' | tee $OUT/decision.txt
import json, os, re
rows = {r.get("variant", "")[:1]: r for r in map(json.loads, open(os.environ["OUT"] + "/sweep3.jsonl")) if "variant" in r}
p, j = rows.get("P", {}), rows.get("J", {})
ok = lambda r: "fwd_ms" in r and max(r.get("err_vs_fp32", [1])) < 2e-3
use_ll = ok(p) and ok(j) and j["fwd_ms"] < 0.97 * p["fwd_ms"] and j.get("fwdbwd_ms", 1e9) <= 1.02 * p.get("fwdbwd_ms", 0)
use_ll = use_ll or (not ok(p) and ok(j))
print("P", p.get("fwd_ms"), p.get("fwdbwd_ms"), "J", j.get("fwd_ms"), j.get("fwdbwd_ms"), "-> SPLIT_BARRIER =", 3 if use_ll else 1)
if use_ll:
    f = "ioaware/plan/rnn_tiles.py"
    s = open(f).read()
    open(f, "w").write(re.sub(r"^SPLIT_BARRIER = 1$", "SPLIT_BARRIER = 3", s, flags=re.M))
PY
grep -n "^SPLIT_BARRIER" ioaware/plan/rnn_tiles.py
timeout 75 python3 -m ioaware.cli.main bench rnn --cases 1x768 12x64 --flashrnn-backends triton_fused \
    --flashrnn-timeout 15 --out $OUT/rnn-bench.json 2>&1 | grep -v Warn | tail -24
LEFT=$(( 262 - ($(date +%s) - T0) ))
echo "tests get ${LEFT}s"
timeout $(( LEFT * 2 / 3 )) python3 -m pytest -q -m gpu tests/gpu/test_rnn_gpu.py -p no:cacheprovider -rf \
    -k "split_head_variants or planned_split or split_barrier" 2>&1 | tee $OUT/gpu_tests_split.txt | tail -6
LEFT=$(( 264 - ($(date +%s) - T0) ))
timeout $LEFT python3 -m pytest -q -m gpu tests/gpu/test_rnn_gpu.py -p no:cacheprovider -rf \
    -k "not (split_head_variants or planned_split or split_barrier)" 2>&1 | tee $OUT/gpu_tests_rest.txt | tail -6
