#!/usr/bin/env bash
# Runs ON the GPU machine, from the repository root, after benchmarks/device/prepare.sh here:
#   run(command="bash benchmarks/device/paper_cifar.sh", carry=[".device"], timeout_s=590)
# It checks the CUDA path end to end (paper.py --quick on digits), then runs the CIFAR-10 (JPEG-Q75)
# rows of the paper table, most informative first, one teacher per architecture (paper.py shares it
# between rows). After each row it writes to $OUT the table so far (paper_cifar.md) and the rows'
# lineages (runs.tar.gz, weights left out), so a call cut short by its time limit still brings back
# every finished row. Try it here first with ROWS="" (set-up and the CUDA-free smoke run only).
# Budget (stated in the table): TEACHER_EPOCHS, STUDENT_EPOCHS, MAX_GENERATIONS; no row starts
# after DEADLINE_S seconds.
set -euo pipefail
OUT=${OUT:-runs/device-out}
TEACHER_EPOCHS=${TEACHER_EPOCHS:-15}
STUDENT_EPOCHS=${STUDENT_EPOCHS:-4}
MAX_GENERATIONS=${MAX_GENERATIONS:-8}
DEADLINE_S=${DEADLINE_S:-420}
ROWS=${ROWS-"cifar10-vgg16-depth+width cifar10-vgg16-width cifar10-vgg16-depth cifar10-vgg19-depth+width cifar10-vgg19-width cifar10-vgg19-depth"}
mkdir -p "$OUT"

python3 -c "import pydantic" 2>/dev/null ||
    python3 -m pip install -q --no-index --find-links .device/wheels --target .device/site pydantic
export PYTHONPATH=$PWD/src:$PWD/.device/site
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA')"
python3 .device/cifar10-jpeg75/build_batches.py .cache/data

python3 benchmarks/paper.py --quick --quiet --out runs/device-quick --markdown "$OUT/quick.md" | tail -1

budget=(--student-epochs "$STUDENT_EPOCHS" --teacher-epochs "$TEACHER_EPOCHS" --max-generations "$MAX_GENERATIONS")
for row in $ROWS; do
    if (( SECONDS > DEADLINE_S )); then echo "paper_cifar.sh: $row not started: past ${DEADLINE_S} s"; continue; fi
    # each row adds its record to the table in $OUT (paper.py keeps the rows run before)
    python3 benchmarks/paper.py --quiet --rows "$row" --data-dir cifar10=.cache/data --out runs/paper-device \
        "${budget[@]}" --markdown "$OUT/paper_cifar.md" | tail -1
    tar czf "$OUT/runs.tar.gz" --exclude='*.safetensors' --exclude='*.onnx' runs/paper-device
    echo "paper_cifar.sh: $row done at ${SECONDS} s"
done
