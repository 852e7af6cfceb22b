#!/usr/bin/env bash
# Every GPU figure the README asks for, in one prepared run of about 7 minutes, for a session
# that is lent a CUDA machine (15 minutes of device time in all, the machine's start included).
#
# Prepare here (the images are git-ignored, so they travel only when carried):
#
#     mkdir -p runs/device_images
#     cp $(ls data/BSDS500/data/images/val/*.jpg | head -11) runs/device_images/
#
# then, through the device tool: run(command="bash benchmarks/device_check.sh",
# carry=["runs/device_images"], timeout_s=540). The machine's own python3 has PyTorch, NumPy,
# SciPy, scikit-image, numba, h5py, Pillow, tqdm, PyYAML and TensorBoard, so ndd runs from src/
# without an install. Each step has a time limit and a log of its own in $OUT (at most 8 files
# come back); a failed step is reported and the next one runs. Try it here first with
# DEVICE=cpu COUNT=2 SPECTRAL_REPEATS=1 bash benchmarks/device_check.sh (slow, but it checks the
# commands).
set -u
OUT=${OUT:-runs/device_check}
DEVICE=${DEVICE:-cuda}
COUNT=${COUNT:-10}
SPECTRAL_REPEATS=${SPECTRAL_REPEATS:-5}
IMAGES=${IMAGES:-runs/device_images}
source "$(dirname "$0")/device_steps.sh"

step environment 120 "$PY" -c "
import platform, torch, ndd
print('python', platform.python_version(), '| torch', torch.__version__, '| ndd', ndd.__version__)
print('cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '-')
"
if [ "$DEVICE" = cuda ] && ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    echo "no CUDA device here: nothing to measure"
    exit 1
fi
# eigen-solver and D against the exact path and ARPACK (CPU), plus SpecDiffNet forwards
step spectral 150 "$PY" benchmarks/bench_spectral.py --device "$DEVICE" --repeats "$SPECTRAL_REPEATS" --image examples/coffee.jpg
# segment_image per image with every shipped model on this device
if [ -d "$IMAGES" ]; then
    step segment_image 150 "$PY" benchmarks/bench_segment.py --devices "$DEVICE" --count "$COUNT" --images "$IMAGES"
    # the whole command over a folder, one process, then as a torchrun rank (the multi-GPU path)
    # then every default output (pictures too), their files compressed on up to 4 threads and, with
    # --threads 1, one after the other: how much of a GPU run the writing is
    step segment_command 180 bash -c "
        time '$PY' -m ndd segment '$IMAGES' --out '$work/one' --device '$DEVICE' --format ucm2 --no-progress
        time '$PY' -m torch.distributed.run --standalone --nproc_per_node=1 -m ndd segment '$IMAGES' \
            --out '$work/ranks' --device '$DEVICE' --format ucm2 --no-progress
        cmp -s <(cd '$work/one' && ls *.mat) <(cd '$work/ranks' && ls *.mat) && echo 'same outputs written by both'
        time '$PY' -m ndd segment '$IMAGES' --out '$work/pictures' --device '$DEVICE' --no-progress
        time '$PY' -m ndd segment '$IMAGES' --out '$work/pictures1' --device '$DEVICE' --threads 1 --no-progress"
else
    echo "== $IMAGES is missing (see the top of this script): segment steps skipped"
fi
# training steps per second (synthetic batches: no data set needed), bf16 autocast on CUDA
step train 150 "$PY" benchmarks/bench_train.py --device "$DEVICE" --steps 10
# FAI forward and backward
step interpolate 60 "$PY" benchmarks/bench_interpolate.py --device "$DEVICE"
echo "logs in $OUT"
