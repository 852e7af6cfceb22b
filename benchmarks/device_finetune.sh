#!/usr/bin/env bash
# Fine-tune the Lite0 embedding on one CUDA GPU, about 6 minutes: two recipes, each trained on
# BSDS500 train (to choose on val) and on train + val (to ship the chosen one), all four runs at
# once on the one GPU; then the kernel accuracy (paper Table 1) of the two train-only models on
# the 100 val images over a grid of (t, tau). Every run starts from the small shipped model
# `BSDS500` with t = 40, tau = 0.4 (the calibration of `BSDS500_HED_V3`), as V2 was fine-tuned:
# stage 2 only (LR + HR loss), whole images, batch 1, Adam 1e-4 (x10 for mu, t, tau, gammas).
#   unfrozen: the whole EfficientNet-Lite0 trains;  frozen: only the projection, FAI and scalars
#   (V2's recipe, there with 400 CPU steps).
# What comes back in $OUT: the four models in float16 (`<split>_<recipe>.pt`) and logs.tar.gz
# (training logs, metrics, kernel-accuracy JSON).
#
# Prepare here (the data is git-ignored, so it travels only when carried; the working tree may
# carry at most 64 MiB, so the 36 MB VGG16-HED file, which these runs never read, is left out):
#
#     mkdir -p runs/device_bsds/BSDS500/data/{images,groundTruth}
#     for s in train val; do for k in images groundTruth; do
#         cp -r data/BSDS500/data/$k/$s runs/device_bsds/BSDS500/data/$k/; done; done
#     git rm -q --cached src/ndd/weights/specdiffnet_lite0_hed_bsds500.pt
#     echo /src/ndd/weights/specdiffnet_lite0_hed_bsds500.pt >> .git/info/exclude
#
# then, through the device tool: run(command="bash benchmarks/device_finetune.sh",
# carry=["runs/device_bsds"], timeout_s=560), and afterwards undo the last two lines
# (`git reset -q -- <file>`, drop the exclude line). Try it here first with
# DEVICE=cpu STEPS=2 TRAIN_LIMIT=300 KERNEL_IMAGES=2.
set -u
OUT=${OUT:-runs/device_finetune}
DEVICE=${DEVICE:-cuda}
STEPS=${STEPS:-1800}
TRAIN_LIMIT=${TRAIN_LIMIT:-330}
KERNEL_IMAGES=${KERNEL_IMAGES:-100}
DATA=${DATA:-runs/device_bsds}
source "$(dirname "$0")/device_steps.sh"

need "$DATA/BSDS500/data/images/val"
nvidia-smi --query-gpu=name,memory.used --format=csv 2>/dev/null
step calibrate 120 "$PY" -c "
import math, sys, torch
from ndd.models import spec_diff_net, save_model
m = spec_diff_net('BSDS500')
with torch.no_grad():
    m.log_t.fill_(math.log(40.0)); m.log_tau.fill_(math.log(0.4))
save_model(m, sys.argv[1])" "$work/calib.pt"

start=$SECONDS
for split in train trainval; do
    for recipe in unfrozen frozen; do
        flag=--no-freeze-backbone
        [ "$recipe" = frozen ] && flag=--freeze-backbone
        step "train_${split}_$recipe" "$TRAIN_LIMIT" "$PY" -m ndd train --data-root "$DATA" --split "$split" \
            --init-from "$work/calib.pt" $flag --stage1-steps 0 --stage2-steps "$STEPS" --stage2-full-image \
            --stage2-batch-size 1 --batch-size 1 --hr-weight 1 --lr 1e-4 --diffusion-lr-mult 10 \
            --num-workers 3 --device "$DEVICE" --save-every 250 --log-every 100 --no-progress \
            --no-tensorboard --run-dir "$work/${split}_$recipe" &
    done
done
wait
echo "== all training ended after $((SECONDS - start)) s"

# A run stopped by its time limit still left its latest checkpoint: ship that one, and say so.
for run in "$work"/train*_*; do
    name=$(basename "$run")
    ckpt="$run/last.pt"
    [ -f "$ckpt" ] || ckpt=$(ls -t "$run"/checkpoints/*.pt 2>/dev/null | head -n 1)
    if [ -z "$ckpt" ]; then echo "== $name: no checkpoint"; continue; fi
    echo "== $name: $ckpt"
    "$PY" -c "
import sys, torch
from ndd.models import load_model, save_model
m = load_model(sys.argv[1], freeze_backbone=False)
with torch.no_grad():
    print('t', float(m.log_t.exp()), 'tau', float(m.log_tau.exp()), 'mu', float(m.log_mu.exp()))
save_model(m, sys.argv[2], meta={'source': sys.argv[1]}, half=True)" "$ckpt" "$OUT/$name.pt"
    cp "$run/metrics.csv" "$OUT/${name}_metrics.csv" 2>/dev/null
done

for recipe in unfrozen frozen; do
    [ -f "$OUT/train_$recipe.pt" ] || continue
    step "kernel_val_$recipe" 150 "$PY" -m ndd evaluate-kernel --model "$OUT/train_$recipe.pt" --data "$DATA" \
        --split val --device "$DEVICE" --max-images "$KERNEL_IMAGES" --json "$OUT/kernel_val_$recipe.json" \
        --t-grid 15,20,25,30,40,55 --tau-grid 0.25,0.3,0.4,0.5,0.7,1 &
done
wait
# the tool brings back at most 8 files: the four models and one archive of everything else
(cd "$OUT" && shopt -s nullglob && small=(./*.log ./*.json ./*.csv) && tar czf logs.tar.gz "${small[@]}" && rm -f "${small[@]}")
ls -l "$OUT"
