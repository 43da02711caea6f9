#!/usr/bin/env bash
# The attention DRAM table (Nsight Compute) for the benchmark's settings and the extended shapes, with each launch's
# occupancy (resident CTAs per SM set the model's concurrency); optionally the L2 re-read probe (PROBE=1).
# Output in $OUT; turn it into the results file with dev/iomodel/dram_table.py.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
M=dram__bytes_read.sum,dram__bytes_write.sum,lts__t_bytes.sum,gpu__time_duration.sum,lts__t_sector_hit_rate.pct
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $OUT/card.txt
python3 -c "import torch, triton; print(torch.__version__, triton.__version__)" >> $OUT/card.txt
if [ -n "$PROBE" ]; then
  ncu --csv --cache-control none --metrics $M --kernel-name regex:"_l2_probe" python3 dev/iomodel/l2_probe.py \
      > $OUT/ncu-probe.csv 2> $OUT/ncu-probe.err
  echo "probe rows: $(grep -c dram__bytes_read $OUT/ncu-probe.csv)"
fi
ncu --csv --cache-control all --section LaunchStats --section Occupancy --metrics $M \
    --kernel-name regex:"_(hopper_)?flash_attn_(fwd|bwd_dkdv|bwd_dq)_kernel" \
    python3 dev/iomodel/ncu_all.py > $OUT/ncu-attn.csv 2> $OUT/ncu-attn.err
echo "attention rows: $(grep -c dram__bytes_read $OUT/ncu-attn.csv)"
tail -3 $OUT/ncu-attn.err
