#!/usr/bin/env bash
# A short end-to-end training check on a CUDA machine, about 2 minutes: fine-tune the default
# model on a small BSDS500 copy (`ndd train --init-from default`, stages 1 and 2, a validation
# pass), the same as a torchrun rank, then `ndd evaluate-kernel`, `ndd segment` and `ndd evaluate`
# with the trained checkpoint. The numbers it prints check that the workflow runs on the GPU;
# 8 test images say nothing about accuracy.
#
# Prepare here (the data is git-ignored, so it travels only when carried):
#
#     cp -r ../shared/data/bsds500-mini runs/device_mini    # any BSDS500-layout root
#
# then, through the device tool: run(command="bash benchmarks/device_train.sh",
# carry=["runs/device_mini"], timeout_s=420). Try it here first with DEVICE=cpu STAGE1=2 STAGE2=1
# (slow: the torchrun step runs out of its time limit on a 2-core CPU).
set -u
OUT=${OUT:-runs/device_train}
DEVICE=${DEVICE:-cuda}
STAGE1=${STAGE1:-60}
STAGE2=${STAGE2:-30}
DATA=${DATA:-runs/device_mini}
source "$(dirname "$0")/device_steps.sh"

need "$DATA/BSDS500"
step train 200 "$PY" -m ndd train --data-root "$DATA" --split train --init-from default \
    --stage1-steps "$STAGE1" --stage2-steps "$STAGE2" --batch-size 4 --device "$DEVICE" --run-dir "$work/a" \
    --save-every 30 --eval-every 45 --val-split val --no-progress --no-tensorboard
step torchrun 150 "$PY" -m torch.distributed.run --standalone --nproc_per_node=1 -m ndd train --data-root "$DATA" \
    --split train --init-from default --stage1-steps 10 --stage2-steps 5 --batch-size 4 --device "$DEVICE" \
    --run-dir "$work/b" --no-progress --no-tensorboard
step kernel 120 "$PY" -m ndd evaluate-kernel --model "$work/a/last.pt" --data "$DATA" --split test --device "$DEVICE"
step segment 120 bash -c "'$PY' -m ndd segment '$DATA/BSDS500/data/images/test' --model '$work/a/last.pt' \
    --device '$DEVICE' --out '$work/seg' --format ucm2 --no-progress && '$PY' -m ndd evaluate --results '$work/seg' \
    --groundtruth '$DATA/BSDS500/data/groundTruth/test' --workers 8"
echo "logs in $OUT"
