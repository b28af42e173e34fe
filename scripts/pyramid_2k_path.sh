#!/usr/bin/env bash
# The pyramid_2k preset end to end through the command lines at a small width (docs/PYRAMID.md, "2048x1024"):
# img2lmdb at the preset's geometry -> train.py one autoencoder step -> train_latent.py one flow step -> test.py one
# 1024x2048 sample, each timed with its peak resident memory (GNU time). Untrained weights: this shows the path runs
# and what it costs, not 2K quality.
# Usage: bash scripts/pyramid_2k_path.sh PHOTOS_DIR OUT_DIR [WIDTH] [STEPS] [DEVICE]
set -euo pipefail
photos=$1; out=$2; width=${3:-8}; steps=${4:-10}; device=${5:-cpu}
mkdir -p "$out"
timed() { local name=$1; shift; /usr/bin/time -f "$name %e s %M KiB" -a -o "$out/times.txt" "$@" > "$out/$name.log" 2>&1; }
[ -d "$out/2k.lmdb" ] || timed img2lmdb python img2lmdb.py -i "$photos" -o "$out/2k.lmdb" --config pyramid_2k -n 2
timed train_ae python train.py --config pyramid_2k -d "$out/2k.lmdb" -n ae2k --runs_dir "$out/runs" --max_steps 1 \
  --batch_size 1 --device "$device" --set autoencoder.channels=$width flow.channels=$((2 * width))
timed train_flow python train_latent.py -m "$out/runs/ae2k/checkpoints/last.pt" -n flow2k --runs_dir "$out/runs" \
  --max_steps 1 --batch_size 2 --device "$device"
timed sample python test.py -f "$out/runs/flow2k/checkpoints/last.pt" -g "$out/samples" --img_num 1 --steps "$steps" \
  --device "$device" --raw --overwrite
cat "$out/times.txt"
