#!/usr/bin/env bash
# Issue 4 measurements; each part (sample, bands, train) is meant for one device call (<= 10 min, compiles
# included): sampling speed/memory with the speed switches and compile scopes, the 4096x8192 bands (compare
# with benchmarks/memory_estimate.py), training throughput/peak. Rows go to $OUT/*.jsonl; the log to
# $OUT/log.txt.
# "samplers" (issue 13): s/image of the recommended fast setting (DPM-Solver++(2M), 20 steps) next to DDIM-50 at
# 512x1024, in one process, timed in 3 interleaved rounds (sample_speed --compare; rows carry the ratio).
# Usage on the GPU machine: OUT=... bash scripts/gpu_issue4.sh [sample|bands|train|samplers|all]
set -uo pipefail
what=${1:-all}
OUT=${OUT:-out}
mkdir -p "$OUT"
log() { tee -a "$OUT/log.txt"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | log
if [ "$what" = sample ] || [ "$what" = all ]; then
  python3 -m benchmarks.sample_speed --sizes 512x1024 --batches 1,4 --precision bf16 --bands off \
    --out "$OUT/sample.jsonl" 2>&1 | log
  for c in default reduce-overhead; do
    for sc in halves blocks; do
      python3 -m benchmarks.sample_speed --sizes 512x1024 --batches 1,4 --precision bf16 --bands off --compile "$c" \
        --compile_scope "$sc" --out "$OUT/sample.jsonl" 2>&1 | log
    done
  done
  python3 -m benchmarks.sample_speed --sizes 512x1024 --batches 4 --precision bf16 --bands off --compile default \
    --channels_last --out "$OUT/sample.jsonl" 2>&1 | log
  python3 -m benchmarks.sample_speed --sizes 512x1024 --batches 4 --precision bf16 --bands off --compile default \
    --cfg_scale 0.5 --out "$OUT/sample.jsonl" 2>&1 | log
fi
if [ "$what" = samplers ] || [ "$what" = all ]; then
  python3 -m benchmarks.sample_speed --sizes 512x1024 --batches 1,4 --precision bf16 --compare ddim:50,dpmpp2m:20 \
    --repeats 3 --out "$OUT/samplers.jsonl" 2>&1 | log
fi
if [ "$what" = bands ] || [ "$what" = all ]; then
  for b in auto 1 1x32 1x16; do
    python3 -m benchmarks.sample_speed --sizes 4096x8192 --batches 1 --precision bf16 --bands "$b" --steps 2 \
      --out "$OUT/bands.jsonl" 2>&1 | log
  done
fi
if [ "$what" = train ] || [ "$what" = all ]; then
  python3 -m benchmarks.train_speed --batch 96 --precision bf16 --steps 10 --warmup 5 --out "$OUT/train.jsonl" 2>&1 | log
  for sc in halves blocks; do
    python3 -m benchmarks.train_speed --batch 96 --precision bf16 --steps 10 --warmup 5 --compile default \
      --compile_scope "$sc" --out "$OUT/train.jsonl" 2>&1 | log
  done
  for lv in 0 2; do
    python3 -m benchmarks.train_speed --batch 96 --precision bf16 --steps 10 --warmup 5 --compile default \
      --checkpointing --checkpoint_levels "$lv" --out "$OUT/train.jsonl" 2>&1 | log
  done
fi
if python3 -m pytest --version >/dev/null 2>&1; then  # the CUDA-only tests (estimate vs allocator, half weights)
  python3 -m pytest -q -rs tests/test_memory.py tests/test_regression.py 2>&1 | tail -5 | log
fi
python3 -m benchmarks.precision --preset nature --size 128x256 --precision bf16,fp16 --out "$OUT/precision.jsonl" 2>&1 | log
