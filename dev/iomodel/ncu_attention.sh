#!/usr/bin/env bash
# DRAM bytes of ioaware's attention kernels measured by Nsight Compute, one shape per process. Output in $OUT.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
M=dram__bytes_read.sum,dram__bytes_write.sum,lts__t_bytes.sum,gpu__time_duration.sum
run() {  # name B H T D causal [bwd]
  local name=$1; shift
  ncu --csv --metrics $M --kernel-name regex:"_flash_attn_(fwd|bwd_dkdv|bwd_dq)_kernel" --launch-skip 1 \
      --launch-count ${NCOUNT:-1} python3 dev/iomodel/ncu_one.py "$@" > $OUT/ncu-$name.csv 2> $OUT/ncu-$name.err
  echo "$name: $(grep -c dram $OUT/ncu-$name.csv) metric rows"
}
run fwd-B1-H16-T16k-D128 1 16 16384 128 0
run fwd-B1-H16-T16k-D128-causal 1 16 16384 128 1
run fwd-B4-H16-T4k-D128 4 16 4096 128 0
run fwd-B1-H32-T16k-D64 1 32 16384 64 0
run fwd-B2-H8-T32k-D128 2 8 32768 128 0
run fwd-B16-H16-T1k-D128 16 16 1024 128 0
NCOUNT=2 run bwd-B1-H16-T16k-D128 1 16 16384 128 0 bwd
NCOUNT=2 run bwd-B4-H16-T4k-D128-causal 4 16 4096 128 1 bwd
tail -3 $OUT/ncu-fwd-B1-H16-T16k-D128.csv
