#!/usr/bin/env bash
# The recorded GPU run (docs/GPU_RUN.md): train the nature preset on real wallpapers, then sample.
# Phase "train" trains for at most $TRAIN_SECONDS (a timeout kill is part of the test: the run resumes);
# phase "finish" resumes training for $TRAIN_SECONDS more, trains the latent DDPM and generates images.
# Expects .data/bg.lmdb (img2lmdb.py --config nature over /usr/share/backgrounds) and .data/bg_semantic.pt.
set -uo pipefail
phase=${1:?train or finish}
OUT=${OUT:-out}
TRAIN_SECONDS=${TRAIN_SECONDS:-480}
mkdir -p "$OUT"
common=(--config nature -d .data/bg.lmdb --semantic_path .data/bg_semantic.pt -n nature_bg -b 32
        --precision bf16 --workers 8 --log_every 25 --save_every 3200 --sample_every 16000
        --set training.ema_decay=0.999)
timeout --signal=KILL "$TRAIN_SECONDS" python3 train.py "${common[@]}" 2>&1 | tr '\r' '\n' | grep -v "^train:" \
  | tee -a "$OUT/log.txt"
echo "train exit (137 = killed by the time limit, by design): ${PIPESTATUS[0]}" | tee -a "$OUT/log.txt"
cp runs/nature_bg/stats.jsonl "$OUT/"
if [ "$phase" = finish ]; then
  python3 train_latent.py -m runs/nature_bg/checkpoints/last.pt -n nature_bg_latent --max_steps 3000 \
    --batch_size 46 --log_every 500 --set latent.ema_decay=0.999 2>&1 | tr '\r' '\n' | grep -v "^latent:" \
    | tee -a "$OUT/log.txt"
  python3 test.py -f runs/nature_bg_latent/checkpoints/last.pt -g runs/gen --img_num 4 -b 4 --precision bf16 \
    2>&1 | tr '\r' '\n' | grep -v "^generate:" | tee -a "$OUT/log.txt"
  python3 test.py -f runs/nature_bg_latent/checkpoints/last.pt -g runs/gen_wide --img_num 1 \
    --image_size 1024x2048 --precision bf16 --seed 1 2>&1 | tr '\r' '\n' | grep -v "^generate:" | tee -a "$OUT/log.txt"
  python3 - "$OUT" <<'PY'
import sys, glob
from PIL import Image
out = sys.argv[1]
imgs = [Image.open(f"runs/gen/{k}.png") for k in range(4)]
grid = Image.new("RGB", (1024 * 2 + 8, 512 * 2 + 8), "white")
for k, im in enumerate(imgs):
    grid.paste(im, ((k % 2) * 1032, (k // 2) * 520))
grid.save(f"{out}/samples_1024x512.png")
Image.open("runs/gen_wide/0.png").save(f"{out}/sample_2048x1024.png")
samples = sorted(glob.glob("runs/nature_bg/samples/0*.png"))
picked = [samples[0], samples[len(samples) // 2], samples[-1]]
strip = Image.new("RGB", (1032, 3 * 520), "white")
for i, name in enumerate(picked):
    strip.paste(Image.open(name).resize((1032, 520)), (0, i * 520))
strip.save(f"{out}/previews.png")
print("previews:", ", ".join(name.split("/")[-1] for name in picked))
PY
  cp runs/nature_bg_latent/stats.jsonl "$OUT/latent_stats.jsonl"
fi
