#!/usr/bin/env bash
# The Pyramid Diffusion Model on a GPU (issue 22), for when one is lent: the pyramid_small chain at its defaults
# (autoencoder, flow network, Euler-200 and RK45 samples) and the pyramid_2k path at width 32, with times and peaks.
# Usage on the GPU machine: OUT=... DATA=photos.lmdb PHOTOS=photos_dir bash scripts/gpu_pyramid.sh [small|2k|all]
set -uo pipefail
what=${1:-all}
OUT=${OUT:-out}
mkdir -p "$OUT"
log() { tee -a "$OUT/log.txt"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | log
if [ "$what" = small ] || [ "$what" = all ]; then
  /usr/bin/time -f "train.py %e s" python3 train.py --config pyramid_small -d "$DATA" -n ae --runs_dir "$OUT/runs" \
    --precision bf16 2>&1 | tail -3 | log
  /usr/bin/time -f "train_latent.py %e s" python3 train_latent.py -m "$OUT/runs/ae/checkpoints/last.pt" -n flow \
    --runs_dir "$OUT/runs" 2>&1 | tail -3 | log
  for s in "euler --steps 200" rk45; do
    /usr/bin/time -f "test.py $s %e s" python3 test.py -f "$OUT/runs/flow/checkpoints/last.pt" -g "$OUT/samples_${s%% *}" \
      --img_num 64 -b 64 --sampler $s 2>&1 | tail -2 | log
  done
fi
if [ "$what" = 2k ] || [ "$what" = all ]; then
  bash scripts/pyramid_2k_path.sh "$PHOTOS" "$OUT/2k" 32 200 cuda 2>&1 | log
fi
